//! Names for JIT code, and the places they are announced: the perf map, the jitdump, the GDB
//! JIT interface, the unwinder, and a signal-safe lookup from address to program.
//!
//! A program's name and other side data live in a [`Record`] found through its pack's
//! [`SideTable`] (by chunk), never in [`Span`] or `Program`: an allocator that names nothing
//! and announces nothing has no tables. Its finalize in place (the dualmap fast path) has no
//! test at all: packs of an allocator that announces every program hand out no image in place,
//! and a draft given a name or unwind information leaves its place first. A finalize that
//! writes tests the pack's side pointer; a free tests one bit of the span (set where a record
//! is made). Tables exist for every pack of an allocator with an announcement on
//! ([`Observe`]), and for a pack where a draft was given a name or unwind information.
//!
//! Order of events: a draft's name and unwind information go into its record when given; at
//! finalize, after the code is placed, the record is published (the lookup sees it), the
//! unwind information is relocated and registered, the debugger's object file registered, and
//! the perf map lines and jitdump records of the whole finalize written with one write each.
//! At free, before the trap fill: the record leaves its chunk slots and is retired, the
//! debugger's entry and the unwind information are unregistered, and the record goes back to
//! the observer's pool.
//!
//! This module sits below the packs (a pack holds its [`Side`]) and knows nothing of spans,
//! drafts or programs: it takes chunk numbers, addresses and bytes. The span and the program
//! call it with theirs (`Span::name`, `Span::with_record_extra`, `Span::attach_record`,
//! `program::announce`).
//!
//! Files: [`names`] (what a name may be, escaping), [`side`] (records, tables), [`lookup`]
//! (address → program), [`perf_map`], [`jitdump`], [`gdb_jit`] and [`gdb_image`] (the
//! debugger's interface and object files), [`unwind`] (`.eh_frame` registration), [`os`].
#![allow(unsafe_code)] // side tables shared with signal handlers, owner-only record parts

mod config;
#[cfg(feature = "gdb-jit")]
mod gdb_image;
#[cfg(feature = "gdb-jit")]
pub(crate) mod gdb_jit;
mod jitdump;
mod lookup;
pub(crate) mod names;
mod os;
mod perf_map;
mod pid_file;
mod side;
mod unwind;

pub use config::Observe;
pub use lookup::ProgramInfo;
pub use os::JitdumpClock;
pub(crate) use unwind::Frames;

use crate::error::{Error, Result};
use lookup::Tables;
use side::{Record, RecordPool, SideTable};
use std::borrow::Cow;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

/// Where an allocator's perf map and jitdump go (see
/// [`Allocator::observe_outputs`](crate::Allocator::observe_outputs)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserveOutputs {
    /// The perf map file of this process, if the perf map is on.
    pub perf_map: Option<std::path::PathBuf>,
    /// The jitdump file of this process, if the jitdump is on.
    pub jitdump: Option<std::path::PathBuf>,
    /// A failure (an unwritable directory, a full disk) disabled one of them; one warning was
    /// printed on standard error.
    pub disabled: bool,
}

/// What a program carries besides its code, touched only by its owner: the name, the unwind
/// information (as given, then registered), the debugger's entry. Dropping it unregisters.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    name: Option<Box<[u8]>>,
    /// Given with the draft or slot, not yet registered.
    frames: Option<Frames>,
    /// Registered at finalize. Declared before `frames_registered` would not matter: the
    /// debugger's entry goes first (see `Drop`).
    #[cfg(feature = "gdb-jit")]
    gdb: Option<gdb_jit::Entry>,
    registered: Option<unwind::Registered>,
}

impl Drop for Extra {
    fn drop(&mut self) {
        // The debugger forgets the program before the unwinder does.
        #[cfg(feature = "gdb-jit")]
        drop(self.gdb.take());
        drop(self.registered.take());
    }
}

impl Extra {
    /// Sets the name (checked by the caller with [`names::check`]).
    pub(crate) fn set_name(&mut self, name: &[u8]) {
        self.name = Some(name.into());
    }

