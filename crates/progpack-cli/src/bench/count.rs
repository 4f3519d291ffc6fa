//! Workload `count`: user-space instructions per load and per free, counted by
//! `valgrind --tool=callgrind` (repeatable on a shared machine, unlike time).
//!
//! For each system, this process runs itself under callgrind four times: loading N1 and N2
//! programs of 64 bytes one by one (allocate, copy the 64-byte image, make it executable), and
//! freeing them, with collection switched on only inside [`loads`] or [`frees`]. The cost of one
//! load is `(I(N2) - I(N1)) / (N2 - N1)`, so everything that happens once (mapping a pack,
//! creating the allocator) cancels out, while what happens every so often (a thread taking a
//! new run) is spread over the programs as it is in real use. Instructions executed by the
//! kernel (`pwrite` for procmem) are not counted: those are in the time-based workloads.
//!
//! Without valgrind the workload says so in a note and adds no row.
#![allow(unsafe_code)] // calls jit-allocator, whose API is unsafe

use super::report::Report;
use jit_allocator::{JitAllocator, JitAllocatorOptions, ResetPolicy};
use progpack::{Allocator, BackendChoice, Config, Program};
use std::process::Command;

/// Programs in the two runs whose difference is reported.
const N: [usize; 2] = [2000, 4000];

/// The systems counted, by the names `progpack bench` uses elsewhere (and the dualmap one
/// again with the perf map on: what naming every program for `perf` costs in user space).
pub const SYSTEMS: [&str; 4] = [
    "progpack-dualmap",
    "progpack-procmem",
    "jit-allocator-dualmap",
    "progpack-dualmap-perf-map",
];

/// A 64-byte image: `mov eax, 42; ret`, then traps.
fn image() -> [u8; 64] {
    let mut b = [0xcc; 64];
    b[..6].copy_from_slice(&[0xb8, 42, 0, 0, 0, 0xc3]);
    b
}

/// One load per program: draft, copy, finalize. Never inlined: callgrind collects inside it.
#[inline(never)]
pub fn loads(alloc: &Allocator, n: usize, image: &[u8; 64], out: &mut Vec<Program>) {
    for _ in 0..n {
        let mut d = alloc.draft(64, 16).expect("draft");
        d.image_mut().copy_from_slice(image);
        out.push(d.finalize().expect("finalize"));
    }
}

/// One free per program. Never inlined: callgrind collects inside it.
#[inline(never)]
pub fn frees(progs: &mut Vec<Program>) {
    while let Some(p) = progs.pop() {
        drop(p);
    }
}

/// Sets up what happens once per process or allocator (statics, the first pack, this thread's
/// state), so that the two counted runs differ only in the number of programs.
/// (Not through [`loads`]/[`frees`]: callgrind counts every call of those.)
fn warm_up(alloc: &Allocator, image: &[u8; 64]) {
    let mut d = alloc.draft(64, 16).expect("draft");
    d.image_mut().copy_from_slice(image);
    drop(d.finalize().expect("finalize"));
}

/// jit-allocator's load: `alloc`, copy into the writable view, flush.
#[inline(never)]
pub fn jit_loads(a: &mut JitAllocator, n: usize, image: &[u8; 64], out: &mut Vec<*const u8>) {
    for _ in 0..n {
        let (rx, rw) = a.alloc(64).expect("jit-allocator alloc");
        // SAFETY: `alloc` returned 64 writable bytes at `rw` that belong to this program.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), rw, 64) };
        jit_allocator::flush_instruction_cache(rx, 64);
        out.push(rx);
    }
}

/// jit-allocator's free: `release`.
#[inline(never)]
pub fn jit_frees(a: &mut JitAllocator, progs: &mut Vec<*const u8>) {
    while let Some(rx) = progs.pop() {
        // SAFETY: `rx` came from this allocator's `alloc` and is released once.
        let _ = unsafe { a.release(rx) };
    }
}

