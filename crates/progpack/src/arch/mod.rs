//! What differs per CPU architecture: the trap instruction, and making freshly written code
//! visible to instruction fetch. One file per architecture ([`x86_64`](self) or `aarch64`);
//! this module forwards and holds what is common.
//!
//! Invariant: [`TRAP`] repeated from any offset that is a multiple of its length decodes as
//! trap instructions only; every free byte of every pack holds this pattern.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as imp;
#[cfg(any(test, target_arch = "aarch64"))]
mod cache_type;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as imp;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("progpack supports x86_64 and aarch64 only");

pub use imp::TRAP;

/// A static buffer of `N` bytes of the trap pattern, made at compile time (no lazy
/// initialization: it is safe to use in a child process forked while another thread was
/// starting up).
pub(crate) const fn trap_array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    let mut i = 0;
    while i < N {
        a[i] = TRAP[i % TRAP.len()];
        i += 1;
    }
    a
}

/// Fills `buf` with the trap pattern. `buf` must start at an instruction boundary (offsets into
/// packs are multiples of the chunk size, which is a multiple of the pattern length).
pub fn fill_traps(buf: &mut [u8]) {
    if let [b] = TRAP {
        buf.fill(*b);
    } else {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = TRAP[i % TRAP.len()];
        }
    }
}

/// Appends `n` bytes of the trap pattern to `buf` (whose length is a multiple of the pattern).
pub(crate) fn extend_traps(buf: &mut Vec<u8>, n: usize) {
    if let [b] = TRAP {
        buf.resize(buf.len() + n, *b);
    } else {
        let start = buf.len();
        buf.resize(start + n, 0);
        fill_traps(&mut buf[start..]);
    }
}

/// True if `bytes` (starting at an instruction boundary) holds only the trap pattern.
pub fn is_all_traps(bytes: &[u8]) -> bool {
    if let [b] = TRAP {
        bytes.iter().all(|x| x == b)
    } else {
        bytes
            .iter()
            .enumerate()
            .all(|(i, x)| *x == TRAP[i % TRAP.len()])
    }
}

/// Makes code just written at `addr..addr + len` (an executable range of a live mapping) visible
/// to instruction fetch on every core. Call it after every write or trap fill, before the
/// new bytes may run (or before freed chunks are handed out again).
///
/// Two steps, in this order:
/// 1. [`clear_icache`]: on this core, clean the data cache and invalidate the instruction
///    cache for the range, so the next fetch of these addresses sees the new bytes;
/// 2. [`pipeline_flush`]: make every other thread of the process discard instructions it may
///    have fetched already (a context synchronization event on each core running it).
///
/// x86-64 needs neither (coherent caches; see `x86_64.rs`). aarch64 needs both on every
/// path that writes with ordinary stores, which is `dualmap` (through its alias). The
/// `procmem` path is written by the kernel, which maintains the caches itself
/// (`copy_to_user_page` → `flush_ptrace_access`); doing it again is harmless.
pub fn sync_icache(addr: usize, len: usize) -> crate::Result<()> {
    clear_icache(addr, len);
    pipeline_flush()
}

/// Step 1 of [`sync_icache`]: cache maintenance for `addr..addr + len` on the calling core
/// (nothing on x86-64; on aarch64 the architecture's sequence, see `aarch64.rs`). `addr` must
/// lie in a mapping that is readable in this process for the whole range.
pub fn clear_icache(addr: usize, len: usize) {
    imp::clear_icache(addr, len);
}

/// Step 2 of [`sync_icache`]: every thread of the process passes a context synchronization
/// event before this returns (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` on
/// aarch64, registering first; nothing on x86-64), via
/// [`wasmtime_jit_icache_coherence::pipeline_flush_mt`].
///
/// Fails where the system call is not allowed (a seccomp filter, a kernel without it).
pub fn pipeline_flush() -> crate::Result<()> {
    wasmtime_jit_icache_coherence::pipeline_flush_mt().map_err(|e| crate::Error::Os {
        op: "membarrier pipeline flush",
        errno: crate::error::Errno(e.raw_os_error().unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_fill_round_trips() {
        let mut buf = vec![0u8; 64];
        assert!(!is_all_traps(&buf));
        fill_traps(&mut buf);
        assert!(is_all_traps(&buf));
        buf[17] = 0x90;
        assert!(!is_all_traps(&buf));
    }

    /// The maintenance runs over ranges of every shape (unaligned start and end, shorter
    /// than a line, crossing lines, a whole mapping, empty) without faulting, on memory that
    /// is read+execute only. On aarch64 this executes DC CVAU / IC IVAU at EL0.
    #[test]
    #[allow(unsafe_code)]
    fn clear_icache_accepts_any_readable_range() {
        use crate::backend::sys;
        let len = 1 << 16;
        let base = sys::reserve_aligned(len, len).expect("reserve");
        // SAFETY: the reservation was made just above for this test only; nothing else
        // refers to it, and it is unmapped at the end.
        unsafe {
            sys::map_anon_rw_fixed(base, len).expect("map");
            sys::fill_traps_direct(base, len);
            sys::protect_rx(base, len).expect("read+execute");
        }
        for (off, len) in [
            (0, 0),
            (0, 1),
            (3, 5),
            (60, 8),
            (63, 130),
            (4096 - 1, 2),
            (0, 1 << 16),
            ((1 << 16) - 1, 1),
        ] {
            clear_icache(base + off, len);
        }
        sync_icache(base, len).expect("membarrier is allowed here");
        // SAFETY: ours (above), and nothing refers to it any more.
        unsafe { sys::unmap(base, len) }.expect("unmap");
    }
}
