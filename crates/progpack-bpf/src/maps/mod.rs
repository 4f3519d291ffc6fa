//! eBPF maps: key/value stores shared by programs and the host, with the kernel's type ids and
//! update semantics.
//!
//! | kind | kernel id | key | value storage |
//! |---|---|---|---|
//! | [`MapKind::Hash`], [`MapKind::LruHash`] | 1, 9 | any size | one preallocated slot per entry |
//! | [`MapKind::Array`] | 2 | `u32` index | `max_entries` values, zeroed |
//! | [`MapKind::ProgArray`] | 3 | `u32` index | programs for `tail_call` |
//! | [`MapKind::PerCpuHash`], [`MapKind::LruPerCpuHash`] | 5, 10 | any size | one slot per entry and CPU |
//! | [`MapKind::PerCpuArray`] | 6 | `u32` index | one value per index and CPU |
//! | [`MapKind::RingBuf`] | 27 | none | a data area of `max_entries` bytes |
//!
//! "CPU" means host thread here ([`cpu`]). Values live in one arena per map, allocated at
//! creation and never moved: a pointer a program gets from `map_lookup_elem` stays inside the
//! map's region (an extra region of the programs that use the map, see [`crate::memory`]), so
//! both engines bounds-check it like the input memory.
//!
//! Programs name a map by a *handle* (what `lddw` with `src = 1` loads, [`Map::handle`]):
//! helpers resolve it among the maps of the running program's environment only.
//!
//! Thread safety: maps are `Send + Sync`; any number of threads may run programs over the
//! same maps while the host reads and updates them.

mod arena;
mod array;
pub mod cpu;
mod hash;
mod ringbuf;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use arena::MAX_ARENA_BYTES;

use crate::memory::Region;
use crate::BpfProgram;
use array::ArrayMap;
use hash::HashMapImpl;
use ringbuf::RingBuf;

/// A map type (the kernel's `enum bpf_map_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_PROG_ARRAY`.
    ProgArray,
    /// `BPF_MAP_TYPE_PERCPU_HASH`.
    PerCpuHash,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_LRU_PERCPU_HASH`.
    LruPerCpuHash,
    /// `BPF_MAP_TYPE_RINGBUF`.
    RingBuf,
}

impl MapKind {
    /// The kind with kernel type id `id`.
    pub fn from_id(id: u32) -> Option<MapKind> {
        Some(match id {
            1 => MapKind::Hash,
            2 => MapKind::Array,
            3 => MapKind::ProgArray,
            5 => MapKind::PerCpuHash,
            6 => MapKind::PerCpuArray,
            9 => MapKind::LruHash,
            10 => MapKind::LruPerCpuHash,
            27 => MapKind::RingBuf,
            _ => return None,
        })
    }

    /// The kernel type id.
    pub fn id(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::ProgArray => 3,
            MapKind::PerCpuHash => 5,
            MapKind::PerCpuArray => 6,
            MapKind::LruHash => 9,
            MapKind::LruPerCpuHash => 10,
            MapKind::RingBuf => 27,
        }
    }

    /// The kernel's name without the `BPF_MAP_TYPE_` prefix, lower case.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::ProgArray => "prog_array",
            MapKind::PerCpuHash => "percpu_hash",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::LruHash => "lru_hash",
            MapKind::LruPerCpuHash => "lru_percpu_hash",
            MapKind::RingBuf => "ringbuf",
        }
    }
}

/// What a map is: its kind and sizes (the fields of a kernel map definition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// The map type.
    pub kind: MapKind,
    /// Key size in bytes (4 for arrays, 0 for ring buffers).
    pub key_size: u32,
    /// Value size in bytes (0 for ring buffers).
    pub value_size: u32,
    /// Most entries (array length; ring buffer: data area bytes, a power of two).
    pub max_entries: u32,
    /// `map_flags` (kept, not interpreted).
    pub flags: u32,
}

/// Why a map operation failed. [`errno`](Self::errno) gives the kernel's error number that
/// helpers return (negated).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The definition is inconsistent (e.g. an array whose key is not 4 bytes).
    #[error("invalid map definition: {0}")]
    BadDef(&'static str),
    /// The map would need more memory than [`MAX_ARENA_BYTES`].
    #[error("map of {bytes} bytes is too large")]
    TooLarge {
        /// Bytes asked for (`u64::MAX`: overflow).
        bytes: u64,
    },
    /// A ring buffer size that is not a power of two of at least 8.
    #[error("ring buffer size {size} is not a power of two >= 8")]
    BadRingSize {
        /// The size.
        size: u32,
    },
    /// The key is shorter than the map's key size.
    #[error("key too short")]
    BadKey,
    /// The value is shorter than the map's value size.
    #[error("value too short")]
    BadValue,
    /// Unknown update flags.
    #[error("invalid update flags {0}")]
    BadFlags(u64),
    /// An array index out of range.
    #[error("index out of range")]
    IndexOutOfRange,
    /// `BPF_NOEXIST` and the key exists (or the map is an array).
    #[error("key exists")]
    Exists,
    /// `BPF_EXIST` or delete, and the key does not exist.
    #[error("no such key")]
    NotFound,
    /// The (non-LRU) hash map is full.
    #[error("map full")]
    Full,
    /// The operation does not apply to this kind of map.
    #[error("operation not supported by a {0} map")]
    Unsupported(&'static str),
}

impl MapError {
    /// The kernel errno for this error (positive).
    pub fn errno(&self) -> i64 {
        match self {
            MapError::Exists => 17,                          // EEXIST
            MapError::NotFound => 2,                         // ENOENT
            MapError::Full | MapError::IndexOutOfRange => 7, // E2BIG
            MapError::TooLarge { .. } => 12,                 // ENOMEM
            MapError::Unsupported(_) => 95,                  // EOPNOTSUPP
            _ => 22,                                         // EINVAL
        }
    }
}

/// The `flags` of `map_update_elem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateFlag {
    /// `BPF_ANY` (0): create or replace.
    Any,
    /// `BPF_NOEXIST` (1): create only.
    NoExist,
    /// `BPF_EXIST` (2): replace only.
    Exist,
}

