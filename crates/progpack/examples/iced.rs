//! iced-x86 with progpack: build functions with `CodeAssembler`, `assemble(exec_addr)`, and
//! finalize them all at once with a [`Batch`](progpack::Batch).
//!
//! A batch lays its slots out back to back in a pack and keeps one staging buffer per
//! contiguous run, so thousands of functions cost one backend write (one `pwrite` with the
//! `procmem` backend) instead of one each.
//!
//! iced's `BlockEncoder` picks branch forms from the distances it sees, so the length of a
//! function is measured by assembling it once at a base where every target is as reachable as
//! it will be in the pack (internal labels: any base; `call` to a neighbour in the same pack:
//! the neighbour's own address), and the real assembly at `exec_addr` is checked to match.
//!
//! Run: `cargo run --release -p progpack --example iced`

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    x64::main()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("iced example: x86-64 only, skipped");
}

#[cfg(target_arch = "x86_64")]
mod x64 {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    use progpack::{Allocator, Config};

    /// How many generated functions go into the batch.
    const FUNCTIONS: usize = 2000;

    /// Parameters of generated function `k`; all below 2^31 so that imm32 sign extension is moot.
    fn params(k: usize) -> (u32, u32, u32, u32) {
        let k = k as u32;
        (
            k.wrapping_mul(2_654_435_761) % 5000,         // threshold
            (k % 97) + 1,                                 // multiplier
            k.wrapping_mul(40_503) % 1_000_000,           // addend
            (k.wrapping_mul(2_246_822_519) >> 2) & 0xfff, // xor mask
        )
    }

    /// What generated function `k` computes, in Rust.
    fn oracle(k: usize, x: u64) -> u64 {
        let (t, m, c, mask) = params(k);
        if x < u64::from(t) {
            x ^ u64::from(mask)
        } else {
            x.wrapping_mul(u64::from(m)).wrapping_add(u64::from(c))
        }
    }

    /// `extern "C" fn(x: u64) -> u64`: `x < t ? x ^ mask : x * m + c`.
    fn gen(k: usize) -> Result<CodeAssembler, IcedError> {
        let (t, m, c, mask) = params(k);
        let mut a = CodeAssembler::new(64)?;
        let mut below = a.create_label();
        a.mov(rax, rdi)?;
        a.cmp(rdi, t as i32)?;
        a.jb(below)?;
        a.imul_3(rax, rax, m as i32)?;
        a.add(rax, c as i32)?;
        a.ret()?;
        a.set_label(&mut below)?;
        a.xor(rax, mask as i32)?;
        a.ret()?;
        Ok(a)
    }

    /// `extern "C" fn(x: u64) -> u64`: `f2(f1(f0(x)))`, three `call rel32` into the batch.
    fn gen_chain(targets: [u64; 3]) -> Result<CodeAssembler, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        a.sub(rsp, 8)?; // keep rsp 16-byte aligned at each call
        for t in targets {
            a.call(t)?;
            a.mov(rdi, rax)?;
        }
        a.add(rsp, 8)?;
        a.ret()?;
        Ok(a)
    }

    pub fn main() -> Result<(), Box<dyn std::error::Error>> {
        let alloc = Allocator::new(Config::default())?;
        let mut batch = alloc.batch();
        let mut total = 0;
        for k in 0..FUNCTIONS {
            let len = gen(k)?.assemble(0)?.len();
            let slot = batch.push(len, 16)?;
            let code = gen(k)?.assemble(slot.exec_addr as u64)?;
            assert_eq!(code.len(), len);
            slot.image.copy_from_slice(&code);
            total += len;
        }
        // A function calling three earlier slots of the same batch (JIT -> JIT, rel32).
        let picks = [7, FUNCTIONS / 2, FUNCTIONS - 1];
        let targets = picks.map(|k| batch.exec_addr(k).expect("pushed above") as u64);
        let len = gen_chain(targets)?.assemble(targets[0])?.len();
        let slot = batch.push(len, 16)?;
        let code = gen_chain(targets)?.assemble(slot.exec_addr as u64)?;
        assert_eq!(code.len(), len, "every call stayed rel32");
        slot.image.copy_from_slice(&code);
        total += len;

        let writes = batch.writes();
        let programs = batch.finalize()?;
        let s = alloc.stats();
        assert_eq!(programs.len(), FUNCTIONS + 1);
        assert_eq!(s.programs, FUNCTIONS + 1);
        assert!(
            writes <= s.packs,
            "a batch needs at most one write per pack here ({writes} writes, {} packs)",
            s.packs
        );
        println!(
            "ok  batch: {} functions, {total} bytes of code, finalized with {writes} backend write(s) into {} pack(s) ({})",
            programs.len(),
            s.packs,
            alloc.backend_name()
        );

        let inputs = [
            0u64,
            1,
            77,
            4999,
            5000,
            123_456,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let mut checked = 0;
        for (k, p) in programs[..FUNCTIONS].iter().enumerate() {
            // SAFETY: gen(k) emits exactly this System V function.
            let f = unsafe { p.as_fn::<extern "C" fn(u64) -> u64>() };
            for &x in &inputs {
                assert_eq!(f(x), oracle(k, x), "function {k}, x = {x}");
                checked += 1;
            }
        }
        println!("ok  {checked} calls agree with the Rust oracle");

        let chain = &programs[FUNCTIONS];
        let mut dec =
            Decoder::with_ip(64, chain.bytes(), chain.addr() as u64, DecoderOptions::NONE);
        let calls: Vec<(u8, u64)> = dec
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Call)
            .map(|i| {
                (
                    chain.bytes()[i.ip() as usize - chain.addr()],
                    i.near_branch_target(),
                )
            })
            .collect();
        assert_eq!(calls, targets.map(|t| (0xe8, t)).to_vec());
        // SAFETY: gen_chain emits exactly this System V function; its callees live in `programs`.
        let f = unsafe { chain.as_fn::<extern "C" fn(u64) -> u64>() };
        for &x in &inputs {
            let want = oracle(picks[2], oracle(picks[1], oracle(picks[0], x)));
            assert_eq!(f(x), want);
        }
        println!(
            "ok  chain: three E8 rel32 calls into the batch, f2(f1(f0(x))) agrees with the oracle"
        );

        // Replace every other function: drop frees (and trap-fills) its chunks.
        let mut programs = programs;
        let kept: Vec<_> = programs
            .drain(..)
            .enumerate()
            .filter(|(k, _)| k % 2 == 1)
            .collect();
        let s = alloc.stats();
        assert_eq!(s.programs, kept.len());
        alloc
            .check_invariants()
            .map_err(|e| format!("invariant: {e}"))?;
        for (k, p) in kept.iter().filter(|(k, _)| *k < FUNCTIONS) {
            // SAFETY: as above; dropping the neighbours does not touch this program's bytes.
            let f = unsafe { p.as_fn::<extern "C" fn(u64) -> u64>() };
            assert_eq!(f(4242), oracle(*k, 4242));
        }
        println!(
            "ok  dropped every other function: {} live, {} chunks used / {} free, freed chunks are traps, the rest still run",
            s.programs, s.chunks_used, s.chunks_free
        );
        Ok(())
    }
}
