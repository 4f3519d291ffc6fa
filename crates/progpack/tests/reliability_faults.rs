//! Fault injection through the backend trait.
//!
//! `Faulty` wraps a real backend (procmem or dualmap) and, on command, fails the k-th text
//! write, writes only part of it and then fails, fails the k-th trap fill, or fails the k-th
//! mapping. A fixed workload (single drafts, batches, `finalize_all`, frees, large programs) is
//! first run without faults to count the backend calls, then once per call with that call
//! failing. After every operation of every run:
//!
//! - the failing operation returned the typed error of the injected fault, and no other failed;
//! - `check_invariants()` holds (every free chunk is traps: a partial write was undone);
//! - chunks in use = the live programs' spans + quarantined chunks (nothing leaked or freed
//!   twice); a failed trap fill quarantines exactly the program's chunks, and they are never
//!   handed out again;
//! - every live program still holds its bytes and returns its own value when called;
//! - the allocator keeps working: the workload goes on after the fault.

mod support;

use progpack::backend::{DualMap, ProcMem};
use progpack::{
    Allocator, Backend, BackendChoice, Caps, CodeRange, Config, Errno, Error, Mapping, Placement,
    Program,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::{call_u64, ret_imm64};

const NEVER: usize = usize::MAX;
const PACK: usize = 8192;
const CHUNK: usize = 64;

/// Which calls fail. Counters are 1-based: `fail_write = 3` fails the third write.
#[derive(Debug)]
struct Plan {
    writes: AtomicUsize,
    fills: AtomicUsize,
    maps: AtomicUsize,
    fail_write: AtomicUsize,
    partial_write: AtomicUsize,
    fail_fill: AtomicUsize,
    fail_map: AtomicUsize,
    /// When the failing write fails, also fail the next trap fill (the clean-up).
    then_fill: std::sync::atomic::AtomicBool,
    /// Faults injected, all kinds.
    injected: AtomicUsize,
    /// Of those, failed trap fills (which surface as quarantine, not as errors).
    injected_fills: AtomicUsize,
}

impl Plan {
    fn new() -> Arc<Plan> {
        Arc::new(Plan {
            writes: AtomicUsize::new(0),
            fills: AtomicUsize::new(0),
            maps: AtomicUsize::new(0),
            fail_write: AtomicUsize::new(NEVER),
            partial_write: AtomicUsize::new(NEVER),
            fail_fill: AtomicUsize::new(NEVER),
            fail_map: AtomicUsize::new(NEVER),
            then_fill: std::sync::atomic::AtomicBool::new(false),
            injected: AtomicUsize::new(0),
            injected_fills: AtomicUsize::new(0),
        })
    }
}

fn injected_os(op: &'static str) -> Error {
    Error::Os {
        op,
        errno: Errno(libc::EIO),
    }
}

#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Backend>,
    plan: Arc<Plan>,
}

// SAFETY: every mapping comes from the inner backend, which keeps the `Mapping` promises;
// `FaultyMapping` only forwards to it or refuses (a refused write or fill changes nothing,
// a partial write changes only bytes inside the range it was asked to write).
unsafe impl Backend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
    fn map(&self, len: usize, placement: Placement) -> progpack::Result<Box<dyn Mapping>> {
        let n = self.plan.maps.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.plan.fail_map.load(Ordering::SeqCst) {
            self.plan.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Os {
                op: "injected map",
                errno: Errno(libc::ENOMEM),
            });
        }
        Ok(Box::new(FaultyMapping {
            inner: self.inner.map(len, placement)?,
            plan: self.plan.clone(),
        }))
    }
}

#[derive(Debug)]
struct FaultyMapping {
    inner: Box<dyn Mapping>,
    plan: Arc<Plan>,
}

