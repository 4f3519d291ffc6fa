//! The code range: one `PROT_NONE` reservation within ±2 GiB of an address, carved into
//! pack-sized slots for packs and dedicated mappings, so JIT code can `call rel32` the host.
//!
//! Invariants: a slot bit is set iff a live [`Region`](crate::region::Region) is mapped over
//! that slot; a clear slot is `PROT_NONE` reserved memory; the reservation is unmapped when the
//! last region and the allocator are gone.

use crate::backend::sys;
use crate::bitmap::Bitmap;
use crate::config::CodeRange;
use crate::error::{Error, Result};
use std::sync::Mutex;

/// Distance kept free of code around `near`'s ±2 GiB limit, for host text larger than one
/// function (the executable's text can be tens of MiB).
const MARGIN: usize = 64 << 20;
const REACH: usize = (1 << 31) - MARGIN;

/// The reservation and its slot map.
#[derive(Debug)]
pub(crate) struct CodeRangeSpace {
    base: usize,
    size: usize,
    granule: usize,
    near: usize,
    slots: Mutex<Bitmap>,
}

impl CodeRangeSpace {
    /// Reserves `range.size` bytes (rounded up to `granule`, aligned to it) within reach.
    pub(crate) fn reserve(range: CodeRange, granule: usize) -> Result<Self> {
        let size = range.size.next_multiple_of(granule);
        let unavailable = Error::CodeRangeUnavailable {
            near: range.near,
            size,
        };
        let step = 64 << 20;
        let near = range.near;
        let mut tried = 0;
        for i in 0.. {
            let delta = i * step;
            if delta + size > REACH {
                break;
            }
            // Below `near`: [lo, lo + size) must end at or before near; above: start after it.
            let below = near
                .checked_sub(delta + size)
                .map(|lo| lo / granule * granule);
            let above = near
                .checked_add(delta)
                .map(|lo| lo.next_multiple_of(granule));
            for lo in [below, above].into_iter().flatten() {
                if lo == 0 || !within_reach(lo, size, near) {
                    continue;
                }
                tried += 1;
                if sys::reserve_exact(lo, size)? {
                    return Ok(CodeRangeSpace {
                        base: lo,
                        size,
                        granule,
                        near,
                        slots: Mutex::new(Bitmap::new(size / granule)),
                    });
                }
            }
        }
        let _ = tried;
        Err(unavailable)
    }

    /// Takes `len` bytes (rounded up to whole slots) and returns their address.
    pub(crate) fn take(&self, len: usize) -> Result<usize> {
        let n = len.div_ceil(self.granule);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let at = slots.find_clear_run(n).ok_or(Error::CodeRangeFull {
            near: self.near,
            size: self.size,
        })?;
        slots.set_range(at, n);
        Ok(self.base + at * self.granule)
    }

    /// Returns slots taken by [`Self::take`]; the caller has already made the range
    /// `PROT_NONE` reserved again.
    pub(crate) fn give_back(&self, addr: usize, len: usize) {
        let n = len.div_ceil(self.granule);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.clear_range((addr - self.base) / self.granule, n);
    }

    /// Base address of the reservation.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Size of the reservation.
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

impl Drop for CodeRangeSpace {
    fn drop(&mut self) {
        let released = sys::unmap(self.base, self.size);
        debug_assert!(
            released.is_ok(),
            "unmapping the code range failed: {released:?}"
        );
    }
}

/// True if every byte of `lo..lo + size` is within [`REACH`] of `near`.
fn within_reach(lo: usize, size: usize, near: usize) -> bool {
    let hi = lo + size;
    near.abs_diff(lo) <= REACH && near.abs_diff(hi) <= REACH
}
