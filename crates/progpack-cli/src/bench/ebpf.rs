//! Workload 6, eBPF end to end: load many small eBPF programs (check + JIT + make
//! executable) and run a packet filter over synthetic packets, for each engine; then the
//! byte-sum loop of [`super::ebpf_loop`] and the map-heavy workload of [`super::ebpf_maps`].
//!
//! Engines, each loading the same bytecode:
//! - `rbpf-interp`: `EbpfVmRaw::new` (rbpf's verifier), runs with `execute_program`;
//! - `rbpf-jit`: `new` + `jit_compile` (a page per program from `std::alloc`, made
//!   writable+executable with `mprotect`), runs with `execute_program_jit`;
//! - `progpack-bpf-interp`: `Vm::load` without JIT (decode + check), runs with `run_interp`;
//! - `progpack-bpf-jit`: `Vm::load` with JIT enabled (decode + check + compile + a slot in
//!   progpack, procmem backend: the VM writes the programs loaded one by one to executable
//!   memory 256 at a time, and the timed region ends with `Vm::flush`, which writes the last
//!   ones), runs with `run_jit`; default `JitOptions` (instruction counting on, so a run stops
//!   at its instruction limit like the interpreter);
//! - `progpack-bpf-jit-batch` (load only): `Vm::load_many` over groups of [`BATCH`] programs:
//!   compiled one by one, placed with one progpack `Batch` per group;
//! - `progpack-bpf-jit-dualmap` (load only): one by one like `progpack-bpf-jit`, the allocator
//!   on the dualmap backend (a write is a copy through the writable alias, no system call);
//! - `progpack-bpf-jit-dualmap-per-write` (load only): the same on `dualmap-per-write` (a
//!   `pwrite` on the pack's `memfd` per program: no writable view and no `/proc/self/mem`);
//! - `progpack-bpf-jit-nocount`: the same as `progpack-bpf-jit` with `count_instructions: false` (like rbpf's JIT,
//!   which has no instruction limit);
//! - `progpack-bpf-jit-unplaced` (load only, a breakdown, not an engine): decode + check +
//!   `jit::compile` with counting, without `draft`/`finalize`: the difference to
//!   `progpack-bpf-jit` is what placing the code in progpack costs;
//! - `progpack-bpf-jit-compile` (load only, a breakdown): `jit::compile_into` alone, of
//!   programs already decoded and checked, into one reused code buffer.
//!
//! The load rows come twice: `ebpf-load` loads the packet filter for many ports (programs of
//! one template: the same instructions but for one constant, which progpack-bpf's caches of
//! the last program's shape, analysis and code serve), `ebpf-load-shapes` loads generated
//! programs each of its own shape ([`shaped_programs`]: nothing of the last program is
//! reused). Load is the fastest of [`REPEAT`] runs, each into fresh VMs. The filter runs twice:
//! `ebpf-filter` streams once over all packets (the fastest of [`REPEAT`] passes after one
//! warm-up pass), `ebpf-filter-hot` runs repeatedly over [`HOT_PACKETS`] packets that stay in
//! the L1 cache (the same number of packets in all), so that it measures the engines and not
//! memory. One pass is one call of `filter_pass`, never inlined:
//! `valgrind --tool=callgrind --toggle-collect='*filter_pass*'` counts instructions per packet.
#![allow(unsafe_code)]

use super::gen::{Rng, SEED};
use super::report::Report;
use super::{Scale, BATCH, REPEAT};
use progpack_bpf::{Helpers, JitOptions, Vm};
use std::time::Instant;

/// Bytes between packets in the packet buffer (each packet is shorter).
pub const STRIDE: usize = 128;

/// Packets of `ebpf-filter-hot`: 16 KiB, half the L1 data cache.
pub const HOT_PACKETS: usize = 128;

