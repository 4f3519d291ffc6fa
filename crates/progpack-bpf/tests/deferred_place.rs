//! Deferred placement: with a backend that pays a system call per write (procmem), programs a
//! VM loads one by one are written to executable memory together, 256 at a time, or when one
//! of them first runs, or on `Vm::flush`. Nothing may run before it is written; dropped
//! waiting programs give their chunks back; a failed write leaves the programs to the
//! interpreter.
#![cfg(target_arch = "x86_64")]

#[path = "../../progpack/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use progpack::{Allocator, BackendChoice, Config};
use progpack_bpf::{BpfProgram, Helpers, JitOptions, Vm};
use support::{run_in_child, ChildExit};

fn source(k: u32) -> String {
    // r0 = mem[0] + k, with a bounds check the program must pass.
    format!("ldxb %r0, [%r1]\nadd %r0, {k}\njgt %r2, 0, +1\nmov %r0, 0\nexit")
}

fn vm_on(backend: BackendChoice) -> (Allocator, Vm) {
    let alloc = Allocator::new(Config::default().backend(backend)).expect("allocator");
    let mut vm = Vm::new(Helpers::conformance());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    (alloc, vm)
}

fn load(vm: &Vm, range: std::ops::Range<u32>) -> Vec<(BpfProgram, u32)> {
    range
        .map(|k| (vm.load_asm(&source(k)).expect("loads"), k))
        .collect()
}

fn runs_right(p: &BpfProgram, k: u32) {
    let mut mem = [7u8; 3];
    assert_eq!(
        p.run_jit(&mut mem).unwrap(),
        7 + u64::from(k),
        "program {k}"
    );
}

/// Programs that wait at most before the load that adds one more writes them all.
const GROUP: u32 = 256;

#[test]
fn programs_wait_until_a_group_is_full_then_are_written_together() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let mut progs = load(&vm, 0..GROUP - 1);
    let s = alloc.stats();
    assert_eq!(s.programs, 0, "{} programs wait: {s:?}", GROUP - 1);
    assert!(s.chunks_cached > 0, "their chunks are reserved: {s:?}");
    progs.extend(load(&vm, GROUP - 1..GROUP));
    assert_eq!(
        alloc.stats().programs,
        GROUP as usize,
        "the last load of a group writes them all"
    );
    progs.extend(load(&vm, GROUP..GROUP + 6));
    assert_eq!(alloc.stats().programs, GROUP as usize);
    vm.flush();
    assert_eq!(
        alloc.stats().programs,
        GROUP as usize + 6,
        "flush writes the rest"
    );
    for (p, k) in &progs {
        runs_right(p, *k);
    }
    drop(progs);
    let s = alloc.stats();
    assert_eq!((s.programs, s.chunks_used), (0, 0), "{s:?}");
    alloc.check_invariants().unwrap();
}

#[test]
fn a_first_run_writes_its_group_before_calling_it() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let progs = load(&vm, 0..10);
    assert_eq!(alloc.stats().programs, 0);
    // The last one runs first: the whole group is written, then called.
    runs_right(&progs[9].0, 9);
    assert_eq!(alloc.stats().programs, 10);
    // Its code is there: not traps, and it decodes as what the JIT made.
    let jit = progs[3].0.jit().expect("compiled");
    let code = jit.program().bytes();
    assert!(code.iter().any(|&b| b != 0xcc), "code was written");
    for (p, k) in &progs {
        runs_right(p, *k);
    }
}

#[test]
fn asking_for_the_code_writes_it() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let (p, _) = load(&vm, 0..1).pop().unwrap();
    assert_eq!(alloc.stats().programs, 0);
    let code = p.jit().expect("compiled").program().bytes();
    assert_eq!(alloc.stats().programs, 1);
    assert!(code.iter().any(|&b| b != 0xcc), "code was written");
}

#[test]
fn waiting_programs_dropped_give_their_chunks_back() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let mut progs = load(&vm, 0..40);
    // Drop every other one while they wait, then write the group.
    let mut k = 0;
    progs.retain(|_| {
        k += 1;
        k % 2 == 0
    });
    vm.flush();
    assert_eq!(
        alloc.stats().programs,
        20,
        "only the live ones became programs"
    );
    for (p, k) in &progs {
        runs_right(p, *k);
    }
    drop(progs);
    // Waiting programs of a group nobody runs: the group goes when the VM and they do.
    let waiting = load(&vm, 100..110);
    drop(waiting);
    drop(vm);
    let s = alloc.stats();
    assert_eq!(
        (s.programs, s.chunks_used, s.chunks_cached),
        (0, 0, 0),
        "{s:?}"
    );
    alloc.check_invariants().unwrap();
}

