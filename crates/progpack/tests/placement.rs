//! Where images land and what a failure writes: entry points on instruction boundaries, runs
//! that scatter or follow each other, a fork child that draws its own random offsets, and a
//! failed batch that trap-fills only what it wrote.

mod support;

use progpack::backend::ProcMem;
use progpack::{Allocator, Backend, BackendChoice, Config, Error, Mapping, Placement};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::{run_in_child, ChildExit};

/// With slack to randomize in, every image starts at a multiple of the instruction size (4 on
/// aarch64), whatever alignment was asked for, on every path: a thread's run, a batch, a
/// page-aligned draft.
#[test]
fn images_start_on_instruction_boundaries() {
    let insn = progpack::arch::TRAP.len();
    let alloc = Allocator::new(Config::default().min_slack(16)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for len in [1usize, 2, 3, 5, 7, 13, 33, 47, 1500] {
        for _ in 0..200 {
            let d = alloc.draft(len, 1).unwrap();
            assert_eq!(
                d.exec_addr() % insn,
                0,
                "draft of {len} at {:#x}",
                d.exec_addr()
            );
            seen.insert(d.exec_addr() % 64);
        }
        let mut b = alloc.batch();
        for _ in 0..50 {
            let s = b.push(len, 1).unwrap();
            assert_eq!(s.exec_addr % insn, 0, "batch slot of {len}");
        }
    }
    // The offsets really are drawn (more than a handful of distinct ones).
    assert!(seen.len() > 8, "offsets seen: {seen:?}");
}

/// The offsets a fork child draws are not the ones its parent draws after the fork: the child
/// reseeds its random numbers (and drops the parent's run). Without the reseed both would draw
/// the same sequence, give or take a draw or two for a new run.
/// The chunk each of `n` one-chunk programs, finalized one by one on one thread, starts in.
fn chunks_of_one_by_one(config: Config, n: usize) -> Vec<usize> {
    let alloc = Allocator::new(config.chunk_size(64).shards(1)).unwrap();
    let programs: Vec<_> = (0..n)
        .map(|_| {
            let mut d = alloc.draft(64, 64).unwrap();
            d.image_mut().fill(0xc3);
            d.finalize().unwrap()
        })
        .collect();
    programs.iter().map(|p| p.addr() / 64).collect()
}

/// Each run of a thread holds one bitmap word of chunks (64): with runs that scatter (the
/// default), a thread's next run starts at a random word; with `scatter_runs(false)` it starts
/// right after the previous one, so programs finalized one by one lie together as a batch's
/// do (and the first run still starts at a random word of the pack).
#[test]
fn runs_scatter_by_default_and_follow_each_other_when_asked() {
    const RUNS: usize = 8;
    let jumps = |chunks: &[usize]| chunks.windows(2).filter(|w| w[1] != w[0] + 1).count();
    // Following runs: one block, or two if the first run started so near the end of the pack's
    // free space that the next ones wrapped around to its start.
    let follow = chunks_of_one_by_one(Config::default().scatter_runs(false), 64 * RUNS);
    assert!(jumps(&follow) <= 1, "not one block: {follow:?}");
    // Scattered: each of the 7 later runs starts at a random word; fewer than 3 jumps would
    // need 5 of them to land right after the run before.
    let scattered = chunks_of_one_by_one(Config::default(), 64 * RUNS);
    assert!(
        jumps(&scattered) >= 3,
        "scattered runs lie together: {scattered:?}"
    );
    // The first run of a following layout is random too: eight allocators do not all start
    // at the same chunk of their pack (2 MiB of 64-byte chunks).
    let firsts: std::collections::BTreeSet<usize> = (0..8)
        .map(|_| chunks_of_one_by_one(Config::default().scatter_runs(false), 1)[0] % 32768)
        .collect();
    assert!(
        firsts.len() > 1,
        "every first run at chunk {firsts:?} of its pack"
    );
}

#[test]
fn a_child_draws_other_offsets_than_its_parent() {
    let alloc = Allocator::new(Config::default().min_slack(16)).unwrap();
    // This thread's state exists before the fork (its generator has a state to copy).
    drop(alloc.draft(40, 1).unwrap());
    let offsets = |alloc: &Allocator| -> Vec<usize> {
        (0..64)
            .map(|_| alloc.draft(40, 1).unwrap().exec_addr() % 64)
            .collect()
    };
    let child = run_in_child(|| Err(format!("{:?}", offsets(&alloc))));
    assert_eq!(child.exit, ChildExit::Exited(1), "{}", child.message);
    let child: Vec<usize> = child
        .message
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|v| v.parse().expect("an offset"))
        .collect();
    let parent = offsets(&alloc);
    // The longest stretch where one sequence repeats the other, shifted by a few draws.
    let longest = (0..4)
        .flat_map(|k| [(k, 0), (0, k)])
        .map(|(a, b)| {
            let (x, y) = (&child[a..], &parent[b..]);
            x.iter()
                .zip(y)
                .fold((0, 0), |(best, run), (p, q)| {
                    let run = if p == q { run + 1 } else { 0 };
                    (best.max(run), run)
                })
                .0
        })
        .max()
        .unwrap_or(0);
    assert!(
        longest < 16,
        "the child repeats {longest} of its parent's offsets in a row: {child:?} / {parent:?}"
    );
}

