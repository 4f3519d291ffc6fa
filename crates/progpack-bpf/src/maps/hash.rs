//! Hash maps (plain, per-CPU, LRU, LRU per-CPU): at most `max_entries` keys, each owning a slot
//! of a preallocated value arena (like the kernel's preallocated hash maps: a value's address
//! never changes while its key is present). The key -> slot index is a `std` hash map behind a
//! mutex; value bytes live in the arena and are read and written with atomic accessors, so
//! programs on other threads may use a value pointer while the host or another program
//! updates it.
//!
//! Keys of at most 8 bytes are stored as a `u64`, of at most [`INLINE_KEY`] inline in the index (no allocation, no
//! pointer to chase on lookup); longer ones are boxed. Each slot's key is also kept in
//! `slot_keys` (for LRU eviction and listings).
//!
//! Invariants (under the lock): `index` and `slot_keys`/`used` agree (`used[s]` and
//! `slot_keys[s] == k` iff `index[k] == s`); a slot is in `free` iff it is not used.
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

/// Most entries of a hash map (its index is allocated at creation).
pub const MAX_ENTRIES: u32 = 1 << 22;

/// Longest key stored inline.
const INLINE_KEY: usize = 16;

/// Key -> slot: keys of up to 8 bytes as a `u64`, up to [`INLINE_KEY`] inline, longer boxed
/// (the smaller the entries, the more of a large map's index stays in cache).
#[derive(Debug)]
enum Keys {
    Word(HashMap<u64, u32>),
    Inline(HashMap<[u8; INLINE_KEY], u32>),
    Boxed(HashMap<Box<[u8]>, u32>),
}

impl Keys {
    fn new(key_size: usize) -> Keys {
        match key_size {
            0..=8 => Keys::Word(HashMap::new()),
            9..=INLINE_KEY => Keys::Inline(HashMap::new()),
            _ => Keys::Boxed(HashMap::new()),
        }
    }

    fn word(key: &[u8]) -> u64 {
        let mut k = [0u8; 8];
        k[..key.len()].copy_from_slice(key);
        u64::from_le_bytes(k)
    }

    fn inline(key: &[u8]) -> [u8; INLINE_KEY] {
        let mut k = [0u8; INLINE_KEY];
        k[..key.len()].copy_from_slice(key);
        k
    }

    fn get(&self, key: &[u8]) -> Option<u32> {
        match self {
            Keys::Word(m) => m.get(&Self::word(key)).copied(),
            Keys::Inline(m) => m.get(&Self::inline(key)).copied(),
            Keys::Boxed(m) => m.get(key).copied(),
        }
    }

    fn insert(&mut self, key: &[u8], s: u32) {
        match self {
            Keys::Word(m) => m.insert(Self::word(key), s),
            Keys::Inline(m) => m.insert(Self::inline(key), s),
            Keys::Boxed(m) => m.insert(key.into(), s),
        };
    }

    fn remove(&mut self, key: &[u8]) -> Option<u32> {
        match self {
            Keys::Word(m) => m.remove(&Self::word(key)),
            Keys::Inline(m) => m.remove(&Self::inline(key)),
            Keys::Boxed(m) => m.remove(key),
        }
    }
}

/// Index state, under the mutex.
#[derive(Debug)]
struct Index {
    index: Keys,
    /// `key_size` bytes per slot: the slot's key, if `used`.
    slot_keys: Vec<u8>,
    used: Vec<bool>,
    free: Vec<u32>,
    stamp: Vec<u64>,
    tick: u64,
}

impl Index {
    fn key(&self, s: u32, key_size: usize) -> &[u8] {
        &self.slot_keys[s as usize * key_size..(s as usize + 1) * key_size]
    }
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
        if max > MAX_ENTRIES {
            return Err(MapError::TooLarge {
                bytes: max as u64 * key_size as u64,
            });
        }
        let arena = Arena::new(bytes)?;
        let index = Keys::new(key_size as usize);
        let state = Index {
            index,
            slot_keys: vec![0; max as usize * key_size as usize],
            used: vec![false; max as usize],
            free: (0..max).rev().collect(),
            stamp: vec![0; if lru { max as usize } else { 0 }],
            tick: 0,
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
        let s = st.index.get(key)?;
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
        if let Some(s) = st.index.get(key) {
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
                let old = st.key(s, self.key_size).to_vec();
                st.index.remove(&old);
                st.used[s as usize] = false;
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
        st.index.insert(key, s);
        let ks = self.key_size;
        st.slot_keys[s as usize * ks..(s as usize + 1) * ks].copy_from_slice(key);
        st.used[s as usize] = true;
        self.touch(&mut st, s);
        Ok(())
    }

    pub(crate) fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        let key = key.get(..self.key_size).ok_or(MapError::BadKey)?;
        let mut st = self.lock();
        let s = st.index.remove(key).ok_or(MapError::NotFound)?;
        st.used[s as usize] = false;
        st.free.push(s);
        Ok(())
    }

    /// Present keys, in no particular order.
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        let st = self.lock();
        (0..self.max)
            .filter(|&s| st.used[s as usize])
            .map(|s| st.key(s, self.key_size).to_vec())
            .collect()
    }
}
