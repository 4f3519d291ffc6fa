//! A pack: one region of `pack_size` bytes, carved into chunks tracked by a [`Bitmap`].
//!
//! Invariants (checked by [`Pack::check`]):
//! - a bit is set iff its chunk is owned by a live span (draft, batch slot or program), a
//!   thread's run or a batch's run;
//! - every clear chunk holds only trap instructions; a freed span is trap-filled before its bits
//!   are cleared (quarantined spans, whose fill failed, keep their bits for good);
//! - `fits` equals [`Bitmap::run_bound`]: an upper bound on the longest run of clear chunks,
//!   read without the lock to skip full or too fragmented packs; `run_fits` likewise bounds
//!   the longest run inside one bitmap word ([`Bitmap::word_run_bound`]). Both are lowered by
//!   failed searches and raised by frees only as far as the words freed into allow, measured
//!   by the next search that needs it, not at free time;
//! - the pack is read+execute for its whole life and never writable at any user-space address
//!   (procmem), or writable only through a separate non-executable alias (dualmap);
//! - a pack is unmapped only when no span, run or batch owns a chunk in it: while any chunk is
//!   owned (set and not quarantined) the pack holds one strong reference to itself (`pinned`),
//!   taken when the first chunk is taken and dropped when the last one comes back, so a span
//!   needs no reference count of its own ([`PackRef`]).

use crate::bitmap::Bitmap;
use crate::region::Region;
use parking_lot::{Mutex, MutexGuard};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// The least a pack that is not fully ready grows by at a time, in bytes.
const GROW_MIN_BYTES: usize = 64 << 10;

/// What a pack calls when it becomes empty: the allocator that lists it. A trait so that the
/// pack, below the allocator in the module stack, does not name it.
pub(crate) trait PackOwner: Send + Sync {
    /// The last owned chunk of `pack` was given back.
    fn pack_became_empty(&self, pack: &Arc<Pack>);
    /// The span of a dedicated mapping (`pack`) was freed: it unmaps when `pack` goes.
    fn dedicated_freed(&self, pack: &Pack, freed: &Freed);
    /// A dedicated span asked for fewer bytes (a draft shrunk): count `freed`.
    fn dedicated_freed_bytes(&self, freed: &Freed);
    /// `n` programs were finalized by a thread that keeps no counters for the allocator.
    fn count_programs(&self, n: u64);
    /// The allocator's observer (names and announcements), made if it has none.
    fn observer(&self) -> Arc<crate::observe::Observer>;
}

/// Counts of what was freed in a pack, kept under its lock (so a free writes no shared atomic
/// of its own); the allocator sums them with what threads made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Freed {
    /// Spans freed (including quarantined ones).
    pub(crate) spans: u64,
    /// Bytes those spans had been asked for.
    pub(crate) requested: u64,
    /// Of those spans, finalized programs.
    pub(crate) programs: u64,
    /// Chunks kept for good because trap-filling them failed.
    pub(crate) quarantined: u64,
}

impl Freed {
    /// Adds `other` into `self`.
    pub(crate) fn add(&mut self, other: &Freed) {
        self.spans += other.spans;
        self.requested += other.requested;
        self.programs += other.programs;
        self.quarantined += other.quarantined;
    }
}

/// [`Pack::quirks`]: the pack is a dedicated mapping.
const QUIRK_DEDICATED: u8 = 1;
/// [`Pack::quirks`]: a live patch made patch sites in a program here (see `patch::sites`).
#[cfg(target_arch = "x86_64")]
const QUIRK_SITES: u8 = 2;

/// Where a new run starts looking for free chunks in a pack.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RunStart {
    /// The first free word (placement not randomized).
    First,
    /// A word drawn from this random number.
    Random(u64),
    /// Chunk `next` of the pack at address `pack` (where the thread's previous run ended); a
    /// word drawn from `r` in any other pack.
    After { pack: usize, next: usize, r: u64 },
}