// SAFETY: forwards to a mapping that keeps the promises, or refuses the call (see `Faulty`).
unsafe impl Mapping for FaultyMapping {
    fn base(&self) -> usize {
        self.inner.base()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn backend_name(&self) -> &'static str {
        "faulty"
    }
    fn write(&self, offset: usize, bytes: &[u8]) -> progpack::Result<()> {
        let n = self.plan.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.plan.fail_write.load(Ordering::SeqCst) {
            self.plan.injected.fetch_add(1, Ordering::SeqCst);
            if self.plan.then_fill.load(Ordering::SeqCst) {
                let next = self.plan.fills.load(Ordering::SeqCst) + 1;
                self.plan.fail_fill.store(next, Ordering::SeqCst);
            }
            return Err(injected_os("injected write"));
        }
        if n == self.plan.partial_write.load(Ordering::SeqCst) {
            self.plan.injected.fetch_add(1, Ordering::SeqCst);
            let half = bytes.len().div_ceil(2);
            self.inner.write(offset, &bytes[..half])?;
            return Err(Error::ShortWrite {
                wanted: bytes.len(),
                written: half,
            });
        }
        self.inner.write(offset, bytes)
    }
    fn fill_traps(&self, offset: usize, len: usize) -> progpack::Result<()> {
        let n = self.plan.fills.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.plan.fail_fill.load(Ordering::SeqCst) {
            self.plan.injected.fetch_add(1, Ordering::SeqCst);
            self.plan.injected_fills.fetch_add(1, Ordering::SeqCst);
            return Err(injected_os("injected trap fill"));
        }
        self.inner.fill_traps(offset, len)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Write(usize),
    PartialWrite(usize),
    /// The write fails and so does the trap fill that cleans up after it.
    WriteAndFill(usize),
    Fill(usize),
    Map(usize),
}

/// One step of the workload. Lengths are picked so that packs fill up and empty out.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// One draft, finalized.
    Load(usize),
    /// A batch of this many programs of this length.
    Batch(usize, usize),
    /// `finalize_all` on this many drafts of this length.
    All(usize, usize),
    /// Drop the live program at this index (modulo the count).
    Free(usize),
    /// Drop every other live program.
    FreeHalf,
    /// `free_all` on the first this many live programs (one trap fill per contiguous run; a
    /// failed run fill is retried program by program, so nothing is quarantined).
    FreeAll(usize),
}

fn workload() -> Vec<Step> {
    use Step::*;
    vec![
        Load(40),
        Load(200),
        Batch(5, 90),
        All(4, 30),
        Free(1),
        Load(3000),
        Free(0),
        Batch(3, 700),
        All(3, 500),
        FreeHalf,
        Load(PACK + 100), // dedicated mapping
        Batch(40, 100),   // spills into a second pack
        Free(3),
        All(6, 11),
        FreeHalf,
        Free(0),
        Load(2 * PACK), // dedicated mapping
        Batch(2, 4000),
        FreeAll(12),
        Batch(30, 60),
        FreeAll(25),
        FreeHalf,
        FreeHalf,
    ]
}

struct Live {
    p: Program,
    value: u64,
    bytes: Vec<u8>,
}

struct Run {
    alloc: Allocator,
    plan: Arc<Plan>,
    live: Vec<Live>,
    next: u64,
    /// Chunks the model expects quarantined.
    quarantined: usize,
    /// Quarantined ranges (addr, len): never handed out again.
    bad: Vec<(usize, usize)>,
}

/// Chunks of a span (the default `min_slack` is 0).
fn span_chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

fn image(value: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xa5u8; len];
    let code = ret_imm64(value);
    b[..code.len()].copy_from_slice(&code);
    b
}

impl Run {
    fn new(inner: Arc<dyn Backend>, fault: Fault, code_range: bool) -> Run {
        let plan = Plan::new();
        match fault {
            Fault::None => {}
            Fault::Write(k) => plan.fail_write.store(k, Ordering::SeqCst),
            Fault::PartialWrite(k) => plan.partial_write.store(k, Ordering::SeqCst),
            Fault::WriteAndFill(k) => {
                plan.fail_write.store(k, Ordering::SeqCst);
                plan.then_fill.store(true, Ordering::SeqCst);
            }
            Fault::Fill(k) => plan.fail_fill.store(k, Ordering::SeqCst),
            Fault::Map(k) => plan.fail_map.store(k, Ordering::SeqCst),
        }
        let backend = Arc::new(Faulty {
            inner,
            plan: plan.clone(),
        });
        // Placement without randomness: the sweep counts the backend calls of a clean run and
        // then fails each one in turn, so every run must make the same calls.
        let mut config = Config::default()
            .pack_size(PACK)
            .chunk_size(CHUNK)
            .reserve_packs(0)
            .randomize(false)
            .shards(1)
            .backend(BackendChoice::Custom(backend));
        if code_range {
            config = config.code_range(CodeRange::near_this_binary().size(16 * PACK));
        }
        Run {
            alloc: Allocator::new(config).expect("allocator"),
            plan,
            live: Vec::new(),
            next: 1,
            quarantined: 0,
            bad: Vec::new(),
        }
    }

    fn fresh(&mut self, len: usize) -> (u64, Vec<u8>) {
        self.next += 1;
        let v = 0xfa17_0000_0000 + self.next;
        (v, image(v, len))
    }