/// A backend that fails the first write of a mapping's life and counts trap fills.
#[derive(Debug)]
struct FailFirstWrite {
    inner: ProcMem,
    writes: Arc<AtomicUsize>,
    fills: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct CountingMapping {
    inner: Box<dyn Mapping>,
    writes: Arc<AtomicUsize>,
    fills: Arc<AtomicUsize>,
}

// SAFETY: every mapping comes from procmem, which keeps the `Mapping` promises; this wrapper
// only forwards, counts, or refuses a write (which changes nothing).
unsafe impl Backend for FailFirstWrite {
    fn name(&self) -> &'static str {
        "fail-first-write"
    }
    fn map(&self, len: usize, placement: Placement) -> progpack::Result<Box<dyn Mapping>> {
        Ok(Box::new(CountingMapping {
            inner: self.inner.map(len, placement)?,
            writes: self.writes.clone(),
            fills: self.fills.clone(),
        }))
    }
}

// SAFETY: forwards to a mapping that keeps the promises, or refuses (see above).
unsafe impl Mapping for CountingMapping {
    fn base(&self) -> usize {
        self.inner.base()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn write(&self, offset: usize, bytes: &[u8]) -> progpack::Result<()> {
        self.write_parts(offset, &[bytes])
    }
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> progpack::Result<()> {
        if self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Error::Unsupported {
                backend: "fail-first-write",
                op: "the first write",
            });
        }
        self.inner.write_parts(offset, parts)
    }
    fn fill_traps(&self, offset: usize, len: usize) -> progpack::Result<()> {
        self.fills.fetch_add(1, Ordering::SeqCst);
        self.inner.fill_traps(offset, len)
    }
}

/// A batch whose first segment's write fails trap-fills that segment only: the segments it
/// never wrote hold traps already and are given back without a fill.
#[test]
fn a_failed_batch_fills_only_the_segments_it_wrote() {
    let (writes, fills) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let backend = Arc::new(FailFirstWrite {
        inner: ProcMem::new().unwrap(),
        writes: writes.clone(),
        fills: fills.clone(),
    });
    // One-page packs of 64-byte chunks: three slots of 2000 bytes need two packs, so two
    // segments.
    let alloc = Allocator::new(
        Config::default()
            .pack_size(4096)
            .randomize(false)
            .backend(BackendChoice::Custom(backend)),
    )
    .unwrap();
    let mut b = alloc.batch();
    for _ in 0..3 {
        b.push(2000, 1).unwrap().image.fill(0x90);
    }
    assert_eq!(b.writes(), 2, "two segments");
    assert!(b.finalize().is_err());
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "stops at the failed write"
    );
    assert_eq!(
        fills.load(Ordering::SeqCst),
        1,
        "one fill: the segment it tried to write"
    );
    let st = alloc.stats();
    assert_eq!(
        (st.allocations, st.chunks_used, st.chunks_quarantined),
        (0, 0, 0)
    );
    alloc.check_invariants().unwrap();
}
