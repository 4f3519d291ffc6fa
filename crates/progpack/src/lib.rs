//! # progpack: packed, huge-page-backed, W^X executable memory for JIT compilers
//!
//! The Linux kernel gives its BPF JIT executable memory through `bpf_prog_pack`: many small
//! programs share 2 MiB read+execute regions ("packs") carved into 64-byte chunks, which cuts
//! iTLB misses and direct-map fragmentation; code is emitted into a writable buffer and placed
//! with one text copy; free space is filled with trap instructions. progpack does the same in
//! user space.
//!
//! ## Why packing
//! A JIT that maps one page per function (`mmap` + `mprotect`) spends a system call or two per
//! function, one VMA per function (Linux allows 65530 by default), and one iTLB entry per
//! function when it runs. Packs put thousands of functions in one huge page: one mapping, one
//! TLB entry, and loading costs a copy.
//!
//! ## Why W^X without a writable alias
//! Memory that is writable and executable at once lets any memory-corruption bug become code
//! execution. progpack never maps a page writable and executable. With the default `procmem`
//! backend there is not even a writable *alias*: code reaches the pack through `pwrite` on
//! `/proc/self/mem`, which the kernel carries out through its own mapping. The `dualmap`
//! backend (a `memfd` mapped twice) is the fallback where `/proc/self/mem` is forbidden. See
//! [`backend`] for both, and [`BackendChoice`] to pick one.
//!
//! ## Which backend, and when
//! | choice | when | cost of a write | huge pages | writable alias |
//! |---|---|---|---|---|
//! | [`BackendChoice::Detect`] (default) | almost always: probes `procmem`, then `dualmap` | – | – | – |
//! | [`BackendChoice::ProcMem`] | Linux with `/proc/self/mem` writes allowed (the usual case) | one `pwrite` (about 1 µs): batch many programs per write | yes (THP, `madvise` mode is enough) | none |
//! | [`BackendChoice::ProcMemPerWrite`] | as `ProcMem`, keeping no writable `/proc/self/mem` descriptor open between writes | `open` + `pwrite` + `close` (about 8 µs more): batch many programs per write | yes | none |
//! | [`BackendChoice::DualMap`] | `/proc/self/mem` forbidden (`proc_mem.force_override=never`, some sandboxes) and loads are frequent | a `memcpy` (nanoseconds) | only with shmem THP enabled | yes, at an address the kernel chose, while the pack lives |
//! | [`BackendChoice::DualMapPerWrite`] | `/proc/self/mem` forbidden and you want no lasting alias | a `pwrite` on the `memfd` (about 0.5 µs; `mmap` + `munmap`, about 6 µs, where `pwrite` is refused) | only with shmem THP enabled | none (only during a write where `pwrite` is refused) |
//! | [`BackendChoice::Custom`] | other platforms (e.g. `MAP_JIT` on Apple silicon), tests | yours | yours | yours |
//!
//! [`Allocator::backend_report`] says which backend was picked and what each probe answered;
//! [`Allocator::huge_pages`] and [`Snapshot`] say how much of the packs the kernel actually
//! backs with huge pages. The trait's defaults answer [`Error::Unsupported`], like the kernel's
//! weak `bpf_arch_text_copy`: a platform without a real backend fails loudly, never falls back
//! to writable+executable memory.
//!
//! ## Security and `fork()`
//! What each backend still leaves open to an attacker who has a memory-corruption bug (the
//! `/proc/self/mem` descriptor `procmem` keeps open, `dualmap`'s writable alias), the setting
//! that closes the first ([`BackendChoice::ProcMemPerWrite`]), and what a `fork()` child can do
//! with inherited programs per backend: see [`backend`](backend#security-what-each-backend-leaves-open).
//!
//! ## Where code lands: randomization against JIT spraying
//! JIT spraying plants attacker-chosen constants in executable memory and jumps into the middle
//! of them; it needs to guess where code lands. The kernel's BPF JIT
//! (`bpf_jit_binary_pack_alloc`) adds 16 bytes to every program and starts the image at a
//! random offset of up to those 16 bytes (about 4 bits), first fit otherwise. progpack, with
//! [`Config::randomize`] on (the default):
//! - starts each thread's run of chunks, and each batch's first segment, at a random free word
//!   of its pack (a word covers 64 chunks, 4 KiB with 64-byte chunks: up to 9 bits in a fresh
//!   2 MiB pack, fewer as the pack fills), so where a thread's next programs land is not known
//!   from where its last ones landed once a run is used up. [`Config::scatter_runs`]`(false)`
//!   keeps the random start only for a thread's first run in each pack and lays its next runs
//!   after it: a compact layout for code finalized one by one (what `progpack-cranelift`
//!   chooses), with less entropy;
//! - starts each image at a random offset inside the slack that rounding up to whole chunks
//!   leaves (a 40-byte program in a 64-byte chunk: 0..=24; an exact fit: none), at no cost in
//!   memory;
//! - adds no bytes by default ([`Config::min_slack`] is 0). `min_slack(16)` is the kernel's
//!   choice: every image gets at least 0..=16 bytes of random offset, and a 64-byte program
//!   then takes two chunks (twice the memory and cache footprint). `progpack-bpf`, which runs
//!   code from users it may not trust, sets it.
//!
//! What none of this does: hide addresses from code that can read them (a leaked program
//! address gives away its run), or stop constants from being planted (constant blinding, in
//! `progpack-bpf`'s JIT, does that). `randomize(false)` makes placement first fit and
//! deterministic (for tests and reproducible layouts).
//!
//! ## The cost of one program
//! A small draft comes from the calling thread's run without a lock: about 200 instructions for
//! a load (draft, copy of a 64-byte image, finalize) and as many for a free on the persistent
//! `dualmap` backend, measured by `progpack bench --only count` and kept there by a test;
//! `procmem` adds one `pwrite` per finalize and per free (use a [`Batch`] to place many with
//! one). The hot path and its costs are in the crate's `span` module.
//!
//! ## What `exec_addr()` means for a code generator
//! A [`Draft`] is a writable heap buffer that is never executable, plus chunks reserved in a
//! pack. Emit into [`Draft::image_mut`] but compute every absolute address, and every
//! `rel32` jump or call target, against [`Draft::exec_addr`]: that is where the first byte
//! will run after [`Draft::finalize`]. With dynasm, iced-x86 or Cranelift, assemble "at base
//! `exec_addr()`" and copy the bytes in. To `call rel32` into the host, ask for a
//! [`CodeRange`] near the host's text.
//!
//! The length must be known before the draft exists. Assemblers whose encodings do not depend
//! on the base address (dynasm, hand-written emitters, Cranelift's relocatable output) measure
//! once; iced-x86's block encoder picks branch forms by distance, so measure at an address as
//! near to the targets as the real one (the `iced` example shows how). Many programs at once go
//! through a [`Batch`] or [`Allocator::finalize_all`]: one backend write per contiguous run.
//!
//! ## Examples with real code generators
//! In `crates/progpack/examples/`, each asserting what it checks; run with
//! `cargo run --release -p progpack --example NAME`:
//! - `dynasm`: dynasm-rs `VecAssembler` at base `exec_addr()`; a loop with local labels, and
//!   `call rel32` into another JIT function and into a host `extern "C"` function, reachable
//!   thanks to [`CodeRange::near_this_binary`] (checked by decoding the `E8` calls);
//! - `iced`: iced-x86 `CodeAssembler`, two thousand functions placed by one [`Batch`] in a
//!   single backend write, called against a Rust oracle, half of them dropped;
//! - `cranelift`: `cranelift-codegen` + `cranelift-frontend` functions whose relocations
//!   (`X86CallPCRel4` to JIT code and the host, `Abs8`) are applied against `exec_addr()`, then
//!   placed with [`Allocator::finalize_all`]: what a `cranelift-jit` user would replace its
//!   per-module `mmap`/`mprotect` with, plus freeing single functions;
//! - `many_small`: a regex character-class compiler JIT-ing ten thousand tiny predicates,
//!   replacing a third of them three times, printing [`Stats`] and huge-page coverage;
//! - `tiering`: an interpreter-to-JIT tier-up: callers' `call rel32` sites are retargeted from
//!   the interpreter to the compiled function with [`Program::patch`] while worker threads
//!   keep calling them, every result checked.
//!
//! To see the packs, `progpack map` (in the `progpack-cli` crate) draws a [`Snapshot`] as a PNG,
//! an SVG or a terminal map; its `progpack_cli::map` module renders any allocator's snapshot.
//!
//! ## Live patching
//! A finalized program is not frozen: [`Program::patch`] replaces one instruction while other
//! threads run it (the kernel's `text_poke_bp` on x86-64; a single store of B, BL, NOP, BRK...
//! on aarch64), through the backend like every other write. The [`patch`] module says exactly
//! which patches are safe on which architecture and backend, and why.
//!
//! ## Names for JIT code
//! [`Draft::set_name`] and [`Batch::push_named`] name programs ([`Program::name`]; unnamed ones
//! are `jit_<addr>`). [`Observe`] (in [`Config::observe`], or `PROGPACK_PERF_MAP=1`,
//! `PROGPACK_JITDUMP=DIR`, `PROGPACK_GDB_JIT=1` in the environment) announces every program to
//! perf (a perf map, a jitdump for `perf inject --jit`) and to debuggers (the GDB JIT
//! interface); [`Draft::set_eh_frame`] registers a program's unwind information so panics and
//! backtraces walk through it; [`Allocator::program_at`] says which program covers an address,
//! from a signal handler. Unused, none of it costs more than a test of a pointer or a bit.
//!
//! ## Reading the code
//! The files form a one-way stack (the `layers` test checks that no file names one above
//! it), bottom first: `backend::sys` (typed system calls) → `backend` (`procmem`, `dualmap`,
//! and the fork bookkeeping in `backend::inherit`) → `bitmap`, `region`, `pack` (with the
//! side tables of `observe` and the patch sites of `patch::trap_handler`, which know only
//! addresses and chunk numbers) → `run`, `shared`, `thread_cache` (threads' runs, the
//! allocator's state) → `span` (the per-program hot path, with its cost written at the top)
//! → `program` → `draft`, `batch`, [`patch`], and [`Allocator`] here. Each file states its
//! invariants at its top.
//!
//! ## Safe and unsafe
//! Allocating, writing and finalizing are safe: the worst a wrong image can do is be wrong
//! code. Running code is `unsafe` ([`Program::as_fn`]): the compiler cannot check machine code.
//! Implementing a [`Backend`] is `unsafe`: the allocator trusts it to map and write exactly
//! what it says.
//!
//! ## Example
//! ```
//! use progpack::{Allocator, Config};
//!
//! let alloc = Allocator::new(Config::default())?;
//! let mut draft = alloc.draft(6, 1)?;
//! // x86-64: mov eax, 42; ret  (aarch64 would emit its own encoding here)
//! # #[cfg(target_arch = "x86_64")]
//! draft.image_mut().copy_from_slice(&[0xb8, 42, 0, 0, 0, 0xc3]);
//! let program = draft.finalize()?;
//! # #[cfg(target_arch = "x86_64")]
//! # {
//! // SAFETY: the bytes above are a complete function with this signature.
//! let f = unsafe { program.as_fn::<extern "C" fn() -> u32>() };
//! assert_eq!(f(), 42);
//! # }
//! drop(program); // its chunks are trap-filled, then freed
//! # Ok::<(), progpack::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod arch;
pub mod backend;
mod batch;
mod bitmap;
mod code_range;
mod config;
mod draft;
mod error;
mod observe;
mod pack;
pub mod patch;
mod program;
mod region;
mod run;
mod shared;
mod span;
mod staging;
mod stats;
mod thread_cache;

