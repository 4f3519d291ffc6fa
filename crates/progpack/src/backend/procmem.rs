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
//! `clone` system call, and costs no system call per write). Packs are private memory, so a
//! child inherits copy-on-write copies: its inherited programs keep working unchanged, and
//! neither process sees what the other writes after the fork.
//!
//! The descriptor is read-write and names the whole address space: with it open, any bug that
//! lets an attacker make a `pwrite` system call with chosen arguments writes anywhere, libc's
//! code included, regardless of page protections. [`ProcMem::open_per_write`] keeps no such
//! descriptor between writes (it opens and closes `/proc/self/mem` around each backend write,
//! about 8 µs more per write here, see BENCHMARKS.md).
//!
//! # References
//! - [proc_pid_mem(5)](https://man7.org/linux/man-pages/man5/proc_pid_mem.5.html)
//! - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_HUGEPAGE`

use super::{check_range, sys, Backend, Caps, Mapping, Placement};
use crate::error::Result;
use rustix::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// What failed, in errors of writes.
const PWRITE: &str = "pwrite /proc/self/mem";
const PWRITEV: &str = "pwritev /proc/self/mem";

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
/// [`DualMap`](super::DualMap).
///
/// After `fork()` (or a raw `clone()`) the child's packs are its own copy-on-write copies: its
/// inherited programs keep working unchanged, it opens its own `/proc/self/mem` for its
/// writes, and neither process ever sees what the other writes after the fork.
///
/// [`ProcMem::new`] keeps the read-write descriptor open for the backend's life; anything that
/// can make this process call `pwrite` with chosen arguments can then write anywhere in it.
/// [`ProcMem::open_per_write`] keeps none open between writes, at the cost of an `open` and a
/// `close` per write.
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
enum ProcMemFile {
    /// One descriptor for the life of the backend (per process).
    Kept {
        fd: OwnedFd,
        /// [`sys::process_epoch`] of the process that opened `fd`.
        epoch: u64,
        /// The descriptor a child process opened for itself, with the epoch it belongs to.
        child: Mutex<Option<(u64, OwnedFd)>>,
    },
    /// `/proc/self/mem` is opened for each write and closed after it.
    PerWrite,
}

impl ProcMemFile {
    fn with_fd<R>(&self, f: impl FnOnce(rustix::fd::BorrowedFd<'_>) -> Result<R>) -> Result<R> {
        let ProcMemFile::Kept { fd, epoch, child } = self else {
            // Opened in this very process, whoever it is: no fork question arises.
            let fd = sys::open_proc_mem()?;
            return f(fd.as_fd());
        };
        let (fd, epoch) = (fd, *epoch);
        let now = sys::process_epoch();
        if now == epoch {
            return f(fd.as_fd());
        }
        let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
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
            file: Arc::new(ProcMemFile::Kept {
                fd,
                epoch,
                child: Mutex::new(None),
            }),
            huge_pages: sys::thp_for_madvised_anon(),
        })
    }

    /// Like [`ProcMem::new`], but keeps no writable descriptor open between writes: each
    /// backend write (a finalize, a batch segment, a trap fill on free) opens `/proc/self/mem`,
    /// writes, and closes it. An attacker who can make one system call with chosen arguments
    /// then finds no descriptor to `pwrite` through. Costs an `open` + `close` per write (about
    /// 8 µs here; a [batch](crate::Batch) pays it once per pack). Fails like `new` where the
    /// file cannot be opened for writing (it is opened once here to find out).
    pub fn open_per_write() -> Result<Self> {
        drop(sys::open_proc_mem()?);
        Ok(ProcMem {
            file: Arc::new(ProcMemFile::PerWrite),
            huge_pages: sys::thp_for_madvised_anon(),
        })
    }
}

// SAFETY: mappings are created read+write, trap-filled and made read+execute before they are
// returned, and are then only written through /proc/self/mem; see `ProcMemMapping`.
unsafe impl Backend for ProcMem {
    fn name(&self) -> &'static str {
        match *self.file {
            ProcMemFile::Kept { .. } => "procmem",
            ProcMemFile::PerWrite => "procmem-per-write",
        }
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
        // SAFETY: `base..base + len` is the reservation `placement` just made (or the
        // allocator's code-range slot it hands us to map over); nothing else refers to it.
        let made = unsafe { self.make_pack(base, len) };
        if let Err(e) = made {
            // SAFETY: as above: ours, and nothing refers to it.
            let _ = unsafe { placement.release(base, len) };
            return Err(e);
        }
        Ok(Box::new(ProcMemMapping {
            base,
            len,
            placement,
            file: self.file.clone(),
            name: self.name(),
        }))
    }
}

