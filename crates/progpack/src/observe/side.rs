//! Side data of programs, kept out of [`Span`](crate::span::Span) and `Program`: one
//! [`Record`] per named or announced program, found through a per-pack [`SideTable`] indexed by
//! chunk.
//!
//! A record has two parts:
//! - what a signal handler may read (address, length, the first [`INLINE_NAME`] bytes of the
//!   name), behind a sequence lock: the writer makes the sequence odd, stores, makes it even;
//!   a reader retries until it reads the same even sequence before and after. Every field is
//!   an atomic, so a torn read is a retry, never undefined behaviour;
//! - what only the program's owner touches (the full name, unwind registration, the GDB
//!   entry): [`Extra`], reached through [`Record::extra`] under the owner's contract.
//!
//! Invariants:
//! - records and tables are never freed while their [`Observer`](super::Observer) lives: a
//!   freed program's record goes back to a pool and may be reused for another program, so a
//!   reader holding a stale pointer reads *some* record's consistent state, and checks that its
//!   range covers the address it asked about;
//! - a record is live (`len != 0`) only between its program's finalize and the start of its
//!   free; its chunk slots point at it only while it is owned by a draft or program whose
//!   first chunk is the first slot (slot `first` from `set_name`, slots `first..first+chunks`
//!   from finalize);
//! - only the owner of the chunks (the draft, batch or program holding them) writes their
//!   slots, so slot updates never race with each other except for leaf allocation (a CAS).

#![allow(unsafe_code)] // raw record pointers shared with signal handlers; owner-only cells

use super::names::INLINE_NAME;
use super::Extra;
use std::cell::UnsafeCell;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

const NAME_WORDS: usize = INLINE_NAME / 8;

/// How many times a reader retries a record that is being written before giving up (a signal
/// handler may have interrupted the very thread that writes it).
const READ_TRIES: usize = 64;

/// One program's side data. See the module docs.
pub(crate) struct Record {
    seq: AtomicU64,
    start: AtomicUsize,
    /// Length of the code; 0 while the record is not a live program.
    len: AtomicUsize,
    /// Bytes of the name kept inline (0: unnamed), and whether the name was longer.
    name_len: AtomicUsize,
    name: [AtomicU64; NAME_WORDS],
    /// Owner-only part.
    extra: UnsafeCell<Option<Box<Extra>>>,
}

// SAFETY: every field but `extra` is atomic; `extra` is reached only through `Record::extra`,
// whose contract gives one thread (the owner of the record's program) access at a time, and
// moves between threads only with the draft or program that owns it (a synchronizing transfer).
unsafe impl Sync for Record {}
// SAFETY: as above; `Extra` is `Send`.
unsafe impl Send for Record {}

/// What a reader saw in a live record.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) name: [u8; INLINE_NAME],
    /// Bytes of `name` used; 0 if the program is unnamed.
    pub(crate) name_len: usize,
    /// The full name is longer than `name_len`.
    pub(crate) truncated: bool,
}

const TRUNCATED: usize = 1 << (usize::BITS - 1);

impl Record {
    fn new() -> Record {
        Record {
            seq: AtomicU64::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            name_len: AtomicUsize::new(0),
            name: std::array::from_fn(|_| AtomicU64::new(0)),
            extra: UnsafeCell::new(None),
        }
    }

