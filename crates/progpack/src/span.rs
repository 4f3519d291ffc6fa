//! A span — the chunks (or the dedicated mapping) that one draft, batch slot or program owns —
//! and the per-program hot path: how a span is carved from the thread's run, how its image is
//! placed, and how it is freed. Everything a small program costs is in this file.
//!
//! | step | what it does | cost (64 B program, x86-64) |
//! |---|---|---|
//! | [`allocate`] | checks the request; finds the thread's state (one thread-local read and compare); bumps the run's next chunk; draws the image offset (multiply-shift, no division); carves the image from the run's staging block | about 100 instructions, one atomic (the pack's reference count) and one more for the staging block |
//! | the JIT writes | into the staging block: ordinary heap memory, never executable | the copy |
//! | [`Span::place`] | one backend write of the image bytes only (free chunks already hold traps); the instruction-cache sync; one counter | dualmap: a `memcpy` to the alias; procmem: one `pwrite` |
//! | free ([`Span`]'s `Drop`) | trap-fills the bytes that were written; clears the span's bits under the pack's lock (a word or two, no scan) and counts the free there | dualmap: a `memset`; procmem: one `pwritev` |
//!
//! The figures are measured by `progpack bench --only count` under callgrind (see
//! BENCHMARKS.md, which records the last measurement); a run of the bench after a change to
//! this file keeps them honest.
//!
//! What stays off the hot path: a new run (every `run_chunks` programs: one pack lock, and a
//! staging block allocated and trap-filled), a request larger than a quarter run or aligned
//! beyond a chunk (first fit under the locks, with an image of its own), a program larger than
//! a pack (a mapping of its own), the first use of an allocator by a thread (registration), and
//! a fork child's first use (the parent's runs are dropped, the generator reseeded).
//!
//! Invariants: while a span lives its chunks' bits are set. When it is dropped the bytes it
//! wrote are traps again before its bits are cleared; if the trap fill fails the chunks are
//! quarantined (never reused) rather than freed with code in them.

use crate::backend::Mapping;
use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::region::Region;
use crate::run::{Local, LocalState};
use crate::shared::Shared;
use crate::staging::{Block, Image};
use crate::thread_cache;
use std::sync::Arc;

/// Where a span lives.
#[derive(Debug)]
pub(crate) enum Place {
    /// `chunks` chunks from `first` in a shared pack.
    Packed {
        pack: Arc<Pack>,
        first: usize,
        chunks: usize,
    },
    /// A mapping of its own (larger than a pack).
    Dedicated(Box<DedicatedSpan>),
}

/// A program larger than a pack: its mapping, and the allocator that counts it.
#[derive(Debug)]
pub(crate) struct DedicatedSpan {
    region: Region,
    shared: Arc<Shared>,
}

/// Chunks owned by one draft, batch slot or program. See the module docs for the drop contract.
#[derive(Debug)]
pub(crate) struct Span {
    pub(crate) place: Place,
    /// Bytes the user asked for (for statistics).
    requested: usize,
    /// Bytes `offset..offset + len` of the span may hold code: trap-filled when it is dropped.
    written: (usize, usize),
    /// A finalized program (for statistics).
    program: bool,
    /// Id of the allocator (for the thread's counters).
    shared_id: u64,
}

/// A span just allocated, its image, and where in the span the image starts.
#[derive(Debug)]
pub(crate) struct Fresh {
    pub(crate) span: Span,
    pub(crate) image: Image,
    pub(crate) offset: usize,
}

/// A checked request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// Chunks to take (or `None`: larger than a pack, a mapping of its own of `bytes`).
    pub(crate) chunks: Option<usize>,
    /// Bytes of the span (chunk multiple; page multiple for a dedicated mapping).
    pub(crate) bytes: usize,
}

/// Checks `len` and `align` and says what to take.
#[inline]
pub(crate) fn request(shared: &Shared, len: usize, align: usize) -> Result<Request> {
    let config = &shared.config;
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    let too_large = Error::TooLarge {
        len,
        max: config.max_len,
    };
    if len > config.max_len {
        return Err(too_large);
    }
    let page = crate::backend::sys::page_size();
    if !align.is_power_of_two() || align > page.max(config.chunk_size) {
        return Err(Error::BadAlign {
            align,
            max: page.max(config.chunk_size),
        });
    }
    let bytes = len
        .checked_add(config.min_slack)
        .and_then(|n| n.checked_next_multiple_of(config.chunk_size))
        .ok_or(too_large)?;
    if bytes > config.pack_size {
        let bytes = bytes
            .checked_next_multiple_of(page)
            .ok_or(Error::TooLarge {
                len,
                max: config.max_len,
            })?;
        return Ok(Request {
            chunks: None,
            bytes,
        });
    }
    Ok(Request {
        chunks: Some(bytes >> shared.chunk_shift),
        bytes,
    })
}

