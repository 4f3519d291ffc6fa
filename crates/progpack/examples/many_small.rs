//! Many small functions: a "regex character class compiler" that JITs thousands of tiny
//! predicates, calls them against an oracle, replaces some of them, and prints the allocator's
//! statistics and huge-page coverage.
//!
//! Each class such as `[0-9A-Fa-f_]` becomes `extern "C" fn(u32) -> u32` returning 1 if the
//! byte is in one of its ranges. Per range the emitter writes the branch-free unsigned range
//! check `(x - lo) <= (hi - lo)`:
//!
//! ```text
//!     xor   ecx, ecx              ; result
//!   per range:
//!     lea   eax, [rdi - lo]
//!     cmp   eax, hi - lo
//!     setbe al
//!     or    cl, al
//!     movzx eax, cl
//!     ret
//! ```
//!
//! That is 22 to 70 bytes per function: with a page per function (`mmap` + `mprotect`) ten
//! thousand of them would take ten thousand mappings and 40 MiB; here they share a few 2 MiB
//! packs. Functions are loaded one by one (`draft` + `finalize`, as a regex engine compiles
//! patterns as they arrive); see the `iced` example for loading many at once with a batch.
//!
//! Run: `cargo run --release -p progpack --example many_small`

use progpack::{Allocator, Config, Program};

/// Classes compiled at first.
const CLASSES: usize = 10_000;
/// Rounds of replacing a third of them.
const ROUNDS: usize = 3;

/// A character class: up to four inclusive byte ranges.
#[derive(Clone, Debug)]
struct Class(Vec<(u8, u8)>);

impl Class {
    fn contains(&self, x: u8) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= x && x <= hi)
    }
}

/// A tiny deterministic generator (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn class(&mut self) -> Class {
        let n = 1 + (self.next() % 4) as usize;
        Class(
            (0..n)
                .map(|_| {
                    let a = self.next() as u8;
                    let b = self.next() as u8;
                    (a.min(b), a.max(b))
                })
                .collect(),
        )
    }
}

/// x86-64 machine code for `class` (System V: byte in edi, result in eax).
fn emit(class: &Class) -> Vec<u8> {
    let mut c = vec![0x31, 0xc9]; // xor ecx, ecx
    for &(lo, hi) in &class.0 {
        c.extend([0x8d, 0x87]); // lea eax, [rdi + disp32]
        c.extend((-i32::from(lo)).to_le_bytes());
        c.push(0x3d); // cmp eax, imm32
        c.extend(u32::from(hi - lo).to_le_bytes());
        c.extend([0x0f, 0x96, 0xc0]); // setbe al
        c.extend([0x08, 0xc1]); // or cl, al
    }
    c.extend([0x0f, 0xb6, 0xc1]); // movzx eax, cl
    c.push(0xc3); // ret
    c
}

/// JITs one class: reserve, write the image, finalize.
fn load(alloc: &Allocator, class: &Class) -> progpack::Result<Program> {
    let code = emit(class);
    let mut d = alloc.draft(code.len(), 1)?;
    d.image_mut().copy_from_slice(&code);
    d.finalize()
}

/// Calls `p` on every byte and compares with the oracle; returns the number of calls.
fn check(p: &Program, class: &Class) -> usize {
    // SAFETY: `emit` produced exactly this System V function.
    let f = unsafe { p.as_fn::<extern "C" fn(u32) -> u32>() };
    for x in 0..=255u8 {
        assert_eq!(f(u32::from(x)) == 1, class.contains(x), "{class:?} on {x}");
    }
    256
}

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alloc = Allocator::new(Config::default())?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = std::time::Instant::now();
    let mut live: Vec<(Class, Program)> = Vec::with_capacity(CLASSES);
    for _ in 0..CLASSES {
        let class = rng.class();
        let p = load(&alloc, &class)?;
        live.push((class, p));
    }
    let loaded_in = start.elapsed();
    let calls: usize = live.iter().map(|(c, p)| check(p, c)).sum();
    println!(
        "ok  loaded {CLASSES} classes in {:.1} ms ({}), {calls} calls agree with the oracle",
        loaded_in.as_secs_f64() * 1e3,
        alloc.backend_name()
    );
    report(&alloc);

    for round in 1..=ROUNDS {
        // Drop a third of the classes: their chunks are trap-filled and freed, leaving holes...
        let mut slots: Vec<(Class, Option<Program>)> =
            live.into_iter().map(|(c, p)| (c, Some(p))).collect();
        let mut replaced = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            if (i + round) % 3 == 0 {
                slot.1 = None;
                replaced += 1;
            }
        }
        let holes: usize = alloc.snapshot().packs.iter().map(|p| p.hole_chunks()).sum();
        // ...which the next compilations fill (first fit).
        live = Vec::with_capacity(CLASSES);
        for (class, program) in slots {
            live.push(match program {
                Some(p) => (class, p),
                None => {
                    let class = rng.class();
                    let p = load(&alloc, &class)?;
                    (class, p)
                }
            });
        }
        let holes_after: usize = alloc.snapshot().packs.iter().map(|p| p.hole_chunks()).sum();
        let calls: usize = live.iter().map(|(c, p)| check(p, c)).sum();
        alloc
            .check_invariants()
            .map_err(|e| format!("invariant: {e}"))?;
        assert!(holes > 0 && holes_after < holes, "reloads fill the holes");
        println!(
            "ok  round {round}: dropped {replaced} (holes: {holes} chunks), reloaded new classes (holes: {holes_after}); all {calls} calls agree, free chunks are traps"
        );
    }
    let s = report(&alloc);
    assert_eq!(s.programs, CLASSES);
    assert!(
        s.packs <= 2,
        "{CLASSES} functions of at most 70 bytes fit in two packs"
    );

    drop(live);
    // This thread's run of chunks still holds a few chunks of one pack: give them back too.
    alloc.trim();
    let s = alloc.stats();
    assert_eq!((s.programs, s.chunks_used, s.chunks_cached), (0, 0, 0));
    assert!(s.packs <= s.reserve_packs, "empty packs were released");
    println!(
        "ok  all dropped: {} pack(s) kept in reserve, {} mapped / {} released over the run",
        s.packs, s.packs_mapped_total, s.packs_released_total
    );
    Ok(())
}

/// Prints the counters and huge-page coverage; returns the counters.
fn report(alloc: &Allocator) -> progpack::Stats {
    let s = alloc.stats();
    let used = s.chunks_used * s.chunk_size;
    println!(
        "    stats: {} programs in {} pack(s); {} chunks used, {} free; {} B requested, {} B in used chunks ({:.0}% of those bytes are code)",
        s.programs,
        s.packs,
        s.chunks_used,
        s.chunks_free,
        s.bytes_requested,
        used,
        100.0 * s.bytes_requested as f64 / used.max(1) as f64
    );
    match alloc.huge_pages() {
        Ok(h) => println!(
            "    huge pages: {} of {} KiB of packs ({:.0}%){}",
            h.backed >> 10,
            h.total >> 10,
            100.0 * h.ratio(),
            if alloc.backend_caps().huge_pages {
                ""
            } else {
                " - backend reports no huge-page support here"
            }
        ),
        Err(e) => println!("    huge pages: unknown ({e})"),
    }
    s
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("many_small example: x86-64 only, skipped");
}
