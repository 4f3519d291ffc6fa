//! A batch: many drafts whose images are slices of one staging buffer per contiguous run of
//! chunks, laid out exactly as in the pack, so finalizing the whole batch costs one backend
//! write per run (usually one per pack) and no extra copy.
//!
//! Invariants: each segment covers chunks `first..next` of one pack (or one dedicated mapping)
//! and its buffer is exactly that span; every slot's chunks lie inside its segment; the batch
//! owns every slot's chunks until `finalize` turns them into programs (or drop frees them).

use crate::allocation::{Allocation, Place};
use crate::allocator::{Inner, Placed};
use crate::draft::trap_buffer;
use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::program::Program;
use std::fmt;
use std::sync::Arc;

/// Many drafts finalized together. Create with [`Allocator::batch`](crate::Allocator::batch).
pub struct Batch {
    inner: Arc<Inner>,
    segments: Vec<Segment>,
    slots: Vec<Slot>,
}

struct Segment {
    /// The pack this run lies in and the chunk after its end (None for dedicated mappings).
    pack: Option<(Arc<Pack>, usize)>,
    buf: Vec<u8>,
}

struct Slot {
    alloc: Allocation,
    seg: usize,
    /// Offset of the allocation's span inside the segment buffer.
    span_at: usize,
    /// Offset of the image inside the span.
    offset: usize,
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

impl Batch {
    pub(crate) fn new(inner: Arc<Inner>) -> Batch {
        Batch {
            inner,
            segments: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Reserves room for an image of `len` bytes aligned to `align`, right after the previous
    /// slot when the pack has room there (so the run stays one write).
    pub fn push(&mut self, len: usize, align: usize) -> Result<SlotMut<'_>> {
        let extended = match self.segments.last() {
            Some(Segment {
                pack: Some((pack, next)),
                ..
            }) => self.inner.allocate_at(pack, *next, len, align)?,
            _ => None,
        };
        let (placed, seg) = match extended {
            Some(p) => (p, self.segments.len() - 1),
            None => {
                let p = self.inner.allocate(len, align)?;
                let pack = match &p.alloc.place {
                    Place::Packed { pack, .. } => Some((pack.clone(), 0)),
                    Place::Dedicated(_) => None,
                };
                self.segments.push(Segment {
                    pack,
                    buf: Vec::new(),
                });
                (p, self.segments.len() - 1)
            }
        };
        let Placed { alloc, offset } = placed;
        let start = self.segments[seg].buf.len();
        let span = alloc.span();
        if start == 0 {
            // A segment just pushed for this slot: without its buffer it must go again, or
            // `finalize` would meet a segment with no slot.
            match trap_buffer(span) {
                Ok(buf) => self.segments[seg].buf = buf,
                Err(e) => {
                    self.segments.pop();
                    return Err(e);
                }
            }
        } else {
            let buf = &mut self.segments[seg].buf;
            buf.try_reserve(span)
                .map_err(|_| Error::OutOfMemory(span))?;
            crate::arch::extend_traps(buf, span);
        }
        let segment = &mut self.segments[seg];
        if let (Some((_, next)), Place::Packed { first, chunks, .. }) =
            (&mut segment.pack, &alloc.place)
        {
            *next = first + chunks;
        }
        let exec_addr = alloc.base() + offset;
        self.slots.push(Slot {
            alloc,
            seg,
            span_at: start,
            offset,
            len,
        });
        let index = self.slots.len() - 1;
        let image = &mut self.segments[seg].buf[start + offset..start + offset + len];
        Ok(SlotMut {
            index,
            exec_addr,
            image,
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
        Some(s.alloc.base() + s.offset)
    }

    /// The writable image of slot `index`, or `None` if there is no such slot.
    pub fn image_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let s = self.slots.get(index)?;
        let at = s.span_at + s.offset;
        Some(&mut self.segments[s.seg].buf[at..at + s.len])
    }

    /// Places every image with one backend write per segment, then syncs the instruction
    /// cache, and returns the programs in push order. All or nothing: if a write fails, every
    /// slot's chunks are trap-filled and freed, and the error is returned.
    pub fn finalize(mut self) -> Result<Vec<Program>> {
        let mut first_of = vec![usize::MAX; self.segments.len()];
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.alloc.dirty = true;
            first_of[s.seg] = first_of[s.seg].min(i);
        }
        for (seg, &first) in self.segments.iter().zip(&first_of) {
            let (m, off) = self.slots[first].alloc.mapping();
            crate::allocation::place(m, off, &seg.buf)?;
        }
        let mut programs = Vec::with_capacity(self.slots.len());
        for s in std::mem::take(&mut self.slots) {
            let addr = s.alloc.base() + s.offset;
            programs.push(Program::new(s.alloc, addr, s.len));
        }
        Ok(programs)
    }
}
