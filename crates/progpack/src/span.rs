//! A span — the chunks (or the dedicated mapping) that one draft, batch slot or program owns —
//! and the per-program hot path: how a span is carved from the thread's run, how its image is
//! placed, and how it is freed. Everything a small program costs is in this file.
//!
//! | step | what it does | cost (64 B program, x86-64) |
//! |---|---|---|
//! | [`allocate`] | checks the request; finds the thread's state (one thread-local read and compare); bumps the run's next chunk; draws the image offset (multiply-shift, no division); carves the image from the run's staging block (or, on persistent `dualmap`, hands out the span's bytes of the alias) | about 100 instructions; no locked instruction on `dualmap`, one on procmem (the staging block's count) |
//! | the JIT writes | into the staging block: ordinary heap memory, never executable | the copy |
//! | [`Span::place`] | one backend write of the image bytes only (free chunks already hold traps); the instruction-cache sync; one counter | dualmap: a `memcpy` to the alias; procmem: one `pwrite` |
//! | free ([`Span`]'s `Drop`) | trap-fills the bytes that were written; clears the span's bits under the pack's lock (a word or two, no scan) and counts the free there | dualmap: a `memset`; procmem: one `pwritev` |
//!
//! In all, a load (draft, 64-byte copy, finalize) is 194 instructions and a free 165 on
//! `dualmap`, counted by `progpack bench --only count` under callgrind (see BENCHMARKS.md,
//! which records the last measurement); a run of the bench after a change to this file keeps
//! the figures honest. The span itself is two words (see [`Span`]), so a `Program` is too.
//!
//! What stays off the hot path: a new run (every `run_chunks` programs: one pack lock, and a
//! staging block allocated and trap-filled), a request larger than a whole run or aligned
//! beyond a chunk (first fit under the locks, with an image of its own), a program larger than
//! a pack (a mapping of its own), the first use of an allocator by a thread (registration), a
//! fork child's first use (the parent's runs are dropped, the generator reseeded), and naming
//! and announcing programs (`crate::observe`: a finalize in place never has anything to
//! announce, since packs that announce every program hand out no image in place and a draft
//! being named leaves its place; a finalize that writes looks at the pack's side table; a free
//! tests the span's `ANNOUNCED` bit, set where a record is made).
//!
//! Invariants: while a span lives its chunks' bits are set. When it is dropped the bytes it
//! wrote are traps again before its bits are cleared; if the trap fill fails the chunks are
//! quarantined (never reused) rather than freed with code in them.

use crate::backend::Mapping;
use crate::error::{Error, Result};
use crate::pack::{Pack, PackRef, RunStart};
use crate::run::{Local, LocalState};
use crate::shared::Shared;
use crate::staging::{Block, Image};
use crate::thread_cache;
use std::sync::Arc;

/// Chunks owned by one draft, batch slot or program (a dedicated mapping is a pack of one
/// chunk), and where in them the image lies. See the module docs for the drop contract.
///
/// Two words (a [`Program`](crate::Program) is one span): programs are kept by the thousand,
/// and a handle that fits fewer cache lines and pages is cheaper to keep and to walk.
///
/// The chunk count is not stored whole: a span in a pack has the chunks the allocator takes
/// for its image's length ([`Pack::chunks_for`]: `len + min_slack` rounded up to chunks), plus
/// one if [`EXTRA`] says so (an image shrunk in place whose offset needs a chunk more than its
/// new length does). A dedicated mapping is one chunk.
#[derive(Debug)]
pub(crate) struct Span {
    /// The pack (no count of its own: the pack keeps itself while the span owns chunks).
    pack: PackRef,
    /// The image's offset in the pack (bits below [`FLAG_SHIFT`]); the flags [`WRITTEN`],
    /// [`PROGRAM`], [`PATCHED`] and [`ANNOUNCED`]; from [`LEN_SHIFT`] the image's length, or
    /// [`LEN_IN_PACK`] for a dedicated mapping's image too long for the field (its pack keeps
    /// the length); and [`EXTRA`].
    ///
    /// The image starts less than a chunk into the span, so the span's first chunk is the
    /// offset shifted by the pack's chunk shift (0 in a dedicated mapping, whose shift is
    /// larger than any offset). The length is the bytes asked for, and the bytes trap-filled
    /// on drop once written.
    word: u64,
}

