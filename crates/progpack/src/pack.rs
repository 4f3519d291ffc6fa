//! A pack: one region of `pack_size` bytes, carved into chunks tracked by a [`Bitmap`].
//!
//! Invariants (checked by [`Pack::check`]):
//! - a bit is set iff its chunk belongs to a live draft, batch slot or program;
//! - every clear chunk holds only trap instructions;
//! - `free` equals the number of clear bits (it is read without the lock to skip full packs);
//! - the pack is read+execute for its whole life and never writable at any user-space address
//!   (procmem), or writable only through a separate non-executable alias (dualmap).

use crate::bitmap::Bitmap;
use crate::region::Region;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// One pack.
#[derive(Debug)]
pub(crate) struct Pack {
    pub(crate) region: Region,
    /// Index of the shard whose list holds this pack.
    pub(crate) shard: usize,
    pub(crate) chunk_size: usize,
    /// Mirror of the number of clear bits, for lock-free skipping of full packs.
    free: AtomicUsize,
    state: Mutex<PackState>,
}

/// The part of a pack guarded by its lock.
#[derive(Debug)]
pub(crate) struct PackState {
    pub(crate) bitmap: Bitmap,
    /// The pack is in its shard's list (false once released).
    pub(crate) listed: bool,
    /// The pack is empty and counted in the allocator's reserve of empty packs.
    pub(crate) kept_empty: bool,
    /// Live allocations in this pack (kept here, under the lock already taken, rather than
    /// in shared atomics that every thread would write).
    pub(crate) allocations: usize,
    /// Bytes requested by those allocations.
    pub(crate) requested: usize,
}

impl Pack {
    /// Wraps a freshly mapped, trap-filled region.
    pub(crate) fn new(region: Region, shard: usize, chunk_size: usize) -> Pack {
        let chunks = region.len() / chunk_size;
        Pack {
            region,
            shard,
            chunk_size,
            free: AtomicUsize::new(chunks),
            state: Mutex::new(PackState {
                bitmap: Bitmap::new(chunks),
                listed: true,
                kept_empty: false,
                allocations: 0,
                requested: 0,
            }),
        }
    }

    /// Locks the state. A panic while holding the lock cannot leave the bitmap half-updated
    /// (updates are single calls), so a poisoned lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clear chunks, read without the lock (may be stale by the time it is used).
    pub(crate) fn free_hint(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    /// Takes the first run of `n` clear chunks for an allocation of `requested` bytes.
    /// `reserve` is the allocator's count of kept empty packs, decremented if this pack was one.
    pub(crate) fn take(&self, n: usize, requested: usize, reserve: &AtomicUsize) -> Option<usize> {
        if self.free_hint() < n {
            return None;
        }
        let mut st = self.lock();
        let first = st.bitmap.find_clear_run(n)?;
        self.mark_taken(&mut st, first, n, requested, reserve);
        Some(first)
    }

    /// Takes exactly chunks `first..first + n` if they are all clear.
    pub(crate) fn take_at(
        &self,
        first: usize,
        n: usize,
        requested: usize,
        reserve: &AtomicUsize,
    ) -> bool {
        let mut st = self.lock();
        if !st.listed || !st.bitmap.is_clear(first, n) {
            return false;
        }
        self.mark_taken(&mut st, first, n, requested, reserve);
        true
    }

    fn mark_taken(
        &self,
        st: &mut PackState,
        first: usize,
        n: usize,
        requested: usize,
        reserve: &AtomicUsize,
    ) {
        st.bitmap.set_range(first, n);
        st.allocations += 1;
        st.requested += requested;
        self.free.store(st.bitmap.count_zeros(), Ordering::Relaxed);
        if st.kept_empty {
            st.kept_empty = false;
            reserve.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns chunks whose bytes are traps again. True if the pack is now empty.
    pub(crate) fn give_back(&self, first: usize, n: usize, requested: usize) -> bool {
        let mut st = self.lock();
        st.bitmap.clear_range(first, n);
        st.allocations -= 1;
        st.requested -= requested;
        self.free.store(st.bitmap.count_zeros(), Ordering::Relaxed);
        st.bitmap.count_ones() == 0
    }

    /// Ends an allocation whose chunks stay in use for good (quarantined: trap-filling them
    /// failed), so they are not counted as live any more.
    pub(crate) fn forget(&self, requested: usize) {
        let mut st = self.lock();
        st.allocations -= 1;
        st.requested -= requested;
    }

    /// Base address.
    pub(crate) fn base(&self) -> usize {
        self.region.base()
    }

    /// Checks the invariants at the top of this file; returns what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        let st = self.lock();
        if self.free_hint() != st.bitmap.count_zeros() {
            return Err(format!("pack {:#x}: free count out of date", self.base()));
        }
        for i in 0..st.bitmap.len() {
            if st.bitmap.get(i) {
                continue;
            }
            // A clear chunk is not being written: writes target only set chunks, and the
            // lock is held so no chunk changes state meanwhile.
            let bytes = self.region.bytes(i * self.chunk_size, self.chunk_size);
            if !crate::arch::is_all_traps(bytes) {
                return Err(format!(
                    "pack {:#x}: free chunk {i} holds non-trap bytes",
                    self.base()
                ));
            }
        }
        Ok(())
    }
}