impl UpdateFlag {
    /// The flag with value `v` (`BPF_F_LOCK` and others are not supported).
    pub fn from_u64(v: u64) -> Result<UpdateFlag, MapError> {
        match v {
            0 => Ok(UpdateFlag::Any),
            1 => Ok(UpdateFlag::NoExist),
            2 => Ok(UpdateFlag::Exist),
            _ => Err(MapError::BadFlags(v)),
        }
    }
}

enum Store {
    Array(ArrayMap),
    Hash(HashMapImpl),
    Ring(RingBuf),
    Progs(Mutex<Vec<Option<Weak<BpfProgram>>>>),
}

/// A map. Create with [`Map::new`]; share as `Arc<Map>` between programs and threads.
pub struct Map {
    id: u32,
    name: String,
    def: MapDef,
    read_only: bool,
    store: Store,
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("def", &self.def)
            .finish()
    }
}

/// Largest value of a per-CPU map (the kernel's limit too).
pub const MAX_PER_CPU_VALUE: u32 = 32 << 10;
/// Largest value of any other map (global data sections are one value).
pub const MAX_VALUE: u32 = 64 << 20;

/// High bits of every map handle (so that a handle is never a small integer or an address
/// of user space).
const HANDLE_TAG: u64 = 0xffff_fffe_0000_0000;

impl Map {
    /// Creates a map named `name` (for listings and ELF symbols) from `def`.
    pub fn new(name: &str, def: MapDef) -> Result<Arc<Map>, MapError> {
        Self::create(name, def, false)
    }

    /// Like [`new`](Self::new); programs may only read the values (`.rodata`).
    pub fn new_read_only(name: &str, def: MapDef) -> Result<Arc<Map>, MapError> {
        Self::create(name, def, true)
    }

    fn create(name: &str, def: MapDef, read_only: bool) -> Result<Arc<Map>, MapError> {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let per_cpu = matches!(
            def.kind,
            MapKind::PerCpuArray | MapKind::PerCpuHash | MapKind::LruPerCpuHash
        );
        let max_value = if per_cpu {
            MAX_PER_CPU_VALUE
        } else {
            MAX_VALUE
        };
        if def.value_size > max_value {
            return Err(MapError::BadDef("value too large"));
        }
        let store = match def.kind {
            MapKind::Array | MapKind::PerCpuArray => {
                if def.key_size != 4 {
                    return Err(MapError::BadDef("array keys are 4 bytes"));
                }
                if def.value_size == 0 {
                    return Err(MapError::BadDef("zero value size"));
                }
                Store::Array(ArrayMap::new(
                    def.value_size,
                    def.max_entries,
                    def.kind == MapKind::PerCpuArray,
                )?)
            }
            MapKind::Hash | MapKind::PerCpuHash | MapKind::LruHash | MapKind::LruPerCpuHash => {
                if def.key_size == 0 || def.value_size == 0 || def.key_size > 512 {
                    return Err(MapError::BadDef(
                        "hash keys are 1..=512 bytes, values not empty",
                    ));
                }
                Store::Hash(HashMapImpl::new(
                    def.key_size,
                    def.value_size,
                    def.max_entries,
                    matches!(def.kind, MapKind::PerCpuHash | MapKind::LruPerCpuHash),
                    matches!(def.kind, MapKind::LruHash | MapKind::LruPerCpuHash),
                )?)
            }
            MapKind::RingBuf => Store::Ring(RingBuf::new(def.max_entries)?),
            MapKind::ProgArray => {
                if def.key_size != 4 || def.value_size != 4 {
                    return Err(MapError::BadDef("prog_array keys and values are 4 bytes"));
                }
                if def.max_entries > 1 << 20 {
                    return Err(MapError::TooLarge {
                        bytes: def.max_entries as u64 * 8,
                    });
                }
                Store::Progs(Mutex::new(vec![None; def.max_entries as usize]))
            }
        };
        Ok(Arc::new(Map {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            def,
            read_only,
            store,
        }))
    }

