//! Workload `patch`: the cost of replacing one instruction of placed code, and what it costs
//! the threads that run that code meanwhile.
//!
//! The code is one function: a `jmp rel32` at its entry to one of two blocks (`mov eax, 1;
//! ret` and `mov eax, 2; ret`); each patch retargets the jump to the other block (the bytes
//! of a tier-up or an inline-cache update). Systems:
//! - `progpack-procmem`, `progpack-dualmap`: [`Program::patch`] (the kernel's `text_poke_bp`
//!   protocol: three writes, each followed by `membarrier` SYNC_CORE), while other threads may
//!   run the function with no lock;
//! - `mprotect-flip`: the obvious alternative, the function alone on a page: `mprotect`
//!   read+write (never executable then), write, `mprotect` read+execute. A thread that runs the
//!   page while it is writable faults, so the callers take a read lock around each call and the
//!   patcher the write lock around the flip (their cost is part of the alternative).
//!
//! Rows: ns per patch with no thread running the code, ns per patch while another thread calls
//! the function in a loop, and that thread's calls per second during the patching and, for
//! comparison, over as long a stretch without patching (each the fastest of
//! [`super::REPEAT`] runs). Every patch retargets the same instruction, back to back: the
//! worst case for the calling thread, which meets the temporary `int3` of nearly every patch.
//! Compare ratios within one run.
#![allow(unsafe_code)] // runs generated code; maps and flips the alternative's page

use super::report::Report;
use super::systems::Kind;
use super::{Scale, REPEAT};
use progpack::{Allocator, BackendChoice, Config, Program};
use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

/// Name of the alternative in the `system` column.
pub const NAME_FLIP: &str = "mprotect-flip";

/// Offsets of the two blocks the jump selects.
const BLOCKS: [usize; 2] = [16, 32];

/// The function: `jmp rel32` to block 0, then the blocks (`mov eax, 1; ret`, `mov eax, 2;
/// ret`), traps between.
fn code() -> [u8; 48] {
    let mut c = [0xcc; 48];
    c[..5].copy_from_slice(&jmp_to(0, BLOCKS[0]));
    c[16..22].copy_from_slice(&[0xb8, 1, 0, 0, 0, 0xc3]);
    c[32..38].copy_from_slice(&[0xb8, 2, 0, 0, 0, 0xc3]);
    c
}

/// `jmp rel32` at offset `at` of the function to its offset `to`.
fn jmp_to(at: usize, to: usize) -> [u8; 5] {
    let r = (to as i32 - (at as i32 + 5)).to_le_bytes();
    [0xe9, r[0], r[1], r[2], r[3]]
}

/// One function whose jump can be retargeted.
enum Target {
    /// In a progpack pack (the program keeps its pack mapped after the allocator is gone).
    Progpack(Program),
    /// Alone on a page, flipped with `mprotect`.
    Flip(FlipPage),
}

/// A page mapped for the alternative; unmapped when dropped.
struct FlipPage {
    addr: usize,
    /// Callers hold it for reading around each call, the patcher for writing around a flip.
    lock: Arc<RwLock<()>>,
}

impl Drop for FlipPage {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `FlipPage::new` and nothing runs it any more.
        let _ = unsafe { mm::munmap(self.addr as *mut _, 4096) };
    }
}

impl FlipPage {
    fn new() -> Result<FlipPage, String> {
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks.
        let p = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                4096,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| format!("mmap: {e}"))?;
        let page = FlipPage {
            addr: p as usize,
            lock: Arc::new(RwLock::new(())),
        };
        let c = code();
        // SAFETY: the page is ours, read+write, 4096 >= 48 bytes.
        unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), p.cast::<u8>(), c.len()) };
        page.protect(MprotectFlags::READ | MprotectFlags::EXEC)?;
        Ok(page)
    }

    fn protect(&self, flags: MprotectFlags) -> Result<(), String> {
        // SAFETY: our own page; no Rust reference points into it.
        unsafe { mm::mprotect(self.addr as *mut _, 4096, flags) }
            .map_err(|e| format!("mprotect: {e}"))
    }

    /// Read+write (not executable), write, read+execute, under the write lock.
    fn patch(&self, offset: usize, bytes: &[u8]) -> Result<(), String> {
        let _no_callers = self.lock.write().unwrap_or_else(|p| p.into_inner());
        self.protect(MprotectFlags::READ | MprotectFlags::WRITE)?;
        // SAFETY: the page is read+write now and no thread runs it (write lock held).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr + offset) as *mut u8,
                bytes.len(),
            )
        };
        self.protect(MprotectFlags::READ | MprotectFlags::EXEC)
    }
}

