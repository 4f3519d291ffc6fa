//! A batch: many drafts laid out back to back in a pack, finalized with one backend write per
//! contiguous segment (usually one per pack).
//!
//! A segment reserves chunks ahead (a word of the bitmap at a random position, then growing
//! into the chunks right after it while they are free) and hands them to slots in order. Its
//! staging is a list of trap-filled heap blocks laid out like the chunks: each block starts
//! where the previous block's used part ends, so the segment's bytes are the blocks' used parts
//! in order, written with one `pwritev` (procmem) without first copying them into one buffer.
//! Blocks never move, so a slot's image keeps its address until the batch is finalized.
//!
//! A push touches only the batch: it bumps the segment, draws the image offset from the
//! batch's own generator (seeded from the thread's), and records a slot of a few integers.
//! Until it is finalized, a batch is a reservation: [`Stats`](crate::Stats) counts all its
//! chunks as cached (`chunks_cached`), and its slots become allocations and programs when
//! [`Batch::finalize`] makes them programs.
//!
//! Invariants: each packed segment covers chunks `first..next` of one pack, used by its slots
//! in order, and owns `next..end` (reserved, still traps) until finalize or drop gives them
//! back; every slot's chunks lie inside its segment; a slot's image lies inside one block;
//! the batch owns every slot's chunks until `finalize` turns them into programs (or drop frees
//! them, trap-filling first whatever a failed finalize wrote).

use crate::error::{Error, Result};
use crate::pack::{Pack, PackRef, RunStart};
use crate::program::Program;
use crate::run::LocalState;
use crate::shared::Shared;
use crate::span::{self, Span};
use crate::thread_cache;
use std::fmt;
use std::sync::Arc;

/// Many drafts finalized together. Create with [`Allocator::batch`](crate::Allocator::batch).
pub struct Batch {
    shared: Arc<Shared>,
    segments: Vec<Segment>,
    slots: Vec<Slot>,
    /// Slots that do not share a segment (larger than a pack, or aligned beyond a chunk): a
    /// span each, already counted as an allocation.
    alone: Vec<Option<Span>>,
    /// The batch's random numbers (image offsets, segment positions).
    rng: LocalState,
    /// Chunks of packed segments counted as cached in the counters.
    cached: usize,
    /// Names and unwind information given to slots (empty if none was).
    meta: crate::observe::BatchMeta,
}

/// A contiguous stretch of one pack (or the staging of one slot of its own).
struct Segment {
    /// The pack (`None`: the slot of its own [`Batch::alone`] at this index).
    pack: Option<Arc<Pack>>,
    /// First chunk (for `None`: the index into `alone`).
    first: usize,
    /// Next chunk to hand out.
    next: usize,
    /// One past the last reserved chunk.
    end: usize,
    /// Staging, in chunk order.
    blocks: Vec<Block>,
    /// Written by a finalize that then failed: trap-fill `first..next` before giving back.
    written: bool,
}

/// A staging block of a segment: covers chunks from `start`, trap-filled.
struct Block {
    start: usize,
    buf: Box<[u8]>,
}

/// One pushed image: where it is in its segment and block.
#[derive(Clone, Copy)]
struct Slot {
    seg: u32,
    block: u32,
    /// First chunk and chunk count (in the pack).
    first: u32,
    chunks: u32,
    /// Where the image starts in its chunks.
    at: u32,
    /// Where the image starts in its block.
    block_at: u32,
    len: usize,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("slots", &self.slots.len())
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// A freshly pushed slot: its address and writable image.
#[derive(Debug)]
pub struct SlotMut<'a> {
    /// Index of the slot (its position in [`Batch::finalize`]'s result).
    pub index: usize,
    /// Where the image will run.
    pub exec_addr: usize,
    /// The writable image, trap-filled.
    pub image: &'a mut [u8],
}

/// Chunks a segment grows by at a time when the pack has them free right after it.
const GROW_CHUNKS: usize = 1024;

/// A trap-filled buffer of `len` bytes, or [`Error::OutOfMemory`].
fn trap_buffer(len: usize) -> Result<Box<[u8]>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory(len))?;
    crate::arch::extend_traps(&mut buf, len);
    Ok(buf.into_boxed_slice())
}

