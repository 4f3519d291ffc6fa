//! The allocator: shards of packs, first-fit chunk allocation, dedicated mappings for large
//! programs, and the reserve of empty packs.
//!
//! Invariants:
//! - every listed pack is in exactly one shard's list; a pack leaves its list only when it is
//!   empty and not kept in reserve, and its mapping goes when the last reference goes;
//! - at most `reserve_packs` empty packs are kept (`kept_empty` counts them);
//! - locks: a shard's list lock may be taken before a pack's state lock, never after; no lock
//!   is held across a system call (mapping a pack, writing, trap-filling, unmapping).

use crate::allocation::{Allocation, Place};
use crate::backend::{sys, Backend};
use crate::code_range::CodeRangeSpace;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::region::Region;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One list of packs with its own lock.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    packs: Mutex<Vec<Arc<Pack>>>,
}

impl Shard {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<Pack>>> {
        self.packs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Live counters (relaxed atomics: statistics, not synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Live finalized programs.
    pub(crate) programs: AtomicUsize,
    /// Bytes requested by live allocations in dedicated mappings (packs count their own).
    pub(crate) dedicated_requested: AtomicUsize,
    /// Live dedicated mappings.
    pub(crate) dedicated: AtomicUsize,
    /// Bytes in live dedicated mappings.
    pub(crate) dedicated_bytes: AtomicUsize,
    /// Chunks never returned because trap-filling them failed.
    pub(crate) quarantined: AtomicUsize,
    /// Packs mapped over the allocator's life.
    pub(crate) packs_mapped: AtomicUsize,
    /// Packs released over the allocator's life.
    pub(crate) packs_released: AtomicUsize,
}

/// Shared state of an [`Allocator`](crate::Allocator).
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) backend_report: String,
    pub(crate) space: Option<Arc<CodeRangeSpace>>,
    pub(crate) shards: Box<[Shard]>,
    /// Empty packs currently kept in reserve.
    pub(crate) kept_empty: AtomicUsize,
    pub(crate) stats: Counters,
}

thread_local! {
    static HOME_SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from the standard library's randomly keyed hasher (OS randomness).
fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// xorshift64*: fast, per thread; enough to place images unpredictably.
fn random_below(bound: usize) -> usize {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % bound
    })
}

/// What [`Inner::allocate`] hands back: the chunks, and where in them the image starts.
pub(crate) struct Placed {
    pub(crate) alloc: Allocation,
    pub(crate) offset: usize,
}

impl Inner {
    pub(crate) fn new(config: Config) -> Result<Inner> {
        config.validate()?;
        let (backend, backend_report) = config.backend.resolve()?;
        let space = match config.code_range {
            Some(r) => Some(Arc::new(CodeRangeSpace::reserve(r, config.pack_size)?)),
            None => None,
        };
        let shards = (0..config.shards).map(|_| Shard::default()).collect();
        Ok(Inner {
            config,
            backend,
            backend_report,
            space,
            shards,
            kept_empty: AtomicUsize::new(0),
            stats: Counters::default(),
        })
    }

    /// Checks `len` and `align` and returns the span to allocate (bytes, chunk multiple).
    fn span_for(&self, len: usize, align: usize) -> Result<usize> {
        let chunk = self.config.chunk_size;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        if len > self.config.max_len {
            return Err(Error::TooLarge {
                len,
                max: self.config.max_len,
            });
        }
        if !align.is_power_of_two() || align > chunk {
            return Err(Error::BadAlign { align, chunk });
        }
        // Cannot overflow: len <= max_len, and max_len is far below usize::MAX in practice;
        // checked anyway so a huge configured max_len still gives an error, not a wrap.
        len.checked_add(self.config.slack())
            .and_then(|n| n.checked_next_multiple_of(chunk))
            .ok_or(Error::TooLarge {
                len,
                max: self.config.max_len,
            })
    }

    /// Where the image starts inside its span: random in the first chunk's slack, rounded
    /// down to `align` (the kernel's `bpf_jit_binary_pack_alloc`), or 0.
    fn image_offset(&self, span: usize, len: usize, align: usize) -> usize {
        if !self.config.randomize {
            return 0;
        }
        let hole = (span - len).min(self.config.chunk_size - 1);
        random_below(hole + 1) & !(align - 1)
    }

