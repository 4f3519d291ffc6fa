//! Heap blocks for data objects that do not go into packs: writable data always, read-only data
//! when the builder opts out of packing it.
//!
//! A block is a zeroed allocation of its own with the data object's alignment; its address
//! never changes while it lives, and JIT code reads and writes it through that address. The
//! module writes into it only before the data object is finalized (contents and relocations).
#![allow(unsafe_code)] // raw allocation: JIT code writes through the address, not a Rust reference

use std::alloc::Layout;
use std::ptr::NonNull;

/// An owned, zeroed, aligned heap allocation holding one data object.
pub(crate) struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
    /// The data object's size (the allocation is at least one byte).
    len: usize,
}

// SAFETY: the block owns its allocation exclusively (like a `Box<[u8]>`); nothing in it is
// tied to a thread.
unsafe impl Send for HeapBlock {}

impl HeapBlock {
    /// Allocates `len` zero bytes (at least one) aligned to `align` (a power of two). `None`
    /// if the layout is invalid or the allocator fails.
    pub(crate) fn zeroed(len: usize, align: usize) -> Option<HeapBlock> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(HeapBlock { ptr, layout, len })
    }

    /// Address of the first byte.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The block as a byte slice, for writing contents and relocations before the data object
    /// is finalized.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds at least `len` initialized (zeroed) bytes and is owned
        // by `self`, borrowed mutably here; the data object is not finalized yet, so no JIT
        // code holds its address.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Gives the allocation up without freeing it (for `leak`).
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_aligned_and_sized() {
        for (len, align) in [(0, 1), (1, 8), (13, 16), (4096, 4096)] {
            let mut b = HeapBlock::zeroed(len, align).unwrap();
            assert_eq!(b.addr() % align, 0);
            assert_eq!(b.bytes_mut().len(), len);
            assert!(b.bytes_mut().iter().all(|&x| x == 0));
        }
        assert!(HeapBlock::zeroed(8, 3).is_none(), "not a power of two");
    }
}