/// Where the flags start in [`Span::word`]: offsets in a pack are below this (`Config`
/// allows packs of at most 256 MiB).
const FLAG_SHIFT: u32 = 28;
/// The offset's bits of [`Span::word`].
const START: u64 = (1 << FLAG_SHIFT) - 1;
/// The image's bytes may hold code: trap-fill them on drop. (The first flag: `from_run` sets
/// it by shifting a `bool`.)
const WRITTEN: u64 = 1 << FLAG_SHIFT;
/// A finalized program (for statistics).
const PROGRAM: u64 = 2 << FLAG_SHIFT;
/// A live patch made a site of one of its instructions (see `patch::sites`): the program
/// forgets its sites when dropped.
const PATCHED: u64 = 4 << FLAG_SHIFT;
/// The span (a draft being named, or a program) has a record in its pack's side table: its
/// free retires it. Set on the cold paths that make records, so that a free tests one bit.
const ANNOUNCED: u64 = 8 << FLAG_SHIFT;
/// All the flags.
const FLAGS: u64 = 15 << FLAG_SHIFT;
/// Where the length starts in [`Span::word`] (31 bits, below [`EXTRA`]).
const LEN_SHIFT: u32 = 32;
/// The length field of a dedicated mapping's image too long for it (an image in a pack is
/// never this long).
const LEN_IN_PACK: u64 = (1 << 31) - 1;
/// The span has one chunk more than [`Pack::chunks_for`] its length.
const EXTRA: u64 = 1 << 63;

