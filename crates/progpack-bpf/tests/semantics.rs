//! Execution-model details the conformance files do not pin down (see `interp` docs).

use progpack_bpf::{Error, Helpers, RunError, RunOptions, Vm};

fn run(src: &str, mem: &mut [u8]) -> Result<u64, Error> {
    let vm = Vm::new(Helpers::conformance());
    Ok(vm.load_asm(src)?.run_interp(mem)?)
}

#[test]
fn r1_r2_r10_at_entry() {
    let mut mem = [0u8; 13];
    let addr = mem.as_ptr() as u64;
    assert_eq!(run("mov %r0, %r1\nexit", &mut mem).unwrap(), addr);
    assert_eq!(run("mov %r0, %r2\nexit", &mut mem).unwrap(), 13);
    // Each frame has its own r10: callee r10 = caller r10 - 512.
    let src =
        "mov %r6, %r10\ncall local f\nsub %r6, %r0\nmov %r0, %r6\nexit\nf:\nmov %r0, %r10\nexit";
    assert_eq!(run(src, &mut []).unwrap(), 512);
}

#[test]
fn frames_are_zeroed_and_callers_frames_are_reachable() {
    // The caller writes its frame, the callee reads it through a pointer in r1 and writes
    // its own frame; a second call sees a zeroed frame again.
    let src = "stdw [%r10-8], 77\nmov %r1, %r10\ncall local f\nmov %r7, %r0\ncall local g\n\
               add %r0, %r7\nexit\n\
               f:\nldxdw %r0, [%r1-8]\nstdw [%r10-8], 5\nexit\n\
               g:\nldxdw %r0, [%r10-8]\nexit";
    assert_eq!(run(src, &mut []).unwrap(), 77);
    // A callee's frame is gone once it returned: the caller may not reach below its own.
    let src = "call local f\nldxdw %r0, [%r10-520]\nexit\nf:\nexit";
    assert!(matches!(
        run(src, &mut []),
        Err(Error::Run(RunError::OutOfBounds { len: 8, pc: 1, .. }))
    ));
}

#[test]
fn unwind_helper_stops_only_on_zero() {
    assert_eq!(
        run("mov %r1, 0\ncall 5\nmov %r0, 9\nexit", &mut []).unwrap(),
        0
    );
    assert_eq!(
        run("mov %r1, 3\ncall 5\nmov %r0, 9\nexit", &mut []).unwrap(),
        9
    );
}

#[test]
fn callx_to_unknown_helper_is_a_run_error() {
    assert!(matches!(
        run("mov %r2, 99\ncall %r2\nexit", &mut []),
        Err(Error::Run(RunError::UnknownHelper { id: 99, pc: 1 }))
    ));
    // A static call to an unknown helper is rejected at load time.
    assert!(matches!(
        run("call 99\nexit", &mut []),
        Err(Error::Check(_))
    ));
}

#[test]
fn sign_extending_loads_and_atomics_bounds() {
    let mut mem = [0x81, 0x80, 0xff, 0x7f, 0, 0, 0, 0];
    assert_eq!(
        run("ldxsb %r0, [%r1]\nexit", &mut mem).unwrap(),
        0xffff_ffff_ffff_ff81
    );
    assert_eq!(
        run("ldxsh %r0, [%r1]\nexit", &mut mem).unwrap(),
        0xffff_ffff_ffff_8081
    );
    assert_eq!(
        run("ldxsw %r0, [%r1]\nexit", &mut mem).unwrap(),
        0x7fff_8081
    );
    assert!(matches!(
        run("mov %r2, 1\nlock add [%r1+4], %r2\nexit", &mut mem),
        Err(Error::Run(RunError::OutOfBounds { len: 8, pc: 1, .. }))
    ));
    run("mov %r2, 1\nlock add32 [%r1+4], %r2\nexit", &mut mem).unwrap();
    assert_eq!(mem[4], 1);
}

#[test]
fn helper_calls_preserve_r1_to_r5() {
    let src = "mov %r1, 1\nmov %r2, 2\nmov %r3, 3\nmov %r4, 4\nmov %r5, 5\ncall 5\n\
               add %r0, %r1\nadd %r0, %r2\nadd %r0, %r3\nadd %r0, %r4\nadd %r0, %r5\nexit";
    assert_eq!(run(src, &mut []).unwrap(), 1 + 15);
}

#[test]
fn instruction_limit_is_configurable() {
    let mut vm = Vm::new(Helpers::new());
    vm.set_run_options(RunOptions {
        instruction_limit: 10,
    });
    let p = vm
        .load_asm("mov %r0, 0\nl:\nadd %r0, 1\njlt %r0, 4, l\nexit")
        .unwrap();
    assert_eq!(p.run_interp(&mut []), Ok(4)); // 1 + 4*2 + 1 = 10 instructions
    let p = vm
        .load_asm("mov %r0, 0\nl:\nadd %r0, 1\njlt %r0, 5, l\nexit")
        .unwrap();
    assert_eq!(
        p.run_interp(&mut []),
        Err(RunError::InstructionLimit { limit: 10 })
    );
}

#[test]
fn many_programs_in_one_vm() {
    let vm = Vm::new(Helpers::new());
    let progs: Vec<_> = (0..2000)
        .map(|i| {
            vm.load_asm(&format!("mov %r0, {i}\nadd %r0, %r2\nexit"))
                .unwrap()
        })
        .collect();
    for (i, p) in progs.iter().enumerate().step_by(97) {
        assert_eq!(p.run_interp(&mut [0; 3]).unwrap(), i as u64 + 3);
    }
}