    /// Sets the unwind information.
    pub(crate) fn set_frames(&mut self, frames: Frames) {
        self.frames = Some(frames);
    }
}

/// Names and unwind information given to a batch's slots, by slot index.
#[derive(Debug, Default)]
pub(crate) struct BatchMeta {
    slots: Vec<Option<Box<Extra>>>,
}

impl BatchMeta {
    /// True if no slot was given anything.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slot `index`'s side data, made if needed.
    pub(crate) fn extra(&mut self, index: usize) -> &mut Extra {
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index].get_or_insert_with(Box::default)
    }

    /// Takes slot `index`'s side data (at finalize).
    pub(crate) fn take(&mut self, index: usize) -> Option<Box<Extra>> {
        self.slots.get_mut(index)?.take()
    }
}

/// One allocator's announcements and side tables. Shared by its packs (each holds it through
/// its [`Side`]), so it outlives every program that may still need it.
pub(crate) struct Observer {
    /// Every program gets a record (some announcement or the lookup of all programs is on),
    /// not only the named ones.
    announce: bool,
    perf_map: Option<Arc<perf_map::PerfMap>>,
    jitdump: Option<Arc<jitdump::Jitdump>>,
    #[cfg_attr(not(feature = "gdb-jit"), allow(dead_code))]
    gdb: bool,
    settings: Observe,
    tables: Tables,
    records: RecordPool,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Observer {
    /// An observer with `settings` (already combined with the environment).
    pub(crate) fn new(settings: Observe) -> Result<Observer> {
        if settings.gdb && !cfg!(feature = "gdb-jit") {
            return Err(Error::BadConfig(
                "the GDB JIT interface needs progpack's `gdb-jit` feature".into(),
            ));
        }
        Ok(Observer {
            announce: settings.is_on(),
            perf_map: settings.perf_map.as_deref().map(perf_map::PerfMap::shared),
            jitdump: settings
                .jitdump
                .as_deref()
                .map(|d| jitdump::Jitdump::shared(d, settings.jitdump_clock)),
            gdb: settings.gdb,
            settings,
            tables: Tables::default(),
            records: RecordPool::default(),
        })
    }

    /// An observer that announces nothing (names only).
    pub(crate) fn quiet() -> Observer {
        Observer::new(Observe::default().ignore_env()).expect("nothing to check")
    }

    /// True if every program is recorded and announced.
    #[inline]
    pub(crate) fn announces(&self) -> bool {
        self.announce
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> &Observe {
        &self.settings
    }

    /// A side table for a pack at `base`, `len` bytes long, of `slots` chunk slots of
    /// `1 << shift` bytes (one slot, shift 0, for a dedicated mapping).
    pub(crate) fn side_for(
        self: &Arc<Self>,
        slots: usize,
        shift: u32,
        base: usize,
        len: usize,
    ) -> Side {
        let table = self.tables.acquire(slots, shift, base, len);
        Side {
            observer: self.clone(),
            table: NonNull::from(table),
        }
    }

    /// The live program covering `addr`. Lock-free, no allocation.
    pub(crate) fn program_at(&self, addr: usize) -> Option<ProgramInfo> {
        self.tables.program_at(addr)
    }

    /// True if a perf map or jitdump of this observer was disabled by a failure.
    pub(crate) fn disabled_outputs(&self) -> bool {
        self.perf_map.as_ref().is_some_and(|m| m.is_disabled())
            || self.jitdump.as_ref().is_some_and(|d| d.is_disabled())
    }

    /// Where this observer's perf map goes, if it has one.
    pub(crate) fn perf_map_path(&self) -> Option<std::path::PathBuf> {
        self.perf_map.as_ref().map(|m| m.path())
    }

    /// Where this observer's jitdump goes, if it has one.
    pub(crate) fn jitdump_path(&self) -> Option<std::path::PathBuf> {
        self.jitdump.as_ref().map(|d| d.path())
    }

    /// Records and tables made so far (for tests).
    #[cfg(test)]
    pub(crate) fn made(&self) -> (usize, usize) {
        (self.records.made(), self.tables.count())
    }
}

/// A pack's side table, and the observer that owns it. Dropped with the pack: the table goes
/// back to the observer's pool (every program in it was freed before).
pub(crate) struct Side {
    observer: Arc<Observer>,
    table: NonNull<SideTable>,
}

// SAFETY: `table` points into the observer's pool, kept alive by `observer`; `SideTable` is
// `Send + Sync`.
unsafe impl Send for Side {}
// SAFETY: as above.
unsafe impl Sync for Side {}

impl Side {
    fn table(&self) -> &SideTable {
        // SAFETY: the table lives in the observer's pool until the observer drops; `self`
        // holds the observer.
        unsafe { self.table.as_ref() }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let observer = self.observer.clone();
        observer.tables.release(self.table());
    }
}

/// A pack's [`Side`], if it has one: null until a table is attached, then fixed until the
/// pack drops.
pub(crate) struct SideCell(AtomicPtr<Side>);

impl std::fmt::Debug for SideCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.get().is_some() { "Side" } else { "None" })
    }
}

