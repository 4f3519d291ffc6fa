//! Allocator configuration: sizes, backend, reserve, code range. Checked once in
//! [`Config::validate`]; everything downstream may rely on the checked values.

use crate::backend::{Backend, DualMap, ProcMem};
use crate::error::{Error, Result};
use std::fmt;
use std::sync::Arc;

/// The largest pack: an offset in a pack and a span's four flags fit 32 bits (which keeps a
/// [`Program`](crate::Program) at two words).
const MAX_PACK_SIZE: usize = 1 << 28;

/// Which text poke backend the allocator uses.
#[derive(Clone, Default)]
pub enum BackendChoice {
    /// Probe and pick the best that works ([`crate::backend::detect`]): procmem, then dualmap.
    #[default]
    Detect,
    /// `/proc/self/mem` writes; fails if they are forbidden here.
    ProcMem,
    /// `/proc/self/mem` writes, with no descriptor kept open between writes
    /// ([`ProcMem::open_per_write`]): an open and a close per backend write, so a stray
    /// `pwrite` has nothing to write through. Fails if the writes are forbidden here.
    ProcMemPerWrite,
    /// memfd with a persistent writable alias.
    DualMap,
    /// memfd written with `pwrite`, no lasting writable view ([`DualMap::per_write`]).
    DualMapPerWrite,
    /// A backend of your own (or a test double).
    Custom(Arc<dyn Backend>),
}

impl fmt::Debug for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Detect => f.write_str("Detect"),
            BackendChoice::ProcMem => f.write_str("ProcMem"),
            BackendChoice::ProcMemPerWrite => f.write_str("ProcMemPerWrite"),
            BackendChoice::DualMap => f.write_str("DualMap"),
            BackendChoice::DualMapPerWrite => f.write_str("DualMapPerWrite"),
            BackendChoice::Custom(b) => write!(f, "Custom({})", b.name()),
        }
    }
}

impl BackendChoice {
    /// Resolves the choice into a backend and a line saying what was picked and why.
    pub(crate) fn resolve(&self) -> Result<(Arc<dyn Backend>, String)> {
        Ok(match self {
            BackendChoice::Detect => {
                let d = crate::backend::detect()?;
                (d.backend, d.report)
            }
            BackendChoice::ProcMem => {
                let b = ProcMem::new()?;
                crate::backend::probe(&b)?;
                (Arc::new(b), "procmem: requested".into())
            }
            BackendChoice::ProcMemPerWrite => {
                let b = ProcMem::open_per_write()?;
                crate::backend::probe(&b)?;
                (
                    Arc::new(b),
                    "procmem-per-write: requested (no descriptor kept between writes)".into(),
                )
            }
            BackendChoice::DualMap => {
                (Arc::new(DualMap::persistent()), "dualmap: requested".into())
            }
            BackendChoice::DualMapPerWrite => (
                Arc::new(DualMap::per_write()),
                "dualmap-per-write: requested".into(),
            ),
            BackendChoice::Custom(b) => (b.clone(), format!("{}: custom backend", b.name())),
        })
    }
}

/// Where all code must lie: within ±2 GiB of `near`, so that code can reach it with
/// `call rel32` / `jmp rel32` (for example host functions in the executable's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRange {
    /// The address code must be able to reach.
    pub near: usize,
    /// Address space to reserve for packs and dedicated mappings.
    pub size: usize,
}

impl CodeRange {
    /// Default reservation: 256 MiB (128 packs of 2 MiB).
    pub const DEFAULT_SIZE: usize = 256 << 20;

    /// A range of [`Self::DEFAULT_SIZE`] bytes near `near`.
    pub fn near(near: usize) -> Self {
        CodeRange {
            near,
            size: Self::DEFAULT_SIZE,
        }
    }

    /// A range near the text of the running executable (the address of a function in it).
    pub fn near_this_binary() -> Self {
        Self::near(Self::near_this_binary as fn() -> Self as usize)
    }

    /// Sets the size of the reservation.
    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }
}

/// Allocator configuration. Build with [`Config::default`] and the setters.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) pack_size: usize,
    pub(crate) chunk_size: usize,
    pub(crate) backend: BackendChoice,
    pub(crate) reserve_packs: usize,
    pub(crate) code_range: Option<CodeRange>,
    pub(crate) randomize: bool,
    pub(crate) scatter_runs: bool,
    pub(crate) min_slack: usize,
    pub(crate) shards: usize,
    pub(crate) max_len: usize,
    pub(crate) observe: crate::observe::Observe,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pack_size: 2 << 20,
            chunk_size: 64,
            backend: BackendChoice::Detect,
            reserve_packs: 1,
            code_range: None,
            randomize: true,
            scatter_runs: true,
            min_slack: 0,
            shards: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(16),
            max_len: 1 << 30,
            observe: crate::observe::Observe::default(),
        }
    }
}

