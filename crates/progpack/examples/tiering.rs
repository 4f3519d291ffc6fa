//! Tiering with live patching: an interpreter-to-JIT tier-up whose callers are retargeted by
//! [`Program::patch`](progpack::Program::patch) while worker threads keep calling them.
//!
//! A tiny stack bytecode computes `f(x)`. JIT-compiled callers (`g_k(x) = f(x) + k`) start out
//! calling the interpreter, a host function, through a `call rel32` (the packs lie within
//! reach of this binary: [`CodeRange::near_this_binary`](progpack::CodeRange)). Worker
//! threads call the callers in a loop and check every result against Rust. When the
//! interpreter has run `f` often enough, this thread compiles `f` with iced-x86 into a pack and
//! patches every caller's call site to the compiled code, while the workers run. Then it
//! flips the callers back and forth between the tiers (what a deoptimizing JIT does), still
//! under the workers' calls. It checks that:
//! - every call of every worker returned the right value, on either tier;
//! - once the callers point at the compiled `f`, the interpreter is entered at most once more
//!   per worker (a call that had started before the patch returned);
//! - the allocator's invariants hold at the end.
//!
//! Run: `cargo run --release -p progpack --example tiering`

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    x64::main()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("tiering example: x86-64 only, skipped");
}

#[cfg(target_arch = "x86_64")]
mod x64 {
    use iced_x86::code_asm::*;
    use progpack::{Allocator, CodeRange, Config, Program};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// The bytecode: a stack machine over wrapping `u64`.
    #[derive(Clone, Copy, Debug)]
    enum Op {
        /// Push the argument.
        X,
        /// Push a constant.
        Const(u64),
        Add,
        Sub,
        Mul,
    }

    /// `f(x) = (x * x + 3 * x + 7) * (x - 5)`.
    const F: &[Op] = &[
        Op::X,
        Op::X,
        Op::Mul,
        Op::Const(3),
        Op::X,
        Op::Mul,
        Op::Add,
        Op::Const(7),
        Op::Add,
        Op::X,
        Op::Const(5),
        Op::Sub,
        Op::Mul,
    ];

    /// What `F` computes, in Rust (the oracle).
    fn f_oracle(x: u64) -> u64 {
        x.wrapping_mul(x)
            .wrapping_add(3u64.wrapping_mul(x))
            .wrapping_add(7)
            .wrapping_mul(x.wrapping_sub(5))
    }

    /// Calls that entered the interpreter.
    static INTERPRETED: AtomicU64 = AtomicU64::new(0);

    /// Tier 0: the interpreter, called from JIT code as `extern "C" fn(u64) -> u64`.
    extern "C" fn interpret_f(x: u64) -> u64 {
        INTERPRETED.fetch_add(1, Ordering::Relaxed);
        let mut stack = [0u64; 8];
        let mut top = 0;
        for op in F {
            let v = match *op {
                Op::X => x,
                Op::Const(c) => c,
                Op::Add | Op::Sub | Op::Mul => {
                    top -= 2;
                    let (a, b) = (stack[top], stack[top + 1]);
                    match *op {
                        Op::Add => a.wrapping_add(b),
                        Op::Sub => a.wrapping_sub(b),
                        _ => a.wrapping_mul(b),
                    }
                }
            };
            stack[top] = v;
            top += 1;
        }
        stack[0]
    }

    /// Tier 1: `F` compiled to x86-64 (`extern "C" fn(x: u64) -> u64`, `x` in `rdi`), one
    /// native push or pop per bytecode operand.
    fn compile_f(alloc: &Allocator) -> Result<Program, Box<dyn std::error::Error>> {
        let emit = |a: &mut CodeAssembler| -> Result<(), IcedError> {
            for op in F {
                match *op {
                    Op::X => a.push(rdi)?,
                    Op::Const(c) => {
                        a.mov(rax, c)?;
                        a.push(rax)?;
                    }
                    Op::Add | Op::Sub | Op::Mul => {
                        a.pop(rcx)?;
                        a.pop(rax)?;
                        match *op {
                            Op::Add => a.add(rax, rcx)?,
                            Op::Sub => a.sub(rax, rcx)?,
                            _ => a.imul_2(rax, rcx)?,
                        }
                        a.push(rax)?;
                    }
                }
            }
            a.pop(rax)?;
            a.ret()
        };
        // No branches: the length does not depend on the base address.
        let mut probe = CodeAssembler::new(64)?;
        emit(&mut probe)?;
        let len = probe.assemble(0)?.len();
        let mut draft = alloc.draft(len, 16)?;
        let mut a = CodeAssembler::new(64)?;
        emit(&mut a)?;
        let code = a.assemble(draft.exec_addr() as u64)?;
        draft.image_mut().copy_from_slice(&code);
        Ok(draft.finalize()?)
    }

    /// Offset of the `call rel32` in a caller.
    const CALL_AT: usize = 4;

    /// `call rel32` at `at` to `target`.
    fn call_to(at: usize, target: usize) -> [u8; 5] {
        let rel = i32::try_from(target as i64 - (at as i64 + 5)).expect("target within rel32");
        let r = rel.to_le_bytes();
        [0xe8, r[0], r[1], r[2], r[3]]
    }

