//! A model of the allocator, checked after every operation.
//!
//! Operations go through the public API only: drafts (written, shrunk, finalized, dropped),
//! batches (pushed, finalized, dropped), `finalize_all`, programs (called, dropped), `trim`, and
//! short-lived threads that load programs and hand them over, with odd lengths and alignments
//! (up to the page size, and invalid ones), on small configurations (4 KiB packs, 16-byte
//! chunks) so that packs fill, empty and get released all the time. The model keeps, for each
//! live draft, batch slot and program, its address, length and the bytes it should hold, and
//! after every step checks:
//!
//! - `Allocator::check_invariants()` (free counts, every free chunk all traps);
//! - no two live items overlap, and the pack bitmaps are the union of the live items' chunk
//!   spans plus exactly `chunks_cached` chunks that threads' runs and open batches reserved,
//!   which hold only traps (nothing leaked, nothing freed twice, no chunk handed out twice);
//! - every live program's bytes are what was written (read in place and through
//!   `Program::bytes`), every unfinalized image is still traps in the pack, and the rest of each
//!   item's chunk span is traps;
//! - every counter of `Stats` equals the model's; empty packs never exceed the reserve; a new
//!   pack is mapped only when no existing pack had room;
//! - with a code range, every item lies inside it, and `CodeRangeFull` only comes when it is.
//!
//! The same model drives the `alloc_model` cargo-fuzz target (operations decoded from the fuzz
//! input) and the fixed-seed test in `reliability_model.rs` (operations from a seeded RNG).

#![allow(dead_code)] // the fuzz target uses the decoders, the test the generators

use crate::support::{ret_imm64, Rng};
use progpack::{Allocator, BackendChoice, Batch, CodeRange, Config, Draft, Error, Program};

/// Which backend a model run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// `/proc/self/mem` writes.
    ProcMem,
    /// memfd with a persistent alias.
    DualMap,
    /// memfd with an alias per write.
    DualMapPerWrite,
}

/// Configuration of one model run.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Pack size (power of two, >= page size).
    pub pack_size: usize,
    /// Chunk size (power of two, 16..=pack_size).
    pub chunk_size: usize,
    /// Random image start.
    pub randomize: bool,
    /// Bytes added to each request before rounding (`Config::min_slack`).
    pub min_slack: usize,
    /// Empty packs kept.
    pub reserve: usize,
    /// Shards.
    pub shards: usize,
    /// Backend.
    pub backend: BackendKind,
    /// Code range of this many packs, if any.
    pub code_range_packs: Option<usize>,
    /// Largest program accepted.
    pub max_len: usize,
    /// Call programs that hold code (x86-64 and aarch64 only).
    pub call: bool,
}

impl Setup {
    /// Decodes a setup from the first bytes of a fuzz input.
    pub fn from_bytes(r: &mut Reader<'_>) -> Setup {
        let page = 4096;
        let pack_size = page << (r.byte() % 4); // 4..32 KiB
        let chunk_size = (16usize << (r.byte() % 5)).min(pack_size); // 16..256
        let flags = r.byte();
        let backend = match r.byte() % 3 {
            0 => BackendKind::ProcMem,
            1 => BackendKind::DualMap,
            _ => BackendKind::DualMapPerWrite,
        };
        Setup {
            pack_size,
            chunk_size,
            randomize: flags & 1 != 0,
            min_slack: if flags & 0x20 != 0 {
                16.min(chunk_size)
            } else {
                0
            },
            reserve: ((flags >> 1) % 3) as usize,
            shards: 1 + ((flags >> 3) % 3) as usize,
            backend,
            code_range_packs: (flags & 0x40 != 0).then_some(3 + (flags >> 7) as usize * 5),
            max_len: 3 * pack_size,
            call: true,
        }
    }

    fn config(&self) -> Config {
        let backend = match self.backend {
            BackendKind::ProcMem => BackendChoice::ProcMem,
            BackendKind::DualMap => BackendChoice::DualMap,
            BackendKind::DualMapPerWrite => BackendChoice::DualMapPerWrite,
        };
        let mut c = Config::default()
            .pack_size(self.pack_size)
            .chunk_size(self.chunk_size)
            .randomize(self.randomize)
            .min_slack(self.min_slack)
            .reserve_packs(self.reserve)
            .shards(self.shards)
            .max_len(self.max_len)
            .backend(backend);
        if let Some(n) = self.code_range_packs {
            c = c.code_range(CodeRange::near_this_binary().size(n * self.pack_size));
        }
        c
    }

    fn slack(&self) -> usize {
        self.min_slack
    }

    /// Chunks in a thread's run (the allocator takes at most 4 KiB of chunks, at most one
    /// bitmap word, at most an eighth of a pack).
    fn run_chunks(&self) -> usize {
        (4096 / self.chunk_size)
            .clamp(1, 64)
            .min(self.pack_size / self.chunk_size / 8)
            .max(1)
    }

    /// True if a request of `chunks` chunks aligned to `align` comes from a thread's run (it
    /// then needs room inside one bitmap word when the run is renewed).
    fn served_by_run(&self, chunks: usize, align: usize) -> bool {
        chunks <= self.run_chunks() && align <= self.chunk_size
    }

