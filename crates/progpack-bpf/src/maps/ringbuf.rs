//! Ring buffer maps: programs reserve records in a data area of `max_entries` bytes (a power of
//! two), fill them and submit (or discard) them; the host consumes submitted records in
//! reservation order.
//!
//! Unlike the kernel's, the record headers are not in the data area (a program may write
//! anywhere in it, since the whole data area is one region for the bounds checks): they are
//! kept under a mutex, in reservation order. A record's bytes are contiguous: a reservation
//! that would wrap around the end skips to the start (the skipped bytes count as used until
//! consumed). Consumption stops at the first record still reserved, as in the kernel.
//!
//! Invariants (under the lock): `consumed <= produced`, `produced - consumed <= size`;
//! `records` are in data-area order from `consumed`, each covering
//! `[start, start + stride)` after an optional skip.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::arena::Arena;
use super::MapError;

/// State of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reserved,
    Submitted,
    Discarded,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    /// Offset of the first byte in the data area.
    start: usize,
    /// Bytes asked for.
    len: usize,
    /// Bytes used, from the previous record's end (skip + len rounded to 8).
    used: u64,
    state: State,
}

#[derive(Debug, Default)]
struct Ring {
    produced: u64,
    consumed: u64,
    records: VecDeque<Record>,
}

/// A ring buffer.
#[derive(Debug)]
pub(crate) struct RingBuf {
    pub(crate) arena: Arena,
    ring: Mutex<Ring>,
}

impl RingBuf {
    pub(crate) fn new(size: u32) -> Result<RingBuf, MapError> {
        if !size.is_power_of_two() || size < 8 {
            return Err(MapError::BadRingSize { size });
        }
        Ok(RingBuf {
            arena: Arena::new(size as u64)?,
            ring: Mutex::new(Ring::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `len` contiguous bytes; their address, or `None` without room.
    pub(crate) fn reserve(&self, len: u64) -> Option<u64> {
        let size = self.arena.len() as u64;
        if len == 0 || len > size {
            return None;
        }
        let stride = len.next_multiple_of(8);
        let mut r = self.lock();
        let pos = r.produced % size;
        let skip = if pos + stride > size { size - pos } else { 0 };
        let used = skip + stride;
        if r.produced - r.consumed + used > size {
            return None;
        }
        let start = ((pos + skip) % size) as usize;
        r.produced += used;
        r.records.push_back(Record {
            start,
            len: len as usize,
            used,
            state: State::Reserved,
        });
        Some(self.arena.addr(start))
    }

    /// Submits (or discards) the reserved record at `addr`; false if there is none.
    pub(crate) fn commit(&self, addr: u64, submit: bool) -> bool {
        let base = self.arena.addr(0);
        let Some(off) = addr.checked_sub(base) else {
            return false;
        };
        let mut r = self.lock();
        match r
            .records
            .iter_mut()
            .find(|rec| rec.start as u64 == off && rec.state == State::Reserved)
        {
            Some(rec) => {
                rec.state = if submit {
                    State::Submitted
                } else {
                    State::Discarded
                };
                true
            }
            None => false,
        }
    }

    /// Whether `addr` lies in the data area.
    pub(crate) fn contains(&self, addr: u64) -> bool {
        self.arena.region(true).contains(addr, 1)
    }

    /// Reserves, copies `data` and submits; false without room.
    pub(crate) fn output(&self, data: &[u8]) -> bool {
        let Some(a) = self.reserve(data.len() as u64) else {
            return false;
        };
        self.arena.write((a - self.arena.addr(0)) as usize, data);
        self.commit(a, true)
    }

    /// Hands every submitted record, in order, to `f` and frees them, up to the first record
    /// still reserved; returns how many were handed over.
    pub(crate) fn consume(&self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            let rec = {
                let mut r = self.lock();
                match r.records.front() {
                    Some(rec) if rec.state != State::Reserved => {
                        let rec = *rec;
                        r.records.pop_front();
                        r.consumed += rec.used;
                        rec
                    }
                    _ => return n,
                }
            };
            if rec.state == State::Submitted {
                let mut buf = vec![0; rec.len];
                self.arena.read(rec.start, &mut buf);
                f(&buf);
                n += 1;
            }
        }
    }

    /// Bytes reserved or waiting to be consumed.
    pub(crate) fn pending_bytes(&self) -> u64 {
        let r = self.lock();
        r.produced - r.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_in_order_and_space_is_reused() {
        let rb = RingBuf::new(64).unwrap();
        let a = rb.reserve(20).unwrap();
        let b = rb.reserve(20).unwrap();
        assert!(rb.reserve(40).is_none(), "48 + 24 > 64");
        assert!(rb.commit(b, true));
        assert!(!rb.commit(b, true), "already submitted");
        // The first record is still reserved: nothing comes out.
        assert_eq!(rb.consume(|_| panic!()), 0);
        assert!(rb.commit(a, false));
        let mut got = Vec::new();
        assert_eq!(rb.consume(|r| got.push(r.len())), 1);
        assert_eq!(got, [20]);
        assert_eq!(rb.pending_bytes(), 0);
        // Wraps: at offset 48, a 24-byte record skips to 0.
        assert!(rb.output(&[7; 24]));
        let mut got = Vec::new();
        rb.consume(|r| got.push(r.to_vec()));
        assert_eq!(got, [vec![7; 24]]);
        assert!(RingBuf::new(48).is_err());
    }
}
