//! The only place that calls the operating system: thin, typed wrappers over `rustix`.
//!
//! Contract of every function here: addresses and lengths are page-aligned unless said
//! otherwise, lengths are non-zero, and failures come back as [`Error::Os`] naming the call.
//!
//! Ownership: a function that replaces, unmaps, reprotects or writes an address range the
//! kernel did not just hand to it is an `unsafe fn` whose `# Safety` section says "the caller
//! owns the range": the range is a mapping (or reservation) this process made for progpack,
//! it is still mapped in *this* process (a `fork()` child does not inherit ranges marked
//! `MADV_DONTFORK`, and may since have mapped its own memory there), and no Rust reference
//! points into it. Functions that only ever touch a range the kernel just chose are safe.
//! Nothing here ever asks for `PROT_WRITE` and `PROT_EXEC` together: the only protections used
//! are none, read+write (anonymous memory before it is made executable, or a non-executable
//! alias) and read+execute.
//!
//! Porting progpack to another OS means rewriting this file and the backends that call it.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The system page size: `sysconf(_SC_PAGESIZE)`, read once. (Not `rustix::param::page_size`,
/// whose auxiliary-vector parsing faults under valgrind, where the instruction counts of
/// `progpack bench --only count` come from.)
pub fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let page = usize::try_from(page)
                .ok()
                .filter(|p| p.is_power_of_two())
                .unwrap_or(4096);
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

fn ptr(addr: usize) -> *mut c_void {
    addr as *mut c_void
}

/// Reserves `len` bytes of address space aligned to `align` (a power of two, at least a
/// page): `mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`, then
/// the unaligned head and tail are unmapped. Returns the aligned start.
///
/// # References
/// - [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html)
pub fn reserve_aligned(len: usize, align: usize) -> Result<usize> {
    let over = len
        .checked_add(align.saturating_sub(page_size()))
        .ok_or(Error::TooLarge {
            len,
            max: usize::MAX,
        })?;
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel chooses cannot
    // alias any Rust object.
    let raw = unsafe {
        mm::mmap_anonymous(
            std::ptr::null_mut(),
            over,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .map_err(|e| Error::os("mmap (reserve)", e))? as usize;
    let start = raw.next_multiple_of(align);
    let head = start - raw;
    let tail = over - head - len;
    if head > 0 {
        // SAFETY: the head lies inside the reservation the kernel just made for this call.
        unsafe { unmap(raw, head) }?;
    }
    if tail > 0 {
        // SAFETY: as for the head.
        unsafe { unmap(start + len, tail) }?;
    }
    Ok(start)
}

/// Tries to reserve exactly `addr..addr + len` (PROT_NONE) without replacing anything:
/// `MAP_FIXED_NOREPLACE`. `Ok(false)` if something is already mapped there.
pub fn reserve_exact(addr: usize, len: usize) -> Result<bool> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no Rust object is
    // affected; on success the range is ours.
    let got = unsafe {
        mm::mmap_anonymous(
            ptr(addr),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED_NOREPLACE,
        )
    };
    match got {
        Ok(p) if p as usize == addr => Ok(true),
        // A kernel older than 4.17 treats the flag as a hint: give back what it chose.
        // SAFETY: `p` is the fresh range the kernel just chose for this call.
        Ok(p) => unsafe { unmap(p as usize, len) }.map(|_| false),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(Error::os("mmap (reserve near)", e)),
    }
}

/// Turns `addr..addr + len` back into a PROT_NONE reservation:
/// `mmap(addr, len, PROT_NONE, MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`.
///
/// # Safety
/// The caller owns the range (see the module docs): `MAP_FIXED` replaces whatever is mapped
/// there, so anything else at that address would silently vanish.
pub unsafe fn rereserve(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range and nothing refers to it any more.
    unsafe {
        mm::mmap_anonymous(
            ptr(addr),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
        )
    }
    .map(|_| ())
    .map_err(|e| Error::os("mmap (re-reserve)", e))
}

/// Replaces the caller's reservation `addr..addr + len` with private anonymous read+write
/// memory (`MAP_FIXED`). It is never executable while writable.
///
/// # Safety
/// The caller owns the range (see the module docs): `MAP_FIXED` replaces whatever is there.
pub unsafe fn map_anon_rw_fixed(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the caller owns the reservation being replaced; no Rust object lives there.
    unsafe {
        mm::mmap_anonymous(
            ptr(addr),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED,
        )
    }
    .map(|_| ())
    .map_err(|e| Error::os("mmap (anonymous pack)", e))
}

/// Protection of a shared file view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Read and execute: where code runs.
    Exec,
    /// Read and write: the alias code is written through.
    Write,
    /// Read only.
    Read,
}

