//! The `dualmap` backend: a `memfd` mapped twice, read+execute where code runs and read+write at
//! another address where code is written.
//!
//! With a persistent alias a write is a `memcpy` (about 5 ns for 256 bytes here); the price is a
//! writable view of the code at a (kernel-chosen) address for as long as the pack lives. In
//! per-write mode no writable view is kept: a write is a `pwrite` on the file (the kernel
//! copies into the page cache, about 0.5 µs here, half a `/proc/self/mem` write), or, where a
//! seccomp filter refuses `pwrite`, a view mapped around the write (`mmap` + `munmap`, about
//! 6 µs). No view is ever writable and executable.
//!
//! Packs are filled lazily: the file starts with only the first part of the pack, written as
//! traps with `pwrite` (no page faults), and grows by further `pwrite`s of traps as the pack
//! fills up ([`Mapping::grow`]). Both views span the whole pack from the start; touching them
//! past the end of the file faults (`SIGBUS`), so nothing there is ever executable.
//!
//! Across `fork()`: the file is shared memory, so a view a child inherited would let parent and
//! child rewrite each other's code. Both views are therefore `MADV_DONTFORK`: a child (of
//! `fork()` or of a raw `clone()`, which runs no `pthread_atfork` handler) inherits no view at
//! all. In the child an inherited program faults when called (its address holds no mapping, or
//! the `PROT_NONE` reservation the child put there), reads back as traps, and writing or
//! trap-filling it is refused with [`Error::Forked`]; the child never unmaps or re-reserves a
//! range it does not hold (see [`inherit`](super::inherit)). New packs the child maps itself
//! work normally. Huge pages need shmem THP
//! (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`), which is off by default; packs are
//! then backed by small pages.
//!
//! # References
//! - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
//! - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html) `MAP_SHARED`
//! - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_DONTFORK`

use super::inherit::{self, Owner};
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
/// long as the pack lives. With [`DualMap::per_write`] no writable view is kept: a write is a
/// `pwrite` on the file (about 0.5 µs), or a view mapped around the write (`mmap` + `munmap`,
/// about 6 µs) where `pwrite` is refused. No view is ever writable and executable.
///
/// Use it where `/proc/self/mem` writes are forbidden ([`ProcMem`](super::ProcMem) is preferred:
/// it has no writable alias at all).
///
/// After `fork()` (or a raw `clone()`) the child inherits neither view (`MADV_DONTFORK`):
/// programs it inherited fault when called and read back as traps, and writing into inherited
/// packs is refused with [`Error::Forked`]. Neither process ever runs code the other wrote
/// after the fork. New packs the child maps work normally. Packs get huge pages only with
/// shmem THP (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`), which is off by default.
///
/// # References
/// - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
/// - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html) `MAP_SHARED`
/// - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_DONTFORK`
#[derive(Debug, Clone, Copy)]
pub struct DualMap {
    per_write: bool,
}

impl DualMap {
    /// Keeps the writable alias mapped for the life of each pack (fast writes).
    pub fn persistent() -> Self {
        DualMap { per_write: false }
    }

    /// Keeps no writable view: each write is a `pwrite` on the file (the kernel writes the page
    /// cache), or, where `pwrite` is refused, goes through a view mapped for that write only.
    pub fn per_write() -> Self {
        DualMap { per_write: true }
    }

    /// Makes the writable alias, trap-filled through it first if `fill` (a file the size of the
    /// whole mapping that `pwrite` could not fill), and unmapped again in per-write mode.
    fn make_alias(&self, fd: &OwnedFd, len: usize, fill: bool) -> Result<Option<usize>> {
        let alias = sys::map_shared(fd, len, 0, sys::View::Write)?;
        if fill {
            // SAFETY: the kernel just chose `alias` for this call, read+write, over a file of
            // `len` bytes; nothing else knows it.
            unsafe { sys::fill_traps_direct(alias, len) };
        }
        // SAFETY: the alias was made above and is ours alone.
        let kept = unsafe { sys::advise_dontfork(alias, len) };
        if self.per_write || kept.is_err() {
            // SAFETY: as above; nothing refers to the alias.
            let unmapped = unsafe { sys::unmap(alias, len) };
            return if self.per_write {
                unmapped.map(|()| None)
            } else {
                kept.map(|()| None)
            };
        }
        Ok(Some(alias))
    }

