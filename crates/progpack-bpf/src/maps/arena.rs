//! [`Arena`]: the preallocated, zeroed, 8-byte aligned storage of a map's values (or a ring
//! buffer's data area). It never moves or grows, so addresses handed to programs stay valid
//! while the map lives; its provenance is exposed so that engines and helpers can turn a
//! program address back into a pointer.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use super::MapError;
use crate::memory::{self, Region};

/// Largest arena one map may have.
pub const MAX_ARENA_BYTES: u64 = 1 << 30;

/// Zeroed memory of a fixed size, shared by every run and by the host.
#[derive(Debug)]
pub(crate) struct Arena {
    ptr: *mut u8,
    layout: Layout,
    len: usize,
}

// SAFETY: the arena is plain memory; all concurrent access goes through `crate::memory`'s
// atomic accessors (or JIT code's single instructions), never through Rust references.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` zeroed bytes (at least one 8-byte word is allocated).
    pub(crate) fn new(len: u64) -> Result<Arena, MapError> {
        if len > MAX_ARENA_BYTES {
            return Err(MapError::TooLarge { bytes: len });
        }
        let layout = Layout::from_size_align((len as usize).max(8).next_multiple_of(8), 8)
            .map_err(|_| MapError::TooLarge { bytes: len })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(MapError::TooLarge { bytes: len });
        }
        // Programs reach the arena through integer addresses.
        let _ = ptr.expose_provenance();
        Ok(Arena {
            ptr,
            layout,
            len: len as usize,
        })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Address of byte `off`.
    pub(crate) fn addr(&self, off: usize) -> u64 {
        debug_assert!(off <= self.len);
        self.ptr as u64 + off as u64
    }

    /// Asks the CPU to bring the cache line of byte `off` in; reads and writes nothing.
    #[inline]
    pub(crate) fn prefetch(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if off < self.len {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has; `off` is inside our
            // allocation, and a prefetch neither faults nor changes memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(off).cast()) }
        }
    }

    /// The region programs may access.
    pub(crate) fn region(&self, writable: bool) -> Region {
        Region {
            start: self.ptr as u64,
            len: self.len as u64,
            writable,
        }
    }

    /// Copies `[off, off + dst.len())` out. Panics if out of range (a bug of the map).
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.len);
        let mut done = 0;
        if off.is_multiple_of(8) {
            for d in dst.chunks_exact_mut(8) {
                // SAFETY: `off + done` is 8-aligned (the arena is) and the word in range
                // (checked above) of our live allocation; shared memory is accessed atomically.
                let w = unsafe { AtomicU64::from_ptr(self.ptr.add(off + done).cast()) };
                d.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                done += 8;
            }
        }
        // SAFETY: in range (checked above) of our live allocation; shared accessors.
        unsafe { memory::read_shared(self.ptr.add(off + done), &mut dst[done..]) }
    }

    /// Copies `src` to `[off, off + src.len())`. Panics if out of range (a bug of the map).
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        let mut done = 0;
        if off.is_multiple_of(8) {
            for s in src.chunks_exact(8) {
                let v = u64::from_le_bytes(s.try_into().unwrap_or_default());
                // SAFETY: as in `read`.
                let w = unsafe { AtomicU64::from_ptr(self.ptr.add(off + done).cast()) };
                w.store(v, Ordering::Relaxed);
                done += 8;
            }
        }
        // SAFETY: in range (checked above) of our live allocation; shared accessors.
        unsafe { memory::write_shared(self.ptr.add(off + done), &src[done..]) }
    }

    /// Zeroes `[off, off + n)`. Panics if out of range (a bug of the map).
    pub(crate) fn zero(&self, off: usize, n: usize) {
        const ZEROS: [u8; 256] = [0; 256];
        for k in (0..n).step_by(ZEROS.len()) {
            self.write(off + k, &ZEROS[..(n - k).min(ZEROS.len())]);
        }
    }
}

/// `n` zeroed atomic words (allocated zeroed, so a large table costs no page until used).
pub(crate) fn zeroed_words(n: usize) -> Box<[AtomicU64]> {
    let Ok(layout) = Layout::array::<AtomicU64>(n) else {
        // More than the address space: as `vec!` does.
        panic!("capacity overflow");
    };
    if n == 0 {
        return Box::new([]);
    }
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<AtomicU64>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` is a live allocation of `n` words made with the global allocator and the
    // layout `Box<[AtomicU64]>` frees it with, and all-zero bytes are a valid `AtomicU64`.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}
