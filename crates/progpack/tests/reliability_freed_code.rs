//! Freed code traps. Over many random frees, calling any byte of a freed program traps at that
//! very byte; it never runs stale code. And chunks are trap-filled *before* they can be handed
//! out again: a draft never sees old code under it, even while other threads free concurrently.
//!
//! The bulk check runs in a forked child with a SIGTRAP handler ([`support::trap`]) that
//! records where the trap happened and makes the call return a sentinel, so thousands of freed
//! addresses are checked in one process. A sample is also checked the plain way (procmem, whose
//! packs a child inherits): a child calls the freed address and must die of SIGTRAP.

mod support;

use progpack::{Allocator, BackendChoice, Config, Program};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use support::{call_addr, call_u64, ret_imm64, run_in_child, trap, ChildExit, Rng};

fn load(alloc: &Allocator, v: u64, len: usize) -> Program {
    // Entry points on an instruction boundary (aarch64 cannot fetch elsewhere).
    let mut d = alloc.draft(len, progpack::arch::TRAP.len()).expect("draft");
    let code = ret_imm64(v);
    let img = d.image_mut();
    img[..code.len()].copy_from_slice(&code);
    // The rest: more copies of the code, so a stale jump into the middle would return `v`
    // rather than trap by luck.
    let mut at = code.len();
    while at + code.len() <= img.len() {
        img[at..at + code.len()].copy_from_slice(&code);
        at += code.len();
    }
    d.finalize().expect("finalize")
}

fn config(backend: BackendChoice) -> Config {
    Config::default()
        .pack_size(64 << 10)
        .reserve_packs(1)
        .backend(backend)
}

/// Calls `addr`, which must trap right there.
fn expect_trap_at(addr: usize) -> Result<(), String> {
    // SAFETY: `addr` is in a live pack (mapped read+execute, at an instruction boundary); it
    // holds traps (the point of the test) or, if the allocator were wrong, stale `ret_imm64`
    // code, which also returns.
    unsafe { trap::expect_trap_at(addr, "freed") }
}

/// A random instruction boundary inside `addr..addr + len` (`addr` is one).
fn inside(rng: &mut Rng, addr: usize, len: usize) -> usize {
    addr + rng.below(len) / progpack::arch::TRAP.len() * progpack::arch::TRAP.len()
}

fn freed_code_traps(backend: BackendChoice) -> Result<String, String> {
    trap::install();
    let alloc = Allocator::new(config(backend)).map_err(|e| e.to_string())?;
    let mut rng = Rng(0x7a4b);
    let mut live: Vec<(Program, u64)> = Vec::new();
    let mut next = 0u64;
    let (mut checked, mut frees) = (0usize, 0usize);
    for _round in 0..30 {
        for _ in 0..200 {
            next += 1;
            let len = ret_imm64(0).len() + rng.below(400);
            live.push((load(&alloc, next, len), next));
        }
        // Free a random third; remember where they were.
        let mut freed = Vec::new();
        let mut i = 0;
        while i < live.len() {
            if rng.chance(1, 3) {
                let (p, _) = live.swap_remove(i);
                freed.push((p.addr(), p.len()));
                drop(p);
                frees += 1;
            } else {
                i += 1;
            }
        }
        // Every freed program: its first byte and random bytes inside trap right there.
        for &(addr, len) in &freed {
            expect_trap_at(addr)?;
            for _ in 0..3 {
                expect_trap_at(inside(&mut rng, addr, len))?;
            }
            checked += 4;
        }
        for (p, v) in &live {
            if call_u64(p) != *v {
                return Err(format!("live program at {:#x} wrong after frees", p.addr()));
            }
        }
        alloc.check_invariants()?;
    }
    if checked < 5000 {
        return Err(format!("only {checked} freed addresses checked"));
    }
    Ok(format!(
        "{frees} frees, {checked} freed addresses called: every one trapped in place"
    ))
}

