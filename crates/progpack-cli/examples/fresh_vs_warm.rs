//! One-by-one loads of 10,000 64-byte programs into a fresh allocator and into a warm one (its
//! packs already touched), progpack on `dualmap` against jit-allocator's dual mapping: the
//! measurement behind BENCHMARKS.md's "Load against jit-allocator" (the bench's `load` rows
//! use fresh allocators only). Calls are not timed; the fastest of 60 repetitions is printed.
//!
//! `cargo run --release -p progpack-cli --example fresh_vs_warm`
#![allow(unsafe_code)]

use jit_allocator::{JitAllocator, JitAllocatorOptions};
use progpack::{Allocator, BackendChoice, Config, Program};
use std::time::Instant;

const N: usize = 10_000;
const REPEAT: usize = 60;

/// `mov eax, edi; ret`, then traps up to 64 bytes.
fn body() -> [u8; 64] {
    let mut b = [0xcc; 64];
    b[..3].copy_from_slice(&[0x89, 0xf8, 0xc3]);
    b
}

/// Loads `N` programs into `alloc`, one by one: ns per program.
fn progpack_loads(alloc: &Allocator, out: &mut Vec<Program>) -> f64 {
    let code = body();
    let start = Instant::now();
    for _ in 0..N {
        let mut d = alloc.draft(64, 16).expect("draft");
        d.image_mut().copy_from_slice(&code);
        out.push(d.finalize().expect("finalize"));
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

/// Loads `N` programs into `alloc`, one by one: ns per program.
fn jit_loads(alloc: &mut JitAllocator, out: &mut Vec<*const u8>) -> f64 {
    let code = body();
    let start = Instant::now();
    for _ in 0..N {
        let (rx, rw) = alloc.alloc(64).expect("alloc");
        // SAFETY: `alloc` returned 64 writable bytes at `rw`, this program's alone.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), rw, 64) };
        jit_allocator::flush_instruction_cache(rx, 64);
        out.push(rx);
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn progpack(warm: bool) -> f64 {
    let alloc = Allocator::new(Config::default().backend(BackendChoice::DualMap)).unwrap();
    let mut programs = Vec::with_capacity(N);
    if warm {
        progpack_loads(&alloc, &mut programs);
        programs.clear();
    }
    progpack_loads(&alloc, &mut programs)
}

fn jit(warm: bool) -> f64 {
    let mut alloc = JitAllocator::new(JitAllocatorOptions {
        use_dual_mapping: true,
        ..Default::default()
    });
    // Warm: one program kept for good (with every block empty, jit-allocator unmaps all but
    // one). Fresh: nothing before the timed loads.
    let keep = warm.then(|| alloc.alloc(64).expect("alloc").0);
    let mut programs = Vec::with_capacity(N);
    let release = |alloc: &mut JitAllocator, programs: &mut Vec<*const u8>| {
        for p in programs.drain(..) {
            // SAFETY: `p` came from `alloc` and is released once.
            unsafe { alloc.release(p).expect("release") };
        }
    };
    if warm {
        jit_loads(&mut alloc, &mut programs);
        release(&mut alloc, &mut programs);
    }
    let t = jit_loads(&mut alloc, &mut programs);
    release(&mut alloc, &mut programs);
    if let Some(p) = keep {
        // SAFETY: as above.
        unsafe { alloc.release(p).expect("release") };
    }
    t
}

fn main() {
    let best = |f: &dyn Fn() -> f64| (0..REPEAT).map(|_| f()).fold(f64::MAX, f64::min);
    // `-- progpack-fresh` (or `jit-fresh`, `progpack-warm`, `jit-warm`): that case alone, for
    // a profiler.
    if let Some(only) = std::env::args().nth(1) {
        let t = match only.as_str() {
            "progpack-fresh" => best(&|| progpack(false)),
            "progpack-warm" => best(&|| progpack(true)),
            "jit-fresh" => best(&|| jit(false)),
            "jit-warm" => best(&|| jit(true)),
            other => panic!("unknown case {other}"),
        };
        println!("{only} {t:.1}");
        return;
    }
    println!("ns per program, one by one, {N} programs of 64 B, fastest of {REPEAT}:");
    for warm in [false, true] {
        let what = if warm { "warm" } else { "fresh" };
        println!(
            "  {what:5}  progpack-dualmap {:6.1}",
            best(&|| progpack(warm))
        );
        println!("  {what:5}  jit-allocator    {:6.1}", best(&|| jit(warm)));
    }
}
