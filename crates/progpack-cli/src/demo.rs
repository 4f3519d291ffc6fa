//! `progpack demo`: the front door. Loads many small generated x86-64 functions into packs,
//! calls every one and checks its result, prints what the allocator did, and runs the same
//! load with one `mmap` + `mprotect` per function for comparison.

#![allow(unsafe_code)] // calls the functions it generates

use crate::baseline::PageProgram;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use progpack::{Allocator, Config, Program};
use std::time::{Duration, Instant};

/// Options of `progpack demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many functions to load.
    #[arg(long, default_value_t = 100_000)]
    programs: u32,
    /// Functions per batch (one backend write per contiguous run).
    #[arg(long, default_value_t = 1024)]
    batch: u32,
}

/// `f_i(x) = x * (2i + 1) + i`: `imul eax, edi, imm32; add eax, imm32; ret` (12 bytes).
fn function(i: u32) -> [u8; 12] {
    let (m, a) = ((2 * i + 1).to_le_bytes(), i.to_le_bytes());
    [
        0x69, 0xc7, m[0], m[1], m[2], m[3], 0x05, a[0], a[1], a[2], a[3], 0xc3,
    ]
}

fn expected(i: u32, x: u32) -> u32 {
    x.wrapping_mul(2 * i + 1).wrapping_add(i)
}

type JitFn = extern "C" fn(u32) -> u32;

fn bar(n: u32, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(u64::from(n));
    pb.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_nanos() as f64 / f64::from(n.max(1))
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    #[cfg(not(target_arch = "x86_64"))]
    bail!(
        "the demo generates x86-64 code; this machine is {}",
        std::env::consts::ARCH
    );
    let n = args.programs;
    if n == 0 || args.batch == 0 {
        bail!("--programs and --batch must be at least 1");
    }
    println!(
        "progpack: many small JIT programs in 2 MiB huge-page packs, never writable+executable\n"
    );
    let alloc = Allocator::new(Config::default()).context("creating the allocator")?;
    println!(
        "backend    {}  ({})",
        alloc.backend_name(),
        alloc.backend_report()
    );

    // 1. Load into packs, in batches.
    let pb = bar(n, "loading into packs");
    let t = Instant::now();
    let mut progs: Vec<Program> = Vec::with_capacity(n as usize);
    let mut writes = 0;
    for start in (0..n).step_by(args.batch as usize) {
        let end = (start + args.batch).min(n);
        let mut batch = alloc.batch();
        for i in start..end {
            batch.push(12, 16)?.image.copy_from_slice(&function(i));
        }
        writes += batch.writes();
        progs.extend(batch.finalize()?);
        pb.set_position(u64::from(end));
    }
    let load = t.elapsed();
    pb.finish_and_clear();

    // 2. Call every one and check it.
    let t = Instant::now();
    for (i, p) in progs.iter().enumerate() {
        // SAFETY: program i holds `function(i)`, a complete System V function (u32) -> u32.
        let f = unsafe { p.as_fn::<JitFn>() };
        let got = f(i as u32 ^ 0x5a5a);
        if got != expected(i as u32, i as u32 ^ 0x5a5a) {
            bail!(
                "program {i} returned {got}, expected {}",
                expected(i as u32, i as u32 ^ 0x5a5a)
            );
        }
    }
    let calls = t.elapsed();
    let st = alloc.stats();
    let hp = alloc.huge_pages().context("reading /proc/self/smaps")?;
    println!(
        "loaded     {n} functions in {:.1} ms: {:.0} ns per function ({writes} backend writes)",
        load.as_secs_f64() * 1e3,
        per_op(load, n)
    );
    println!(
        "checked    all {n} return the right value ({:.1} ns per call, in order)",
        per_op(calls, n)
    );
    println!(
        "packs      {} x {} KiB, {} of {} chunks used",
        st.packs,
        st.pack_size >> 10,
        st.chunks_used,
        st.chunks_used + st.chunks_free
    );
    println!(
        "density    {:.2} bytes mapped per byte of code ({} KiB mapped for {} KiB of code)",
        st.density(),
        st.bytes_mapped >> 10,
        st.bytes_requested >> 10
    );
    println!(
        "huge pages {:.0}% of pack memory is backed by 2 MiB pages",
        hp.ratio() * 100.0
    );

    // 3. The same with one mmap + mprotect per function.
    let pb = bar(n, "loading with mmap+mprotect");
    let t = Instant::now();
    let mut pages = Vec::with_capacity(n as usize);
    let mut wall = None;
    for i in 0..n {
        match PageProgram::load(&function(i)) {
            Ok(p) => pages.push(p),
            Err(e) => {
                wall = Some((i, e));
                break;
            }
        }
        if i % 4096 == 0 {
            pb.set_position(u64::from(i));
        }
    }
    let base_load = t.elapsed();
    pb.finish_and_clear();
    for (i, p) in pages.iter().enumerate() {
        // SAFETY: each page holds `function(i)`, made read+execute.
        let f: JitFn = unsafe { std::mem::transmute::<usize, JitFn>(p.addr()) };
        if f(7) != expected(i as u32, 7) {
            bail!("mmap baseline program {i} is wrong");
        }
    }
    let loaded = pages.len() as u32;
    let base_per = per_op(base_load, loaded);
    println!(
        "mmap       {loaded} functions in {:.1} ms: {base_per:.0} ns per function, {} KiB mapped",
        base_load.as_secs_f64() * 1e3,
        (loaded as usize * rustix::param::page_size()) >> 10
    );
    if let Some((i, e)) = wall {
        println!("           stopped after {i} functions: {e} (vm.max_map_count?)");
    }
    println!(
        "ratio      progpack loads {:.1}x faster than mmap+mprotect per function",
        base_per / per_op(load, n)
    );
    drop(pages);
    drop(progs);
    let st = alloc.stats();
    println!(
        "freed      all programs: {} packs left (reserve), {} chunks used",
        st.packs, st.chunks_used
    );
    Ok(())
}
