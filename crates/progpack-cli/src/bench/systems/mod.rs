//! The compared systems, one file each, and the list the workloads iterate over.

pub mod jitalloc;
pub mod mmap;

use crate::bench::sys::{SysError, System};

/// Every system the suite can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One `mmap` + write + `mprotect` per program.
    Mmap,
    /// `jit-allocator`, read+write+execute blocks.
    JitRwx,
    /// `jit-allocator`, dual mapping.
    JitDual,
}

impl Kind {
    /// All systems, in table order (progpack first).
    pub fn all() -> Vec<Kind> {
        vec![Kind::Mmap, Kind::JitRwx, Kind::JitDual]
    }

    /// Whether this system loads through a batch API (workloads that replace one program
    /// at a time skip it: a batch of one is the one-by-one system).
    pub fn batched(self) -> bool {
        false
    }

    /// A fresh instance.
    pub fn make(self) -> Result<Box<dyn System>, SysError> {
        Ok(match self {
            Kind::Mmap => Box::new(mmap::MmapPerProgram::new()),
            Kind::JitRwx => Box::new(jitalloc::JitAlloc::new(false)),
            Kind::JitDual => Box::new(jitalloc::JitAlloc::new(true)),
        })
    }
}