    /// Allocates chunks (or a dedicated mapping) for an image of `len` bytes.
    pub(crate) fn allocate(self: &Arc<Self>, len: usize, align: usize) -> Result<Placed> {
        let span = self.span_for(len, align)?;
        let place = if span > self.config.pack_size {
            let bytes = span
                .checked_next_multiple_of(sys::page_size())
                .ok_or(Error::TooLarge {
                    len,
                    max: self.config.max_len,
                })?;
            let region = Region::map(&*self.backend, self.space.as_ref(), bytes, sys::page_size())?;
            self.stats.dedicated.fetch_add(1, Ordering::Relaxed);
            self.stats
                .dedicated_requested
                .fetch_add(len, Ordering::Relaxed);
            self.stats
                .dedicated_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            Place::Dedicated(region)
        } else {
            let chunks = span / self.config.chunk_size;
            let (pack, first) = self.take_chunks(chunks, len)?;
            Place::Packed {
                pack,
                first,
                chunks,
            }
        };
        Ok(self.placed(place, len, align))
    }

    /// Tries to allocate the `chunks` chunks right after `pack`'s chunk `at` (used by batches
    /// to keep one contiguous run per pack).
    pub(crate) fn allocate_at(
        self: &Arc<Self>,
        pack: &Arc<Pack>,
        at: usize,
        len: usize,
        align: usize,
    ) -> Result<Option<Placed>> {
        let span = self.span_for(len, align)?;
        if span > self.config.pack_size {
            return Ok(None);
        }
        let chunks = span / self.config.chunk_size;
        if !pack.take_at(at, chunks, len, &self.kept_empty) {
            return Ok(None);
        }
        let place = Place::Packed {
            pack: pack.clone(),
            first: at,
            chunks,
        };
        Ok(Some(self.placed(place, len, align)))
    }

    fn placed(self: &Arc<Self>, place: Place, len: usize, align: usize) -> Placed {
        let alloc = Allocation {
            inner: self.clone(),
            place,
            requested: len,
            dirty: false,
        };
        let offset = self.image_offset(alloc.span(), len, align);
        Placed { alloc, offset }
    }

    /// First fit over this thread's shard, then (without waiting) the others, then a new pack.
    fn take_chunks(&self, chunks: usize, len: usize) -> Result<(Arc<Pack>, usize)> {
        let n = self.shards.len();
        let home = HOME_SHARD.with(|h| *h) % n;
        if let Some(found) = take_from(&self.shards[home].lock(), chunks, len, &self.kept_empty) {
            return Ok(found);
        }
        for k in 1..n {
            if let Ok(list) = self.shards[(home + k) % n].packs.try_lock() {
                if let Some(found) = take_from(&list, chunks, len, &self.kept_empty) {
                    return Ok(found);
                }
            }
        }
        // Map a new pack with no lock held, then publish it in the home shard.
        let region = Region::map(
            &*self.backend,
            self.space.as_ref(),
            self.config.pack_size,
            self.config.pack_size,
        )?;
        self.stats.packs_mapped.fetch_add(1, Ordering::Relaxed);
        let pack = Arc::new(Pack::new(region, home, self.config.chunk_size));
        let first = pack
            .take(chunks, len, &self.kept_empty)
            .expect("a new pack fits any packed request");
        self.shards[home].lock().push(pack.clone());
        Ok((pack, first))
    }

    /// Called when the last chunk of a listed pack was freed: keep it in reserve or release it.
    pub(crate) fn pack_became_empty(&self, pack: &Arc<Pack>) {
        let mut list = self.shards[pack.shard].lock();
        let mut st = pack.lock();
        if st.bitmap.count_ones() != 0 || !st.listed || st.kept_empty {
            return; // someone allocated from it meanwhile, or it was already handled
        }
        let reserve = self.config.reserve_packs;
        if self
            .kept_empty
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                (k < reserve).then_some(k + 1)
            })
            .is_ok()
        {
            st.kept_empty = true;
            return;
        }
        st.listed = false;
        drop(st);
        let removed = list
            .iter()
            .position(|p| Arc::ptr_eq(p, pack))
            .map(|i| list.remove(i));
        drop(list);
        self.stats.packs_released.fetch_add(1, Ordering::Relaxed);
        // `removed` drops here, outside the locks; the caller still holds a reference, so the
        // unmap happens when it lets go (also outside any lock).
        drop(removed);
    }

    /// All listed packs, in shard order.
    pub(crate) fn packs(&self) -> Vec<Arc<Pack>> {
        self.shards.iter().flat_map(|s| s.lock().clone()).collect()
    }
}

/// First fit over one shard's packs.
fn take_from(
    list: &[Arc<Pack>],
    chunks: usize,
    len: usize,
    reserve: &AtomicUsize,
) -> Option<(Arc<Pack>, usize)> {
    list.iter()
        .find_map(|p| p.take(chunks, len, reserve).map(|first| (p.clone(), first)))
}