    fn adopt(&mut self, p: Program, value: u64, bytes: Vec<u8>) -> Result<(), String> {
        if self
            .bad
            .iter()
            .any(|&(a, l)| p.addr() < a + l && a < p.addr() + p.len())
        {
            return Err(format!(
                "program at {:#x} placed over quarantined chunks",
                p.addr()
            ));
        }
        self.live.push(Live { p, value, bytes });
        Ok(())
    }

    /// Drops the live program at `i`, accounting for a trap fill that fails.
    fn free(&mut self, i: usize) {
        let l = self.live.swap_remove(i);
        let fills_before = self.plan.fills.load(Ordering::SeqCst);
        let (addr, len, dedicated) = (l.p.addr(), l.p.len(), l.p.is_dedicated());
        drop(l);
        let fills_after = self.plan.fills.load(Ordering::SeqCst);
        let failed = self.plan.fail_fill.load(Ordering::SeqCst);
        if !dedicated && fills_before < failed && failed <= fills_after {
            self.quarantined += span_chunks(len);
            self.bad.push((addr, len));
        }
    }

    /// Applies `step`; returns the error the allocator reported, if any.
    fn step(&mut self, step: Step) -> Result<Option<Error>, String> {
        let fills_before = self.plan.fills.load(Ordering::SeqCst);
        // Drafts whose finalize fails are trap-filled on the way out; if that fill is the
        // failing one, their chunks are quarantined: remember what was in flight.
        let mut in_flight: Vec<(usize, usize)> = Vec::new();
        let result: Result<(), Error> = (|| {
            match step {
                Step::Load(len) => {
                    let (v, bytes) = self.fresh(len);
                    let mut d = self.alloc.draft(len, 1)?;
                    d.image_mut().copy_from_slice(&bytes);
                    in_flight.push((d.exec_addr(), len));
                    let p = d.finalize()?;
                    self.adopt(p, v, bytes).map_err(Error::BadConfig)?;
                }
                Step::Batch(n, len) => {
                    let mut b = self.alloc.batch();
                    let mut vals = Vec::new();
                    for _ in 0..n {
                        let (v, bytes) = self.fresh(len);
                        let s = b.push(len, 1)?;
                        s.image.copy_from_slice(&bytes);
                        in_flight.push((s.exec_addr, len));
                        vals.push((v, bytes));
                    }
                    let progs = b.finalize()?;
                    for (p, (v, bytes)) in progs.into_iter().zip(vals) {
                        self.adopt(p, v, bytes).map_err(Error::BadConfig)?;
                    }
                }
                Step::All(n, len) => {
                    let mut ds = Vec::new();
                    let mut vals = Vec::new();
                    for _ in 0..n {
                        let (v, bytes) = self.fresh(len);
                        let mut d = self.alloc.draft(len, 1)?;
                        d.image_mut().copy_from_slice(&bytes);
                        in_flight.push((d.exec_addr(), len));
                        ds.push(d);
                        vals.push((v, bytes));
                    }
                    let progs = self.alloc.finalize_all(ds)?;
                    for (p, (v, bytes)) in progs.into_iter().zip(vals) {
                        self.adopt(p, v, bytes).map_err(Error::BadConfig)?;
                    }
                }
                Step::Free(i) => {
                    if !self.live.is_empty() {
                        let i = i % self.live.len();
                        self.free(i);
                    }
                }
                Step::FreeAll(n) => {
                    let k = n.min(self.live.len());
                    let progs: Vec<Program> = self.live.drain(..k).map(|l| l.p).collect();
                    self.alloc.free_all(progs);
                }
                Step::FreeHalf => {
                    let mut i = self.live.len();
                    while i >= 2 {
                        i -= 2;
                        self.free(i);
                    }
                }
            }
            Ok(())
        })();
        let err = match result {
            Ok(()) => None,
            Err(Error::BadConfig(msg)) => return Err(msg),
            Err(e) => Some(e),
        };
        let fills_after = self.plan.fills.load(Ordering::SeqCst);
        let failed_fill = self.plan.fail_fill.load(Ordering::SeqCst);
        if err.is_some() && fills_before < failed_fill && failed_fill <= fills_after {
            // The fill that failed was the clean-up of this failed operation. Which draft's
            // chunks it was is not observable from outside; the chunk count check below takes
            // the quarantine from the allocator's own counter and checks it is one of them.
            let q = self.alloc.stats().chunks_quarantined - self.quarantined;
            if !in_flight.iter().any(|&(_, len)| span_chunks(len) == q) && q != 0 {
                return Err(format!(
                    "{q} chunks quarantined, matching no draft in flight"
                ));
            }
            self.quarantined += q;
        }
        Ok(err)
    }