/// Where the image starts inside a span of `span` bytes: random in the slack the rounding left
/// (at most a chunk minus one), at a multiple of `align` and of the instruction size; 0 when
/// randomization is off.
#[inline]
pub(crate) fn image_offset(
    shared: &Shared,
    random: u64,
    span: usize,
    len: usize,
    align: usize,
) -> usize {
    if !shared.config.randomize {
        return 0;
    }
    let hole = (span - len).min(shared.config.chunk_size - 1);
    // Multiply-shift maps the high 32 random bits onto 0..=hole without a division.
    let r = ((random >> 32) * (hole as u64 + 1)) >> 32;
    r as usize & !(align.max(shared.entry_align) - 1)
}

/// Allocates a span for an image of `len` bytes aligned to `align`: from the calling thread's
/// run when the request is small, else by the slow paths.
#[inline]
pub(crate) fn allocate(shared: &Arc<Shared>, len: usize, align: usize) -> Result<Fresh> {
    let req = request(shared, len, align)?;
    if let Some(n) = req.chunks {
        if n <= shared.run_max_request && align <= shared.config.chunk_size {
            if let Some(fresh) = thread_cache::with_state(shared, |local, st| {
                from_run(shared, local, st, n, len, align)
            }) {
                return fresh;
            }
        }
    }
    slow_path(shared, req, len, align)
}

/// The fast path: bump the thread's run.
#[inline]
fn from_run(
    shared: &Arc<Shared>,
    local: &Local,
    st: &mut LocalState,
    n: usize,
    len: usize,
    align: usize,
) -> Result<Fresh> {
    let offset = image_offset(shared, st.random(), n << shared.chunk_shift, len, align);
    let run = match &mut st.run {
        Some(run) if run.left() >= n => run,
        _ => refill(shared, local, st, n)?,
    };
    let (first, image) = run.hand_out(n, shared.chunk_shift, offset, len);
    let pack = run.pack.clone();
    local.made.cached.add((n as u64).wrapping_neg());
    local.made.spans.add(1);
    local.made.requested.add(len as u64);
    Ok(Fresh {
        span: Span::packed(pack, first, n, len, shared.id),
        image,
        offset,
    })
}

/// Retires the thread's run (its unused chunks go back) and takes a new one of at least `n`.
#[cold]
fn refill<'a>(
    shared: &Arc<Shared>,
    local: &Local,
    st: &'a mut LocalState,
    n: usize,
) -> Result<&'a mut crate::run::Run> {
    // The old run's unused chunks go back first (the new run may start right there), but its
    // pack, if that leaves it empty, is released only after the new run is found in it or
    // elsewhere: no pack is unmapped and mapped again for a thread moving on.
    let emptied = st.run.take().and_then(|old| {
        local.made.cached.add((old.left() as u64).wrapping_neg());
        let crate::run::Run {
            pack, next, end, ..
        } = old;
        pack.give_back_quietly(next, end - next).then_some(pack)
    });
    let pick = shared.config.randomize.then(|| st.random());
    let taken = shared.take_run(local.shard, n, pick);
    if let Some(pack) = emptied {
        pack.became_empty();
    }
    let (pack, first, len) = taken?;
    let block = match Block::new(len << shared.chunk_shift) {
        Ok(block) => block,
        Err(e) => {
            pack.give_back(first, len);
            return Err(e);
        }
    };
    local.made.cached.add(len as u64);
    Ok(st.run.insert(crate::run::Run {
        pack,
        first,
        next: first,
        end: first + len,
        block,
    }))
}

/// Requests the thread's run does not serve: large, aligned beyond a chunk, larger than a pack,
/// or made while the thread is being torn down. The image gets a staging block of its own.
#[cold]
fn slow_path(shared: &Arc<Shared>, req: Request, len: usize, align: usize) -> Result<Fresh> {
    let (shard, random) = thread_cache::with_state(shared, |local, st| (local.shard, st.random()))
        .unwrap_or((0, crate::run::seed()));
    let (span, offset) = match req.chunks {
        Some(n) => {
            let step = (align >> shared.chunk_shift).max(1);
            let (pack, first) = shared.take_span(shard, n, step)?;
            let offset = image_offset(shared, random, req.bytes, len, align);
            (Span::packed(pack, first, n, len, shared.id), offset)
        }
        None => {
            let region = shared.map_dedicated(req.bytes)?;
            let offset = image_offset(shared, random, region.len(), len, align);
            let span = Span {
                place: Place::Dedicated(Box::new(DedicatedSpan {
                    region,
                    shared: shared.clone(),
                })),
                requested: len,
                written: (0, 0),
                program: false,
                shared_id: shared.id,
            };
            (span, offset)
        }
    };
    count_made(shared, len);
    let image = Block::image(len)?;
    Ok(Fresh {
        span,
        image,
        offset,
    })
}

/// Counts `delta` (wrapping) chunks reserved ahead, by a batch, in the calling thread's
/// counters.
pub(crate) fn count_cached(shared: &Arc<Shared>, delta: u64) {
    if thread_cache::with_state(shared, |local, _| local.made.cached.add(delta)).is_none() {
        let mut r = shared.retired();
        r.cached = r.cached.wrapping_add(delta);
    }
}

