//! `progpack demo`: the front door. Loads many small generated x86-64 functions into packs,
//! calls every one and checks its result, prints what the allocator did, and runs the same
//! load with one `mmap` + `mprotect` per function for comparison.

#![allow(unsafe_code)] // calls the functions it generates

use crate::bench::ebpf::{filter_program, packets, STRIDE};
use crate::bench::sys::System;
use crate::bench::systems::mmap::MmapPerProgram;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use progpack::{Allocator, Config, Program};
use progpack_bpf::{Helpers, JitOptions, Vm};
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
    /// How many eBPF packet filters to load (at least 81: filter 80 is the one that runs).
    #[arg(long, default_value_t = 10_000)]
    filters: u16,
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
        "density    {:.2} bytes mapped per byte of code ({} KiB mapped for {} KiB of 12-byte functions in 64-byte chunks)",
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
    let mut pages = MmapPerProgram::new();
    pages.reserve(n as usize);
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    let mut wall = None;
    for i in 0..n {
        match pages.load(12, &mut |buf| buf.copy_from_slice(&function(i))) {
            Ok(id) => ids.push(id),
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
    for (i, id) in ids.iter().enumerate() {
        // SAFETY: each page holds `function(i)`, made read+execute.
        let f: JitFn = unsafe { std::mem::transmute::<usize, JitFn>(pages.addr(*id)) };
        if f(7) != expected(i as u32, 7) {
            bail!("mmap baseline program {i} is wrong");
        }
    }
    let loaded = ids.len() as u32;
    let base_per = per_op(base_load, loaded);
    println!(
        "mmap       {loaded} functions in {:.1} ms: {base_per:.0} ns per function, one mapping and {} KiB each",
        base_load.as_secs_f64() * 1e3,
        rustix::param::page_size() >> 10
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
        "freed      all programs: {} pack(s) left (the reserve), {} chunks used",
        st.packs, st.chunks_used
    );

    one_by_one(n)?;
    live_patch(&alloc)?;
    names()?;

    let mut filters = ebpf(&alloc, args.filters)?;
    // Unload every third filter, so the map shows the holes that frees leave.
    let mut i = 0;
    filters.retain(|_| {
        i += 1;
        i % 3 != 0
    });
    map(&alloc, filters.len());
    Ok(())
}

/// Step 4, the single-program path: `draft` → write → `finalize`, then drop, one program at a
/// time, on the persistent `dualmap` backend (the image is written straight into the pack's
/// never-executable alias; `procmem` would add one `pwrite` per program: batch there).
fn one_by_one(n: u32) -> anyhow::Result<()> {
    let alloc = match Allocator::new(Config::default().backend(progpack::BackendChoice::DualMap)) {
        Ok(a) => a,
        Err(e) => {
            println!("one by one skipped: no dualmap backend here ({e})");
            return Ok(());
        }
    };
    let t = Instant::now();
    let mut progs = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut d = alloc.draft(12, 16)?;
        d.image_mut().copy_from_slice(&function(i));
        progs.push(d.finalize()?);
    }
    let load = t.elapsed();
    for (i, p) in progs.iter().enumerate().step_by(97) {
        // SAFETY: program i holds `function(i)`, a complete System V function (u32) -> u32.
        let f = unsafe { p.as_fn::<JitFn>() };
        if f(3) != expected(i as u32, 3) {
            bail!("one-by-one program {i} is wrong");
        }
    }
    let t = Instant::now();
    drop(progs);
    let free = t.elapsed();
    println!(
        "one by one {n} functions with draft + finalize on dualmap: {:.0} ns each to load, {:.0} ns each to free (trap fill included)",
        per_op(load, n),
        per_op(free, n)
    );
    Ok(())
}

/// Step 5, live patching: one instruction of a function rewritten again and again while
/// another thread keeps calling it (the kernel's `text_poke_bp` protocol: a temporary `int3`,
/// never a writable+executable page). Every call must return the old or the new value.
fn live_patch(alloc: &Allocator) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const PATCHES: u32 = 2000;
    let mov = |v: u32| {
        let b = v.to_le_bytes();
        [0xb8, b[0], b[1], b[2], b[3]] // mov eax, imm32
    };
    let mut d = alloc.draft(6, 16)?;
    d.image_mut()[..5].copy_from_slice(&mov(0));
    d.image_mut()[5] = 0xc3; // ret
    let mut program = d.finalize()?;
    // SAFETY: the program is `mov eax, imm32; ret` before and after every patch.
    let f = unsafe { program.as_fn::<extern "C" fn() -> u32>() };
    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(0));
    let caller = {
        let (stop, newest) = (stop.clone(), newest.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A call sees a value some patch wrote: no older than the last one finished
                // before it, no newer than the one in progress after it.
                let before = newest.load(Ordering::Acquire) as u32;
                let got = f();
                let after = newest.load(Ordering::Acquire) as u32 + 1;
                if got < before || got > after {
                    return Err(format!(
                        "call returned {got}, patches were at {before}..={after}"
                    ));
                }
                calls += 1;
            }
            Ok(calls)
        })
    };
    let resumed = progpack::patch::threads_resumed();
    let t = Instant::now();
    for v in 1..=PATCHES {
        program.patch(0, &mov(v))?;
        newest.store(u64::from(v), Ordering::Release);
    }
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let calls = caller
        .join()
        .map_err(|_| anyhow::anyhow!("the calling thread panicked"))?
        .map_err(|e| anyhow::anyhow!("live patching: {e}"))?;
    if f() != PATCHES {
        bail!("after {PATCHES} patches the function returns {}", f());
    }
    println!(
        "live patch {PATCHES} patches of a running function ({:.1} us each) while a thread called it {calls} times: every call returned the old or the new value; {} call(s) met the temporary int3 and were resumed",
        took.as_secs_f64() * 1e6 / f64::from(PATCHES),
        progpack::patch::threads_resumed() - resumed
    );
    Ok(())
}

