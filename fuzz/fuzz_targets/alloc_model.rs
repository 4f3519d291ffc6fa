//! Fuzz target: random operation sequences on small allocator configurations, checked against
//! the model after every step (see `crates/progpack/tests/reliability_model/model.rs`, which the
//! fixed-seed test in `cargo test` shares).
//!
//! Input: 4 bytes of setup (pack and chunk size, randomize, reserve, shards, code range,
//! backend), then 5 bytes per operation (at most 256 operations). Any violation panics with the
//! step and operation. At the end every mapping the run made must be gone.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run alloc_model -- -max_total_time=600` from the repo root.
//! Set `PROGPACK_FUZZ_TALLY=1` to print operation counts every 10000 inputs.
#![no_main]

#[path = "../../crates/progpack/tests/support/mod.rs"]
mod support;
#[path = "../../crates/progpack/tests/reliability_model/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{Model, Op, Reader, Setup};
use std::sync::atomic::{AtomicU64, Ordering};

static INPUTS: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static PROGRAMS: AtomicU64 = AtomicU64::new(0);

const MAX_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let setup = Setup::from_bytes(&mut r);
    let before = support::progpack_mappings();
    let mut m = match Model::new(setup) {
        Ok(m) => m,
        Err(e) => panic!("cannot create the allocator for {setup:?}: {e}"),
    };
    let mut n = 0;
    while !r.is_empty() && n < MAX_OPS {
        let op = Op::from_bytes(&mut r, &setup);
        if let Err(e) = m.apply(op) {
            panic!("step {n} ({op:?}) on {setup:?}: {e}");
        }
        n += 1;
    }
    let tally = match m.finish() {
        Ok(t) => t,
        Err(e) => panic!("finish on {setup:?}: {e}"),
    };
    let after = support::progpack_mappings();
    assert_eq!(before, after, "mappings left behind by {setup:?}");
    OPS.fetch_add(tally.ops, Ordering::Relaxed);
    PROGRAMS.fetch_add(tally.programs, Ordering::Relaxed);
    let i = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if i % 10_000 == 0 && std::env::var_os("PROGPACK_FUZZ_TALLY").is_some() {
        eprintln!(
            "progpack-fuzz: {i} inputs, {} operations, {} programs",
            OPS.load(Ordering::Relaxed),
            PROGRAMS.load(Ordering::Relaxed)
        );
    }
});
