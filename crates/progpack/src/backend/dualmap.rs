//! The `dualmap` backend: a `memfd` mapped twice, read+execute where code runs and read+write at
//! another address where code is written.
//!
//! With a persistent alias a write is a `memcpy` (about 5 ns for 256 bytes here); the price is a
//! writable view of the code at a (kernel-chosen) address for as long as the pack lives. In
//! per-write mode the alias exists only during each write (a `mmap` + `munmap` per write,
//! about 6 µs). Neither view is ever writable and executable.
//!
//! Packs are filled lazily: the file starts with only the first part of the pack, written as
//! traps with `pwrite` (no page faults), and grows by further `pwrite`s of traps as the pack
//! fills up ([`Mapping::grow`]). Both views span the whole pack from the start; touching them
//! past the end of the file faults (`SIGBUS`), so nothing there is ever executable.
//!
//! The file is shared memory, so after `fork()` parent and child would share the code: the
//! alias is marked `MADV_DONTFORK`, and a child that tries to write gets [`Error::Forked`].
//! Huge pages need shmem THP (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`), which is
//! off by default; packs are then backed by small pages.
//!
//! # References
//! - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
//! - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html) `MAP_SHARED`

use super::{check_range, sys, Backend, Caps, Mapping, Placement};
use crate::error::{Error, Result};
use rustix::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Writes code through a second, writable view of a `memfd`: packs are the `memfd` mapped
/// read+execute where code runs, and read+write at another address where code is written.
///
/// With a persistent alias ([`DualMap::persistent`]) a write is a `memcpy` (about 5 ns for 256
/// bytes); the price is a writable view of the code, at an address the kernel chose, for as
/// long as the pack lives. With [`DualMap::per_write`] the alias exists only during each write
/// (`mmap` + `munmap`, about 6 µs). Neither view is ever writable and executable.
///
/// Use it where `/proc/self/mem` writes are forbidden ([`ProcMem`](super::ProcMem) is preferred:
/// it has no writable alias at all). After `fork()` a child that tries to write gets
/// [`Error::Forked`]: the `memfd` is shared with the parent. Packs get huge pages only with
/// shmem THP (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`), which is off by default.
///
/// # References
/// - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
/// - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html) `MAP_SHARED`
#[derive(Debug, Clone, Copy)]
pub struct DualMap {
    per_write: bool,
}

impl DualMap {
    /// Keeps the writable alias mapped for the life of each pack (fast writes).
    pub fn persistent() -> Self {
        DualMap { per_write: false }
    }

    /// Maps the writable alias only around each write (slower, no lasting alias).
    pub fn per_write() -> Self {
        DualMap { per_write: true }
    }
}

// SAFETY: the executable view is read+execute from creation; the file is trap-filled through
// the alias before the executable view exists; writes are bounds-checked.
unsafe impl Backend for DualMap {
    fn name(&self) -> &'static str {
        if self.per_write {
            "dualmap-per-write"
        } else {
            "dualmap"
        }
    }

    fn caps(&self) -> Caps {
        Caps {
            huge_pages: false,
            writable_alias: !self.per_write,
            syscall_per_write: self.per_write,
        }
    }

    fn map(&self, len: usize, placement: Placement) -> Result<Box<dyn Mapping>> {
        self.map_growable(len, placement, len)
    }

    fn map_growable(
        &self,
        len: usize,
        placement: Placement,
        ready: usize,
    ) -> Result<Box<dyn Mapping>> {
        let mut ready = ready.clamp(sys::page_size().min(len), len);
        // The file holds only what is ready, written as traps (pwrite allocates the pages
        // without faulting them in one by one); past its end, both views fault. Where pwrite
        // is not allowed (a seccomp filter), the whole file is filled through the alias
        // before the executable view exists, and never grows.
        let fd = sys::memfd("progpack", 0)?;
        let filled = sys::pwrite_traps(&fd, 0, ready).is_ok();
        if !filled {
            ready = len;
            sys::truncate(&fd, len)?;
        }
        let alias = sys::map_shared(&fd, None, len, 0, sys::View::Write)?;
        if !filled {
            sys::fill_traps_direct(alias, len);
        }
        let kept_alias = if self.per_write {
            sys::unmap(alias, len)?;
            None
        } else {
            if let Err(e) = sys::advise_dontfork(alias, len) {
                let _ = sys::unmap(alias, len);
                return Err(e);
            }
            Some(alias)
        };
        let base = match placement.reserve(len).and_then(|at| {
            sys::map_shared(&fd, Some(at), len, 0, sys::View::Exec).inspect_err(|_| {
                let _ = placement.release(at, len);
            })
        }) {
            Ok(b) => b,
            Err(e) => {
                if let Some(a) = kept_alias {
                    let _ = sys::unmap(a, len);
                }
                return Err(e);
            }
        };
        Ok(Box::new(DualMapping {
            base,
            len,
            ready: AtomicUsize::new(ready),
            growing: Mutex::new(()),
            placement,
            fd,
            alias: kept_alias,
            epoch: sys::process_epoch(),
            name: self.name(),
        }))
    }
}

