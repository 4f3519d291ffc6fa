//! `Allocator::program_at` from a SIGSEGV handler names the JIT function that faulted, while
//! other threads load and free named programs in the same allocator.
//!
//! The faulting functions read address 0 (`mov rax, [0]`, 8 bytes) then return; the handler
//! asks `program_at` for the faulting instruction's address, records the answer in atomics,
//! and resumes after the load. This file holds one test: the handler is process-wide.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(unsafe_code)]

use progpack::{Allocator, Config, Program};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static ALLOC: OnceLock<Allocator> = OnceLock::new();
/// What the handler saw: the program's address and length, and its name (up to 64 bytes).
static SEEN_ADDR: AtomicUsize = AtomicUsize::new(0);
static SEEN_LEN: AtomicUsize = AtomicUsize::new(0);
static SEEN_NAME: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static SEEN_NAME_LEN: AtomicUsize = AtomicUsize::new(0);
static FAULTS: AtomicUsize = AtomicUsize::new(0);

/// `mov rax, [0]; ret`: faults on its first instruction.
const FAULTING: [u8; 9] = [0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, 0xc3];
const LOAD_LEN: usize = 8;

extern "C" fn on_segv(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let pc = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    FAULTS.fetch_add(1, Ordering::Relaxed);
    // Only atomics and `program_at` here: no lock, no allocation.
    let found = ALLOC.get().and_then(|a| a.program_at(pc));
    match found {
        Some(info) => {
            SEEN_ADDR.store(info.addr(), Ordering::Relaxed);
            SEEN_LEN.store(info.len(), Ordering::Relaxed);
            let name = info.name_bytes();
            let n = name.len().min(64);
            for (i, w) in SEEN_NAME.iter().enumerate() {
                let mut word = [0u8; 8];
                for (j, b) in word.iter_mut().enumerate() {
                    if let Some(&c) = name[..n].get(i * 8 + j) {
                        *b = c;
                    }
                }
                w.store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
            SEEN_NAME_LEN.store(n, Ordering::Relaxed);
            // Resume after the faulting load (the function then returns).
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] = (pc + LOAD_LEN) as i64;
        }
        None => {
            // Not ours: restore the default action and let the fault kill the process (the
            // test fails loudly rather than loops).
            // SAFETY: resetting a signal disposition is async-signal-safe.
            unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        }
    }
}

fn seen_name() -> String {
    let n = SEEN_NAME_LEN.load(Ordering::Relaxed);
    let bytes: Vec<u8> = SEEN_NAME
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .take(n)
        .collect();
    String::from_utf8(bytes).unwrap()
}

fn named(alloc: &Allocator, name: &str, code: &[u8]) -> Program {
    let mut d = alloc.draft(code.len(), 16).unwrap().named(name).unwrap();
    d.image_mut().copy_from_slice(code);
    d.finalize().unwrap()
}

#[test]
fn a_sigsegv_handler_names_the_faulting_jit_function_while_others_churn() {
    let alloc = ALLOC.get_or_init(|| {
        Allocator::new(Config::default().observe(progpack::Observe::default().ignore_env()))
            .unwrap()
    });
    // SAFETY: installs a handler that touches only atomics and `program_at`.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicUsize::new(0));
    let churners: Vec<_> = (0..2)
        .map(|t| {
            let (stop, churned) = (stop.clone(), churned.clone());
            std::thread::spawn(move || {
                let alloc = ALLOC.get().unwrap();
                let mut live: Vec<Program> = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Named and unnamed programs, drafts and batches, freed in another order.
                    if i.is_multiple_of(3) {
                        let mut b = alloc.batch();
                        for k in 0..8 {
                            b.push_named(40 + k, 1, format!("churn_{t}_{i}_{k}"))
                                .unwrap()
                                .image[0] = 0xc3;
                        }
                        live.extend(b.finalize().unwrap());
                    } else {
                        live.push(named(alloc, &format!("churn_{t}_{i}"), &[0xc3; 24]));
                    }
                    if live.len() > 64 {
                        let half: Vec<Program> = live.drain(..32).collect();
                        if i.is_multiple_of(2) {
                            alloc.free_all(half);
                        } else {
                            drop(half);
                        }
                    }
                    i += 1;
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let rounds = 2000;
    for r in 0..rounds {
        let name = format!("faulting_{r}");
        let p = named(alloc, &name, &FAULTING);
        // SAFETY: the code faults on its load; the handler resumes after it; then `ret`.
        let f = unsafe { p.as_fn::<extern "C" fn() -> u64>() };
        let before = FAULTS.load(Ordering::Relaxed);
        f();
        assert_eq!(
            FAULTS.load(Ordering::Relaxed),
            before + 1,
            "round {r}: no fault seen"
        );
        assert_eq!(SEEN_ADDR.load(Ordering::Relaxed), p.addr(), "round {r}");
        assert_eq!(
            SEEN_LEN.load(Ordering::Relaxed),
            FAULTING.len(),
            "round {r}"
        );
        assert_eq!(seen_name(), name, "round {r}");
        drop(p);
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    let churned = churned.load(Ordering::Relaxed);
    assert!(
        churned > 100,
        "the other threads barely ran ({churned} rounds)"
    );
    eprintln!("{rounds} faults named while {churned} churn rounds loaded and freed programs");
    alloc.check_invariants().unwrap();
}