impl View {
    fn prot(self) -> ProtFlags {
        match self {
            View::Exec => ProtFlags::READ | ProtFlags::EXEC,
            View::Write => ProtFlags::READ | ProtFlags::WRITE,
            View::Read => ProtFlags::READ,
        }
    }
}

/// Maps `len` bytes of `fd` from `offset` as a shared view wherever the kernel chooses.
pub fn map_shared(fd: impl AsFd, len: usize, offset: u64, view: View) -> Result<usize> {
    // SAFETY: the kernel picks a fresh range, so no Rust object is aliased.
    unsafe {
        mm::mmap(
            std::ptr::null_mut(),
            len,
            view.prot(),
            MapFlags::SHARED,
            fd,
            offset,
        )
    }
    .map(|p| p as usize)
    .map_err(|e| Error::os("mmap (memfd view)", e))
}

/// Maps `len` bytes of `fd` from `offset` as a shared view exactly at `addr` (`MAP_FIXED`,
/// over the caller's reservation).
///
/// # Safety
/// The caller owns the range (see the module docs): `MAP_FIXED` replaces whatever is there.
pub unsafe fn map_shared_fixed(
    fd: impl AsFd,
    addr: usize,
    len: usize,
    offset: u64,
    view: View,
) -> Result<()> {
    // SAFETY: the caller owns the reservation being replaced; no Rust object lives there.
    unsafe {
        mm::mmap(
            ptr(addr),
            len,
            view.prot(),
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            offset,
        )
    }
    .map(|_| ())
    .map_err(|e| Error::os("mmap (memfd view)", e))
}

/// `mprotect(addr, len, PROT_READ|PROT_EXEC)`.
///
/// # Safety
/// The caller owns the range (see the module docs) and holds no Rust reference that writes it.
pub unsafe fn protect_rx(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range and holds no Rust reference that writes to it.
    unsafe { mm::mprotect(ptr(addr), len, MprotectFlags::READ | MprotectFlags::EXEC) }
        .map_err(|e| Error::os("mprotect (read+exec)", e))
}

/// `madvise(addr, len, MADV_HUGEPAGE)`: ask for transparent huge pages. Advisory.
pub fn advise_hugepage(addr: usize, len: usize) -> Result<()> {
    // SAFETY: MADV_HUGEPAGE changes only how the kernel backs the range, never its contents.
    unsafe { mm::madvise(ptr(addr), len, mm::Advice::LinuxHugepage) }
        .map_err(|e| Error::os("madvise (MADV_HUGEPAGE)", e))
}

/// `munmap(addr, len)`.
///
/// # Safety
/// The caller owns the range (see the module docs) and nothing refers to it any more. In a
/// `fork()` child that did not inherit the range this would unmap the child's own memory.
pub unsafe fn unmap(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range and nothing refers to it any more.
    unsafe { mm::munmap(ptr(addr), len) }.map_err(|e| Error::os("munmap", e))
}

/// Fills `addr..addr + len` with the trap pattern by plain stores.
///
/// # Safety
/// The caller owns the range (see the module docs), it is mapped read+write in this process,
/// and nothing else reads or writes it during the call (a pack or alias not yet published, or
/// an alias only progpack writes through, in chunks the caller holds).
pub unsafe fn fill_traps_direct(addr: usize, len: usize) {
    // SAFETY: guaranteed by the caller: mapped read+write, exclusively ours for the call.
    let bytes = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
    crate::arch::fill_traps(bytes);
}

