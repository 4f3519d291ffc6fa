//! Concurrency stress: several threads load (single drafts, batches, `finalize_all`, large
//! programs), call, share and free programs in many small packs, while a watcher thread scans
//! `/proc/self/maps` for writable+executable mappings the whole time. Every call checks that
//! the program returns its own value (a chunk reused before its old code was trapped, or a
//! late trap fill over new code, would show as a wrong value or a SIGTRAP). Runs in a forked
//! child, so a SIGTRAP is reported rather than killing the harness, and so that the process's
//! mappings after the allocator is dropped can be compared exactly with before.
//!
//! Bounded by operation count (no timing). `progpack stress` runs the same mix for a duration.

mod support;

use progpack::{Allocator, BackendChoice, Config, Program};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::{call_u64, progpack_mappings, ret_imm64, run_in_child, wx_mappings, Rng};

const THREADS: usize = 4;
const OPS_PER_THREAD: usize = 4000;
/// Fewest `/proc/self/maps` scans for the watcher to mean anything.
const MIN_SCANS: usize = 10;
/// Fewest packs mapped over a run (small packs, so many are mapped and released).
const MIN_PACKS: usize = 10;

#[derive(Default)]
struct Counts {
    ops: AtomicUsize,
    calls: AtomicUsize,
    wrong: AtomicUsize,
    errors: AtomicUsize,
    scans: AtomicUsize,
    violations: AtomicUsize,
}

type Shared = Arc<Mutex<Vec<(Arc<Program>, u64)>>>;

fn image(v: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0x90u8; len]; // nops after the code: never run
    b[..ret_imm64(v).len()].copy_from_slice(&ret_imm64(v));
    b
}

fn check(p: &Program, v: u64, c: &Counts) {
    c.calls.fetch_add(1, Ordering::Relaxed);
    if call_u64(p) != v {
        c.wrong.fetch_add(1, Ordering::Relaxed);
    }
}

