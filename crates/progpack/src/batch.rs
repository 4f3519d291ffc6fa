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
//! Invariants: each segment covers chunks `first..next` of one pack, used by its slots in
//! order, and owns `next..end` (reserved, still traps) until finalize or drop gives them back;
//! every slot's chunks lie inside its segment; a slot's image lies inside one block; the batch
//! owns every slot's chunks until `finalize` turns them into programs (or drop frees them).

use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::program::Program;
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
}

/// A contiguous stretch of one pack (or one dedicated mapping).
struct Segment {
    /// The pack (`None`: one dedicated slot).
    pack: Option<Arc<Pack>>,
    /// First chunk.
    first: usize,
    /// Next chunk to hand out.
    next: usize,
    /// One past the last reserved chunk.
    end: usize,
    /// Staging, in chunk order.
    blocks: Vec<Block>,
}

/// A staging block of a segment: covers chunks from `start`, trap-filled.
struct Block {
    start: usize,
    buf: Box<[u8]>,
}

struct Slot {
    span: Span,
    seg: usize,
    block: usize,
    /// Offset of the image inside the block.
    at: usize,
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
        Batch {
            shared,
            segments: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Reserves room for an image of `len` bytes aligned to `align`, right after the previous
    /// slot when the pack has room there (so the run stays one write).
    pub fn push(&mut self, len: usize, align: usize) -> Result<SlotMut<'_>> {
        let req = span::request(&self.shared, len, align)?;
        let (index, exec_addr) = match req.chunks {
            Some(n) if align <= self.shared.config.chunk_size => self.push_packed(n, len, align)?,
            _ => self.push_alone(len, align)?,
        };
        let s = &self.slots[index];
        let len = s.span.len();
        let image = &mut self.segments[s.seg].blocks[s.block].buf[s.at..s.at + len];
        Ok(SlotMut {
            index,
            exec_addr,
            image,
        })
    }

    /// A slot of `n` chunks in the last segment, growing it or starting a new one.
    fn push_packed(&mut self, n: usize, len: usize, align: usize) -> Result<(usize, usize)> {
        let shift = self.shared.chunk_shift;
        let fits = self.segments.last_mut().is_some_and(|seg| {
            let Some(pack) = &seg.pack else { return false };
            if seg.next + n <= seg.end {
                return true;
            }
            // Grow into the chunks right after the segment: a bigger step first (fewer
            // blocks), then just what this slot needs.
            let need = seg.next + n - seg.end;
            [need.max(GROW_CHUNKS), need.max(64), need]
                .into_iter()
                .any(|k| {
                    pack.take_at(seg.end, k, &self.shared.kept_empty) && {
                        seg.end += k;
                        span::count_cached(&self.shared, k as u64);
                        true
                    }
                })
        });
        if !fits {
            self.new_segment(n)?;
        }
        let seg_index = self.segments.len() - 1;
        let seg = self.segments.last_mut().expect("a segment exists");
        let first = seg.next;
        // The slot's image must lie in one block: start a new block here if the last one ends
        // before the slot does.
        let in_last = seg
            .blocks
            .last()
            .is_some_and(|b| (first + n - b.start) << shift <= b.buf.len());
        if !in_last {
            // Staging for this slot and what is reserved after it, at most a growth step.
            let chunks = n.max((seg.end - first).min(GROW_CHUNKS));
            match trap_buffer(chunks << shift) {
                Ok(buf) => seg.blocks.push(Block { start: first, buf }),
                Err(e) => {
                    if seg.blocks.is_empty() {
                        // A segment made for this slot: without it, it goes again.
                        let seg = self.segments.pop().expect("a segment exists");
                        if let Some(pack) = seg.pack {
                            let left = seg.end - seg.next;
                            pack.give_back(seg.next, left);
                            span::count_cached(&self.shared, (left as u64).wrapping_neg());
                        }
                    }
                    return Err(e);
                }
            }
        }
        let block = seg.blocks.len() - 1;
        let pack = seg.pack.clone().expect("a packed segment");
        seg.next += n;
        span::count_cached(&self.shared, (n as u64).wrapping_neg());
        let offset = thread_cache::with_state(&self.shared, |_, st| {
            span::image_offset(&self.shared, st, n << shift, len, align)
        })
        .unwrap_or(0);
        let span = Span::new(pack, first, n, offset, len);
        let at = ((first - seg.blocks[block].start) << shift) + offset;
        span::count_made(&self.shared, len);
        let exec_addr = span.exec_addr();
        self.slots.push(Slot {
            span,
            seg: seg_index,
            block,
            at,
        });
        Ok((self.slots.len() - 1, exec_addr))
    }

