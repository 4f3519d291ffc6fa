//! Hash maps (plain, per-CPU, LRU, LRU per-CPU): at most `max_entries` keys, each owning a slot
//! of a preallocated value arena (like the kernel's preallocated hash maps: a value's address
//! never changes while its key is present). Value bytes live in the arena and are read and
//! written with atomic accessors, so programs on other threads may use a value pointer while
//! the host or another program updates it.
//!
//! # The index
//! An open-addressing table with linear probing, allocated at creation with at least twice
//! `max_entries` positions. Each position is one `AtomicU64`: [`EMPTY`], [`TOMB`] (a deleted
//! entry probes go on past), or `tag << 32 | (slot + 1)`. Keys of at most 4 bytes are their own
//! tag, so a lookup never reads anything but the table; longer keys are tagged with 32 bits of
//! their hash and compared with the slot's key (`keys`: `words` little-endian, zero-padded
//! `u64`s per slot).
//!
//! Positions come from foldhash's quality variant, keyed per map (a seed derived from the
//! standard library's randomly keyed SipHash, which draws on the OS's randomness): keys come
//! from packets, and a keyed hash keeps an attacker who does not know the seed from choosing
//! keys that pile up on one probe sequence.
//!
//! # Concurrency
//! Lookups take no lock (like the kernel's RCU lookups): they load table entries and key words
//! atomically. Insertions, replacements and deletions take the `writer` mutex (the kernel takes
//! a bucket lock for each of these). A writer only changes one position at a time, each change
//! one atomic store, and in ways a concurrent probe cannot be misled by:
//! - an insertion writes the slot's value and key first and publishes the entry last
//!   (release; lookups load entries with acquire);
//! - a deletion turns the entry into [`TOMB`], or into [`EMPTY`] when the next position is
//!   empty (no probe sequence then runs through it), turning the tombstones just before it
//!   into [`EMPTY`] the same way.
//!
//! Only a *rebuild* (re-placing every entry to drop tombstones, when they fill a quarter of
//! the table) moves entries. It runs under the `rebuilds` sequence lock: odd while it runs;
//! a lookup that saw it odd, or changed, retries (under the mutex when odd, so it waits
//! instead of spinning).
//!
//! A deleted (or, for LRU, evicted) key's slot is reused by the next insertion: a program
//! still holding the old value pointer then reads or writes the new key's value, and a lookup
//! racing with the deletion and the reuse may return the reused slot. That is memory-safe (the
//! arena is still the map's) and matches preallocated kernel maps without RCU-delayed reuse.
//!
//! LRU: every update advances a per-map tick and stamps its slot with it; every lookup stamps
//! its slot with the current tick (without advancing it, so lookups need no read-modify-write).
//! Inserting into a full map evicts the key with the oldest stamp: in a map of up to
//! [`EXACT_LRU`] entries, the oldest of all (the least recently used key, where keys looked up
//! since the same update count as equally recent); in a larger one, the oldest of the next
//! [`LRU_SAMPLE`] slots from a hand that moves on by as many at each eviction, so an insertion
//! costs a bounded scan however large the map (an approximation of LRU that Redis also uses;
//! the kernel's LRU, per-CPU lists rotated in batches, is coarser still): a key is evicted
//! only when it is the least recently used of the slots looked at, so keys in steady use
//! stay.
//!
//! Invariants (under the mutex): a slot is `used` iff exactly one table entry names it, and its
//! `keys` words are then its key; a slot is in `free` iff it is not used; `live` and `tombs`
//! count the table's entries and tombstones; `live + tombs` stays below three quarters of the
//! table, so every probe meets an empty position.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;

use super::arena::{zeroed_words, Arena};
use super::{cpu, MapError, UpdateFlag};

/// Most entries of a hash map (its index is allocated at creation).
pub const MAX_ENTRIES: u32 = 1 << 22;

/// A table position never used.
const EMPTY: u64 = 0;
/// A table position whose entry was deleted.
const TOMB: u64 = u32::MAX as u64;

/// Longest key that is its own tag.
const EXACT_KEY: usize = 4;

/// LRU maps of at most this many entries evict exactly the least recently used key (a scan
/// of all their stamps); larger ones the least recently used of [`LRU_SAMPLE`] slots.
const EXACT_LRU: usize = 1024;

