//! Workload 4, churn: a steady set of live programs (10k), replaced one at a time (free a
//! random one, load a new one of a random size from the kernel mix). Reports ns per replace
//! and whether memory stays flat: resident set, executable bytes and mappings are sampled
//! after each tenth of the run; growth is last sample minus first.
#![allow(unsafe_code)]

use super::gen::{emit_function, mix_size, ret_value, Rng, Sizes, SEED};
use super::procfs::ProcReader;
use super::report::Report;
use super::sys::call;
use super::systems::Kind;
use super::{find_overlap, load_and_call, Scale};
use std::time::{Duration, Instant};

/// Runs the churn workload for every system.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    let live = scale.churn_live;
    let replaces = scale.churn_replaces;
    let lens = Sizes::Mix.generate(live, SEED ^ 0xc0ffee);
    let mut reader = ProcReader::with_capacity(64 << 20);
    for &kind in kinds.iter().filter(|k| k.runs_in("churn")) {
        if kind.batched() {
            continue; // replacing one program at a time: a batch of one is procmem one-by-one
        }
        let mut sys = match kind.make() {
            Ok(s) => s,
            Err(e) => {
                report.note("churn", &format!("{kind:?}"), format!("cannot start: {e}"));
                continue;
            }
        };
        let name = sys.name();
        let mut ids = Vec::with_capacity(live);
        if let Err(e) = load_and_call(sys.as_mut(), &lens, &mut ids) {
            report.note("churn", name, format!("initial load failed: {e}"));
            continue;
        }
        let mut ranges: Vec<(usize, usize)> = ids
            .iter()
            .zip(&lens)
            .map(|(&id, &len)| (sys.addr(id), len))
            .collect();
        let mut rng = Rng::new(SEED ^ 0xbeef);
        let mut elapsed = Duration::ZERO;
        let mut samples = Vec::with_capacity(11);
        let step = replaces.div_ceil(10);
        let mut done = 0;
        let mut failed = None;
        while done < replaces && failed.is_none() {
            let this = step.min(replaces - done);
            let start = Instant::now();
            for k in 0..this {
                let victim = rng.below(live);
                let len = mix_size(&mut rng);
                let ret = ret_value(done + k);
                sys.free(ids[victim]);
                match sys.load(len, &mut |buf| emit_function(buf, ret)) {
                    Ok(id) => {
                        ids[victim] = id;
                        ranges[victim] = (sys.addr(id), len);
                        // SAFETY: `id` was just loaded and is alive.
                        let got = unsafe { call(sys.addr(id)) };
                        assert_eq!(got, ret, "{name}: wrong result after replace");
                    }
                    Err(e) => {
                        failed = Some(format!("replace {} failed: {e}", done + k));
                        break;
                    }
                }
            }
            elapsed += start.elapsed();
            done += this;
            if let Some(overlap) = find_overlap(&ranges) {
                failed = Some(format!("after {done} replaces: {overlap}"));
                break;
            }
            if let Ok(s) = reader.snapshot() {
                samples.push(s);
            }
        }
        if let Some(e) = failed {
            report.note("churn", name, format!("{e}; no row"));
            continue;
        }
        report.push(
            "churn",
            name,
            live,
            "mix",
            elapsed.as_nanos() as f64 / replaces as f64,
            "ns/replace",
        );
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            let kib = |a: u64, b: u64| (b as f64 - a as f64) / 1024.0;
            report.push(
                "churn",
                name,
                live,
                "mix",
                kib(first.rss_bytes, last.rss_bytes),
                "RSS growth KiB",
            );
            report.push(
                "churn",
                name,
                live,
                "mix",
                kib(first.exec_bytes, last.exec_bytes),
                "exec mapped growth KiB",
            );
            report.push(
                "churn",
                name,
                live,
                "mix",
                last.vmas as f64 - first.vmas as f64,
                "mappings growth",
            );
        }
        drop(sys);
    }
}
