//! Where drafts are written: a draft's [`Image`] is a slice of a staging block (a heap buffer,
//! never executable, laid out like a run of chunks) or, with a backend that keeps a persistent
//! writable alias of the pack (dualmap), the draft's own bytes of that alias, as jit-allocator
//! does: then nothing is copied at finalize.
//!
//! A thread's run of chunks has one block; each draft carved from the run gets the matching
//! slice of it, so no draft allocates or trap-fills a buffer of its own. The block lives while
//! the run or any image carved from it does.
//!
//! Invariants: images carved from one block never overlap (the run hands out each chunk once),
//! and an alias image covers chunks its draft owns, so each image's bytes are reachable through
//! that image only; an image's bytes are traps when it is made (the rest of a block is never
//! read: only images are written to packs); an alias image is used only in the process whose
//! alias it is (in a child process, where the alias is not mapped, it is swapped for a heap
//! buffer first).
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

    /// An image of `len` trap bytes for a draft off the fast path: carved from `spare` when no
    /// image of that block is left and it is large enough, else from a new block, which becomes
    /// the spare if it is at most [`Block::SPARE_MAX`] bytes. A thread that drafts large
    /// programs one after the other reuses one buffer instead of allocating each time.
    pub(crate) fn image(len: usize, spare: &mut Option<Arc<Block>>) -> Result<Image> {
        if let Some(block) = spare.as_mut() {
            // `get_mut` (an acquire) proves no image of it is left anywhere.
            if Arc::get_mut(block).is_some() && block.len >= len {
                // SAFETY: no image of the block is left, and this is the only one carved now.
                return Ok(unsafe { block.carve(0, len) });
            }
        }
        let block = Block::new(len)?;
        // SAFETY: the block is new (and trap-filled) and this is the only image carved from it.
        let image = unsafe { block.carve_filled(0, len) };
        if len <= Self::SPARE_MAX {
            *spare = Some(block);
        }
        Ok(image)
    }

    /// The largest block kept as a thread's spare for drafts off the fast path.
    pub(crate) const SPARE_MAX: usize = 64 << 10;

    /// The block's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Carves the image `at..at + len` out of the block, filled with traps.
    ///
    /// # Safety
    /// No other image carved from this block may overlap `at..at + len` while the returned
    /// image lives.
    ///
    /// # Panics
    /// If the range is not inside the block.
    #[inline(always)]
    pub(crate) unsafe fn carve(self: &Arc<Self>, at: usize, len: usize) -> Image {
        // SAFETY: the caller's contract.
        let mut image = unsafe { self.carve_filled(at, len) };
        crate::arch::fill_traps(image.bytes_mut());
        image
    }

    /// [`Block::carve`] of bytes that hold traps already (a block just made): nothing filled.
    ///
    /// # Safety
    /// As for [`Block::carve`]; and `at..at + len` holds traps.
    #[inline(always)]
    unsafe fn carve_filled(self: &Arc<Self>, at: usize, len: usize) -> Image {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "image outside its staging block"
        );
        // SAFETY: `at + len` is inside the block (checked above).
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(at)) };
        Image {
            ptr,
            len,
            block: Some(self.clone()),
            epoch: 0,
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

/// A draft's writable image: a slice of a staging block, or of the pack's writable alias, that
/// only this value reaches.
pub(crate) struct Image {
    ptr: NonNull<u8>,
    len: usize,
    /// The staging block the bytes are in (`None`: the pack's alias).
    block: Option<Arc<Block>>,
    /// For an alias image, the process epoch the alias is mapped in.
    epoch: u64,
}

// SAFETY: the bytes are reachable through this value only (module invariants), and the memory
// stays mapped while it lives (the block, or the pack the draft holds).
unsafe impl Send for Image {}
// SAFETY: shared access only reads, and nothing else writes these bytes.
unsafe impl Sync for Image {}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("len", &self.len)
            .field("in_alias", &self.block.is_none())
            .finish()
    }
}

/// Trap bytes to show for an alias image in a process where the alias is not mapped.
const TRAP_VIEW: usize = 4096;

impl Image {
    /// The draft's bytes `addr..addr + len` of the pack's writable alias, as its image. They
    /// hold traps already (the chunks were free).
    ///
    /// # Safety
    /// The range lies in chunks the caller's draft owns for as long as the image lives, inside
    /// a writable alias that stays mapped (in the process with epoch `epoch`) while the pack
    /// the draft holds lives; `len` is at most [`Image::ALIAS_MAX`].
    #[inline]
    pub(crate) unsafe fn in_alias(addr: usize, len: usize, epoch: u64) -> Image {
        debug_assert!(len <= Self::ALIAS_MAX);
        Image {
            ptr: NonNull::new(addr as *mut u8).expect("an alias is not at address 0"),
            len,
            block: None,
            epoch,
        }
    }