impl Target {
    fn new(system: &str) -> Result<Target, String> {
        let backend = match system {
            NAME_FLIP => return FlipPage::new().map(Target::Flip),
            s if s == Kind::ProgpackDualmap.name() => BackendChoice::DualMap,
            _ => BackendChoice::ProcMem,
        };
        let alloc =
            Allocator::new(Config::default().backend(backend)).map_err(|e| e.to_string())?;
        let c = code();
        let mut d = alloc.draft(c.len(), 16).map_err(|e| e.to_string())?;
        d.image_mut().copy_from_slice(&c);
        let p = d.finalize().map_err(|e| e.to_string())?;
        Ok(Target::Progpack(p))
    }

    fn entry(&self) -> usize {
        match self {
            Target::Progpack(p) => p.addr(),
            Target::Flip(page) => page.addr,
        }
    }

    /// Retargets the jump to block `k`.
    fn retarget(&mut self, k: usize) -> Result<(), String> {
        let bytes = jmp_to(0, BLOCKS[k]);
        match self {
            Target::Progpack(p) => p.patch(0, &bytes).map_err(|e| e.to_string()),
            Target::Flip(page) => page.patch(0, &bytes),
        }
    }

    /// What a caller needs: the entry, and the alternative's lock.
    fn caller(&self) -> Caller {
        Caller {
            entry: self.entry(),
            lock: match self {
                Target::Progpack(..) => None,
                Target::Flip(page) => Some(page.lock.clone()),
            },
        }
    }
}

/// How a thread calls the function: no borrow of the [`Target`], which the patcher changes.
struct Caller {
    entry: usize,
    lock: Option<Arc<RwLock<()>>>,
}

impl Caller {
    /// Calls the function as a caller of this system must.
    fn call(&self) -> u32 {
        // SAFETY: the entry is a live `extern "C" fn() -> u32` (the jump goes to one of two
        // complete blocks, before and after every patch) while the target lives.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(self.entry) };
        match &self.lock {
            None => f(),
            Some(lock) => {
                let _running = lock.read().unwrap_or_else(|p| p.into_inner());
                f()
            }
        }
    }
}

/// `n` patches with nobody calling; ns per patch.
fn idle(system: &str, n: usize) -> Result<f64, String> {
    let mut t = Target::new(system)?;
    let start = Instant::now();
    for i in 0..n {
        t.retarget((i + 1) % 2)?;
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    check_final(&t, n)?;
    Ok(ns)
}

/// The function returns what the last of `n` retargets chose.
fn check_final(t: &Target, n: usize) -> Result<(), String> {
    let want = if n % 2 == 1 { 2 } else { 1 };
    match t.caller().call() {
        got if got == want => Ok(()),
        got => Err(format!(
            "after {n} patches the function returned {got}, want {want}"
        )),
    }
}

/// What [`busy`] measured.
struct Busy {
    /// Times the caller met a temporary `int3` and was resumed, per 1,000 patches (progpack
    /// only).
    stops_per_1000: Option<f64>,
    ns_per_patch: f64,
    calls_per_s_patching: f64,
    calls_per_s_quiet: f64,
}

/// Pins the calling thread to CPU `cpu` (if the machine has it); returns the set to restore.
fn pin_to(cpu: usize) -> Option<rustix::thread::CpuSet> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let before = sched_getaffinity(None).ok()?;
    if !before.is_set(cpu) {
        return None;
    }
    let mut only = CpuSet::new();
    only.set(cpu);
    sched_setaffinity(None, &only).ok()?;
    Some(before)
}

