//! Workload `ebpf-sum`: a byte-sum loop over 4 KiB of input, the shape of any program that
//! walks a buffer (a checksum, a parser's scan). Measures what bounds checks and instruction
//! counting cost inside a loop, against JIT code that checks nothing.
//!
//! The program is what clang 14 emits at `-O2 -target bpf` for
//! `u64 sum(u8 *p, u64 len) { u64 s = 0; for (u8 *e = p + len; p < e; p++) s += *p; return s; }`:
//!
//! ```text
//!     r0 = 0; r3 = 1; if r3 s> r2 goto out
//!     r3 = r1; r3 += r2; r0 = 0           // end
//! loop:
//!     r2 = *(u8 *)(r1 + 0); r0 += r2; r1 += 1
//!     if r3 > r1 goto loop
//! out:
//!     exit
//! ```
//!
//! Engines:
//! - `progpack-bpf-jit`: default `JitOptions` (bounds checks and instruction counting on);
//! - `progpack-bpf-jit-nocount`: checks on, counting off;
//! - `progpack-bpf-jit-unchecked`: the same JIT with bounds checks and counting compiled out
//!   (`JitProgram::new_unchecked`), the unchecked reference (what ubpf's JIT does);
//! - `progpack-bpf-interp`, `rbpf-jit` (which checks no access either), `rbpf-interp`. rbpf's
//!   JIT sets r1 but not r2, so rbpf runs the program behind one `mov r2, 4096` (outside the
//!   loop).
//!
//! (The loop reads `[r1, r1 + r2)` whatever the engine; the safety notes below rely on it.)
//!
//! Every engine must return the same sum (checked; a mismatch gives a note instead of a row).
//! Time: ns per run over the 4 KiB, fastest of [`REPEAT`] rounds after a warm-up round.

use std::time::Instant;

use progpack_bpf::jit::shared_allocator;
use progpack_bpf::{asm, insn, Helpers, JitOptions, JitProgram, Vm};

use super::gen::{Rng, SEED};
use super::report::Report;
use super::{Scale, REPEAT};

/// Bytes summed per run.
pub const INPUT: usize = 4096;

/// The byte-sum loop (see the module doc).
pub const PROGRAM: &str = "
    mov %r0, 0
    mov %r3, 1
    jsgt %r3, %r2, +7
    mov %r3, %r1
    add %r3, %r2
    mov %r0, 0
    ldxb %r2, [%r1+0]
    add %r0, %r2
    add %r1, 1
    jgt %r3, %r1, -4
    exit";

/// The program's bytecode.
pub fn program() -> Vec<u8> {
    insn::encode_slots(&asm::assemble(PROGRAM).expect("the byte-sum loop assembles"))
}

/// The program for rbpf: its JIT passes no length in r2, so the length is a constant.
fn rbpf_program() -> Vec<u8> {
    let text = format!("mov %r2, {INPUT}\n{PROGRAM}");
    insn::encode_slots(&asm::assemble(&text).expect("the byte-sum loop assembles"))
}

/// The engines compared.
const ENGINES: [&str; 6] = [
    "progpack-bpf-jit",
    "progpack-bpf-jit-nocount",
    "progpack-bpf-jit-unchecked",
    "progpack-bpf-interp",
    "rbpf-jit",
    "rbpf-interp",
];

/// Runs `run` `runs` times per round, one warm-up round and [`REPEAT`] timed rounds; returns
/// the fastest round's ns per run and the last result.
fn time_runs<F>(mem: &mut [u8], runs: usize, mut run: F) -> Result<(f64, u64), String>
where
    F: FnMut(&mut [u8]) -> Result<u64, String>,
{
    let mut best = f64::INFINITY;
    let mut r0 = 0;
    for round in 0..=REPEAT {
        let start = Instant::now();
        for _ in 0..runs {
            r0 = run(std::hint::black_box(&mut *mem))?;
        }
        let ns = start.elapsed().as_nanos() as f64 / runs as f64;
        if round > 0 {
            best = best.min(ns);
        }
    }
    Ok((best, r0))
}