/// A span just allocated, and its writable image.
#[derive(Debug)]
pub(crate) struct Fresh {
    pub(crate) span: Span,
    pub(crate) image: Image,
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
    let too_large = || Error::TooLarge {
        len,
        max: config.max_len,
    };
    if len > config.max_len {
        return Err(too_large());
    }
    if !align.is_power_of_two() || align > shared.max_align {
        return Err(Error::BadAlign {
            align,
            max: shared.max_align,
        });
    }
    let bytes = len
        .checked_add(config.min_slack)
        .and_then(|n| n.checked_next_multiple_of(config.chunk_size))
        .ok_or_else(too_large)?;
    if bytes > config.pack_size {
        let bytes = bytes
            .checked_next_multiple_of(crate::backend::sys::page_size())
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
/// randomization is off or there is no slack (no random number is drawn then).
#[inline(always)]
pub(crate) fn image_offset(
    shared: &Shared,
    st: &mut LocalState,
    span: usize,
    len: usize,
    align: usize,
) -> usize {
    let hole = (span - len).min(shared.config.chunk_size - 1);
    if hole == 0 || !shared.config.randomize {
        return 0;
    }
    // Multiply-shift maps the high 32 random bits onto 0..=hole without a division.
    let r = ((st.random() >> 32) * (hole as u64 + 1)) >> 32;
    r as usize & !(align.max(shared.entry_align) - 1)
}

/// Allocates a span for an image of `len` bytes aligned to `align`: from the calling thread's
/// run when the request is small, else by the slow paths.
#[inline(always)]
pub(crate) fn allocate(shared: &Arc<Shared>, len: usize, align: usize) -> Result<Fresh> {
    // One compare says whether the thread's run can serve it: `len` in 1..=run_max_len (the
    // wrapping subtraction sends 0 far above) and `align` a power of two up to a chunk.
    if len.wrapping_sub(1) < shared.run_max_len
        && align.is_power_of_two()
        && align <= shared.config.chunk_size
    {
        let n =
            (len + shared.config.min_slack + shared.config.chunk_size - 1) >> shared.chunk_shift;
        // SAFETY: `shared` is held by the caller for the whole call; the references do not
        // leave `from_run`, which reaches no thread-local state (a new run comes from the
        // shared lists).
        #[allow(unsafe_code)]
        if let Some((local, st)) = unsafe { thread_cache::current(shared) } {
            return from_run(shared, local, st, n, len, align);
        }
    }
    allocate_slow(shared, len, align)
}

/// Everything [`allocate`] does not do inline: a thread's first use, large or aligned
/// requests, bad input.
#[cold]
#[inline(never)]
fn allocate_slow(shared: &Arc<Shared>, len: usize, align: usize) -> Result<Fresh> {
    if len.wrapping_sub(1) < shared.run_max_len
        && align.is_power_of_two()
        && align <= shared.config.chunk_size
    {
        // Only here: `len` is small, so this cannot overflow.
        let n =
            (len + shared.config.min_slack + shared.config.chunk_size - 1) >> shared.chunk_shift;
        if let Some(fresh) = thread_cache::with_state(shared, |local, st| {
            from_run(shared, local, st, n, len, align)
        }) {
            return fresh;
        }
    }
    slow_path(shared, request(shared, len, align)?, len, align)
}

/// The fast path: bump the thread's run.
#[inline(always)]
fn from_run(
    shared: &Arc<Shared>,
    local: &Local,
    st: &mut LocalState,
    n: usize,
    len: usize,
    align: usize,
) -> Result<Fresh> {
    let offset = image_offset(shared, st, n << shared.chunk_shift, len, align);
    let run = match &mut st.run {
        Some(run) if run.left() >= n => run,
        _ => refill(shared, local, st, n)?,
    };
    let (first, image, in_alias) = run.hand_out(n, shared.chunk_shift, offset, len);
    // SAFETY: chunks `first..first + n` were just handed out to this span, which gives them
    // back (dropping) through this reference.
    #[allow(unsafe_code)]
    let pack = unsafe { PackRef::new(&run.pack) };
    local.made.cached.add((n as u64).wrapping_neg());
    local.made.spans.add(1);
    local.made.requested.add(len as u64);
    let mut span = Span::new(pack, (first << shared.chunk_shift) + offset, n, len);
    // An image in the alias: the user writes straight into the pack's chunks, which must be
    // trap-filled when freed. (`WRITTEN` is bit `FLAG_SHIFT`: no branch.)
    span.word |= u64::from(in_alias) << FLAG_SHIFT;
    Ok(Fresh { span, image })
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
    let mut previous = None;
    let emptied = st.run.take().and_then(|old| {
        local.made.cached.add((old.left() as u64).wrapping_neg());
        let crate::run::Run {
            pack,
            next,
            end,
            block,
            ..
        } = old;
        st.spare = Some(block);
        previous = Some((Arc::as_ptr(&pack) as usize, next));
        pack.give_back_quietly(next, end - next).then_some(pack)
    });
    let start = match (shared.config.randomize, previous) {
        (false, _) => RunStart::First,
        (true, Some((pack, next))) if !shared.config.scatter_runs => RunStart::After {
            pack,
            next,
            r: st.random(),
        },
        (true, _) => RunStart::Random(st.random()),
    };
    let taken = shared.take_run(local.shard, n, start);
    if let Some(pack) = emptied {
        pack.became_empty();
    }
    let (pack, first, len) = taken?;
    // The old run's staging block serves again when no image of it is left (the usual case
    // for a thread that finalizes what it drafts).
    let bytes = len << shared.chunk_shift;
    let spare = st.spare.take().and_then(|mut b| {
        // `get_mut` (an acquire) proves no image of it is left anywhere.
        (Arc::get_mut(&mut b).is_some() && b.len() >= bytes).then_some(b)
    });
    let block = match spare {
        Some(b) => b,
        None => match Block::new(shared.run_chunks << shared.chunk_shift) {
            Ok(block) => block,
            Err(e) => {
                pack.give_back(first, len);
                return Err(e);
            }
        },
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
    let mut fallback = LocalState::new(crate::run::seed(), 0);
    let mut image = None;
    let shard = thread_cache::with_state(shared, |local, st| {
        fallback.rng = st.random() | 1;
        image = Some(Block::image(len, &mut st.slow_spare));
        local.shard
    })
    .unwrap_or(0);
    // A thread without state here (its teardown) gets a buffer of its own.
    let image = image.unwrap_or_else(|| Block::image(len, &mut None))?;
    let span = match req.chunks {
        Some(n) => {
            let step = (align >> shared.chunk_shift).max(1);
            let (pack, first) = shared.take_span(shard, n, step)?;
            let offset = image_offset(shared, &mut fallback, req.bytes, len, align);
            // SAFETY: the chunks were just taken for this span.
            #[allow(unsafe_code)]
            let pack = unsafe { PackRef::new(&pack) };
            Span::new(pack, (first << shared.chunk_shift) + offset, n, len)
        }
        None => {
            let pack = shared.map_dedicated(req.bytes)?;
            let offset = image_offset(shared, &mut fallback, pack.region.len(), len, align);
            // SAFETY: a dedicated pack's one chunk is owned from its making, by this span.
            #[allow(unsafe_code)]
            let pack = unsafe { PackRef::new(&pack) };
            Span::dedicated(pack, offset, len)
        }
    };
    count_made(shared, len);
    Ok(Fresh { span, image })
}

/// Counts `delta` (wrapping) chunks reserved ahead, by a batch, in the calling thread's
/// counters.
pub(crate) fn count_cached(shared: &Arc<Shared>, delta: u64) {
    if thread_cache::with_state(shared, |local, _| local.made.cached.add(delta)).is_none() {
        let mut r = shared.retired();
        r.cached = r.cached.wrapping_add(delta);
    }
}

/// Counts a finalized batch in the calling thread's counters: `spans` spans of `requested`
/// bytes made from `chunks` chunks of its reservation, and `programs` programs (its slots of
/// their own were counted as spans when they were allocated).
pub(crate) fn count_batch(
    shared: &Arc<Shared>,
    spans: u64,
    requested: u64,
    chunks: usize,
    programs: usize,
) {
    let counted = thread_cache::with_state(shared, |local, _| {
        local.made.spans.add(spans);
        local.made.requested.add(requested);
        local.made.cached.add((chunks as u64).wrapping_neg());
        local.made.programs.add(programs as u64);
    });
    if counted.is_none() {
        let mut r = shared.retired();
        r.spans = r.spans.wrapping_add(spans);
        r.requested = r.requested.wrapping_add(requested);
        r.cached = r.cached.wrapping_sub(chunks as u64);
        r.programs = r.programs.wrapping_add(programs as u64);
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
    /// A span of `chunks` chunks in a pack of many spans for an image of `len` bytes at offset
    /// `start` of the pack, less than a chunk into the span's first chunk. `chunks` is
    /// [`Pack::chunks_for`] `len` (checked in debug builds).
    #[inline(always)]
    pub(crate) fn new(pack: PackRef, start: usize, chunks: usize, len: usize) -> Span {
        debug_assert!(start as u64 <= START && (len as u64) < LEN_IN_PACK);
        let span = Span {
            pack,
            word: start as u64 | (len as u64) << LEN_SHIFT,
        };
        debug_assert_eq!(
            chunks,
            span.chunk_count(),
            "a span's chunks follow its length"
        );
        span
    }

    /// The span of a dedicated mapping (one chunk), for an image of `len` bytes at `at`: the
    /// pack keeps the length too (the span's field holds lengths below 2 GiB).
    fn dedicated(pack: PackRef, at: usize, len: usize) -> Span {
        pack.get().set_dedicated_len(len);
        let span = Span {
            pack,
            word: at as u64 | (len as u64).min(LEN_IN_PACK) << LEN_SHIFT,
        };
        debug_assert!(span.chunk_count() == 1 && span.len() == len);
        span
    }

    /// The image's length, from the word of a span in a pack (never [`LEN_IN_PACK`] there).
    #[inline(always)]
    fn packed_len(word: u64) -> usize {
        ((word >> LEN_SHIFT) & LEN_IN_PACK) as usize
    }

    /// The chunks of a span in `pack` (not a dedicated mapping) whose word is `word`.
    #[inline(always)]
    fn packed_chunks(pack: &Pack, word: u64) -> usize {
        pack.chunks_for(Self::packed_len(word)) + (word >> 63) as usize
    }

    /// The flag bits of [`word`](Self::word).
    #[inline(always)]
    fn flags(&self) -> u64 {
        self.word & FLAGS
    }

    /// The pack.
    #[inline]
    fn pack(&self) -> &Pack {
        self.pack.get()
    }

    /// The mapping the span lies in, and its offset there.
    #[inline]
    pub(crate) fn mapping(&self) -> (&dyn Mapping, usize) {
        (self.pack().region.mapping(), self.offset_in_pack())
    }

    /// The pack, and the offset there of the image's first byte (for live patching).
    pub(crate) fn code_in_pack(&self) -> (&Pack, usize) {
        (self.pack(), self.offset_in_pack() + self.image_at())
    }

    /// Records that a live patch may make sites in the image (see [`PATCHED`]), before it
    /// does.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn mark_patched(&mut self) {
        self.word |= PATCHED;
        self.pack().mark_patch_sites();
    }

    /// Offset of the span's first chunk in the pack.
    #[inline]
    fn offset_in_pack(&self) -> usize {
        self.first_chunk() * self.pack().chunk_size
    }

    /// Offset of the image's first byte in the pack.
    #[inline(always)]
    fn start(&self) -> usize {
        (self.word & START) as usize
    }

    /// Address of the span's first byte.
    #[inline]
    pub(crate) fn base(&self) -> usize {
        self.pack().base + self.offset_in_pack()
    }

    /// Where the image starts inside the span.
    #[inline]
    pub(crate) fn image_at(&self) -> usize {
        self.start() - self.offset_in_pack()
    }

    /// Address of the image's first byte: where the code runs.
    #[inline]
    pub(crate) fn exec_addr(&self) -> usize {
        self.pack().base + self.start()
    }

    /// Length of the image.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match Self::packed_len(self.word) {
            len if len as u64 == LEN_IN_PACK => self.pack().dedicated_len(),
            len => len,
        }
    }

    /// True if `next` starts right where this span ends, in the same pack.
    pub(crate) fn followed_by(&self, next: &Span) -> bool {
        !self.pack().dedicated
            && self.pack.same(&next.pack)
            && self.first_chunk() + self.chunk_count() == next.first_chunk()
    }

    /// True if the span has a mapping of its own.
    pub(crate) fn is_dedicated(&self) -> bool {
        self.pack().dedicated
    }

    /// Reads the image's bytes in place (a program's code).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.pack().region.bytes(self.start(), self.len())
    }