/// One thread calls the function in a loop, pinned to CPU 1, while this thread, pinned to CPU
/// 0, makes `n` patches, then lets it run as long again without patching. (Pinned so that the
/// two never share a core, whatever else runs: on a 2-core machine that would make the numbers
/// a matter of time slices.)
fn busy(system: &str, n: usize) -> Result<Busy, String> {
    let restore = pin_to(0);
    let measured = busy_pinned(system, n);
    if let Some(set) = restore {
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    measured
}

fn busy_pinned(system: &str, n: usize) -> Result<Busy, String> {
    const CALLERS: usize = 1;
    let mut t = Target::new(system)?;
    let stop = AtomicBool::new(false);
    // Each caller's count of calls, stored after every call (a plain store: exact, and no
    // read-modify-write on the callers' path).
    let counts: Vec<AtomicU64> = (0..CALLERS).map(|_| AtomicU64::new(0)).collect();
    let calls = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let wrong = AtomicU64::new(0);
    let start = Barrier::new(CALLERS + 1);
    let measured = std::thread::scope(|s| {
        for count in &counts {
            let caller = t.caller();
            let (stop, wrong, start) = (&stop, &wrong, &start);
            s.spawn(move || {
                let _ = pin_to(1);
                start.wait();
                let mut local = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !matches!(caller.call(), 1 | 2) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    local += 1;
                    count.store(local, Ordering::Relaxed);
                }
            });
        }
        start.wait();
        std::thread::sleep(Duration::from_millis(20)); // the callers are running
        let before = calls();
        let resumed_before = progpack::patch::threads_resumed();
        let began = Instant::now();
        let mut result = Ok(());
        for i in 0..n {
            if let Err(e) = t.retarget((i + 1) % 2) {
                result = Err(e);
                break;
            }
        }
        let patching = began.elapsed();
        let resumed = progpack::patch::threads_resumed() - resumed_before;
        let during = calls() - before;
        let quiet_from = calls();
        let quiet_began = Instant::now();
        std::thread::sleep(patching);
        let quiet = calls() - quiet_from;
        let quiet_time = quiet_began.elapsed();
        stop.store(true, Ordering::Relaxed);
        result.map(|()| Busy {
            stops_per_1000: matches!(t, Target::Progpack(_))
                .then(|| resumed as f64 * 1000.0 / n as f64),
            ns_per_patch: patching.as_nanos() as f64 / n as f64,
            calls_per_s_patching: during as f64 / patching.as_secs_f64(),
            calls_per_s_quiet: quiet as f64 / quiet_time.as_secs_f64(),
        })
    })?;
    match wrong.load(Ordering::Relaxed) {
        0 => check_final(&t, n).map(|()| measured),
        bad => Err(format!("{bad} calls returned a wrong value")),
    }
}

/// Runs the patch workload for the progpack backends among `kinds` and the `mprotect` flip.
pub fn run(scale: &Scale, kinds: &[Kind], report: &mut Report) {
    let n = scale.patch_n;
    let mut systems: Vec<&str> = [Kind::ProgpackProcmem, Kind::ProgpackDualmap]
        .into_iter()
        .filter(|k| kinds.contains(k))
        .map(|k| k.name())
        .collect();
    if kinds.contains(&Kind::Mmap) {
        systems.push(NAME_FLIP);
    }
    for system in systems {
        let mut best: Option<f64> = None;
        for _ in 0..REPEAT {
            match idle(system, n) {
                Ok(ns) => best = Some(best.map_or(ns, |b| b.min(ns))),
                Err(e) => {
                    report.note("patch", system, format!("idle: {e}; no row"));
                    best = None;
                    break;
                }
            }
        }
        if let Some(ns) = best {
            report.push("patch", system, n, "-", ns, "ns/patch, no caller");
        }
        let mut fastest: Option<Busy> = None;
        for _ in 0..REPEAT {
            match busy(system, n) {
                Ok(b) => {
                    if fastest
                        .as_ref()
                        .is_none_or(|f| b.ns_per_patch < f.ns_per_patch)
                    {
                        fastest = Some(b);
                    }
                }
                Err(e) => {
                    report.note("patch", system, format!("with a caller: {e}; no row"));
                    fastest = None;
                    break;
                }
            }
        }
        if let Some(b) = fastest {
            report.push(
                "patch",
                system,
                n,
                "-",
                b.ns_per_patch,
                "ns/patch, 1 thread calling",
            );
            report.push(
                "patch",
                system,
                n,
                "-",
                b.calls_per_s_patching,
                "calls/s of 1 thread, during patching",
            );
            report.push(
                "patch",
                system,
                n,
                "-",
                b.calls_per_s_quiet,
                "calls/s of 1 thread, no patching",
            );
            if let Some(stops) = b.stops_per_1000 {
                report.push(
                    "patch",
                    system,
                    n,
                    "-",
                    stops,
                    "caller stops at the int3 per 1000 patches",
                );
            }
        }
    }
    report.note(
        "patch",
        NAME_FLIP,
        "the alternative's callers hold a read lock around each call (the page faults while \
         writable); progpack's callers take none",
    );
}
