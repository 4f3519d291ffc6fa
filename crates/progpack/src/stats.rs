//! Statistics: counters (cheap, no I/O), a per-pack occupancy snapshot, and how much of the
//! packs the kernel backs with huge pages (read from `/proc/self/smaps`).

use crate::pack::Freed;
use crate::shared::Shared;
use std::sync::atomic::Ordering;

/// Counters of an allocator at one moment (no system calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Backend in use.
    pub backend: &'static str,
    /// Pack size in bytes.
    pub pack_size: usize,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// Packs currently mapped.
    pub packs: usize,
    /// Of those, empty packs kept in reserve.
    pub reserve_packs: usize,
    /// Dedicated mappings (programs larger than a pack).
    pub dedicated_mappings: usize,
    /// Bytes in dedicated mappings.
    pub dedicated_bytes: usize,
    /// Live finalized programs.
    pub programs: usize,
    /// Live allocations: programs plus unfinalized drafts and batch slots.
    pub allocations: usize,
    /// Chunks in use in packs: owned by live drafts, batch slots and programs (and quarantined
    /// chunks).
    pub chunks_used: usize,
    /// Free chunks in packs.
    pub chunks_free: usize,
    /// Chunks reserved by threads' runs (and unfinished batches) and not handed out yet: they
    /// hold traps and come back when the run is retired (see
    /// [`Allocator::trim`](crate::Allocator::trim)).
    pub chunks_cached: usize,
    /// Chunks never reused because trap-filling them failed.
    pub chunks_quarantined: usize,
    /// Bytes asked for by live allocations.
    pub bytes_requested: usize,
    /// Bytes of executable memory mapped (packs and dedicated mappings).
    pub bytes_mapped: usize,
    /// Packs mapped over the allocator's life.
    pub packs_mapped_total: usize,
    /// Packs released over the allocator's life.
    pub packs_released_total: usize,
}

impl Stats {
    /// Bytes mapped per byte requested (1.0 is perfect; `f64::INFINITY` if nothing is live).
    pub fn density(&self) -> f64 {
        if self.bytes_requested == 0 {
            f64::INFINITY
        } else {
            self.bytes_mapped as f64 / self.bytes_requested as f64
        }
    }
}

/// Occupancy of one pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackSnapshot {
    /// Base address.
    pub base: usize,
    /// Per chunk: owned? (by a live span, or reserved by a thread's run or a batch)
    pub used: Vec<bool>,
    /// Bytes of this pack backed by huge pages, if `/proc/self/smaps` could tell.
    pub huge_bytes: Option<usize>,
    /// The programs of this pack that have records (named ones, or all of them when an
    /// announcement is on; see [`Observe`](crate::Observe)), in address order.
    pub programs: Vec<crate::ProgramInfo>,
}

impl PackSnapshot {
    /// Chunks in use.
    pub fn used_chunks(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }

    /// Free chunks that lie between used chunks (fragmentation), as opposed to the free tail.
    pub fn hole_chunks(&self) -> usize {
        let last_used = self.used.iter().rposition(|u| *u).map_or(0, |i| i + 1);
        self.used[..last_used].iter().filter(|u| !**u).count()
    }
}

/// Occupancy of every pack, for pictures ([`crate::Allocator::snapshot`]).
///
/// The `progpack-cli` crate renders it: `progpack_cli::map::render_text` (a terminal map),
/// `render_svg`, `write_png` and `write_svg`; `progpack map` does so for a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Backend in use.
    pub backend: &'static str,
    /// Pack size in bytes.
    pub pack_size: usize,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// The packs, in shard order.
    pub packs: Vec<PackSnapshot>,
    /// Dedicated mappings (not drawn as packs).
    pub dedicated_mappings: usize,
}

/// Huge-page coverage of the packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugePages {
    /// Bytes of packs backed by huge pages.
    pub backed: usize,
    /// Bytes of packs in all.
    pub total: usize,
}

