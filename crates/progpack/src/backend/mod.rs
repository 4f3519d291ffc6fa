//! Text poke backends: how bytes get into executable memory without it ever being writable and
//! executable at the same address.
//!
//! A [`Backend`] maps executable regions ([`Mapping`]s) and writes into them; the allocator above
//! never calls the operating system itself. Backends answer what they can do once, as data
//! ([`Caps`]), and every operation a backend does not implement answers
//! [`Error::Unsupported`], like the kernel's weak `bpf_arch_text_copy`.
//!
//! | backend | how code is written | writable alias | huge pages |
//! |---|---|---|---|
//! | [`ProcMem`] | `pwrite` on `/proc/self/mem` (the kernel writes through its own mapping) | none | transparent huge pages (anonymous memory) |
//! | [`DualMap`] | a `memfd` mapped read+execute, written through a read+write view elsewhere | persistent, or only during each write | only with shmem THP enabled by the administrator |
//! | [`NotSupported`] | nothing: every call fails | – | – |

#![allow(unsafe_code)] // the backend traits are unsafe to implement; their impls live here

mod dualmap;
mod procmem;
pub(crate) mod sys;

pub use dualmap::DualMap;
pub use procmem::ProcMem;

use crate::error::{Error, Result};
use std::fmt;
use std::sync::Arc;

/// What a backend can do, reported once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Packs can be backed by (transparent) huge pages.
    pub huge_pages: bool,
    /// A writable view of the code exists at another address while programs live.
    pub writable_alias: bool,
    /// Writes cost a system call each (batching them pays).
    pub syscall_per_write: bool,
}

/// Where a backend must put a new mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Anywhere, aligned to `align` (a power of two, at least a page).
    Anywhere {
        /// Required alignment of the base address.
        align: usize,
    },
    /// Exactly at `addr`, replacing a `PROT_NONE` reservation the allocator owns. When the
    /// mapping is dropped the range must become such a reservation again, not be unmapped.
    Fixed {
        /// Base address.
        addr: usize,
    },
}

impl Placement {
    /// Returns a range that was mapped with this placement to the state it had before:
    /// unmapped (`Anywhere`) or reserved again (`Fixed`). Backends call this when dropping.
    pub fn release(self, addr: usize, len: usize) -> Result<()> {
        match self {
            Placement::Anywhere { .. } => sys::unmap(addr, len),
            Placement::Fixed { .. } => sys::rereserve(addr, len),
        }
    }

    /// Reserves (for `Anywhere`) or names (for `Fixed`) the address range to map at.
    pub(crate) fn reserve(self, len: usize) -> Result<usize> {
        match self {
            Placement::Anywhere { align } => sys::reserve_aligned(len, align.max(sys::page_size())),
            Placement::Fixed { addr } => Ok(addr),
        }
    }
}

/// A region of executable memory made by a [`Backend`].
///
/// # Safety
/// Implementers promise that for as long as the value lives:
/// - `base()..base() + len()` is mapped readable and executable, and no user-space address
///   maps any of it writable and executable at once;
/// - at creation every byte of the first `ready()` bytes holds the trap pattern
///   ([`crate::arch::TRAP`]), and no byte past `ready()` can be executed (touching it faults);
///   after `grow(n)` returns `Ok`, the same holds with `ready() >= n`;
/// - `write` and `fill_traps` change only the bytes they are asked to, and when they return
///   `Ok` the bytes are visible at `base() + offset` to reads on every thread;
/// - dropping it releases the range with the [`Placement`] it was made with.
pub unsafe trait Mapping: Send + Sync + fmt::Debug {
    /// Address of the first byte.
    fn base(&self) -> usize;
    /// Size in bytes (a multiple of the page size).
    fn len(&self) -> usize;
    /// True if the mapping has no bytes (never, for a real mapping).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Name of the backend, for errors.
    fn backend_name(&self) -> &'static str {
        "custom"
    }
    /// Copies `bytes` to `base() + offset` (the kernel's `text_poke_copy`).
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        let _ = (offset, bytes);
        Err(Error::Unsupported {
            backend: self.backend_name(),
            op: "text copy",
        })
    }
    /// Copies the concatenation of `parts` to `base() + offset` in one operation where the
    /// backend can (one `pwritev` for `procmem`). The default writes each part in turn.
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let mut at = offset;
        for p in parts {
            self.write(at, p)?;
            at += p.len();
        }
        Ok(())
    }
    /// A writable view of the whole mapping at another address that lives as long as the
    /// mapping (dualmap's persistent alias), and the `process_epoch` (the wipe-on-fork epoch) of the only process
    /// where it may be used. The allocator then writes code and traps for chunks it owns, inside
    /// [`Mapping::ready`], with plain stores at `alias + offset` instead of calling
    /// [`Mapping::write`] and [`Mapping::fill_traps`]: implementers promise that such stores
    /// have exactly their effect. The default: none.
    fn writable_alias(&self) -> Option<(usize, u64)> {
        None
    }
    /// Bytes from the start that are ready: mapped read+execute and trap-filled. The rest
    /// (of a mapping made by [`Backend::map_growable`]) is reserved and faults if touched,
    /// until [`Mapping::grow`] makes it ready. The default: all of it.
    fn ready(&self) -> usize {
        self.len()
    }
    /// Makes the first `ready` bytes ready (trap-filled, then executable), for a mapping made by
    /// [`Backend::map_growable`]; `ready` is a multiple of the page size, at most `len()`.
    fn grow(&self, ready: usize) -> Result<()> {
        let _ = ready;
        Err(Error::Unsupported {
            backend: self.backend_name(),
            op: "growing a mapping",
        })
    }
    /// Fills `base() + offset .. + len` with traps (the kernel's `text_poke_set`).
    fn fill_traps(&self, offset: usize, len: usize) -> Result<()> {
        let _ = (offset, len);
        Err(Error::Unsupported {
            backend: self.backend_name(),
            op: "trap fill",
        })
    }
}

