//! A region: one backend mapping (a pack or a dedicated mapping), plus the code-range slots it
//! occupies. Dropping it unmaps (or re-reserves) the mapping first, then frees the slots.
//!
//! In a `fork()` child that did not inherit the mapping (`dualmap`), the range may hold the
//! child's own memory: then the mapping leaves it alone and the slots are marked lost (never
//! handed out again, never unmapped with the code range), not freed.

use crate::backend::{Backend, Mapping, Placement};
use crate::code_range::CodeRangeSpace;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Code-range slots owned by a region; given back (or marked lost) when dropped.
#[derive(Debug)]
struct SlotGuard {
    space: Arc<CodeRangeSpace>,
    addr: usize,
    len: usize,
    /// The range holds memory this process did not get from progpack.
    lost: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.lost {
            self.space.lose(self.addr, self.len);
        } else {
            self.space.give_back(self.addr, self.len);
        }
    }
}

/// One executable mapping. Field order matters: `mapping` drops before `slot`.
#[derive(Debug)]
pub(crate) struct Region {
    mapping: Box<dyn Mapping>,
    _slot: Option<SlotGuard>,
}

impl Region {
    /// Maps `len` bytes aligned to `align`, inside `space` when there is a code range, with at
    /// least the first `ready` bytes ready (see [`Backend::map_growable`]).
    pub(crate) fn map(
        backend: &dyn Backend,
        space: Option<&Arc<CodeRangeSpace>>,
        len: usize,
        align: usize,
        ready: usize,
    ) -> Result<Region> {
        let map = |placement| {
            if ready < len {
                backend.map_growable(len, placement, ready)
            } else {
                backend.map(len, placement)
            }
        };
        match space {
            None => {
                let mapping = map(Placement::Anywhere { align })?;
                if mapping.base() % align != 0 || mapping.len() < len {
                    return Err(Error::BadConfig(format!(
                        "backend `{}` returned a misaligned or short mapping",
                        backend.name()
                    )));
                }
                Ok(Region {
                    mapping,
                    _slot: None,
                })
            }
            Some(space) => {
                let addr = space.take(len)?;
                // Created before mapping, so a failed map gives the slots back.
                let slot = SlotGuard {
                    space: space.clone(),
                    addr,
                    len,
                    lost: false,
                };
                let mapping = map(Placement::Fixed { addr })?;
                if mapping.base() != addr || mapping.len() < len {
                    return Err(Error::BadConfig(format!(
                        "backend `{}` ignored the fixed placement at {addr:#x}",
                        backend.name()
                    )));
                }
                Ok(Region {
                    mapping,
                    _slot: Some(slot),
                })
            }
        }
    }

    /// The mapping.
    pub(crate) fn mapping(&self) -> &dyn Mapping {
        &*self.mapping
    }

    /// Base address.
    pub(crate) fn base(&self) -> usize {
        self.mapping.base()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.mapping.len()
    }

    /// The bytes at `offset..offset + len`, read in place (in a `fork()` child that did not
    /// inherit the mapping: from the backend's stand-in, traps for `dualmap`).
    ///
    /// Callers only read ranges nobody writes while the slice lives: a live program's own
    /// bytes (written once, before the `Program` existed; trap-filled only after it is
    /// dropped), or free chunks under the pack lock.
    ///
    /// # Panics
    /// If the range is outside the region's ready part, or (in such a child) the system
    /// cannot map the read-only stand-in.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        // Past `ready()` a lazily filled mapping faults (SIGBUS): never read there.
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.mapping.ready()),
            "read outside the ready part of a region"
        );
        let base = self.mapping.read_base();
        #[allow(unsafe_code)]
        // SAFETY: `Mapping` promises read_base..read_base+ready stays mapped readable in this
        // process while it lives, and the slice borrows `self`, which owns the mapping; the
        // range was checked above; the callers' contract (above) rules out concurrent writes
        // to these bytes.
        unsafe {
            crate::backend::sys::slice(base + offset, len)
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Decided before the fields drop (the mapping first, then the slots).
        if let Some(slot) = &mut self._slot {
            slot.lost = !self.mapping.owns_range();
        }
    }
}