pub use backend::{Backend, Caps, Mapping, Placement};
pub use batch::{Batch, SlotMut};
pub use config::{BackendChoice, CodeRange, Config};
pub use draft::Draft;
pub use error::{Errno, Error, Result};
pub use observe::names::MAX_NAME;
pub use observe::{JitdumpClock, Observe, ObserveOutputs, ProgramInfo};
pub use program::Program;
pub use stats::{huge_bytes_in, HugePages, PackSnapshot, Snapshot, Stats};

use shared::Shared;
use std::sync::Arc;

/// Executable memory for JIT code, in packs. Cheap to clone (a shared handle); `Send + Sync`.
///
/// Every mapping it makes is returned when the allocator (all clones) and every draft, batch
/// and program made from it are gone.
#[derive(Clone, Debug)]
pub struct Allocator {
    shared: Arc<Shared>,
}

impl Allocator {
    /// Creates an allocator; checks the configuration, picks (probes) the backend and checks
    /// that the instruction-cache sync works here. Maps nothing yet, except the code range
    /// reservation if one is configured.
    pub fn new(config: Config) -> Result<Allocator> {
        Ok(Allocator {
            shared: Shared::new(config)?,
        })
    }

    /// Reserves room for an image of `len` bytes whose first byte is aligned to `align` (a
    /// power of two, at most the page size). Small requests come from the calling thread's run
    /// of chunks without a lock; requests larger than a pack get a mapping of their own.
    #[inline(always)]
    pub fn draft(&self, len: usize, align: usize) -> Result<Draft> {
        span::allocate(&self.shared, len, align).map(Draft::new)
    }

