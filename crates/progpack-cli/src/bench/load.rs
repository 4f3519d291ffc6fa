//! Workload 1, load: N programs allocated, written, made executable and called once.

use super::gen::{Sizes, SEED};
use super::report::Report;
use super::systems::Kind;
use super::{find_overlap, load_and_call, Scale};
use std::time::Instant;

/// Runs the load workload for every N, size and system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    for &n in &scale.load_n {
        for sizes in [Sizes::Fixed(64), Sizes::Mix] {
            let lens = sizes.generate(n, SEED ^ n as u64);
            for &kind in kinds {
                let mut sys = match kind.make() {
                    Ok(s) => s,
                    Err(e) => {
                        report.note("load", &format!("{kind:?}"), format!("cannot start: {e}"));
                        continue;
                    }
                };
                let mut ids = Vec::with_capacity(n);
                let start = Instant::now();
                let result = load_and_call(sys.as_mut(), &lens, &mut ids);
                let elapsed = start.elapsed();
                let ranges: Vec<(usize, usize)> = ids
                    .iter()
                    .zip(&lens)
                    .map(|(&id, &len)| (sys.addr(id), len))
                    .collect();
                if let Some(overlap) = find_overlap(&ranges) {
                    report.note(
                        "load",
                        sys.name(),
                        format!("n={n} size={}: {overlap}; no row", sizes.label()),
                    );
                    continue;
                }
                match result {
                    Ok(()) => report.push(
                        "load",
                        sys.name(),
                        n,
                        &sizes.label(),
                        elapsed.as_nanos() as f64 / n as f64,
                        "ns/program",
                    ),
                    Err(e) => report.note(
                        "load",
                        sys.name(),
                        format!(
                            "n={n} size={}: failed after {} programs: {e}",
                            sizes.label(),
                            ids.len()
                        ),
                    ),
                }
                // Unloading is not part of the measurement.
                drop(sys);
            }
        }
    }
}