/// One pack (or one dedicated mapping: a pack of one chunk that no shard lists).
pub(crate) struct Pack {
    pub(crate) region: Region,
    /// The region's base address (read on every address computation: no call through the
    /// mapping).
    pub(crate) base: usize,
    /// Id of the allocator (its threads' counters are keyed by it).
    pub(crate) owner_id: u64,
    /// A mapping of its own for one program larger than a pack.
    pub(crate) dedicated: bool,
    /// Nonzero if freeing a span here takes more than the trap fill: `QUIRK_DEDICATED`,
    /// `QUIRK_SITES`. One load on the per-program free path answers both.
    quirks: std::sync::atomic::AtomicU8,
    /// The mapping's persistent writable alias (0: none) and the process it is valid in.
    alias: usize,
    alias_epoch: u64,
    /// Index of the shard whose list holds this pack.
    pub(crate) shard: usize,
    pub(crate) chunk_size: usize,
    /// `log2(chunk_size)`; in a dedicated mapping (one chunk, of any size) a shift past every
    /// offset in it, so that an offset's chunk is 0.
    pub(crate) chunk_shift: u32,
    /// `min_slack + chunk_size - 1`: what [`chunks_for`](Self::chunks_for) adds before
    /// shifting.
    round_up: usize,
    /// A dedicated mapping's image length (its one span's; 0 in a pack of many spans).
    dedicated_len: AtomicUsize,
    /// The allocator listing the pack (gone if the allocator was dropped before its programs).
    owner: Weak<dyn PackOwner>,
    /// Mirror of `min(longest_bound, cap)`, for lock-free skipping.
    fits: AtomicUsize,
    /// Mirror of the bound on the longest clear run inside one word.
    run_fits: AtomicUsize,
    /// Chunks in the whole pack; the bitmap covers those ready so far.
    capacity: usize,
    /// Chunks ready, mirrored from the bitmap's length for lock-free reads.
    ready: AtomicUsize,
    /// Serializes growth (which writes outside the state lock).
    growing: Mutex<()>,
    /// Growth failed once (a child process may not grow its parent's file, say): stop trying.
    stuck: std::sync::atomic::AtomicBool,
    state: Mutex<PackState>,
    /// Side data of the pack's programs (names, announcements): none until a program here is
    /// named or the allocator announces its code.
    pub(crate) side: crate::observe::SideCell,
}

impl fmt::Debug for Pack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pack")
            .field("base", &format_args!("{:#x}", self.base()))
            .field("shard", &self.shard)
            .finish()
    }
}

/// The part of a pack guarded by its lock.
#[derive(Debug)]
pub(crate) struct PackState {
    pub(crate) bitmap: Bitmap,
    /// The pack is in its shard's list (false once released).
    pub(crate) listed: bool,
    /// The pack is empty and counted in the allocator's reserve of empty packs.
    pub(crate) kept_empty: bool,
    /// What was freed here.
    pub(crate) freed: Freed,
    /// The pack holds a strong reference to itself for the owners of its chunks.
    pinned: bool,
}

impl PackState {
    /// Chunks owned by a span, a run or a batch (set and not quarantined).
    #[inline(always)]
    fn owned(&self) -> u64 {
        self.bitmap.count_ones() as u64 - self.freed.quarantined
    }
}

/// A reference to a pack held by the owner of chunks in it (a span): no reference count of
/// its own, because the pack keeps itself alive while any chunk is owned (see the module
/// invariants). 8 bytes, and nothing atomic to copy or drop.
#[derive(Debug)]
pub(crate) struct PackRef(std::ptr::NonNull<Pack>);