    /// Bytes spanned by a valid request of `len` bytes (a chunk multiple).
    fn span(&self, len: usize) -> usize {
        (len + self.slack()).next_multiple_of(self.chunk_size)
    }

    fn dedicated(&self, len: usize) -> bool {
        self.span(len) > self.pack_size
    }

    /// Bytes of the dedicated mapping for `len`.
    fn dedicated_bytes(&self, len: usize) -> usize {
        self.span(len).next_multiple_of(page_size())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as usize
}

/// Reads fuzz input bytes; past the end it reads zeros.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// Next two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | u16::from(self.byte()) << 8
    }
}

/// One operation on the allocator.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `alloc.draft(len, align)`, then write an image (code if `code`).
    Draft {
        len: usize,
        align: usize,
        code: bool,
    },
    /// Finalize the draft picked by `pick`.
    Finalize { pick: usize },
    /// Drop the draft picked by `pick` without finalizing.
    DropDraft { pick: usize },
    /// Drop the program picked by `pick`.
    DropProgram { pick: usize },
    /// Push a slot on the open batch (opening one if needed).
    BatchPush {
        len: usize,
        align: usize,
        code: bool,
    },
    /// Finalize the open batch.
    BatchFinalize,
    /// Drop the open batch.
    BatchDrop,
    /// `finalize_all` on up to `count` drafts starting at `pick`.
    FinalizeAll { pick: usize, count: usize },
    /// Call the program picked by `pick` (if it is code).
    Call { pick: usize },
    /// Shrink the draft picked by `pick` to `(len * (keep + 1)) / 256` bytes (at least 1).
    Shrink { pick: usize, keep: u8 },
    /// Give this thread's unused run back.
    Trim,
    /// A thread loads `count` programs of `len` bytes, hands them over and exits.
    Thread { count: usize, len: usize },
    /// Drop every draft, slot and program.
    DropAll,
    /// `free_all` on up to `count` programs starting at `pick`.
    FreeAll { pick: usize, count: usize },
}

impl Op {
    /// A length: mostly small, often at chunk and pack boundaries, sometimes invalid.
    fn len_from(sel: u8, raw: u16, s: &Setup) -> usize {
        let c = s.chunk_size;
        let k = raw as usize % 8 + 1;
        match sel % 16 {
            0..=5 => raw as usize % 200 + 1,
            6 | 7 => (k * c).saturating_sub(s.slack()).max(1),
            8 => (k * c + 1).saturating_sub(s.slack()).max(1),
            9 => raw as usize % (2 * c) + 1,
            10 => s.pack_size - s.slack() - (raw as usize % 3),
            11 => s.pack_size - s.slack() + 1 + raw as usize % 64,
            12 => raw as usize % s.max_len + 1,
            13 => 0,
            14 => s.max_len + 1 + raw as usize % 3,
            _ => raw as usize % 2000 + 1,
        }
    }

    fn align_from(sel: u8, s: &Setup) -> usize {
        match sel % 14 {
            12 => page_size(),
            13 => 2 * page_size(),
            0..=3 => 1,
            4 => 2,
            5 => 4,
            6 => 8,
            7 => 16,
            8 => s.chunk_size,
            9 => 0,
            10 => 3,
            _ => 2 * s.chunk_size,
        }
    }

    /// Decodes one operation (uses 5 bytes).
    pub fn from_bytes(r: &mut Reader<'_>, s: &Setup) -> Op {
        let kind = r.byte();
        let a = r.byte();
        let b = r.byte();
        let raw = r.u16();
        Op::decode(kind, a, b, raw, s)
    }

    /// A random operation.
    pub fn random(rng: &mut Rng, s: &Setup) -> Op {
        let v = rng.next_u64();
        Op::decode(
            v as u8,
            (v >> 8) as u8,
            (v >> 16) as u8,
            (v >> 24) as u16,
            s,
        )
    }

    fn decode(kind: u8, a: u8, b: u8, raw: u16, s: &Setup) -> Op {
        let pick = raw as usize;
        match kind % 32 {
            0..=8 => Op::Draft {
                len: Op::len_from(a, raw, s),
                align: Op::align_from(b, s),
                code: b & 0x80 != 0,
            },
            9..=13 => Op::Finalize { pick },
            14 | 15 => Op::DropDraft { pick },
            16..=20 => Op::DropProgram { pick },
            21..=24 => Op::BatchPush {
                len: Op::len_from(a, raw, s),
                align: Op::align_from(b, s),
                code: b & 0x80 != 0,
            },
            25 => Op::BatchFinalize,
            26 => Op::BatchDrop,
            27 | 28 => Op::FinalizeAll {
                pick,
                count: 1 + a as usize % 6,
            },
            29 if a.is_multiple_of(4) => Op::Trim,
            29 if a % 4 == 1 => Op::Thread {
                count: 1 + b as usize % 20,
                len: Op::len_from(a, raw, s).clamp(1, s.pack_size),
            },
            29 if a % 4 == 2 => Op::Shrink { pick, keep: b },
            29 => Op::Call { pick },
            30 => Op::FreeAll {
                pick,
                count: 1 + a as usize % 12,
            },
            _ => {
                if a == 0 {
                    Op::DropAll
                } else {
                    Op::Call { pick }
                }
            }
        }
    }
}