/// Copies `src` to `addr` by plain stores.
///
/// # Safety
/// As for [`fill_traps_direct`], for `addr..addr + src.len()`; `src` must not overlap it.
pub unsafe fn copy_direct(addr: usize, src: &[u8]) {
    // SAFETY: guaranteed by the caller: the destination is mapped read+write and exclusively
    // ours for the call, and does not overlap `src`.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) }
}

/// Reads `len` bytes at `addr` as a slice.
///
/// # Safety
/// `addr..addr + len` must stay mapped and readable for the lifetime `'a`, and must not be
/// written through a Rust reference during it.
pub unsafe fn slice<'a>(addr: usize, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

/// `memfd_create(name, MFD_CLOEXEC)` then `ftruncate(len)`.
///
/// # References
/// - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
pub fn memfd(name: &str, len: usize) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::os("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(|e| Error::os("ftruncate (memfd)", e))?;
    Ok(fd)
}

/// `ftruncate(fd, len)`: sets the size of a file (a `memfd`).
///
/// # References
/// - [ftruncate(2)](https://man7.org/linux/man-pages/man2/ftruncate.2.html)
pub fn truncate(fd: impl AsFd, len: usize) -> Result<()> {
    rustix::fs::ftruncate(fd, len as u64).map_err(|e| Error::os("ftruncate (memfd)", e))
}

/// `open("/proc/self/mem", O_RDWR|O_CLOEXEC)`.
///
/// # References
/// - [proc_pid_mem(5)](https://man7.org/linux/man-pages/man5/proc_pid_mem.5.html)
pub fn open_proc_mem() -> Result<OwnedFd> {
    rustix::fs::open(
        "/proc/self/mem",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::os("open /proc/self/mem", e))
}

/// Writes all of `buf` at file offset `offset` with `pwrite`, retrying short writes;
/// [`Error::ShortWrite`] if the file stops accepting bytes. `op` names the call in errors.
pub fn pwrite_all(fd: impl AsFd, buf: &[u8], offset: u64, op: &'static str) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(&fd, &buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(Error::ShortWrite {
                    wanted: buf.len(),
                    written: done,
                })
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) if done > 0 => {
                let _ = e;
                return Err(Error::ShortWrite {
                    wanted: buf.len(),
                    written: done,
                });
            }
            Err(e) => return Err(Error::os(op, e)),
        }
    }
    Ok(())
}

/// Writes `len` bytes of the trap pattern at `offset` of `fd`, with as few `pwritev` calls as
/// possible (every iovec points at one static buffer of traps; no allocation).
pub fn pwrite_traps(fd: impl AsFd, offset: u64, len: usize) -> Result<()> {
    const BUF: usize = 64 * 1024;
    const IOVS: usize = 32;
    // Made at compile time: no lazy initialization a forked child could find half done.
    static TRAPS: [u8; BUF + 4] = crate::arch::trap_array();
    let traps = &TRAPS[..];
    // The pattern starts where the address is an instruction boundary.
    let phase0 = offset as usize % crate::arch::TRAP.len();
    if len <= BUF {
        // The usual case (a program's bytes): one plain pwrite.
        return pwrite_all(
            fd,
            &traps[phase0..phase0 + len],
            offset,
            "pwrite (trap fill)",
        );
    }
    let mut done = 0usize;
    while done < len {
        // BUF is a multiple of the pattern length, so every iovec of one call starts at the
        // same phase.
        let phase = (phase0 + done) % crate::arch::TRAP.len();
        let mut iov = [std::io::IoSlice::new(&[]); IOVS];
        let (mut used, mut batch) = (0, 0);
        while used < IOVS && done + batch < len {
            let take = BUF.min(len - done - batch);
            iov[used] = std::io::IoSlice::new(&traps[phase..phase + take]);
            used += 1;
            batch += take;
        }
        match rustix::io::pwritev(&fd, &iov[..used], offset + done as u64) {
            Ok(0) => {
                return Err(Error::ShortWrite {
                    wanted: len,
                    written: done,
                })
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::os("pwritev (trap fill)", e)),
        }
    }
    Ok(())
}

