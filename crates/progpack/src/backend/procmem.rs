//! The `procmem` backend: code is written with `pwrite` on `/proc/self/mem`.
//!
//! Packs are private anonymous memory: mapped read+write, advised `MADV_HUGEPAGE`, filled with
//! traps (which faults in huge pages where the kernel allows), then `mprotect`ed read+execute
//! before any code is placed. From then on the only way in is `/proc/self/mem`, which the
//! kernel serves through its own temporary mapping of the page (`FOLL_FORCE`): no user-space
//! address is ever writable and executable, and no writable alias exists.
//!
//! After `fork()` the inherited descriptor would still name the parent's memory, so the child
//! opens its own (see [`sys::process_epoch`], which also changes in a child made by a raw
//! `clone` system call, and costs no system call per write).
//!
//! # References
//! - [proc_pid_mem(5)](https://man7.org/linux/man-pages/man5/proc_pid_mem.5.html)
//! - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_HUGEPAGE`

use super::{check_range, sys, Backend, Caps, Mapping, Placement};
use crate::error::Result;
use rustix::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Writes code through `/proc/self/mem`: the default backend, and the preferred one.
///
/// Packs are private anonymous memory, advised `MADV_HUGEPAGE`, trap-filled and made
/// read+execute before any code is placed. Code then gets in only by `pwrite` on
/// `/proc/self/mem`, which the kernel carries out through its own temporary mapping: no
/// user-space address is ever writable and executable, and no writable alias exists. Packs
/// stay transparent huge pages after such writes; one write costs a system call (about 1.2 µs
/// for 256 bytes), so [batches](crate::Batch) pay off.
///
/// Some systems forbid these writes (`proc_mem.force_override=never`, some sandboxes):
/// [`ProcMem::new`] or its probe fails, and [`detect`](super::detect) falls back to
/// [`DualMap`](super::DualMap). A `fork()` child opens its own `/proc/self/mem`.
///
/// # References
/// - [proc_pid_mem(5)](https://man7.org/linux/man-pages/man5/proc_pid_mem.5.html)
/// - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_HUGEPAGE`
#[derive(Debug, Clone)]
pub struct ProcMem {
    file: Arc<ProcMemFile>,
    huge_pages: bool,
}

#[derive(Debug)]
struct ProcMemFile {
    fd: OwnedFd,
    /// [`sys::process_epoch`] of the process that opened `fd`.
    epoch: u64,
    /// The descriptor a child process opened for itself, with the epoch it belongs to.
    child: Mutex<Option<(u64, OwnedFd)>>,
}

impl ProcMemFile {
    fn with_fd<R>(&self, f: impl FnOnce(rustix::fd::BorrowedFd<'_>) -> Result<R>) -> Result<R> {
        let now = sys::process_epoch();
        if now == self.epoch {
            return f(self.fd.as_fd());
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if child.as_ref().is_none_or(|(g, _)| *g != now) {
            *child = Some((now, sys::open_proc_mem()?));
        }
        let (_, fd) = child.as_ref().expect("set above");
        f(fd.as_fd())
    }
}

impl ProcMem {
    /// Opens `/proc/self/mem` for writing. Fails if the system forbids it
    /// (`proc_mem.force_override=never`, some sandboxes); [`super::detect`] then falls back.
    pub fn new() -> Result<Self> {
        let epoch = sys::process_epoch();
        let fd = sys::open_proc_mem()?;
        Ok(ProcMem {
            file: Arc::new(ProcMemFile {
                fd,
                epoch,
                child: Mutex::new(None),
            }),
            huge_pages: sys::thp_for_madvised_anon(),
        })
    }
}

// SAFETY: mappings are created read+write, trap-filled and made read+execute before they are
// returned, and are then only written through /proc/self/mem; see `ProcMemMapping`.
unsafe impl Backend for ProcMem {
    fn name(&self) -> &'static str {
        "procmem"
    }

    fn caps(&self) -> Caps {
        Caps {
            huge_pages: self.huge_pages,
            writable_alias: false,
            syscall_per_write: true,
        }
    }

    fn map(&self, len: usize, placement: Placement) -> Result<Box<dyn Mapping>> {
        let base = placement.reserve(len)?;
        let made = (|| {
            sys::map_anon_rw_fixed(base, len)?;
            // Advisory (needs CONFIG_ANON_VMA_NAME): a distinct name per pack shows it in
            // /proc/self/maps and keeps its VMA, and so its huge-page count in smaps, separate
            // from its neighbours.
            static PACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let id = PACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = sys::name_anon(base, len, &format!("progpack:{id}"));
            if self.huge_pages {
                // Advisory: without it the pack still works, on small pages.
                let _ = sys::advise_hugepage(base, len);
            }
            // Fill while writable and not yet executable; this also faults the pages in, as
            // huge pages where the kernel can.
            sys::fill_traps_direct(base, len);
            sys::protect_rx(base, len)
        })();
        if let Err(e) = made {
            let _ = placement.release(base, len);
            return Err(e);
        }
        Ok(Box::new(ProcMemMapping {
            base,
            len,
            placement,
            file: self.file.clone(),
        }))
    }
}

#[derive(Debug)]
struct ProcMemMapping {
    base: usize,
    len: usize,
    placement: Placement,
    file: Arc<ProcMemFile>,
}

// SAFETY: the range is read+execute from creation to drop; writes go only through
// /proc/self/mem and only inside the range (checked); drop releases with the placement.
unsafe impl Mapping for ProcMemMapping {
    fn base(&self) -> usize {
        self.base
    }
    fn len(&self) -> usize {
        self.len
    }
    fn backend_name(&self) -> &'static str {
        "procmem"
    }
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        check_range(offset, bytes.len(), self.len)?;
        self.file
            .with_fd(|fd| sys::pwrite_all(fd, bytes, (self.base + offset) as u64))
    }
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        check_range(offset, len, self.len)?;
        self.file
            .with_fd(|fd| sys::pwritev_all(fd, parts, (self.base + offset) as u64))
    }
    fn fill_traps(&self, offset: usize, len: usize) -> Result<()> {
        check_range(offset, len, self.len)?;
        self.file
            .with_fd(|fd| sys::pwrite_traps(fd, (self.base + offset) as u64, len))
    }
}

impl Drop for ProcMemMapping {
    fn drop(&mut self) {
        let released = self.placement.release(self.base, self.len);
        debug_assert!(released.is_ok(), "releasing a pack failed: {released:?}");
    }
}