    /// Maps the executable view at the placement, `MADV_DONTFORK`, and registers it.
    fn make_exec_view(&self, fd: &OwnedFd, len: usize, placement: Placement) -> Result<usize> {
        let at = placement.reserve(len)?;
        // SAFETY: `at..at + len` is the reservation `placement` just made (or, for `Fixed`, the
        // allocator's slot it hands us to map over).
        let made = unsafe { sys::map_shared_fixed(fd, at, len, 0, sys::View::Exec) }
            // SAFETY: the view just mapped over our reservation is ours.
            .and_then(|()| unsafe { sys::advise_dontfork(at, len) });
        let made = made.and_then(|()| dontfork_is_honoured(self.name(), at));
        if let Err(e) = made {
            // SAFETY: the reservation (or slot) named above, ours, and nothing refers to it.
            let _ = unsafe { placement.release(at, len) };
            return Err(e);
        }
        inherit::register(at, len);
        Ok(at)
    }
}

/// Checks once per process that `MADV_DONTFORK` took effect on the view at `addr` (an
/// emulator may answer success and do nothing: qemu-user 7.2 does). Without it a `fork()`
/// child would share the code with its parent, so the backend refuses to work.
fn dontfork_is_honoured(backend: &'static str, addr: usize) -> Result<()> {
    use std::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    static HONOURED: AtomicU8 = AtomicU8::new(UNKNOWN);
    let known = match HONOURED.load(Ordering::Relaxed) {
        UNKNOWN => {
            // Unreadable smaps: trust the system call's answer.
            let took = sys::advice_took(addr, "dc") != Some(false);
            HONOURED.store(if took { YES } else { 2 }, Ordering::Relaxed);
            took
        }
        v => v == YES,
    };
    if known {
        Ok(())
    } else {
        Err(Error::ProbeFailed {
            backend,
            what: "MADV_DONTFORK is accepted but not applied here (an emulator?): a fork() \
                   child would share the parent's code",
        })
    }
}

// SAFETY: the executable view is read+execute from creation; the file is trap-filled through
// the alias before the executable view exists; writes are bounds-checked; a child inherits no
// view, reads traps instead, and may not write.
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
        // In a child: take the ranges it did not inherit before the kernel can hand them out.
        inherit::claim_inherited();
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
        // Per-write mode with a working pwrite needs no writable view at all, not even now.
        let alias = if self.per_write && filled {
            None
        } else {
            self.make_alias(&fd, len, !filled)?
        };
        let base = match self.make_exec_view(&fd, len, placement) {
            Ok(b) => b,
            Err(e) => {
                if let Some(a) = alias {
                    // SAFETY: made above by `make_alias`, ours alone.
                    let _ = unsafe { sys::unmap(a, len) };
                }
                return Err(e);
            }
        };
        Ok(Box::new(DualMapping {
            base,
            len,
            by_pwrite: alias.is_none() && filled,
            ready: AtomicUsize::new(ready),
            growing: Mutex::new(()),
            placement,
            fd,
            alias,
            epoch: sys::process_epoch(),
            name: self.name(),
        }))
    }
}

#[derive(Debug)]
struct DualMapping {
    base: usize,
    len: usize,
    /// No persistent alias, and `pwrite` on the file works: writes go through the file.
    by_pwrite: bool,
    /// Bytes of the file (trap-filled, mapped): the rest of both views faults.
    ready: AtomicUsize,
    /// Serializes growth: a stale grow must never write traps over ready (live) bytes.
    growing: Mutex<()>,
    placement: Placement,
    fd: OwnedFd,
    /// The persistent alias, in the process that made it (a child has none).
    alias: Option<usize>,
    /// [`sys::process_epoch`] of the process that made the mapping: the only one that holds
    /// its views.
    epoch: u64,
    name: &'static str,
}

impl DualMapping {
    /// True in the process that made the mapping (and holds its views).
    fn in_maker(&self) -> bool {
        sys::process_epoch() == self.epoch
    }

    /// Checks that `offset..offset + len` may be written now: it is ready, and this is the
    /// maker process. (A child, of fork() or a raw clone(), has no view of the file, and
    /// writing the file would change the code its parent runs: it may not write.)
    fn check_write(&self, offset: usize, len: usize) -> Result<()> {
        check_range(offset, len, self.ready.load(Ordering::Acquire))?;
        if !self.in_maker() {
            return Err(Error::Forked { backend: self.name });
        }
        Ok(())
    }

    /// Runs `f(alias_address_of(offset))` with a writable view of `offset..offset + len`.
    fn with_alias(&self, offset: usize, len: usize, f: impl FnOnce(usize)) -> Result<()> {
        self.check_write(offset, len)?;
        if let Some(alias) = self.alias {
            f(alias + offset);
            return Ok(());
        }
        let page = sys::page_size();
        let start = offset / page * page;
        let end = (offset + len).next_multiple_of(page);
        let view = sys::map_shared(&self.fd, end - start, start as u64, sys::View::Write)?;
        f(view + (offset - start));
        // SAFETY: `view` was mapped above for this write only.
        unsafe { sys::unmap(view, end - start) }
    }
}

