//! Differential test: random valid programs ([`progpack_bpf::gen`]) must give the same r0, the
//! same final memory and the same error/no-error in our interpreter and in rbpf's
//! interpreter, for every program rbpf runs with RFC 9669 semantics. Programs using
//! instructions rbpf 0.4 lacks (or gets differently from the RFC) are still run on our
//! engines, and counted per feature as skipped for rbpf.
//!
//! Our engines (interpreter and JIT) are closures in a list below; every program must give
//! the same outcome on each.

use progpack_bpf::gen::{generate, mix_helper, Features, GenConfig, Rng, MIX_HELPER_ID};
use progpack_bpf::{Helpers, Vm};

/// rbpf's helper ABI is a Rust fn; same function as `mix_helper`.
fn mix_rust(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
    mix_helper(a, b, c, d, e)
}

/// Outcome of one run: `Ok((r0, memory after))` or `Err(message)`.
type Outcome = Result<(u64, Vec<u8>), String>;

fn run_rbpf(code: &[u8], mem: &[u8]) -> Outcome {
    let mut vm = rbpf::EbpfVmRaw::new(Some(code)).map_err(|e| format!("rbpf load: {e}"))?;
    vm.register_helper(MIX_HELPER_ID, mix_rust).unwrap();
    let mut m = mem.to_vec();
    let r0 = vm.execute_program(&mut m).map_err(|e| e.to_string())?;
    Ok((r0, m))
}

fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

#[derive(Default, Debug)]
struct Stats {
    programs: usize,
    compared_with_rbpf: usize,
    errors_in_compared: usize,
    skipped_for_rbpf: usize,
    skipped_by_feature: Vec<(&'static str, usize)>,
}

impl Stats {
    fn skip(&mut self, f: &Features) {
        self.skipped_for_rbpf += 1;
        let flags = [
            ("signed_divmod", f.signed_divmod),
            ("movsx", f.movsx),
            ("bswap", f.bswap),
            ("memsx", f.memsx),
            ("atomics", f.atomics),
            ("ja32", f.ja32),
            ("callx", f.callx),
            ("call_local", f.call_local),
            ("mod32 (rbpf: x%0 keeps upper half)", f.mod32),
            (
                "jmp64 negative imm (rbpf zero-extends)",
                f.jmp64_negative_imm,
            ),
            ("neg64 (rbpf overflows on i64::MIN)", f.neg64),
        ];
        for (name, on) in flags {
            if on {
                match self.skipped_by_feature.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c += 1,
                    None => self.skipped_by_feature.push((name, 1)),
                }
            }
        }
    }
}

#[test]
fn interpreter_agrees_with_rbpf() {
    let mut helpers = Helpers::new();
    helpers.register(MIX_HELPER_ID, mix_helper);
    let mut vm = Vm::new(helpers);
    let alloc = progpack_bpf::jit::shared_allocator().expect("JIT allocator");
    vm.enable_jit(alloc, progpack_bpf::JitOptions::default());
    // Our engines.
    type Ours<'a> = (
        &'a str,
        &'a dyn Fn(&progpack_bpf::BpfProgram, &mut [u8]) -> Outcome,
    );
    let interp = |p: &progpack_bpf::BpfProgram, m: &mut [u8]| -> Outcome {
        p.run_interp(m)
            .map(|r0| (r0, m.to_vec()))
            .map_err(|e| e.to_string())
    };
    let jit = |p: &progpack_bpf::BpfProgram, m: &mut [u8]| -> Outcome {
        p.run_jit(m)
            .map(|r0| (r0, m.to_vec()))
            .map_err(|e| e.to_string())
    };
    let engines: [Ours<'_>; 2] = [("interp", &interp), ("jit", &jit)];

    let mut rng = Rng::new(0x5eed_2024);
    let mut stats = Stats::default();
    const PROGRAMS: usize = 6000;
    for i in 0..PROGRAMS {
        let cfg = GenConfig {
            body: 8 + (i % 60),
            mem_len: 1 + (i * 7) % 96,
            // Two thirds from the subset rbpf runs, one third from the whole instruction set.
            rbpf_subset: i % 3 != 2,
        };
        let g = generate(&mut rng, cfg);
        let code = progpack_bpf::insn::encode_slots(&g.slots);
        let listing = || progpack_bpf::asm::disassemble(&g.slots);
        let prog = vm
            .load(&code)
            .unwrap_or_else(|e| panic!("program {i} rejected: {e}\n{}", listing()));
        stats.programs += 1;

        let outcomes: Vec<(&str, Outcome)> = engines
            .iter()
            .map(|(name, run)| (*name, run(&prog, &mut g.mem.clone())))
            .collect();
        let (_, reference) = &outcomes[0];
        for (name, o) in &outcomes[1..] {
            assert!(
                same(reference, o),
                "program {i}: interp {reference:?} vs {name} {o:?}\n{}",
                listing()
            );
        }
        // Runs are deterministic.
        assert!(same(reference, &interp(&prog, &mut g.mem.clone())));

        if g.features.rbpf_compatible() {
            let theirs = run_rbpf(&code, &g.mem);
            assert!(
                same(reference, &theirs),
                "program {i}: interp {reference:?} vs rbpf {theirs:?}\n{}",
                listing()
            );
            stats.compared_with_rbpf += 1;
            stats.errors_in_compared += reference.is_err() as usize;
        } else {
            stats.skip(&g.features);
        }
    }
    println!("differential: {stats:#?}");
    assert_eq!(stats.programs, PROGRAMS);
    assert!(stats.compared_with_rbpf >= 3500, "{stats:?}");
    // Both outcomes must be exercised: some programs fault, most do not.
    assert!(stats.errors_in_compared > 100, "{stats:?}");
    assert!(
        stats.errors_in_compared < stats.compared_with_rbpf / 2,
        "{stats:?}"
    );
}