    /// `g_k(x) = f(x) + k`: `sub rsp, 8; call f; add rax, k; add rsp, 8; ret`, with `f`
    /// starting out as `target`.
    fn compile_caller(
        alloc: &Allocator,
        k: u32,
        target: usize,
    ) -> Result<Program, Box<dyn std::error::Error>> {
        let mut draft = alloc.draft(20, 16)?;
        let at = draft.exec_addr();
        let mut code = vec![0x48, 0x83, 0xec, 0x08];
        code.extend_from_slice(&call_to(at + CALL_AT, target));
        code.extend_from_slice(&[0x48, 0x05]);
        code.extend_from_slice(&k.to_le_bytes());
        code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xc3]);
        draft.image_mut().copy_from_slice(&code);
        Ok(draft.finalize()?)
    }

    /// Retargets every caller's call site to `target` (callers keep running).
    fn retarget(callers: &mut [Program], target: usize) -> progpack::Result<()> {
        for g in callers.iter_mut() {
            let at = g.addr() + CALL_AT;
            g.patch(CALL_AT, &call_to(at, target))?;
        }
        Ok(())
    }

    const CALLERS: usize = 16;
    const WORKERS: usize = 3;
    /// Interpreted calls of `f` after which it is compiled.
    const HOT: u64 = 20_000;
    /// Tier flips under the workers' calls after the tier-up.
    const FLIPS: usize = 500;

    pub fn main() -> Result<(), Box<dyn std::error::Error>> {
        let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))?;
        let interpreter = interpret_f as extern "C" fn(u64) -> u64 as usize;
        let mut callers = (0..CALLERS as u32)
            .map(|k| compile_caller(&alloc, k, interpreter))
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: each caller is a complete `extern "C" fn(u64) -> u64` and stays one across
        // every patch below (only its call target changes); the programs outlive the workers
        // (the scope ends before they are dropped).
        let entries: Vec<extern "C" fn(u64) -> u64> = callers
            .iter()
            .map(|g| unsafe { g.as_fn::<extern "C" fn(u64) -> u64>() })
            .collect();
        let stop = AtomicBool::new(false);
        let calls = AtomicU64::new(0);
        let resumed_before = progpack::patch::threads_resumed();
        let (compiled, after_tier_up, interpreted_since, flip_time) =
            std::thread::scope(|s| -> Result<_, Box<dyn std::error::Error>> {
                let workers: Vec<_> = (0..WORKERS as u64)
                    .map(|w| {
                        let (entries, stop, calls) = (&entries, &stop, &calls);
                        s.spawn(move || -> Result<(), String> {
                            let mut x = w.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                            let mut n = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let k = (x % CALLERS as u64) as usize;
                                let got = entries[k](x);
                                let want = f_oracle(x).wrapping_add(k as u64);
                                if got != want {
                                    return Err(format!("g_{k}({x}) = {got}, want {want}"));
                                }
                                n += 1;
                                if n.is_multiple_of(1024) {
                                    calls.fetch_add(1024, Ordering::Relaxed);
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                // Tier 0 until `f` is hot.
                let deadline = Instant::now() + Duration::from_secs(60);
                while INTERPRETED.load(Ordering::Relaxed) < HOT {
                    if Instant::now() > deadline {
                        return Err("the workers never made f hot".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Tier up: compile f and retarget the callers while the workers call them.
                let compiled = compile_f(&alloc)?;
                retarget(&mut callers, compiled.addr())?;
                let after_tier_up = INTERPRETED.load(Ordering::Relaxed);
                // Let the workers make many more calls: none may enter the interpreter, except
                // one call per worker that was already on its way there.
                let target_calls = calls.load(Ordering::Relaxed) + 200_000;
                while calls.load(Ordering::Relaxed) < target_calls {
                    if Instant::now() > deadline {
                        return Err("the workers stalled after the tier-up".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let interpreted_since = INTERPRETED.load(Ordering::Relaxed) - after_tier_up;
                // Deoptimize and re-optimize, over and over, under the workers' calls.
                let flips = Instant::now();
                for i in 0..FLIPS {
                    let target = if i % 2 == 0 {
                        interpreter
                    } else {
                        compiled.addr()
                    };
                    retarget(&mut callers, target)?;
                }
                let flip_time = flips.elapsed();
                stop.store(true, Ordering::Relaxed);
                for w in workers {
                    w.join().expect("worker panicked")?;
                }
                Ok((compiled, after_tier_up, interpreted_since, flip_time))
            })?;
        let calls = calls.load(Ordering::Relaxed);
        let patches = CALLERS * (FLIPS + 1);
        println!(
            "tiering: {WORKERS} workers made {calls} checked calls of {CALLERS} callers; f was \
             interpreted {after_tier_up} times before the tier-up and {interpreted_since} times \
             after it (calls already on their way)"
        );
        println!(
            "{patches} live patches ({} backend), {:.1} us per patch under load; {} threads \
             met a temporary int3 and were resumed",
            alloc.backend_name(),
            flip_time.as_secs_f64() * 1e6 / (CALLERS * FLIPS) as f64,
            progpack::patch::threads_resumed() - resumed_before,
        );
        assert!(after_tier_up >= HOT);
        assert!(
            interpreted_since <= WORKERS as u64,
            "the interpreter ran {interpreted_since} times after every caller was retargeted"
        );
        assert!(calls >= 200_000);
        // Every caller ends on the compiled tier (FLIPS is even: the last flip compiles).
        for (k, g) in callers.iter().enumerate() {
            let at = g.addr() + CALL_AT;
            assert_eq!(
                &g.bytes()[CALL_AT..CALL_AT + 5],
                &call_to(at, compiled.addr())
            );
            // SAFETY: as above.
            let got = unsafe { g.as_fn::<extern "C" fn(u64) -> u64>() }(12345);
            assert_eq!(got, f_oracle(12345).wrapping_add(k as u64));
        }
        drop(callers);
        drop(compiled);
        alloc
            .check_invariants()
            .map_err(|e| format!("invariants: {e}"))?;
        println!("tiering: all results checked, invariants hold");
        Ok(())
    }
}
