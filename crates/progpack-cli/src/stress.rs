//! `progpack stress`: a mixed load for a while, with W^X watched and every result checked.
//!
//! Worker threads load programs (single drafts, batches, `finalize_all`, large programs with a
//! mapping of their own), call them, share them with other threads, and free them (one by one,
//! with `free_all`, and drafts never finalized), in small packs so that packs are mapped,
//! filled, emptied and released all the time. Every program is a function that returns its own
//! 64-bit value; every call checks it. A watcher thread scans `/proc/self/maps` for mappings
//! that are writable and executable, as often as it can. At the end every program and the
//! allocator are dropped and the process's executable mappings are compared with before.
//!
//! The summary gives operations done, W^X violations seen, wrong results and mappings leaked;
//! the exit status is non-zero if any of the last three is not zero. A program that ran stale
//! code would either return a wrong value or hit a trap (SIGTRAP ends the process: also a
//! failure).
#![allow(unsafe_code)] // calls the functions it generates

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use progpack::{Allocator, BackendChoice, Config, Program};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `progpack stress`.
#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Worker threads (the watcher is one more).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Backend: detect, procmem, dualmap or dualmap-per-write.
    #[arg(long, default_value = "detect")]
    backend: String,
    /// Pack size in KiB (small packs mean more packs mapped and released).
    #[arg(long, default_value_t = 16)]
    pack_kib: usize,
}

/// Counters shared by the workers, the watcher and the progress line.
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    loads: AtomicU64,
    calls: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    scans: AtomicU64,
    violations: AtomicU64,
}

impl Counters {
    fn get(&self, c: &AtomicU64) -> u64 {
        let _ = self;
        c.load(Ordering::Relaxed)
    }
}

/// Machine code for `extern "C" fn() -> u64` returning `v`.
fn ret_imm(v: u64) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut code = vec![0x48, 0xb8]; // movabs rax, v
        code.extend_from_slice(&v.to_le_bytes());
        code.push(0xc3); // ret
        code
    }
    #[cfg(target_arch = "aarch64")]
    {
        let mut code = Vec::with_capacity(20);
        for hw in 0..4u32 {
            let imm = ((v >> (16 * hw)) & 0xffff) as u32;
            let op: u32 = if hw == 0 { 0xd280_0000 } else { 0xf280_0000 }; // movz / movk x0
            code.extend_from_slice(&(op | (hw << 21) | (imm << 5)).to_le_bytes());
        }
        code.extend_from_slice(&0xd65f_03c0u32.to_le_bytes()); // ret
        code
    }
}

/// An image of `len` bytes: the function, then filler that is never run.
fn image(v: u64, len: usize) -> Vec<u8> {
    let code = ret_imm(v);
    let mut b = vec![0u8; len.max(code.len())];
    b[..code.len()].copy_from_slice(&code);
    b
}

fn code_len() -> usize {
    ret_imm(0).len()
}

fn check(p: &Program, v: u64, c: &Counters) {
    // SAFETY: every program this module makes starts with `ret_imm(v)`: a complete function of
    // this signature; `p` keeps the code mapped for the call.
    let f = unsafe { p.as_fn::<extern "C" fn() -> u64>() };
    c.calls.fetch_add(1, Ordering::Relaxed);
    if f() != v {
        c.wrong.fetch_add(1, Ordering::Relaxed);
    }
}

/// splitmix64: a small per-thread generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

type Pool = Arc<Mutex<Vec<(Arc<Program>, u64)>>>;