    /// Records that the image's bytes may now hold code (before the write: a write that fails
    /// half way must still be trap-filled), or, with `false`, that they hold traps again.
    #[inline]
    pub(crate) fn mark_written(&mut self, written: bool) {
        if written {
            self.word |= WRITTEN;
        } else {
            self.word &= !WRITTEN;
        }
    }

    /// Places `image` (the image's bytes) with one backend write, then makes it visible to
    /// instruction fetch (the kernel's text copy followed by the icache flush). Only the
    /// image's bytes are written: the rest of the span holds traps already.
    #[inline]
    pub(crate) fn place(&mut self, image: &[u8]) -> Result<()> {
        debug_assert_eq!(image.len(), self.len());
        self.word |= WRITTEN;
        let at = self.start();
        self.pack().write(at, image)?;
        crate::arch::sync_icache(self.pack().base + at, image.len())
    }

    /// Marks the span as a finalized program whose count the caller has already made (see
    /// [`count_programs`]).
    #[inline]
    pub(crate) fn mark_program(&mut self) {
        self.word |= PROGRAM;
    }

    /// Counts this span as a finalized program, in the calling thread's counters.
    #[inline]
    pub(crate) fn became_program(&mut self) {
        self.word |= PROGRAM;
        if !thread_cache::with_counters(self.pack().owner_id, |l| l.made.programs.add(1)) {
            self.pack().count_programs(1);
        }
    }