/// A raw eBPF instruction.
fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = op;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// The packet filter: accept (r0 = 1) IPv4 TCP packets to destination `port`, else 0.
/// r1 points at the Ethernet frame.
pub fn filter_program(port: u16) -> Vec<u8> {
    const LDXH: u8 = 0x69;
    const LDXB: u8 = 0x71;
    const JNE_K: u8 = 0x55;
    const MOV64_K: u8 = 0xb7;
    const EXIT: u8 = 0x95;
    [
        insn(LDXH, 2, 1, 12, 0),      // 0: r2 = ethertype (as loaded)
        insn(JNE_K, 2, 0, 6, 0x0008), // 1: if not IPv4 goto 8
        insn(LDXB, 3, 1, 23, 0),      // 2: r3 = IPv4 protocol
        insn(JNE_K, 3, 0, 4, 6),      // 3: if not TCP goto 8
        insn(LDXH, 4, 1, 36, 0),      // 4: r4 = TCP destination port
        insn(JNE_K, 4, 0, 2, port.swap_bytes() as i32), // 5: if not `port` goto 8
        insn(MOV64_K, 0, 0, 0, 1),    // 6: accept
        insn(EXIT, 0, 0, 0, 0),       // 7
        insn(MOV64_K, 0, 0, 0, 0),    // 8: drop
        insn(EXIT, 0, 0, 0, 0),       // 9
    ]
    .concat()
}

/// `n` synthetic Ethernet frames (64..=128 bytes, IPv4/IPv6, TCP/UDP, some to port 80) laid
/// out every [`STRIDE`] bytes, their lengths, and how many the filter for port 80 accepts.
pub fn packets(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>, usize) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; n * STRIDE];
    let mut lens = Vec::with_capacity(n);
    let mut accepted = 0;
    for p in buf.chunks_exact_mut(STRIDE) {
        let len = 64 + rng.below(65);
        let ipv4 = rng.below(4) != 0;
        let tcp = rng.below(3) != 0;
        let port: u16 = if rng.below(4) == 0 {
            80
        } else {
            rng.below(65536) as u16
        };
        p[12..14].copy_from_slice(if ipv4 { &[0x08, 0x00] } else { &[0x86, 0xdd] });
        p[14] = 0x45;
        p[23] = if tcp { 6 } else { 17 };
        p[34..36].copy_from_slice(&(rng.below(65536) as u16).to_be_bytes());
        p[36..38].copy_from_slice(&port.to_be_bytes());
        for b in &mut p[38..len] {
            *b = rng.next_u64() as u8;
        }
        accepted += usize::from(ipv4 && tcp && port == 80);
        lens.push(len as u8);
    }
    (buf, lens, accepted)
}

/// The engines compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    RbpfInterp,
    RbpfJit,
    PpInterp,
    PpJit,
    PpJitNoCount,
    PpJitUnplaced,
    PpJitCompile,
    PpJitBatch,
    PpJitDualmap,
    PpJitPerWrite,
}

impl Engine {
    const ALL: [Engine; 10] = [
        Engine::PpJit,
        Engine::PpJitBatch,
        Engine::PpJitDualmap,
        Engine::PpJitPerWrite,
        Engine::PpJitNoCount,
        Engine::PpJitUnplaced,
        Engine::PpJitCompile,
        Engine::PpInterp,
        Engine::RbpfJit,
        Engine::RbpfInterp,
    ];

    /// Whether the engine takes part in the packet filter (the load-only entries do not).
    fn runs_filter(&self) -> bool {
        !matches!(
            self,
            Engine::PpJitUnplaced
                | Engine::PpJitCompile
                | Engine::PpJitBatch
                | Engine::PpJitDualmap
                | Engine::PpJitPerWrite
        )
    }

