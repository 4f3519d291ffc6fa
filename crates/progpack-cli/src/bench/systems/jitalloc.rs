//! Peer: the `jit-allocator` crate (a Rust port of asmjit's JitAllocator).
//!
//! Two modes, as the issue asks:
//! - `jit-allocator-rwx`: `use_dual_mapping: false`, asmjit's own default: blocks are mapped
//!   read+write+execute and code is written in place (writable and executable at once).
//! - `jit-allocator-dualmap`: `use_dual_mapping: true` (this crate's `Default`): a shared
//!   memory object mapped twice, read+execute for running and a permanent read+write alias
//!   for writing.
//!
//! Both with the crate's defaults otherwise (64-byte granularity, 0xCC fill of unused memory,
//! blocks growing from 64 KiB by doubling up to 32 MiB, one empty block kept).
//! `JitAllocator` is single-threaded (`&mut self`); threads share it behind a `Mutex`, as a
//! multi-threaded JIT would. A single-threaded instance owns it without a lock.
#![allow(unsafe_code)]

use crate::bench::sys::{Id, Slab, SysError, System};
use jit_allocator::{JitAllocator, JitAllocatorOptions, ResetPolicy};
use std::sync::{Arc, Mutex};

/// Name of the read+write+execute mode.
pub const NAME_RWX: &str = "jit-allocator-rwx";
/// Name of the dual-mapping mode.
pub const NAME_DUAL: &str = "jit-allocator-dualmap";

/// `JitAllocator` made movable across threads.
struct Owned(Box<JitAllocator>);

// SAFETY: `JitAllocator` holds raw pointers to its own blocks and no thread-local state;
// moving it to another thread is sound as long as only one thread uses it at a time, which
// `&mut` (owned) or the `Mutex` (shared) guarantees.
unsafe impl Send for Owned {}

enum Handle {
    Owned(Owned),
    Shared(Arc<Mutex<Owned>>),
}

/// One `JitAllocator` (or a thread's handle on a shared one) and the programs loaded through it.
pub struct JitAlloc {
    name: &'static str,
    alloc: Handle,
    progs: Slab<usize>,
}

impl JitAlloc {
    /// A fresh allocator; `dual` selects the dual-mapping mode.
    pub fn new(dual: bool) -> Self {
        let options = JitAllocatorOptions {
            use_dual_mapping: dual,
            ..JitAllocatorOptions::default()
        };
        Self {
            name: if dual { NAME_DUAL } else { NAME_RWX },
            alloc: Handle::Owned(Owned(JitAllocator::new(options))),
            progs: Slab::default(),
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut JitAllocator) -> R) -> R {
        match &mut self.alloc {
            Handle::Owned(a) => f(&mut a.0),
            Handle::Shared(m) => f(&mut m.lock().unwrap_or_else(|e| e.into_inner()).0),
        }
    }
}

impl System for JitAlloc {
    fn name(&self) -> &'static str {
        self.name
    }

    fn load(&mut self, len: usize, emit: &mut dyn FnMut(&mut [u8])) -> Result<Id, SysError> {
        let (rx, rw) = self.with(|a| a.alloc(len)).map_err(SysError::JitAlloc)?;
        // SAFETY: `alloc` returned `len` writable bytes at `rw` that belong to this program
        // only (the same memory as `rx` in RWX mode, its alias in dual-mapping mode).
        let buf = unsafe { std::slice::from_raw_parts_mut(rw, len) };
        emit(buf);
        jit_allocator::flush_instruction_cache(rx, len);
        Ok(self.progs.insert(rx as usize))
    }

    fn reserve(&mut self, n: usize) {
        self.progs.reserve(n);
    }

    fn addr(&self, id: Id) -> usize {
        *self.progs.get(id)
    }

    fn free(&mut self, id: Id) {
        if let Some(rx) = self.progs.remove(id) {
            // SAFETY: `rx` came from this allocator's `alloc` and is released once (the slab
            // hands each id out once).
            let _ = self.with(|a| unsafe { a.release(rx as *const u8) });
        }
    }

    fn for_thread(&mut self) -> Result<Box<dyn System>, SysError> {
        if let Handle::Owned(_) = self.alloc {
            // Move the allocator (and so the programs already in it) behind a mutex.
            // `JitAllocator::new` maps nothing, so the stand-in costs no memory.
            let stand_in = Handle::Owned(Owned(JitAllocator::new(JitAllocatorOptions::default())));
            if let Handle::Owned(owned) = std::mem::replace(&mut self.alloc, stand_in) {
                self.alloc = Handle::Shared(Arc::new(Mutex::new(owned)));
            }
        }
        let Handle::Shared(shared) = &self.alloc else {
            return Err(SysError::Unsupported("jit-allocator handle not shared"));
        };
        Ok(Box::new(Self {
            name: self.name,
            alloc: Handle::Shared(shared.clone()),
            progs: Slab::default(),
        }))
    }
}

impl Drop for JitAlloc {
    fn drop(&mut self) {
        // `JitAllocator` has no `Drop`: its blocks stay mapped unless it is reset. The last
        // handle resets it hard (unmapping every block) rather than releasing programs one by
        // one (which also steers clear of the release bug the churn workload reports).
        self.progs.drain().for_each(drop);
        match &mut self.alloc {
            Handle::Owned(a) => {
                // SAFETY: every program of this allocator goes away with this handle; none
                // of its code runs again.
                unsafe { a.0.reset(ResetPolicy::Hard) }
            }
            Handle::Shared(m) if Arc::strong_count(m) == 1 => {
                let mut a = m.lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: this is the last handle: nothing can load into or call code from
                // this allocator any more.
                unsafe { a.0.reset(ResetPolicy::Hard) }
            }
            Handle::Shared(_) => {} // other handles still use it; the last one resets it
        }
    }
}
