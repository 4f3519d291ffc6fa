//! W^X: while threads load, finalize (one by one and in batches) and free programs with every
//! backend, another thread scans `/proc/self/maps` the whole time; no mapping may ever be
//! writable and executable.

mod support;

use progpack::{Allocator, BackendChoice, Config};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use support::{ret_imm, wx_mappings};

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
        BackendChoice::DualMap,
        BackendChoice::DualMapPerWrite,
    ];
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
                        let v = t as u32 * 1_000_000 + round * 1000 + i;
                        let mut d = alloc.draft(6 + (i as usize % 300), 1).unwrap();
                        d.image_mut()[..6].copy_from_slice(&ret_imm(v));
                        progs.push((v, d.finalize().unwrap()));
                    }
                    let mut b = alloc.batch();
                    for i in 0..200u32 {
                        b.push(6, 1).unwrap().image.copy_from_slice(&ret_imm(i));
                    }
                    let batch = b.finalize().unwrap();
                    for (v, p) in &progs {
                        // SAFETY: `p` holds `mov eax, v; ret`.
                        let f = unsafe { p.as_fn::<extern "C" fn() -> u32>() };
                        assert_eq!(f(), *v);
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
                    // A large program gets (and loses) a mapping of its own.
                    let mut big = alloc.draft(100 << 10, 16).unwrap();
                    big.image_mut()[..6].copy_from_slice(&ret_imm(round));
                    let big = big.finalize().unwrap();
                    assert!(big.is_dedicated());
                }
                assert!(alloc.stats().packs_released_total > 0);
                checked
            })
        })
        .collect();
    let checked: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_eq!(checked, 3 * 40 * 200);
    assert!(scans.load(Ordering::Relaxed) > 10, "the watcher barely ran");
    assert!(
        seen.is_empty(),
        "writable+executable mappings seen: {seen:?}"
    );
}