/// What the model knows about one live item.
#[derive(Clone, Debug)]
struct Item {
    /// Where the image runs.
    addr: usize,
    len: usize,
    /// Chunks of its span (if not dedicated).
    chunks: usize,
    /// Bytes of its mapping of its own, if it has one.
    dedicated: Option<usize>,
    /// A draft written straight into the pack through its alias (persistent dualmap, from the
    /// thread's run): its bytes show in the pack before it is finalized.
    in_alias: bool,
    /// A batch slot in the batch's reservation (not larger than a pack, not aligned beyond a
    /// chunk): counted as cached chunks, not as an allocation, until the batch is finalized.
    reserved: bool,
    /// What the image holds in the draft (and in the pack once finalized).
    content: Vec<u8>,
    /// The value its code returns, if it is code.
    value: Option<u64>,
}

impl Item {
    /// A fresh item of `len` bytes at `addr`, as `setup` lays it out.
    fn new(s: &Setup, addr: usize, len: usize, content: Vec<u8>, value: Option<u64>) -> Item {
        Item {
            addr,
            len,
            chunks: s.span(len) / s.chunk_size,
            dedicated: s.dedicated(len).then(|| s.dedicated_bytes(len)),
            in_alias: false,
            reserved: false,
            content,
            value,
        }
    }
}

/// Counts of what a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Operations applied.
    pub ops: u64,
    /// Full verifications passed.
    pub checks: u64,
    /// Typed errors the model expected (bad length, bad alignment, full code range).
    pub expected_errors: u64,
    /// Programs finalized.
    pub programs: u64,
    /// Programs called and checked.
    pub calls: u64,
    /// Packs mapped over the run.
    pub packs_mapped: u64,
    /// Requests refused with `CodeRangeFull` (counted in `expected_errors` too).
    pub code_range_full: u64,
}

/// The allocator under test and the model of it.
pub struct Model {
    setup: Setup,
    alloc: Allocator,
    drafts: Vec<(Draft, Item)>,
    batch: Option<(Batch, Vec<Item>)>,
    programs: Vec<(Program, Item)>,
    next_value: u64,
    /// Counts so far.
    pub tally: Tally,
}

/// Cap on live items, so fuzz inputs cannot exhaust memory.
const MAX_LIVE: usize = 512;

/// Reads `len` bytes at `addr`.
///
/// # Safety
/// The range must be mapped readable for as long as the slice is used.
unsafe fn mem<'a>(addr: usize, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

fn all_traps(b: &[u8]) -> bool {
    progpack::arch::is_all_traps(b)
}

impl Model {
    /// Creates the allocator for `setup`.
    pub fn new(setup: Setup) -> Result<Model, String> {
        let alloc = Allocator::new(setup.config()).map_err(|e| format!("new: {e}"))?;
        Ok(Model {
            setup,
            alloc,
            drafts: Vec::new(),
            batch: None,
            programs: Vec::new(),
            next_value: 0x5eed_0000_0000,
            tally: Tally::default(),
        })
    }