/// The child side: runs `n` loads and then the frees of `system` (callgrind decides which of
/// the two it counts). Called by `progpack bench --count-child SYSTEM:N`.
pub fn child(spec: &str) -> anyhow::Result<()> {
    let (system, n) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--count-child wants SYSTEM:N"))?;
    let n: usize = n.parse()?;
    let img = image();
    match system {
        "jit-allocator-dualmap" => {
            let mut a = JitAllocator::new(JitAllocatorOptions::default());
            let mut progs = Vec::with_capacity(n);
            // Outside the counted functions: the first block.
            let (rx, _) = a.alloc(64).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            // SAFETY: just allocated by this allocator, released once.
            let _ = unsafe { a.release(rx) };
            jit_loads(&mut a, n, &img, &mut progs);
            jit_frees(&mut a, &mut progs);
            // SAFETY: every program was released; none runs again.
            unsafe { a.reset(ResetPolicy::Hard) };
        }
        _ => {
            use crate::bench::systems::progpack::{perf_map_config, remove_perf_map_dir};
            let config = match system {
                "progpack-dualmap" => Config::default().backend(BackendChoice::DualMap),
                "progpack-procmem" => Config::default().backend(BackendChoice::ProcMem),
                "progpack-dualmap-perf-map" => perf_map_config(BackendChoice::DualMap),
                other => anyhow::bail!("no such system to count: {other}"),
            };
            let alloc = Allocator::new(config)?;
            let mut progs = Vec::with_capacity(n);
            // Outside the counted functions: the first pack, and what a process sets up once.
            warm_up(&alloc, &img);
            loads(&alloc, n, &img, &mut progs);
            frees(&mut progs);
            remove_perf_map_dir();
        }
    }
    Ok(())
}

/// Instructions callgrind counted inside `function` while this program ran `system` with `n`
/// programs; `None` if valgrind could not run.
fn count(system: &str, n: usize, function: &str) -> anyhow::Result<Option<u64>> {
    let exe = std::env::current_exe()?;
    let out = std::env::temp_dir().join(format!(
        "progpack-callgrind-{}-{system}-{n}-{function}.out",
        std::process::id()
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(format!("--toggle-collect=*count::{function}"))
        .arg(&exe)
        .args(["bench", "--count-child", &format!("{system}:{n}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let Ok(status) = status else {
        return Ok(None); // no valgrind
    };
    if !status.success() {
        anyhow::bail!("valgrind on {system} with {n} programs failed: {status}");
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    let totals = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no totals in callgrind's output for {system}"))?;
    Ok(Some(totals))
}

/// Instructions per operation of `system`: `(load, free)`.
pub fn per_op(system: &str) -> anyhow::Result<Option<(f64, f64)>> {
    let (load_fn, free_fn) = if system.starts_with("jit-allocator") {
        ("jit_loads", "jit_frees")
    } else {
        ("loads", "frees")
    };
    let mut per = [0.0; 2];
    for (k, function) in [load_fn, free_fn].into_iter().enumerate() {
        let (Some(a), Some(b)) = (
            count(system, N[0], function)?,
            count(system, N[1], function)?,
        ) else {
            return Ok(None);
        };
        per[k] = b.saturating_sub(a) as f64 / (N[1] - N[0]) as f64;
    }
    Ok(Some((per[0], per[1])))
}

/// Runs the workload for `systems` (all of [`SYSTEMS`] if empty).
pub fn run(systems: &[String], report: &mut Report) {
    for system in SYSTEMS {
        if !systems.is_empty() && !systems.iter().any(|s| s == system) {
            continue;
        }
        match per_op(system) {
            Ok(Some((load, free))) => {
                report.push("count", system, N[1], "64", load, "instructions/load");
                report.push("count", system, N[1], "64", free, "instructions/free");
            }
            Ok(None) => report.note("count", system, "valgrind not found: not measured"),
            Err(e) => report.note("count", system, format!("{e:#}")),
        }
    }
}
