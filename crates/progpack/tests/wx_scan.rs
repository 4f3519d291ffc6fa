//! W^X: while threads load, finalize (one by one and in batches) and free programs with every
//! backend, another thread scans `/proc/self/maps` the whole time; no mapping may ever be
//! writable and executable. Sampling can miss a brief window; `wx_seccomp.rs` is the
//! deterministic check (a seccomp filter kills any request for such memory).

mod support;

use progpack::{Allocator, BackendChoice, Config};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Entry alignment: an instruction boundary on every architecture.
const ALIGN: usize = progpack::arch::TRAP.len();
use support::{call_u64, ret_imm64, ret_imm64_len, wx_mappings};

#[test]
fn no_mapping_is_ever_writable_and_executable() {
    assert!(
        wx_mappings().is_empty(),
        "the test process starts with W+X mappings: {:?}",
        wx_mappings()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, scans) = (stop.clone(), scans.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.extend(wx_mappings());
                scans.fetch_add(1, Ordering::Relaxed);
            }
            seen
        })
    };
    // Small packs so that packs are mapped and released often while the watcher looks.
    let backends = [
        BackendChoice::ProcMem,
        BackendChoice::ProcMemPerWrite,
        BackendChoice::DualMap,
        BackendChoice::DualMapPerWrite,
    ];
    let threads = backends.len() as u32;
    let workers: Vec<_> = backends
        .into_iter()
        .enumerate()
        .map(|(t, choice)| {
            std::thread::spawn(move || {
                let alloc = Allocator::new(
                    Config::default()
                        .backend(choice)
                        .pack_size(64 << 10)
                        .reserve_packs(0),
                )
                .unwrap();
                let mut checked = 0u32;
                for round in 0..40u32 {
                    let mut progs = Vec::new();
                    for i in 0..200u32 {
                        let v = u64::from(t as u32 * 1_000_000 + round * 1000 + i);
                        let n = ret_imm64_len();
                        let mut d = alloc.draft(n + (i as usize % 300), ALIGN).unwrap();
                        d.image_mut()[..n].copy_from_slice(&ret_imm64(v));
                        progs.push((v, d.finalize().unwrap()));
                    }
                    let mut b = alloc.batch();
                    for i in 0..200u32 {
                        let code = ret_imm64(u64::from(i));
                        b.push(code.len(), ALIGN)
                            .unwrap()
                            .image
                            .copy_from_slice(&code);
                    }
                    let batch = b.finalize().unwrap();
                    for (v, p) in &progs {
                        assert_eq!(call_u64(p), *v);
                        checked += 1;
                    }
                    // Free every other program, then all: packs empty and are released.
                    let mut k = 0;
                    progs.retain(|_| {
                        k += 1;
                        k % 2 == 0
                    });
                    drop(batch);
                    drop(progs);
                    // This thread's run of chunks goes back too: the pack is empty.
                    alloc.trim();
                    // A large program gets (and loses) a mapping of its own.
                    let mut big = alloc.draft(100 << 10, 16).unwrap();
                    big.image_mut()[..ret_imm64_len()]
                        .copy_from_slice(&ret_imm64(u64::from(round)));
                    let big = big.finalize().unwrap();
                    assert!(big.is_dedicated());
                }
                assert!(
                    alloc.stats().packs_released_total > 0,
                    "{}: {:?}",
                    alloc.backend_name(),
                    alloc.stats()
                );
                checked
            })
        })
        .collect();
    let checked: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_eq!(checked, threads * 40 * 200);
    assert!(scans.load(Ordering::Relaxed) > 10, "the watcher barely ran");
    assert!(
        seen.is_empty(),
        "writable+executable mappings seen: {seen:?}"
    );
}