impl SideCell {
    /// No side table.
    pub(crate) const fn new() -> SideCell {
        SideCell(AtomicPtr::new(null_mut()))
    }

    /// The side table, if the pack has one: one load and one test.
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<&Side> {
        let p = self.0.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `attach` and is freed only
        // when the cell drops, which outlives the reference (it borrows `self`).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// The side table, attaching the one `make` builds if there is none yet.
    #[cold]
    pub(crate) fn attach(&self, make: impl FnOnce() -> Side) -> &Side {
        if let Some(s) = self.get() {
            return s;
        }
        let fresh = Box::into_raw(Box::new(make()));
        match self
            .0
            .compare_exchange(null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: just published; freed only when the cell drops.
            Ok(_) => unsafe { &*fresh },
            Err(existing) => {
                // Another thread attached first: ours was never published.
                // SAFETY: `fresh` came from `Box::into_raw` above and was not shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: as in `get`.
                unsafe { &*existing }
            }
        }
    }
}

impl Drop for SideCell {
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            // SAFETY: from `Box::into_raw` in `attach`, freed once here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Calls `f` with the owner-only side data of the draft whose span starts at chunk `first` of
/// `side`'s pack, made if needed (for `set_name` and `set_eh_frame`).
///
/// Only the draft's owner calls this (`Span::with_record_extra`, which takes the span
/// mutably): no other reference to the record's side data is alive then, nor after `f`.
pub(crate) fn with_extra_at(side: &Side, first: usize, f: impl FnOnce(&mut Extra)) {
    let table = side.table();
    let record = match table.get(first) {
        Some(r) => r,
        None => {
            let r = side.observer.records.take();
            table.set(first, 1, Some(r));
            r
        }
    };
    // SAFETY: the caller owns the draft, the only owner of this record (see above); the
    // reference does not outlive `f`.
    let extra = unsafe { record.extra() };
    f(extra.get_or_insert_with(Box::default));
}

/// The name given to the program or draft whose span starts at chunk `first` of `side`'s pack
/// (if it has a side table), or its default `jit_<addr>` from `addr`, where its code runs.
pub(crate) fn name_at(side: Option<&Side>, first: usize, addr: usize) -> Cow<'_, str> {
    let given = side
        .and_then(|side| side.table().get(first))
        // SAFETY: the caller holds a reference to the span's owner and only reads; the owner's
        // writes (set_name before finalize) happened before this reference existed, and the
        // extra is freed only when the span drops.
        .and_then(|r| unsafe { r.extra() }.as_deref())
        .and_then(|e| e.name.as_deref());
    match given {
        Some(n) => String::from_utf8_lossy(n),
        None => Cow::Owned(names::default_name(addr)),
    }
}

/// Gives the program whose span starts at chunk `first` of `side`'s pack its record (with
/// `given`, a batch slot's side data) if it is named or its allocator announces every
/// program; `None` if it has no record. `side` is the pack's table if it has one, `attach`
/// makes one (a slot given side data in a pack without a table). The result says whether its
/// unwind information fits its `len` bytes of code.
///
/// Only the program's owner calls this (`Span::attach_record`, which takes the span
/// mutably, while the program is being finalized): no other reference to the record's side
/// data is alive then.
pub(crate) fn attach<'a>(
    side: Option<&'a Side>,
    attach: impl FnOnce() -> &'a Side,
    first: usize,
    len: usize,
    given: Option<Box<Extra>>,
) -> Option<Result<()>> {
    let side = match (side, &given) {
        (Some(s), _) => s,
        (None, Some(_)) => attach(),
        (None, None) => return None,
    };
    let table = side.table();
    let record = match table.get(first) {
        Some(r) => r,
        None if given.is_none() && !side.observer.announce => return None,
        None => {
            let r = side.observer.records.take();
            table.set(first, 1, Some(r));
            r
        }
    };
    // SAFETY: the caller owns the program (see above).
    let extra = unsafe { record.extra() };
    if let Some(g) = given {
        *extra = Some(g);
    }
    Some(match extra.as_ref().and_then(|e| e.frames.as_ref()) {
        Some(frames) => frames.check_fits(len),
        None => Ok(()),
    })
}