    /// The longest image that may live in the alias.
    pub(crate) const ALIAS_MAX: usize = TRAP_VIEW;

    /// True if the bytes are in the pack's alias (nothing to copy at finalize).
    #[inline]
    pub(crate) fn in_place(&self) -> bool {
        self.block.is_none() && crate::backend::sys::is_process_epoch(self.epoch)
    }

    /// The image's bytes.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.block.is_none() && !crate::backend::sys::is_process_epoch(self.epoch) {
            // A child process: the alias is not mapped here, and nothing was written in this
            // process yet (writing swaps in a heap buffer first).
            return &trap_view()[..self.len];
        }
        // SAFETY: the bytes are mapped (a live block, or the alias in this process) and
        // reachable through this image only; `&self` rules out a writer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The image's bytes, writable.
    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        if self.block.is_none() && !crate::backend::sys::is_process_epoch(self.epoch) {
            self.leave_alias();
        }
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// In a child process: moves the image to a heap buffer of traps (the alias belongs to the
    /// parent and is not mapped here; finalizing will be refused by the backend).
    #[cold]
    fn leave_alias(&mut self) {
        let block = match Block::new(self.len) {
            Ok(b) => b,
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<u8>(self.len).expect("a small image"),
            ),
        };
        // SAFETY: a new block: this is its only image.
        *self = unsafe { block.carve(0, self.len) };
    }

    /// Moves an image in the pack's alias to a heap block holding the same bytes (a draft
    /// being named: its finalize then places it like any other and announces it). Nothing for
    /// an image on the heap already.
    pub(crate) fn leave_alias_with_bytes(&mut self) -> crate::Result<()> {
        if self.block.is_some() {
            return Ok(());
        }
        let mut moved = Block::image(self.len, &mut None)?;
        moved.bytes_mut().copy_from_slice(self.bytes());
        *self = moved;
        Ok(())
    }

    /// Shortens the image to its first `len` bytes (`len` at most the current length).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// A page of trap bytes.
fn trap_view() -> &'static [u8] {
    static VIEW: [u8; TRAP_VIEW] = crate::arch::trap_array();
    &VIEW
}

/// Appends to `parts` slices of trap bytes covering `len` bytes that start at address `addr`
/// (in phase with the trap pattern, whose instances start at multiples of its length), for a
/// gather write whose gaps must stay traps.
pub(crate) fn push_traps(parts: &mut Vec<&[u8]>, addr: usize, len: usize) {
    const BUF: usize = 4096;
    static TRAPS: [u8; BUF + 4] = crate::arch::trap_array();
    let (mut at, mut left) = (addr, len);
    while left > 0 {
        let phase = at % crate::arch::TRAP.len();
        let take = left.min(BUF);
        parts.push(&TRAPS[phase..phase + take]);
        at += take;
        left -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::is_all_traps as is_traps;

    #[test]
    fn a_spare_block_is_reused_only_when_no_image_of_it_is_left() {
        let mut spare = None;
        let mut a = Block::image(5000, &mut spare).unwrap();
        assert!(is_traps(a.bytes()));
        let first = a.bytes().as_ptr();
        a.bytes_mut().fill(0x90);
        // `a` is alive: the next image gets a buffer of its own.
        let b = Block::image(3000, &mut spare).unwrap();
        assert!(is_traps(b.bytes()));
        assert_ne!(b.bytes().as_ptr(), first);
        drop(b);
        drop(a);
        // The spare (`b`'s block now) is free again and large enough: reused, and its bytes are
        // traps again, not what the earlier image wrote.
        let spare_at = spare.as_ref().unwrap().ptr.as_ptr().cast_const();
        let c = Block::image(2000, &mut spare).unwrap();
        assert_eq!(c.bytes().as_ptr(), spare_at);
        assert!(is_traps(c.bytes()));
        drop(c);
        // Too large for the spare: a new block, and too large to be kept.
        let big = Block::image(Block::SPARE_MAX + 1, &mut spare).unwrap();
        assert!(is_traps(big.bytes()));
        assert_eq!(spare.as_ref().unwrap().ptr.as_ptr().cast_const(), spare_at);
    }
}