    /// Everything that must hold between operations.
    fn check(&self) -> Result<(), String> {
        self.alloc.check_invariants()?;
        let st = self.alloc.stats();
        let spans: usize = self
            .live
            .iter()
            .filter(|l| !l.p.is_dedicated())
            .map(|l| span_chunks(l.p.len()))
            .sum();
        if st.chunks_quarantined != self.quarantined {
            return Err(format!(
                "quarantined {} chunks, expected {}",
                st.chunks_quarantined, self.quarantined
            ));
        }
        if st.chunks_used != spans + self.quarantined {
            return Err(format!(
                "{} chunks used; live spans {spans} + quarantined {}",
                st.chunks_used, self.quarantined
            ));
        }
        if st.allocations != self.live.len() || st.programs != self.live.len() {
            return Err(format!(
                "{} allocations, {} programs, {} live",
                st.allocations,
                st.programs,
                self.live.len()
            ));
        }
        let dedicated = self.live.iter().filter(|l| l.p.is_dedicated()).count();
        if st.dedicated_mappings != dedicated {
            return Err(format!(
                "{} dedicated mappings, {dedicated} live",
                st.dedicated_mappings
            ));
        }
        for l in &self.live {
            if l.p.bytes() != l.bytes.as_slice() {
                return Err(format!("program at {:#x} changed", l.p.addr()));
            }
            let got = call_u64(&l.p);
            if got != l.value {
                return Err(format!(
                    "program at {:#x} returned {got:#x}, not {:#x}",
                    l.p.addr(),
                    l.value
                ));
            }
        }
        Ok(())
    }
}

/// Faults injected that the operation must report as an error (writes and maps).
fn erroring(plan: &Plan) -> usize {
    plan.injected.load(Ordering::SeqCst) - plan.injected_fills.load(Ordering::SeqCst)
}

/// What a fault-free run of the workload costs in backend calls.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    writes: usize,
    fills: usize,
    maps: usize,
}

fn run(
    inner: &Arc<dyn Backend>,
    fault: Fault,
    code_range: bool,
) -> Result<(Counts, usize), String> {
    let mut r = Run::new(inner.clone(), fault, code_range);
    let mut failed_steps = 0;
    for (i, step) in workload().into_iter().enumerate() {
        let errors_before = erroring(&r.plan);
        let err = r
            .step(step)
            .map_err(|e| format!("step {i} {step:?}: {e}"))?;
        let injected_now = erroring(&r.plan) > errors_before;
        match (&err, fault) {
            (None, _) => {}
            (Some(e), Fault::Write(_) | Fault::PartialWrite(_) | Fault::WriteAndFill(_))
                if injected_now =>
            {
                let typed = matches!(e, Error::Os { op: "injected write", errno } if errno.0 == libc::EIO)
                    || matches!(e, Error::ShortWrite { wanted, written } if written < wanted);
                if !typed {
                    return Err(format!("step {i} {step:?}: wrong error {e:?}"));
                }
                failed_steps += 1;
            }
            (Some(e), Fault::Map(_)) if injected_now => {
                if !e.is_out_of_memory() {
                    return Err(format!("step {i} {step:?}: wrong error {e:?}"));
                }
                failed_steps += 1;
            }
            (Some(e), _) => return Err(format!("step {i} {step:?}: unexpected error {e}")),
        }
        if injected_now && err.is_none() {
            return Err(format!(
                "step {i} {step:?}: fault {fault:?} injected but no error"
            ));
        }
        r.check()
            .map_err(|e| format!("after step {i} {step:?}: {e}"))?;
    }
    let counts = Counts {
        writes: r.plan.writes.load(Ordering::SeqCst),
        fills: r.plan.fills.load(Ordering::SeqCst),
        maps: r.plan.maps.load(Ordering::SeqCst),
    };
    // Keeps working: a new program loads and runs after everything.
    let (v, bytes) = r.fresh(64);
    let mut d = r.alloc.draft(64, 1).map_err(|e| e.to_string())?;
    d.image_mut().copy_from_slice(&bytes);
    let p = d
        .finalize()
        .map_err(|e| format!("load after the workload: {e}"))?;
    r.adopt(p, v, bytes)?;
    r.check()?;
    let injected = r.plan.injected.load(Ordering::SeqCst);
    let want = match fault {
        Fault::None => 0,
        Fault::WriteAndFill(_) => 2,
        _ => 1,
    };
    if injected != want {
        return Err(format!("fault {fault:?} injected {injected} times"));
    }
    if !matches!(fault, Fault::None | Fault::Fill(_)) && failed_steps != 1 {
        return Err(format!("fault {fault:?}: {failed_steps} failed steps"));
    }
    // Drop everything (and this thread's run); quarantined chunks keep their pack until the
    // allocator goes.
    r.live.clear();
    r.alloc.trim();
    let st = r.alloc.stats();
    if r.quarantined == 0 && st.packs != 0 {
        return Err(format!("{} packs left with nothing live", st.packs));
    }
    Ok((counts, injected))
}