    /// Starts a batch: drafts laid out contiguously and finalized with one write per run.
    pub fn batch(&self) -> Batch {
        Batch::new(self.shared.clone())
    }

    /// Finalizes many drafts: drafts that lie next to each other in one pack are placed with a
    /// single backend write of their images and the trap bytes between them (one `pwritev` on
    /// procmem; the images are not first copied into one buffer). Returns the programs in the
    /// order given. All or nothing: on error every draft's chunks are trap-filled and freed.
    pub fn finalize_all(&self, drafts: Vec<Draft>) -> Result<Vec<Program>> {
        let mut parts: Vec<Option<(span::Span, staging::Image)>> =
            drafts.into_iter().map(|d| Some(d.into_parts())).collect();
        let mut order: Vec<usize> = (0..parts.len()).collect();
        let base =
            |p: &Option<(span::Span, staging::Image)>| p.as_ref().map_or(0, |(s, _)| s.base());
        order.sort_by_key(|&i| base(&parts[i]));
        let mut i = 0;
        while i < order.len() {
            // Images already in place (in the pack's alias) need only the instruction-cache
            // sync; the others go in stretches of drafts whose spans follow each other in one
            // mapping, one write each.
            if let Some((span, image)) = parts[order[i]].as_mut() {
                if image.in_place() {
                    span.publish_in_place()?;
                    i += 1;
                    continue;
                }
            }
            let mut j = i + 1;
            while j < order.len() {
                let (prev, next) = (&parts[order[j - 1]], &parts[order[j]]);
                let (Some((ps, _)), Some((ns, ni))) = (prev, next) else {
                    break;
                };
                if ni.in_place() || !ps.followed_by(ns) {
                    break;
                }
                j += 1;
            }
            place_stretch(&mut parts, &order[i..j])?;
            i = j;
        }
        let mut programs: Vec<Program> = parts
            .into_iter()
            .map(|p| {
                let (mut span, _image) = p.expect("each draft once");
                span.became_program();
                Program::new(span)
            })
            .collect();
        if programs.iter().any(|p| p.span().side().is_some()) {
            // Named drafts, or the allocator announces its code.
            program::announce(&mut programs, None)?;
        }
        Ok(programs)
    }

