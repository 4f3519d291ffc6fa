//! progpack itself, three ways: the `procmem` backend one program at a time (`draft` +
//! `finalize`), the same backend with `Batch` (one write per contiguous run of programs),
//! and the `dualmap` backend (memfd with a persistent writable alias) one at a time.
//!
//! All with `Config::default()` otherwise (2 MiB packs, 64-byte chunks, randomized start,
//! one reserve pack, sharding by core count). Programs are aligned to 16 bytes, as x86 JITs
//! align function entries.

use crate::bench::sys::{Id, Slab, SysError, System};
use progpack::{Allocator, BackendChoice, Config, Program};

/// procmem, one by one (the reference of every ratio).
pub const NAME_PROCMEM: &str = "progpack-procmem";
/// procmem with `Batch`.
pub const NAME_BATCH: &str = "progpack-procmem-batch";
/// dualmap, one by one.
pub const NAME_DUALMAP: &str = "progpack-dualmap";
/// procmem, one by one, `randomize(false)`.
pub const NAME_NORANDOM: &str = "progpack-procmem-norandom";
/// procmem, one by one, with a perf map (one line appended per finalize).
pub const NAME_PERF_MAP: &str = "progpack-procmem-perf-map";

/// Where the perf-map systems write (`perf-<pid>.map`): a directory of this process under the
/// temporary directory, removed by [`remove_perf_map_dir`].
pub fn perf_map_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("progpack-bench-perf-map-{}", std::process::id()))
}

/// The configuration of the perf-map systems on `backend` (the directory is made here).
pub fn perf_map_config(backend: BackendChoice) -> Config {
    let dir = perf_map_dir();
    let _ = std::fs::create_dir_all(&dir);
    Config::default()
        .backend(backend)
        .observe(progpack::Observe::default().perf_map_in(dir).ignore_env())
}

/// Removes what the perf-map systems wrote.
pub fn remove_perf_map_dir() {
    let _ = std::fs::remove_dir_all(perf_map_dir());
}

/// Entry alignment asked of progpack.
const ALIGN: usize = 16;

fn err(e: progpack::Error) -> SysError {
    SysError::Progpack(e.to_string())
}

/// A progpack allocator (or a thread's clone of one) and the programs loaded through it.
pub struct Progpack {
    name: &'static str,
    batched: bool,
    alloc: Allocator,
    progs: Slab<Program>,
}

impl Progpack {
    /// A fresh allocator on `backend`; `batched` loads through `Batch`.
    pub fn new(
        name: &'static str,
        backend: BackendChoice,
        batched: bool,
    ) -> Result<Self, SysError> {
        Self::with_config(name, Config::default().backend(backend), batched)
    }

    /// A fresh allocator with `config`; `batched` loads through `Batch`.
    pub fn with_config(
        name: &'static str,
        config: Config,
        batched: bool,
    ) -> Result<Self, SysError> {
        Ok(Self {
            name,
            batched,
            alloc: Allocator::new(config).map_err(err)?,
            progs: Slab::default(),
        })
    }
}

impl System for Progpack {
    fn name(&self) -> &'static str {
        self.name
    }

    fn load(&mut self, len: usize, emit: &mut dyn FnMut(&mut [u8])) -> Result<Id, SysError> {
        let mut draft = self.alloc.draft(len, ALIGN).map_err(err)?;
        emit(draft.image_mut());
        let program = draft.finalize().map_err(err)?;
        Ok(self.progs.insert(program))
    }

    fn load_many(
        &mut self,
        lens: &[usize],
        emit: &mut dyn FnMut(usize, &mut [u8]),
        out: &mut Vec<Id>,
    ) -> Result<(), SysError> {
        if !self.batched {
            for (i, &len) in lens.iter().enumerate() {
                out.push(self.load(len, &mut |buf| emit(i, buf))?);
            }
            return Ok(());
        }
        let mut batch = self.alloc.batch();
        for (i, &len) in lens.iter().enumerate() {
            let slot = batch.push(len, ALIGN).map_err(err)?;
            emit(i, slot.image);
        }
        for program in batch.finalize().map_err(err)? {
            out.push(self.progs.insert(program));
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.progs.reserve(n);
    }

    fn addr(&self, id: Id) -> usize {
        self.progs.get(id).addr()
    }

    fn free(&mut self, id: Id) {
        self.progs.remove(id);
    }

    fn for_thread(&mut self) -> Result<Box<dyn System>, SysError> {
        Ok(Box::new(Self {
            name: self.name,
            batched: self.batched,
            alloc: self.alloc.clone(),
            progs: Slab::default(),
        }))
    }

    fn packs(&self) -> Option<usize> {
        Some(self.alloc.stats().packs)
    }

    fn packs_mapped_total(&self) -> Option<usize> {
        Some(self.alloc.stats().packs_mapped_total)
    }
}
