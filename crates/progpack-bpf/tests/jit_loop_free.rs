//! Programs without loops: a `BpfProgram`'s JIT code counts no instructions (a run executes
//! each at most once), and limits below the program's length run in the interpreter. Every
//! limit from 0 to past the length must give what the interpreter gives: r0 or the same
//! error, and the same memory (both engines run over the same buffer).

mod jit_support;

use jit_support::*;
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, shared_allocator, CompileOptions};
use progpack_bpf::{Error, JitOptions, RunError, RunOptions, Vm};

/// `p` with every backward jump and local call replaced by `ja +0` (so nothing runs twice).
fn loop_free(mut p: Vec<Insn>) -> Vec<Insn> {
    let mut pc = 0;
    while pc < p.len() {
        let i = p[pc];
        let cls = i.class();
        let jmp = cls == CLS_JMP || cls == CLS_JMP32;
        let op = i.opc & 0xf0;
        let local_call = i.opc == CALL && i.src == CALL_LOCAL;
        let rel = if i.opc == (CLS_JMP32 | JMP_JA) {
            i.imm as i64
        } else {
            i.off as i64
        };
        let backward = jmp && op != JMP_CALL && op != JMP_EXIT && rel < 0;
        if local_call || backward {
            p[pc] = ja(0);
        }
        pc += if i.opc == LD_DW_IMM { 2 } else { 1 };
    }
    p
}

/// An outcome without the faulting address (each engine has its own stack).
fn normalized(r: Result<u64, Error>) -> Result<u64, String> {
    match r {
        Ok(v) => Ok(v),
        Err(Error::Run(RunError::OutOfBounds { len, pc, .. })) => Err(format!("oob {len} {pc}")),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn every_limit_matches_the_interpreter() {
    let helpers = random_helpers();
    let mut vm = Vm::new(helpers.clone());
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    let mut rng = Rng(0x100f_f7ee);
    let (mut programs, mut limited) = (0, 0);
    for n in 0..1500 {
        let p = loop_free(random_program(&mut rng, 1 + n % 40, 32));
        let Ok(prog) = vm.load_slots(&p) else {
            continue;
        };
        let jit = prog.jit().expect("JIT-compiled");
        let max = jit
            .max_instructions()
            .expect("a loop-free program leaves the limit to its BpfProgram");
        assert!(!jit.counts_instructions());
        programs += 1;
        let init: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
        for limit in 0..=max + 1 {
            let opts = RunOptions {
                instruction_limit: limit,
            };
            // One buffer for both (r1, its address, is a value programs compute with).
            let mut mem = init.clone();
            let want = prog.run_interp_with(&mut mem, &opts).map_err(Error::Run);
            let a = mem.clone();
            mem.copy_from_slice(&init);
            let got = prog.run_jit_with(&mut mem, &opts);
            let b = mem.clone();
            if matches!(want, Err(Error::Run(RunError::InstructionLimit { .. }))) {
                limited += 1;
            }
            assert_eq!(
                normalized(got),
                normalized(want),
                "program {n}, limit {limit} of {max}: {p:?}"
            );
            assert_eq!(a, b, "memory, program {n}, limit {limit}");
        }
    }
    assert!(programs > 1000, "only {programs} programs loaded");
    assert!(limited > 1000, "only {limited} runs stopped at the limit");
}

#[test]
fn code_counts_only_where_an_instruction_can_run_twice() {
    let opts = CompileOptions {
        budget: true,
        budget_loops_only: true,
        ..Default::default()
    };
    let h = progpack_bpf::Helpers::new();
    // Straight line, lddw counted once: 4 instructions.
    let p = prog([
        &[mov64(0, 1)],
        &lddw(1, 5),
        &[jcc_k(CLS_JMP, JMP_JEQ, 0, 1, 0), exit()],
    ]);
    assert_eq!(compile(&p, &h, opts).unwrap().max_instructions(), Some(4));
    // A loop, a local call: counted as before.
    let p = [
        mov64(0, 3),
        alu64_k(ALU_SUB, 0, 1),
        jcc_k(CLS_JMP, JMP_JNE, 0, 0, -2),
        exit(),
    ];
    assert_eq!(compile(&p, &h, opts).unwrap().max_instructions(), None);
    let p = prog([&[call_local(1), exit()], &[mov64(0, 7), exit()]]);
    assert_eq!(compile(&p, &h, opts).unwrap().max_instructions(), None);
    // Without the option, or without a budget, nothing is left to the caller.
    let p = [mov64(0, 1), exit()];
    let counted = CompileOptions {
        budget: true,
        ..Default::default()
    };
    assert_eq!(compile(&p, &h, counted).unwrap().max_instructions(), None);
    let uncounted = CompileOptions {
        budget_loops_only: true,
        ..Default::default()
    };
    assert_eq!(compile(&p, &h, uncounted).unwrap().max_instructions(), None);
}

#[test]
fn limits_below_the_length_run_in_the_interpreter() {
    // A loop-free program stopped by a limit below its length, through `run_jit`, reports the
    // interpreter's error; at its length it runs in the JIT code.
    let mut vm = Vm::new(progpack_bpf::Helpers::new());
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    let p = vm
        .load_asm("mov %r0, 1\nadd %r0, 2\nadd %r0, 3\nexit")
        .unwrap();
    assert_eq!(p.jit().unwrap().max_instructions(), Some(4));
    let limit = |n| RunOptions {
        instruction_limit: n,
    };
    assert_eq!(p.run_jit_with(&mut [], &limit(4)).unwrap(), 6);
    let err = p.run_jit_with(&mut [], &limit(3)).unwrap_err();
    assert!(matches!(
        err,
        Error::Run(RunError::InstructionLimit { limit: 3 })
    ));
}

#[test]
fn the_largest_limit_runs_every_kind_of_program() {
    // u64::MAX as the limit: programs with a stack (an environment to build), without, with
    // a loop, on the JIT path they take.
    let mut vm = Vm::new(progpack_bpf::Helpers::new());
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    let max = RunOptions {
        instruction_limit: u64::MAX,
    };
    for (src, want) in [
        ("mov %r0, 5\nexit", 5),
        ("stdw [%r10-8], 7\nldxdw %r0, [%r10-8]\nexit", 7),
        ("mov %r0, 0\nl:\nadd %r0, 1\njlt %r0, 9, l\nexit", 9),
    ] {
        let p = vm.load_asm(src).unwrap();
        assert_eq!(p.run_jit_with(&mut [], &max).unwrap(), want, "{src}");
        assert_eq!(p.run_interp_with(&mut [], &max).unwrap(), want, "{src}");
    }
}