// SAFETY: `Pack` is `Sync` (its mutable state is behind a mutex or atomics), and a `PackRef`
// only hands out `&Pack`.
#[allow(unsafe_code)]
unsafe impl Send for PackRef {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for PackRef {}

impl PackRef {
    /// A reference to `pack` for an owner of chunks in it.
    ///
    /// # Safety
    /// The caller owns chunks of `pack` (taken and not yet given back) for as long as the
    /// reference is used, and gives them back only through this reference at the end.
    #[allow(unsafe_code)]
    #[inline]
    pub(crate) unsafe fn new(pack: &Arc<Pack>) -> PackRef {
        PackRef(std::ptr::NonNull::from(&**pack))
    }

    /// The pack.
    #[inline]
    pub(crate) fn get(&self) -> &Pack {
        // SAFETY: the owner owns chunks of the pack (the contract of `new`), so the pack holds
        // a strong reference to itself and is alive.
        #[allow(unsafe_code)]
        unsafe {
            self.0.as_ref()
        }
    }

    /// True if both refer to the same pack.
    pub(crate) fn same(&self, other: &PackRef) -> bool {
        self.0 == other.0
    }
}

impl Pack {
    /// Wraps a freshly mapped, trap-filled region.
    pub(crate) fn new(
        region: Region,
        shard: usize,
        chunk_size: usize,
        min_slack: usize,
        owner: Weak<dyn PackOwner>,
        owner_id: u64,
    ) -> Pack {
        let capacity = region.len() / chunk_size;
        let ready = region.mapping().ready() / chunk_size;
        let bitmap = Bitmap::with_capacity(capacity, ready);
        let (alias, alias_epoch) = region.mapping().writable_alias().unwrap_or((0, 0));
        Pack {
            base: region.base(),
            alias,
            alias_epoch,
            owner_id,
            dedicated: false,
            quirks: std::sync::atomic::AtomicU8::new(0),
            region,
            shard,
            chunk_size,
            chunk_shift: chunk_size.trailing_zeros(),
            round_up: min_slack + chunk_size - 1,
            dedicated_len: AtomicUsize::new(0),
            owner,
            fits: AtomicUsize::new(bitmap.longest_bound()),
            run_fits: AtomicUsize::new(64),
            capacity,
            ready: AtomicUsize::new(ready),
            growing: Mutex::new(()),
            stuck: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(PackState {
                bitmap,
                listed: true,
                kept_empty: false,
                freed: Freed::default(),
                pinned: false,
            }),
            side: crate::observe::SideCell::new(),
        }
    }

    /// Wraps a region that holds one program larger than a pack: one chunk, owned from the
    /// start, never listed.
    pub(crate) fn dedicated(region: Region, owner: Weak<dyn PackOwner>, owner_id: u64) -> Pack {
        let len = region.len();
        let mut pack = Pack::new(region, 0, len, 0, owner, owner_id);
        pack.dedicated = true;
        pack.chunk_shift = usize::BITS - 1;
        *pack.quirks.get_mut() |= QUIRK_DEDICATED;
        let st = pack.state.get_mut();
        st.bitmap.set_range(0, 1);
        st.listed = false;
        pack
    }

    /// The chunks the allocator takes here for an image of `len` bytes: `len` plus the
    /// allocator's `min_slack`, rounded up to chunks (not for a dedicated mapping).
    #[inline(always)]
    pub(crate) fn chunks_for(&self, len: usize) -> usize {
        (len + self.round_up) >> self.chunk_shift
    }

    /// The length of a dedicated mapping's image.
    pub(crate) fn dedicated_len(&self) -> usize {
        self.dedicated_len.load(Ordering::Relaxed)
    }

    /// Sets the length of a dedicated mapping's image (by its span's owner: when made, and
    /// when shrunk).
    pub(crate) fn set_dedicated_len(&self, len: usize) {
        debug_assert!(self.dedicated);
        self.dedicated_len.store(len, Ordering::Relaxed);
    }

    /// Locks the state (a `parking_lot` mutex: one compare-and-swap each way, no poisoning;
    /// updates are single calls that cannot leave the bitmap half-updated).
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, PackState> {
        self.state.lock()
    }