/// Writes the concatenation of `parts` at file offset `offset` of `fd` with `pwritev`, as few
/// calls as the kernel allows (at most `IOV_MAX` = 1024 iovecs per call), retrying short writes;
/// [`Error::ShortWrite`] if the file stops accepting bytes. `op` names the call in errors.
pub fn pwritev_all(fd: impl AsFd, parts: &[&[u8]], offset: u64, op: &'static str) -> Result<()> {
    const IOVS: usize = 64;
    let wanted: usize = parts.iter().map(|p| p.len()).sum();
    let (mut part, mut within, mut done) = (0usize, 0usize, 0usize);
    while done < wanted {
        // Skip parts already written (and empty ones).
        while parts[part].len() == within {
            part += 1;
            within = 0;
        }
        let mut iov = [std::io::IoSlice::new(&[]); IOVS];
        let mut used = 0;
        let mut k = part;
        while used < IOVS && k < parts.len() {
            let from = if k == part { within } else { 0 };
            if from < parts[k].len() {
                iov[used] = std::io::IoSlice::new(&parts[k][from..]);
                used += 1;
            }
            k += 1;
        }
        match rustix::io::pwritev(&fd, &iov[..used], offset + done as u64) {
            Ok(0) => {
                return Err(Error::ShortWrite {
                    wanted,
                    written: done,
                })
            }
            Ok(mut n) => {
                done += n;
                // Advance (part, within) by n bytes.
                while n > 0 {
                    let left = parts[part].len() - within;
                    if n < left {
                        within += n;
                        n = 0;
                    } else {
                        n -= left;
                        part += 1;
                        within = 0;
                    }
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) if done > 0 => {
                let _ = e;
                return Err(Error::ShortWrite {
                    wanted,
                    written: done,
                });
            }
            Err(e) => return Err(Error::os(op, e)),
        }
    }
    Ok(())
}

/// The page whose contents say which process we are in: mapped private, anonymous and
/// `MADV_WIPEONFORK`, so every child (of `fork()`, `vfork()` or a raw `clone()` without
/// `CLONE_VM`) sees it zero-filled. Holds the current epoch, never 0 in the process that set it.
/// `usize::MAX` until first use; 0 if the kernel refused `MADV_WIPEONFORK` (then the process id
/// stands in, at one system call per check).
static EPOCH_PAGE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A number that is the same for the whole life of a process and differs in every child it
/// makes, however the child was made (`fork()`, or a raw `clone` system call that runs no
/// `pthread_atfork` handler). Costs two loads: no system call.
///
/// Backends and the allocator remember it when they create something that must not be shared
/// with a child (a `/proc/self/mem` descriptor, a writable alias, a thread's run of chunks) and
/// compare it before using that thing.
///
/// How: the first call maps one page with `MADV_WIPEONFORK` (Linux 4.14) and stores a random
/// non-zero epoch in it. A child inherits the mapping zero-filled, so its first call finds 0
/// and draws a new epoch. If the kernel refuses the advice, or accepts it without recording it
/// (`/proc/self/smaps` shows no `wf` flag for the page: qemu-user 7.2 does this), the process
/// id (`getpid`, one system call) is the epoch instead.
///
/// # References
/// - [madvise(2)](https://man7.org/linux/man-pages/man2/madvise.2.html) `MADV_WIPEONFORK`
#[inline]
pub fn process_epoch() -> u64 {
    let page = EPOCH_PAGE.load(Ordering::Acquire);
    if page != 0 && page != usize::MAX {
        // SAFETY: `page` was mapped read+write by `epoch_page` and is never unmapped; the
        // epoch is only accessed atomically.
        let epoch = unsafe { &*(page as *const AtomicU64) }.load(Ordering::Acquire);
        if epoch != 0 {
            return epoch;
        }
    }
    process_epoch_slow()
}

/// True if `epoch` is [`process_epoch`]: two loads and compares, and never a call, so that hot
/// paths stay small. `false` may also mean "not known yet" (the first check in a process):
/// callers then take their slow path, which calls [`process_epoch`].
#[inline]
pub fn is_process_epoch(epoch: u64) -> bool {
    let page = EPOCH_PAGE.load(Ordering::Acquire);
    if page == 0 || page == usize::MAX {
        return false;
    }
    // SAFETY: as in `process_epoch`.
    unsafe { &*(page as *const AtomicU64) }.load(Ordering::Acquire) == epoch
}

/// Like [`is_process_epoch`], but also right where the kernel refused `MADV_WIPEONFORK` (the
/// epoch is then the process id, as in `process_epoch_slow`: one `getpid`). Async-signal-safe: it never
/// draws a new epoch; `false` if this process has none yet.
#[cfg(target_arch = "x86_64")]
pub fn is_process_epoch_signal_safe(epoch: u64) -> bool {
    match EPOCH_PAGE.load(Ordering::Acquire) {
        usize::MAX => false,
        0 => {
            epoch == u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) | (1 << 63)
        }
        _ => is_process_epoch(epoch),
    }
}

