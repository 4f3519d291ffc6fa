//! Staging blocks: trap-filled heap buffers, never executable, laid out like a run of chunks,
//! where drafts are written before one copy places them.
//!
//! A thread's run of chunks has one block; each draft carved from the run gets the matching
//! slice of it as its image ([`Image`]), so no draft allocates or trap-fills a buffer of its
//! own. The block lives while the run or any image carved from it does.
//!
//! Invariants: images carved from one block never overlap (the run hands out each chunk once),
//! so each image's bytes are reachable through that image only; a block's bytes start as traps.
#![allow(unsafe_code)] // images are disjoint slices of one shared buffer

use crate::error::{Error, Result};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// A trap-filled heap buffer shared by the images carved from it.
pub(crate) struct Block {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain heap memory owned by the block; concurrent access goes only
// through images, whose ranges are disjoint (see the module invariants).
unsafe impl Send for Block {}
// SAFETY: as above: no two images share a byte, and the block itself never reads or writes
// the buffer after creation except in `drop`, when no image is left.
unsafe impl Sync for Block {}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block").field("len", &self.len).finish()
    }
}

impl Block {
    /// A block of `len` trap bytes, or [`Error::OutOfMemory`].
    pub(crate) fn new(len: usize) -> Result<Arc<Block>> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| Error::OutOfMemory(len))?;
        crate::arch::extend_traps(&mut buf, len);
        let boxed = buf.into_boxed_slice();
        let len = boxed.len();
        let ptr = NonNull::new(Box::into_raw(boxed).cast::<u8>()).expect("Box is non-null");
        Ok(Arc::new(Block { ptr, len }))
    }

    /// A block of `len` trap bytes that is one image (for a draft off the fast path).
    pub(crate) fn image(len: usize) -> Result<Image> {
        let block = Block::new(len)?;
        // SAFETY: the block is new and this is the only image carved from it.
        Ok(unsafe { block.carve(0, len) })
    }

    /// Carves the image `at..at + len` out of the block.
    ///
    /// # Safety
    /// No other image carved from this block may overlap `at..at + len` while the returned
    /// image lives.
    ///
    /// # Panics
    /// If the range is not inside the block.
    pub(crate) unsafe fn carve(self: &Arc<Self>, at: usize, len: usize) -> Image {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "image outside its staging block"
        );
        Image {
            block: self.clone(),
            at,
            len,
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr`/`len` came from `Box::into_raw` of a boxed slice of this length, and
        // no image is left (each holds an `Arc` of the block).
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// A draft's writable image: a slice of a staging block that only this value reaches.
pub(crate) struct Image {
    block: Arc<Block>,
    at: usize,
    len: usize,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image").field("len", &self.len).finish()
    }
}

impl Image {
    /// The image's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `at..at + len` lies in the block (checked by `carve`), which `self.block`
        // keeps alive; no other image overlaps it (the contract of `carve`), so the only
        // writer is `bytes_mut`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.block.ptr.as_ptr().add(self.at), self.len) }
    }

    /// The image's bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference to these bytes.
        unsafe { std::slice::from_raw_parts_mut(self.block.ptr.as_ptr().add(self.at), self.len) }
    }

    /// Shortens the image to its first `len` bytes (`len` at most the current length).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Appends to `parts` slices of trap bytes covering `len` bytes that start at address `addr`
/// (in phase with the trap pattern, whose instances start at multiples of its length), for a
/// gather write whose gaps must stay traps.
pub(crate) fn push_traps(parts: &mut Vec<&[u8]>, addr: usize, len: usize) {
    const BUF: usize = 4096;
    static TRAPS: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    let traps = TRAPS.get_or_init(|| {
        let mut b = vec![0u8; BUF + crate::arch::TRAP.len()].into_boxed_slice();
        crate::arch::fill_traps(&mut b);
        b
    });
    let (mut at, mut left) = (addr, len);
    while left > 0 {
        let phase = at % crate::arch::TRAP.len();
        let take = left.min(BUF);
        parts.push(&traps[phase..phase + take]);
        at += take;
        left -= take;
    }
}