    /// After chunks were taken (under the lock): the pack holds itself for their owners.
    fn pin(self: &Arc<Self>, st: &mut PackState) {
        if !st.pinned && st.owned() > 0 {
            st.pinned = true;
            // SAFETY: `self` is a live `Arc`; the count taken here is given back by
            // `unpinned` once no chunk is owned.
            #[allow(unsafe_code)]
            unsafe {
                Arc::increment_strong_count(Arc::as_ptr(self))
            };
        }
    }

    /// After chunks came back (under the lock): true if the pack no longer holds itself; the
    /// caller then calls [`Pack::unpinned`] once the lock is released (the pack may go then).
    #[inline(always)]
    fn unpin(st: &mut PackState) -> bool {
        if st.pinned && st.owned() == 0 {
            st.pinned = false;
            true
        } else {
            false
        }
    }

    /// Drops the reference the pack held to itself. The pack may be freed: the caller must
    /// not use it afterwards.
    ///
    /// # Safety
    /// `unpin` said so, for this pack, and this is the only call for that.
    #[allow(unsafe_code)]
    unsafe fn unpinned(&self) {
        // SAFETY: the pack lives in an `Arc` (every pack does) and holds one count for its
        // owners, taken by `pin` (the caller's contract).
        unsafe { Arc::decrement_strong_count(self as *const Pack) }
    }

