//! The code range: one `PROT_NONE` reservation within ±2 GiB of an address, carved into
//! pack-sized slots for packs and dedicated mappings, so JIT code can `call rel32` the host.
//!
//! Invariants: a slot bit is set iff a live [`Region`](crate::region::Region) is mapped over
//! that slot, or the slot is lost; a clear slot is `PROT_NONE` reserved memory; a lost slot
//! (in a `fork()` child: the range of a mapping the child did not inherit, where the child has
//! since mapped its own memory) is never handed out and never unmapped; the rest of the
//! reservation is unmapped when the last region and the allocator are gone.

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
    /// Lost ranges (address, length): never reused, never unmapped.
    lost: Mutex<Vec<(usize, usize)>>,
}

impl CodeRangeSpace {
    /// Reserves `range.size` bytes (rounded up to `granule`, aligned to it) within reach.
    pub(crate) fn reserve(range: CodeRange, granule: usize) -> Result<Self> {
        let near = range.near;
        let size =
            range
                .size
                .checked_next_multiple_of(granule)
                .ok_or(Error::CodeRangeUnavailable {
                    near,
                    size: range.size,
                })?;
        // In a child: take the ranges it did not inherit before the kernel can hand them out.
        crate::backend::claim_inherited();
        let step = 64 << 20;
        let mut delta = 0;
        while delta + size <= REACH {
            // Below `near`: [lo, lo + size) ends at or before near; above: starts after it.
            // Every step is checked: near the ends of the address space they would wrap.
            let below = near
                .checked_sub(delta + size)
                .map(|lo| lo / granule * granule);
            let above = near
                .checked_add(delta)
                .and_then(|lo| lo.checked_next_multiple_of(granule));
            for lo in [below, above].into_iter().flatten() {
                if lo == 0 || !within_reach(lo, size, near) {
                    continue;
                }
                match sys::reserve_exact(lo, size) {
                    Ok(true) => {
                        return Ok(CodeRangeSpace {
                            base: lo,
                            size,
                            granule,
                            near,
                            slots: Mutex::new(Bitmap::new(size / granule)),
                            lost: Mutex::new(Vec::new()),
                        })
                    }
                    Ok(false) => {}
                    // Beyond the user address space (`near` in the top half, or a range that
                    // runs past the end): the kernel refuses; nothing there can be reserved.
                    Err(e) if e.is_out_of_memory() || e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
            delta += step;
        }
        Err(Error::CodeRangeUnavailable { near, size })
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

    /// Marks slots taken by [`Self::take`] as lost: their range holds memory that is not the
    /// allocator's (see the module docs). Their bits stay set, and the range is never unmapped.
    pub(crate) fn lose(&self, addr: usize, len: usize) {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((addr, len));
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
        let lost = self.lost.get_mut().unwrap_or_else(|p| p.into_inner());
        lost.sort_unstable();
        let end = self.base + self.size;
        let mut at = self.base;
        for &(lost_at, lost_len) in lost.iter().chain([(end, 0)].iter()) {
            if lost_at > at {
                #[allow(unsafe_code)]
                // SAFETY: the reservation is this allocator's; every region in it is gone (each
                // held a reference to this space), so what is left is `PROT_NONE` reservation,
                // except the lost ranges, which this loop skips.
                let released = unsafe { sys::unmap(at, lost_at - at) };
                debug_assert!(
                    released.is_ok(),
                    "unmapping the code range failed: {released:?}"
                );
            }
            at = at.max(lost_at + lost_len);
        }
    }
}

/// True if every byte of `lo..lo + size` is within [`REACH`] of `near` (and the range does
/// not wrap around the end of the address space).
fn within_reach(lo: usize, size: usize, near: usize) -> bool {
    lo.checked_add(size)
        .is_some_and(|hi| near.abs_diff(lo) <= REACH && near.abs_diff(hi) <= REACH)
}

#[cfg(test)]
mod tests {
    use crate::{Allocator, CodeRange, Config, Error};

    /// Addresses at the ends of the address space, where `near ± 2 GiB` would wrap: a typed
    /// error, never an overflow (a panic in debug builds) or a stray system-call error.
    #[test]
    fn near_the_ends_of_the_address_space_is_a_typed_error() {
        for near in [
            usize::MAX,
            usize::MAX - 100,
            usize::MAX - (1 << 20),
            usize::MAX / 2 + 1,
            1usize << 63,
        ] {
            let got = Allocator::new(Config::default().code_range(CodeRange::near(near)));
            assert!(
                matches!(got, Err(Error::CodeRangeUnavailable { near: n, .. }) if n == near),
                "near {near:#x}: {got:?}"
            );
        }
    }
}
