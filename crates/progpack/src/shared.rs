//! The allocator's shared state: shards of packs, the reserve of empty packs, dedicated
//! mappings for large programs, the registry of per-thread state, and every slow path (a new
//! run, a span found by first fit, a new pack).
//!
//! Invariants:
//! - every listed pack is in exactly one shard's list; a pack leaves its list only when it is
//!   empty and not kept in reserve;
//! - at most `reserve_packs` empty packs are kept (`kept_empty` counts them);
//! - locks: a shard's list lock may be taken before a pack's lock, never after; the registry
//!   lock and the totals lock are taken alone; no lock is held across a system call (mapping a
//!   pack, writing, trap-filling, unmapping) except the shard lock while a new pack is pushed;
//! - statistics are exact when no operation is in flight: what threads made (their counters,
//!   plus those of threads that exited) minus what packs freed (plus packs released).

use crate::backend::{sys, Backend};
use crate::code_range::CodeRangeSpace;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::observe::Observer;
use crate::pack::{Freed, Pack, PackOwner, RunStart};
use crate::region::Region;
use crate::run::{Local, LocalState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// One list of packs with its own lock.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    packs: Mutex<Vec<Arc<Pack>>>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Pack>>> {
        self.packs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters that no single thread or pack keeps: threads that exited, packs released, and
/// the rare paths (dedicated mappings, allocations made while a thread is being torn down).
#[derive(Debug, Default)]
pub(crate) struct Retired {
    /// Spans made (drafts and batch slots).
    pub(crate) spans: u64,
    /// Bytes those spans asked for.
    pub(crate) requested: u64,
    /// Programs finalized.
    pub(crate) programs: u64,
    /// Chunks reserved ahead (by batches) counted while their thread was being torn down
    /// (wrapping: a batch may give back on another thread what it reserved here).
    pub(crate) cached: u64,
    /// Frees (and quarantines) counted outside any listed pack.
    pub(crate) freed: Freed,
}

/// Live dedicated mappings (programs larger than a pack).
#[derive(Debug, Default)]
pub(crate) struct Dedicated {
    pub(crate) mappings: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
}

/// Shared state of an [`Allocator`](crate::Allocator).
#[derive(Debug)]
pub(crate) struct Shared {
    /// Unique for the life of the process: per-thread caches are keyed by it.
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) backend_report: String,
    pub(crate) space: Option<Arc<CodeRangeSpace>>,
    shards: Box<[Shard]>,
    /// Empty packs currently kept in reserve.
    pub(crate) kept_empty: AtomicUsize,
    /// Packs mapped and released over the allocator's life.
    pub(crate) packs_mapped: AtomicUsize,
    pub(crate) packs_released: AtomicUsize,
    pub(crate) dedicated: Dedicated,
    retired: Mutex<Retired>,
    /// Every thread's state for this allocator.
    locals: Mutex<Vec<Arc<Local>>>,
    /// Next shard for a new thread.
    next_shard: AtomicUsize,
    /// The longest run a thread takes, in chunks (at most one bitmap word).
    pub(crate) run_chunks: usize,
    /// The longest image (in bytes) that comes from a thread's run: one that fits a whole run
    /// (what is left of the run it ends goes back to its pack), and no longer than `max_len`.
    pub(crate) run_max_len: usize,
    /// log2 of the chunk size.
    pub(crate) chunk_shift: u32,
    /// Every image starts at a multiple of this (the architecture's instruction size).
    pub(crate) entry_align: usize,
    /// The largest alignment accepted: the page size (or the chunk size, if larger).
    pub(crate) max_align: usize,
    /// [`sys::process_epoch`] when the registry was last checked for threads a fork left
    /// behind.
    epoch: AtomicU64,
    /// Names and announcements: made with the allocator when an announcement is on, else
    /// when a program is first named.
    pub(crate) observer: OnceLock<Arc<Observer>>,
}

/// Bytes of a new pack made ready at first, where the backend fills lazily (dualmap); each
/// growth doubles what is ready.
const INITIAL_READY: usize = 64 << 10;

/// Bytes of staging a thread's run covers (its run is this many bytes of chunks, at most one
/// bitmap word of them).
const RUN_BYTES: usize = 4096;

