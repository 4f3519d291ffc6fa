//! Freed code traps. Over many random frees, calling any byte of a freed program traps at that
//! very byte; it never runs stale code. And chunks are trap-filled *before* they can be handed
//! out again: a draft never sees old code under it, even while other threads free concurrently.
//!
//! The bulk check runs in a forked child with a SIGTRAP handler that records where the trap
//! happened and makes the call return a sentinel (x86-64: it emulates the `ret`), so thousands
//! of freed addresses are checked in one process. A sample is also checked the plain way: a
//! child calls the freed address and must die of SIGTRAP.

mod support;

use progpack::{Allocator, BackendChoice, Config, Program};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use support::{call_addr, call_u64, ret_imm64, run_in_child, ChildExit, Rng};

fn load(alloc: &Allocator, v: u64, len: usize) -> Program {
    let mut d = alloc.draft(len, 1).expect("draft");
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

#[cfg(target_arch = "x86_64")]
mod trap {
    //! A SIGTRAP handler that turns a trap at the first byte executed into a return of
    //! [`SENTINEL`], recording the address of the trap instruction.
    use super::*;

    pub const SENTINEL: u64 = 0x7a4b_7a4b_7a4b_7a4b;
    pub static LAST_TRAP: AtomicU64 = AtomicU64::new(0);
    pub static TRAPS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_trap(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid ucontext for SA_SIGINFO handlers. The trapping
        // code was entered by a `call` and executed one int3 and nothing else, so the return
        // address is at RSP; reading it and adjusting the saved registers is all we do.
        unsafe {
            let uc = ctx.cast::<libc::ucontext_t>();
            let g = &mut (*uc).uc_mcontext.gregs;
            let rip = g[libc::REG_RIP as usize] as u64;
            LAST_TRAP.store(rip - 1, Ordering::SeqCst); // int3 is one byte; RIP is past it
            TRAPS.fetch_add(1, Ordering::SeqCst);
            let rsp = g[libc::REG_RSP as usize] as u64;
            let ret = *(rsp as *const u64);
            g[libc::REG_RIP as usize] = ret as i64;
            g[libc::REG_RSP as usize] = (rsp + 8) as i64;
            g[libc::REG_RAX as usize] = SENTINEL as i64;
        }
    }

    /// Installs the handler (in a child only: it would change how the harness dies).
    pub fn install() {
        // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO; the handler is
        // async-signal-safe (atomics and register edits only).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_trap
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// Calls `addr`; `Ok(())` if it trapped exactly there, else what happened.
    pub fn expect_trap_at(addr: usize) -> Result<(), String> {
        let before = TRAPS.load(Ordering::SeqCst);
        // SAFETY: `addr` is in a live pack (mapped read+execute); it holds traps (the point of
        // the test) or, if the allocator were wrong, stale `ret_imm64` code, which also returns.
        let got = unsafe { call_addr(addr) };
        if got != SENTINEL || TRAPS.load(Ordering::SeqCst) != before + 1 {
            return Err(format!(
                "calling freed {addr:#x} returned {got:#x} without trapping"
            ));
        }
        let at = LAST_TRAP.load(Ordering::SeqCst) as usize;
        if at != addr {
            return Err(format!("calling freed {addr:#x} trapped at {at:#x}"));
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
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
            trap::expect_trap_at(addr)?;
            for _ in 0..3 {
                trap::expect_trap_at(addr + rng.below(len))?;
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

#[cfg(target_arch = "x86_64")]
fn run_freed(backend: BackendChoice) {
    let out = run_in_child(|| freed_code_traps(backend).and_then(Err));
    assert_eq!(out.exit, ChildExit::Exited(1), "{}", out.message);
    assert!(out.message.contains("every one trapped"), "{}", out.message);
    eprintln!("{}", out.message);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn freed_code_traps_procmem() {
    run_freed(BackendChoice::ProcMem);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn freed_code_traps_dualmap() {
    run_freed(BackendChoice::DualMap);
}

/// Without any handler: a child that calls a freed address dies of SIGTRAP (a random sample).
#[test]
fn freed_code_kills_with_sigtrap() {
    let alloc = Allocator::new(config(BackendChoice::Detect)).expect("allocator");
    let mut rng = Rng(0xdead);
    let mut progs: Vec<Program> = (0..500u64)
        .map(|v| load(&alloc, v, ret_imm64(0).len() + rng.below(200)))
        .collect();
    let mut freed = Vec::new();
    for _ in 0..25 {
        let p = progs.swap_remove(rng.below(progs.len()));
        freed.push(p.addr() + rng.below(p.len()));
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