/// Counts a span made off the fast path.
pub(crate) fn count_made(shared: &Arc<Shared>, len: usize) {
    let counted = thread_cache::with_state(shared, |local, _| {
        local.made.spans.add(1);
        local.made.requested.add(len as u64);
    });
    if counted.is_none() {
        let mut r = shared.retired();
        r.spans = r.spans.wrapping_add(1);
        r.requested = r.requested.wrapping_add(len as u64);
    }
}

impl Span {
    /// A span of `chunks` chunks from `first` in `pack`, for `requested` bytes.
    pub(crate) fn packed(
        pack: Arc<Pack>,
        first: usize,
        chunks: usize,
        requested: usize,
        shared_id: u64,
    ) -> Span {
        Span {
            place: Place::Packed {
                pack,
                first,
                chunks,
            },
            requested,
            written: (0, 0),
            program: false,
            shared_id,
        }
    }

    /// The mapping the span lies in, and its offset there.
    #[inline]
    pub(crate) fn mapping(&self) -> (&dyn Mapping, usize) {
        match &self.place {
            Place::Packed { pack, first, .. } => (pack.region.mapping(), first * pack.chunk_size),
            Place::Dedicated(d) => (d.region.mapping(), 0),
        }
    }

    /// Address of the span's first byte.
    pub(crate) fn base(&self) -> usize {
        let (m, off) = self.mapping();
        m.base() + off
    }

    /// True if `next` starts right where this span ends, in the same pack.
    pub(crate) fn followed_by(&self, next: &Span) -> bool {
        match (&self.place, &next.place) {
            (
                Place::Packed {
                    pack: a,
                    first,
                    chunks,
                },
                Place::Packed {
                    pack: b, first: f, ..
                },
            ) => Arc::ptr_eq(a, b) && first + chunks == *f,
            _ => false,
        }
    }

    /// True if the span has a mapping of its own.
    pub(crate) fn is_dedicated(&self) -> bool {
        matches!(self.place, Place::Dedicated(_))
    }

    /// Reads `offset..offset + len` of the span in place (a program's own bytes).
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        match &self.place {
            Place::Packed { pack, first, .. } => {
                pack.region.bytes(first * pack.chunk_size + offset, len)
            }
            Place::Dedicated(d) => d.region.bytes(offset, len),
        }
    }

    /// Records that `offset..offset + len` of the span may now hold code (before the write:
    /// a write that fails half way must still be trap-filled).
    pub(crate) fn mark_written(&mut self, offset: usize, len: usize) {
        self.written = (offset, len);
    }

    /// Places `image` at `offset` of the span with one backend write, then makes it visible to
    /// instruction fetch (the kernel's text copy followed by the icache flush). Only the
    /// image's bytes are written: the rest of the span holds traps already.
    #[inline]
    pub(crate) fn place(&mut self, offset: usize, image: &[u8]) -> Result<()> {
        self.mark_written(offset, image.len());
        let (m, at) = self.mapping();
        m.write(at + offset, image)?;
        crate::arch::sync_icache(m.base() + at + offset, image.len())
    }

    /// Counts this span as a finalized program, in the calling thread's counters.
    #[inline]
    pub(crate) fn became_program(&mut self) {
        self.program = true;
        if thread_cache::with_counters(self.shared_id, |l| l.made.programs.add(1)) {
            return;
        }
        match &self.place {
            Place::Packed { pack, .. } => pack.count_programs(1),
            Place::Dedicated(d) => d.shared.count_programs_retired(1),
        }
    }

    /// Gives back the chunks past the first `keep` bytes (nothing was written yet: they never
    /// held code), for a request now `requested` bytes long. A dedicated mapping keeps its size.
    pub(crate) fn shrink(&mut self, keep: usize, requested: usize) {
        let less = self.requested - requested;
        self.requested = requested;
        match &mut self.place {
            Place::Packed {
                pack,
                first,
                chunks,
            } => {
                let keep_chunks = keep.div_ceil(pack.chunk_size).max(1).min(*chunks);
                pack.shrink_span(*first + keep_chunks, *chunks - keep_chunks, less);
                *chunks = keep_chunks;
            }
            Place::Dedicated(d) => d.shared.retired().freed.requested += less as u64,
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let (offset, len) = self.written;
        match &self.place {
            Place::Dedicated(d) => {
                // Unmapped (or re-reserved) when the region drops: no stale code can remain.
                d.shared.unmapped_dedicated(d.region.len());
                let mut r = d.shared.retired();
                r.freed.spans += 1;
                r.freed.requested += self.requested as u64;
                r.freed.programs += u64::from(self.program);
            }
            Place::Packed {
                pack,
                first,
                chunks,
            } => {
                if len > 0 {
                    // Traps first ("text invalidate"), bits cleared after: a chunk is never
                    // free while it still holds code. Only a failed fill quarantines: the
                    // instruction-cache sync after it was checked to work when the allocator
                    // was made.
                    let (m, at) = (pack.region.mapping(), first * pack.chunk_size + offset);
                    if m.fill_traps(at, len).is_err() {
                        pack.quarantine(*chunks, self.requested, self.program);
                        return;
                    }
                    let _ = crate::arch::sync_icache(m.base() + at, len);
                }
                pack.free_span(*first, *chunks, self.requested, self.program);
            }
        }
    }
}