    /// Shortens the image to `len` bytes and gives back the chunks past its end (trap-filled
    /// first if the image lives in the pack and may have been written there). A dedicated
    /// mapping keeps its size.
    pub(crate) fn shrink(&mut self, len: usize) -> Result<()> {
        if self.flags() & WRITTEN != 0 && !self.pack().dedicated {
            // From the instruction boundary after the kept bytes (a whole pattern of traps).
            let end = self.start() + self.len();
            let at = (self.start() + len)
                .next_multiple_of(crate::arch::TRAP.len())
                .min(end);
            self.pack().fill_traps(at, end - at)?;
        }
        let less = self.len() - len;
        let chunks = self.chunk_count();
        let pack = self.pack();
        let mut word = self.word & (START | FLAGS) | (len as u64).min(LEN_IN_PACK) << LEN_SHIFT;
        let keep_chunks = if pack.dedicated {
            pack.set_dedicated_len(len);
            chunks
        } else {
            // What the new length takes, or one chunk more where the image's offset needs it
            // (never more than the span has: the image is shorter, at the same offset).
            let rule = pack.chunks_for(len);
            let keep = (self.image_at() + len).div_ceil(pack.chunk_size).max(rule);
            debug_assert!(keep <= rule + 1 && keep <= chunks);
            if keep > rule {
                word |= EXTRA;
            }
            keep
        };
        pack.shrink_span(self.first_chunk() + keep_chunks, chunks - keep_chunks, less);
        self.word = word;
        Ok(())
    }

