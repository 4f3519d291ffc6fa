//! A region: one backend mapping (a pack or a dedicated mapping), plus the code-range slots it
//! occupies. Dropping it unmaps (or re-reserves) the mapping first, then frees the slots.

use crate::backend::{Backend, Mapping, Placement};
use crate::code_range::CodeRangeSpace;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Code-range slots owned by a region; given back when dropped.
#[derive(Debug)]
struct SlotGuard {
    space: Arc<CodeRangeSpace>,
    addr: usize,
    len: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.space.give_back(self.addr, self.len);
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

    /// The bytes at `offset..offset + len`, read in place.
    ///
    /// Callers only read ranges nobody writes while the slice lives: a live program's own
    /// bytes (written once, before the `Program` existed; trap-filled only after it is
    /// dropped), or free chunks under the pack lock.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "read outside a region"
        );
        #[allow(unsafe_code)]
        // SAFETY: `Mapping` promises base..base+len stays mapped readable while it lives, and
        // the slice borrows `self`, which owns the mapping; the range was checked above; the
        // callers' contract (above) rules out concurrent writes to these bytes.
        unsafe {
            crate::backend::sys::slice(self.base() + offset, len)
        }
    }
}
