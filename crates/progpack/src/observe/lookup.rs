//! Which program covers an address, answered without a lock or an allocation, so that a
//! signal handler (a trap handler, a sampling profiler) can ask while other threads load and
//! free programs.
//!
//! The path: the observer's list of [`SideTable`]s (one per pack or dedicated mapping it has
//! seen; a table whose pack is gone stays in the list, covering nothing, until a new pack
//! reuses it) → the table covering the address → its chunk slot → the [`Record`] → a
//! consistent copy of the record (sequence lock) → a check that the copy's range covers the
//! address. The last check is what makes every earlier race harmless: a pointer read just
//! before a free and a reuse leads to some record's consistent state, and that state either
//! covers the address (then it *is* the program there, at the moment of the read) or the
//! answer is no program.
//!
//! Cost: one pass over the tables (one per pack: a 2 MiB pack holds up to 32,768 programs of
//! 64 bytes), then a few loads. Invariants: tables and records are freed only when the
//! observer drops; a table is pushed at the head of the list once, fully built, and never
//! unlinked.
#![allow(unsafe_code)] // the list of tables is walked through raw pointers

use super::names::{self, INLINE_NAME};
use super::side::{Record, SideTable};
use std::fmt;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

/// A program found by [`Allocator::program_at`](crate::Allocator::program_at): where it is and
/// what it is called, copied out (it stays valid after the program is freed). A plain value of
/// fixed size: reading it allocates nothing, so it can be used in a signal handler.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProgramInfo {
    addr: usize,
    len: usize,
    name: [u8; INLINE_NAME],
    name_len: usize,
    truncated: bool,
    named: bool,
}

impl ProgramInfo {
    /// Address of the program's first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length of its code in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a program has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its name as given (raw bytes, not escaped), cut to the first 120 bytes; `jit_<addr>`
    /// (hex) if it has none. No allocation: usable in a signal handler (e.g. with `write(2)`).
    pub fn name_bytes(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// The name as text (invalid UTF-8 replaced). Allocates only if it had to replace.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.name_bytes())
    }

    /// True if the name was longer than what [`name_bytes`](Self::name_bytes) holds.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// True if the program was given a name (false: [`name_bytes`](Self::name_bytes) is the
    /// default `jit_<addr>`).
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// True if `addr` lies in the program's code.
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.addr) < self.len
    }

    /// From a consistent copy of a live record.
    pub(crate) fn from_seen(s: &super::side::Seen) -> ProgramInfo {
        let mut info = ProgramInfo {
            addr: s.start,
            len: s.len,
            name: s.name,
            name_len: s.name_len,
            truncated: s.truncated,
            named: s.name_len > 0,
        };
        if !info.named {
            info.name_len = names::write_default(s.start, &mut info.name);
        }
        info
    }
}

impl fmt::Debug for ProgramInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramInfo")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("name", &self.name())
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// An observer's side tables: a lock-free list for lookups, and a pool for reuse.
#[derive(Default)]
pub(crate) struct Tables {
    head: AtomicPtr<SideTable>,
    pool: parking_lot::Mutex<Vec<NonNull<SideTable>>>,
    /// Boxed: tables must not move when the list grows (readers hold pointers to them).
    #[allow(clippy::vec_box)]
    all: parking_lot::Mutex<Vec<Box<SideTable>>>,
}

// SAFETY: the raw pointers point into boxes of `all`, owned here; `SideTable` is `Send + Sync`
// (atomics, and boxes of atomics).
unsafe impl Send for Tables {}
// SAFETY: as above; the pool and the owning list are behind mutexes, the list is atomic.
unsafe impl Sync for Tables {}

