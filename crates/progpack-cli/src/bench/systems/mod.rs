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
    /// progpack, procmem backend, one by one, start offset not randomized (no 16-byte
    /// slack): shows what the kernel's anti-spraying slack costs in density.
    ProgpackNoRandom,
    /// progpack, procmem backend, one by one, with the perf map on (the cost of naming
    /// every program for `perf`).
    ProgpackPerfMap,
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
            Kind::ProgpackNoRandom,
            Kind::ProgpackPerfMap,
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

    /// Whether this system takes part in `workload`. The non-randomized progpack variant
    /// only runs where placement density matters (dispatch, footprint).
    pub fn runs_in(self, workload: &str) -> bool {
        match self {
            Kind::ProgpackNoRandom => matches!(workload, "dispatch" | "footprint"),
            Kind::ProgpackPerfMap => workload == "load",
            _ => true,
        }
    }

    /// Name in the `system` column (what `make().name()` returns).
    pub fn name(self) -> &'static str {
        match self {
            Kind::ProgpackProcmem => progpack::NAME_PROCMEM,
            Kind::ProgpackBatch => progpack::NAME_BATCH,
            Kind::ProgpackDualmap => progpack::NAME_DUALMAP,
            Kind::ProgpackNoRandom => progpack::NAME_NORANDOM,
            Kind::ProgpackPerfMap => progpack::NAME_PERF_MAP,
            Kind::Mmap => mmap::NAME,
            Kind::JitRwx => jitalloc::NAME_RWX,
            Kind::JitDual => jitalloc::NAME_DUAL,
        }
    }

    /// A fresh instance.
    pub fn make(self) -> Result<Box<dyn System>, SysError> {
        use ::progpack::{BackendChoice, Config};
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
            Kind::ProgpackNoRandom => Box::new(progpack::Progpack::with_config(
                progpack::NAME_NORANDOM,
                Config::default()
                    .backend(BackendChoice::ProcMem)
                    .randomize(false),
                false,
            )?),
            Kind::ProgpackPerfMap => Box::new(progpack::Progpack::with_config(
                progpack::NAME_PERF_MAP,
                progpack::perf_map_config(BackendChoice::ProcMem),
                false,
            )?),
            Kind::Mmap => Box::new(mmap::MmapPerProgram::new()),
            Kind::JitRwx => Box::new(jitalloc::JitAlloc::new(false)),
            Kind::JitDual => Box::new(jitalloc::JitAlloc::new(true)),
        })
    }
}