impl Shared {
    /// Checks the configuration, picks the backend, checks the instruction-cache sync works
    /// here, and reserves the code range if one is configured.
    pub(crate) fn new(config: Config) -> Result<Arc<Shared>> {
        config.validate()?;
        let (backend, mut backend_report) = config.backend.resolve()?;
        // The pipeline flush every finalize and free relies on (membarrier on aarch64): if it
        // cannot work here, fail now rather than at the first finalize.
        crate::arch::sync_icache(0, 0)?;
        backend_report.push_str(if cfg!(target_arch = "aarch64") {
            "; pipeline flush: ok (membarrier SYNC_CORE)"
        } else {
            "; pipeline flush: not needed (coherent instruction cache)"
        });
        let space = match config.code_range {
            Some(r) => Some(Arc::new(CodeRangeSpace::reserve(r, config.pack_size)?)),
            None => None,
        };
        static IDS: AtomicU64 = AtomicU64::new(1);
        let chunk = config.chunk_size;
        let run_chunks = (RUN_BYTES / chunk)
            .clamp(1, 64)
            .min(config.pack_size / chunk / 8)
            .max(1);
        let shards = (0..config.shards).map(|_| Shard::default()).collect();
        let observer = OnceLock::new();
        let observe = config.observe.with_env();
        if observe.is_on() {
            let _ = observer.set(Arc::new(Observer::new(observe)?));
        }
        Ok(Arc::new(Shared {
            observer,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            shards,
            backend,
            backend_report,
            space,
            kept_empty: AtomicUsize::new(0),
            packs_mapped: AtomicUsize::new(0),
            packs_released: AtomicUsize::new(0),
            dedicated: Dedicated::default(),
            retired: Mutex::new(Retired::default()),
            locals: Mutex::new(Vec::new()),
            next_shard: AtomicUsize::new(0),
            run_chunks,
            run_max_len: (run_chunks * chunk)
                .saturating_sub(config.min_slack)
                .min(config.max_len),
            chunk_shift: chunk.trailing_zeros(),
            entry_align: crate::arch::TRAP.len(),
            max_align: sys::page_size().max(chunk),
            epoch: AtomicU64::new(sys::process_epoch()),
            config,
        }))
    }

    /// The counters of the rare paths.
    pub(crate) fn retired(&self) -> MutexGuard<'_, Retired> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn locals(&self) -> MutexGuard<'_, Vec<Arc<Local>>> {
        self.locals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new thread's state, registered so that statistics see it and teardown reclaims it.
    pub(crate) fn register_local(&self) -> Arc<Local> {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let local = Arc::new(Local::new(shard, sys::process_epoch()));
        self.locals().push(local.clone());
        local
    }

    /// A thread is done with this allocator (it exits): its run goes back to its pack, its
    /// counters into the retired totals, and it leaves the registry.
    ///
    /// # Safety
    /// The caller is `local`'s owner thread and holds a strong reference to `self` (as the
    /// thread cache's teardown does), so no one else touches `local`'s state.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn retire_local(&self, local: &Arc<Local>) {
        // SAFETY: the caller's contract.
        let st = unsafe { local.state_mut() };
        let run_left = st.run.as_ref().map_or(0, |r| r.left() as u64);
        if let Some(run) = st.run.take() {
            run.retire();
        }
        {
            let mut locals = self.locals();
            if let Some(i) = locals.iter().position(|l| Arc::ptr_eq(l, local)) {
                locals.swap_remove(i);
            }
        }
        let mut r = self.retired();
        r.spans = r.spans.wrapping_add(local.made.spans.get());
        r.requested = r.requested.wrapping_add(local.made.requested.get());
        r.programs = r.programs.wrapping_add(local.made.programs.get());
        // What open batches of this thread still reserve (its run's share went back above).
        r.cached = r
            .cached
            .wrapping_add(local.made.cached.get().wrapping_sub(run_left));
    }

    /// In a child process: the threads that registered in the parent do not exist here. Their
    /// states are forgotten (their runs' chunks stay owned, counted as quarantined: they may
    /// have been half-updated when the parent forked), and `current`, the one thread that
    /// does exist, is kept.
    pub(crate) fn forget_parent_threads(&self, current: &Local, epoch: u64) {
        if self.epoch.swap(epoch, Ordering::Relaxed) == epoch {
            return;
        }
        let orphans: Vec<Arc<Local>> = {
            let mut locals = self.locals();
            let (keep, orphans) = locals
                .drain(..)
                .partition(|l| std::ptr::eq(Arc::as_ptr(l), current));
            *locals = keep;
            orphans
        };
        let mut r = self.retired();
        for l in orphans {
            r.spans = r.spans.wrapping_add(l.made.spans.get());
            r.requested = r.requested.wrapping_add(l.made.requested.get());
            r.programs = r.programs.wrapping_add(l.made.programs.get());
            r.freed.quarantined += l.made.cached.get();
            std::mem::forget(l);
        }
    }

