//! Workload 3, footprint: load N (1M in the full run) small programs and ask the kernel what
//! it cost: executable bytes mapped / bytes requested, mappings (VMAs) added, and the share of
//! executable bytes backed by huge pages.
//!
//! Page-per-program systems may hit `vm.max_map_count` (65530 by default): the load then
//! fails with ENOMEM; the rows report how many programs got in and the note says where it
//! stopped. Nothing here allocates a new mapping while loading (storage is reserved up front).

use super::gen::{emit_function, ret_value, Sizes, SEED};
use super::procfs::ProcReader;
use super::report::Report;
use super::sys::Id;
use super::systems::Kind;
use super::{find_overlap, Scale};

/// Runs the footprint workload for the fixed 64-byte size and the kernel mix.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    let n = scale.footprint_n;
    let mut reader = ProcReader::with_capacity(512 << 20);
    for sizes in [Sizes::Fixed(64), Sizes::Mix] {
        let lens = sizes.generate(n, SEED ^ 0xf00d);
        let label = sizes.label();
        for &kind in kinds.iter().filter(|k| k.runs_in("footprint")) {
            if kind.batched() {
                continue; // same placement as one-by-one procmem
            }
            let mut sys = match kind.make() {
                Ok(s) => s,
                Err(e) => {
                    report.note(
                        "footprint",
                        &format!("{kind:?}"),
                        format!("cannot start: {e}"),
                    );
                    continue;
                }
            };
            let mut ids: Vec<Id> = Vec::with_capacity(n);
            sys.reserve(n);
            let before = match reader.snapshot() {
                Ok(s) => s,
                Err(e) => {
                    report.note("footprint", sys.name(), format!("cannot read smaps: {e}"));
                    return;
                }
            };
            let mut requested = 0u64;
            let mut failure = None;
            for (i, &len) in lens.iter().enumerate() {
                match sys.load(len, &mut |buf| emit_function(buf, ret_value(i))) {
                    Ok(id) => {
                        ids.push(id);
                        requested += len as u64;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let after = reader.snapshot();
            let overlap = if failure.is_none() {
                let ranges: Vec<(usize, usize)> = ids
                    .iter()
                    .zip(&lens)
                    .map(|(&id, &len)| (sys.addr(id), len))
                    .collect();
                find_overlap(&ranges)
            } else {
                None
            };
            let packs = sys.packs();
            let name = sys.name();
            // Free everything before anything else needs a mapping.
            drop(sys);
            let after = match after {
                Ok(s) => s,
                Err(e) => {
                    report.note(
                        "footprint",
                        name,
                        format!("cannot read smaps at the end: {e}"),
                    );
                    continue;
                }
            };
            let loaded = ids.len();
            if let Some(overlap) = overlap {
                report.note("footprint", name, format!("size={label}: {overlap}"));
            }
            if let Some(e) = failure {
                report.note(
                    "footprint",
                    name,
                    format!(
                        "size={label}: stopped after {loaded} of {n} programs: {e} \
                         (mappings in the process: {})",
                        after.vmas
                    ),
                );
            }
            let exec = after.exec_bytes.saturating_sub(before.exec_bytes);
            let huge = after.exec_huge_bytes.saturating_sub(before.exec_huge_bytes);
            report.push(
                "footprint",
                name,
                n,
                &label,
                loaded as f64,
                "programs loaded",
            );
            report.push(
                "footprint",
                name,
                n,
                &label,
                exec as f64 / requested.max(1) as f64,
                "mapped/requested",
            );
            report.push(
                "footprint",
                name,
                n,
                &label,
                after.vmas as f64 - before.vmas as f64,
                "mappings added",
            );
            report.push(
                "footprint",
                name,
                n,
                &label,
                100.0 * huge as f64 / exec.max(1) as f64,
                "% exec in huge pages",
            );
            if let Some(packs) = packs {
                report.push("footprint", name, n, &label, packs as f64, "packs");
            }
        }
    }
}
