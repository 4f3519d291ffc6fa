//! A program: finalized code in a pack (or a dedicated mapping), read+execute, immutable.
//!
//! Dropping it fills its chunks with traps through the backend, then frees them: once the
//! `Program` is gone, calling its old address traps; it never runs stale code.

use crate::allocation::{Allocation, Place};
use std::fmt;
use std::sync::atomic::Ordering;

/// Finalized, executable code. `Send + Sync`: the bytes never change while it lives.
pub struct Program {
    pub(crate) alloc: Allocation,
    addr: usize,
    len: usize,
}

// Programs are shared across threads by design; keep that true at compile time.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Program>();
    assert_send_sync::<crate::Allocator>();
    assert_send_sync::<crate::Draft>();
};

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}

impl Program {
    pub(crate) fn new(alloc: Allocation, addr: usize, len: usize) -> Program {
        alloc.inner.stats.programs.fetch_add(1, Ordering::Relaxed);
        Program { alloc, addr, len }
    }

    /// Address of the first byte (the draft's `exec_addr()`).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The first byte as a pointer.
    pub fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }

    /// Length of the code in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a program has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The code as placed, read back from executable memory.
    pub fn bytes(&self) -> &[u8] {
        self.alloc.bytes(self.addr - self.alloc.base(), self.len)
    }

    /// True if the program has a mapping of its own (it was larger than a pack).
    pub fn is_dedicated(&self) -> bool {
        matches!(self.alloc.place, Place::Dedicated(_))
    }

    /// The entry point as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be a function pointer type (e.g. `extern "C" fn(u64) -> u64`) whose ABI and
    /// signature match the code the JIT emitted at [`addr`](Self::addr). The pointer is valid
    /// only while this `Program` lives: calling it afterwards traps (or worse, if the chunks
    /// were reused). Calling it runs arbitrary machine code: it is as safe as that code.
    ///
    /// # Panics
    /// If `F` is not pointer-sized.
    #[allow(unsafe_code)]
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        assert_eq!(
            std::mem::size_of::<F>(),
            std::mem::size_of::<usize>(),
            "F must be a function pointer type"
        );
        // SAFETY: F is pointer-sized (checked); the caller promises it is a function pointer
        // type matching the code at `addr`, which is mapped read+execute while `self` lives.
        unsafe { std::mem::transmute_copy::<usize, F>(&self.addr) }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.alloc
            .inner
            .stats
            .programs
            .fetch_sub(1, Ordering::Relaxed);
        // The allocation's own drop trap-fills (it is dirty) and then frees the chunks.
    }
}