impl ProcMem {
    /// Turns the reservation `base..base + len` into a trap-filled read+execute pack.
    ///
    /// # Safety
    /// The caller owns the range (see [`sys`]) and nothing refers to it.
    unsafe fn make_pack(&self, base: usize, len: usize) -> Result<()> {
        // SAFETY: the caller owns the range.
        unsafe { sys::map_anon_rw_fixed(base, len) }?;
        // Advisory (needs CONFIG_ANON_VMA_NAME): a distinct name per pack shows it in
        // /proc/self/maps and keeps its VMA, and so its huge-page count in smaps, separate
        // from its neighbours.
        static PACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = PACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: mapped read+write just above, ours.
        let _ = unsafe { sys::name_anon(base, len, &format!("progpack:{id}")) };
        if self.huge_pages {
            // Advisory: without it the pack still works, on small pages.
            let _ = sys::advise_hugepage(base, len);
        }
        // Fill while writable and not yet executable; this also faults the pages in, as huge
        // pages where the kernel can.
        // SAFETY: mapped read+write just above, ours, and nothing else knows the address yet.
        unsafe { sys::fill_traps_direct(base, len) };
        // SAFETY: ours; the fill above holds no reference into it.
        unsafe { sys::protect_rx(base, len) }
    }
}

/// Most bytes [`ProcMemMapping::write_parts`] gathers into one buffer.
const GATHER_MAX: usize = 256 << 10;

thread_local! {
    /// The buffer small parts are gathered in (kept between writes, up to [`GATHER_MAX`]).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `n` parts of `len` bytes in all are better copied into one buffer and written with
/// one `pwrite`. `/proc/<pid>/mem` has no vectored write: the kernel runs its whole write path
/// (a bounce page, the address space's lock, a page lookup) once per iovec element, so parts
/// smaller than a page (drafts finalized together, with the trap gaps between them) cost that
/// each, where one buffer costs it once per page. Parts of a page or more gain nothing.
fn worth_gathering(n: usize, len: usize) -> bool {
    n > 1 && len <= GATHER_MAX && len < n * sys::page_size()
}

#[derive(Debug)]
struct ProcMemMapping {
    base: usize,
    len: usize,
    placement: Placement,
    file: Arc<ProcMemFile>,
    name: &'static str,
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
        self.name
    }
    fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        check_range(offset, bytes.len(), self.len)?;
        self.file
            .with_fd(|fd| sys::pwrite_all(fd, bytes, (self.base + offset) as u64, PWRITE))
    }
    fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_range(offset, len, self.len)?;
        let at = (self.base + offset) as u64;
        if !worth_gathering(parts.len(), len) {
            return self
                .file
                .with_fd(|fd| sys::pwritev_all(fd, parts, at, PWRITEV));
        }
        GATHER.with(|cell| {
            let mut own = Vec::new();
            let mut shared = cell.try_borrow_mut();
            // A write from inside another on this thread (none today) gets a buffer of its own.
            let buf = shared.as_deref_mut().unwrap_or(&mut own);
            buf.clear();
            for p in parts {
                buf.extend_from_slice(p);
            }
            let written = self.file.with_fd(|fd| sys::pwrite_all(fd, buf, at, PWRITE));
            if buf.capacity() > GATHER_MAX {
                *buf = Vec::new();
            }
            written
        })
    }
    fn fill_traps(&self, offset: usize, len: usize) -> Result<()> {
        check_range(offset, len, self.len)?;
        self.file
            .with_fd(|fd| sys::pwrite_traps(fd, (self.base + offset) as u64, len))
    }
}

impl Drop for ProcMemMapping {
    fn drop(&mut self) {
        // SAFETY: the pack is this mapping's, and nothing refers to it any more. In a child it
        // is the child's own copy (private memory is inherited copy-on-write).
        let released = unsafe { self.placement.release(self.base, self.len) };
        debug_assert!(released.is_ok(), "releasing a pack failed: {released:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors of this process open on its own `/proc/<pid>/mem`.
    fn mem_fds() -> usize {
        let me = format!("/proc/{}/mem", std::process::id());
        std::fs::read_dir("/proc/self/fd")
            .expect("list /proc/self/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == me.as_str())
            .count()
    }

    /// Writes through `b`, then reports how many `/proc/self/mem` descriptors are open.
    fn open_after_writes(b: &ProcMem) -> usize {
        let page = sys::page_size();
        let m = b
            .map(page, Placement::Anywhere { align: page })
            .expect("map");
        m.write(64, &[0x90; 64]).expect("write");
        m.write_parts(128, &[&[0x90; 8], &[0x90; 8]])
            .expect("write parts");
        m.fill_traps(64, 128).expect("fill");
        // SAFETY: the mapping is readable while `m` lives.
        let back = unsafe { sys::slice(m.base(), page) };
        assert!(crate::arch::is_all_traps(back), "the writes landed");
        mem_fds()
    }

    /// `open_per_write` keeps no descriptor between writes; `new` keeps one. Counted in a
    /// forked child, which starts with whatever descriptors other tests had open.
    #[test]
    fn per_write_mode_keeps_no_descriptor_open() {
        // SAFETY: the child only uses this module's code and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let before = mem_fds();
            let per_write = ProcMem::open_per_write().expect("open_per_write");
            let during = open_after_writes(&per_write);
            let kept = ProcMem::new().expect("new");
            let with_kept = open_after_writes(&kept);
            let ok = during == before && with_kept == before + 1;
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "descriptor counts wrong (status {status:#x})"
        );
    }
}
