//! A thousand short-lived threads load and free programs on one allocator. Each thread takes
//! runs of chunks for itself; when it exits, what it did not use must come back. Afterwards no
//! chunk is used or cached, `stats()` agrees with the packs' own bitmaps, and every pack but
//! the reserve has been released.
#![cfg(target_arch = "x86_64")]

mod support;

use progpack::{Allocator, BackendChoice, Config, Program};
use std::sync::{Arc, Mutex};
use support::{call_u64, ret_imm64, Rng};

const THREADS: usize = 1000;
/// Threads alive at once.
const WAVE: usize = 8;
const RESERVE: usize = 1;

fn thousand_threads(backend: BackendChoice) {
    let alloc = Arc::new(
        Allocator::new(
            Config::default()
                .backend(backend)
                .pack_size(64 * 1024)
                .chunk_size(64)
                .reserve_packs(RESERVE),
        )
        .unwrap(),
    );
    // Programs a thread hands over to be freed by another thread, later.
    let handed: Arc<Mutex<Vec<(Program, u64)>>> = Arc::default();
    let mut cached_while_alive = 0;
    for wave in 0..THREADS / WAVE {
        let threads: Vec<_> = (0..WAVE)
            .map(|t| {
                let (alloc, handed) = (alloc.clone(), handed.clone());
                let id = (wave * WAVE + t) as u64;
                std::thread::spawn(move || {
                    let mut rng = Rng(id);
                    let mut mine = Vec::new();
                    for i in 0..1 + rng.below(12) {
                        let v = id << 16 | i as u64;
                        let code = ret_imm64(v);
                        let mut d = alloc.draft(code.len() + rng.below(200), 1).unwrap();
                        d.image_mut()[..code.len()].copy_from_slice(&code);
                        mine.push((d.finalize().unwrap(), v));
                    }
                    if rng.chance(1, 2) {
                        // A batch: its reserved run is cached until it is finalized or
                        // dropped; half are finalized, half dropped.
                        let mut b = alloc.batch();
                        let mut values = Vec::new();
                        for i in 0..1 + rng.below(6) {
                            let v = id << 16 | 0x8000 | i as u64;
                            let code = ret_imm64(v);
                            b.push(code.len(), 1).unwrap().image.copy_from_slice(&code);
                            values.push(v);
                        }
                        if rng.chance(1, 2) {
                            mine.extend(b.finalize().unwrap().into_iter().zip(values));
                        }
                    }
                    for (p, v) in &mine {
                        assert_eq!(call_u64(p), *v);
                    }
                    let cached = alloc.stats().chunks_cached;
                    // Keep some, hand some over, free the rest here.
                    let keep = rng.below(mine.len() + 1);
                    let rest = mine.split_off(keep);
                    handed.lock().unwrap().extend(rest);
                    drop(mine);
                    cached
                })
            })
            .collect();
        for t in threads {
            cached_while_alive = cached_while_alive.max(t.join().unwrap());
        }
        // Every thread of the wave has exited: nothing may stay cached for it.
        let s = alloc.stats();
        assert_eq!(
            s.chunks_cached, 0,
            "wave {wave}: runs of exited threads still cached"
        );
    }
    assert!(
        cached_while_alive > 0,
        "threads never held a run: the test would not see a run that fails to come back"
    );
    let handed = std::mem::take(&mut *handed.lock().unwrap());
    assert!(!handed.is_empty());
    for (p, v) in &handed {
        assert_eq!(call_u64(p), *v, "a program outlived its thread and changed");
    }
    drop(handed);
    let s = alloc.stats();
    assert_eq!(s.programs, 0);
    assert_eq!(s.chunks_used, 0);
    assert_eq!(s.chunks_cached, 0);
    assert!(
        s.packs_mapped_total > RESERVE,
        "only {} packs were ever mapped: the workload did not make packs come and go",
        s.packs_mapped_total
    );
    assert_eq!(
        s.packs, RESERVE,
        "every pack but the reserve is released: {s:?}"
    );
    assert_eq!(s.packs_mapped_total - s.packs_released_total, RESERVE);
    let snap = alloc.snapshot();
    assert!(snap.packs.iter().all(|p| p.used_chunks() == 0));
    alloc.check_invariants().unwrap();
}

#[test]
fn procmem_runs_come_back_from_a_thousand_threads() {
    thousand_threads(BackendChoice::ProcMem);
}

#[test]
fn dualmap_runs_come_back_from_a_thousand_threads() {
    thousand_threads(BackendChoice::DualMap);
}
