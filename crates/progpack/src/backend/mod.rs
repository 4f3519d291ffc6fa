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
//! | [`DualMap`] | a `memfd` mapped read+execute, written through a read+write view elsewhere ([`DualMap::persistent`]) or with `pwrite` on the `memfd` ([`DualMap::per_write`]) | persistent, or none (a view per write only where `pwrite` is refused) | only with shmem THP enabled by the administrator |
//! | [`NotSupported`] | nothing: every call fails | – | – |
//!
//! # Security: what each backend leaves open
//!
//! No backend ever maps a page writable and executable. What an attacker who already has a
//! memory-corruption bug in the process could still use:
//!
//! - [`ProcMem::new`] (the default) keeps a **read-write descriptor of `/proc/self/mem`** open
//!   for the life of the backend. That file writes through page protections (the kernel uses
//!   `FOLL_FORCE`), so a bug that lets the attacker make one `pwrite` (or `pwritev`, `write`
//!   after `lseek`) system call with chosen arguments, a "syscall gadget", writes anywhere in
//!   the process: into packs, but also into libc's or the executable's code. Finding the
//!   descriptor number is easy (`/proc/self/fd`, or trying small numbers).
//!   [`ProcMem::open_per_write`] ([`BackendChoice::ProcMemPerWrite`](crate::BackendChoice))
//!   closes that window: the descriptor exists only during progpack's own writes (an `open`
//!   and a `close` per backend write, about 8 µs here; see BENCHMARKS.md). An attacker who can
//!   `open` files with chosen arguments can still open `/proc/self/mem` themselves; a seccomp
//!   filter or `proc_mem.force_override=never` is what stops that, and then `dualmap` is the
//!   backend that works.
//! - [`DualMap::persistent`] keeps a **read+write alias** of every pack at an address the
//!   kernel chose: a write through it changes code. An attacker needs that address (not
//!   exported by progpack; visible in `/proc/self/maps`). [`DualMap::per_write`] keeps no
//!   alias: it writes the `memfd` with `pwrite` (a view mapped around each write only where
//!   `pwrite` is refused).
//! - Both: the executable pages hold JIT code, whose start inside its chunk is randomized
//!   ([`Config::randomize`](crate::Config::randomize)) against JIT spraying; free space is
//!   traps.
//!
//! # Across `fork()`
//!
//! Neither process ever runs code the other wrote after the fork.
//! - [`ProcMem`]: packs are private memory, inherited copy-on-write. The child's inherited
//!   programs keep working unchanged; its writes go through its own `/proc/self/mem`.
//! - [`DualMap`]: packs are shared memory, so no view is inherited (`MADV_DONTFORK`). In the
//!   child, inherited programs fault when called (SIGSEGV) and read back as traps; writing or
//!   freeing into inherited packs is refused ([`Error::Forked`], the chunks are quarantined);
//!   new packs the child maps work normally. The child never unmaps an address range it did
//!   not get from progpack.
//!
//! A child is recognised by `sys::process_epoch` (a `MADV_WIPEONFORK` page), also when it
//! was made by a raw `clone()` that runs no `pthread_atfork` handler.

#![allow(unsafe_code)] // the backend traits are unsafe to implement; their impls live here

mod dualmap;
mod inherit;
mod procmem;
pub(crate) mod sys;

pub use dualmap::DualMap;
pub(crate) use inherit::claim_inherited;
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
    ///
    /// # Safety
    /// `addr..addr + len` is the range the backend mapped with this placement, it is still
    /// mapped in this process (not a range a `fork()` child did not inherit), and nothing refers
    /// to it any more: it is unmapped, or replaced with `MAP_FIXED`.
    pub unsafe fn release(self, addr: usize, len: usize) -> Result<()> {
        match self {
            // SAFETY: the caller owns the range and is done with it.
            Placement::Anywhere { .. } => unsafe { sys::unmap(addr, len) },
            // SAFETY: as above; inside the allocator's code-range reservation.
            Placement::Fixed { .. } => unsafe { sys::rereserve(addr, len) },
        }
    }

    /// Reserves (for `Anywhere`) or names (for `Fixed`) the address range to map at.
    pub(crate) fn reserve(self, len: usize) -> Result<usize> {
        // In a child: take the ranges it did not inherit before the kernel can hand them out.
        inherit::claim_inherited();
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
/// - in the process that made it, `base()..base() + len()` is mapped readable and executable
///   (up to `ready()`; past it, touching faults), and no user-space address maps any of it
///   writable and executable at once;
/// - at creation every byte of the first `ready()` bytes holds the trap pattern
///   ([`crate::arch::TRAP`]), and no byte past `ready()` can be executed (touching it faults);
///   after `grow(n)` returns `Ok`, the same holds with `ready() >= n`;
/// - `write` and `fill_traps` change only the bytes they are asked to, and when they return
///   `Ok` the bytes are visible at `base() + offset` to reads on every thread;
/// - `read_base()..read_base() + ready()` is readable in every process the value is in (see
///   below), and holds what `base()` holds where the code is mapped;
/// - dropping it releases the range with the [`Placement`] it was made with, and only if
///   `owns_range()`.
///
/// After `fork()` (or a raw `clone()`) the child holds a copy of the value. A mapping whose
/// memory the child inherits privately (copy-on-write, like `procmem`'s) needs nothing more.
/// A mapping whose memory would be shared with the parent must not be inherited (or be made
/// read-only in the child): in a child it never writes, answers `write`/`fill_traps` with an
/// error ([`Error::Forked`]), never releases a range the child does not hold
/// (`owns_range()`), and serves reads from `read_base()` (`dualmap` reads traps there).
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
    /// mapping (dualmap's persistent alias), and the `sys::process_epoch` of the only process
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
    /// Where this process can read the mapping's bytes: `base()` (the default), or, in a child
    /// process that did not inherit the mapping's memory, a read-only stand-in of the same
    /// length (`dualmap`: traps).
    fn read_base(&self) -> usize {
        self.base()
    }
    /// True if this process holds the address range, so releasing it is this mapping's job:
    /// always in the process that made it (the default); in a `fork()` child that did not
    /// inherit it, only if the child reserved it again before mapping anything else there.
    /// The allocator never hands out again a code-range slot whose mapping says false.
    fn owns_range(&self) -> bool {
        true
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