    /// A process-unique id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// What programs pass to helpers to name this map (`lddw` with `src = 1`).
    pub fn handle(&self) -> u64 {
        HANDLE_TAG | self.id as u64
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition.
    pub fn def(&self) -> MapDef {
        self.def
    }

    /// The memory programs may access: the value arena (ring buffers: the data area).
    /// `None` for program arrays.
    pub fn region(&self) -> Option<Region> {
        let writable = !self.read_only;
        match &self.store {
            Store::Array(a) => Some(a.arena.region(writable)),
            Store::Hash(h) => Some(h.arena.region(writable)),
            Store::Ring(r) => Some(r.arena.region(true)),
            Store::Progs(_) => None,
        }
    }

    /// The value of `key` (per-CPU maps: the calling thread's).
    pub fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        match &self.store {
            Store::Array(a) => a.lookup(key),
            Store::Hash(h) => h.lookup(key),
            _ => None,
        }
    }

    /// The values of `key` on every CPU (one element for maps that are not per-CPU).
    pub fn lookup_per_cpu(&self, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        match &self.store {
            Store::Array(a) => a.lookup_all(key),
            Store::Hash(h) => h.lookup_all(key),
            _ => None,
        }
    }

    /// Address of the calling thread's value of `key`, for programs.
    pub(crate) fn lookup_addr(&self, key: &[u8]) -> Option<u64> {
        match &self.store {
            Store::Array(a) => a.lookup_addr(key),
            Store::Hash(h) => h.lookup_addr(key),
            _ => None,
        }
    }

    /// Sets the value of `key` (per-CPU maps: the calling thread's) with the kernel's flags
    /// semantics.
    pub fn update(&self, key: &[u8], value: &[u8], flag: UpdateFlag) -> Result<(), MapError> {
        match &self.store {
            Store::Array(a) => a.update(key, value, flag),
            Store::Hash(h) => h.update(key, value, flag),
            _ => Err(MapError::Unsupported(self.def.kind.name())),
        }
    }

    /// Deletes `key` (arrays: not supported, as in the kernel).
    pub fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        match &self.store {
            Store::Hash(h) => h.delete(key),
            Store::Array(_) => Err(MapError::BadDef("array elements cannot be deleted")),
            _ => Err(MapError::Unsupported(self.def.kind.name())),
        }
    }

    /// The keys present (arrays: every index), in no particular order.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        match &self.store {
            Store::Array(a) => a.keys(),
            Store::Hash(h) => h.keys(),
            _ => Vec::new(),
        }
    }

    /// Program arrays: puts `prog` at `index` (held weakly: the caller keeps it alive).
    pub fn set_program(&self, index: u32, prog: &Arc<BpfProgram>) -> Result<(), MapError> {
        let Store::Progs(p) = &self.store else {
            return Err(MapError::Unsupported(self.def.kind.name()));
        };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let slot = p.get_mut(index as usize).ok_or(MapError::IndexOutOfRange)?;
        *slot = Some(Arc::downgrade(prog));
        Ok(())
    }

    /// Program arrays: the program at `index`, if set and alive.
    pub fn program(&self, index: u32) -> Option<Arc<BpfProgram>> {
        let Store::Progs(p) = &self.store else {
            return None;
        };
        let p = p.lock().unwrap_or_else(|e| e.into_inner());
        p.get(index as usize)?.as_ref()?.upgrade()
    }

    /// Ring buffers: hands every submitted record to `f` in order and frees it; returns how
    /// many. Stops at the first record still reserved.
    pub fn consume(&self, f: impl FnMut(&[u8])) -> usize {
        match &self.store {
            Store::Ring(r) => r.consume(f),
            _ => 0,
        }
    }

    /// Ring buffers: the address of `len` newly reserved bytes.
    pub(crate) fn ring_reserve(&self, len: u64) -> Option<u64> {
        match &self.store {
            Store::Ring(r) => r.reserve(len),
            _ => None,
        }
    }

    /// Ring buffers: submits or discards the record at `addr`.
    pub(crate) fn ring_commit(&self, addr: u64, submit: bool) -> bool {
        match &self.store {
            Store::Ring(r) => r.commit(addr, submit),
            _ => false,
        }
    }

    /// Ring buffers: whether `addr` is in the data area.
    pub(crate) fn ring_contains(&self, addr: u64) -> bool {
        matches!(&self.store, Store::Ring(r) if r.contains(addr))
    }

    /// Ring buffers: copies `data` into a new record and submits it.
    pub fn ring_output(&self, data: &[u8]) -> bool {
        match &self.store {
            Store::Ring(r) => r.output(data),
            _ => false,
        }
    }

    /// Ring buffers: bytes reserved or not yet consumed.
    pub fn ring_pending(&self) -> u64 {
        match &self.store {
            Store::Ring(r) => r.pending_bytes(),
            _ => 0,
        }
    }

    /// Arrays: address of value 0 (global data sections).
    pub(crate) fn array_base(&self) -> Option<u64> {
        match &self.store {
            Store::Array(a) => Some(a.base()),
            _ => None,
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Map>();
};