/// Slots a large LRU map looks at per eviction.
const LRU_SAMPLE: usize = 64;

/// What the mutex guards besides the right to change the table.
#[derive(Debug)]
struct Writer {
    used: Vec<bool>,
    free: Vec<u32>,
    /// Table entries.
    live: usize,
    /// Table tombstones.
    tombs: usize,
    /// LRU maps larger than [`EXACT_LRU`]: the first slot the next eviction looks at.
    hand: usize,
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
    hasher: SeedableRandomState,
    /// The index (see the module doc); its length is a power of two.
    table: Box<[AtomicU64]>,
    mask: usize,
    /// `u64` words per key.
    words: usize,
    /// `words` words per slot: the slot's key, zero-padded.
    keys: Box<[AtomicU64]>,
    /// Sequence lock of rebuilds: odd while one runs.
    rebuilds: AtomicU64,
    /// LRU: the tick of each slot's last use.
    stamp: Box<[AtomicU64]>,
    tick: AtomicU64,
    writer: Mutex<Writer>,
}

/// The hasher of a new map: foldhash keyed by a process-wide random seed and a per-map one,
/// both drawn from the standard library's randomly keyed SipHash.
fn new_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let random = || std::hash::RandomState::new().hash_one(0x6d61_7073u64);
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
    SeedableRandomState::with_seed(random(), shared)
}

