//! The compared systems, one file each, and the list the workloads iterate over.

pub mod jitalloc;
pub mod mmap;
pub mod progpack;

use crate::bench::sys::{SysError, System};

/// Every system the suite can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// progpack, procmem backend, one `draft` + `finalize` per program.
    ProgpackProcmem,
    /// progpack, procmem backend, `Batch` finalize.
    ProgpackBatch,
    /// progpack, dualmap backend, one by one.
    ProgpackDualmap,
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
        vec![
            Kind::ProgpackProcmem,
            Kind::ProgpackBatch,
            Kind::ProgpackDualmap,
            Kind::Mmap,
            Kind::JitRwx,
            Kind::JitDual,
        ]
    }

    /// Whether this system loads through a batch API (workloads that replace one program
    /// at a time skip it: a batch of one is the one-by-one system).
    pub fn batched(self) -> bool {
        self == Kind::ProgpackBatch
    }

    /// A fresh instance.
    pub fn make(self) -> Result<Box<dyn System>, SysError> {
        use ::progpack::BackendChoice;
        Ok(match self {
            Kind::ProgpackProcmem => Box::new(progpack::Progpack::new(
                progpack::NAME_PROCMEM,
                BackendChoice::ProcMem,
                false,
            )?),
            Kind::ProgpackBatch => Box::new(progpack::Progpack::new(
                progpack::NAME_BATCH,
                BackendChoice::ProcMem,
                true,
            )?),
            Kind::ProgpackDualmap => Box::new(progpack::Progpack::new(
                progpack::NAME_DUALMAP,
                BackendChoice::DualMap,
                false,
            )?),
            Kind::Mmap => Box::new(mmap::MmapPerProgram::new()),
            Kind::JitRwx => Box::new(jitalloc::JitAlloc::new(false)),
            Kind::JitDual => Box::new(jitalloc::JitAlloc::new(true)),
        })
    }
}