/// Runs the sweep for one backend; returns the number of faults injected.
fn sweep(name: &str, inner: Arc<dyn Backend>, code_range: bool) -> usize {
    let (c, _) =
        run(&inner, Fault::None, code_range).unwrap_or_else(|e| panic!("{name} clean run: {e}"));
    assert!(
        c.writes >= 15 && c.fills > 20 && c.maps > 4,
        "{name}: workload too small: {c:?}"
    );
    let mut faults = Vec::new();
    for k in 1..=c.writes {
        faults.push(Fault::Write(k));
        faults.push(Fault::PartialWrite(k));
        faults.push(Fault::WriteAndFill(k));
    }
    faults.extend((1..=c.fills).map(Fault::Fill));
    faults.extend((1..=c.maps).map(Fault::Map));
    let mut injected = 0;
    for f in faults {
        let (_, n) = run(&inner, f, code_range).unwrap_or_else(|e| panic!("{name} {f:?}: {e}"));
        injected += n;
    }
    eprintln!("{name}: {injected} faults injected ({c:?} per clean run)");
    injected
}

#[test]
fn faults_procmem() {
    let inner: Arc<dyn Backend> = Arc::new(ProcMem::new().expect("procmem"));
    assert!(sweep("procmem", inner, false) > 100);
}

#[test]
fn faults_dualmap() {
    let inner: Arc<dyn Backend> = Arc::new(DualMap::persistent());
    assert!(sweep("dualmap", inner, false) > 100);
}

/// In a code range, a failed mapping must give its slot back: the range still holds as many
/// packs as it has slots afterwards.
#[test]
fn faults_in_a_code_range() {
    let inner: Arc<dyn Backend> = Arc::new(DualMap::per_write());
    assert!(sweep("dualmap-per-write + code range", inner.clone(), true) > 100);

    let r = Run::new(inner, Fault::Map(1), true);
    let err = r.alloc.draft(64, 1).expect_err("first map fails");
    assert!(err.is_out_of_memory(), "{err:?}");
    // 16 slots of one pack each: 16 full-pack programs must fit after the failure.
    let mut held = Vec::new();
    for i in 0..16 {
        let d = r
            .alloc
            .draft(PACK - 16, 1)
            .unwrap_or_else(|e| panic!("pack {i} after a failed map: {e}"));
        held.push(d);
    }
    let full = r.alloc.draft(64, 1).expect_err("17th pack");
    assert!(matches!(full, Error::CodeRangeFull { .. }), "{full:?}");
}

/// A failed trap fill quarantines the program's chunks: they stay in use, are counted, are
/// never handed out again, and the allocator goes on. The old code stays in place (it cannot
/// be removed), which is why quarantine exists: the chunks are never reused for new code.
#[test]
fn failed_trap_fill_quarantines() {
    let inner: Arc<dyn Backend> = Arc::new(ProcMem::new().expect("procmem"));
    let mut r = Run::new(inner, Fault::Fill(1), false);
    let mut d = r.alloc.draft(100, 1).expect("draft");
    let (v, bytes) = r.fresh(100);
    d.image_mut().copy_from_slice(&bytes);
    let p = d.finalize().expect("finalize");
    let (addr, len) = (p.addr(), p.len());
    r.adopt(p, v, bytes).expect("adopt");
    r.free(0);
    let st = r.alloc.stats();
    assert_eq!(st.chunks_quarantined, span_chunks(100));
    assert_eq!(st.chunks_used, span_chunks(100));
    assert_eq!(st.allocations, 0);
    r.check().expect("invariants with a quarantine");
    // Fill the pack and more: nothing lands on the quarantined chunks.
    for _ in 0..(3 * PACK / CHUNK) {
        let (v, bytes) = r.fresh(40);
        let mut d = r.alloc.draft(40, 1).expect("draft");
        d.image_mut().copy_from_slice(&bytes);
        let p = d.finalize().expect("finalize");
        assert!(
            p.addr() + p.len() <= addr || addr + len <= p.addr(),
            "reused quarantined chunks"
        );
        r.adopt(p, v, bytes).expect("adopt");
    }
    r.check().expect("invariants");
    r.live.clear();
    assert_eq!(r.alloc.stats().chunks_used, span_chunks(100));
}