#[cold]
fn process_epoch_slow() -> u64 {
    let page = match EPOCH_PAGE.load(Ordering::Acquire) {
        usize::MAX => epoch_page(),
        p => p,
    };
    if page == 0 {
        return u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32) | (1 << 63);
    }
    // SAFETY: as in `process_epoch`.
    let slot = unsafe { &*(page as *const AtomicU64) };
    // First call in this process (or in a child, where the page reads zero): draw an epoch.
    // Two threads may race; the first store wins and both return it.
    let fresh = fresh_epoch();
    match slot.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(current) => current,
    }
}

/// Maps the wipe-on-fork page (once per process; a child inherits the mapping) and publishes
/// its address, or 0 if the kernel cannot wipe on fork. Takes no lock (a child forked while
/// another thread was here must not wait for it): threads that race each map a page, the
/// first to publish wins and the others unmap theirs.
fn epoch_page() -> usize {
    let len = page_size();
    // SAFETY: a fresh private anonymous mapping at an address the kernel chooses cannot alias
    // any Rust object; the one published is never unmapped (one page for the life of the
    // process).
    let mapped = unsafe {
        mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    };
    let page = match mapped {
        // SAFETY: MADV_WIPEONFORK changes only what a child inherits (zero-filled pages).
        Ok(p) => match unsafe { mm::madvise(p, len, mm::Advice::LinuxWipeOnFork) } {
            // An emulator may answer success and do nothing (qemu-user 7.2 does): believe the
            // advice only if the kernel's own record of the mapping shows it.
            Ok(()) if advice_took(p as usize, "wf") != Some(false) => p as usize,
            _ => {
                // SAFETY: the page was just mapped here and nothing refers to it.
                let _ = unsafe { mm::munmap(p, len) };
                0
            }
        },
        Err(_) => 0,
    };
    match EPOCH_PAGE.compare_exchange(usize::MAX, page, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => page,
        Err(winner) => {
            if page != 0 {
                // SAFETY: our page lost the race: it was never published, nothing refers to it.
                let _ = unsafe { mm::munmap(ptr(page), len) };
            }
            winner
        }
    }
}

/// Whether the mapping holding `addr` carries the `VmFlags` mnemonic `flag` in
/// `/proc/self/smaps` (`wf`: `MADV_WIPEONFORK`, `dc`: `MADV_DONTFORK`). `None` if that cannot
/// be read. Costs a read of the process's `smaps` up to that mapping: for one-time checks.
///
/// # References
/// - [proc_pid_smaps(5)](https://man7.org/linux/man-pages/man5/proc_pid_smaps.5.html)
pub fn advice_took(addr: usize, flag: &str) -> Option<bool> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.ok()?;
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return Some(flags.split_whitespace().any(|f| f == flag));
            }
            continue;
        }
        // A mapping's header: `start-end perms ...` (hexadecimal addresses).
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((start, end)) = range {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = start <= addr && addr < end;
            }
        }
    }
    None
}

/// A random non-zero 64-bit number (the standard library's randomly keyed hasher over the
/// process id and a counter).
fn fresh_epoch() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    RandomState::new().hash_one((pid, DRAWN.fetch_add(1, Ordering::Relaxed))) | 1
}

