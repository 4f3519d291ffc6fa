//! Workload 1, load: N programs allocated, written, made executable and called once.
//!
//! Each system loads the same programs [`super::REPEAT`] times, into a fresh instance each
//! time; the fastest repetition is reported (the machine is shared: the minimum is the run
//! least disturbed by other processes). Unloading is not timed.

use super::gen::{Sizes, SEED};
use super::report::Report;
use super::sys::SysError;
use super::systems::Kind;
use super::{find_overlap, load_and_call, Scale, REPEAT};
use std::time::{Duration, Instant};

/// One timed load of `lens` into a fresh `kind`: elapsed time, or why it failed.
fn load_once(kind: Kind, lens: &[usize]) -> Result<Duration, String> {
    let mut sys = kind.make().map_err(|e| format!("cannot start: {e}"))?;
    let mut ids = Vec::with_capacity(lens.len());
    sys.reserve(lens.len());
    let start = Instant::now();
    let result: Result<(), SysError> = load_and_call(sys.as_mut(), lens, &mut ids);
    let elapsed = start.elapsed();
    result.map_err(|e| format!("failed after {} programs: {e}", ids.len()))?;
    let ranges: Vec<(usize, usize)> = ids
        .iter()
        .zip(lens)
        .map(|(&id, &len)| (sys.addr(id), len))
        .collect();
    if let Some(overlap) = find_overlap(&ranges) {
        return Err(overlap);
    }
    Ok(elapsed)
}

/// Runs the load workload for every N, size and system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    for &n in &scale.load_n {
        for sizes in [Sizes::Fixed(64), Sizes::Mix] {
            if !scale.load_sizes.contains(&sizes.label()) {
                continue;
            }
            let lens = sizes.generate(n, SEED ^ n as u64);
            for &kind in kinds.iter().filter(|k| k.runs_in("load")) {
                let mut best: Option<Duration> = None;
                for _ in 0..REPEAT {
                    match load_once(kind, &lens) {
                        Ok(t) => best = Some(best.map_or(t, |b| b.min(t))),
                        Err(e) => {
                            report.note(
                                "load",
                                kind.name(),
                                format!("n={n} size={}: {e}; no row", sizes.label()),
                            );
                            best = None;
                            break;
                        }
                    }
                }
                if kind == Kind::ProgpackPerfMap {
                    super::systems::progpack::remove_perf_map_dir();
                }
                if let Some(t) = best {
                    report.push(
                        "load",
                        kind.name(),
                        n,
                        &sizes.label(),
                        t.as_nanos() as f64 / n as f64,
                        "ns/program",
                    );
                }
            }
        }
    }
}