impl Config {
    /// Pack size in bytes (power of two, a multiple of the page size, at most 256 MiB; default
    /// 2 MiB).
    pub fn pack_size(mut self, bytes: usize) -> Self {
        self.pack_size = bytes;
        self
    }
    /// Chunk size in bytes (power of two, at least 16, at most the pack size; default 64).
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }
    /// Text poke backend (default: [`BackendChoice::Detect`]).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }
    /// Empty packs kept mapped for reuse instead of released (default 1).
    pub fn reserve_packs(mut self, packs: usize) -> Self {
        self.reserve_packs = packs;
        self
    }
    /// Keep all code within ±2 GiB of an address (default: anywhere).
    pub fn code_range(mut self, range: CodeRange) -> Self {
        self.code_range = Some(range);
        self
    }
    /// Randomize where code lands, against JIT spraying (default true): each thread's run of
    /// chunks starts at a random free word of its pack, and each image starts at a random
    /// offset inside the slack its rounding up to whole chunks leaves (see the crate docs'
    /// security section). Off: images start on chunk boundaries, first fit.
    pub fn randomize(mut self, on: bool) -> Self {
        self.randomize = on;
        self
    }
    /// With [`Config::randomize`] on: whether each run of a thread starts at a random free
    /// word of its pack (default true), or only the thread's first run in a pack does and its
    /// next runs there continue at the first free word after the previous one. Off gives a
    /// compact layout, like one batch, for code finalized one program at a time (programs
    /// called in random order then share the cache more evenly: about 3% faster calls of
    /// 10,000 tiny functions here); the price is entropy: a program's address then tells
    /// roughly where the same thread's next programs in that pack go.
    pub fn scatter_runs(mut self, on: bool) -> Self {
        self.scatter_runs = on;
        self
    }
    /// Bytes added to every request before it is rounded up to whole chunks, so that the image
    /// can start at a random offset of at least `0..=bytes` (default 0: no footprint). The
    /// kernel's BPF JIT adds 16 (`bpf_jit_binary_pack_alloc`); with 64-byte chunks that makes
    /// a 64-byte program take two chunks. At most the chunk size.
    pub fn min_slack(mut self, bytes: usize) -> Self {
        self.min_slack = bytes;
        self
    }
    /// Independent pack lists, each with its own lock; threads spread over them (default: the
    /// number of CPUs, at most 16).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }
    /// Largest program accepted, in bytes (default 1 GiB).
    pub fn max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Announcements of the code placed: perf map, jitdump, GDB JIT interface, lookup of every
    /// program (default: none, unless the environment switches them on; see [`Observe`]).
    ///
    /// [`Observe`]: crate::Observe
    pub fn observe(mut self, observe: crate::observe::Observe) -> Self {
        self.observe = observe;
        self
    }

    /// The announcements asked for (before the environment is consulted).
    pub fn get_observe(&self) -> &crate::observe::Observe {
        &self.observe
    }

    /// The pack size.
    pub fn get_pack_size(&self) -> usize {
        self.pack_size
    }
    /// The chunk size.
    pub fn get_chunk_size(&self) -> usize {
        self.chunk_size
    }
    /// The code range, if any.
    pub fn get_code_range(&self) -> Option<CodeRange> {
        self.code_range
    }

    /// The bytes added to every request before rounding (see [`Config::min_slack`]).
    pub fn get_min_slack(&self) -> usize {
        self.min_slack
    }
    /// Whether each run starts at a random word (see [`Config::scatter_runs`]).
    pub fn get_scatter_runs(&self) -> bool {
        self.scatter_runs
    }
    /// Whether placement is randomized (see [`Config::randomize`]).
    pub fn get_randomize(&self) -> bool {
        self.randomize
    }

    /// Checks every field; the allocator calls this once.
    pub fn validate(&self) -> Result<()> {
        let page = crate::backend::sys::page_size();
        let bad = |s: String| Err(Error::BadConfig(s));
        if !self.chunk_size.is_power_of_two() || self.chunk_size < 16 {
            return bad(format!(
                "chunk size {} must be a power of two of at least 16",
                self.chunk_size
            ));
        }
        if !self.chunk_size.is_multiple_of(crate::arch::TRAP.len()) {
            return bad("chunk size must be a multiple of the trap instruction".into());
        }
        if !self.pack_size.is_power_of_two() || self.pack_size < page {
            return bad(format!(
                "pack size {} must be a power of two of at least the page size {page}",
                self.pack_size
            ));
        }
        if self.chunk_size > self.pack_size {
            return bad(format!(
                "chunk size {} is larger than the pack size {}",
                self.chunk_size, self.pack_size
            ));
        }
        if self.pack_size > MAX_PACK_SIZE {
            return bad(format!(
                "pack size {} is larger than {MAX_PACK_SIZE} (256 MiB)",
                self.pack_size
            ));
        }
        if self.shards == 0 || self.shards > 1024 {
            return bad(format!("shards {} must be between 1 and 1024", self.shards));
        }
        if self.min_slack > self.chunk_size {
            return bad(format!(
                "min_slack {} is larger than the chunk size {}",
                self.min_slack, self.chunk_size
            ));
        }
        if self.max_len == 0 {
            return bad("max_len must be at least 1".into());
        }
        if let Some(r) = self.code_range {
            if r.size < self.pack_size || r.size > (1 << 30) {
                return bad(format!(
                    "code range size {} must be between the pack size and 1 GiB",
                    r.size
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        for c in [
            Config::default().chunk_size(0),
            Config::default().chunk_size(48),
            Config::default().chunk_size(8),
            Config::default().pack_size(3 << 20),
            Config::default().pack_size(1024),
            Config::default().pack_size(512 << 20),
            Config::default().pack_size(4096).chunk_size(8192),
            Config::default().shards(0),
            Config::default().max_len(0),
            Config::default().min_slack(65),
            Config::default().code_range(CodeRange::near(0).size(4096)),
        ] {
            assert!(matches!(c.validate(), Err(Error::BadConfig(_))), "{c:?}");
        }
    }
}