fn run_freed(backend: BackendChoice) {
    let out = run_in_child(|| freed_code_traps(backend).and_then(Err));
    assert_eq!(out.exit, ChildExit::Exited(1), "{}", out.message);
    assert!(out.message.contains("every one trapped"), "{}", out.message);
    eprintln!("{}", out.message);
}

#[test]
fn freed_code_traps_procmem() {
    run_freed(BackendChoice::ProcMem);
}

#[test]
fn freed_code_traps_dualmap() {
    run_freed(BackendChoice::DualMap);
}

/// Without any handler: a child that calls a freed address dies of SIGTRAP (a random sample).
#[test]
fn freed_code_kills_with_sigtrap() {
    let alloc = Allocator::new(config(BackendChoice::ProcMem)).expect("allocator");
    let mut rng = Rng(0xdead);
    let mut progs: Vec<Program> = (0..500u64)
        .map(|v| load(&alloc, v, ret_imm64(0).len() + rng.below(200)))
        .collect();
    let mut freed = Vec::new();
    for _ in 0..25 {
        let p = progs.swap_remove(rng.below(progs.len()));
        freed.push(inside(&mut rng, p.addr(), p.len()));
    }
    // Freed here, before forking: the child inherits the trap-filled bytes.
    for addr in freed {
        let out = run_in_child(|| {
            // SAFETY: `addr` lies in a live pack (read+execute), in freed chunks: traps.
            let got = unsafe { call_addr(addr) };
            Err(format!("returned {got:#x}"))
        });
        assert_eq!(
            out.exit,
            ChildExit::Signaled(libc::SIGTRAP),
            "{addr:#x}: {}",
            out.message
        );
    }
    for (i, p) in progs.iter().enumerate() {
        assert!(call_u64(p) < 500, "program {i}");
    }
}

/// Chunks are trap-filled before they are handed out again: while threads free programs,
/// another thread takes drafts and checks the pack bytes under each before writing anything.
#[test]
fn drafts_never_see_stale_code() {
    run_in_child(|| {
        let alloc = Allocator::new(config(BackendChoice::Detect).shards(1).reserve_packs(1))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stale = Arc::new(AtomicUsize::new(0));
        let looks = Arc::new(AtomicUsize::new(0));
        let freers: Vec<_> = (0..2u64)
            .map(|t| {
                let (alloc, stop) = (alloc.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(t);
                    let mut mine = Vec::new();
                    let mut rounds = 0;
                    while !stop.load(Ordering::Relaxed) || rounds < 10 {
                        for v in 0..100 {
                            mine.push(load(&alloc, v, ret_imm64(0).len() + rng.below(150)));
                        }
                        while mine.len() > 50 {
                            mine.swap_remove(rng.below(mine.len()));
                        }
                        rounds += 1;
                    }
                })
            })
            .collect();
        let checker = {
            let (alloc, stale, looks) = (alloc.clone(), stale.clone(), looks.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(99);
                for _ in 0..20_000 {
                    let len = 1 + rng.below(300);
                    if let Ok(d) = alloc.draft(len, 1) {
                        // SAFETY: the draft owns these bytes of a live pack until it drops.
                        let under =
                            unsafe { std::slice::from_raw_parts(d.exec_addr() as *const u8, len) };
                        looks.fetch_add(1, Ordering::Relaxed);
                        if !progpack::arch::is_all_traps(under) {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        checker.join().map_err(|_| "checker panicked")?;
        stop.store(true, Ordering::Relaxed);
        for f in freers {
            f.join().map_err(|_| "freer panicked")?;
        }
        alloc.check_invariants()?;
        let (stale, looks) = (stale.load(Ordering::Relaxed), looks.load(Ordering::Relaxed));
        if stale > 0 || looks < 20_000 {
            return Err(format!("{stale} of {looks} drafts saw non-trap bytes"));
        }
        Ok(())
    })
    .assert_ok();
}