    fn name(self) -> &'static str {
        match self {
            Engine::RbpfInterp => "rbpf-interp",
            Engine::RbpfJit => "rbpf-jit",
            Engine::PpInterp => "progpack-bpf-interp",
            Engine::PpJit => "progpack-bpf-jit",
            Engine::PpJitNoCount => "progpack-bpf-jit-nocount",
            Engine::PpJitUnplaced => "progpack-bpf-jit-unplaced",
            Engine::PpJitCompile => "progpack-bpf-jit-compile",
            Engine::PpJitBatch => "progpack-bpf-jit-batch",
            Engine::PpJitDualmap => "progpack-bpf-jit-dualmap",
            Engine::PpJitPerWrite => "progpack-bpf-jit-dualmap-per-write",
        }
    }

    /// A progpack-bpf VM for this engine (JIT into a fresh allocator where it JITs).
    fn vm(self) -> Result<Vm, String> {
        let mut vm = Vm::new(Helpers::new());
        let count_instructions = match self {
            Engine::PpJit | Engine::PpJitBatch | Engine::PpJitDualmap | Engine::PpJitPerWrite => {
                true
            }
            Engine::PpJitNoCount => false,
            _ => return Ok(vm), // interpreters, and the breakdowns (which compile themselves)
        };
        let config = match self {
            Engine::PpJitDualmap => {
                progpack::Config::default().backend(progpack::BackendChoice::DualMap)
            }
            Engine::PpJitPerWrite => {
                progpack::Config::default().backend(progpack::BackendChoice::DualMapPerWrite)
            }
            _ => progpack::Config::default(),
        };
        let alloc = progpack::Allocator::new(config).map_err(|e| format!("allocator: {e}"))?;
        vm.enable_jit(
            alloc,
            JitOptions {
                count_instructions,
                ..Default::default()
            },
        );
        Ok(vm)
    }
}

/// How the load breakdowns compile: as `progpack-bpf-jit` does (instruction counting on,
/// in the code of programs with loops: a `BpfProgram` runs a loop-free program's limits
/// below its length in the interpreter), helpers by absolute address.
const COMPILE: progpack_bpf::jit::CompileOptions = progpack_bpf::jit::CompileOptions {
    rel_calls: false,
    budget: true,
    budget_loops_only: true,
    blind_constants: false,
    hide_addresses: false,
};

/// Anything kept alive until dropped (loaded programs of any engine).
trait Keep {}
impl<T> Keep for T {}

