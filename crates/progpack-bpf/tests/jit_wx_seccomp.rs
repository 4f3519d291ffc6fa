//! W^X for the eBPF JIT, deterministically: in a child process with a seccomp filter that
//! kills on any `mmap`, `mprotect` or `pkey_mprotect` asking for writable+executable memory
//! (the filter of progpack's `wx_seccomp` test, shared through `#[path]`), programs are
//! JIT-compiled one by one and in batches on every backend, with and without a code range, run
//! against the interpreter, and dropped. The child must exit cleanly. The filter itself is
//! proven in progpack's test (a read+write+execute request dies of SIGSYS); here a control
//! child checks it once more.
#![cfg(target_arch = "x86_64")]

#[path = "../../progpack/tests/support/mod.rs"]
mod support;

use progpack::{Allocator, BackendChoice, CodeRange, Config};
use progpack_bpf::{asm, insn, Helpers, JitOptions, Vm};
use support::seccomp::{install_kill_on_wx, request_wx};
use support::{run_in_child, ChildExit};

fn source(k: u32) -> String {
    // r0 = mem[0] + k, with a bounds check the program must pass.
    format!("ldxb %r0, [%r1]\nadd %r0, {k}\njgt %r2, 0, +1\nmov %r0, 0\nexit")
}

fn jit_under_filter(backend: BackendChoice) -> Result<String, String> {
    install_kill_on_wx()?;
    let e = |e: progpack_bpf::Error| e.to_string();
    let mut runs = 0;
    for code_range in [false, true] {
        let mut cfg = Config::default()
            .backend(backend.clone())
            .pack_size(64 << 10)
            .reserve_packs(0);
        if code_range {
            cfg = cfg.code_range(CodeRange::near_this_binary());
        }
        let alloc = Allocator::new(cfg).map_err(|e| e.to_string())?;
        let mut vm = Vm::new(Helpers::conformance());
        vm.enable_jit(alloc, JitOptions::default());
        for round in 0..3u32 {
            let mut progs = Vec::new();
            for k in 0..300 {
                progs.push((vm.load_asm(&source(round * 1000 + k)).map_err(e)?, k));
            }
            let codes: Vec<Vec<u8>> = (300..600)
                .map(|k| {
                    let slots = asm::assemble(&source(round * 1000 + k)).expect("assembles");
                    insn::encode_slots(&slots)
                })
                .collect();
            let refs: Vec<&[u8]> = codes.iter().map(|c| c.as_slice()).collect();
            progs.extend(vm.load_many(&refs).map_err(e)?.into_iter().zip(300..));
            for (p, k) in &progs {
                let mut mem = [7u8; 3];
                let jit = p.run_jit(&mut mem).map_err(e)?;
                let interp = p.run_interp(&mut mem).map_err(|e| e.to_string())?;
                if jit != interp || jit != u64::from(7 + round * 1000 + k) {
                    return Err(format!("program {k}: jit {jit}, interp {interp}"));
                }
                runs += 1;
            }
            // Drop every other program, then the rest.
            let mut i = 0;
            progs.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            drop(progs);
        }
    }
    Ok(format!("{runs} JIT runs"))
}

#[test]
fn the_jit_never_asks_for_writable_and_executable_memory() {
    // Control: the filter is in force in such a child.
    let out = run_in_child(|| {
        install_kill_on_wx()?;
        Err(request_wx("mprotect"))
    });
    assert_eq!(
        out.exit,
        ChildExit::Signaled(libc::SIGSYS),
        "{}",
        out.message
    );
    for backend in [
        BackendChoice::ProcMem,
        BackendChoice::ProcMemPerWrite,
        BackendChoice::DualMap,
        BackendChoice::DualMapPerWrite,
    ] {
        let out = run_in_child(|| jit_under_filter(backend.clone()).and_then(Err));
        assert_eq!(
            out.exit,
            ChildExit::Exited(1),
            "{backend:?}: {}",
            out.message
        );
        assert!(
            out.message.ends_with(" JIT runs"),
            "{backend:?}: {}",
            out.message
        );
        eprintln!("{backend:?}: {}", out.message);
    }
}
