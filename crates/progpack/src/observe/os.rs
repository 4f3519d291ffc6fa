//! The operating-system calls of the announcements (the allocator's own calls are in
//! `backend::sys`): the clocks perf can sample with, thread and process ids, and the marker
//! mapping of a jitdump file. Files themselves go through `std::fs`.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// The clock of jitdump timestamps: it must be the clock `perf record` samples with
/// (`perf record -k CLOCK`; `perf inject --jit` accepts only `-k mono`, the default here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JitdumpClock {
    /// `CLOCK_MONOTONIC` (`perf record -k mono`): what `perf inject --jit` requires.
    #[default]
    Monotonic,
    /// `CLOCK_MONOTONIC_RAW` (`-k monotonic_raw`).
    MonotonicRaw,
    /// `CLOCK_BOOTTIME` (`-k boottime`).
    Boottime,
    /// `CLOCK_REALTIME` (`-k realtime`).
    Realtime,
    /// `CLOCK_TAI` (`-k tai`).
    Tai,
}

impl JitdumpClock {
    fn id(self) -> libc::clockid_t {
        match self {
            JitdumpClock::Monotonic => libc::CLOCK_MONOTONIC,
            JitdumpClock::MonotonicRaw => libc::CLOCK_MONOTONIC_RAW,
            JitdumpClock::Boottime => libc::CLOCK_BOOTTIME,
            JitdumpClock::Realtime => libc::CLOCK_REALTIME,
            JitdumpClock::Tai => libc::CLOCK_TAI,
        }
    }

    /// The clock now, in nanoseconds (`clock_gettime(2)`); 0 if the clock is not available.
    pub(crate) fn now(self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the clock id is one of the constants above.
        let rc = unsafe { libc::clock_gettime(self.id(), &mut ts) };
        if rc != 0 {
            return 0;
        }
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }
}

/// The calling thread's id (`gettid(2)`).
pub(crate) fn thread_id() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Maps the first page of `file` read+execute, private: the mapping `perf record` notices to
/// find a jitdump file (named `jit-<pid>.dump`) and `perf inject --jit` reads. It is never
/// writable (W^X holds for it too) and stays mapped for the life of the process, so that a
/// `perf record -p` started later also finds it in `/proc/<pid>/maps`.
pub(crate) fn map_marker(file: &File) -> std::io::Result<usize> {
    let len = crate::backend::sys::page_size();
    // SAFETY: a new private read+execute mapping of a file we hold open; nothing is replaced
    // (no MAP_FIXED).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p as usize)
}
