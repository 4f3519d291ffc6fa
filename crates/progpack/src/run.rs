//! Runs and per-thread state: what lets one thread allocate many programs without a lock.
//!
//! A [`Run`] is a stretch of chunks inside one bitmap word of a pack, taken under the pack's
//! lock once and then handed out by bumping an index, with a staging [`Block`] laid out like
//! it. A [`Local`] is one thread's state for one allocator: its current run, its random number
//! generator and its counters.
//!
//! Invariants:
//! - a run's chunks `first..end` are set in the pack's bitmap; `first..next` were handed out to
//!   spans (which now own them), `next..end` are still the run's, hold traps, and go back to the
//!   pack when the run is retired;
//! - a `Local`'s state is touched only by its owner thread while that thread holds a strong
//!   reference to the allocator, or by the allocator's own teardown (when no owner can);
//! - a `Local`'s counters are written only by its owner thread (relaxed load + store, no
//!   read-modify-write), and read by anyone for statistics.

use crate::pack::Pack;
use crate::staging::{Block, Image};
use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Chunks of one pack reserved by a thread (or a batch) and handed out in order.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) pack: Arc<Pack>,
    /// First chunk of the run (where the staging block starts).
    pub(crate) first: usize,
    /// Next chunk to hand out.
    pub(crate) next: usize,
    /// One past the last chunk.
    pub(crate) end: usize,
    /// Staging laid out like `first..end`.
    pub(crate) block: Arc<Block>,
}

impl Run {
    /// Chunks not handed out yet.
    pub(crate) fn left(&self) -> usize {
        self.end - self.next
    }

    /// Hands out the next `n` chunks (`n <= left()`), with the image `offset..offset + len` of
    /// them: the same bytes of the pack's writable alias when there is one here (and the image
    /// is short enough), else carved from the staging block (`shift` is log2 of the chunk
    /// size). Returns the first chunk, the image, and whether it is in the alias.
    #[inline(always)]
    pub(crate) fn hand_out(
        &mut self,
        n: usize,
        shift: u32,
        offset: usize,
        len: usize,
    ) -> (usize, Image, bool) {
        debug_assert!(n <= self.left() && offset + len <= n << shift);
        let first = self.next;
        self.next += n;
        if len <= Image::ALIAS_MAX {
            if let Some((addr, epoch)) = self.pack.alias_of((first << shift) + offset) {
                // SAFETY: chunks `first..first + n` were just handed out, once, to the caller's
                // span; the alias stays mapped (in this process, checked) while the pack lives,
                // which the span holds; `len` fits the image limit (checked).
                #[allow(unsafe_code)]
                let image = unsafe { Image::in_alias(addr, len, epoch) };
                return (first, image, true);
            }
        }
        let at = ((first - self.first) << shift) + offset;
        // SAFETY: `next` only grows, so chunks `first..first + n` are handed out once and the
        // image lies inside their part of the block (checked by `carve`, and `offset + len`
        // fits the chunks by the caller's contract); no other image overlaps it.
        #[allow(unsafe_code)]
        let image = unsafe { self.block.carve(at, len) };
        (first, image, false)
    }

    /// Gives the chunks not handed out back to the pack (they were never written).
    pub(crate) fn retire(self) {
        let Run {
            pack, next, end, ..
        } = self;
        pack.give_back(next, end - next);
    }
}

/// A counter written by one thread only: a relaxed load and store, no locked instruction.
#[derive(Debug, Default)]
pub(crate) struct OwnCounter(AtomicU64);

impl OwnCounter {
    /// Adds `n` (wrapping). Only the owner thread calls this.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one thread made through one allocator (frees are counted by the packs).
#[derive(Debug, Default)]
pub(crate) struct Made {
    /// Spans allocated (drafts and batch slots).
    pub(crate) spans: OwnCounter,
    /// Bytes those spans were asked for.
    pub(crate) requested: OwnCounter,
    /// Programs finalized.
    pub(crate) programs: OwnCounter,
    /// Chunks held by this thread's run and not handed out yet.
    pub(crate) cached: OwnCounter,
}

/// The mutable part of a [`Local`].
#[derive(Debug)]
pub(crate) struct LocalState {
    pub(crate) run: Option<Run>,
    /// The last run's staging block, reused by the next run once no image of it is left.
    pub(crate) spare: Option<Arc<Block>>,
    /// The staging block of the last draft off the fast path (larger than a run), reused by
    /// the next one once no image of it is left (see [`Block::image`]).
    pub(crate) slow_spare: Option<Arc<Block>>,
    /// xorshift64* state for image offsets and run positions.
    pub(crate) rng: u64,
    /// [`crate::backend::sys::process_epoch`] when this state was last used: a mismatch means
    /// this is a child process and the run belongs to the parent.
    pub(crate) epoch: u64,
}

impl LocalState {
    /// A state with no run, drawing random numbers from `seed`, at `epoch`.
    pub(crate) fn new(seed: u64, epoch: u64) -> LocalState {
        LocalState {
            run: None,
            spare: None,
            slow_spare: None,
            rng: seed | 1,
            epoch,
        }
    }

    /// The next random number (xorshift64*: fast; enough to place images unpredictably).
    #[inline]
    pub(crate) fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One thread's state for one allocator.
pub(crate) struct Local {
    /// Shard whose packs this thread takes runs from.
    pub(crate) shard: usize,
    state: UnsafeCell<LocalState>,
    pub(crate) made: Made,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local").field("shard", &self.shard).finish()
    }
}

// SAFETY: `state` is only reached through `state_mut`, whose contract gives one thread at a
// time access (the owner, or the allocator's teardown when no owner can run); the counters are
// atomics.
#[allow(unsafe_code)]
unsafe impl Sync for Local {}

impl Local {
    /// A fresh state for a thread using shard `shard`.
    pub(crate) fn new(shard: usize, epoch: u64) -> Local {
        Local {
            shard,
            state: UnsafeCell::new(LocalState::new(seed(), epoch)),
            made: Made::default(),
        }
    }

    /// The mutable state.
    ///
    /// # Safety
    /// The caller is the thread that owns this `Local` and holds a strong reference to its
    /// allocator, or is the allocator's teardown (no owner can use it then); and no other
    /// reference from `state_mut` is alive (no re-entry, e.g. from a signal handler).
    #[allow(unsafe_code, clippy::mut_from_ref)]
    #[inline]
    pub(crate) unsafe fn state_mut(&self) -> &mut LocalState {
        // SAFETY: exclusive access is the caller's contract.
        unsafe { &mut *self.state.get() }
    }
}

/// A per-thread seed from the standard library's randomly keyed hasher (OS randomness).
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id()) | 1
}