    /// The owner-only part.
    ///
    /// # Safety
    /// The caller owns the record's draft or program (it holds the draft, the batch, the
    /// `Program`, or a shared reference to the `Program` and only reads), and no other
    /// reference from `extra` is alive where it writes.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn extra(&self) -> &mut Option<Box<Extra>> {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.extra.get() }
    }

    /// Publishes the program: `len` bytes at `start`, named `name` (cut to [`INLINE_NAME`]
    /// bytes here). Owner only.
    pub(crate) fn publish(&self, start: usize, len: usize, name: Option<&[u8]>) {
        let name = name.unwrap_or_default();
        let kept = name.len().min(INLINE_NAME);
        let mut words = [0u64; NAME_WORDS];
        for (i, b) in name[..kept].iter().enumerate() {
            words[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        let flag = if name.len() > kept { TRUNCATED } else { 0 };
        self.write(|r| {
            r.start.store(start, Ordering::Relaxed);
            r.len.store(len, Ordering::Relaxed);
            r.name_len.store(kept | flag, Ordering::Relaxed);
            for (w, v) in r.name.iter().zip(words) {
                w.store(v, Ordering::Relaxed);
            }
        });
    }

    /// Ends the program (its free has begun). Owner only.
    pub(crate) fn retire(&self) {
        self.write(|r| {
            r.len.store(0, Ordering::Relaxed);
            r.start.store(0, Ordering::Relaxed);
        });
    }

    /// The writer's side of the sequence lock (one writer at a time: the owner).
    fn write(&self, f: impl FnOnce(&Record)) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Readers that see any of the stores below also see the odd sequence.
        fence(Ordering::Release);
        f(self);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Reads a consistent copy; `None` if the record is not a live program, or if it stayed
    /// mid-write for [`READ_TRIES`] attempts. No lock, no allocation: signal-safe.
    pub(crate) fn read(&self) -> Option<Seen> {
        for _ in 0..READ_TRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let start = self.start.load(Ordering::Relaxed);
            let len = self.len.load(Ordering::Relaxed);
            let name_len = self.name_len.load(Ordering::Relaxed);
            let mut name = [0u8; INLINE_NAME];
            for (i, w) in self.name.iter().enumerate() {
                name[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            // The loads above happen before the sequence is read again.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            if len == 0 {
                return None;
            }
            return Some(Seen {
                start,
                len,
                name,
                name_len: (name_len & !TRUNCATED).min(INLINE_NAME),
                truncated: name_len & TRUNCATED != 0,
            });
        }
        None
    }
}

/// Records of one observer: handed out and taken back, freed only with the pool.
#[derive(Default)]
pub(crate) struct RecordPool {
    free: parking_lot::Mutex<Vec<NonNull<Record>>>,
    /// Boxed: records must not move when the list grows (readers hold pointers to them).
    #[allow(clippy::vec_box)]
    all: parking_lot::Mutex<Vec<Box<Record>>>,
}

// SAFETY: the pointers in `free` point into boxes of `all`, which the pool owns; `Record` is
// `Send + Sync`.
unsafe impl Send for RecordPool {}
// SAFETY: as above; both lists are behind mutexes.
unsafe impl Sync for RecordPool {}

impl RecordPool {
    /// A record that is not live, with no owner-only part.
    pub(crate) fn take(&self) -> &Record {
        let ptr = self.free.lock().pop().unwrap_or_else(|| {
            let b = Box::new(Record::new());
            let p = NonNull::from(&*b);
            self.all.lock().push(b);
            p
        });
        // SAFETY: the record lives in a box of `all` until the pool drops, which outlives the
        // reference (it borrows `self`).
        unsafe { ptr.as_ref() }
    }

    /// Takes back a record that is retired and whose owner-only part is gone.
    pub(crate) fn give_back(&self, record: &Record) {
        self.free.lock().push(NonNull::from(record));
    }

    /// Records ever made (for tests).
    #[cfg(test)]
    pub(crate) fn made(&self) -> usize {
        self.all.lock().len()
    }
}

/// 64 chunk slots.
struct Leaf {
    slots: [AtomicPtr<Record>; 64],
}

/// One pack's (or dedicated mapping's) chunk slots, and the range it covers. Linked into its
/// observer's list of tables for lock-free lookup by address.
pub(crate) struct SideTable {
    /// The next table of the observer's list (set before this one is published, then fixed).
    pub(super) next: AtomicPtr<SideTable>,
    /// First address covered and bytes covered (0 while the table is in the pool).
    base: AtomicUsize,
    size: AtomicUsize,
    /// log2 of the chunk size (a table of one slot covers its whole range with it).
    shift: u32,
    /// Chunk slots, 64 per leaf; leaves are made on first use and kept.
    top: Box<[AtomicPtr<Leaf>]>,
    slots: usize,
}

impl SideTable {
    /// A table of `slots` chunk slots of `1 << shift` bytes, covering nothing yet.
    pub(super) fn new(slots: usize, shift: u32) -> SideTable {
        SideTable {
            next: AtomicPtr::new(null_mut()),
            base: AtomicUsize::new(0),
            size: AtomicUsize::new(0),
            shift,
            top: (0..slots.div_ceil(64))
                .map(|_| AtomicPtr::new(null_mut()))
                .collect(),
            slots,
        }
    }

    /// Number of chunk slots.
    pub(super) fn slots(&self) -> usize {
        self.slots
    }

    /// Whether this table can serve a pack of `slots` chunks of `1 << shift` bytes.
    pub(super) fn fits(&self, slots: usize, shift: u32) -> bool {
        self.slots == slots && self.shift == shift
    }

    /// Starts covering `size` bytes at `base`.
    pub(super) fn cover(&self, base: usize, size: usize) {
        self.size.store(0, Ordering::Release);
        self.base.store(base, Ordering::Release);
        self.size.store(size, Ordering::Release);
    }

    /// Stops covering anything (every slot is clear: no record is owned here any more).
    pub(super) fn uncover(&self) {
        debug_assert!(self.is_clear());
        self.size.store(0, Ordering::Release);
        self.base.store(0, Ordering::Release);
    }

    fn leaf(&self, chunk: usize) -> Option<&Leaf> {
        let p = self.top.get(chunk / 64)?.load(Ordering::Acquire);
        // SAFETY: leaves are made below and freed only when the table drops, which outlives
        // the reference (it borrows `self`).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// The record in chunk slot `chunk`, if any.
    pub(crate) fn get(&self, chunk: usize) -> Option<&Record> {
        let p = self.leaf(chunk)?.slots[chunk % 64].load(Ordering::Acquire);
        // SAFETY: slots hold null or records of the observer's pool, which outlives its tables
        // (and so this reference).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Points chunk slots `first..first + n` at `record` (or clears them with `None`). Called
    /// by the chunks' owner only.
    pub(crate) fn set(&self, first: usize, n: usize, record: Option<&Record>) {
        let p = record.map_or(null_mut(), |r| r as *const Record as *mut Record);
        for chunk in first..(first + n).min(self.slots) {
            let leaf = match self.leaf(chunk) {
                Some(l) => l,
                None if p.is_null() => continue,
                None => self.make_leaf(chunk),
            };
            leaf.slots[chunk % 64].store(p, Ordering::Release);
        }
    }

    #[cold]
    fn make_leaf(&self, chunk: usize) -> &Leaf {
        let fresh = Box::into_raw(Box::new(Leaf {
            slots: std::array::from_fn(|_| AtomicPtr::new(null_mut())),
        }));
        let cell = &self.top[chunk / 64];
        let p = match cell.compare_exchange(null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => fresh,
            Err(existing) => {
                // SAFETY: `fresh` was never published.
                drop(unsafe { Box::from_raw(fresh) });
                existing
            }
        };
        // SAFETY: as in `leaf`.
        unsafe { &*p }
    }

    /// The record whose chunk slot covers `addr`, if the table covers it. Lock-free.
    pub(crate) fn at(&self, addr: usize) -> Option<&Record> {
        let base = self.base.load(Ordering::Acquire);
        let size = self.size.load(Ordering::Acquire);
        let off = addr.checked_sub(base)?;
        if off >= size || base == 0 {
            return None;
        }
        let chunk = if self.slots == 1 {
            0
        } else {
            off >> self.shift
        };
        self.get(chunk)
    }

    /// True if no slot points at a record.
    pub(super) fn is_clear(&self) -> bool {
        (0..self.slots).all(|c| self.get(c).is_none())
    }
}

impl Drop for SideTable {
    fn drop(&mut self) {
        for cell in self.top.iter() {
            let p = cell.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: made by `make_leaf` with `Box::into_raw`, freed once here.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_what_was_published() {
        let r = Record::new();
        assert!(r.read().is_none(), "not live yet");
        r.publish(0x1000, 64, Some(b"f"));
        let s = r.read().unwrap();
        assert_eq!(
            (s.start, s.len, &s.name[..s.name_len], s.truncated),
            (0x1000, 64, &b"f"[..], false)
        );
        let long = vec![b'n'; INLINE_NAME + 5];
        r.publish(0x2000, 8, Some(&long));
        let s = r.read().unwrap();
        assert_eq!((s.name_len, s.truncated), (INLINE_NAME, true));
        r.retire();
        assert!(r.read().is_none());
    }

    #[test]
    fn a_record_mid_write_is_not_read() {
        let r = Record::new();
        r.publish(0x1000, 64, None);
        // A writer interrupted between its two sequence stores (as a signal handler on the
        // writing thread would see it).
        r.seq.fetch_add(1, Ordering::Relaxed);
        assert!(r.read().is_none());
        r.seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.read().unwrap().start, 0x1000);
    }

    #[test]
    fn slots_cover_chunks() {
        let pool = RecordPool::default();
        let t = SideTable::new(200, 6);
        t.cover(0x10_0000, 200 * 64);
        let r = pool.take();
        t.set(130, 3, Some(r));
        assert!(std::ptr::eq(t.get(131).unwrap(), r));
        assert!(t.get(133).is_none());
        assert!(std::ptr::eq(t.at(0x10_0000 + 132 * 64 + 63).unwrap(), r));
        assert!(t.at(0x10_0000 + 200 * 64).is_none(), "past the end");
        assert!(t.at(0x0f_ffff).is_none(), "before the start");
        t.set(130, 3, None);
        assert!(t.is_clear());
        t.uncover();
        assert!(t.at(0x10_0000).is_none());
        pool.give_back(r);
        assert!(std::ptr::eq(pool.take(), r), "records are reused");
        assert_eq!(pool.made(), 1);
    }
}