/// A program just placed, as [`publish`] needs it.
pub(crate) struct Placed<'a> {
    /// First chunk of its span in the pack, and the span's chunks.
    pub first: usize,
    /// Chunks of its span.
    pub chunks: usize,
    /// Where its code runs.
    pub addr: usize,
    /// Its code.
    pub bytes: &'a [u8],
}

/// Publishes the record of a program just placed, if it has one (after [`attach`]), and
/// gathers its announcements into `out`.
///
/// Only the finalize that placed the program calls this (`program::announce`, which holds
/// the programs mutably): no other reference to the record's side data is alive then.
pub(crate) fn publish<'a>(side: Option<&'a Side>, p: &Placed<'_>, out: &mut Outputs<'a>) {
    let Some(side) = side else { return };
    let Some(record) = side.table().get(p.first) else {
        return;
    };
    let (addr, len) = (p.addr, p.bytes.len());
    // SAFETY: the caller owns the program being finalized (see above).
    let extra = unsafe { record.extra() };
    if let Some(e) = extra.as_deref_mut() {
        if let Some(frames) = e.frames.take() {
            e.registered = Some(frames.register(addr));
        }
    }
    let name = extra.as_deref().and_then(|e| e.name.as_deref());
    record.publish(addr, len, name);
    side.table().set(p.first, p.chunks, Some(record));
    let obs = &*side.observer;
    out.switch_to(obs);
    if obs.perf_map.is_some() {
        perf_map::PerfMap::line(&mut out.perf_lines, addr, len, name);
    }
    if let Some(records) = out.records.as_mut() {
        records.load(addr, p.bytes, name);
    }
    #[cfg(feature = "gdb-jit")]
    if obs.gdb {
        let extra = extra.get_or_insert_with(Box::default);
        extra.gdb = gdb_entry(addr, len, extra.name.as_deref(), extra.registered.as_ref());
    }
}

/// The code of a recorded program changed in place (a live patch): the jitdump gets another
/// load record of the same address, length and name with the new bytes. `perf inject` then
/// shows each sample with the code that ran when it was taken (records are timed, as for an
/// address reused by a new program). The perf map and the debugger's entry hold no code
/// bytes: they stay as they are.
///
/// Only the owner of the program calls this (holding it mutably, as a patch does): no other
/// reference to the record's side data is alive then.
pub(crate) fn code_changed(side: Option<&Side>, first: usize, addr: usize, bytes: &[u8]) {
    let Some(side) = side else { return };
    let Some(dump) = side.observer.jitdump.as_ref() else {
        return;
    };
    let Some(record) = side.table().get(first) else {
        return;
    };
    // SAFETY: the caller owns the program (see above).
    let extra = unsafe { record.extra() };
    let name = extra.as_deref().and_then(|e| e.name.as_deref());
    let mut records = dump.records();
    records.load(addr, bytes, name);
    dump.append(records);
}