/// Loads every program of `progs` with `engine` once; returns the elapsed time and the
/// loaded programs. The caller keeps them alive until all repetitions are done: rbpf's JIT
/// pages come from the heap and stay writable+executable after free, so a repetition that
/// reused them would skip the page faults and `mprotect` work a cold load pays.
/// Never inlined, so callgrind can count just this (`--toggle-collect='*ebpf*load_all*'`).
#[inline(never)]
fn load_all<'a>(
    engine: Engine,
    progs: &'a [Vec<u8>],
) -> Result<(std::time::Duration, Box<dyn Keep + 'a>), String> {
    match engine {
        Engine::RbpfInterp | Engine::RbpfJit => {
            let jit = engine == Engine::RbpfJit;
            let mut vms = Vec::with_capacity(progs.len());
            let start = Instant::now();
            for p in progs {
                let mut vm = rbpf::EbpfVmRaw::new(Some(p)).map_err(|e| e.to_string())?;
                if jit {
                    vm.jit_compile().map_err(|e| e.to_string())?;
                }
                vms.push(vm);
            }
            Ok((start.elapsed(), Box::new(vms)))
        }
        Engine::PpInterp
        | Engine::PpJit
        | Engine::PpJitNoCount
        | Engine::PpJitDualmap
        | Engine::PpJitPerWrite => {
            let vm = engine.vm()?;
            let mut loaded = Vec::with_capacity(progs.len());
            let start = Instant::now();
            for p in progs {
                loaded.push(vm.load(p).map_err(|e| e.to_string())?);
            }
            // Programs still waiting to be written (see `Vm::enable_jit`) are written inside
            // the timed region: the row is the whole cost of making them runnable.
            vm.flush();
            Ok((start.elapsed(), Box::new((vm, loaded))))
        }
        Engine::PpJitBatch => {
            let vm = engine.vm()?;
            let refs: Vec<&[u8]> = progs.iter().map(|p| &p[..]).collect();
            let mut loaded = Vec::with_capacity(progs.len());
            let start = Instant::now();
            for group in refs.chunks(BATCH) {
                loaded.extend(vm.load_many(group).map_err(|e| e.to_string())?);
            }
            Ok((start.elapsed(), Box::new((vm, loaded))))
        }
        Engine::PpJitUnplaced => {
            let vm = engine.vm()?;
            let mut compiled = Vec::with_capacity(progs.len());
            let start = Instant::now();
            for p in progs {
                let checked = vm.load(p).map_err(|e| e.to_string())?;
                let code = progpack_bpf::jit::compile(checked.slots(), vm.helpers(), COMPILE)
                    .map_err(|e| e.to_string())?;
                compiled.push((checked, code));
            }
            Ok((start.elapsed(), Box::new(compiled)))
        }
        Engine::PpJitCompile => {
            let vm = engine.vm()?;
            let checked = progs
                .iter()
                .map(|p| vm.load(p).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            // One code buffer reused: the compile itself, not the allocator of the results.
            let mut code = progpack_bpf::jit::JitCode::default();
            let mut bytes = 0;
            let start = Instant::now();
            for c in &checked {
                progpack_bpf::jit::compile_into(&mut code, c.slots(), vm.helpers(), COMPILE)
                    .map_err(|e| e.to_string())?;
                bytes += code.len();
            }
            let t = start.elapsed();
            std::hint::black_box(bytes);
            Ok((t, Box::new(checked)))
        }
    }
}

/// One pass of `run` over the packets of `buf` (lengths `lens`); returns how many it
/// accepted. Never inlined, so that callgrind can count exactly the passes
/// (`--toggle-collect='*filter_pass*'`).
#[inline(never)]
fn filter_pass<F>(buf: &mut [u8], lens: &[u8], run: &mut F) -> Result<u64, String>
where
    F: FnMut(&mut [u8]) -> Result<u64, String>,
{
    let mut accepted = 0;
    for (p, &len) in buf.chunks_exact_mut(STRIDE).zip(lens) {
        accepted += run(&mut p[..len as usize])?;
    }
    Ok(accepted)
}

/// Times `passes` passes of `run` over the packets, one warm-up round and [`REPEAT`] timed
/// rounds; returns the fastest round's ns per packet and the number accepted in one pass.
fn time_filter<F>(
    buf: &mut [u8],
    lens: &[u8],
    passes: usize,
    mut run: F,
) -> Result<(f64, u64), String>
where
    F: FnMut(&mut [u8]) -> Result<u64, String>,
{
    let mut best = f64::INFINITY;
    let mut accepted = 0;
    for round in 0..=REPEAT {
        let start = Instant::now();
        for _ in 0..passes {
            accepted = filter_pass(buf, lens, &mut run)?;
        }
        let ns = start.elapsed().as_nanos() as f64 / (passes * lens.len()) as f64;
        if round > 0 {
            best = best.min(ns);
        }
    }
    Ok((best, accepted))
}

/// Runs the filter with `engine`, `passes` times over the packets.
fn filter(
    engine: Engine,
    buf: &mut [u8],
    lens: &[u8],
    passes: usize,
) -> Result<(f64, u64), String> {
    let prog = filter_program(80);
    match engine {
        Engine::RbpfInterp => {
            let vm = rbpf::EbpfVmRaw::new(Some(&prog)).map_err(|e| e.to_string())?;
            time_filter(buf, lens, passes, |mem| {
                vm.execute_program(mem).map_err(|e| e.to_string())
            })
        }
        Engine::RbpfJit => {
            let mut vm = rbpf::EbpfVmRaw::new(Some(&prog)).map_err(|e| e.to_string())?;
            vm.jit_compile().map_err(|e| e.to_string())?;
            time_filter(buf, lens, passes, |mem| {
                // SAFETY: the program was verified and JIT-compiled by rbpf; it reads only
                // inside `mem` (offsets below 38, packets are at least 64 bytes).
                unsafe { vm.execute_program_jit(mem) }.map_err(|e| e.to_string())
            })
        }
        Engine::PpInterp => {
            let p = engine.vm()?.load(&prog).map_err(|e| e.to_string())?;
            time_filter(buf, lens, passes, |mem| {
                p.run_interp(mem).map_err(|e| e.to_string())
            })
        }
        Engine::PpJit | Engine::PpJitNoCount => {
            let p = engine.vm()?.load(&prog).map_err(|e| e.to_string())?;
            time_filter(buf, lens, passes, |mem| {
                p.run_jit(mem).map_err(|e| e.to_string())
            })
        }
        Engine::PpJitUnplaced
        | Engine::PpJitCompile
        | Engine::PpJitBatch
        | Engine::PpJitDualmap
        | Engine::PpJitPerWrite => Err("load only (runs the same code as progpack-bpf-jit)".into()),
    }
}

/// `n` programs generated by `progpack_bpf::gen` (the subset rbpf runs with the same
/// semantics, loop-free, 20 to 50 instructions), each of its own shape, without helper calls
/// (the engines load them with no helpers registered); only programs rbpf's verifier accepts.
pub fn shaped_programs(n: usize, seed: u64) -> Vec<Vec<u8>> {
    use progpack_bpf::gen::{generate, GenConfig};
    let mut rng = progpack_bpf::gen::Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let cfg = GenConfig {
            body: 1 + out.len() % 16,
            mem_len: 64,
            rbpf_subset: true,
        };
        let g = generate(&mut rng, cfg);
        if g.slots.iter().any(|i| i.opc == progpack_bpf::insn::CALL) {
            continue;
        }
        let bytes = progpack_bpf::insn::encode_slots(&g.slots);
        if rbpf::EbpfVmRaw::new(Some(&bytes)).is_ok() {
            out.push(bytes);
        }
    }
    out
}