impl DualMapping {
    /// A write off the common path: per-write mode, out of range, or in a child process.
    #[cold]
    fn write_slow(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        if self.by_pwrite {
            self.check_write(offset, bytes.len())?;
            return sys::pwrite_all(&self.fd, bytes, offset as u64, "pwrite memfd");
        }
        // SAFETY: `with_alias` checked the range and hands us the alias address of `offset`,
        // mapped read+write in this (the maker) process; the caller holds those chunks.
        self.with_alias(offset, bytes.len(), |at| unsafe {
            sys::copy_direct(at, bytes)
        })
    }

    /// The persistent alias address of `offset..offset + len` when it may be written with
    /// plain stores right now: there is one, the range is ready, and this is the maker process.
    #[inline]
    fn fast_alias(&self, offset: usize, len: usize) -> Option<usize> {
        let alias = self.alias?;
        let in_range = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.ready.load(Ordering::Acquire));
        (in_range && sys::is_process_epoch(self.epoch)).then_some(alias + offset)
    }
}

// SAFETY: in the maker, the executable view is read+execute for the mapping's life; writes go
// through the separate writable view or `pwrite` on the file, inside the range (checked). In a
// child, nothing is written, reads come from a view of traps (`read_base`), and the range is
// released only if the child holds it.
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
        // The common case, kept small: a persistent alias, in range, in the maker process.
        if let Some(at) = self.fast_alias(offset, bytes.len()) {
            // SAFETY: `fast_alias` checked the range against the ready part and that this is
            // the maker, whose alias is mapped read+write; the caller holds those chunks.
            unsafe { sys::copy_direct(at, bytes) };
            return Ok(());
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
        // The file is shared with any child: only its maker grows it.
        if !self.in_maker() {
            return Err(Error::Forked { backend: self.name });
        }
        sys::pwrite_traps(&self.fd, now as u64, ready - now)?;
        self.ready.store(ready, Ordering::Release);
        Ok(())
    }
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        if self.by_pwrite {
            self.check_write(offset, len)?;
            return sys::pwritev_all(&self.fd, parts, offset as u64, "pwritev memfd");
        }
        self.with_alias(offset, len, |mut at| {
            for p in parts {
                // SAFETY: as in `write`; the parts add up to the checked length.
                unsafe { sys::copy_direct(at, p) };
                at += p.len();
            }
        })
    }
    #[inline]
    fn fill_traps(&self, offset: usize, len: usize) -> Result<()> {
        // The common case, as in `write`.
        if let Some(at) = self.fast_alias(offset, len) {
            // SAFETY: as in `write`.
            unsafe { sys::fill_traps_direct(at, len) };
            return Ok(());
        }
        if self.by_pwrite {
            self.check_write(offset, len)?;
            return sys::pwrite_traps(&self.fd, offset as u64, len);
        }
        // SAFETY: as in `write_slow`.
        self.with_alias(offset, len, |at| unsafe { sys::fill_traps_direct(at, len) })
    }
    fn read_base(&self) -> usize {
        if self.in_maker() {
            return self.base;
        }
        inherit::trap_view(self.len).unwrap_or_else(|e| {
            panic!("cannot map a view of traps to read an inherited dualmap pack: {e}")
        })
    }
    fn owns_range(&self) -> bool {
        inherit::owner(self.base) != Owner::Lost
    }
}

impl Drop for DualMapping {
    fn drop(&mut self) {
        if self.in_maker() {
            if let Some(alias) = self.alias {
                // SAFETY: the maker's alias, unused from now on. (A child has no alias: the
                // address may hold the child's own memory, so it is left alone there.)
                let _ = unsafe { sys::unmap(alias, self.len) };
            }
        }
        let released = match inherit::unregister(self.base) {
            // SAFETY: this process made the view at this placement and nothing refers to it
            // any more.
            Owner::Maker => unsafe { self.placement.release(self.base, self.len) },
            // The child's PROT_NONE claim: unmap it, or keep it as the allocator's reservation.
            Owner::Claimed => match self.placement {
                // SAFETY: the claim is this process's own reservation of exactly this range.
                Placement::Anywhere { .. } => unsafe { sys::unmap(self.base, self.len) },
                Placement::Fixed { .. } => Ok(()),
            },
            Owner::Lost => Ok(()),
        };
        debug_assert!(released.is_ok(), "releasing a pack failed: {released:?}");
    }
}