impl Tables {
    /// A table for a pack of `slots` chunks of `1 << shift` bytes covering `size` bytes at
    /// `base`: a pooled one if one fits, else a new one pushed on the list.
    pub(crate) fn acquire(&self, slots: usize, shift: u32, base: usize, size: usize) -> &SideTable {
        let pooled = {
            let mut pool = self.pool.lock();
            let i = pool
                .iter()
                // SAFETY: pooled pointers point into `all`.
                .position(|t| unsafe { t.as_ref() }.fits(slots, shift));
            i.map(|i| pool.swap_remove(i))
        };
        let table = match pooled {
            // SAFETY: as above; the table lives until `self` drops.
            Some(t) => unsafe { &*t.as_ptr() },
            None => {
                let b = Box::new(SideTable::new(slots, shift));
                let p = &*b as *const SideTable as *mut SideTable;
                self.all.lock().push(b);
                // Push on the list: the table is fully built before it is reachable.
                let mut head = self.head.load(Ordering::Acquire);
                loop {
                    // SAFETY: `p` is ours, not yet published; `next` is atomic anyway.
                    unsafe { &*p }.next.store(head, Ordering::Relaxed);
                    match self.head.compare_exchange_weak(
                        head,
                        p,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(h) => head = h,
                    }
                }
                // SAFETY: the box is owned by `all` until `self` drops.
                unsafe { &*p }
            }
        };
        table.cover(base, size);
        table
    }

    /// Takes back a table whose pack is gone (every slot clear).
    pub(crate) fn release(&self, table: &SideTable) {
        table.uncover();
        self.pool.lock().push(NonNull::from(table));
    }

    /// The live program covering `addr`, if a table here knows one. Lock-free, no allocation.
    pub(crate) fn program_at(&self, addr: usize) -> Option<ProgramInfo> {
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: every table on the list lives until `self` drops.
            let table = unsafe { &*p };
            if let Some(found) = table.at(addr).and_then(|r| covering(r, addr)) {
                return Some(found);
            }
            p = table.next.load(Ordering::Acquire);
        }
        None
    }

    /// Every table ever made, in the list (for tests).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        let mut n = 0;
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            n += 1;
            // SAFETY: as in `program_at`.
            p = unsafe { &*p }.next.load(Ordering::Acquire);
        }
        n
    }
}

/// `record`'s program if it is live and covers `addr`.
fn covering(record: &Record, addr: usize) -> Option<ProgramInfo> {
    let seen = record.read()?;
    (addr.wrapping_sub(seen.start) < seen.len).then(|| ProgramInfo::from_seen(&seen))
}

impl Drop for Tables {
    fn drop(&mut self) {
        // The boxes in `all` free the tables; nothing can reach the list any more.
        self.head.store(null_mut(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::side::RecordPool;
    use super::*;

    #[test]
    fn finds_live_programs_only() {
        let tables = Tables::default();
        let records = RecordPool::default();
        let base = 0x4000_0000;
        let t = tables.acquire(1024, 6, base, 1024 * 64);
        let r = records.take();
        r.publish(base + 64 * 10 + 8, 100, Some(b"hot"));
        t.set(10, 2, Some(r));
        let found = tables.program_at(base + 64 * 10 + 8).unwrap();
        assert_eq!(
            (found.addr(), found.len(), found.name_bytes()),
            (base + 648, 100, &b"hot"[..])
        );
        assert!(found.is_named());
        assert!(
            tables.program_at(base + 64 * 10 + 7).is_none(),
            "slack before the code"
        );
        assert!(
            tables.program_at(base + 648 + 100).is_none(),
            "slack after the code"
        );
        assert!(tables.program_at(base + 648 + 99).is_some());
        r.retire();
        assert!(tables.program_at(base + 648).is_none(), "retired");
        t.set(10, 2, None);
        tables.release(t);
        let again = tables.acquire(1024, 6, base + (2 << 20), 1024 * 64);
        assert!(std::ptr::eq(again, t), "a released table is reused");
        assert_eq!(tables.count(), 1);
    }

    #[test]
    fn unnamed_programs_get_the_default_name() {
        let tables = Tables::default();
        let records = RecordPool::default();
        let t = tables.acquire(1, 20, 0x5000_0000, 3 << 20);
        let r = records.take();
        r.publish(0x5000_0010, 3 << 20, None);
        t.set(0, 1, Some(r));
        let found = tables.program_at(0x5000_0010 + (2 << 20)).unwrap();
        assert_eq!(found.name(), "jit_50000010");
        assert!(!found.is_named());
    }
}
