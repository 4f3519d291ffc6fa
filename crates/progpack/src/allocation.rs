//! An allocation: the chunks (or dedicated region) that one draft or program owns.
//!
//! Invariants: while an allocation lives its chunks' bits are set. When it is dropped its
//! bytes are traps again before the bits are cleared: clean allocations (nothing was ever
//! written) are traps already; dirty ones are trap-filled through the backend first, and if
//! that fails the chunks are quarantined (never reused) rather than freed with code in them.

use crate::allocator::Inner;
use crate::backend::Mapping;
use crate::pack::Pack;
use crate::region::Region;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Places `bytes` at `offset` of `m` with one backend write, then makes them visible to
/// instruction fetch (the kernel's text copy followed by the icache flush). Every finalize path
/// goes through here.
pub(crate) fn place(m: &dyn Mapping, offset: usize, bytes: &[u8]) -> crate::Result<()> {
    m.write(offset, bytes)?;
    crate::arch::sync_icache(m.base() + offset, bytes.len())
}

/// Trap-fills `offset..offset + len` of `m` ("text invalidate"), then syncs the instruction
/// cache so no core can still fetch the old code (a no-op on x86-64; on aarch64 the alias path
/// needs it). Every free path goes through here before clearing bits.
pub(crate) fn invalidate(m: &dyn Mapping, offset: usize, len: usize) -> crate::Result<()> {
    m.fill_traps(offset, len)?;
    crate::arch::sync_icache(m.base() + offset, len)
}

/// Where an allocation lives.
#[derive(Debug)]
pub(crate) enum Place {
    /// `chunks` chunks from `first` in a shared pack.
    Packed {
        pack: Arc<Pack>,
        first: usize,
        chunks: usize,
    },
    /// A mapping of its own (larger than a pack).
    Dedicated(Region),
}

/// Chunks owned by one draft or program. See the module docs for the drop contract.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) inner: Arc<Inner>,
    pub(crate) place: Place,
    /// Bytes the user asked for (for statistics).
    pub(crate) requested: usize,
    /// Something may have been written into the chunks.
    pub(crate) dirty: bool,
}

impl Allocation {
    /// The mapping the allocation lies in, and its offset there.
    pub(crate) fn mapping(&self) -> (&dyn Mapping, usize) {
        match &self.place {
            Place::Packed { pack, first, .. } => (pack.region.mapping(), first * pack.chunk_size),
            Place::Dedicated(r) => (r.mapping(), 0),
        }
    }

    /// Address of the first byte of the allocation's span.
    pub(crate) fn base(&self) -> usize {
        let (m, off) = self.mapping();
        m.base() + off
    }

    /// Bytes spanned (whole chunks, or the whole dedicated mapping).
    pub(crate) fn span(&self) -> usize {
        match &self.place {
            Place::Packed { pack, chunks, .. } => chunks * pack.chunk_size,
            Place::Dedicated(r) => r.len(),
        }
    }

    /// Reads `offset..offset + len` of the span in place (the program's own bytes).
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        match &self.place {
            Place::Packed { pack, first, .. } => {
                pack.region.bytes(first * pack.chunk_size + offset, len)
            }
            Place::Dedicated(r) => r.bytes(offset, len),
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let inner = &self.inner;
        match &self.place {
            Place::Dedicated(r) => {
                // Unmapped (or re-reserved) when the region drops: no stale code can remain.
                inner.stats.dedicated.fetch_sub(1, Ordering::Relaxed);
                inner
                    .stats
                    .dedicated_requested
                    .fetch_sub(self.requested, Ordering::Relaxed);
                inner
                    .stats
                    .dedicated_bytes
                    .fetch_sub(r.len(), Ordering::Relaxed);
            }
            Place::Packed {
                pack,
                first,
                chunks,
            } => {
                if self.dirty {
                    // Traps first ("text invalidate"), bits cleared after: a chunk is never
                    // free while it still holds code.
                    let (m, off) = (pack.region.mapping(), first * pack.chunk_size);
                    if invalidate(m, off, chunks * pack.chunk_size).is_err() {
                        inner
                            .stats
                            .quarantined
                            .fetch_add(*chunks, Ordering::Relaxed);
                        pack.forget(self.requested);
                        return;
                    }
                }
                if pack.give_back(*first, *chunks, self.requested) {
                    inner.pack_became_empty(pack);
                }
            }
        }
    }
}