/// `madvise(addr, len, MADV_DONTFORK)`: a `fork()` child does not inherit the range.
///
/// # Safety
/// The caller owns the range (see the module docs): marking memory someone else owns would
/// take it away from that owner's children.
pub unsafe fn advise_dontfork(addr: usize, len: usize) -> Result<()> {
    // SAFETY: MADV_DONTFORK changes only what a future child inherits, never this process's
    // view; the caller owns the range.
    unsafe { mm::madvise(ptr(addr), len, mm::Advice::LinuxDontFork) }
        .map_err(|e| Error::os("madvise (MADV_DONTFORK)", e))
}

/// True if transparent huge pages can back anonymous memory we `madvise` (`always` or
/// `madvise` in `/sys/kernel/mm/transparent_hugepage/enabled`).
pub fn thp_for_madvised_anon() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| s.contains("[always]") || s.contains("[madvise]"))
        .unwrap_or(false)
}

/// Names an anonymous range in `/proc/self/maps` (`[anon:NAME]`) with
/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME)`. Distinct names also keep neighbouring packs in
/// distinct VMAs, so `/proc/self/smaps` reports huge pages per pack. Advisory: kernels without
/// `CONFIG_ANON_VMA_NAME` answer `EINVAL`.
///
/// # Safety
/// The caller owns the range (see the module docs) and it is mapped readable.
pub unsafe fn name_anon(addr: usize, len: usize, name: &str) -> Result<()> {
    let name =
        std::ffi::CString::new(name).map_err(|_| Error::BadConfig("VMA name with NUL".into()))?;
    // SAFETY: the caller guarantees the range is mapped readable; the slice is only used for
    // its address and length by the call below.
    let region = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
    rustix::process::set_virtual_memory_region_name(region, Some(&name))
        .map_err(|e| Error::os("prctl (PR_SET_VMA_ANON_NAME)", e))
}

// ---- Live patching on x86-64: cross-modifying code, and the SIGTRAP handler's system calls ----
//
// Everything below that a signal handler calls is async-signal-safe: a raw system call (rustix
// issues them without touching `errno`, and the handler saves `errno` anyway), no allocation,
// no lock.

#[cfg(target_arch = "x86_64")]
/// `membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0)`: registers this
/// process for [`sync_core_all_threads`]. Once per process (a `fork()` child inherits it).
///
/// # References
/// - [membarrier(2)](https://man7.org/linux/man-pages/man2/membarrier.2.html)
pub fn register_sync_core() -> Result<()> {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::RegisterPrivateExpeditedSyncCore)
        .map_err(|e| Error::os("membarrier (register SYNC_CORE)", e))
}

#[cfg(target_arch = "x86_64")]
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0)`: when it returns, every
/// thread of this process that was running has executed a core-serializing instruction, and
/// every other one will before it runs user code again. This is what makes code written by
/// one thread safe to fetch on every core (Intel SDM vol. 3A, "Handling Self- and
/// Cross-Modifying Code"); `wasmtime_jit_icache_coherence::pipeline_flush_mt` is a no-op on
/// x86-64, so the live patcher calls this itself. Needs [`register_sync_core`] first.
///
/// # References
/// - [membarrier(2)](https://man7.org/linux/man-pages/man2/membarrier.2.html)
pub fn sync_core_all_threads() -> Result<()> {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::PrivateExpeditedSyncCore)
        .map_err(|e| Error::os("membarrier (SYNC_CORE)", e))
}

#[cfg(target_arch = "x86_64")]
/// A signal disposition saved by [`install_signal_handler`] (a `struct sigaction`).
#[derive(Clone, Copy)]
pub struct SigAction(libc::sigaction);

#[cfg(target_arch = "x86_64")]
impl std::fmt::Debug for SigAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigAction")
            .field("handler", &format_args!("{:#x}", self.0.sa_sigaction))
            .field("flags", &format_args!("{:#x}", self.0.sa_flags))
            .finish()
    }
}

#[cfg(target_arch = "x86_64")]
/// The type of a three-argument (`SA_SIGINFO`) signal handler.
pub type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void);

