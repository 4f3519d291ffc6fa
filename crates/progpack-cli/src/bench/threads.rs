//! Workload 5, threads: load throughput (load + first call of 64-byte programs) with 1 and 2
//! threads loading into the same allocator. Reports wall-clock ns per program for each
//! thread count and the speedup (1-thread time / 2-thread time).

use super::gen::{Sizes, SEED};
use super::report::Report;
use super::sys::System;
use super::systems::Kind;
use super::{load_and_call, Scale};
use std::sync::Barrier;
use std::time::Instant;

/// Runs the threads workload for every system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    let n = scale.threads_n;
    let lens = Sizes::Fixed(64).generate(n, SEED);
    for &kind in kinds {
        let mut per_thread_count = Vec::new();
        let mut name = "";
        for threads in [1usize, 2] {
            let mut sys = match kind.make() {
                Ok(s) => s,
                Err(e) => {
                    report.note(
                        "threads",
                        &format!("{kind:?}"),
                        format!("cannot start: {e}"),
                    );
                    break;
                }
            };
            name = sys.name();
            let handles: Result<Vec<Box<dyn System>>, _> =
                (0..threads).map(|_| sys.for_thread()).collect();
            let mut handles = match handles {
                Ok(h) => h,
                Err(e) => {
                    report.note("threads", name, format!("no thread handle: {e}"));
                    break;
                }
            };
            let share = n / threads;
            let barrier = Barrier::new(threads + 1);
            let (ns, errors) = std::thread::scope(|scope| {
                let workers: Vec<_> = handles
                    .iter_mut()
                    .enumerate()
                    .map(|(t, h)| {
                        let lens = &lens[t * share..(t + 1) * share];
                        let barrier = &barrier;
                        scope.spawn(move || {
                            let mut ids = Vec::with_capacity(lens.len());
                            barrier.wait();
                            load_and_call(h.as_mut(), lens, &mut ids).err()
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                let errors: Vec<_> = workers
                    .into_iter()
                    .filter_map(|w| w.join().expect("worker panicked"))
                    .collect();
                (
                    start.elapsed().as_nanos() as f64 / (share * threads) as f64,
                    errors,
                )
            });
            drop(handles);
            drop(sys);
            if let Some(e) = errors.first() {
                report.note("threads", name, format!("{threads} threads: {e}"));
                break;
            }
            let unit = if threads == 1 {
                "ns/program, 1 thread"
            } else {
                "ns/program, 2 threads"
            };
            report.push("threads", name, n, "64", ns, unit);
            per_thread_count.push(ns);
        }
        if let [one, two] = per_thread_count[..] {
            report.push("threads", name, n, "64", one / two, "speedup 2 vs 1 thread");
        }
    }
}