fn load(alloc: &Allocator, v: u64, len: usize, c: &Counters) -> Option<Program> {
    let made = alloc.draft(len, 16).and_then(|mut d| {
        d.image_mut().copy_from_slice(&image(v, len));
        d.finalize()
    });
    match made {
        Ok(p) => {
            c.loads.fetch_add(1, Ordering::Relaxed);
            check(&p, v, c);
            Some(p)
        }
        Err(_) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One worker: a random mix until `stop`.
fn worker(alloc: Allocator, id: u64, pool: Pool, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    let mut rng = Rng(0x5eed ^ id.wrapping_mul(0x9e37_79b9));
    let mut mine: Vec<(Program, u64)> = Vec::new();
    let mut next = id << 48;
    let pack = alloc.config().get_pack_size();
    while !stop.load(Ordering::Relaxed) {
        c.ops.fetch_add(1, Ordering::Relaxed);
        next += 1;
        let v = next;
        let len = code_len() + rng.below(400);
        match rng.below(24) {
            0..=6 => {
                if let Some(p) = load(&alloc, v, len, &c) {
                    mine.push((p, v));
                }
            }
            7 | 8 => {
                let mut b = alloc.batch();
                let mut vals = Vec::new();
                for k in 0..1 + rng.below(32) {
                    let (v, l) = (v + (k as u64) * (1 << 40), code_len() + rng.below(200));
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
                            c.loads.fetch_add(1, Ordering::Relaxed);
                            check(&p, v, &c);
                            mine.push((p, v));
                        }
                    }
                    Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
            9 => {
                let mut ds = Vec::new();
                let mut vals = Vec::new();
                for k in 0..1 + rng.below(8) {
                    let v = v + (k as u64) * (1 << 40);
                    match alloc.draft(len, 1) {
                        Ok(mut d) => {
                            d.image_mut().copy_from_slice(&image(v, len));
                            ds.push(d);
                            vals.push(v);
                        }
                        Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                    }
                }
                match alloc.finalize_all(ds) {
                    Ok(ps) => {
                        for (p, v) in ps.into_iter().zip(vals) {
                            c.loads.fetch_add(1, Ordering::Relaxed);
                            check(&p, v, &c);
                            mine.push((p, v));
                        }
                    }
                    Err(_) => drop(c.errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
            10 => {
                // A large program: a mapping of its own, freed at once.
                drop(load(&alloc, v, pack + rng.below(8192), &c));
            }
            11 => drop(alloc.draft(len, 1)), // never finalized
            12..=15 => {
                if !mine.is_empty() {
                    let (p, v) = mine.swap_remove(rng.below(mine.len()));
                    check(&p, v, &c);
                    drop(p);
                }
            }
            16 => {
                let n = rng.below(mine.len() / 4 + 1);
                let progs: Vec<Program> = mine.drain(..n).map(|(p, _)| p).collect();
                alloc.free_all(progs);
            }
            17..=19 => {
                if !mine.is_empty() {
                    let (p, v) = &mine[rng.below(mine.len())];
                    check(p, *v, &c);
                }
            }
            20 => {
                if let Some((p, v)) = mine.pop() {
                    pool.lock().expect("pool").push((Arc::new(p), v));
                }
            }
            _ => {
                let got = {
                    let mut pool = pool.lock().expect("pool");
                    if pool.is_empty() {
                        None
                    } else {
                        let i = rng.below(pool.len());
                        Some(if rng.below(3) == 0 {
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
        if mine.len() > 2000 {
            let n = mine.len() - 1000;
            mine.drain(..n);
        }
    }
}

/// One line of `/proc/self/maps`: start, end, permissions, inode and path.
type Line = (usize, usize, String, u64, String);

fn maps() -> anyhow::Result<Vec<Line>> {
    let text = std::fs::read_to_string("/proc/self/maps").context("read /proc/self/maps")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let inode = f.nth(2)?.parse().ok()?;
            let path = f.next().unwrap_or("").to_string();
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
                perms,
                inode,
                path,
            ))
        })
        .collect())
}

/// Mappings that may be progpack's: memfd views, named packs, anonymous executable memory.
fn code_mappings() -> anyhow::Result<BTreeSet<Line>> {
    Ok(maps()?
        .into_iter()
        .filter(|(_, _, perms, inode, path)| {
            path.contains("progpack")
                || (perms.as_bytes().get(2) == Some(&b'x') && *inode == 0 && path.is_empty())
        })
        .collect())
}

fn backend(name: &str) -> anyhow::Result<BackendChoice> {
    Ok(match name {
        "detect" => BackendChoice::Detect,
        "procmem" => BackendChoice::ProcMem,
        "dualmap" => BackendChoice::DualMap,
        "dualmap-per-write" => BackendChoice::DualMapPerWrite,
        other => {
            anyhow::bail!("unknown backend `{other}` (detect, procmem, dualmap, dualmap-per-write)")
        }
    })
}

/// Runs the stress and prints the summary; the exit status says whether it ended clean.
pub fn run(args: StressArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        args.pack_kib.is_power_of_two(),
        "--pack-kib must be a power of two"
    );
    let before = code_mappings()?;
    let alloc = Allocator::new(
        Config::default()
            .backend(backend(&args.backend)?)
            .pack_size(args.pack_kib << 10)
            .reserve_packs(1),
    )
    .context("create the allocator")?;
    println!(
        "progpack stress: {} s, {} threads, backend {} ({}), {} KiB packs",
        args.seconds,
        args.threads,
        alloc.backend_name(),
        alloc.backend_report(),
        args.pack_kib
    );
    let c = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<Line>> {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let wx: Vec<Line> = maps()?
                    .into_iter()
                    .filter(|(_, _, p, _, _)| p.contains('w') && p.contains('x'))
                    .collect();
                c.scans.fetch_add(1, Ordering::Relaxed);
                if !wx.is_empty() {
                    c.violations.fetch_add(wx.len() as u64, Ordering::Relaxed);
                    seen.extend(wx);
                }
            }
            Ok(seen)
        })
    };
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..args.threads as u64)
        .map(|id| {
            let (alloc, pool, c, stop) = (alloc.clone(), pool.clone(), c.clone(), stop.clone());
            std::thread::spawn(move || worker(alloc, id, pool, c, stop))
        })
        .collect();

    let bar = ProgressBar::new(args.seconds);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let deadline = Duration::from_secs(args.seconds);
    let mut peak_packs = 0;
    while start.elapsed() < deadline {
        std::thread::sleep(
            Duration::from_millis(200).min(deadline.saturating_sub(start.elapsed())),
        );
        let st = alloc.stats();
        peak_packs = peak_packs.max(st.packs);
        bar.set_position(start.elapsed().as_secs().min(args.seconds));
        bar.set_message(format!(
            "{} ops, {} live, {} packs, {} wrong, {} W^X",
            c.get(&c.ops),
            st.programs,
            st.packs,
            c.get(&c.wrong),
            c.get(&c.violations)
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut panicked = 0;
    for w in workers {
        panicked += usize::from(w.join().is_err());
    }
    pool.lock().expect("pool").clear();
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    let invariants = alloc.check_invariants();
    let st = alloc.stats();
    drop(alloc);
    let after = code_mappings()?;
    let leaked: Vec<&Line> = after.difference(&before).collect();

    let (ops, loads, calls) = (c.get(&c.ops), c.get(&c.loads), c.get(&c.calls));
    let (wrong, violations, errors, scans) = (
        c.get(&c.wrong),
        c.get(&c.violations),
        c.get(&c.errors),
        c.get(&c.scans),
    );
    println!(
        "ran {:.1} s with {} worker threads",
        elapsed.as_secs_f64(),
        args.threads
    );
    println!(
        "operations:        {ops} ({:.0}/s): {loads} programs loaded (and freed), {calls} calls checked",
        ops as f64 / elapsed.as_secs_f64()
    );
    println!(
        "packs:             {} mapped, {} released over the run, {peak_packs} at most at once",
        st.packs_mapped_total, st.packs_released_total
    );
    println!("allocation errors: {errors}");
    println!("maps scans:        {scans}");
    println!("W^X violations:    {violations}");
    println!("wrong results:     {wrong}");
    println!("mappings leaked:   {}", leaked.len());
    if let Err(e) = &invariants {
        println!("invariants:        BROKEN: {e}");
    }
    for l in seen.iter().take(5) {
        println!(
            "  writable+executable: {:#x}-{:#x} {} {}",
            l.0, l.1, l.2, l.4
        );
    }
    for l in leaked.iter().take(5) {
        println!("  leaked: {:#x}-{:#x} {} {}", l.0, l.1, l.2, l.4);
    }
    let clean =
        violations == 0 && wrong == 0 && leaked.is_empty() && invariants.is_ok() && panicked == 0;
    if panicked > 0 {
        println!("{panicked} worker threads panicked");
    }
    println!("{}", if clean { "clean" } else { "FAILED" });
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