#[cfg(target_arch = "x86_64")]
/// `sigaction(sig, {handler, SA_SIGINFO | SA_ONSTACK, empty mask}, &old)`: installs `handler`
/// for `sig` in the whole process and returns the disposition it replaced.
///
/// # Safety
/// `handler` must be async-signal-safe, and must hand every signal it does not handle to the
/// returned disposition (see [`chain_signal`]): the previous handler, or the default action.
///
/// # References
/// - [sigaction(2)](https://man7.org/linux/man-pages/man2/sigaction.2.html)
pub unsafe fn install_signal_handler(
    sig: libc::c_int,
    handler: SigInfoHandler,
) -> Result<SigAction> {
    // SAFETY: an all-zero `struct sigaction` is a valid value (SIG_DFL, no flags, empty mask).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid `struct sigaction`s; the caller vouches for `handler`.
    let rc = unsafe {
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(sig, &new, &mut old)
    };
    if rc != 0 {
        return Err(Error::Os {
            op: "sigaction",
            errno: crate::error::Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        });
    }
    Ok(SigAction(old))
}

#[cfg(target_arch = "x86_64")]
/// Hands a signal that our handler does not handle to `previous`, the disposition our handler
/// replaced (`None`: the default action): calls its handler (with three arguments if it asked for `SA_SIGINFO`); for the
/// default action, restores it and sends the signal again to this thread, so that it takes
/// effect when the handler returns (a trap's default action is to dump core and terminate).
/// An ignored signal stays ignored, unless the kernel `forced` it (a trap: the kernel would
/// have reset it to the default action). Async-signal-safe.
///
/// # Safety
/// Only from a signal handler for `sig`, with the `info` and `ctx` it received.
pub unsafe fn chain_signal(
    previous: Option<&SigAction>,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut c_void,
    forced: bool,
) {
    let Some(previous) = previous.filter(|p| p.0.sa_sigaction != libc::SIG_DFL) else {
        // SAFETY: the caller's contract.
        return unsafe { raise_with_default_action(sig) };
    };
    let handler = previous.0.sa_sigaction;
    if handler == libc::SIG_IGN && !forced {
        return;
    }
    if handler == libc::SIG_IGN {
        // SAFETY: the caller's contract.
        return unsafe { raise_with_default_action(sig) };
    }
    if previous.0.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO, `sa_sigaction` is a three-argument handler (sigaction(2)),
        // and it gets the arguments the kernel gave us.
        let f: SigInfoHandler = unsafe { std::mem::transmute::<usize, SigInfoHandler>(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO, `sa_handler` (the same field) takes the signal number.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler) };
        f(sig);
    }
}

#[cfg(target_arch = "x86_64")]
/// Restores the default action of `sig` and sends it again to this thread: it takes effect
/// when the running handler returns (the signal is blocked until then).
///
/// # Safety
/// Only from a signal handler for `sig`.
unsafe fn raise_with_default_action(sig: libc::c_int) {
    // SAFETY: an all-zero `struct sigaction` is SIG_DFL with an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigaction and tgkill are async-signal-safe system calls on valid values.
    unsafe {
        libc::sigaction(sig, &default, std::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), thread_id(), sig);
    }
}

#[cfg(target_arch = "x86_64")]
/// Reads `buf.len()` bytes of this process's memory at `addr` with `process_vm_readv`: a range
/// that is unmapped meanwhile answers `false` instead of faulting. Async-signal-safe (it sets
/// `errno` on failure: callers in a signal handler hold an [`ErrnoGuard`]).
///
/// # References
/// - [process_vm_readv(2)](https://man7.org/linux/man-pages/man2/process_vm_readv.2.html)
pub fn read_own_memory(addr: usize, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably; the kernel checks `remote` and
    // fails with EFAULT rather than faulting if it is not mapped.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

#[cfg(target_arch = "x86_64")]
/// The calling thread's id (`gettid`). Async-signal-safe.
pub fn thread_id() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

#[cfg(target_arch = "x86_64")]
/// `futex(word, FUTEX_WAIT_PRIVATE, expected)`: sleeps while `word` holds `expected` (or until
/// a spurious wake-up; callers loop). When futexes are refused (a seccomp filter), yields the
/// processor instead. Async-signal-safe.
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32) {
    use rustix::thread::futex;
    match futex::wait(word, futex::Flags::PRIVATE, expected, None) {
        Ok(()) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
        Err(_) => rustix::thread::sched_yield(),
    }
}

