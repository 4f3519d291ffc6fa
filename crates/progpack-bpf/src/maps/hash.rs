//! Hash maps (plain, per-CPU, LRU, LRU per-CPU): at most `max_entries` keys, each owning a slot
//! of a preallocated value arena (like the kernel's preallocated hash maps: a value's address
//! never changes while its key is present). The key -> slot index is a `std` hash map behind a
//! mutex; value bytes live in the arena and are read and written with atomic accessors, so
//! programs on other threads may use a value pointer while the host or another program
//! updates it.
//!
//! Invariants (under the lock): `index` and `slot_key` agree (`slot_key[s] == Some(k)` iff
//! `index[k] == s`); a slot is in `free` iff it has no key.
//!
//! A deleted (or, for LRU, evicted) key's slot is reused by the next insertion: a program
//! still holding the old value pointer then reads or writes the new key's value. That is
//! memory-safe (the arena is still the map's) and matches preallocated kernel maps without
//! RCU-delayed reuse.
//!
//! LRU: every lookup and update stamps the slot with a tick; inserting into a full map evicts
//! the key with the oldest stamp (a scan over all slots, O(max_entries)).

use std::collections::HashMap;
use std::sync::Mutex;

use super::arena::Arena;
use super::{cpu, MapError, UpdateFlag};

/// Index state, under the mutex.
#[derive(Debug, Default)]
struct Index {
    index: HashMap<Box<[u8]>, u32>,
    slot_key: Vec<Option<Box<[u8]>>>,
    free: Vec<u32>,
    stamp: Vec<u64>,
    tick: u64,
}

/// A hash map of any of the four kinds.
#[derive(Debug)]
pub(crate) struct HashMapImpl {
    pub(crate) arena: Arena,
    key_size: usize,
    value_size: usize,
    stride: usize,
    max: u32,
    cpus: usize,
    lru: bool,
    state: Mutex<Index>,
}

impl HashMapImpl {
    pub(crate) fn new(
        key_size: u32,
        value_size: u32,
        max: u32,
        per_cpu: bool,
        lru: bool,
    ) -> Result<HashMapImpl, MapError> {
        let cpus = if per_cpu { cpu::possible_cpus() } else { 1 };
        let stride = (value_size as u64).next_multiple_of(8);
        let bytes = stride
            .checked_mul(max as u64)
            .and_then(|b| b.checked_mul(cpus as u64))
            .ok_or(MapError::TooLarge { bytes: u64::MAX })?;
        let arena = Arena::new(bytes)?;
        let state = Index {
            slot_key: vec![None; max as usize],
            free: (0..max).rev().collect(),
            stamp: vec![0; if lru { max as usize } else { 0 }],
            ..Index::default()
        };
        Ok(HashMapImpl {
            arena,
            key_size: key_size as usize,
            value_size: value_size as usize,
            stride: stride as usize,
            max,
            cpus,
            lru,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offset(&self, slot: u32, cpu: usize) -> usize {
        (cpu * self.max as usize + slot as usize) * self.stride
    }

    fn cpu(&self) -> usize {
        if self.cpus > 1 {
            cpu::current_cpu()
        } else {
            0
        }
    }

    fn touch(&self, st: &mut Index, slot: u32) {
        if self.lru {
            st.tick += 1;
            st.stamp[slot as usize] = st.tick;
        }
    }

    fn slot_of(&self, key: &[u8]) -> Option<u32> {
        let key = key.get(..self.key_size)?;
        let mut st = self.lock();
        let s = *st.index.get(key)?;
        self.touch(&mut st, s);
        Some(s)
    }

    /// Address of the calling thread's value for `key`.
    pub(crate) fn lookup_addr(&self, key: &[u8]) -> Option<u64> {
        let s = self.slot_of(key)?;
        Some(self.arena.addr(self.offset(s, self.cpu())))
    }

    fn read_slot(&self, s: u32, cpu: usize) -> Vec<u8> {
        let mut v = vec![0; self.value_size];
        self.arena.read(self.offset(s, cpu), &mut v);
        v
    }

    /// The calling thread's value for `key`.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        let s = self.slot_of(key)?;
        Some(self.read_slot(s, self.cpu()))
    }

    /// Values of `key` on every CPU.
    pub(crate) fn lookup_all(&self, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        let s = self.slot_of(key)?;
        Some((0..self.cpus).map(|c| self.read_slot(s, c)).collect())
    }

    /// Inserts or replaces; a new key's values on other CPUs start zeroed.
    pub(crate) fn update(
        &self,
        key: &[u8],
        value: &[u8],
        flag: UpdateFlag,
    ) -> Result<(), MapError> {
        let key = key.get(..self.key_size).ok_or(MapError::BadKey)?;
        let value = value.get(..self.value_size).ok_or(MapError::BadValue)?;
        let cpu = self.cpu();
        let mut st = self.lock();
        if let Some(&s) = st.index.get(key) {
            if flag == UpdateFlag::NoExist {
                return Err(MapError::Exists);
            }
            self.touch(&mut st, s);
            self.arena.write(self.offset(s, cpu), value);
            return Ok(());
        }
        if flag == UpdateFlag::Exist {
            return Err(MapError::NotFound);
        }
        let s = match st.free.pop() {
            Some(s) => s,
            None if self.lru && self.max > 0 => {
                // Evict the least recently used key.
                let (victim, _) = st
                    .stamp
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &t)| t)
                    .expect("a full map has slots");
                let s = victim as u32;
                if let Some(old) = st.slot_key[s as usize].take() {
                    st.index.remove(&old);
                }
                s
            }
            None => return Err(MapError::Full),
        };
        for c in 0..self.cpus {
            if c != cpu {
                self.arena.zero(self.offset(s, c), self.value_size);
            }
        }
        self.arena.write(self.offset(s, cpu), value);
        st.index.insert(key.into(), s);
        st.slot_key[s as usize] = Some(key.into());
        self.touch(&mut st, s);
        Ok(())
    }

    pub(crate) fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        let key = key.get(..self.key_size).ok_or(MapError::BadKey)?;
        let mut st = self.lock();
        let s = st.index.remove(key).ok_or(MapError::NotFound)?;
        st.slot_key[s as usize] = None;
        st.free.push(s);
        Ok(())
    }

    /// Present keys, in no particular order.
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        self.lock().index.keys().map(|k| k.to_vec()).collect()
    }
}
