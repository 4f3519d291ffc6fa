//! The memory a program may touch besides its input and its stack: a table of regions.
//!
//! A run sees three kinds of memory: the input memory (r1/r2), the live frames of its stack, and
//! the *extra regions* of this module: one contiguous region per map's value storage (maps
//! preallocate their values in one arena, like the kernel's preallocated maps) and the data
//! area of each ring buffer. Both engines allow a load, store or atomic of `n` bytes at `a` iff
//! `[a, a+n)` lies in one of these (and, for a store or atomic, the region is writable);
//! anything else is [`RunError::OutOfBounds`](crate::RunError::OutOfBounds).
//!
//! Extra regions are *shared*: several threads may run programs over the same maps at once, and
//! the host reads and writes map values while they run. Accesses to them therefore go through
//! the functions below, which use atomic operations (relaxed for plain loads and stores,
//! sequentially consistent for the eBPF atomics), never plain Rust reads and writes. The JIT's
//! plain `mov`s compile to the same machine accesses; its atomics are `lock`-prefixed.
//!
//! Invariant: every region in a table stays allocated (and its bytes initialised) for as long
//! as a run that uses the table can reach it; the owner of the table holds the maps alive.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// One region of memory a program may access: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Region {
    /// First byte (host address).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Whether stores and atomics are allowed (`.rodata` maps are read-only).
    pub writable: bool,
}

impl Region {
    /// Whether `[addr, addr + n)` lies inside the region.
    #[inline]
    pub fn contains(&self, addr: u64, n: u64) -> bool {
        n <= self.len && addr.wrapping_sub(self.start) <= self.len - n
    }
}

/// The region of `regions` that allows an access of `n` bytes at `addr` (a store or atomic if
/// `write`), if any.
#[inline]
pub fn find(regions: &[Region], addr: u64, n: u64, write: bool) -> Option<&Region> {
    regions
        .iter()
        .find(|r| r.contains(addr, n) && (r.writable || !write))
}

/// Reads `n` (1, 2, 4 or 8) bytes at `p` of shared memory, little-endian, zero-extended.
///
/// # Safety
/// `[p, p + n)` must be valid, initialised memory for the duration of the call (it may be
/// accessed concurrently by other threads through these functions or by JIT code).
#[inline]
pub unsafe fn load_shared(p: *mut u8, n: usize) -> u64 {
    // SAFETY: (all arms) the caller guarantees `[p, p+n)` is valid; each atomic type is used
    // only at an address aligned for it, as `from_ptr` requires.
    unsafe {
        match n {
            8 if (p as usize).is_multiple_of(8) => {
                AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed)
            }
            4 if (p as usize).is_multiple_of(4) => {
                AtomicU32::from_ptr(p.cast()).load(Ordering::Relaxed) as u64
            }
            2 if (p as usize).is_multiple_of(2) => {
                AtomicU16::from_ptr(p.cast()).load(Ordering::Relaxed) as u64
            }
            _ => {
                let mut b = [0u8; 8];
                for (i, x) in b.iter_mut().enumerate().take(n) {
                    *x = AtomicU8::from_ptr(p.add(i)).load(Ordering::Relaxed);
                }
                u64::from_le_bytes(b)
            }
        }
    }
}