    /// The allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    fn live(&self) -> usize {
        self.drafts.len() + self.programs.len() + self.batch.as_ref().map_or(0, |b| b.1.len())
    }

    /// Content for an image of `len` bytes: code returning a fresh value when asked and it
    /// fits, else bytes derived from the value (never all traps unless tiny).
    fn content(&mut self, len: usize, code: bool) -> (Vec<u8>, Option<u64>) {
        self.next_value += 1;
        let v = self.next_value;
        let code = code && self.setup.call && len >= ret_imm64(0).len();
        let mut bytes: Vec<u8> = (0..len)
            .map(|i| (v.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8)
            .collect();
        if code {
            let c = ret_imm64(v);
            bytes[..c.len()].copy_from_slice(&c);
            (bytes, Some(v))
        } else {
            (bytes, None)
        }
    }

    /// Which errors a request of `len`/`align` may get without being a bug.
    fn invalid_request(&self, len: usize, align: usize, e: &Error) -> bool {
        let s = &self.setup;
        match e {
            Error::ZeroLength => len == 0,
            Error::TooLarge { .. } => len > s.max_len,
            Error::BadAlign { .. } => {
                !align.is_power_of_two() || align > rustix::param::page_size().max(s.chunk_size)
            }
            _ => false,
        }
    }

    fn request_is_valid(&self, len: usize, align: usize) -> bool {
        len > 0
            && len <= self.setup.max_len
            && align.is_power_of_two()
            && align <= rustix::param::page_size().max(self.setup.chunk_size)
    }

    /// True if `CodeRangeFull` is a correct answer to a valid request of `len` bytes now.
    fn code_range_may_be_full(&self, len: usize, align: usize) -> Result<bool, String> {
        let s = &self.setup;
        let Some(slots) = s.code_range_packs else {
            return Ok(false);
        };
        let snap = self.alloc.occupancy();
        let dedicated_slots: usize = self
            .items()
            .filter_map(|(_, it)| it.dedicated)
            .map(|bytes| bytes.div_ceil(s.pack_size))
            .sum();
        let used = snap.packs.len() + dedicated_slots;
        if s.dedicated(len) {
            let need = s.dedicated_bytes(len).div_ceil(s.pack_size);
            // Full, or possibly fragmented.
            return Ok(used + need > slots || need > 1);
        }
        // A packed request fails only if no pack has room and no slot is free.
        let chunks = s.span(len) / s.chunk_size;
        if self.room_for(chunks, align, s.served_by_run(chunks, align)) {
            return Err(format!(
                "CodeRangeFull for {len} bytes while a pack has {chunks} free chunks in a row"
            ));
        }
        Ok(used >= slots)
    }

    fn items(&self) -> impl Iterator<Item = (&'static str, &Item)> {
        self.drafts
            .iter()
            .map(|(_, i)| ("draft", i))
            .chain(
                self.batch
                    .iter()
                    .flat_map(|(_, v)| v.iter().map(|i| ("slot", i))),
            )
            .chain(self.programs.iter().map(|(_, i)| ("program", i)))
    }

    /// Checks a freshly placed image (draft or batch slot).
    fn check_new_image(
        &self,
        addr: usize,
        align: usize,
        image: &[u8],
        len: usize,
    ) -> Result<(), String> {
        if align.is_power_of_two() && !addr.is_multiple_of(align) {
            return Err(format!("exec_addr {addr:#x} not aligned to {align}"));
        }
        if image.len() != len {
            return Err(format!("image of {} bytes, asked {len}", image.len()));
        }
        if !all_traps(image) {
            return Err("fresh image is not all traps".into());
        }
        // SAFETY: the draft/slot owns these bytes of a live mapping; nobody writes them.
        if !all_traps(unsafe { mem(addr, len) }) {
            return Err(format!(
                "pack bytes at {addr:#x} under a fresh draft are not traps"
            ));
        }
        Ok(())
    }

    fn pick<T>(v: &[T], pick: usize) -> Option<usize> {
        (!v.is_empty()).then(|| pick % v.len())
    }

    /// Runs `f`, noting whether it mapped a pack while an existing one had room for `chunks`.
    fn new_pack_check(
        &self,
        chunks: Option<usize>,
        before: &progpack::Stats,
        room: bool,
    ) -> Result<(), String> {
        let after = self.alloc.stats();
        if chunks.is_some() && room && after.packs_mapped_total > before.packs_mapped_total {
            let maps: Vec<String> = self
                .alloc
                .occupancy()
                .packs
                .iter()
                .map(|p| p.used.iter().map(|u| if *u { '#' } else { '.' }).collect())
                .collect();
            return Err(format!(
                "mapped a new pack for {} chunks while an existing pack had room: {maps:#?}",
                chunks.unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// True if some pack has `chunks` clear chunks in a row starting at a multiple of `align`
    /// (inside one 64-chunk bitmap word when the request comes from a thread's run, whose
    /// renewal looks only there).
    fn room_for(&self, chunks: usize, align: usize, in_word: bool) -> bool {
        let step = (align / self.setup.chunk_size).max(1);
        self.alloc.occupancy().packs.iter().any(|p| {
            if in_word {
                p.used.chunks(64).any(|w| has_clear_run(w, chunks))
            } else {
                has_clear_run_aligned(&p.used, chunks, step)
            }
        })
    }

    /// Applies one operation and checks everything. `Err` describes the first violation.
    pub fn apply(&mut self, op: Op) -> Result<(), String> {
        self.tally.ops += 1;
        let s = self.setup;
        match op {
            Op::Draft { len, align, code } => {
                if self.live() >= MAX_LIVE {
                    return self.verify();
                }
                let chunks = (self.request_is_valid(len, align) && !s.dedicated(len))
                    .then(|| s.span(len) / s.chunk_size);
                let room =
                    chunks.is_some_and(|c| self.room_for(c, align, s.served_by_run(c, align)));
                let before = self.alloc.stats();
                match self.alloc.draft(len, align) {
                    Ok(mut d) => {
                        if !self.request_is_valid(len, align) {
                            return Err(format!("draft({len}, {align}) accepted"));
                        }
                        self.new_pack_check(chunks, &before, room)?;
                        let addr = d.exec_addr();
                        self.check_new_image(addr, align, d.image_mut(), len)?;
                        let (content, value) = self.content(len, code);
                        d.image_mut().copy_from_slice(&content);
                        if d.image() != content.as_slice() || d.len() != len {
                            return Err("draft image does not read back".into());
                        }
                        let mut item = Item::new(&s, addr, len, content, value);
                        item.in_alias = s.backend == BackendKind::DualMap
                            && !s.dedicated(len)
                            && s.served_by_run(item.chunks, align)
                            && len <= 4096;
                        self.drafts.push((d, item));
                    }
                    Err(e) => self.expect_error(len, align, &e, "draft")?,
                }
            }
            Op::Finalize { pick } => {
                if let Some(i) = Self::pick(&self.drafts, pick) {
                    let (d, item) = self.drafts.swap_remove(i);
                    let p = d.finalize().map_err(|e| format!("finalize: {e}"))?;
                    self.adopt(p, item)?;
                }
            }
            Op::DropDraft { pick } => {
                if let Some(i) = Self::pick(&self.drafts, pick) {
                    drop(self.drafts.swap_remove(i));
                }
            }
            Op::DropProgram { pick } => {
                if let Some(i) = Self::pick(&self.programs, pick) {
                    let (p, item) = self.programs.swap_remove(i);
                    drop(p);
                    self.check_freed(&item)?;
                }
            }
            Op::BatchPush { len, align, code } => {
                if self.live() >= MAX_LIVE {
                    return self.verify();
                }
                let (mut batch, mut slots) = self
                    .batch
                    .take()
                    .unwrap_or_else(|| (self.alloc.batch(), Vec::new()));
                let pushed = batch.push(len, align).map(|slot| {
                    (
                        slot.index,
                        slot.exec_addr,
                        slot.image.len(),
                        all_traps(slot.image),
                    )
                });
                match pushed {
                    Ok((index, addr, image_len, traps)) => {
                        if !self.request_is_valid(len, align) {
                            return Err(format!("batch push({len}, {align}) accepted"));
                        }
                        if index != slots.len() || batch.exec_addr(index) != Some(addr) {
                            return Err("batch slot index or address inconsistent".into());
                        }
                        if !traps {
                            return Err("fresh batch image is not all traps".into());
                        }
                        let (content, value) = self.content(len, code);
                        let image = batch.image_mut(index).ok_or("slot vanished")?;
                        self.check_new_image(addr, align, image, image_len)?;
                        image.copy_from_slice(&content);
                        let mut item = Item::new(&s, addr, len, content, value);
                        item.reserved = !s.dedicated(len) && align <= s.chunk_size;
                        slots.push(item);
                    }
                    Err(e) => {
                        self.batch = Some((batch, slots));
                        self.expect_error(len, align, &e, "batch push")?;
                        return self.verify();
                    }
                }
                if batch.exec_addr(slots.len()).is_some() || batch.image_mut(usize::MAX).is_some() {
                    return Err("batch answers for a slot that does not exist".into());
                }
                self.batch = Some((batch, slots));
            }
            Op::BatchFinalize => {
                if let Some((batch, slots)) = self.batch.take() {
                    let progs = batch
                        .finalize()
                        .map_err(|e| format!("batch finalize: {e}"))?;
                    if progs.len() != slots.len() {
                        return Err(format!(
                            "batch gave {} programs for {} slots",
                            progs.len(),
                            slots.len()
                        ));
                    }
                    for (p, item) in progs.into_iter().zip(slots) {
                        self.adopt(p, item)?;
                    }
                }
            }
            Op::BatchDrop => {
                if let Some((batch, slots)) = self.batch.take() {
                    drop(batch);
                    for it in &slots {
                        self.check_freed(it)?;
                    }
                }
            }
            Op::FinalizeAll { pick, count } => {
                if let Some(start) = Self::pick(&self.drafts, pick) {
                    let n = count.min(self.drafts.len());
                    // Take `n` drafts starting at `start` (wrapping), in that order.
                    let mut taken = Vec::with_capacity(n);
                    for k in 0..n {
                        let i = (start + k) % self.drafts.len();
                        taken.push(i);
                    }
                    taken.sort_unstable();
                    taken.dedup();
                    let mut chosen: Vec<(Draft, Item)> = Vec::new();
                    for &i in taken.iter().rev() {
                        chosen.push(self.drafts.remove(i));
                    }
                    let (ds, items): (Vec<Draft>, Vec<Item>) = chosen.into_iter().unzip();
                    let progs = self
                        .alloc
                        .finalize_all(ds)
                        .map_err(|e| format!("finalize_all: {e}"))?;
                    if progs.len() != items.len() {
                        return Err("finalize_all lost programs".into());
                    }
                    for (p, item) in progs.into_iter().zip(items) {
                        self.adopt(p, item)?;
                    }
                }
            }
            Op::Call { pick } => {
                if let Some(i) = Self::pick(&self.programs, pick) {
                    let (p, item) = &self.programs[i];
                    if let Some(v) = item.value {
                        let got = call(p);
                        self.tally.calls += 1;
                        if got != v {
                            return Err(format!(
                                "program at {:#x} returned {got:#x}, not {v:#x}",
                                item.addr
                            ));
                        }
                    }
                }
            }
            Op::FreeAll { pick, count } => {
                if let Some(start) = Self::pick(&self.programs, pick) {
                    let n = count.min(self.programs.len());
                    let mut idx: Vec<usize> =
                        (0..n).map(|k| (start + k) % self.programs.len()).collect();
                    idx.sort_unstable();
                    idx.dedup();
                    let mut progs = Vec::new();
                    let mut items = Vec::new();
                    for &i in idx.iter().rev() {
                        let (p, it) = self.programs.swap_remove(i);
                        progs.push(p);
                        items.push(it);
                    }
                    self.alloc.free_all(progs);
                    for it in &items {
                        self.check_freed(it)?;
                    }
                }
            }
            Op::Shrink { pick, keep } => {
                if let Some(i) = Self::pick(&self.drafts, pick) {
                    let (d, it) = &mut self.drafts[i];
                    let new_len = (it.len * (usize::from(keep) + 1) / 256).max(1);
                    let before = self.alloc.stats();
                    if d.shrink(it.len + 1).is_ok() || d.shrink(0).is_ok() {
                        return Err("shrink to a longer or empty image accepted".into());
                    }
                    d.shrink(new_len).map_err(|e| format!("shrink: {e}"))?;
                    if d.exec_addr() != it.addr || d.len() != new_len {
                        return Err("shrink moved the draft or missed the length".into());
                    }
                    if d.image() != &it.content[..new_len] {
                        return Err("shrink changed the image".into());
                    }
                    it.len = new_len;
                    it.content.truncate(new_len);
                    if it.value.is_some() && new_len < ret_imm64(0).len() {
                        it.value = None;
                    }
                    if it.dedicated.is_none() {
                        let head = (it.addr % s.chunk_size) + new_len;
                        let keep_chunks = head.div_ceil(s.chunk_size).max(1).min(it.chunks);
                        let given = it.chunks - keep_chunks;
                        it.chunks = keep_chunks;
                        let after = self.alloc.stats();
                        if before.chunks_free + given != after.chunks_free {
                            return Err(format!(
                                "shrink gave back {} chunks, expected {given}",
                                after.chunks_free - before.chunks_free
                            ));
                        }
                    }
                }
            }
            Op::Trim => {
                self.alloc.trim();
                // An open batch keeps its reservation; nothing else may stay cached.
                if self.batch.is_none() && self.alloc.stats().chunks_cached != 0 {
                    return Err("trim left chunks cached by this (only) thread".into());
                }
            }
            Op::Thread { count, len } => {
                if self.live() + count > MAX_LIVE {
                    return self.verify();
                }
                let contents: Vec<(Vec<u8>, Option<u64>)> =
                    (0..count).map(|_| self.content(len, true)).collect();
                let alloc = self.alloc.clone();
                // The thread stops at its first error and hands back what it loaded before
                // it, alive: the error is judged against the packs as they were when it
                // happened (dropping those programs would free chunks after the fact).
                let (progs, error) = std::thread::spawn(move || {
                    let mut progs = Vec::new();
                    for (content, value) in contents {
                        let loaded = alloc.draft(len, 1).and_then(|mut d| {
                            d.image_mut().copy_from_slice(&content);
                            let addr = d.exec_addr();
                            Ok((d.finalize()?, addr))
                        });
                        match loaded {
                            Ok((p, addr)) => progs.push((p, addr, content, value)),
                            Err(e) => return (progs, Some(e)),
                        }
                    }
                    (progs, None)
                })
                .join()
                .map_err(|_| "loading thread panicked".to_string())?;
                // The thread exited: its run came back (only this thread may cache).
                for (p, addr, content, value) in progs {
                    let item = Item::new(&s, addr, len, content, value);
                    self.adopt(p, item)?;
                }
                if let Some(e) = error {
                    self.expect_error(len, 1, &e, "thread draft")?;
                }
            }
            Op::DropAll => {
                let items: Vec<Item> = self.items().map(|(_, i)| i.clone()).collect();
                self.drafts.clear();
                self.batch = None;
                self.programs.clear();
                for it in &items {
                    self.check_freed(it)?;
                }
                // This thread's run is all that is left; trimming gives it back.
                self.alloc.trim();
                let st = self.alloc.stats();
                if st.chunks_used != 0
                    || st.allocations != 0
                    || st.chunks_cached != 0
                    || st.packs > s.reserve
                {
                    return Err(format!("after dropping everything: {st:?}"));
                }
            }
        }
        self.verify()
    }

    fn expect_error(
        &mut self,
        len: usize,
        align: usize,
        e: &Error,
        what: &str,
    ) -> Result<(), String> {
        if self.invalid_request(len, align, e) {
            self.tally.expected_errors += 1;
            return Ok(());
        }
        if matches!(e, Error::CodeRangeFull { .. }) && self.code_range_may_be_full(len, align)? {
            self.tally.expected_errors += 1;
            self.tally.code_range_full += 1;
            return Ok(());
        }
        Err(format!("{what}({len}, {align}) failed: {e}"))
    }

    /// Takes a freshly finalized program, checking it against its draft.
    fn adopt(&mut self, p: Program, mut item: Item) -> Result<(), String> {
        item.reserved = false;
        item.in_alias = false;
        if p.addr() != item.addr || p.len() != item.len {
            return Err(format!(
                "program at {:#x}+{} but its draft was at {:#x}+{}",
                p.addr(),
                p.len(),
                item.addr,
                item.len
            ));
        }
        if p.bytes() != item.content.as_slice() {
            return Err(format!(
                "program at {:#x}: bytes differ from its image",
                item.addr
            ));
        }
        if p.is_dedicated() != item.dedicated.is_some() {
            return Err(format!(
                "program of {} bytes: dedicated = {}",
                item.len,
                p.is_dedicated()
            ));
        }
        if let Some(v) = item.value {
            let got = call(&p);
            self.tally.calls += 1;
            if got != v {
                return Err(format!("new program returned {got:#x}, not {v:#x}"));
            }
        }
        self.tally.programs += 1;
        self.programs.push((p, item));
        Ok(())
    }

    /// After an item went away: if its pack is still mapped and the chunks were not reused,
    /// its bytes are traps.
    fn check_freed(&self, item: &Item) -> Result<(), String> {
        let s = &self.setup;
        if item.dedicated.is_some() {
            return Ok(()); // unmapped: nothing left to run
        }
        let snap = self.alloc.occupancy();
        let Some(pack) = snap
            .packs
            .iter()
            .find(|p| item.addr >= p.base && item.addr < p.base + s.pack_size)
        else {
            return Ok(()); // the pack was released
        };
        let first = (item.addr - pack.base) / s.chunk_size;
        let last = (item.addr + item.len - 1 - pack.base) / s.chunk_size;
        if (first..=last).any(|c| pack.used[c]) {
            return Ok(()); // reused since (only by batch neighbours: checked by verify)
        }
        // SAFETY: the pack is mapped while the allocator lists it; single-threaded here.
        if !all_traps(unsafe { mem(item.addr, item.len) }) {
            return Err(format!(
                "freed range {:#x}+{} is not traps",
                item.addr, item.len
            ));
        }
        Ok(())
    }

    /// Checks everything the module docs list.
    pub fn verify(&mut self) -> Result<(), String> {
        let s = self.setup;
        self.alloc
            .check_invariants()
            .map_err(|e| format!("check_invariants: {e}"))?;
        let st = self.alloc.stats();
        let snap = self.alloc.occupancy();

        // Counters.
        let n_slots = self.batch.as_ref().map_or(0, |b| b.1.len());
        let (mut requested, mut used_chunks, mut dedicated, mut dedicated_bytes) = (0, 0, 0, 0);
        let mut slot_chunks = 0;
        for (_, it) in self.items() {
            if it.reserved {
                slot_chunks += it.chunks;
                continue;
            }
            requested += it.len;
            match it.dedicated {
                Some(bytes) => {
                    dedicated += 1;
                    dedicated_bytes += bytes;
                }
                None => used_chunks += it.chunks,
            }
        }
        let empty = snap.packs.iter().filter(|p| p.used_chunks() == 0).count();
        let total_chunks = snap.packs.len() * (s.pack_size / s.chunk_size);
        let expect = [
            ("programs", st.programs, self.programs.len()),
            (
                "allocations",
                st.allocations,
                self.live() - self.items().filter(|(_, i)| i.reserved).count(),
            ),
            ("bytes_requested", st.bytes_requested, requested),
            ("dedicated_mappings", st.dedicated_mappings, dedicated),
            ("dedicated_bytes", st.dedicated_bytes, dedicated_bytes),
            ("chunks_used", st.chunks_used, used_chunks),
            ("chunks_quarantined", st.chunks_quarantined, 0),
            ("packs", st.packs, snap.packs.len()),
            ("reserve_packs", st.reserve_packs, empty),
            (
                "bytes_mapped",
                st.bytes_mapped,
                snap.packs.len() * s.pack_size + dedicated_bytes,
            ),
            (
                "chunks_free",
                st.chunks_free,
                total_chunks - used_chunks - st.chunks_cached.min(total_chunks - used_chunks),
            ),
            (
                "packs mapped - released",
                st.packs_mapped_total - st.packs_released_total,
                st.packs,
            ),
        ];
        for (name, got, want) in expect {
            if got != want {
                return Err(format!(
                    "stats.{name} = {got}, model says {want} (slots {n_slots})"
                ));
            }
        }
        if empty > s.reserve {
            return Err(format!(
                "{empty} empty packs kept, reserve is {}",
                s.reserve
            ));
        }
        if snap.dedicated_mappings != dedicated {
            return Err("snapshot.dedicated_mappings differs".into());
        }

        // Placement: no overlap, bitmaps exactly the union of the live spans.
        let mut bases: Vec<(usize, usize)> = snap
            .packs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.base, i))
            .collect();
        bases.sort_unstable();
        let pack_of = |addr: usize| -> Option<usize> {
            let k = bases.partition_point(|&(b, _)| b <= addr);
            let (b, i) = *bases.get(k.checked_sub(1)?)?;
            (addr < b + s.pack_size).then_some(i)
        };
        let mut expected: Vec<Vec<bool>> = snap
            .packs
            .iter()
            .map(|p| vec![false; p.used.len()])
            .collect();
        let mut ranges: Vec<(usize, usize, &'static str)> = Vec::new();
        for (kind, it) in self.items() {
            ranges.push((it.addr, it.len, kind));
            if let Some((base, size)) = self.alloc.code_range() {
                if it.addr < base || it.addr + it.len > base + size {
                    return Err(format!("{kind} at {:#x} outside the code range", it.addr));
                }
            }
            let inside = pack_of(it.addr);
            if it.dedicated.is_some() {
                if inside.is_some() {
                    return Err(format!("dedicated {kind} at {:#x} lies in a pack", it.addr));
                }
                continue;
            }
            let Some(pi) = inside else {
                return Err(format!("{kind} at {:#x} lies in no pack", it.addr));
            };
            let base = snap.packs[pi].base;
            let first = (it.addr - base) / s.chunk_size;
            let n = it.chunks;
            if it.addr + it.len > base + (first + n) * s.chunk_size
                || first + n > expected[pi].len()
            {
                return Err(format!(
                    "{kind} at {:#x}+{} overruns its span",
                    it.addr, it.len
                ));
            }
            for (c, bit) in expected[pi].iter_mut().enumerate().skip(first).take(n) {
                if *bit {
                    return Err(format!("chunk {c} of pack {base:#x} owned twice"));
                }
                *bit = true;
            }
            // The span: image bytes as expected, everything else traps.
            let span_start = base + first * s.chunk_size;
            // SAFETY: the pack is mapped while listed; the span belongs to a live item.
            let span = unsafe { mem(span_start, n * s.chunk_size) };
            let off = it.addr - span_start;
            if !all_traps(&span[..off]) || !all_traps(&span[off + it.len..]) {
                return Err(format!(
                    "{kind} at {:#x}: slack in its span is not traps",
                    it.addr
                ));
            }
            let image = &span[off..off + it.len];
            // A draft written straight into the pack's alias (persistent dualmap, the thread's
            // run) shows its bytes there already; any other draft or slot is still traps.
            let ok = if kind == "program" || (kind == "draft" && it.in_alias) {
                image == it.content.as_slice()
            } else {
                all_traps(image)
            };
            if !ok {
                return Err(format!(
                    "{kind} at {:#x}: bytes in the pack are wrong",
                    it.addr
                ));
            }
        }
        // Every live chunk is set; the other set chunks are what runs and open batches
        // reserve: exactly `chunks_cached` of them, all traps.
        let mut reserved = 0;
        for (pi, p) in snap.packs.iter().enumerate() {
            for (c, (&used, &live)) in p.used.iter().zip(&expected[pi]).enumerate() {
                if live && !used {
                    return Err(format!(
                        "pack {:#x}: chunk {c} is free in the bitmap but live in the model",
                        p.base
                    ));
                }
                if used && !live {
                    reserved += 1;
                    // SAFETY: the pack is mapped while listed; reserved chunks are not written.
                    let bytes = unsafe { mem(p.base + c * s.chunk_size, s.chunk_size) };
                    if !all_traps(bytes) {
                        return Err(format!(
                            "pack {:#x}: reserved chunk {c} holds non-trap bytes",
                            p.base
                        ));
                    }
                }
            }
        }
        if reserved + slot_chunks != st.chunks_cached {
            return Err(format!(
                "{reserved} chunks set beyond the live items and {slot_chunks} in an open \
                 batch's slots, stats.chunks_cached = {}",
                st.chunks_cached
            ));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(format!(
                    "{} at {:#x}+{} overlaps {} at {:#x}",
                    w[0].2, w[0].0, w[0].1, w[1].2, w[1].0
                ));
            }
        }
        // Programs read back, in place and through the API; dedicated drafts are traps.
        for (p, it) in &self.programs {
            if p.bytes() != it.content.as_slice() {
                return Err(format!("program at {:#x} changed", it.addr));
            }
        }
        for (_, it) in &self.drafts {
            // SAFETY: the draft owns these bytes of a live mapping.
            if it.dedicated.is_some() && !all_traps(unsafe { mem(it.addr, it.len) }) {
                return Err(format!("dedicated draft at {:#x} is not traps", it.addr));
            }
        }
        self.tally.packs_mapped = st.packs_mapped_total as u64;
        self.tally.checks += 1;
        Ok(())
    }

    /// Drops everything and the allocator; checks that nothing is left.
    pub fn finish(mut self) -> Result<Tally, String> {
        self.apply(Op::DropAll)?;
        let st = self.alloc.stats();
        if st.packs > self.setup.reserve {
            return Err(format!("{} packs left", st.packs));
        }
        Ok(self.tally)
    }
}

fn has_clear_run_aligned(used: &[bool], n: usize, step: usize) -> bool {
    (0..used.len())
        .step_by(step)
        .any(|i| i + n <= used.len() && used[i..i + n].iter().all(|u| !u))
}

fn has_clear_run(used: &[bool], n: usize) -> bool {
    let mut run = 0;
    for &u in used {
        run = if u { 0 } else { run + 1 };
        if run >= n {
            return true;
        }
    }
    false
}

fn call(p: &Program) -> u64 {
    // SAFETY: only called on programs whose image starts with `ret_imm64` code.
    let f = unsafe { p.as_fn::<extern "C" fn() -> u64>() };
    f()
}

/// Runs `ops` on a fresh model of `setup`, checking after each; returns the tally.
pub fn run(setup: Setup, ops: impl IntoIterator<Item = Op>) -> Result<Tally, String> {
    let mut m = Model::new(setup)?;
    for (i, op) in ops.into_iter().enumerate() {
        m.apply(op)
            .map_err(|e| format!("step {i} ({op:?}) on {setup:?}: {e}"))?;
    }
    m.finish()
}
