//! The JIT against the interpreter on thousands of random checked programs: same r0 or same
//! error, and the same memory afterwards. Both engines run over the same buffer (so r1, the
//! memory address, is the same value in both); the generator uses r10 only as a memory base,
//! so no stack address leaks into results.

mod jit_support;

use jit_support::*;
use progpack_bpf::check::check;
use progpack_bpf::interp::{self, RunOptions};
use progpack_bpf::{JitOptions, JitProgram, RunError};

/// An outcome without the faulting address of an out-of-bounds access: each engine has its
/// own stack, so addresses derived from r10 differ (memory addresses do not: both engines run
/// over the same buffer).
fn normalized(r: &Result<u64, RunError>) -> Result<u64, RunError> {
    match r {
        Err(RunError::OutOfBounds { len, pc, .. }) => Err(RunError::OutOfBounds {
            addr: 0,
            len: *len,
            pc: *pc,
        }),
        other => other.clone(),
    }
}

#[test]
fn jit_and_interpreter_agree_on_random_programs() {
    let helpers = random_helpers();
    let opts = RunOptions {
        instruction_limit: 2_000,
    };
    let mut rng = Rng(0x5eed);
    let (mut compared, mut errors, mut limits) = (0, 0, 0);
    for n in 0..4000 {
        let p = random_program(&mut rng, 1 + n % 50, 32);
        let checked = match check(&p, &helpers) {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("WHY").is_ok() {
                    eprintln!("{e}");
                }
                continue;
            }
        };
        let jit = JitProgram::new(
            near_alloc(),
            &p,
            &helpers,
            JitOptions {
                count_instructions: true,
                blind_constants: false,
            },
        )
        .expect("checked programs compile");
        let init: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
        let mut mem = init.clone();
        let want = interp::run(&checked, &helpers, &mut mem, &opts);
        let want_mem = mem.clone();
        mem.copy_from_slice(&init);
        let got = jit.run_limited(&mut mem, opts.instruction_limit);
        match (&want, &got) {
            // The JIT charges a whole block at its start: if the limit and a fault fall in the
            // same block, it reports the limit where the interpreter reports the fault.
            (Err(RunError::OutOfBounds { .. }), Err(RunError::InstructionLimit { .. })) => {}
            _ => {
                assert_eq!(
                    normalized(&got),
                    normalized(&want),
                    "program {n}: {p:?}\nmemory {init:?}"
                );
                if !matches!(want, Err(RunError::InstructionLimit { .. })) {
                    // (After hitting the limit mid-block the JIT has done less of the block.)
                    assert_eq!(mem, want_mem, "memory after program {n}: {p:?}");
                }
            }
        }
        compared += 1;
        errors += want.is_err() as u32;
        limits += matches!(want, Err(RunError::InstructionLimit { .. })) as u32;
    }
    assert!(compared > 3000, "{compared} programs compared");
    // Both outcomes are well represented.
    assert!(
        errors > 300 && compared - errors > 300,
        "{errors} errors of {compared}"
    );
    assert!(limits > 10, "{limits} runs hit the limit");
}