impl Batch {
    pub(crate) fn new(shared: Arc<Shared>) -> Batch {
        let seed =
            thread_cache::with_state(&shared, |_, st| st.random()).unwrap_or_else(crate::run::seed);
        Batch {
            shared,
            segments: Vec::new(),
            slots: Vec::new(),
            alone: Vec::new(),
            rng: LocalState::new(seed, 0),
            cached: 0,
            meta: crate::observe::BatchMeta::default(),
        }
    }

    /// Reserves room for an image of `len` bytes aligned to `align`, right after the previous
    /// slot when the pack has room there (so the run stays one write).
    pub fn push(&mut self, len: usize, align: usize) -> Result<SlotMut<'_>> {
        let shared = &self.shared;
        if len.wrapping_sub(1) < shared.run_max_len
            && align.is_power_of_two()
            && align <= shared.config.chunk_size
        {
            // Small (as in `span::allocate`): no need for the full checks.
            let n = (len + shared.config.min_slack + shared.config.chunk_size - 1)
                >> shared.chunk_shift;
            return self.push_packed(n, len, align);
        }
        match span::request(shared, len, align)?.chunks {
            Some(n) if align <= shared.config.chunk_size => self.push_packed(n, len, align),
            _ => {
                let index = self.push_alone(len, align)?;
                Ok(self.slot_mut(index))
            }
        }
    }

    /// The handle of slot `index`, just pushed.
    fn slot_mut(&mut self, index: usize) -> SlotMut<'_> {
        let exec_addr = self.exec_addr(index).expect("just pushed");
        let image = self.image_mut(index).expect("just pushed");
        SlotMut {
            index,
            exec_addr,
            image,
        }
    }

    /// A slot of `n` chunks in the last segment, growing it or starting a new one; its handle.
    fn push_packed(&mut self, n: usize, len: usize, align: usize) -> Result<SlotMut<'_>> {
        let shift = self.shared.chunk_shift;
        if !self.last_has_room(n) {
            self.new_segment(n)?;
        }
        self.stage(n)?;
        let seg_index = self.segments.len() - 1;
        let seg = self.segments.last_mut().expect("a segment exists");
        let first = seg.next;
        seg.next += n;
        let block = seg.blocks.len() - 1;
        let last = &mut seg.blocks[block];
        let at = span::image_offset(&self.shared, &mut self.rng, n << shift, len, align);
        let block_at = ((first - last.start) << shift) + at;
        self.slots.push(Slot {
            seg: seg_index as u32,
            block: block as u32,
            first: first as u32,
            chunks: n as u32,
            at: at as u32,
            block_at: block_at as u32,
            len,
        });
        // The last segment has a pack: `last_has_room` refuses one without (a slot of its own),
        // and `new_segment` makes one with.
        let base = seg.pack.as_ref().map_or(0, |p| p.base);
        Ok(SlotMut {
            index: self.slots.len() - 1,
            exec_addr: base + (first << shift) + at,
            image: &mut last.buf[block_at..block_at + len],
        })
    }

    /// Makes sure the last segment's last block has staging for its next `n` chunks: a slot's
    /// image must lie in one block, so a new block starts there if the last one ends before the
    /// slot does.
    fn stage(&mut self, n: usize) -> Result<()> {
        let shift = self.shared.chunk_shift;
        let seg = self.segments.last_mut().expect("a segment exists");
        let first = seg.next;
        let in_last = seg
            .blocks
            .last()
            .is_some_and(|b| (first + n - b.start) << shift <= b.buf.len());
        if in_last {
            return Ok(());
        }
        // Staging for this slot and what is reserved after it, at most a growth step.
        let chunks = n.max((seg.end - first).min(GROW_CHUNKS));
        match trap_buffer(chunks << shift) {
            Ok(buf) => {
                seg.blocks.push(Block { start: first, buf });
                Ok(())
            }
            Err(e) => {
                if seg.blocks.is_empty() {
                    // A segment made for this slot: without it, it goes again.
                    let seg = self.segments.pop().expect("a segment exists");
                    self.give_back(seg, &[]);
                }
                Err(e)
            }
        }
    }

    /// True if the last segment has `n` chunks free after its used part, growing it into the
    /// chunks right after it if the pack has them.
    fn last_has_room(&mut self, n: usize) -> bool {
        let Some(seg) = self.segments.last_mut() else {
            return false;
        };
        let Some(pack) = &seg.pack else {
            return false;
        };
        if seg.next + n <= seg.end {
            return true;
        }
        // A bigger step first (fewer blocks), then just what this slot needs.
        let need = seg.next + n - seg.end;
        for k in [need.max(GROW_CHUNKS), need.max(64), need] {
            if pack.take_at(seg.end, k, &self.shared.kept_empty) {
                seg.end += k;
                self.cached += k;
                span::count_cached(&self.shared, k as u64);
                return true;
            }
        }
        false
    }

    /// Starts a segment with room for at least `n` chunks.
    fn new_segment(&mut self, n: usize) -> Result<()> {
        let shared = &self.shared;
        let shard = thread_cache::with_state(shared, |local, _| local.shard).unwrap_or(0);
        let start = match shared.config.randomize {
            true => RunStart::Random(self.rng.random()),
            false => RunStart::First,
        };
        let (pack, first, got) = if n <= shared.run_chunks {
            shared.take_run(shard, n, start)?
        } else {
            let (pack, first) = shared.take_span(shard, n, 1)?;
            (pack, first, n)
        };
        self.cached += got;
        span::count_cached(shared, got as u64);
        self.segments.push(Segment {
            pack: Some(pack),
            first,
            next: first,
            end: first + got,
            blocks: Vec::new(),
            written: false,
        });
        Ok(())
    }

    /// A slot that does not share a segment: larger than a pack, or aligned beyond a chunk.
    fn push_alone(&mut self, len: usize, align: usize) -> Result<usize> {
        let fresh = span::allocate(&self.shared, len, align)?;
        let buf = trap_buffer(len)?;
        self.segments.push(Segment {
            pack: None,
            first: self.alone.len(),
            next: 0,
            end: 0,
            blocks: vec![Block { start: 0, buf }],
            written: false,
        });
        let at = fresh.span.image_at();
        self.alone.push(Some(fresh.span));
        self.slots.push(Slot {
            seg: (self.segments.len() - 1) as u32,
            block: 0,
            first: 0,
            chunks: 0,
            at: at as u32,
            block_at: 0,
            len,
        });
        Ok(self.slots.len() - 1)
    }

    /// [`push`](Self::push), naming the slot's program (see [`Batch::set_name`]).
    pub fn push_named(
        &mut self,
        len: usize,
        align: usize,
        name: impl AsRef<[u8]>,
    ) -> Result<SlotMut<'_>> {
        let name = name.as_ref();
        crate::observe::names::check(name)?;
        let index = self.push(len, align)?.index;
        self.meta.extra(index).set_name(name);
        Ok(self.slot_mut(index))
    }

    /// Names the program slot `index` will become, as
    /// [`Draft::set_name`](crate::Draft::set_name) does for a draft.
    pub fn set_name(&mut self, index: usize, name: impl AsRef<[u8]>) -> Result<()> {
        let name = name.as_ref();
        self.slot_len(index)?;
        crate::observe::names::check(name)?;
        self.meta.extra(index).set_name(name);
        Ok(())
    }

    /// Gives slot `index`'s code unwind information, as
    /// [`Draft::set_eh_frame`](crate::Draft::set_eh_frame) does for a draft (FDE initial
    /// locations are offsets from the slot's image).
    pub fn set_eh_frame(&mut self, index: usize, eh_frame: &[u8]) -> Result<()> {
        let frames = crate::observe::Frames::parse(eh_frame, self.slot_len(index)?)?;
        self.meta.extra(index).set_frames(frames);
        Ok(())
    }

    /// The image length of slot `index`, or [`Error::NoSuchSlot`].
    fn slot_len(&self, index: usize) -> Result<usize> {
        self.slots
            .get(index)
            .map(|s| s.len)
            .ok_or(Error::NoSuchSlot {
                index,
                slots: self.slots.len(),
            })
    }

    /// Number of slots pushed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of backend writes [`finalize`](Self::finalize) will make.
    pub fn writes(&self) -> usize {
        self.segments.len()
    }

    /// Where slot `index` will run, or `None` if there is no such slot.
    pub fn exec_addr(&self, index: usize) -> Option<usize> {
        let s = self.slots.get(index)?;
        let seg = &self.segments[s.seg as usize];
        Some(match &seg.pack {
            Some(pack) => pack.base + (s.first as usize * pack.chunk_size) + s.at as usize,
            None => self.alone[seg.first].as_ref()?.exec_addr(),
        })
    }

    /// The writable image of slot `index`, or `None` if there is no such slot.
    pub fn image_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let s = *self.slots.get(index)?;
        let at = s.block_at as usize;
        Some(&mut self.segments[s.seg as usize].blocks[s.block as usize].buf[at..at + s.len])
    }

    /// Places every image with one backend write per segment, then syncs the instruction
    /// cache, and returns the programs in push order. All or nothing: if a write fails, the
    /// segments written so far are trap-filled, every slot's chunks are freed, and the error
    /// is returned.
    pub fn finalize(mut self) -> Result<Vec<Program>> {
        let shift = self.shared.chunk_shift;
        for seg in &mut self.segments {
            let Some(pack) = &seg.pack else {
                // A slot of its own: its span writes its image.
                let span = self.alone[seg.first].as_mut().expect("each slot once");
                span.place(&seg.blocks[0].buf)?;
                continue;
            };
            if seg.next == seg.first {
                continue;
            }
            // Each block's used part runs up to the next block's start, the last one up to
            // `next`.
            let parts: Vec<&[u8]> = seg
                .blocks
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    let until = seg.blocks.get(k + 1).map_or(seg.next, |nb| nb.start);
                    &b.buf[..(until - b.start) << shift]
                })
                .collect();
            let at = seg.first << shift;
            // Marked before writing: a write that fails half way must be trap-filled.
            seg.written = true;
            pack.write_parts(at, &parts)?;
            crate::arch::sync_icache(pack.base + at, (seg.next - seg.first) << shift)?;
        }
        // Every slot becomes a program: the packed ones leave the batch's reservation.
        let slots = std::mem::take(&mut self.slots);
        let (mut packed, mut chunks, mut requested) = (0u64, 0usize, 0u64);
        let mut programs = Vec::with_capacity(slots.len());
        for s in &slots {
            let seg = &self.segments[s.seg as usize];
            let mut span = match &seg.pack {
                Some(pack) => {
                    packed += 1;
                    chunks += s.chunks as usize;
                    requested += s.len as u64;
                    let start = ((s.first as usize) << pack.chunk_shift) + s.at as usize;
                    // SAFETY: the slot's chunks were taken by this batch and pass to the span.
                    #[allow(unsafe_code)]
                    let pack = unsafe { PackRef::new(pack) };
                    Span::new(pack, start, s.chunks as usize, s.len)
                }
                None => self.alone[seg.first].take().expect("each slot once"),
            };
            span.mark_written(true);
            span.mark_program();
            programs.push(Program::new(span));
        }
        // The programs own the slots' chunks now: what drop gives back is the unused reserve.
        for seg in &mut self.segments {
            seg.first = seg.next;
            seg.written = false;
        }
        self.cached -= chunks;
        span::count_batch(&self.shared, packed, requested, chunks, slots.len());
        if !self.meta.is_empty() || self.shared.announces() {
            // Named slots, or the allocator announces its code.
            crate::program::announce(&mut programs, Some(&mut self.meta))?;
        }
        Ok(programs)
    }

    /// Gives a packed segment's chunks back (trap-filling first what a failed finalize wrote)
    /// and ends its reservation. `slots` are the segment's slots, for a fill that must be
    /// retried slot by slot.
    fn give_back(&mut self, seg: Segment, slots: &[Slot]) {
        let Some(pack) = seg.pack else {
            return;
        };
        let shift = self.shared.chunk_shift;
        let (first, next, end) = (seg.first, seg.next, seg.end);
        let n = end - first;
        self.cached -= n;
        span::count_cached(&self.shared, (n as u64).wrapping_neg());
        if seg.written
            && pack
                .fill_traps(first << shift, (next - first) << shift)
                .is_err()
        {
            // One fill for the segment failed: each slot tries again, and only a slot whose
            // fill fails too keeps its chunks for good (never reused with code in them).
            for s in slots {
                let (f, c) = (s.first as usize, s.chunks as usize);
                let at = (f << shift) + s.at as usize;
                if pack.fill_traps(at, s.len).is_ok() {
                    pack.give_back(f, c);
                } else {
                    pack.quarantine_chunks(c);
                }
            }
            pack.give_back(next, end - next);
            return;
        }
        pack.give_back(first, end - first);
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The reserved chunks and the slots' chunks go back (slots of their own are spans and
        // go back when `alone` drops).
        let slots = std::mem::take(&mut self.slots);
        for (i, seg) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let mine: Vec<Slot> = if seg.written {
                slots
                    .iter()
                    .filter(|s| s.seg as usize == i)
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            self.give_back(seg, &mine);
        }
    }
}