    /// Starts a segment with room for at least `n` chunks.
    fn new_segment(&mut self, n: usize) -> Result<()> {
        let shared = &self.shared;
        let (shard, pick) = thread_cache::with_state(shared, |local, st| {
            (local.shard, shared.config.randomize.then(|| st.random()))
        })
        .unwrap_or((0, None));
        let (pack, first, got) = if n <= shared.run_chunks {
            shared.take_run(shard, n, pick)?
        } else {
            let (pack, first) = shared.take_span(shard, n, 1)?;
            (pack, first, n)
        };
        self.segments.push(Segment {
            pack: Some(pack),
            first,
            next: first,
            end: first + got,
            blocks: Vec::new(),
        });
        span::count_cached(shared, got as u64);
        Ok(())
    }

    /// A slot that does not share a segment: larger than a pack, or aligned beyond a chunk.
    fn push_alone(&mut self, len: usize, align: usize) -> Result<(usize, usize)> {
        let fresh = span::allocate(&self.shared, len, align)?;
        let buf = trap_buffer(len)?;
        let exec_addr = fresh.span.exec_addr();
        self.segments.push(Segment {
            pack: None,
            first: 0,
            next: 0,
            end: 0,
            blocks: vec![Block { start: 0, buf }],
        });
        self.slots.push(Slot {
            span: fresh.span,
            seg: self.segments.len() - 1,
            block: 0,
            at: 0,
        });
        Ok((self.slots.len() - 1, exec_addr))
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
        Some(s.span.exec_addr())
    }

    /// The writable image of slot `index`, or `None` if there is no such slot.
    pub fn image_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let s = self.slots.get(index)?;
        let len = s.span.len();
        Some(&mut self.segments[s.seg].blocks[s.block].buf[s.at..s.at + len])
    }

    /// Places every image with one backend write per segment, then syncs the instruction
    /// cache, and returns the programs in push order. All or nothing: if a write fails, the
    /// segments written so far are trap-filled, every slot's chunks are freed, and the error
    /// is returned.
    pub fn finalize(mut self) -> Result<Vec<Program>> {
        let shift = self.shared.chunk_shift;
        let mut by_segment: Vec<Vec<usize>> = vec![Vec::new(); self.segments.len()];
        for (i, s) in self.slots.iter().enumerate() {
            by_segment[s.seg].push(i);
        }
        for (seg, slots) in self.segments.iter().zip(&by_segment) {
            // Only the slots of a segment about to be written may hold code afterwards.
            for &i in slots {
                let s = &mut self.slots[i];
                s.span.mark_written(true);
            }
            let Some(&first_slot) = slots.first() else {
                continue;
            };
            if seg.pack.is_none() {
                let s = &mut self.slots[first_slot];
                let image = &seg.blocks[0].buf[..];
                s.span.place(image)?;
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
            let (m, at) = self.slots[first_slot].span.mapping();
            let bytes = (seg.next - seg.first) << shift;
            m.write_parts(at, &parts)?;
            crate::arch::sync_icache(m.base() + at, bytes)?;
        }
        let mut programs = Vec::with_capacity(self.slots.len());
        for mut s in std::mem::take(&mut self.slots) {
            s.span.became_program();
            programs.push(Program::new(s.span));
        }
        Ok(programs)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The reserved chunks no slot took were never written: give them back.
        let mut left = 0;
        for seg in self.segments.drain(..) {
            if let Some(pack) = seg.pack {
                left += seg.end - seg.next;
                pack.give_back(seg.next, seg.end - seg.next);
            }
        }
        if left > 0 {
            span::count_cached(&self.shared, (left as u64).wrapping_neg());
        }
    }
}