#[derive(Debug)]
struct DualMapping {
    base: usize,
    len: usize,
    /// Bytes of the file (trap-filled, mapped): the rest of both views faults.
    ready: AtomicUsize,
    /// Serializes growth: a stale grow must never write traps over ready (live) bytes.
    growing: Mutex<()>,
    placement: Placement,
    fd: OwnedFd,
    alias: Option<usize>,
    /// [`sys::process_epoch`] at creation: a child process may not write.
    epoch: u64,
    name: &'static str,
}

impl DualMapping {
    /// Runs `f(alias_address_of(offset))` with a writable view of `offset..offset + len`.
    fn with_alias(&self, offset: usize, len: usize, f: impl FnOnce(usize)) -> Result<()> {
        check_range(offset, len, self.ready.load(Ordering::Acquire))?;
        // A child (of fork() or a raw clone()) has no persistent alias (MADV_DONTFORK), and a
        // fresh view would write the file the parent shares: either way it may not write.
        if sys::process_epoch() != self.epoch {
            return Err(Error::Forked { backend: self.name });
        }
        if let Some(alias) = self.alias {
            f(alias + offset);
            return Ok(());
        }
        let page = sys::page_size();
        let start = offset / page * page;
        let end = (offset + len).next_multiple_of(page);
        let view = sys::map_shared(&self.fd, None, end - start, start as u64, sys::View::Write)?;
        f(view + (offset - start));
        sys::unmap(view, end - start)
    }
}

impl DualMapping {
    /// A write off the common path: per-write alias, out of range, or in a child process.
    #[cold]
    fn write_slow(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.with_alias(offset, bytes.len(), |at| sys::copy_direct(at, bytes))
    }
}

// SAFETY: the executable view is read+execute for the mapping's life; writes go through the
// separate writable view, inside the range (checked), and a forked child may not write.
unsafe impl Mapping for DualMapping {
    fn base(&self) -> usize {
        self.base
    }
    fn len(&self) -> usize {
        self.len
    }
    fn backend_name(&self) -> &'static str {
        self.name
    }
    #[inline]
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        // The common case, kept small: a persistent alias, in range, in the creating process.
        if let Some(alias) = self.alias {
            let in_range = offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.ready.load(Ordering::Acquire));
            if in_range && sys::is_process_epoch(self.epoch) {
                sys::copy_direct(alias + offset, bytes);
                return Ok(());
            }
        }
        self.write_slow(offset, bytes)
    }
    fn ready(&self) -> usize {
        self.ready.load(Ordering::Acquire)
    }
    fn writable_alias(&self) -> Option<(usize, u64)> {
        self.alias.map(|a| (a, self.epoch))
    }
    fn grow(&self, ready: usize) -> Result<()> {
        let _one_at_a_time = self.growing.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.ready.load(Ordering::Acquire);
        if ready <= now {
            return Ok(());
        }
        check_range(0, ready, self.len)?;
        // The file is shared with any child: only its creator grows it.
        if sys::process_epoch() != self.epoch {
            return Err(Error::Forked { backend: self.name });
        }
        sys::pwrite_traps(&self.fd, now as u64, ready - now)?;
        self.ready.store(ready, Ordering::Release);
        Ok(())
    }
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        self.with_alias(offset, len, |mut at| {
            for p in parts {
                sys::copy_direct(at, p);
                at += p.len();
            }
        })
    }
    #[inline]
    fn fill_traps(&self, offset: usize, len: usize) -> Result<()> {
        // The common case, as in `write`.
        if let Some(alias) = self.alias {
            let in_range = offset
                .checked_add(len)
                .is_some_and(|end| end <= self.ready.load(Ordering::Acquire));
            if in_range && sys::is_process_epoch(self.epoch) {
                sys::fill_traps_direct(alias + offset, len);
                return Ok(());
            }
        }
        self.with_alias(offset, len, |at| sys::fill_traps_direct(at, len))
    }
}

impl Drop for DualMapping {
    fn drop(&mut self) {
        if let Some(alias) = self.alias {
            let _ = sys::unmap(alias, self.len);
        }
        let released = self.placement.release(self.base, self.len);
        debug_assert!(released.is_ok(), "releasing a pack failed: {released:?}");
    }
}
