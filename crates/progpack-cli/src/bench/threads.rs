//! Workload 5, threads: load throughput (load + first call of 64-byte programs) with 1 and 2
//! threads loading into the same allocator (progpack: clones of one `Allocator`;
//! jit-allocator: one allocator behind a `Mutex`; mmap: the kernel). Reports wall-clock ns
//! per program for each thread count (fastest of [`super::REPEAT`] runs, each into a fresh
//! allocator) and the speedup (1-thread time / 2-thread time).

use super::gen::{Sizes, SEED};
use super::report::Report;
use super::sys::System;
use super::systems::Kind;
use super::{load_and_call, Scale, REPEAT};
use std::sync::Barrier;
use std::time::Instant;

/// One run: `threads` threads each load their share of `lens` into one fresh `kind`.
/// Returns wall-clock time per program: from the first worker's start to the last one's end
/// (each worker reads the clock itself, so a descheduled main thread cannot skew it).
fn run_once(kind: Kind, threads: usize, lens: &[usize]) -> Result<f64, String> {
    let mut sys = kind.make().map_err(|e| format!("cannot start: {e}"))?;
    let mut handles: Vec<Box<dyn System>> = (0..threads)
        .map(|_| sys.for_thread())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("no thread handle: {e}"))?;
    let share = lens.len() / threads;
    let barrier = Barrier::new(threads + 1);
    let (elapsed, errors) = std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter_mut()
            .enumerate()
            .map(|(t, h)| {
                let lens = &lens[t * share..(t + 1) * share];
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut ids = Vec::with_capacity(lens.len());
                    barrier.wait();
                    let start = Instant::now();
                    let err = load_and_call(h.as_mut(), lens, &mut ids).err();
                    (start, Instant::now(), err)
                })
            })
            .collect();
        barrier.wait();
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect();
        let first = results
            .iter()
            .map(|r| r.0)
            .min()
            .expect("at least one thread");
        let last = results
            .iter()
            .map(|r| r.1)
            .max()
            .expect("at least one thread");
        let errors: Vec<_> = results.into_iter().filter_map(|r| r.2).collect();
        (last - first, errors)
    });
    drop(handles);
    drop(sys);
    match errors.first() {
        Some(e) => Err(format!("{threads} threads: {e}")),
        None => Ok(elapsed.as_nanos() as f64 / (share * threads) as f64),
    }
}

/// Runs the threads workload for every system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    let n = scale.threads_n;
    let lens = Sizes::Fixed(64).generate(n, SEED);
    for &kind in kinds.iter().filter(|k| k.runs_in("threads")) {
        let mut per_program = Vec::new();
        for threads in [1usize, 2] {
            let mut best: Option<f64> = None;
            for _ in 0..REPEAT {
                match run_once(kind, threads, &lens) {
                    Ok(t) => best = Some(best.map_or(t, |b: f64| b.min(t))),
                    Err(e) => {
                        report.note("threads", kind.name(), format!("{e}; no row"));
                        best = None;
                        break;
                    }
                }
            }
            let Some(best) = best else { break };
            let unit = if threads == 1 {
                "ns/program, 1 thread"
            } else {
                "ns/program, 2 threads"
            };
            let ns = best;
            report.push("threads", kind.name(), n, "64", ns, unit);
            per_program.push(ns);
        }
        if let [one, two] = per_program[..] {
            report.push(
                "threads",
                kind.name(),
                n,
                "64",
                one / two,
                "speedup 2 vs 1 thread",
            );
        }
    }
}