    /// True if the span's program has a record in the side table (see [`ANNOUNCED`]).
    #[inline(always)]
    pub(crate) fn announced(&self) -> bool {
        self.word & ANNOUNCED != 0
    }

    /// Marks the span's program as recorded in the side table (named, or announced).
    pub(crate) fn mark_announced(&mut self) {
        self.word |= ANNOUNCED;
    }

    /// The pack's side table (names, announcements), if it has one.
    #[inline(always)]
    pub(crate) fn side(&self) -> Option<&crate::observe::Side> {
        self.pack().side.get()
    }

    /// The pack's side table, attached now if it has none (a draft being named).
    pub(crate) fn side_or_attach(&self) -> &crate::observe::Side {
        self.pack().side_or_attach()
    }

    /// The name given to the span's draft or program, or its default `jit_<addr>`.
    pub(crate) fn name(&self) -> std::borrow::Cow<'_, str> {
        crate::observe::name_at(self.side(), self.first_chunk(), self.exec_addr())
    }

    /// Calls `f` with the owner-only side data of the span's draft (name, unwind
    /// information), made if needed; the span is marked as recorded, so that its free retires
    /// the record.
    pub(crate) fn with_record_extra(&mut self, f: impl FnOnce(&mut crate::observe::Extra)) {
        self.mark_announced();
        let first = self.first_chunk();
        // `&mut self`: this is the draft's owner, as `with_extra_at` requires.
        crate::observe::with_extra_at(self.side_or_attach(), first, f);
    }

    /// Gives the span's program, being finalized, its record (with `given`, a batch slot's
    /// side data) if it is named or its allocator announces every program; `None` if it has
    /// none. The result says whether its unwind information fits its code. A span given a
    /// record is marked, so that its free retires the record, even if the result is an error.
    pub(crate) fn attach_record(
        &mut self,
        given: Option<Box<crate::observe::Extra>>,
    ) -> Option<Result<()>> {
        // `&mut self`: this is the owner of the program being finalized, as `attach` requires.
        let fits = crate::observe::attach(
            self.side(),
            || self.side_or_attach(),
            self.first_chunk(),
            self.len(),
            given,
        );
        if fits.is_some() {
            self.mark_announced();
        }
        fits
    }

    /// First chunk of the span in its pack.
    #[inline(always)]
    pub(crate) fn first_chunk(&self) -> usize {
        self.start() >> self.pack().chunk_shift
    }

    /// Chunks in the span.
    #[inline(always)]
    pub(crate) fn chunk_count(&self) -> usize {
        if self.pack().dedicated {
            return 1;
        }
        Self::packed_chunks(self.pack(), self.word)
    }

    /// The span's program stops being announced (its record retired, debugger and unwinder
    /// entries removed): the first step of a free, before the trap fill.
    #[inline(always)]
    pub(crate) fn unannounce(&self) {
        if self.word & ANNOUNCED != 0 {
            if let Some(side) = self.pack().side.get() {
                crate::observe::freeing(side, self.first_chunk(), self.chunk_count());
            }
        }
    }

    /// Makes the image, already written in place (through the pack's alias), visible to
    /// instruction fetch.
    #[inline]
    pub(crate) fn publish_in_place(&mut self) -> Result<()> {
        self.word |= WRITTEN;
        crate::arch::sync_icache(self.exec_addr(), self.len())
    }
}