/// Runs the loop with engine `name`.
fn sum(name: &str, mem: &mut [u8], runs: usize) -> Result<(f64, u64), String> {
    let prog = program();
    let e = |e: progpack_bpf::Error| e.to_string();
    match name {
        "progpack-bpf-jit" | "progpack-bpf-jit-nocount" => {
            let mut vm = Vm::new(Helpers::new());
            let alloc = shared_allocator().map_err(|e| e.to_string())?;
            let count_instructions = name == "progpack-bpf-jit";
            vm.enable_jit(
                alloc,
                JitOptions {
                    count_instructions,
                    ..Default::default()
                },
            );
            let p = vm.load(&prog).map_err(e)?;
            time_runs(mem, runs, |m| p.run_jit(m).map_err(e))
        }
        "progpack-bpf-jit-unchecked" => {
            let vm = Vm::new(Helpers::new());
            let checked = vm.load(&prog).map_err(e)?;
            let alloc = shared_allocator().map_err(|e| e.to_string())?;
            #[allow(unsafe_code)]
            // SAFETY: the loop reads bytes [r1, r1 + r2) only (r1 runs from the start of the
            // memory to its last byte, one byte per read), all inside the memory each run
            // gets; it stores nothing and calls nothing.
            let p = unsafe { JitProgram::new_unchecked(&alloc, checked.slots(), vm.helpers()) }
                .map_err(|e| e.to_string())?;
            time_runs(mem, runs, |m| p.run(m).map_err(|e| e.to_string()))
        }
        "progpack-bpf-interp" => {
            let p = Vm::new(Helpers::new()).load(&prog).map_err(e)?;
            time_runs(mem, runs, |m| p.run_interp(m).map_err(|e| e.to_string()))
        }
        "rbpf-jit" => {
            let prog = rbpf_program();
            let mut vm = rbpf::EbpfVmRaw::new(Some(&prog)).map_err(|e| e.to_string())?;
            vm.jit_compile().map_err(|e| e.to_string())?;
            time_runs(mem, runs, |m| {
                #[allow(unsafe_code)]
                // SAFETY: rbpf verified and compiled the program; it reads only inside `m`
                // (see the safety note of progpack-bpf-jit-unchecked).
                unsafe { vm.execute_program_jit(m) }.map_err(|e| e.to_string())
            })
        }
        "rbpf-interp" => {
            let prog = rbpf_program();
            let vm = rbpf::EbpfVmRaw::new(Some(&prog)).map_err(|e| e.to_string())?;
            time_runs(mem, runs, |m| {
                vm.execute_program(m).map_err(|e| e.to_string())
            })
        }
        other => Err(format!("unknown engine {other}")),
    }
}

/// The input: [`INPUT`] pseudo-random bytes, and their sum.
pub fn input() -> (Vec<u8>, u64) {
    let mut rng = Rng::new(SEED ^ 0x5a5);
    let mem: Vec<u8> = (0..INPUT).map(|_| rng.next_u64() as u8).collect();
    let total = mem.iter().map(|&b| b as u64).sum();
    (mem, total)
}

/// Runs the byte-sum loop for every engine (or those named in `only`).
pub fn run(scale: &Scale, only: &[String], report: &mut Report) {
    let (mut mem, total) = input();
    // About as many bytes as the filter sees packets, in whole runs.
    let runs = (scale.ebpf_packets * 16 / INPUT).max(16);
    for name in ENGINES
        .into_iter()
        .filter(|n| only.is_empty() || only.iter().any(|o| o == n))
    {
        match sum(name, &mut mem, runs) {
            Ok((_, r0)) if r0 != total => report.note(
                "ebpf-sum",
                name,
                format!("wrong sum {r0}, expected {total}; no row"),
            ),
            Ok((ns, _)) => report.push("ebpf-sum", name, runs, "4 KiB", ns, "ns/run"),
            Err(e) => report.note("ebpf-sum", name, format!("{e}; no row")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_sums_the_input() {
        let (mut mem, total) = input();
        for name in ENGINES {
            let (_, r0) = sum(name, &mut mem, 2).unwrap();
            assert_eq!(r0, total, "{name}");
        }
        // An empty input sums to 0 (the loop is skipped).
        let p = Vm::new(Helpers::new()).load(&program()).unwrap();
        assert_eq!(p.run_interp(&mut []).unwrap(), 0);
    }

    #[test]
    fn the_loop_has_the_shape_clang_emits() {
        // clang 14's bytes for the C function in the module doc.
        let clang: [u64; 11] = [
            0xb700000000000000,
            0xb703000001000000,
            0x6d23070000000000,
            0xbf13000000000000,
            0x0f23000000000000,
            0xb700000000000000,
            0x7112000000000000,
            0x0f20000000000000,
            0x0701000001000000,
            0x2d13fcff00000000,
            0x9500000000000000,
        ];
        let bytes: Vec<u8> = clang.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(program(), bytes);
    }
}