    /// Frees many programs at once: programs that lie next to each other in one pack are
    /// trap-filled with a single backend write, then all their chunks are freed. Same result as
    /// dropping each, with one system call per run instead of one per program.
    pub fn free_all(&self, mut programs: Vec<Program>) {
        programs.sort_by_key(|p| p.addr());
        let mut i = 0;
        while i < programs.len() {
            let mut j = i + 1;
            while j < programs.len() {
                if !programs[j - 1].span().followed_by(programs[j].span()) {
                    break;
                }
                j += 1;
            }
            // They stop being announced before their bytes become traps.
            for p in &programs[i..j] {
                p.span().unannounce();
            }
            if !programs[i].span().is_dedicated() {
                // One fill from the first program's code to the last one's end (the bytes
                // between them are traps already); if it fails, each program's own drop tries
                // again (and quarantines its chunks if that fails too).
                let (m, at) = programs[i].span().mapping();
                let start = at + programs[i].span().image_at();
                let last = &programs[j - 1];
                let end = last.addr() + last.len() - m.base();
                if m.fill_traps(start, end - start).is_ok() {
                    let _ = arch::sync_icache(m.base() + start, end - start);
                    for p in &mut programs[i..j] {
                        p.span_mut().mark_written(false);
                    }
                }
            }
            i = j;
        }
        drop(programs);
    }