impl HugePages {
    /// Fraction backed, 0.0 to 1.0 (0.0 when there are no packs).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.backed as f64 / self.total as f64
        }
    }
}

pub(crate) fn stats(shared: &Shared) -> Stats {
    let (spans, requested, programs, cached) = shared.made_by_threads();
    let (mut packs, mut set, mut free) = (0, 0, 0);
    let mut freed = Freed::default();
    shared.with_shards(|list| {
        for p in list {
            packs += 1;
            let st = p.lock();
            set += st.bitmap.count_ones();
            // Chunks not ready yet are free space too (filled when first needed).
            free += st.bitmap.count_zeros() + (p.capacity() - st.bitmap.len());
            freed.add(&st.freed);
        }
    });
    let r = shared.retired();
    freed.add(&r.freed);
    let spans = spans.wrapping_add(r.spans);
    let requested = requested.wrapping_add(r.requested);
    let programs = programs.wrapping_add(r.programs);
    let cached = cached.wrapping_add(r.cached);
    drop(r);
    let dedicated_bytes = shared.dedicated.bytes.load(Ordering::Relaxed);
    // Differences of wrapping counters: exact when nothing is in flight.
    let live = |made: u64, gone: u64| made.wrapping_sub(gone) as usize;
    let cached = cached as usize;
    Stats {
        backend: shared.backend.name(),
        pack_size: shared.config.pack_size,
        chunk_size: shared.config.chunk_size,
        packs,
        reserve_packs: shared.kept_empty.load(Ordering::Relaxed),
        dedicated_mappings: shared.dedicated.mappings.load(Ordering::Relaxed),
        dedicated_bytes,
        programs: live(programs, freed.programs),
        allocations: live(spans, freed.spans),
        chunks_used: set.saturating_sub(cached),
        chunks_free: free,
        chunks_cached: cached.min(set),
        chunks_quarantined: freed.quarantined as usize,
        bytes_requested: live(requested, freed.requested),
        bytes_mapped: packs * shared.config.pack_size + dedicated_bytes,
        packs_mapped_total: shared.packs_mapped.load(Ordering::Relaxed),
        packs_released_total: shared.packs_released.load(Ordering::Relaxed),
    }
}

pub(crate) fn snapshot(shared: &Shared) -> Snapshot {
    snapshot_with(shared, true)
}

/// Like [`snapshot`], but without reading `/proc/self/smaps` (`huge_bytes` is `None`).
pub(crate) fn occupancy(shared: &Shared) -> Snapshot {
    snapshot_with(shared, false)
}

fn snapshot_with(inner: &Shared, with_huge: bool) -> Snapshot {
    let packs = inner.packs();
    let ranges: Vec<(usize, usize)> = packs
        .iter()
        .map(|p| (p.base(), inner.config.pack_size))
        .collect();
    let huge = if with_huge {
        huge_bytes_in(&ranges)
    } else {
        Err(std::io::ErrorKind::Unsupported.into())
    };
    Snapshot {
        backend: inner.backend.name(),
        pack_size: inner.config.pack_size,
        chunk_size: inner.config.chunk_size,
        packs: packs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let st = p.lock();
                PackSnapshot {
                    base: p.base(),
                    // Chunks past the ready part are free (filled when first needed).
                    used: (0..p.capacity())
                        .map(|c| c < st.bitmap.len() && st.bitmap.get(c))
                        .collect(),
                    huge_bytes: huge.as_ref().ok().map(|h| h[i]),
                    programs: p.programs(),
                }
            })
            .collect(),
        dedicated_mappings: inner.dedicated.mappings.load(Ordering::Relaxed),
    }
}

pub(crate) fn huge_pages(inner: &Shared) -> std::io::Result<HugePages> {
    let ranges: Vec<(usize, usize)> = inner
        .packs()
        .iter()
        .map(|p| (p.base(), inner.config.pack_size))
        .collect();
    let per = huge_bytes_in(&ranges)?;
    Ok(HugePages {
        backed: per.iter().sum(),
        total: ranges.iter().map(|r| r.1).sum(),
    })
}