    /// The calling thread's first use of this allocator in a child process: its run (the
    /// parent's) goes back unused, its generator is reseeded (the parent's sequence must not
    /// repeat here), and the parent's other threads are forgotten.
    #[cold]
    pub(crate) fn adopt_after_fork(&self, local: &Local, st: &mut LocalState, epoch: u64) {
        if let Some(run) = st.run.take() {
            local.made.cached.add((run.left() as u64).wrapping_neg());
            run.retire();
        }
        st.rng = crate::run::seed() ^ epoch | 1;
        st.epoch = epoch;
        self.forget_parent_threads(local, epoch);
    }

    /// Sum over the registry: (spans made, bytes requested, programs finalized, chunks cached).
    pub(crate) fn made_by_threads(&self) -> (u64, u64, u64, u64) {
        self.locals().iter().fold((0, 0, 0, 0), |(s, q, p, c), l| {
            (
                s.wrapping_add(l.made.spans.get()),
                q.wrapping_add(l.made.requested.get()),
                p.wrapping_add(l.made.programs.get()),
                c.wrapping_add(l.made.cached.get()),
            )
        })
    }

    /// A new run of `min..=run_chunks` chunks inside one bitmap word, for a thread (or batch)
    /// of shard `shard`: from the shard's packs (skipping those the hint says cannot fit),
    /// then from the other shards without waiting, then from a new pack. `start` says where
    /// each pack is looked at first. Returns `(pack, first, len)`.
    pub(crate) fn take_run(
        self: &Arc<Self>,
        shard: usize,
        min: usize,
        start: RunStart,
    ) -> Result<(Arc<Pack>, usize, usize)> {
        let max = self.run_chunks;
        let take = |pack: &Arc<Pack>| {
            pack.take_run(min, max, start, &self.kept_empty)
                .map(|(first, n)| (pack.clone(), first, n))
        };
        self.search(shard, &take)
    }

    /// `n` chunks starting at a multiple of `step` chunks, first fit.
    pub(crate) fn take_span(
        self: &Arc<Self>,
        shard: usize,
        n: usize,
        step: usize,
    ) -> Result<(Arc<Pack>, usize)> {
        let take = |pack: &Arc<Pack>| {
            pack.take_span(n, step, &self.kept_empty)
                .map(|first| (pack.clone(), first))
        };
        self.search(shard, &take)
    }

    /// Tries `take` on the packs of `shard`, then of the other shards (without waiting for
    /// their locks), then on a new pack pushed to `shard`.
    fn search<T>(
        self: &Arc<Self>,
        shard: usize,
        take: &dyn Fn(&Arc<Pack>) -> Option<T>,
    ) -> Result<T> {
        let n = self.shards.len();
        if let Some(found) = self.shards[shard].lock().iter().find_map(take) {
            return Ok(found);
        }
        for k in 1..n {
            let other = &self.shards[(shard + k) % n];
            if let Ok(list) = other.packs.try_lock() {
                if let Some(found) = list.iter().find_map(take) {
                    return Ok(found);
                }
            }
        }
        // Grow a pack that is not fully ready yet, with no lock held.
        if let Some(found) = self.grow_one(shard, take)? {
            return Ok(found);
        }
        // Map a new pack with no lock held, take from it, then publish it.
        let region = Region::map(
            &*self.backend,
            self.space.as_ref(),
            self.config.pack_size,
            self.config.pack_size,
            INITIAL_READY.min(self.config.pack_size),
        )?;
        self.packs_mapped.fetch_add(1, Ordering::Relaxed);
        let owner: Weak<dyn PackOwner> = Arc::downgrade(self) as Weak<dyn PackOwner>;
        let pack = Pack::new(
            region,
            shard,
            self.config.chunk_size,
            self.config.min_slack,
            owner,
            self.id,
        );
        let pack = Arc::new(if self.announces() {
            pack.without_image_alias()
        } else {
            pack
        });
        self.attach_side(&pack);
        let mut found = take(&pack);
        // A new pack may start with only part of it ready: grow it until the request fits.
        while found.is_none() && pack.can_grow() {
            pack.grow()?;
            found = take(&pack);
        }
        self.shards[shard].lock().push(pack);
        found.ok_or(Error::TooLarge {
            len: self.config.pack_size + 1,
            max: self.config.pack_size,
        })
    }

    /// Readies more of a pack that can grow (doubling what is ready: `shard`'s packs first,
    /// then the other shards' without waiting for their locks), then tries `take` on it.
    /// `None` if no pack can grow (or growing failed: a new pack will do).
    fn grow_one<T>(
        &self,
        shard: usize,
        take: &dyn Fn(&Arc<Pack>) -> Option<T>,
    ) -> Result<Option<T>> {
        let n = self.shards.len();
        loop {
            let growable = (0..n).find_map(|k| {
                let s = &self.shards[(shard + k) % n];
                let list = if k == 0 {
                    s.lock()
                } else {
                    s.packs.try_lock().ok()?
                };
                list.iter().find(|p| p.can_grow()).cloned()
            });
            let Some(pack) = growable else {
                return Ok(None);
            };
            if pack.grow().is_err() {
                continue; // marked stuck: it is not offered again
            }
            if let Some(found) = take(&pack) {
                return Ok(Some(found));
            }
        }
    }

