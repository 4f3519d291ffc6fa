//! Thousands of JIT programs loaded into one allocator share its packs, run independently
//! (also from several threads), and give their chunks back when dropped.

use std::sync::Arc;

use progpack::{Allocator, CodeRange, Config};
use progpack_bpf::{Helpers, JitOptions, Vm};

fn source(k: u32) -> String {
    // r0 = mem[0] + k, with a bounds check the program must pass.
    format!("ldxb %r0, [%r1]\nadd %r0, {k}\njgt %r2, 0, +1\nmov %r0, 0\nexit")
}

#[test]
fn thousands_of_programs_share_packs() {
    let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))
        .expect("allocator");
    let mut vm = Vm::new(Helpers::conformance());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    const N: u32 = 4000;
    let progs: Vec<_> = (0..N)
        .map(|k| vm.load_asm(&source(k)).expect("loads"))
        .collect();
    let s = alloc.stats();
    assert_eq!(s.programs, N as usize);
    let code_bytes: usize = progs.iter().map(|p| p.jit().unwrap().program().len()).sum();
    // Packed: the packs hold all programs with little waste (each program takes whole
    // chunks, so allow chunk rounding), far fewer mappings than programs.
    assert!(s.packs <= 1 + code_bytes * 2 / s.pack_size, "{s:?}");
    assert!(s.chunks_used * s.chunk_size <= code_bytes + N as usize * (s.chunk_size + 16));
    assert!(s.packs < 10, "{s:?}");
    // Every program runs, in the JIT and in the interpreter, with the same result.
    let progs = Arc::new(progs);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let progs = Arc::clone(&progs);
            std::thread::spawn(move || {
                for k in (t..N).step_by(4) {
                    let mut mem = [7u8; 3];
                    let p = &progs[k as usize];
                    assert_eq!(p.run_jit(&mut mem).unwrap(), 7 + k as u64);
                    assert_eq!(p.run_interp(&mut mem).unwrap(), 7 + k as u64);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(progs);
    let s = alloc.stats();
    assert_eq!((s.programs, s.chunks_used), (0, 0), "{s:?}");
    assert!(alloc.check_invariants().is_ok());
}

#[test]
fn vm_without_jit_reports_it() {
    let vm = Vm::new(Helpers::new());
    let p = vm.load_asm("mov %r0, 1\nexit").unwrap();
    assert!(p.jit().is_none());
    assert!(matches!(
        p.run_jit(&mut []),
        Err(progpack_bpf::Error::Jit(
            progpack_bpf::jit::JitError::NotCompiled
        ))
    ));
    // Compiling afterwards works, into any allocator (here one without a code range).
    let mut p = p;
    let alloc = Allocator::new(Config::default()).unwrap();
    p.jit_compile(&alloc, JitOptions::default()).unwrap();
    assert_eq!(p.run_jit(&mut []).unwrap(), 1);
}