/// The load rows of `bench` (`size` describes `progs`): every engine `wanted`, the fastest
/// of [`REPEAT`] loads of all of `progs`.
fn load_rows(
    report: &mut Report,
    bench: &str,
    size: &str,
    progs: &[Vec<u8>],
    wanted: &dyn Fn(&Engine) -> bool,
) {
    let n = progs.len();
    for engine in Engine::ALL.into_iter().filter(|e| wanted(e)) {
        let mut best: Option<std::time::Duration> = None;
        let mut keep = Vec::with_capacity(REPEAT);
        for _ in 0..REPEAT {
            match load_all(engine, progs) {
                Ok((t, loaded)) => {
                    best = Some(best.map_or(t, |b| b.min(t)));
                    keep.push(loaded);
                }
                Err(e) => {
                    report.note(bench, engine.name(), format!("load failed: {e}; no row"));
                    best = None;
                    break;
                }
            }
        }
        drop(keep);
        if let Some(t) = best {
            let ns = t.as_nanos() as f64 / n as f64;
            report.push(bench, engine.name(), n, size, ns, "ns/program");
        }
    }
}

/// Runs the eBPF workloads for every engine (or those named in `only`): loads, the packet
/// filter, the byte-sum loop and the maps.
pub fn run(scale: &Scale, only: &[String], report: &mut Report) {
    let wanted = |e: &Engine| only.is_empty() || only.iter().any(|o| o == e.name());
    let n = scale.ebpf_n;
    // Distinct programs (the port differs), as a system loading many filters would have.
    let filters: Vec<Vec<u8>> = (0..n).map(|i| filter_program(i as u16)).collect();
    load_rows(report, "ebpf-load", "10 insns", &filters, &wanted);
    let shapes = shaped_programs(n, SEED ^ 0x5a9e);
    let avg = shapes.iter().map(Vec::len).sum::<usize>() / (8 * n.max(1));
    let size = format!("{avg} insns, shapes");
    load_rows(report, "ebpf-load-shapes", &size, &shapes, &wanted);

    let packets_n = scale.ebpf_packets;
    let (mut buf, lens, expected) = packets(packets_n, SEED ^ 0x9e7);
    let (mut hot, hot_lens, hot_expected) = packets(HOT_PACKETS, SEED ^ 0x407);
    let hot_passes = packets_n.div_ceil(HOT_PACKETS);
    for engine in Engine::ALL
        .into_iter()
        .filter(|e| e.runs_filter())
        .filter(wanted)
    {
        for (bench, buf, lens, passes, expected) in [
            ("ebpf-filter", &mut buf, &lens, 1, expected),
            (
                "ebpf-filter-hot",
                &mut hot,
                &hot_lens,
                hot_passes,
                hot_expected,
            ),
        ] {
            let n = passes * lens.len();
            match filter(engine, buf, lens, passes) {
                Ok((_, accepted)) if accepted as usize != expected => report.note(
                    bench,
                    engine.name(),
                    format!("wrong verdicts: accepted {accepted}, expected {expected}; no row"),
                ),
                Ok((ns, _)) => report.push(bench, engine.name(), n, "64-128", ns, "ns/packet"),
                Err(e) => report.note(bench, engine.name(), format!("{e}; no row")),
            }
        }
    }
    super::ebpf_loop::run(scale, only, report);
    super::ebpf_maps::run(scale, only, report);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaped_programs_differ_in_shape_and_load_everywhere() {
        let progs = shaped_programs(200, 7);
        assert_eq!(progs, shaped_programs(200, 7), "deterministic");
        // The opcodes and registers of consecutive programs differ: no cache of the last
        // program's shape applies.
        let shape = |p: &[u8]| -> Vec<[u8; 2]> { p.chunks(8).map(|s| [s[0], s[1]]).collect() };
        assert!(progs.windows(2).all(|w| shape(&w[0]) != shape(&w[1])));
        let vm = Vm::new(Helpers::new());
        for p in &progs {
            vm.load(p).expect("progpack-bpf loads it");
            rbpf::EbpfVmRaw::new(Some(p)).expect("rbpf loads it");
        }
    }

    #[test]
    fn filter_program_is_ten_instructions() {
        assert_eq!(filter_program(80).len(), 80);
    }

    #[test]
    fn packets_are_deterministic_and_counted() {
        let (a, la, ea) = packets(1000, 1);
        let (b, lb, eb) = packets(1000, 1);
        assert_eq!((a, la, ea), (b, lb, eb));
        // About 3/4 IPv4 * 2/3 TCP * 1/4 port 80 = 1/8 accepted.
        assert!((80..=170).contains(&ea), "{ea}");
    }

    #[test]
    fn every_engine_agrees_with_the_count() {
        let (mut buf, lens, expected) = packets(500, 5);
        for engine in Engine::ALL.into_iter().filter(|e| e.runs_filter()) {
            let (_, accepted) = filter(engine, &mut buf, &lens, 1).unwrap();
            assert_eq!(accepted as usize, expected, "{}", engine.name());
        }
    }

    #[test]
    fn rbpf_interpreter_agrees_with_the_count() {
        let (mut buf, lens, expected) = packets(2000, 3);
        let prog = filter_program(80);
        let vm = rbpf::EbpfVmRaw::new(Some(&prog)).unwrap();
        let mut accepted = 0;
        for (p, &len) in buf.chunks_exact_mut(STRIDE).zip(&lens) {
            accepted += vm.execute_program(&mut p[..len as usize]).unwrap();
        }
        assert_eq!(accepted as usize, expected);
    }
}
