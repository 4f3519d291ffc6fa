//! The JIT emits x86-64 code, so it exists only on x86-64 hosts: elsewhere loading with the
//! JIT enabled fails with a typed error, nothing is placed in a pack, and the interpreter
//! works. (Run on aarch64 under qemu-user, see RELIABILITY.md.)

use progpack::{Allocator, Config};
use progpack_bpf::jit::{self, JitError};
use progpack_bpf::{Error, Helpers, JitOptions, JitProgram, Vm};

const PROGRAM: &str = "mov %r0, %r2\nadd %r0, 40\nexit";

#[test]
fn the_jit_runs_only_on_x86_64() {
    let alloc = Allocator::new(Config::default()).expect("allocator");
    let mut vm = Vm::new(Helpers::new());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    let loaded = vm.load_asm(PROGRAM);
    let interp = Vm::new(Helpers::new()).load_asm(PROGRAM).unwrap();
    assert_eq!(interp.run_interp(&mut [0; 2]).unwrap(), 42);
    if cfg!(target_arch = "x86_64") {
        assert!(jit::available());
        let p = loaded.expect("loads with the JIT");
        assert_eq!(p.run_jit(&mut [0; 2]).unwrap(), 42);
        assert_eq!(p.run_interp(&mut [0; 2]).unwrap(), 42);
    } else {
        assert!(!jit::available());
        let err = loaded.expect_err("no JIT on this architecture");
        assert!(
            matches!(err, Error::Jit(JitError::UnsupportedArch { .. })),
            "{err}"
        );
        assert!(err.to_string().contains(std::env::consts::ARCH), "{err}");
        // The lower-level entry points refuse too, and nothing was placed.
        let slots = progpack_bpf::asm::assemble(PROGRAM).unwrap();
        let r = JitProgram::new(&alloc, &slots, &Helpers::new(), JitOptions::default());
        assert!(matches!(r, Err(JitError::UnsupportedArch { .. })));
        assert_eq!(alloc.stats().programs, 0);
    }
}