/// The debugger's object file for a program, registered.
#[cfg(feature = "gdb-jit")]
fn gdb_entry(
    addr: usize,
    len: usize,
    name: Option<&[u8]>,
    registered: Option<&unwind::Registered>,
) -> Option<gdb_jit::Entry> {
    let name = match name {
        Some(n) => names::escaped(n),
        None => names::default_name(addr),
    };
    let eh = registered.map(|r| (r.bytes(), r.bytes().as_ptr() as usize));
    let image = gdb_image::build(addr, len, name.as_bytes(), eh)?;
    Some(gdb_jit::register(image))
}

/// Perf map lines and jitdump records being gathered for one observer; written by
/// [`Outputs::flush`] (one write per file for a whole finalize).
#[derive(Default)]
pub(crate) struct Outputs<'a> {
    observer: Option<&'a Observer>,
    perf_lines: Vec<u8>,
    records: Option<jitdump::Records>,
}

impl<'a> Outputs<'a> {
    /// Gathers for `obs` from now on (writing what was gathered for another observer).
    fn switch_to(&mut self, obs: &'a Observer) {
        if self.observer.is_some_and(|o| std::ptr::eq(o, obs)) {
            return;
        }
        self.flush();
        self.observer = Some(obs);
        self.records = obs.jitdump.as_ref().map(|d| d.records());
    }

    /// Writes what was gathered.
    pub(crate) fn flush(&mut self) {
        let Some(obs) = self.observer else { return };
        if let Some(m) = &obs.perf_map {
            m.append(&self.perf_lines);
        }
        self.perf_lines.clear();
        if let (Some(d), Some(r)) = (&obs.jitdump, self.records.take()) {
            d.append(r);
        }
    }
}

/// A program's (or a draft's) free begins: before its bytes are trap-filled, its record leaves
/// chunk slots `first..first + chunks` and is retired, the debugger and the unwinder forget
/// it, and the record goes back to the pool.
pub(crate) fn freeing(side: &Side, first: usize, chunks: usize) {
    let table = side.table();
    let Some(record) = table.get(first) else {
        return;
    };
    table.set(first, chunks, None);
    record.retire();
    // SAFETY: called by the span's drop (or `free_all`, which owns the programs): the owner.
    let extra = unsafe { record.extra() }.take();
    drop(extra);
    side.observer.records.give_back(record);
}