/// Writes the low `n` (1, 2, 4 or 8) bytes of `v` at `p` of shared memory, little-endian.
///
/// # Safety
/// `[p, p + n)` must be valid, writable memory for the duration of the call (it may be accessed
/// concurrently by other threads through these functions or by JIT code).
#[inline]
pub unsafe fn store_shared(p: *mut u8, n: usize, v: u64) {
    // SAFETY: (all arms) as in `load_shared`.
    unsafe {
        match n {
            8 if (p as usize).is_multiple_of(8) => {
                AtomicU64::from_ptr(p.cast()).store(v, Ordering::Relaxed)
            }
            4 if (p as usize).is_multiple_of(4) => {
                AtomicU32::from_ptr(p.cast()).store(v as u32, Ordering::Relaxed)
            }
            2 if (p as usize).is_multiple_of(2) => {
                AtomicU16::from_ptr(p.cast()).store(v as u16, Ordering::Relaxed)
            }
            _ => {
                for (i, x) in v.to_le_bytes().iter().enumerate().take(n) {
                    AtomicU8::from_ptr(p.add(i)).store(*x, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Copies `dst.len()` bytes of shared memory at `p` into `dst`.
///
/// # Safety
/// As [`load_shared`] for `[p, p + dst.len())`.
pub unsafe fn read_shared(p: *const u8, dst: &mut [u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        // SAFETY: `p + i` is inside the range the caller vouches for.
        *d = unsafe { AtomicU8::from_ptr(p.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` into shared memory at `p`.
///
/// # Safety
/// As [`store_shared`] for `[p, p + src.len())`.
pub unsafe fn write_shared(p: *mut u8, src: &[u8]) {
    for (i, s) in src.iter().enumerate() {
        // SAFETY: `p + i` is inside the range the caller vouches for.
        unsafe { AtomicU8::from_ptr(p.add(i)) }.store(*s, Ordering::Relaxed);
    }
}

/// Serialises atomics the hardware cannot do in one instruction from Rust (unaligned ones).
static UNALIGNED_ATOMICS: Mutex<()> = Mutex::new(());

/// Atomically replaces the `n`-byte (4 or 8) value at `p` by `f(old)` when `f` returns
/// `Some`, and returns the old value. Aligned values use a compare-exchange loop; unaligned ones
/// (which JIT code updates with `lock`-prefixed instructions) are serialised by a lock, so two
/// interpreter runs never lose an update, but an unaligned atomic is not atomic against JIT code.
///
/// # Safety
/// As [`store_shared`] for `[p, p + n)`.
pub unsafe fn atomic_update(p: *mut u8, n: usize, f: impl Fn(u64) -> Option<u64>) -> u64 {
    // SAFETY: (all arms) `[p, p+n)` is valid and writable (caller); the atomic types are used
    // only at addresses aligned for them.
    unsafe {
        match n {
            8 if (p as usize).is_multiple_of(8) => {
                let a = AtomicU64::from_ptr(p.cast());
                let mut old = a.load(Ordering::SeqCst);
                loop {
                    let Some(new) = f(old) else { return old };
                    match a.compare_exchange_weak(old, new, Ordering::SeqCst, Ordering::SeqCst) {
                        Ok(_) => return old,
                        Err(cur) => old = cur,
                    }
                }
            }
            4 if (p as usize).is_multiple_of(4) => {
                let a = AtomicU32::from_ptr(p.cast());
                let mut old = a.load(Ordering::SeqCst);
                loop {
                    let Some(new) = f(old as u64) else {
                        return old as u64;
                    };
                    match a.compare_exchange_weak(
                        old,
                        new as u32,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    ) {
                        Ok(_) => return old as u64,
                        Err(cur) => old = cur,
                    }
                }
            }
            _ => {
                let _g = UNALIGNED_ATOMICS.lock().unwrap_or_else(|e| e.into_inner());
                let old = load_shared(p, n);
                if let Some(new) = f(old) {
                    store_shared(p, n, new);
                }
                old
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_edges() {
        let r = Region {
            start: 100,
            len: 8,
            writable: true,
        };
        assert!(r.contains(100, 8));
        assert!(r.contains(107, 1));
        assert!(!r.contains(107, 2));
        assert!(!r.contains(99, 1));
        assert!(!r.contains(u64::MAX, 2));
        let empty = Region {
            start: 0,
            len: 0,
            writable: true,
        };
        assert!(!empty.contains(0, 1));
        let ro = Region {
            writable: false,
            ..r
        };
        assert!(find(&[ro], 100, 4, false).is_some());
        assert!(find(&[ro], 100, 4, true).is_none());
    }

    #[test]
    fn shared_accessors_round_trip() {
        let mut buf = [0u8; 16];
        let p = buf.as_mut_ptr();
        for (off, n) in [(0, 8), (1, 8), (3, 4), (4, 4), (5, 2), (6, 2), (9, 1)] {
            let v = 0x0102_0304_0506_0708u64 & (u64::MAX >> (64 - 8 * n));
            // SAFETY: off + n <= 16.
            unsafe {
                store_shared(p.add(off), n, v);
                assert_eq!(load_shared(p.add(off), n), v);
            }
        }
        // SAFETY: 8 <= 16 bytes.
        let old = unsafe { atomic_update(p.add(1), 8, |v| Some(v + 1)) };
        // SAFETY: as above.
        assert_eq!(unsafe { load_shared(p.add(1), 8) }, old + 1);
    }
}
