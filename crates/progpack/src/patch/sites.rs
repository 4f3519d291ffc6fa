//! The set of patch sites: the first byte of every instruction that a live patch has
//! replaced in a program that still lives, for the SIGTRAP handler to recognise a temporary
//! `int3` after the fact.
//!
//! Why after the fact: a thread that executes the temporary `int3` enters the kernel, and its
//! handler may run only much later (the thread can be descheduled in between), when the patch
//! is over. The handler then needs to know that the address was a patch site, and it must
//! find that out without a lock or an allocation.
//!
//! Invariants:
//! - the set is an open-addressing hash table of addresses (`EMPTY` and `GONE` are never code
//!   addresses), at most half full counting removed slots, so every probe ends at an `EMPTY`;
//! - readers ([`Sites::contains`], from the signal handler) take no lock and never allocate;
//!   writers ([`Sites::insert`], [`Sites::forget_range`]) hold the writers' lock;
//! - a table is never freed once published: a reader may hold an old one for as long as it
//!   likes. A table grows by building a new one and publishing it; the old ones are kept (their
//!   total is at most the size of the newest);
//! - an address is in the set from before its first temporary `int3` is written until its
//!   program is dropped (before the program's bytes become traps again).

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// A slot never used: probes stop here.
const EMPTY: usize = 0;
/// A slot whose address was removed: probes go on past it.
const GONE: usize = 1;

/// One generation of the hash table.
struct Table {
    slots: Box<[AtomicUsize]>,
}

impl Table {
    fn new(len: usize) -> Table {
        debug_assert!(len.is_power_of_two());
        Table {
            slots: (0..len).map(|_| AtomicUsize::new(EMPTY)).collect(),
        }
    }

    /// Where the probe for `addr` starts (Fibonacci hashing).
    fn home(&self, addr: usize) -> usize {
        (addr as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32) as usize
            & (self.slots.len() - 1)
    }

    /// The slot holding `addr`, if any. Lock-free and allocation-free.
    fn find(&self, addr: usize) -> Option<&AtomicUsize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr);
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.load(Ordering::Acquire) {
                EMPTY => return None,
                a if a == addr => return Some(slot),
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Puts `addr` (not present) in the first free or removed slot of its probe.
    fn put(&self, addr: usize) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr);
        loop {
            let slot = &self.slots[i];
            let now = slot.load(Ordering::Relaxed);
            if now == EMPTY || now == GONE {
                slot.store(addr, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// The set (one per process: see [`super::trap_handler::state`]).
pub(crate) struct Sites {
    /// The table readers use; null until the first insert.
    current: AtomicPtr<Table>,
    writer: Mutex<Writer>,
}

/// The writers' side.
struct Writer {
    /// Every address in the set, ordered (to forget a program's range).
    addrs: BTreeSet<usize>,
    /// Slots not `EMPTY` in the current table (live and removed).
    used: usize,
    /// Every table ever published, the current one last; never dropped (see the invariants:
    /// the set itself lives as long as the process). Boxed: readers hold pointers to the
    /// tables, which must not move when the vector grows.
    #[allow(clippy::vec_box)]
    tables: Vec<Box<Table>>,
}

impl Sites {
    /// An empty set.
    pub(crate) const fn new() -> Sites {
        Sites {
            current: AtomicPtr::new(std::ptr::null_mut()),
            writer: Mutex::new(Writer {
                addrs: BTreeSet::new(),
                used: 0,
                tables: Vec::new(),
            }),
        }
    }

    /// True if `addr` is a patch site. Lock-free, allocation-free: callable from a signal
    /// handler.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        let table = self.current.load(Ordering::Acquire);
        if table.is_null() {
            return false;
        }
        // SAFETY: published tables are never freed (they stay in `tables` while the set lives,
        // and the set lives as long as the process), and were fully built before their pointer
        // was published (Release/Acquire).
        #[allow(unsafe_code)]
        let table = unsafe { &*table };
        table.find(addr).is_some()
    }

    /// Adds `addr` to the set (no-op if present).
    pub(crate) fn insert(&self, addr: usize) {
        debug_assert!(addr > GONE);
        let mut w = self.writer.lock();
        if !w.addrs.insert(addr) {
            return;
        }
        let cap = w.tables.last().map_or(0, |t| t.slots.len());
        if (w.used + 1) * 2 > cap {
            // Rebuild without the removed slots, at most a quarter full.
            let len = (w.addrs.len() * 4).next_power_of_two().max(64);
            let table = Box::new(Table::new(len));
            for &a in &w.addrs {
                table.put(a);
            }
            w.used = w.addrs.len();
            self.current
                .store(&*table as *const Table as *mut Table, Ordering::Release);
            w.tables.push(table);
            return;
        }
        w.tables.last().expect("a table exists").put(addr);
        w.used += 1;
    }

    /// Removes every site in `start..end` (a program being dropped).
    pub(crate) fn forget_range(&self, start: usize, end: usize) {
        let mut w = self.writer.lock();
        let gone: Vec<usize> = w.addrs.range(start..end).copied().collect();
        let Some(table) = w.tables.last() else {
            return;
        };
        for a in &gone {
            if let Some(slot) = table.find(*a) {
                slot.store(GONE, Ordering::Release);
            }
        }
        for a in gone {
            w.addrs.remove(&a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_forget_and_grow() {
        let sites = Sites::new();
        let (insert, contains, forget_range) = (
            |a| sites.insert(a),
            |a| sites.contains(a),
            |s, e| sites.forget_range(s, e),
        );
        let base = 0x7fff_0000_0000usize;
        for i in 0..1000 {
            insert(base + i * 3);
        }
        assert!((0..1000).all(|i| contains(base + i * 3)));
        assert!(!contains(base + 1));
        forget_range(base, base + 1500);
        assert!((0..500).all(|i| !contains(base + i * 3)));
        assert!((500..1000).all(|i| contains(base + i * 3)));
        // Removed slots are reused, and probes still end.
        for i in 0..1000 {
            insert(base + i * 3);
        }
        assert!((0..1000).all(|i| contains(base + i * 3)));
        forget_range(base, base + 3000);
        assert!((0..1000).all(|i| !contains(base + i * 3)));
    }
}