    /// Gives the calling thread's reserved but unused chunks back to their pack, so that a pack
    /// left empty can be released (or kept in reserve). Other threads' reservations come back
    /// when they exit. Costs a lock; allocating again takes a new run.
    pub fn trim(&self) {
        thread_cache::with_state(&self.shared, |local, st| {
            if let Some(run) = st.run.take() {
                local.made.cached.add((run.left() as u64).wrapping_neg());
                run.retire();
            }
        });
    }

    /// The program whose code covers `addr`, with its address, length and name: for trap
    /// handlers and sampling profilers. Finds named programs, and every program when an
    /// announcement (or [`Observe::index`]) is on; `None` for anything else (a free chunk, the
    /// slack around a program, another allocator's code).
    ///
    /// Safe to call from a signal handler: no lock, no allocation, no system call; the answer
    /// is a copy. While other threads load and free programs it is never torn: it describes a
    /// program that was live at a moment during the call (a program finalized before the call
    /// began and freed after it returned is always found). Cost: one look at each pack's
    /// table (packs hold up to `pack_size / chunk_size` programs each), then a few loads.
    ///
    /// ```
    /// # use progpack::{Allocator, Config};
    /// let alloc = Allocator::new(Config::default())?;
    /// let mut draft = alloc.draft(16, 1)?.named("handler")?;
    /// draft.image_mut()[0] = 0xc3; // x86-64 `ret` (never called here)
    /// let program = draft.finalize()?;
    /// let found = alloc.program_at(program.addr() + 5).expect("inside the code");
    /// assert_eq!((found.addr(), found.len(), &*found.name()), (program.addr(), 16, "handler"));
    /// drop(program);
    /// assert!(alloc.program_at(found.addr()).is_none());
    /// # Ok::<(), progpack::Error>(())
    /// ```
    pub fn program_at(&self, addr: usize) -> Option<ProgramInfo> {
        self.shared.observer.get()?.program_at(addr)
    }

    /// True if this allocator announces every program it places (a perf map, a jitdump, the
    /// GDB JIT interface or [`Observe::index`] is on): a code generator can skip computing
    /// names when this is false and it names only for those announcements.
    #[inline]
    pub fn announces(&self) -> bool {
        self.shared.announces()
    }