    /// Runs `f` with the pack as an `Arc` (for the owner's callbacks), while the caller still
    /// keeps it alive (it owns chunks, or holds the pin).
    fn with_arc<R>(&self, f: impl FnOnce(&Arc<Pack>) -> R) -> R {
        // SAFETY: the pack lives in an `Arc`, and the caller keeps a count alive during `f`;
        // `ManuallyDrop` gives back no count.
        #[allow(unsafe_code)]
        let arc = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(self as *const Pack) });
        f(&arc)
    }

    /// A dedicated pack, just made: its one chunk is owned.
    pub(crate) fn pin_dedicated(self: &Arc<Self>) {
        let mut st = self.lock();
        self.pin(&mut st);
    }

    /// The largest request that might fit, read without the lock (may be stale by the time
    /// it is used; the search under the lock decides).
    pub(crate) fn fits_hint(&self) -> usize {
        self.fits.load(Ordering::Relaxed)
    }

    fn publish(&self, st: &PackState) {
        let longest = st.bitmap.run_bound();
        self.fits.store(longest, Ordering::Relaxed);
        let in_word = longest.min(st.bitmap.word_run_bound());
        self.run_fits.store(in_word, Ordering::Relaxed);
    }

    /// Leaves the reserve of empty packs, if this pack was in it (`reserve` is the allocator's
    /// count of kept empty packs).
    fn unreserve(st: &mut PackState, reserve: &AtomicUsize) {
        if st.kept_empty {
            st.kept_empty = false;
            reserve.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes a run of `min..=max` chunks inside one bitmap word for a thread or a batch (see
    /// [`Bitmap::take_word_run`]; `start` says where to look first). Returns `(first, len)`.
    pub(crate) fn take_run(
        self: &Arc<Self>,
        min: usize,
        max: usize,
        start: RunStart,
        reserve: &AtomicUsize,
    ) -> Option<(usize, usize)> {
        if self.run_fits.load(Ordering::Relaxed) < min {
            return None;
        }
        let mut st = self.lock();
        if !st.listed {
            return None;
        }
        let from = match start {
            RunStart::First => None,
            RunStart::Random(r) => Some(st.bitmap.random_word(r)),
            RunStart::After { pack, r, .. } if pack != Arc::as_ptr(self) as usize => {
                Some(st.bitmap.random_word(r))
            }
            RunStart::After { next, .. } => Some(Bitmap::word_of(next)),
        };
        match st.bitmap.take_word_run(min, max, from) {
            Some(run) => {
                Self::unreserve(&mut st, reserve);
                self.pin(&mut st);
                self.publish(&st);
                Some(run)
            }
            None => {
                // No run of `min` inside any word (the bitmap keeps that bound until a free
                // into a word, and then looks at those words only).
                self.publish(&st);
                None
            }
        }
    }

    /// Takes the first run of `n` clear chunks starting at a multiple of `step` chunks.
    pub(crate) fn take_span(
        self: &Arc<Self>,
        n: usize,
        step: usize,
        reserve: &AtomicUsize,
    ) -> Option<usize> {
        if self.fits_hint() < n {
            return None;
        }
        let mut st = self.lock();
        if !st.listed {
            return None;
        }
        let Some(first) = st.bitmap.take_first_fit(n, step) else {
            // No run of n (the bitmap keeps that bound until a free into a word, and then
            // measures the runs there only).
            self.publish(&st);
            return None;
        };
        Self::unreserve(&mut st, reserve);
        self.pin(&mut st);
        self.publish(&st);
        Some(first)
    }

    /// Takes exactly chunks `first..first + n` if they are all clear (a batch growing its run).
    pub(crate) fn take_at(self: &Arc<Self>, first: usize, n: usize, reserve: &AtomicUsize) -> bool {
        let mut st = self.lock();
        if !st.listed || !st.bitmap.is_clear(first, n) {
            return false;
        }
        st.bitmap.set_range(first, n);
        Self::unreserve(&mut st, reserve);
        self.pin(&mut st);
        self.publish(&st);
        true
    }

    /// Returns chunks `first..first + n` that hold only traps (a run's unused tail), counting
    /// no free. If that empties the pack, tells the owner.
    pub(crate) fn give_back(&self, first: usize, n: usize) {
        let (empty, unpin) = self.release(first, n, 0);
        self.after_release(empty, unpin);
    }

    /// Like [`Pack::give_back`], but only says whether the pack is now empty: the caller, who
    /// holds an `Arc` of the pack, tells the owner with [`Pack::became_empty`] when it is done
    /// with the pack (a thread renewing its run looks for the new run before an empty pack is
    /// released).
    pub(crate) fn give_back_quietly(self: &Arc<Self>, first: usize, n: usize) -> bool {
        let (empty, unpin) = self.release(first, n, 0);
        if unpin {
            // SAFETY: `release` said so; the caller's `Arc` keeps the pack alive.
            #[allow(unsafe_code)]
            unsafe {
                self.unpinned()
            };
        }
        empty
    }

    /// Returns the tail `first..first + n` of a live span that asked for `less` bytes fewer
    /// (a draft shrunk); the chunks hold only traps.
    pub(crate) fn shrink_span(&self, first: usize, n: usize, less: usize) {
        if self.dedicated {
            if let Some(owner) = self.owner.upgrade() {
                let freed = Freed {
                    requested: less as u64,
                    ..Freed::default()
                };
                owner.dedicated_freed_bytes(&freed);
            }
            return;
        }
        let (empty, unpin) = self.release(first, n, less);
        self.after_release(empty, unpin);
    }

    /// Clears `first..first + n` and counts `less` bytes freed: (now empty, unpin).
    fn release(&self, first: usize, n: usize, less: usize) -> (bool, bool) {
        if n == 0 && less == 0 {
            return (false, false);
        }
        let mut st = self.lock();
        st.freed.requested += less as u64;
        if n > 0 {
            st.bitmap.clear_range(first, n);
        }
        self.publish(&st);
        (st.bitmap.count_ones() == 0, Self::unpin(&mut st))
    }

    /// After chunks came back, with no lock held: tells the owner if the pack is empty (the
    /// pin still keeps it alive then), and drops the pin if the last owned chunk came back.
    #[inline(always)]
    fn after_release(&self, empty: bool, unpin: bool) {
        if empty || unpin {
            self.after_release_slow(empty, unpin);
        }
    }

    #[cold]
    #[inline(never)]
    fn after_release_slow(&self, empty: bool, unpin: bool) {
        if empty {
            self.with_arc(|pack| pack.became_empty());
        }
        if unpin {
            // SAFETY: `release` said so; nothing touches the pack after this.
            #[allow(unsafe_code)]
            unsafe {
                self.unpinned()
            };
        }
    }

    /// Frees a span whose chunks hold only traps again: clears its bits and counts the free.
    /// This is the per-program free under the lock: a few word operations, no scan.
    /// The pack may go away when this returns.
    pub(crate) fn free_span(&self, first: usize, n: usize, requested: usize, program: bool) {
        if self.dedicated {
            let freed = Freed {
                spans: 1,
                requested: requested as u64,
                programs: u64::from(program),
                quarantined: 0,
            };
            if let Some(owner) = self.owner.upgrade() {
                owner.dedicated_freed(self, &freed);
            }
            let unpin = {
                let mut st = self.lock();
                st.bitmap.clear_range(0, 1);
                Self::unpin(&mut st)
            };
            self.after_release(false, unpin);
            return;
        }
        self.free_packed_span(first, n, requested, program);
    }

    /// [`free_span`](Self::free_span) in a pack of many spans (not a dedicated mapping): the
    /// free's common case, inlined into it.
    #[inline(always)]
    pub(crate) fn free_packed_span(&self, first: usize, n: usize, requested: usize, program: bool) {
        debug_assert!(!self.dedicated);
        let (empty, unpin) = {
            let mut st = self.lock();
            st.bitmap.clear_range(first, n);
            st.freed.spans += 1;
            st.freed.requested += requested as u64;
            st.freed.programs += u64::from(program);
            self.publish(&st);
            (st.bitmap.count_ones() == 0, Self::unpin(&mut st))
        };
        self.after_release(empty, unpin);
    }

    /// Ends a span whose chunks stay owned for good (quarantined: trap-filling them failed), so
    /// it no longer counts as live. The pack may go away when this returns.
    pub(crate) fn quarantine(&self, n: usize, requested: usize, program: bool) {
        let unpin = {
            let mut st = self.lock();
            st.freed.spans += 1;
            st.freed.requested += requested as u64;
            st.freed.programs += u64::from(program);
            st.freed.quarantined += n as u64;
            Self::unpin(&mut st)
        };
        self.after_release(false, unpin);
    }

    /// Keeps `n` chunks for good (trap-filling them failed) that belonged to no counted span
    /// (a batch's reservation). The pack may go away when this returns.
    pub(crate) fn quarantine_chunks(&self, n: usize) {
        let unpin = {
            let mut st = self.lock();
            st.freed.quarantined += n as u64;
            Self::unpin(&mut st)
        };
        self.after_release(false, unpin);
    }

    /// Counts `n` finalized programs with the owner (the rare path: the finalizing thread
    /// keeps no counters for this allocator).
    pub(crate) fn count_programs(&self, n: u64) {
        if let Some(owner) = self.owner.upgrade() {
            owner.count_programs(n);
        }
    }

    /// The pack without a persistent writable alias for images (writes still go through the
    /// mapping's own means): a pack of an allocator that announces every program, so that no
    /// draft there is finalized in place (that path has nothing to announce with).
    pub(crate) fn without_image_alias(mut self) -> Pack {
        self.alias = 0;
        self
    }

    /// The side table, if the pack has one.
    #[inline(always)]
    pub(crate) fn side(&self) -> Option<&crate::observe::Side> {
        self.side.get()
    }

    /// The side table, attached now from the owner's observer if there is none (an observer
    /// of its own if the allocator is gone).
    pub(crate) fn side_or_attach(&self) -> &crate::observe::Side {
        self.side.attach(|| {
            let observer = match self.owner.upgrade() {
                Some(owner) => owner.observer(),
                None => Arc::new(crate::observe::Observer::quiet()),
            };
            self.new_side(&observer)
        })
    }

    /// A side table from `observer` laid out for this pack.
    pub(crate) fn new_side(
        &self,
        observer: &Arc<crate::observe::Observer>,
    ) -> crate::observe::Side {
        let (slots, shift) = if self.dedicated {
            (1, 0)
        } else {
            (self.capacity(), self.chunk_size.trailing_zeros())
        };
        observer.side_for(slots, shift, self.base, self.region.len())
    }

    /// The live programs recorded in this pack's side table, in address order (none if it
    /// has no table).
    pub(crate) fn programs(&self) -> Vec<crate::ProgramInfo> {
        match self.side() {
            Some(side) => crate::observe::programs_in(
                side,
                self.base,
                self.chunk_size.trailing_zeros(),
                self.dedicated,
            ),
            None => Vec::new(),
        }
    }

    /// Tells the owner the pack may be empty (it checks again under its locks).
    pub(crate) fn became_empty(self: &Arc<Self>) {
        if let Some(owner) = self.owner.upgrade() {
            owner.pack_became_empty(self);
        }
    }

    /// True if freeing a span here takes more than the trap fill (a dedicated mapping, or a
    /// pack where live patches made sites): the free path's one test for both.
    #[inline(always)]
    pub(crate) fn has_quirks(&self) -> bool {
        self.quirks.load(Ordering::Relaxed) != 0
    }

    /// Records that a live patch made a site in a program here (before the site exists: the
    /// program's drop, on the thread that owns it, then sees it).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn mark_patch_sites(&self) {
        self.quirks.fetch_or(QUIRK_SITES, Ordering::Relaxed);
    }

    /// The persistent writable alias's address of `offset`, if there is one usable in this
    /// process, and the epoch it belongs to.
    #[inline]
    pub(crate) fn alias_of(&self, offset: usize) -> Option<(usize, u64)> {
        (self.alias != 0 && crate::backend::sys::is_process_epoch(self.alias_epoch))
            .then_some((self.alias + offset, self.alias_epoch))
    }

    /// Writes `bytes` at `offset` of the pack, which must lie in chunks the caller owns: a
    /// plain copy through the persistent alias when there is one (in the process that made it),
    /// else one backend write.
    #[inline]
    pub(crate) fn write(&self, offset: usize, bytes: &[u8]) -> crate::Result<()> {
        if self.alias != 0 && crate::backend::sys::is_process_epoch(self.alias_epoch) {
            debug_assert!(offset + bytes.len() <= self.ready() * self.chunk_size);
            // SAFETY: the caller owns these chunks, which lie in the ready part of the mapping;
            // the mapping promises (`Mapping::writable_alias`) that the alias stays mapped
            // read+write while it lives (the pack owns it) and that a store there is the write;
            // `bytes` is a separate heap buffer, so the ranges do not overlap.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    (self.alias + offset) as *mut u8,
                    bytes.len(),
                )
            };
            return Ok(());
        }
        self.region.mapping().write(offset, bytes)
    }

    /// Writes the aligned 32-bit word at `offset` (in chunks the caller owns) with one
    /// single-copy-atomic store: an atomic store through the persistent alias when there is
    /// one, else one 4-byte backend write (`procmem`: the kernel's `copy_to_user_page`, whose
    /// `memcpy` of an aligned word stores it whole). For live patching on aarch64.
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn store_u32(&self, offset: usize, value: u32) -> crate::Result<()> {
        debug_assert!(offset.is_multiple_of(4));
        if let Some((at, _)) = self.alias_of(offset) {
            // SAFETY: as in `write`; `at` is 4-aligned (the pack and the alias are page-aligned
            // and `offset` is a multiple of 4), so it is a valid `AtomicU32` for the store.
            #[allow(unsafe_code)]
            let word = unsafe { &*(at as *const std::sync::atomic::AtomicU32) };
            word.store(value, Ordering::Release);
            return Ok(());
        }
        self.region.mapping().write(offset, &value.to_le_bytes())
    }

    /// Writes the concatenation of `parts` at `offset` (chunks the caller owns): through the
    /// persistent alias when there is one, else one backend write (one `pwritev` on procmem).
    pub(crate) fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> crate::Result<()> {
        if self.alias_of(0).is_some() {
            let mut at = offset;
            for p in parts {
                self.write(at, p)?;
                at += p.len();
            }
            return Ok(());
        }
        self.region.mapping().write_parts(offset, parts)
    }

    /// Fills `offset..offset + len` of the pack, chunks the caller owns, with traps: through
    /// the persistent alias when there is one, else one backend call.
    #[inline]
    pub(crate) fn fill_traps(&self, offset: usize, len: usize) -> crate::Result<()> {
        if self.alias != 0 && crate::backend::sys::is_process_epoch(self.alias_epoch) {
            debug_assert!(offset + len <= self.ready() * self.chunk_size);
            // SAFETY: as in `write`.
            #[allow(unsafe_code)]
            let bytes =
                unsafe { std::slice::from_raw_parts_mut((self.alias + offset) as *mut u8, len) };
            crate::arch::fill_traps(bytes);
            return Ok(());
        }
        self.region.mapping().fill_traps(offset, len)
    }

    /// Base address.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Chunks in the whole pack.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Chunks ready to be handed out (the rest waits for [`Pack::grow`]).
    pub(crate) fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// True if part of the pack is not ready yet and growing it has not failed.
    pub(crate) fn can_grow(&self) -> bool {
        self.ready() < self.capacity && !self.stuck.load(Ordering::Relaxed)
    }

    /// Readies a quarter more chunks, at least 64 KiB worth (up to the whole pack): the backend
    /// fills them with traps (no lock held), then they join the bitmap, clear. (Doubling
    /// instead filled, and paid page allocation for, up to twice what was used: about 15% more
    /// per program loaded into fresh `dualmap` packs. A quarter keeps room for runs to start
    /// at random words.)
    pub(crate) fn grow(&self) -> crate::Result<()> {
        let _one_at_a_time = self.growing.lock();
        let now = self.ready();
        if now == self.capacity {
            return Ok(()); // another thread grew it meanwhile
        }
        let page_chunks = (crate::backend::sys::page_size() / self.chunk_size).max(1);
        let target = (now + (now / 4).max(GROW_MIN_BYTES / self.chunk_size))
            .max(page_chunks)
            .next_multiple_of(page_chunks)
            .min(self.capacity);
        if let Err(e) = self.region.mapping().grow(target * self.chunk_size) {
            self.stuck.store(true, Ordering::Relaxed);
            return Err(e);
        }
        let mut st = self.lock();
        st.bitmap.grow(target);
        self.publish(&st);
        self.ready.store(target, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the invariants at the top of this file; returns what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        let st = self.lock();
        let at = |what: String| format!("pack {:#x}: {what}", self.base());
        st.bitmap.check().map_err(at)?;
        if st.bitmap.len() != self.ready()
            || self.region.mapping().ready() < self.ready() * self.chunk_size
        {
            return Err(at("ready chunks out of step with the mapping".into()));
        }
        if self.fits_hint() != st.bitmap.run_bound() {
            return Err(at("fits hint out of date".into()));
        }
        let longest = st.bitmap.longest_run();
        if self.fits_hint() < longest {
            return Err(at(format!(
                "longest-run bound {} below the real {longest}",
                self.fits_hint()
            )));
        }
        for i in 0..st.bitmap.len() {
            if st.bitmap.get(i) {
                continue;
            }
            // A clear chunk is not being written: writes target only owned chunks, and the
            // lock is held so no chunk changes state meanwhile.
            let bytes = self.region.bytes(i * self.chunk_size, self.chunk_size);
            if !crate::arch::is_all_traps(bytes) {
                return Err(at(format!("free chunk {i} holds non-trap bytes")));
            }
        }
        Ok(())
    }
}
