//! Peer: one `mmap` per program, write, then `mprotect(PROT_READ | PROT_EXEC)`.
//!
//! This is what dynasmrt, rbpf-style JITs and most small JITs do: every program gets its own
//! page-rounded anonymous mapping, is written while read+write, then flipped to read+execute
//! (never writable and executable at once, like progpack). Freeing is `munmap`.
#![allow(unsafe_code)]

use crate::bench::sys::{Id, Slab, SysError, System};
use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use std::ptr::null_mut;

/// Name in the `system` column.
pub const NAME: &str = "mmap+mprotect";

/// Page-per-program executable memory.
#[derive(Debug, Default)]
pub struct MmapPerProgram {
    maps: Slab<Region>,
}

#[derive(Debug)]
struct Region {
    addr: usize,
    len: usize,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is a mapping this region created and nothing else uses
        // (its program is being freed).
        let _ = unsafe { mm::munmap(self.addr as *mut _, self.len) };
    }
}

impl MmapPerProgram {
    /// An empty instance.
    pub fn new() -> Self {
        Self::default()
    }
}

fn page_round(len: usize) -> usize {
    len.div_ceil(4096) * 4096
}

impl System for MmapPerProgram {
    fn name(&self) -> &'static str {
        NAME
    }

    fn load(&mut self, len: usize, emit: &mut dyn FnMut(&mut [u8])) -> Result<Id, SysError> {
        let map_len = page_round(len);
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks; it aliases
        // nothing.
        let p = unsafe {
            mm::mmap_anonymous(
                null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|errno| SysError::Os { op: "mmap", errno })?;
        let region = Region {
            addr: p as usize,
            len: map_len,
        };
        // SAFETY: the mapping is `map_len >= len` bytes, readable and writable, and ours alone.
        let buf = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        emit(buf);
        // SAFETY: flips our own mapping to read+execute; no Rust reference into it outlives
        // `buf` above.
        unsafe { mm::mprotect(p, map_len, MprotectFlags::READ | MprotectFlags::EXEC) }.map_err(
            |errno| SysError::Os {
                op: "mprotect",
                errno,
            },
        )?;
        Ok(self.maps.insert(region))
    }

    fn reserve(&mut self, n: usize) {
        self.maps.reserve(n);
    }

    fn addr(&self, id: Id) -> usize {
        self.maps.get(id).addr
    }

    fn free(&mut self, id: Id) {
        self.maps.remove(id);
    }

    fn for_thread(&mut self) -> Result<Box<dyn System>, SysError> {
        Ok(Box::new(Self::new()))
    }
}