fn worker(alloc: Allocator, id: u64, shared: Shared, c: Arc<Counts>, pack: usize) {
    let mut rng = Rng(0xc0c0 + id);
    let mut mine: Vec<(Program, u64)> = Vec::new();
    let mut next = id << 40;
    let mut fresh = || {
        next += 1;
        next
    };
    for _ in 0..OPS_PER_THREAD {
        c.ops.fetch_add(1, Ordering::Relaxed);
        let len = ret_imm64(0).len() + rng.below(300);
        match rng.below(20) {
            0..=5 => {
                let v = fresh();
                match alloc.draft(len, 1 << rng.below(5)) {
                    Ok(mut d) => {
                        d.image_mut().copy_from_slice(&image(v, len));
                        match d.finalize() {
                            Ok(p) => {
                                check(&p, v, &c);
                                mine.push((p, v));
                            }
                            Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                        }
                    }
                    Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
            6 | 7 => {
                let mut b = alloc.batch();
                let mut vals = Vec::new();
                for _ in 0..1 + rng.below(16) {
                    let v = fresh();
                    let l = ret_imm64(0).len() + rng.below(200);
                    match b.push(l, 1) {
                        Ok(s) => {
                            s.image.copy_from_slice(&image(v, l));
                            vals.push(v);
                        }
                        Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                    }
                }
                match b.finalize() {
                    Ok(ps) => {
                        for (p, v) in ps.into_iter().zip(vals) {
                            check(&p, v, &c);
                            mine.push((p, v));
                        }
                    }
                    Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
            8 => {
                let mut ds = Vec::new();
                let mut vals = Vec::new();
                for _ in 0..1 + rng.below(8) {
                    let v = fresh();
                    if let Ok(mut d) = alloc.draft(len, 1) {
                        d.image_mut().copy_from_slice(&image(v, len));
                        ds.push(d);
                        vals.push(v);
                    }
                }
                match alloc.finalize_all(ds) {
                    Ok(ps) => {
                        for (p, v) in ps.into_iter().zip(vals) {
                            check(&p, v, &c);
                            mine.push((p, v));
                        }
                    }
                    Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
            9 => {
                // A large program: a mapping of its own.
                let v = fresh();
                let l = pack + rng.below(5000);
                if let Ok(mut d) = alloc.draft(l, 16) {
                    d.image_mut().copy_from_slice(&image(v, l));
                    if let Ok(p) = d.finalize() {
                        check(&p, v, &c);
                    }
                }
            }
            10 => {
                // A draft dropped unfinalized.
                drop(alloc.draft(len, 1));
            }
            11..=14 => {
                if !mine.is_empty() {
                    let i = rng.below(mine.len());
                    let (p, v) = mine.swap_remove(i);
                    check(&p, v, &c);
                    drop(p);
                }
            }
            15 | 16 => {
                if !mine.is_empty() {
                    let i = rng.below(mine.len());
                    check(&mine[i].0, mine[i].1, &c);
                }
            }
            17 => {
                // Share one with the other threads.
                if let Some((p, v)) = mine.pop() {
                    shared.lock().expect("pool").push((Arc::new(p), v));
                }
            }
            _ => {
                // Call (and sometimes drop) someone else's program.
                let got = {
                    let mut pool = shared.lock().expect("pool");
                    if pool.is_empty() {
                        None
                    } else {
                        let i = rng.below(pool.len());
                        Some(if rng.chance(1, 3) {
                            pool.swap_remove(i)
                        } else {
                            pool[i].clone()
                        })
                    }
                };
                if let Some((p, v)) = got {
                    check(&p, v, &c);
                }
            }
        }
        if mine.len() > 400 {
            mine.drain(..200);
        }
    }
}

fn stress(backend: BackendChoice) -> Result<String, String> {
    let before = progpack_mappings();
    let pack = 16 << 10;
    let alloc = Allocator::new(
        Config::default()
            .pack_size(pack)
            .chunk_size(64)
            .shards(3)
            .reserve_packs(1)
            .backend(backend),
    )
    .map_err(|e| e.to_string())?;
    let c = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let wx = wx_mappings();
                c.scans.fetch_add(1, Ordering::Relaxed);
                if !wx.is_empty() {
                    c.violations.fetch_add(wx.len(), Ordering::Relaxed);
                    seen.extend(wx);
                }
            }
            seen
        })
    };
    let shared: Shared = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|id| {
            let (alloc, shared, c) = (alloc.clone(), shared.clone(), c.clone());
            std::thread::spawn(move || worker(alloc, id, shared, c, pack))
        })
        .collect();
    let mut panicked = 0;
    for w in workers {
        panicked += usize::from(w.join().is_err());
    }
    let max_packs = alloc.stats().packs_mapped_total;
    shared.lock().expect("pool").clear();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().map_err(|_| "watcher panicked")?;
    alloc.check_invariants()?;
    let st = alloc.stats();
    if st.allocations != 0 || st.chunks_used != 0 || st.packs > 1 {
        return Err(format!("after everything was dropped: {st:?}"));
    }
    drop(alloc);
    let after = progpack_mappings();
    let (ops, calls, wrong, errors, scans, violations) = (
        c.ops.load(Ordering::Relaxed),
        c.calls.load(Ordering::Relaxed),
        c.wrong.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.scans.load(Ordering::Relaxed),
        c.violations.load(Ordering::Relaxed),
    );
    let summary = format!(
        "{ops} ops, {calls} calls, {wrong} wrong, {errors} errors, {scans} maps scans, \
         {violations} W^X violations, {max_packs} packs mapped over the run"
    );
    if panicked > 0 || wrong > 0 || errors > 0 || violations > 0 || scans < MIN_SCANS {
        return Err(format!(
            "{summary}; {panicked} threads panicked; W+X seen: {seen:?}"
        ));
    }
    if after != before {
        return Err(format!(
            "{summary}; mappings left: before {before:?}, after {after:?}"
        ));
    }
    if max_packs < MIN_PACKS {
        return Err(format!("{summary}: too few packs to mean anything"));
    }
    Ok(summary)
}

/// Runs the stress in a child. Its report is one line: `OK` or `FAIL`, then the counts as
/// `N label` items separated by commas, then (on failure) what went wrong after a `;`.
fn stress_report(backend: BackendChoice) -> String {
    let out = run_in_child(|| {
        Err(match stress(backend) {
            Ok(summary) => format!("OK {summary}"),
            Err(failure) => format!("FAIL {failure}"),
        })
    });
    assert_eq!(out.exit, support::ChildExit::Exited(1), "{}", out.message);
    out.message
}

/// The counts of a report line: `"12 ops, 3 wrong, ..."` gives `{"ops": 12, "wrong": 3}`.
fn counts(report: &str) -> std::collections::HashMap<String, usize> {
    let body = report.split(';').next().unwrap_or("");
    let body = body
        .strip_prefix("OK ")
        .or_else(|| body.strip_prefix("FAIL "))
        .unwrap_or(body);
    body.split(", ")
        .filter_map(|item| {
            let (n, label) = item.trim().split_once(' ')?;
            Some((label.to_string(), n.parse().ok()?))
        })
        .collect()
}

fn run(backend: BackendChoice) {
    let report = stress_report(backend);
    eprintln!("{report}");
    let c = counts(&report);
    let get = |label: &str| {
        *c.get(label)
            .unwrap_or_else(|| panic!("no `{label}` count in the report: {report}"))
    };
    assert!(report.starts_with("OK "), "{report}");
    assert_eq!(get("ops"), THREADS * OPS_PER_THREAD, "{report}");
    assert_eq!(get("wrong"), 0, "{report}");
    assert_eq!(get("errors"), 0, "{report}");
    assert_eq!(get("W^X violations"), 0, "{report}");
    assert!(get("maps scans") >= MIN_SCANS, "{report}");
    assert!(get("calls") >= THREADS * OPS_PER_THREAD / 4, "{report}");
    assert!(get("packs mapped over the run") >= MIN_PACKS, "{report}");
}

/// The report parser reads failures too: a report is judged by its counts, never by a
/// substring ("10 wrong, 0 errors" contains "0 wrong, 0 errors").
#[test]
fn reports_are_judged_by_their_counts() {
    let bad = "FAIL 16000 ops, 9000 calls, 10 wrong, 0 errors, 50 maps scans, 0 W^X \
               violations, 40 packs mapped over the run; 0 threads panicked";
    let c = counts(bad);
    assert_eq!(c["wrong"], 10);
    assert_eq!(c["errors"], 0);
    assert_eq!(c["ops"], 16000);
    assert_eq!(c["W^X violations"], 0);
    assert_eq!(c["packs mapped over the run"], 40);
    assert!(!bad.starts_with("OK "));
}

#[test]
fn stress_procmem() {
    run(BackendChoice::ProcMem);
}

#[test]
fn stress_dualmap() {
    run(BackendChoice::DualMap);
}

#[test]
fn stress_dualmap_per_write() {
    run(BackendChoice::DualMapPerWrite);
}

/// The watcher's scan does see a writable+executable mapping (made on purpose, in a child).
#[test]
fn watcher_sees_a_wx_mapping() {
    run_in_child(|| {
        if !wx_mappings().is_empty() {
            return Err("W+X mappings before the test".into());
        }
        // SAFETY: a fresh anonymous mapping nothing refers to; never executed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err("the system refuses W+X mappings outright".into());
        }
        let wx = wx_mappings();
        if wx.len() != 1 || wx[0].start != p as usize {
            return Err(format!("scan missed the W+X mapping: {wx:?}"));
        }
        Ok(())
    })
    .assert_ok();
}
