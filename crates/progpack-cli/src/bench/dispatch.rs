//! Workload 2, dispatch: N loaded programs called in a pre-generated random order.
//!
//! The call loop is the same for every system: a list of entry addresses in random order,
//! each called once per pass; one untimed pass warms caches and TLBs, then the fastest of
//! [`REPEAT`] timed passes is reported.
#![allow(unsafe_code)]

use super::gen::{call_order, ret_value, Sizes, SEED};
use super::report::Report;
use super::sys::call;
use super::systems::Kind;
use super::{load_and_call, Scale, REPEAT};
use std::time::Instant;

/// Runs the dispatch workload for every N, size and system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    for &n in &scale.dispatch_n {
        for size in [64, 512] {
            let sizes = Sizes::Fixed(size);
            let lens = sizes.generate(n, SEED);
            let order = call_order(n, scale.dispatch_calls, SEED ^ (n as u64) << 8);
            let expected = order.iter().fold(0u64, |acc, &i| {
                acc.wrapping_add(ret_value(i as usize) as u64)
            });
            for &kind in kinds.iter().filter(|k| k.runs_in("dispatch")) {
                if kind.batched() {
                    continue; // same placement as one-by-one procmem; loading speed is not measured here
                }
                let mut sys = match kind.make() {
                    Ok(s) => s,
                    Err(e) => {
                        report.note(
                            "dispatch",
                            &format!("{kind:?}"),
                            format!("cannot start: {e}"),
                        );
                        continue;
                    }
                };
                let mut ids = Vec::with_capacity(n);
                if let Err(e) = load_and_call(sys.as_mut(), &lens, &mut ids) {
                    report.note(
                        "dispatch",
                        sys.name(),
                        format!(
                            "n={n} size={size}: only {} programs could be loaded ({e}); no row",
                            ids.len()
                        ),
                    );
                    continue;
                }
                let targets: Vec<usize> =
                    order.iter().map(|&i| sys.addr(ids[i as usize])).collect();
                let mut ns = f64::INFINITY;
                // One warm-up pass, then the fastest of REPEAT timed passes.
                for pass in 0..=REPEAT {
                    let start = Instant::now();
                    let mut sum = 0u64;
                    for &addr in &targets {
                        // SAFETY: every address is the entry of a program loaded above and
                        // still alive (`sys` owns it until after this loop).
                        sum = sum.wrapping_add(unsafe { call(addr) } as u64);
                    }
                    let t = start.elapsed().as_nanos() as f64 / targets.len() as f64;
                    assert_eq!(sum, expected, "{}: wrong results", sys.name());
                    if pass > 0 {
                        ns = ns.min(t);
                    }
                }
                report.push("dispatch", sys.name(), n, &sizes.label(), ns, "ns/call");
            }
        }
    }
}