    /// A mapping of its own for a program larger than a pack, as a pack of one chunk.
    pub(crate) fn map_dedicated(self: &Arc<Self>, bytes: usize) -> Result<Arc<Pack>> {
        let region = Region::map(
            &*self.backend,
            self.space.as_ref(),
            bytes,
            sys::page_size(),
            bytes,
        )?;
        self.dedicated.mappings.fetch_add(1, Ordering::Relaxed);
        self.dedicated
            .bytes
            .fetch_add(region.len(), Ordering::Relaxed);
        let owner: Weak<dyn PackOwner> = Arc::downgrade(self) as Weak<dyn PackOwner>;
        let pack = Arc::new(Pack::dedicated(region, owner, self.id));
        pack.pin_dedicated();
        self.attach_side(&pack);
        Ok(pack)
    }

    /// Gives a new pack its side table when the allocator announces every program.
    fn attach_side(&self, pack: &Pack) {
        if let Some(observer) = self.observer.get().filter(|o| o.announces()) {
            pack.side.attach(|| pack.new_side(observer));
        }
    }

    /// True if every program is recorded and announced (an announcement is on).
    #[inline]
    pub(crate) fn announces(&self) -> bool {
        self.observer.get().is_some_and(|o| o.announces())
    }

    /// All listed packs, in shard order.
    pub(crate) fn packs(&self) -> Vec<Arc<Pack>> {
        self.shards.iter().flat_map(|s| s.lock().clone()).collect()
    }

    /// Shard `i`'s packs, with its lock held while `f` runs (for exact statistics).
    pub(crate) fn with_shards(&self, mut f: impl FnMut(&[Arc<Pack>])) {
        for s in self.shards.iter() {
            f(&s.lock());
        }
    }
}

impl PackOwner for Shared {
    /// Keeps the pack in reserve or releases it.
    fn pack_became_empty(&self, pack: &Arc<Pack>) {
        let mut list = self.shards[pack.shard].lock();
        let mut st = pack.lock();
        if st.bitmap.count_ones() != 0 || !st.listed || st.kept_empty {
            return; // someone took chunks from it meanwhile, or it was already handled
        }
        let reserve = self.config.reserve_packs;
        if self
            .kept_empty
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                (k < reserve).then_some(k + 1)
            })
            .is_ok()
        {
            st.kept_empty = true;
            return;
        }
        st.listed = false;
        let freed = st.freed;
        drop(st);
        let removed = list
            .iter()
            .position(|p| Arc::ptr_eq(p, pack))
            .map(|i| list.remove(i));
        self.retired().freed.add(&freed);
        drop(list);
        self.packs_released.fetch_add(1, Ordering::Relaxed);
        // `removed` drops here, outside the locks; the caller still holds a reference, so the
        // unmap happens when it lets go (also outside any lock).
        drop(removed);
    }

    fn count_programs(&self, n: u64) {
        self.count_programs_retired(n);
    }

    fn observer(&self) -> Arc<Observer> {
        self.observer
            .get_or_init(|| Arc::new(Observer::quiet()))
            .clone()
    }

    fn dedicated_freed_bytes(&self, freed: &Freed) {
        self.retired().freed.add(freed);
    }

    fn dedicated_freed(&self, pack: &Pack, freed: &Freed) {
        self.dedicated.mappings.fetch_sub(1, Ordering::Relaxed);
        self.dedicated
            .bytes
            .fetch_sub(pack.region.len(), Ordering::Relaxed);
        self.retired().freed.add(freed);
    }
}

impl Shared {
    /// Counts programs finalized by a thread without counters of its own for this allocator.
    pub(crate) fn count_programs_retired(&self, n: u64) {
        let mut r = self.retired();
        r.programs = r.programs.wrapping_add(n);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // No allocator handle is left, so no thread can be using its state for this allocator:
        // take every thread's run back, so the packs (and their mappings) can go now rather
        // than when each thread exits.
        for local in self.locals().drain(..) {
            // SAFETY: this is the allocator's teardown: no owner can reach `local` for this
            // allocator any more (every owner access needs a strong reference to it).
            #[allow(unsafe_code)]
            let st = unsafe { local.state_mut() };
            // Its chunks go back, so that the pack no longer holds itself for them.
            if let Some(run) = st.run.take() {
                run.retire();
            }
        }
    }
}