/// For each `(base, len)` range, the bytes of huge pages backing it, from `/proc/self/smaps`
/// (`AnonHugePages`, `ShmemPmdMapped`, `FilePmdMapped`).
///
/// smaps counts per VMA, and the kernel merges neighbouring packs with equal protections into
/// one VMA. A VMA's count is therefore shared among the ranges it covers in proportion to
/// their overlap: the total is exact, and so is each range's share when the VMA is wholly or
/// not at all backed; otherwise the per-range split is an estimate.
pub fn huge_bytes_in(ranges: &[(usize, usize)]) -> std::io::Result<Vec<usize>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(huge_bytes_from_smaps(&smaps, ranges))
}

fn huge_bytes_from_smaps(smaps: &str, ranges: &[(usize, usize)]) -> Vec<usize> {
    let mut out = vec![0usize; ranges.len()];
    let mut vma: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(header) = vma_header(line) {
            vma = Some(header);
            continue;
        }
        let Some((start, end)) = vma else { continue };
        let mut parts = line.split_whitespace();
        if !matches!(
            parts.next(),
            Some("AnonHugePages:" | "ShmemPmdMapped:" | "FilePmdMapped:")
        ) {
            continue;
        }
        let huge = parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            * 1024;
        if huge == 0 {
            continue;
        }
        let overlaps: Vec<(usize, usize)> = ranges
            .iter()
            .enumerate()
            .map(|(i, &(b, l))| (i, end.min(b + l).saturating_sub(start.max(b))))
            .filter(|&(_, o)| o > 0)
            .collect();
        let covered: usize = overlaps.iter().map(|o| o.1).sum();
        if covered == 0 {
            continue;
        }
        // This VMA's huge bytes that fall on our ranges, then each range's share; the rounding
        // remainder goes to the first range so the total stays exact.
        let ours = (huge as u128 * covered as u128 / (end - start) as u128) as usize;
        let mut given = 0;
        for &(i, o) in &overlaps {
            let share = (ours as u128 * o as u128 / covered as u128) as usize;
            out[i] += share;
            given += share;
        }
        out[overlaps[0].0] += ours - given;
    }
    out
}

/// Parses `start-end perms ...` of an smaps/maps VMA line.
fn vma_header(line: &str) -> Option<(usize, usize)> {
    let range = line.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_vma_is_shared_by_overlap() {
        let smaps = "\
7f0000000000-7f0000600000 r-xp 00000000 00:00 0
AnonHugePages:      4096 kB
";
        let r = [
            (0x7f00_0000_0000, 2 << 20),
            (0x7f00_0020_0000, 2 << 20),
            (0x7f00_0040_0000, 2 << 20),
        ];
        let got = huge_bytes_from_smaps(smaps, &r);
        assert_eq!(got.iter().sum::<usize>(), 4 << 20);
    }

    #[test]
    fn smaps_attribution() {
        let smaps = "\
7f0000000000-7f0000200000 r-xp 00000000 00:00 0   [anon:progpack:0]
Size:               2048 kB
AnonHugePages:      2048 kB
7f0000200000-7f0000400000 r-xp 00000000 00:00 0   [anon:progpack:1]
AnonHugePages:         0 kB
7f0000400000-7f0000600000 rw-p 00000000 00:00 0
AnonHugePages:      2048 kB
";
        let r = [(0x7f00_0000_0000, 2 << 20), (0x7f00_0020_0000, 2 << 20)];
        assert_eq!(huge_bytes_from_smaps(smaps, &r), vec![2 << 20, 0]);
    }

    #[test]
    fn holes_are_free_chunks_before_the_last_used_one() {
        let p = PackSnapshot {
            base: 0,
            used: vec![true, false, false, true, false, false],
            huge_bytes: None,
            programs: Vec::new(),
        };
        assert_eq!(p.used_chunks(), 2);
        assert_eq!(p.hole_chunks(), 2);
    }
}