/// Step 6, names for profilers and debuggers: named functions go into a perf map (what
/// `perf report` reads for JIT code), and `program_at` says which function covers an address
/// (what a SIGSEGV handler or a sampling profiler asks). The map goes to a temporary directory
/// here, not `/tmp/perf-<pid>.map`, and is removed afterwards.
fn names() -> anyhow::Result<()> {
    const NAMES: [&str; 3] = ["demo::square", "demo::filter_tcp", "demo::checksum"];
    let dir = std::env::temp_dir().join(format!("progpack-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = names_in(&dir, &NAMES);
    let _ = std::fs::remove_dir_all(&dir);
    let (lines, found) = result?;
    println!(
        "names      {} named functions: {} perf map line(s), e.g. `{}`; program_at(address inside {}) = {}",
        NAMES.len(),
        lines.len(),
        lines.first().map_or("", String::as_str),
        NAMES[1],
        found
    );
    Ok(())
}

/// Loads one function per name with the perf map on in `dir`; returns the map's lines and
/// the name `program_at` gives for an address inside the second function.
fn names_in(dir: &std::path::Path, names: &[&str]) -> anyhow::Result<(Vec<String>, String)> {
    let config = Config::default().observe(progpack::Observe::default().perf_map_in(dir));
    let alloc = Allocator::new(config).context("creating an allocator with a perf map")?;
    let mut progs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut d = alloc.draft(12, 16)?.named(name)?;
        d.image_mut().copy_from_slice(&function(i as u32));
        progs.push(d.finalize()?);
    }
    for (p, name) in progs.iter().zip(names) {
        if p.name() != *name {
            bail!("program named {name:?} says it is {:?}", p.name());
        }
    }
    let found = alloc
        .program_at(progs[1].addr() + 5)
        .map(|info| info.name().into_owned())
        .context("program_at found nothing inside a live program")?;
    if found != names[1] {
        bail!("program_at names {found:?}, expected {:?}", names[1]);
    }
    let path = alloc
        .observe_outputs()
        .perf_map
        .context("the perf map was not opened")?;
    let map =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<String> = map.lines().map(str::to_owned).collect();
    for (p, name) in progs.iter().zip(names) {
        let line = format!("{:x} {:x} {name}", p.addr(), p.len());
        if !lines.contains(&line) {
            bail!("the perf map has no line {line:?}:\n{map}");
        }
    }
    Ok((lines, found))
}

/// Step 7, the eBPF VM on progpack: many packet filters checked, JIT-compiled and loaded in one
/// batch; one of them run over synthetic packets by the JIT and by the interpreter.
fn ebpf(alloc: &Allocator, n: u16) -> anyhow::Result<Vec<progpack_bpf::BpfProgram>> {
    println!();
    let mut vm = Vm::new(Helpers::new());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    // Filter i accepts IPv4 TCP packets to port i (port 80 is among them).
    let codes: Vec<Vec<u8>> = (0..n.max(81)).map(filter_program).collect();
    let refs: Vec<&[u8]> = codes.iter().map(Vec::as_slice).collect();
    let t = Instant::now();
    let filters = vm.load_many(&refs).context("loading the eBPF filters")?;
    let load = t.elapsed();
    println!(
        "eBPF       {} packet filters decoded, checked, JIT-compiled and placed in {:.1} ms ({:.1} us each), in {} pack(s)",
        filters.len(),
        load.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e6 / filters.len() as f64,
        alloc.stats().packs
    );
    let (mut buf, lens, want) = packets(100_000, 7);
    let port80 = &filters[80];
    let mut run = |jit: bool| -> anyhow::Result<(usize, Duration)> {
        let t = Instant::now();
        let mut accepted = 0;
        for (p, &len) in buf.chunks_exact_mut(STRIDE).zip(&lens) {
            let mem = &mut p[..usize::from(len)];
            let r0 = if jit {
                port80.run_jit(mem)?
            } else {
                port80.run_interp(mem)?
            };
            accepted += r0 as usize;
        }
        Ok((accepted, t.elapsed()))
    };
    let (jit_ok, jit_t) = run(true)?;
    let (int_ok, int_t) = run(false)?;
    if jit_ok != want || int_ok != want {
        bail!("filter accepted {jit_ok} (JIT) and {int_ok} (interpreter) packets, expected {want}");
    }
    println!(
        "filter     port 80 over {} packets: JIT {:.1} ns, interpreter {:.1} ns per packet; both accept {want}, as expected",
        lens.len(),
        jit_t.as_nanos() as f64 / lens.len() as f64,
        int_t.as_nanos() as f64 / lens.len() as f64
    );
    Ok(filters)
}

/// Step 8: what the packs look like now, as a terminal map (`progpack map` draws PNG and SVG).
fn map(alloc: &Allocator, live: usize) {
    let opts = progpack_cli::map::TextOptions { width: 64 };
    println!("\nthe packs now, with {live} filters loaded and every third one unloaded:");
    print!(
        "{}",
        progpack_cli::map::render_text(&alloc.snapshot(), &opts)
    );
}