impl Span {
    /// The rest of [`Drop`] for a span that is not written or whose pack has quirks: forgets
    /// its patch sites (before the traps: a trap here is no longer a live patch's), then
    /// trap-fills it if it is written in a pack. False if the fill failed (then quarantined).
    #[cold]
    fn drop_quirky(&mut self) -> bool {
        let (flags, len) = (self.flags(), self.len());
        if flags & PATCHED != 0 {
            #[cfg(target_arch = "x86_64")]
            crate::patch::trap_handler::forget_sites(self.exec_addr(), len);
        }
        let pack = self.pack();
        if flags & WRITTEN != 0 && !pack.dedicated {
            let at = self.start();
            if pack.fill_traps(at, len).is_err() {
                pack.quarantine(self.chunk_count(), len, flags & PROGRAM != 0);
                return false;
            }
            let _ = crate::arch::sync_icache(pack.base + at, len);
        }
        true
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.unannounce();
        let pack = self.pack.get();
        let word = self.word;
        // One test for the rare cases (a dedicated mapping, a pack with patch sites): they
        // take `drop_quirky`.
        if word & WRITTEN != 0 && !pack.has_quirks() {
            // A span in a pack: everything is in the word.
            let (at, len) = ((word & START) as usize, Self::packed_len(word));
            let (first, chunks) = (at >> pack.chunk_shift, Self::packed_chunks(pack, word));
            let program = word & PROGRAM != 0;
            // Traps first ("text invalidate"), bits cleared after: a chunk is never free while
            // it still holds code. Only a failed fill quarantines: the instruction-cache sync
            // after it was checked to work when the allocator was made. (A dedicated mapping
            // is unmapped instead, when the pack goes.)
            if pack.fill_traps(at, len).is_err() {
                pack.quarantine(chunks, len, program);
                return;
            }
            let _ = crate::arch::sync_icache(pack.base + at, len);
            pack.free_packed_span(first, chunks, len, program);
        } else {
            let (first, chunks, len) = (self.first_chunk(), self.chunk_count(), self.len());
            if self.drop_quirky() {
                let program = word & PROGRAM != 0;
                self.pack.get().free_span(first, chunks, len, program);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendChoice, Config};

    /// On an architecture whose instructions are 4 bytes (aarch64), a random image offset is a
    /// multiple of 4 even when the caller asks for alignment 1: checked here on any
    /// architecture by giving the allocator that instruction size.
    #[test]
    fn offsets_respect_the_instruction_size() {
        let config = Config::default()
            .min_slack(16)
            .backend(BackendChoice::Custom(Arc::new(
                crate::backend::NotSupported,
            )));
        let mut shared = Shared::new(config).expect("no mapping needed");
        Arc::get_mut(&mut shared).expect("only handle").entry_align = 4;
        let mut st = LocalState::new(0x1234_5678_9abc_def1, 0);
        let mut seen = std::collections::BTreeSet::new();
        for len in [1, 2, 3, 5, 33, 47] {
            for _ in 0..500 {
                let span = (len + 16usize).next_multiple_of(64);
                let off = image_offset(&shared, &mut st, span, len, 1);
                assert_eq!(off % 4, 0, "offset {off} for {len} bytes");
                assert!(off + len <= span);
                seen.insert(off);
            }
        }
        assert!(seen.len() > 4, "{seen:?}");
    }
}