/// Checks that `offset..offset + len` lies inside a mapping of `size` bytes.
pub(crate) fn check_range(offset: usize, len: usize, size: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// A way to make executable mappings and write into them.
///
/// # Safety
/// Every [`Mapping`] returned by [`Backend::map`] must keep the promises of that trait.
pub unsafe trait Backend: Send + Sync + fmt::Debug {
    /// Short name (`"procmem"`, `"dualmap"`, ...).
    fn name(&self) -> &'static str;
    /// What this backend can do.
    fn caps(&self) -> Caps {
        Caps::default()
    }
    /// Maps `len` bytes (a multiple of the page size), trap-filled, read+execute.
    fn map(&self, len: usize, placement: Placement) -> Result<Box<dyn Mapping>> {
        let _ = (len, placement);
        Err(Error::Unsupported {
            backend: self.name(),
            op: "map executable memory",
        })
    }
    /// Maps `len` bytes of which at least the first `ready` (a multiple of the page size) are
    /// trap-filled and read+execute; [`Mapping::grow`] readies more later. For backends where
    /// filling a whole pack up front is costly (a `memfd` fills page by page). The default
    /// maps everything ready.
    fn map_growable(
        &self,
        len: usize,
        placement: Placement,
        ready: usize,
    ) -> Result<Box<dyn Mapping>> {
        let _ = ready;
        self.map(len, placement)
    }
}

/// The default of the trait: a backend that supports nothing, like a platform without a
/// `bpf_arch_text_copy`. Useful to test that callers handle [`Error::Unsupported`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NotSupported;

// SAFETY: it never returns a mapping.
unsafe impl Backend for NotSupported {
    fn name(&self) -> &'static str {
        "unsupported"
    }
}

/// The backend [`detect`] picked, and why.
#[derive(Clone, Debug)]
pub struct Detection {
    /// The backend to use.
    pub backend: Arc<dyn Backend>,
    /// One line per backend tried, with what its probe answered.
    pub report: String,
}

/// Probes one backend: map a page, write a pattern through the backend, read it back.
pub fn probe(backend: &dyn Backend) -> Result<()> {
    let page = sys::page_size();
    let m = backend.map(page, Placement::Anywhere { align: page })?;
    // SAFETY: the mapping is readable while `m` lives and nobody else writes it.
    if !crate::arch::is_all_traps(unsafe { sys::slice(m.base(), page) }) {
        return Err(Error::ProbeFailed {
            backend: backend.name(),
            what: "mapping was not trap-filled",
        });
    }
    let pattern: Vec<u8> = (0..64u8).collect();
    m.write(64, &pattern)?;
    // SAFETY: as above; the write has returned.
    let back = unsafe { sys::slice(m.base() + 64, 64) };
    if back != pattern.as_slice() {
        return Err(Error::ProbeFailed {
            backend: backend.name(),
            what: "write did not land",
        });
    }
    m.fill_traps(64, 64)?;
    // SAFETY: as above.
    if !crate::arch::is_all_traps(unsafe { sys::slice(m.base(), page) }) {
        return Err(Error::ProbeFailed {
            backend: backend.name(),
            what: "trap fill did not land",
        });
    }
    Ok(())
}

/// Picks the best backend that works here: `procmem` first (no writable alias, huge pages),
/// then `dualmap` with a persistent alias. Each is probed by a real write.
pub fn detect() -> Result<Detection> {
    let mut report = String::new();
    match ProcMem::new().and_then(|b| probe(&b).map(|_| b)) {
        Ok(b) => {
            report.push_str("procmem: ok (writes through /proc/self/mem, no writable alias)");
            return Ok(Detection {
                backend: Arc::new(b),
                report,
            });
        }
        Err(e) => report.push_str(&format!("procmem: {e}; ")),
    }
    let dual = DualMap::persistent();
    match probe(&dual) {
        Ok(()) => {
            report.push_str("dualmap: ok (memfd with a persistent read+write alias)");
            Ok(Detection {
                backend: Arc::new(dual),
                report,
            })
        }
        Err(e) => {
            report.push_str(&format!("dualmap: {e}"));
            Err(Error::NoBackend(report))
        }
    }
}