#[cfg(target_arch = "x86_64")]
/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds (through the vDSO: no system call).
/// Async-signal-safe.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

#[cfg(target_arch = "x86_64")]
/// `futex(word, FUTEX_WAKE_PRIVATE, INT_MAX)`: wakes every thread in [`futex_wait`] on `word`.
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::PRIVATE, i32::MAX as u32);
}

#[cfg(target_arch = "x86_64")]
/// Restores the calling thread's `errno` when dropped: a signal handler must leave `errno` as
/// it found it, and some calls it makes may set it.
pub struct ErrnoGuard(libc::c_int);

#[cfg(target_arch = "x86_64")]
impl ErrnoGuard {
    /// Saves `errno`.
    pub fn save() -> ErrnoGuard {
        // SAFETY: `__errno_location` returns the calling thread's `errno`, always valid.
        ErrnoGuard(unsafe { *libc::__errno_location() })
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: as in `save`.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// The program counter saved in a signal handler's context (`ucontext_t`): after an `int3`,
/// the address after the trap byte.
///
/// # Safety
/// `ctx` is the context pointer the kernel passed to a `SA_SIGINFO` handler.
#[cfg(target_arch = "x86_64")]
pub unsafe fn context_pc(ctx: *mut c_void) -> usize {
    // SAFETY: the caller passes the kernel's `ucontext_t`.
    unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] as usize }
}

/// Sets the program counter the thread resumes at when the signal handler returns.
///
/// # Safety
/// As for [`context_pc`]; `pc` must be an address the thread may run.
#[cfg(target_arch = "x86_64")]
pub unsafe fn set_context_pc(ctx: *mut c_void, pc: usize) {
    // SAFETY: the caller passes the kernel's `ucontext_t`.
    unsafe {
        (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] = pc as i64
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_stable_here_and_new_in_a_child() {
        let here = process_epoch();
        assert_ne!(here, 0);
        assert_eq!(process_epoch(), here);
        // SAFETY: the child only computes an epoch and exits with `_exit`, touching nothing the
        // parent's other threads could have left locked except the allocator-free paths used.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let child = process_epoch();
            let stable = process_epoch() == child;
            // SAFETY: ends the child without running the parent's destructors.
            unsafe {
                libc::_exit(if child != here && child != 0 && stable {
                    0
                } else {
                    1
                })
            };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(process_epoch(), here, "the parent's epoch never changes");
    }

    #[test]
    fn advice_shows_in_smaps() {
        let len = page_size();
        let page = reserve_aligned(len, len).unwrap();
        // SAFETY: reserved above for this test only.
        unsafe { map_anon_rw_fixed(page, len) }.unwrap();
        assert_eq!(advice_took(page, "dc"), Some(false));
        // SAFETY: as above.
        unsafe { advise_dontfork(page, len) }.unwrap();
        assert_eq!(advice_took(page, "dc"), Some(true));
        assert_eq!(advice_took(page, "wf"), Some(false));
        // SAFETY: as above; nothing refers to it.
        unsafe { unmap(page, len) }.unwrap();
    }

    #[test]
    fn pwritev_all_writes_every_part_in_order() {
        let fd = memfd("pwritev-test", 1 << 16).unwrap();
        let parts: Vec<Vec<u8>> = (0..200u32)
            .map(|i| (0..(i % 7) as u8).map(|b| b ^ i as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        pwritev_all(&fd, &refs, 100, "test").unwrap();
        let want: Vec<u8> = parts.concat();
        let mut got = vec![0u8; want.len()];
        rustix::io::pread(&fd, &mut got, 100).unwrap();
        assert_eq!(got, want);
        pwritev_all(&fd, &[], 0, "test").unwrap();
        pwritev_all(&fd, &[&[], &[]], 0, "test").unwrap();
    }
}
