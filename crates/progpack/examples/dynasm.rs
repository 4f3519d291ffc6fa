//! dynasm-rs with progpack: assemble with `dynasmrt::VecAssembler` at base `exec_addr()`, copy
//! the bytes into the draft, finalize, call.
//!
//! `VecAssembler::new(base)` resolves every label and every `extern` (absolute) target against
//! `base`, so giving it [`Draft::exec_addr`](progpack::Draft::exec_addr) yields code that is
//! correct at the address it will run from, even though it is assembled into a plain `Vec`.
//! dynasm picks each instruction's encoding when the macro expands, so code length does not
//! depend on the base: a first pass at base 0 measures it, the second pass emits for real.
//!
//! Two programs are loaded:
//! - `sum_to(n)`: a loop with local labels (relative jumps inside the program);
//! - `combo(x)`: `call rel32` into `sum_to` (JIT code calling JIT code), then `call rel32`
//!   into `host_mix`, an `extern "C"` function of this binary. The second call reaches only
//!   because the allocator was built with `CodeRange::near_this_binary()`, which keeps every
//!   pack within ±2 GiB of the executable's text.
//!
//! Run: `cargo run --release -p progpack --example dynasm`

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    x64::main()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("dynasm example: x86-64 only, skipped");
}

#[cfg(target_arch = "x86_64")]
mod x64 {
    use dynasmrt::x64::X64Relocation;
    use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi, VecAssembler};
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    use progpack::{Allocator, CodeRange, Config, Program};
    use std::sync::atomic::{AtomicU64, Ordering};

    type Asm = VecAssembler<X64Relocation>;

    /// Calls from JIT code land here; counted so the example can check they happened.
    static HOST_CALLS: AtomicU64 = AtomicU64::new(0);

    /// A host function the JIT code calls with `call rel32`.
    extern "C" fn host_mix(a: u64, b: u64) -> u64 {
        HOST_CALLS.fetch_add(1, Ordering::Relaxed);
        a.wrapping_mul(1000).wrapping_add(b)
    }

    /// `extern "C" fn sum_to(n: u64) -> u64`: 0 + 1 + ... + n, with a backward jump.
    fn emit_sum_to(ops: &mut Asm) {
        dynasm!(ops
            ; .arch x64
            ; xor eax, eax
            ; test rdi, rdi
            ; jz >done
            ; again:
            ; add rax, rdi
            ; dec rdi
            ; jnz <again
            ; done:
            ; ret
        );
    }

    /// `extern "C" fn combo(x: u64) -> u64`: `host_mix(sum_to(x), x)`, both by `call rel32`.
    fn emit_combo(ops: &mut Asm, sum_to: usize, host: usize) {
        dynasm!(ops
            ; .arch x64
            ; push rbx               // callee-saved; also realigns rsp to 16 for the calls
            ; mov rbx, rdi
            ; call extern sum_to     // JIT -> JIT
            ; mov rdi, rax
            ; mov rsi, rbx
            ; call extern host       // JIT -> host, needs the code range
            ; pop rbx
            ; ret
        );
    }

    /// Assembles `emit` for `alloc`: measure at base 0, then emit at `exec_addr()` into a draft.
    fn load(
        alloc: &Allocator,
        emit: impl Fn(&mut Asm),
    ) -> Result<Program, Box<dyn std::error::Error>> {
        let mut sizing = Asm::new(0);
        emit(&mut sizing);
        let len = sizing.offset().0; // targets may be unreachable from 0; only the length counts
        let mut draft = alloc.draft(len, 16)?;
        let mut ops = Asm::new(draft.exec_addr());
        emit(&mut ops);
        let code = ops.finalize().map_err(|e| format!("dynasm: {e}"))?;
        assert_eq!(code.len(), len, "dynasm code length depends on the base");
        draft.image_mut().copy_from_slice(&code);
        Ok(draft.finalize()?)
    }

    /// Decodes `p` and returns each `call`'s (first opcode byte, length, target).
    fn calls_in(p: &Program) -> Vec<(u8, usize, u64)> {
        let mut dec = Decoder::with_ip(64, p.bytes(), p.addr() as u64, DecoderOptions::NONE);
        let mut out = Vec::new();
        for insn in dec.iter() {
            assert!(!insn.is_invalid(), "undecodable byte in the program");
            if insn.mnemonic() == Mnemonic::Call {
                let at = insn.ip() as usize - p.addr();
                out.push((p.bytes()[at], insn.len(), insn.near_branch_target()));
            }
        }
        out
    }

    pub fn main() -> Result<(), Box<dyn std::error::Error>> {
        let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))?;
        let host = host_mix as extern "C" fn(u64, u64) -> u64 as usize;
        let (range_base, range_size) = alloc.code_range().expect("configured");
        println!(
            "backend {}; code range {range_base:#x}..{:#x}; host_mix at {host:#x}",
            alloc.backend_name(),
            range_base + range_size
        );

        let sum_to = load(&alloc, emit_sum_to)?;
        // SAFETY: emit_sum_to emits exactly this System V function.
        let sum_to_fn = unsafe { sum_to.as_fn::<extern "C" fn(u64) -> u64>() };
        for n in [0u64, 1, 10, 1000] {
            assert_eq!(sum_to_fn(n), n * (n + 1) / 2);
        }
        println!(
            "ok  sum_to: {} bytes at {:#x}, loop with local labels, sum_to(0|1|10|1000) correct",
            sum_to.len(),
            sum_to.addr()
        );

        let sum_to_addr = sum_to.addr();
        let combo = load(&alloc, |ops| emit_combo(ops, sum_to_addr, host))?;
        // SAFETY: emit_combo emits exactly this System V function; sum_to and host_mix outlive
        // the calls below.
        let combo_fn = unsafe { combo.as_fn::<extern "C" fn(u64) -> u64>() };
        for x in [0u64, 3, 100] {
            assert_eq!(combo_fn(x), (x * (x + 1) / 2) * 1000 + x);
        }
        assert_eq!(HOST_CALLS.load(Ordering::Relaxed), 3);
        println!(
            "ok  combo: {} bytes at {:#x}, combo(x) = host_mix(sum_to(x), x) for x in 0|3|100, host called 3 times",
            combo.len(),
            combo.addr()
        );

        let calls = calls_in(&combo);
        assert_eq!(
            calls,
            vec![(0xe8, 5, sum_to_addr as u64), (0xe8, 5, host as u64)],
            "expected two direct `call rel32` (E8 xx xx xx xx)"
        );
        let reach = (combo.addr() as i64 - host as i64).unsigned_abs();
        assert!(reach < 1 << 31);
        println!(
            "ok  both calls decode as E8 rel32 (5 bytes): -> sum_to {sum_to_addr:#x}, -> host_mix {host:#x} ({} MiB away)",
            reach >> 20
        );

        // Without a code range, packs go wherever mmap puts them: typically far from the
        // executable, and then dynasm refuses the rel32 (it would not reach).
        let anywhere = Allocator::new(Config::default())?;
        let probe = anywhere.draft(64, 16)?;
        let distance = (probe.exec_addr() as i64 - host as i64).unsigned_abs();
        let mut ops = Asm::new(probe.exec_addr());
        emit_combo(&mut ops, probe.exec_addr(), host);
        let result = ops.finalize();
        // rel32 is measured from the end of the call; allow a little slack either way.
        if distance > (1 << 31) + 64 {
            assert!(result.is_err(), "rel32 cannot reach {distance:#x} bytes");
            println!(
                "ok  without a code range the pack lies {} GiB from host_mix: dynasm rejects the rel32 ({})",
                distance >> 30,
                result.unwrap_err()
            );
        } else if distance < (1 << 31) - 64 {
            assert!(result.is_ok());
            println!(
                "ok  without a code range the pack happens to lie within reach ({} MiB)",
                distance >> 20
            );
        }
        drop(probe);

        drop(combo);
        drop(sum_to);
        let s = alloc.stats();
        assert_eq!((s.programs, s.chunks_used), (0, 0));
        alloc
            .check_invariants()
            .map_err(|e| format!("invariant: {e}"))?;
        println!("ok  after drop: 0 programs, 0 chunks used, free chunks all traps");
        Ok(())
    }
}