    /// The announcements in force: the configuration's [`Observe`] combined with the
    /// environment (`PROGPACK_PERF_MAP`, `PROGPACK_JITDUMP`, `PROGPACK_GDB_JIT`). A code
    /// generator may skip computing names when this says nothing is on.
    pub fn observe(&self) -> Observe {
        self.shared
            .observer
            .get()
            .map(|o| o.settings().clone())
            .unwrap_or_default()
    }

    /// Where this allocator's perf map and jitdump are written (if on), and whether a failure
    /// (an unwritable directory, a full disk) has disabled either of them.
    pub fn observe_outputs(&self) -> ObserveOutputs {
        let o = self.shared.observer.get();
        ObserveOutputs {
            perf_map: o.and_then(|o| o.perf_map_path()),
            jitdump: o.and_then(|o| o.jitdump_path()),
            disabled: o.is_some_and(|o| o.disabled_outputs()),
        }
    }

    /// Counters (no system calls).
    pub fn stats(&self) -> Stats {
        stats::stats(&self.shared)
    }

    /// Per-pack occupancy, with huge-page backing per pack where `/proc/self/smaps` tells.
    pub fn snapshot(&self) -> Snapshot {
        stats::snapshot(&self.shared)
    }

    /// Per-pack occupancy like [`Self::snapshot`], without reading `/proc/self/smaps`
    /// (`huge_bytes` is `None`): cheap enough to call after every operation in tests.
    pub fn occupancy(&self) -> Snapshot {
        stats::occupancy(&self.shared)
    }

    /// How many bytes of the packs the kernel backs with huge pages (reads `/proc/self/smaps`).
    pub fn huge_pages(&self) -> std::io::Result<HugePages> {
        stats::huge_pages(&self.shared)
    }

    /// Name of the backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.shared.backend.name()
    }

    /// What the backend can do.
    pub fn backend_caps(&self) -> Caps {
        self.shared.backend.caps()
    }

    /// Which backend was picked and why (one line per backend probed), and the state of the
    /// instruction-cache sync.
    pub fn backend_report(&self) -> &str {
        &self.shared.backend_report
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The code range reservation (base, size), if one is configured.
    pub fn code_range(&self) -> Option<(usize, usize)> {
        self.shared.space.as_ref().map(|s| (s.base(), s.size()))
    }

    /// Checks every invariant that can be checked from inside: per pack, the bitmap's summary
    /// and counts, the fit hints, and that every free chunk holds only traps. Returns what is
    /// wrong. Costs a read of every free chunk: for tests and debugging.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.shared.packs().iter().try_for_each(|p| p.check())
    }
}

/// Places a stretch of drafts whose spans follow each other in one pack: one backend write of
/// their images with the trap bytes between them (`indices` in address order).
fn place_stretch(
    parts: &mut [Option<(span::Span, staging::Image)>],
    indices: &[usize],
) -> Result<()> {
    let get = |i: usize| parts[i].as_ref().expect("each draft once");
    let (first_span, _) = get(indices[0]);
    let (m, at) = first_span.mapping();
    let start = at + first_span.image_at();
    let mapping_base = m.base();
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(indices.len() * 2);
    let mut cursor = mapping_base + start;
    for &i in indices {
        let (span, image) = get(i);
        let image_at = span.exec_addr();
        staging::push_traps(&mut pieces, cursor, image_at - cursor);
        pieces.push(image.bytes());
        cursor = image_at + image.bytes().len();
    }
    let len = cursor - (mapping_base + start);
    let written = m.write_parts(start, &pieces);
    drop(pieces);
    // Marked whatever the write's outcome: a write that fails half way must still be
    // trap-filled when the drafts are dropped.
    for &i in indices {
        if let Some((span, _)) = parts[i].as_mut() {
            span.mark_written(true);
        }
    }
    written?;
    arch::sync_icache(mapping_base + start, len)
}