/// The live programs recorded in `side` (the table of a pack at `base` with chunks of
/// `1 << shift` bytes; `dedicated` for a mapping of its own), in address order.
pub(crate) fn programs_in(
    side: &Side,
    base: usize,
    shift: u32,
    dedicated: bool,
) -> Vec<ProgramInfo> {
    let table = side.table();
    let mut out = Vec::new();
    for chunk in 0..table.slots() {
        let Some(seen) = table.get(chunk).and_then(Record::read) else {
            continue;
        };
        // Once per program: at the chunk its code starts in.
        let starts_here = dedicated || (seen.start - base) >> shift == chunk;
        if starts_here {
            out.push(ProgramInfo::from_seen(&seen));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{Allocator, Config, Observe};

    fn quiet() -> Allocator {
        Allocator::new(Config::default().observe(Observe::default().ignore_env())).unwrap()
    }

    fn ret(d: &mut crate::Draft) {
        d.image_mut()[0] = 0xc3;
    }

    #[test]
    fn nothing_named_nothing_recorded() {
        let alloc = quiet();
        let mut d = alloc.draft(64, 16).unwrap();
        ret(&mut d);
        let p = d.finalize().unwrap();
        assert!(p.span().side().is_none(), "no side table without names");
        assert!(alloc.shared.observer.get().is_none());
        assert_eq!(p.name(), format!("jit_{:x}", p.addr()));
        assert!(alloc.program_at(p.addr()).is_none());
    }

    #[test]
    fn names_follow_programs() {
        let alloc = quiet();
        let mut d = alloc.draft(100, 16).unwrap().named("first").unwrap();
        d.set_name("renamed").unwrap();
        assert_eq!(d.name(), "renamed");
        ret(&mut d);
        let p = d.finalize().unwrap();
        assert_eq!(p.name(), "renamed");
        let found = alloc.program_at(p.addr() + 99).unwrap();
        assert_eq!((found.addr(), found.len()), (p.addr(), 100));
        assert_eq!(found.name_bytes(), b"renamed");
        assert!(alloc.program_at(p.addr() + 100).is_none());
        // An unnamed neighbour in the same pack: no record, not found.
        let mut d = alloc.draft(8, 1).unwrap();
        ret(&mut d);
        let q = d.finalize().unwrap();
        assert!(alloc.program_at(q.addr()).is_none());
        let addr = p.addr();
        drop(p);
        assert!(alloc.program_at(addr).is_none(), "freed");
        // Records are reused: one for the one named program.
        let (records, tables) = alloc.shared.observer.get().unwrap().made();
        assert_eq!((records, tables), (1, 1));
    }

    /// On dualmap, small images are written straight into the pack's alias and finalized in
    /// place, a path that pays nothing for names: a draft named after its code was written
    /// leaves the alias with its bytes, and an announcing allocator's packs hand out no image
    /// in place.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dualmap_images_written_in_place_keep_their_code_when_named() {
        use crate::BackendChoice;
        for observe in [Observe::default(), Observe::default().index(true)] {
            let alloc = Allocator::new(
                Config::default()
                    .backend(BackendChoice::DualMap)
                    .observe(observe.clone().ignore_env()),
            )
            .unwrap();
            let mut d = alloc.draft(6, 16).unwrap();
            d.image_mut().copy_from_slice(&[0xb8, 7, 0, 0, 0, 0xc3]); // mov eax, 7; ret
            d.set_name("seven").unwrap();
            assert_eq!(d.image(), &[0xb8, 7, 0, 0, 0, 0xc3], "bytes kept");
            let p = d.finalize().unwrap();
            // SAFETY: the code above.
            let f = unsafe { p.as_fn::<extern "C" fn() -> u32>() };
            assert_eq!(f(), 7);
            assert_eq!(alloc.program_at(p.addr()).unwrap().name(), "seven");
            // Unnamed: found only when every program is indexed.
            let mut d = alloc.draft(6, 16).unwrap();
            d.image_mut().copy_from_slice(&[0xb8, 8, 0, 0, 0, 0xc3]);
            let q = d.finalize().unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { q.as_fn::<extern "C" fn() -> u32>() }(), 8);
            assert_eq!(alloc.program_at(q.addr()).is_some(), observe.is_on());
            drop((p, q));
            alloc.check_invariants().unwrap();
        }
    }

    #[test]
    fn a_dropped_named_draft_leaves_nothing() {
        let alloc = quiet();
        let d = alloc.draft(64, 1).unwrap().named("never").unwrap();
        let at = d.exec_addr();
        drop(d);
        let mut d = alloc.draft(64, 1).unwrap();
        ret(&mut d);
        let p = d.finalize().unwrap();
        assert_eq!(
            p.name(),
            format!("jit_{:x}", p.addr()),
            "no stale name at {at:#x}"
        );
    }

    #[test]
    fn bad_names_are_typed_errors() {
        let alloc = quiet();
        let mut d = alloc.draft(64, 1).unwrap();
        assert!(matches!(d.set_name(""), Err(crate::Error::BadName { .. })));
        let long = vec![b'x'; crate::MAX_NAME + 1];
        assert!(matches!(
            d.set_name(&long),
            Err(crate::Error::BadName { .. })
        ));
        let mut b = alloc.batch();
        assert!(matches!(
            b.set_name(0, "x"),
            Err(crate::Error::NoSuchSlot { index: 0, slots: 0 })
        ));
        assert!(b.push_named(8, 1, "").is_err());
        assert_eq!(b.len(), 0, "a bad name pushes nothing");
    }

    #[test]
    fn batch_slots_and_finalize_all_carry_names() {
        let alloc = quiet();
        let mut b = alloc.batch();
        for i in 0..100 {
            let s = b.push(40 + i, 1).unwrap();
            s.image[0] = 0xc3;
            if i % 3 == 0 {
                b.set_name(i, format!("slot{i}")).unwrap();
            }
        }
        b.push_named(5000, 64, "big").unwrap().image[0] = 0xc3;
        let progs = b.finalize().unwrap();
        for (i, p) in progs.iter().enumerate().take(100) {
            let want = if i % 3 == 0 {
                format!("slot{i}")
            } else {
                format!("jit_{:x}", p.addr())
            };
            assert_eq!(p.name(), want);
            assert_eq!(alloc.program_at(p.addr()).is_some(), i % 3 == 0);
        }
        assert_eq!(progs[100].name(), "big");
        let mut drafts = Vec::new();
        for i in 0..10 {
            let mut d = alloc.draft(64, 1).unwrap();
            ret(&mut d);
            if i % 2 == 1 {
                d.set_name(format!("d{i}")).unwrap();
            }
            drafts.push(d);
        }
        let ps = alloc.finalize_all(drafts).unwrap();
        assert_eq!(ps[3].name(), "d3");
        assert_eq!(alloc.program_at(ps[3].addr()).unwrap().name(), "d3");
        let snap = alloc.snapshot();
        let listed: usize = snap.packs.iter().map(|p| p.programs.len()).sum();
        assert_eq!(listed, 34 + 1 + 5, "every named program, once");
        alloc.free_all(ps);
        drop(progs);
        assert!(alloc.snapshot().packs.iter().all(|p| p.programs.is_empty()));
    }

    #[test]
    fn the_index_records_every_program() {
        let alloc =
            Allocator::new(Config::default().observe(Observe::default().index(true).ignore_env()))
                .unwrap();
        let mut d = alloc.draft(64, 1).unwrap();
        ret(&mut d);
        let p = d.finalize().unwrap();
        let found = alloc.program_at(p.addr() + 10).unwrap();
        assert!(!found.is_named());
        assert_eq!(found.name(), format!("jit_{:x}", p.addr()));
        // Larger than a pack: a dedicated mapping, also recorded.
        let mut d = alloc.draft(3 << 20, 1).unwrap().named("huge").unwrap();
        ret(&mut d);
        let big = d.finalize().unwrap();
        assert!(big.is_dedicated());
        assert_eq!(
            alloc.program_at(big.addr() + (3 << 20) - 1).unwrap().name(),
            "huge"
        );
    }

    #[test]
    fn a_perf_map_gets_one_line_per_program() {
        let dir =
            std::env::temp_dir().join(format!("progpack-perf-map-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let alloc = Allocator::new(
            Config::default().observe(Observe::default().perf_map_in(&dir).ignore_env()),
        )
        .unwrap();
        let mut d = alloc.draft(32, 1).unwrap().named("line\nbreak").unwrap();
        ret(&mut d);
        let p = d.finalize().unwrap();
        let mut b = alloc.batch();
        b.push(16, 1).unwrap().image[0] = 0xc3;
        let q = b.finalize().unwrap();
        let path = alloc.observe_outputs().perf_map.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("{:x} 20 line\\x0abreak\n", p.addr())),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:x} 10 jit_{:x}\n", q[0].addr(), q[0].addr())),
            "{text}"
        );
        assert!(!alloc.observe_outputs().disabled);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
