//! Workload 4, churn: a steady set of live programs (10k), replaced one at a time (free a
//! random one, load a new one of a random size from the kernel mix). Reports ns per replace
//! (free + load, each timed on its own; the check that the new program overlaps no live one
//! and its first call follow untimed) and whether memory stays flat: resident set, executable bytes and mappings are sampled
//! after each tenth of the run; growth is last sample minus first.
#![allow(unsafe_code)]

use super::gen::{emit_function, mix_size, ret_value, Rng, Sizes, SEED};
use super::procfs::ProcReader;
use super::report::Report;
use super::sys::call;
use super::systems::Kind;
use super::{load_and_call, Scale};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The live program `(addr, len)` that `[addr, addr + len)` overlaps, if any.
fn overlapping(live: &BTreeMap<usize, usize>, addr: usize, len: usize) -> Option<(usize, usize)> {
    let before = live
        .range(..=addr)
        .next_back()
        .filter(|(&a, &l)| a + l > addr);
    let after = live.range(addr..).next().filter(|(&a, _)| a < addr + len);
    before.or(after).map(|(&a, &l)| (a, l))
}

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
        // Live programs by address, to catch an allocator handing out memory that overlaps
        // a live program before anything runs there (checked untimed, after each load).
        let mut live_map: BTreeMap<usize, usize> = BTreeMap::new();
        let mut addrs: Vec<usize> = Vec::with_capacity(live);
        for (&id, &len) in ids.iter().zip(&lens) {
            live_map.insert(sys.addr(id), len);
            addrs.push(sys.addr(id));
        }
        let packs_before = sys.packs_mapped_total();
        let mut rng = Rng::new(SEED ^ 0xbeef);
        let mut elapsed = Duration::ZERO;
        let mut freeing = Duration::ZERO;
        let mut samples = Vec::with_capacity(11);
        let step = replaces.div_ceil(10);
        let mut done = 0;
        let mut failed = None;
        'run: while done < replaces {
            let this = step.min(replaces - done);
            for k in 0..this {
                let victim = rng.below(live);
                let len = mix_size(&mut rng);
                let ret = ret_value(done + k);
                let start = Instant::now();
                sys.free(ids[victim]);
                let freed = Instant::now();
                let loaded = sys.load(len, &mut |buf| emit_function(buf, ret));
                let end = Instant::now();
                elapsed += end - start;
                freeing += freed - start;
                live_map.remove(&addrs[victim]);
                let id = match loaded {
                    Ok(id) => id,
                    Err(e) => {
                        failed = Some(format!("replace {} failed: {e}", done + k));
                        break 'run;
                    }
                };
                ids[victim] = id;
                let addr = sys.addr(id);
                if let Some(other) = overlapping(&live_map, addr, len) {
                    failed = Some(format!(
                        "replace {}: new program at {addr:#x} (+{len} B) overlaps the live \
                         program at {:#x} (+{} B)",
                        done + k,
                        other.0,
                        other.1
                    ));
                    break 'run;
                }
                live_map.insert(addr, len);
                addrs[victim] = addr;
                // SAFETY: `id` was just loaded, is alive, and overlaps no other program.
                let got = unsafe { call(addr) };
                assert_eq!(got, ret, "{name}: wrong result after replace");
            }
            done += this;
            if let Ok(s) = reader.snapshot() {
                samples.push(s);
            }
        }
        if let Some(e) = failed {
            report.note("churn", name, format!("{e}; no row"));
            drop(sys);
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
        report.push(
            "churn",
            name,
            live,
            "mix",
            freeing.as_nanos() as f64 / replaces as f64,
            "ns/replace, of which free",
        );
        if let (Some(before), Some(after)) = (packs_before, sys.packs_mapped_total()) {
            report.push(
                "churn",
                name,
                live,
                "mix",
                (after - before) as f64,
                "packs newly mapped during churn",
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_found_on_either_side() {
        let mut live = BTreeMap::new();
        live.insert(100, 50); // [100, 150)
        live.insert(200, 10); // [200, 210)
        assert_eq!(overlapping(&live, 150, 50), None, "touching is fine");
        assert_eq!(overlapping(&live, 149, 1), Some((100, 50)));
        assert_eq!(overlapping(&live, 190, 11), Some((200, 10)));
        assert_eq!(overlapping(&live, 0, 100), None);
        assert_eq!(overlapping(&live, 210, 5), None);
    }
}