/// The `u64` of up to 8 key bytes, zero-padded.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    // The common sizes without a call to `memcpy`.
    if let Ok(b) = <[u8; 8]>::try_from(bytes) {
        u64::from_le_bytes(b)
    } else if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        u32::from_le_bytes(b) as u64
    } else {
        bytes.iter().rev().fold(0, |w, &b| (w << 8) | b as u64)
    }
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
        let words = (key_size as usize).div_ceil(8);
        let positions = (max as usize * 2).next_power_of_two().max(8);
        Ok(HashMapImpl {
            arena,
            key_size: key_size as usize,
            value_size: value_size as usize,
            stride: stride as usize,
            max,
            cpus,
            lru,
            hasher: new_hasher(),
            table: zeroed_words(positions),
            mask: positions - 1,
            words,
            keys: zeroed_words(max as usize * words),
            rebuilds: AtomicU64::new(0),
            stamp: zeroed_words(if lru { max as usize } else { 0 }),
            tick: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                used: vec![false; max as usize],
                free: (0..max).rev().collect(),
                live: 0,
                tombs: 0,
                hand: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The hash of `key` (`key_size` bytes).
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        if key.len() <= 8 {
            h.write_u64(word(key));
        } else {
            h.write(key);
        }
        h.finish()
    }

    /// The tag of `key` in table entries.
    #[inline]
    fn tag(&self, key: &[u8], hash: u64) -> u64 {
        if key.len() <= EXACT_KEY {
            word(key)
        } else {
            hash >> 32
        }
    }

    /// Whether slot `s` holds `key`.
    #[inline(never)]
    fn key_eq(&self, s: u32, key: &[u8]) -> bool {
        let base = s as usize * self.words;
        key.chunks(8)
            .zip(&self.keys[base..base + self.words])
            .all(|(c, w)| w.load(Ordering::Relaxed) == word(c))
    }

    /// Slot `s`'s key (under the mutex, or racing with its reuse).
    fn slot_key(&self, s: u32) -> Vec<u8> {
        let base = s as usize * self.words;
        let mut k: Vec<u8> = self.keys[base..base + self.words]
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect();
        k.truncate(self.key_size);
        k
    }

    /// The position and slot of `key` (hash `hash`), probing at most once around the table.
    #[inline(always)]
    fn find(&self, key: &[u8], hash: u64) -> Option<(usize, u32)> {
        let tag = self.tag(key, hash);
        let mut i = hash as usize & self.mask;
        for _ in 0..=self.mask {
            let e = self.table[i].load(Ordering::Acquire);
            if e == EMPTY {
                return None;
            }
            if e as u32 != u32::MAX && e >> 32 == tag {
                let s = e as u32 - 1;
                if key.len() <= EXACT_KEY || self.key_eq(s, key) {
                    return Some((i, s));
                }
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// LRU, a lookup: stamps `slot` with the current tick (a plain load and, only if the
    /// stamp changes, a store: hot keys cost no read-modify-write and no cache line bouncing
    /// between threads).
    #[inline]
    fn touch(&self, slot: u32) {
        if self.lru {
            let t = self.tick.load(Ordering::Relaxed);
            let stamp = &self.stamp[slot as usize];
            if stamp.load(Ordering::Relaxed) != t {
                stamp.store(t, Ordering::Relaxed);
            }
        }
    }

    /// LRU, an update (under the mutex): advances the tick and stamps `slot` with it.
    fn touch_write(&self, _w: &mut Writer, slot: u32) {
        if self.lru {
            // Only writers change `tick`, under the mutex.
            let t = self.tick.load(Ordering::Relaxed) + 1;
            self.tick.store(t, Ordering::Relaxed);
            self.stamp[slot as usize].store(t, Ordering::Relaxed);
        }
    }

    /// The slot of `key` (`key_size` bytes), without the mutex unless a rebuild runs.
    fn slot_of_key(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hash(key);
        let found = loop {
            let seq = self.rebuilds.load(Ordering::Acquire);
            if seq & 1 == 1 {
                // A rebuild is moving entries: wait for it.
                let _w = self.lock();
                break self.find(key, hash);
            }
            let found = self.find(key, hash);
            fence(Ordering::Acquire);
            if self.rebuilds.load(Ordering::Relaxed) == seq {
                break found;
            }
        };
        let (_, s) = found?;
        self.touch(s);
        Some(s)
    }

    fn slot_of(&self, key: &[u8]) -> Option<u32> {
        self.slot_of_key(key.get(..self.key_size)?)
    }

    /// Address of the calling thread's value for `key`.
    pub(crate) fn lookup_addr(&self, key: &[u8]) -> Option<u64> {
        let s = self.slot_of(key)?;
        let off = self.offset(s, self.cpu());
        // The program reads the value next: start bringing it in while the helper returns.
        self.arena.prefetch(off);
        Some(self.arena.addr(off))
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
        let hash = self.hash(key);
        let mut w = self.lock();
        if let Some((_, s)) = self.find(key, hash) {
            if flag == UpdateFlag::NoExist {
                return Err(MapError::Exists);
            }
            self.touch_write(&mut w, s);
            self.arena.write(self.offset(s, cpu), value);
            return Ok(());
        }
        if flag == UpdateFlag::Exist {
            return Err(MapError::NotFound);
        }
        let s = match w.free.pop() {
            Some(s) => s,
            None if self.lru && self.max > 0 => self.evict(&mut w),
            None => return Err(MapError::Full),
        };
        for c in 0..self.cpus {
            if c != cpu {
                self.arena.zero(self.offset(s, c), self.value_size);
            }
        }
        self.arena.write(self.offset(s, cpu), value);
        let base = s as usize * self.words;
        for (c, k) in key.chunks(8).zip(&self.keys[base..base + self.words]) {
            k.store(word(c), Ordering::Relaxed);
        }
        self.touch_write(&mut w, s);
        self.place(&mut w, hash, (self.tag(key, hash) << 32) | (s as u64 + 1));
        w.used[s as usize] = true;
        if (w.live + w.tombs) * 4 > self.table.len() * 3 {
            self.rebuild(&mut w);
        }
        Ok(())
    }

    /// Publishes `entry` (of a key hashing to `hash`, not in the table) at the first free
    /// position of its probe sequence.
    fn place(&self, w: &mut Writer, hash: u64, entry: u64) {
        let mut i = hash as usize & self.mask;
        loop {
            let e = self.table[i].load(Ordering::Relaxed);
            if e == EMPTY || e == TOMB {
                if e == TOMB {
                    w.tombs -= 1;
                }
                self.table[i].store(entry, Ordering::Release);
                w.live += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes the entry at position `i` (see the module doc for why probes stay right).
    fn remove_at(&self, w: &mut Writer, i: usize) {
        w.live -= 1;
        if self.table[(i + 1) & self.mask].load(Ordering::Relaxed) != EMPTY {
            self.table[i].store(TOMB, Ordering::Release);
            w.tombs += 1;
            return;
        }
        self.table[i].store(EMPTY, Ordering::Release);
        let mut j = i.wrapping_sub(1) & self.mask;
        while j != i && self.table[j].load(Ordering::Relaxed) == TOMB {
            self.table[j].store(EMPTY, Ordering::Release);
            w.tombs -= 1;
            j = j.wrapping_sub(1) & self.mask;
        }
    }

    /// LRU: frees the slot with the oldest stamp (of all slots, or of the next
    /// [`LRU_SAMPLE`] from the hand in a large map) and returns it (the map is full).
    fn evict(&self, w: &mut Writer) -> u32 {
        let n = self.stamp.len();
        let oldest = |slots: &mut dyn Iterator<Item = usize>| {
            slots
                .min_by_key(|&i| self.stamp[i].load(Ordering::Relaxed))
                .expect("a full map has slots")
        };
        let victim = if n <= EXACT_LRU {
            oldest(&mut (0..n))
        } else {
            let from = w.hand;
            w.hand = (from + LRU_SAMPLE) % n;
            oldest(&mut (from..from + LRU_SAMPLE).map(|i| i % n))
        };
        let s = victim as u32;
        let key = self.slot_key(s);
        if let Some((i, _)) = self.find(&key, self.hash(&key)) {
            self.remove_at(w, i);
        }
        w.used[s as usize] = false;
        s
    }

    /// Re-places every entry, dropping the tombstones, under the sequence lock.
    fn rebuild(&self, w: &mut Writer) {
        // Only writers change `rebuilds`, under the mutex: it is even here.
        let seq = self.rebuilds.fetch_add(1, Ordering::Acquire);
        fence(Ordering::Release);
        let entries: Vec<u64> = self
            .table
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .filter(|&e| e != EMPTY && e != TOMB)
            .collect();
        for e in self.table.iter() {
            e.store(EMPTY, Ordering::Relaxed);
        }
        w.live = 0;
        w.tombs = 0;
        for e in entries {
            let key = self.slot_key(e as u32 - 1);
            self.place(w, self.hash(&key), e);
        }
        self.rebuilds.store(seq + 2, Ordering::Release);
    }

    pub(crate) fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        let key = key.get(..self.key_size).ok_or(MapError::BadKey)?;
        let hash = self.hash(key);
        let mut w = self.lock();
        let (i, s) = self.find(key, hash).ok_or(MapError::NotFound)?;
        self.remove_at(&mut w, i);
        w.used[s as usize] = false;
        w.free.push(s);
        Ok(())
    }

    /// Present keys, in no particular order.
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        let w = self.lock();
        (0..self.max)
            .filter(|&s| w.used[s as usize])
            .map(|s| self.slot_key(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(key_size: u32, max: u32, lru: bool) -> HashMapImpl {
        HashMapImpl::new(key_size, 8, max, false, lru).unwrap()
    }

    fn key(i: u32, size: usize) -> Vec<u8> {
        let mut k = vec![0xa5; size];
        let b = i.to_le_bytes();
        let n = size.min(4);
        k[..n].copy_from_slice(&b[..n]);
        k[size - n..].copy_from_slice(&b[..n]);
        k
    }

    /// Churn (inserts and deletes well past the table size, so tombstones force rebuilds)
    /// against a model, for exact-tag and compared keys.
    #[test]
    fn churn_matches_a_model() {
        let mut rebuilds = 0;
        for key_size in [1, 4, 5, 8, 13, 64] {
            // Powers of two: a full map fills half the table, so tombstones pile up.
            let max = if key_size == 1 { 128 } else { 256 };
            let m = map(key_size, max, false);
            let mut model = std::collections::HashMap::new();
            let mut x = 0x1234_5678u64;
            for step in 0..20_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key((x % (max as u64 * 2)) as u32, key_size as usize);
                match x >> 60 {
                    0..=6 => {
                        let r = m.update(&k, &step.to_le_bytes(), UpdateFlag::Any);
                        if model.len() < max as usize || model.contains_key(&k) {
                            assert_eq!(r, Ok(()));
                            model.insert(k, step);
                        } else {
                            assert_eq!(r, Err(MapError::Full));
                        }
                    }
                    7..=12 => assert_eq!(m.delete(&k).is_ok(), model.remove(&k).is_some()),
                    _ => {
                        let got = m
                            .lookup(&k)
                            .map(|v| u64::from_le_bytes(v.try_into().unwrap()));
                        assert_eq!(got, model.get(&k).copied(), "key size {key_size}");
                    }
                }
                let w = m.lock();
                assert_eq!(w.live, model.len());
                assert!((w.live + w.tombs) * 4 <= m.table.len() * 3);
            }
            rebuilds += m.rebuilds.load(Ordering::Relaxed) / 2;
            let mut keys = m.keys();
            keys.sort();
            let mut want: Vec<_> = model.keys().cloned().collect();
            want.sort();
            assert_eq!(keys, want);
        }
        assert!(rebuilds > 0, "the churn never rebuilt the table");
    }

    #[test]
    fn a_rebuild_keeps_every_key_and_value() {
        let m = map(8, 64, false);
        for i in 0..64 {
            m.update(&key(i, 8), &(i as u64).to_le_bytes(), UpdateFlag::NoExist)
                .unwrap();
        }
        for i in (0..64).step_by(3) {
            m.delete(&key(i, 8)).unwrap();
        }
        let addr = m.lookup_addr(&key(1, 8));
        m.rebuild(&mut m.lock());
        assert_eq!(m.rebuilds.load(Ordering::Relaxed), 2);
        assert_eq!(m.lock().tombs, 0);
        assert_eq!(m.lookup_addr(&key(1, 8)), addr, "values do not move");
        for i in 0..64u32 {
            let want = (i % 3 != 0).then(|| (i as u64).to_le_bytes().to_vec());
            assert_eq!(m.lookup(&key(i, 8)), want);
        }
    }

    /// A large LRU map evicts from a bounded sample: keys in use are never the ones evicted,
    /// the map stays full and consistent, and every key it lists is found.
    #[test]
    fn large_lru_maps_keep_the_keys_in_use() {
        const MAX: u32 = 20_000;
        let m = map(8, MAX, true);
        let hot: Vec<u32> = (0..50).map(|i| i * 397).collect();
        for i in 0..3 * MAX {
            m.update(&key(i, 8), &(i as u64).to_le_bytes(), UpdateFlag::Any)
                .unwrap();
            if i >= hot[hot.len() - 1] {
                // Once they are all in, the hot keys are used after every insertion.
                for &h in &hot {
                    assert!(m.lookup(&key(h, 8)).is_some(), "hot key {h} evicted at {i}");
                }
            }
            assert!(m.lookup(&key(i, 8)).is_some(), "the key just inserted: {i}");
        }
        let keys = m.keys();
        assert_eq!(keys.len(), MAX as usize);
        for k in &keys {
            assert!(m.lookup(k).is_some());
        }
        // Mostly recent keys: the oldest third of the insertions (but the hot keys) is gone.
        let old = keys
            .iter()
            .map(|k| u32::from_le_bytes(k[..4].try_into().unwrap()))
            .filter(|&i| i < MAX && !hot.contains(&i))
            .count();
        assert_eq!(old, 0, "keys of the first {MAX} insertions still present");
    }

    #[test]
    fn lru_eviction_keeps_the_index_right() {
        let m = map(6, 16, true);
        for i in 0..1000u32 {
            m.update(&key(i, 6), &(i as u64).to_le_bytes(), UpdateFlag::Any)
                .unwrap();
            // The last 16 keys are present (`keys` stamps nothing).
            let mut keys = m.keys();
            keys.sort();
            let mut want: Vec<_> = (i.saturating_sub(15)..=i).map(|j| key(j, 6)).collect();
            want.sort();
            assert_eq!(keys, want, "after {i}");
        }
        // A lookup makes a key as recent as the last update: key 984 (the oldest) survives
        // the next insertion, 985 goes.
        m.lookup(&key(984, 6)).unwrap();
        m.update(&key(1000, 6), &[0; 8], UpdateFlag::Any).unwrap();
        assert!(m.lookup(&key(984, 6)).is_some());
        assert!(m.lookup(&key(985, 6)).is_none());
    }
}