#[test]
fn waiting_programs_first_run_from_many_threads() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let progs = Arc::new(load(&vm, 0..50));
    assert_eq!(alloc.stats().programs, 0);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let progs = Arc::clone(&progs);
            std::thread::spawn(move || {
                // Each thread starts at a different program; all race to write the group.
                for i in 0..progs.len() {
                    let (p, k) = &progs[(i + t * 13) % progs.len()];
                    runs_right(p, *k);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(alloc.stats().programs, 50);
}

#[test]
fn loads_from_many_threads_share_groups() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let vm = Arc::new(vm);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let vm = Arc::clone(&vm);
            std::thread::spawn(move || {
                let progs = load(&vm, t * 1000..t * 1000 + 100);
                for (p, k) in &progs {
                    runs_right(p, *k);
                }
                progs
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    vm.flush();
    assert_eq!(alloc.stats().programs, 400);
    drop(all);
    assert_eq!(alloc.stats().chunks_used, 0);
    alloc.check_invariants().unwrap();
}

#[test]
fn with_a_writable_alias_each_load_is_written_at_once() {
    let (alloc, vm) = vm_on(BackendChoice::DualMap);
    let progs = load(&vm, 0..10);
    assert_eq!(alloc.stats().programs, 10, "no system call to save");
    for (p, k) in &progs {
        runs_right(p, *k);
    }
}

#[test]
fn load_many_writes_at_once() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let codes: Vec<Vec<u8>> = (0..10)
        .map(|k| {
            let slots = progpack_bpf::asm::assemble(&source(k)).expect("assembles");
            progpack_bpf::insn::encode_slots(&slots)
        })
        .collect();
    let refs: Vec<&[u8]> = codes.iter().map(|c| c.as_slice()).collect();
    let progs = vm.load_many(&refs).expect("loads");
    assert_eq!(alloc.stats().programs, 10);
    for (p, k) in progs.iter().zip(0..) {
        runs_right(p, k);
    }
}

/// When writing fails (here a seccomp filter refuses `pwrite`/`pwritev` after the programs
/// were loaded), the programs run in the interpreter, with the same results.
#[test]
fn a_failed_write_leaves_the_programs_to_the_interpreter() {
    let out = run_in_child(|| {
        let (alloc, vm) = vm_on(BackendChoice::ProcMem);
        let progs = load(&vm, 0..10);
        support::seccomp::install_refuse_pwrite()?;
        for (p, k) in &progs {
            let mut mem = [7u8; 3];
            let r0 = p.run_jit(&mut mem).map_err(|e| e.to_string())?;
            if r0 != 7 + u64::from(*k) {
                return Err(format!("program {k}: {r0}"));
            }
            if p.jit().is_some() {
                return Err("a program whose write failed shows JIT code".into());
            }
        }
        if alloc.stats().programs != 0 {
            return Err("programs were made although the write failed".into());
        }
        Ok(())
    });
    assert_eq!(out.exit, ChildExit::Exited(0), "{}", out.message);
}

/// Programs still waiting when the process forks run right in the child (written there, in
/// the child's copy of the packs, or in the interpreter), and in the parent.
#[test]
fn waiting_programs_run_after_fork_in_child_and_parent() {
    let (alloc, vm) = vm_on(BackendChoice::ProcMem);
    let progs = load(&vm, 0..20);
    assert_eq!(alloc.stats().programs, 0);
    let out = run_in_child(|| {
        for (p, k) in &progs {
            let mut mem = [7u8; 3];
            let r0 = p.run_jit(&mut mem).map_err(|e| e.to_string())?;
            if r0 != 7 + u64::from(*k) {
                return Err(format!("program {k}: {r0}"));
            }
        }
        Ok(())
    });
    assert_eq!(out.exit, ChildExit::Exited(0), "{}", out.message);
    for (p, k) in &progs {
        runs_right(p, *k);
    }
    assert_eq!(alloc.stats().programs, 20);
}
