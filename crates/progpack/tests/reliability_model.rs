//! Fixed-seed model check: random operation sequences against the model in
//! `reliability_model/model.rs`, verified after every step (the same model the `alloc_model`
//! fuzz target drives). A failure names the seed, the step and the operation; rerun one setup
//! with `PROGPACK_MODEL_SEED=<seed> cargo test --release --test reliability_model`.

#[path = "reliability_model/model.rs"]
mod model;
mod support;

use model::{BackendKind, Op, Reader, Setup, Tally};
use support::Rng;

const OPS_PER_SETUP: usize = 4000;

fn setups() -> Vec<Setup> {
    let base = Setup {
        pack_size: 4096,
        chunk_size: 16,
        randomize: true,
        min_slack: 0,
        reserve: 1,
        shards: 1,
        backend: BackendKind::ProcMem,
        code_range_packs: None,
        max_len: 3 * 4096,
        call: true,
    };
    vec![
        base,
        Setup {
            randomize: false,
            reserve: 0,
            backend: BackendKind::DualMap,
            ..base
        },
        Setup {
            min_slack: 16,
            chunk_size: 64,
            pack_size: 8192,
            max_len: 3 * 8192,
            ..base
        },
        Setup {
            chunk_size: 64,
            pack_size: 16384,
            max_len: 3 * 16384,
            shards: 3,
            reserve: 2,
            ..base
        },
        Setup {
            chunk_size: 128,
            pack_size: 8192,
            max_len: 3 * 8192,
            backend: BackendKind::DualMapPerWrite,
            ..base
        },
        Setup {
            chunk_size: 4096,
            pack_size: 4096,
            max_len: 3 * 4096,
            ..base
        },
        Setup {
            code_range_packs: Some(4),
            ..base
        },
        Setup {
            code_range_packs: Some(6),
            chunk_size: 64,
            pack_size: 8192,
            max_len: 3 * 8192,
            backend: BackendKind::DualMap,
            randomize: false,
            ..base
        },
    ]
}

fn run_seed(seed: u64, setup: Setup) -> Result<Tally, String> {
    let mut rng = Rng(seed);
    let ops: Vec<Op> = (0..OPS_PER_SETUP)
        .map(|_| Op::random(&mut rng, &setup))
        .collect();
    model::run(setup, ops).map_err(|e| format!("seed {seed}: {e}"))
}

#[test]
fn fixed_seed_model_check() {
    let only: Option<u64> = std::env::var("PROGPACK_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut total = Tally::default();
    for (i, setup) in setups().into_iter().enumerate() {
        let seed = 0x0005_eed0 + i as u64;
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let t = run_seed(seed, setup).unwrap_or_else(|e| panic!("{e}"));
        // The run must have exercised what it claims to.
        assert_eq!(t.ops as usize, OPS_PER_SETUP + 1, "{setup:?}");
        assert_eq!(t.checks, t.ops, "a step skipped verification");
        assert!(t.programs > 100, "few programs: {t:?}");
        assert!(t.calls > 50, "few calls: {t:?}");
        assert!(t.expected_errors > 10, "no bad input tried: {t:?}");
        assert!(t.packs_mapped > 1, "never needed a second pack: {t:?}");
        total.ops += t.ops;
        total.checks += t.checks;
        total.programs += t.programs;
        total.calls += t.calls;
        total.expected_errors += t.expected_errors;
        total.packs_mapped += t.packs_mapped;
        total.code_range_full += t.code_range_full;
        if setup.code_range_packs.is_some() {
            assert!(t.code_range_full > 0, "code range never filled: {t:?}");
        }
    }
    eprintln!("model check: {total:?}");
}

/// The model itself must catch a broken allocator state: a program whose bytes change under
/// it is reported (otherwise the model could pass anything).
#[test]
fn model_detects_a_changed_program() {
    let setup = setups()[0];
    let mut m = model::Model::new(setup).expect("model");
    m.apply(Op::Draft {
        len: 40,
        align: 1,
        code: false,
    })
    .expect("draft");
    m.apply(Op::Finalize { pick: 0 }).expect("finalize");
    // Change one byte of the program behind the allocator's back, through the backend the
    // allocator itself would use (a separate allocator cannot reach it, so use /proc/self/mem).
    let snap = m.allocator().occupancy();
    let base = snap.packs[0].base;
    let used = snap.packs[0]
        .used
        .iter()
        .position(|u| *u)
        .expect("a used chunk");
    let at = base + used * setup.chunk_size;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .expect("open /proc/self/mem");
    // Flip a byte somewhere in the chunk (image or slack: both are checked).
    // SAFETY: reading a byte of a live, readable pack.
    let old = unsafe { *((at + 17) as *const u8) };
    std::os::unix::fs::FileExt::write_at(&f, &[old ^ 0xff], (at + 17) as u64).expect("poke");
    let err = m.verify().expect_err("the model missed a changed byte");
    assert!(
        err.contains("wrong") || err.contains("changed") || err.contains("traps"),
        "{err}"
    );
    // Put it back so the allocator's own checks are happy when it drops.
    std::os::unix::fs::FileExt::write_at(&f, &[old], (at + 17) as u64).expect("poke back");
    m.verify().expect("restored");
}

/// Inputs the `alloc_model` fuzz target found, replayed as its driver reads them (setup, then
/// operations). Each failed once:
/// - a thread loading programs into a code range of 3 tiny packs met `CodeRangeFull`; the
///   model judged it after the thread had dropped the programs it loaded before the error, so
///   it saw room that was not there when the error happened (the thread now hands back what it
///   loaded, alive, with the error).
#[test]
fn inputs_the_fuzz_target_found_replay_cleanly() {
    let inputs: [&[u8]; 1] = [&[
        0x64, 0x63, 0x7a, 0x08, 0x00, 0x40, 0x00, 0x00, 0x08, 0x00, 0x5b, 0xff, 0x6e, 0x91, 0x7d,
        0xf5, 0x9e,
    ]];
    for data in inputs {
        let mut r = Reader::new(data);
        let setup = Setup::from_bytes(&mut r);
        let mut ops = Vec::new();
        while !r.is_empty() {
            ops.push(Op::from_bytes(&mut r, &setup));
        }
        model::run(setup, ops).unwrap_or_else(|e| panic!("{data:x?}: {e}"));
    }
}
