//! Bad input never crashes the JIT: random slot sequences and mutated valid programs either
//! fail to compile with a typed error or compile to code that runs to a result or a typed
//! fault, within its budget, without touching memory outside its regions.

mod jit_support;

use jit_support::*;
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, CompileOptions, Fault, JitError};

const OPTS: CompileOptions = CompileOptions {
    rel_calls: true,
    budget: true,
    budget_loops_only: false,
    blind_constants: false,
    hide_addresses: false,
};

/// Runs accepted code over a memory region surrounded by guard bytes, which must stay intact.
fn run_guarded(p: &[Insn], budget: u64) -> Option<Result<u64, Fault>> {
    let code = compile(p, &random_helpers(), OPTS).ok()?;
    let m = Mapped::new(code, true, true);
    let mut buf = [0xa5u8; 96];
    let r = m.run(&mut buf[32..64], budget);
    assert!(
        buf[..32].iter().all(|&b| b == 0xa5),
        "write below the region"
    );
    assert!(
        buf[64..].iter().all(|&b| b == 0xa5),
        "write above the region"
    );
    Some(r)
}

#[test]
fn random_slots_give_errors_not_panics() {
    let mut rng = Rng(1);
    let helpers = random_helpers();
    let mut accepted = 0;
    for n in 0..30_000 {
        let len = 1 + n % 12;
        let p: Vec<Insn> = (0..len)
            .map(|_| {
                let b = rng.next().to_le_bytes();
                let mut i = Insn::from_bytes(b);
                // Bias towards plausible opcodes so more programs get past the first slot.
                if rng.below(2) == 0 {
                    i.dst %= 11;
                    i.src %= 11;
                }
                i
            })
            .collect();
        match compile(&p, &helpers, OPTS) {
            Ok(_) => accepted += 1,
            Err(JitError::Internal(e)) => panic!("internal error {e} on {p:?}"),
            Err(_) => {}
        }
    }
    assert!(accepted > 0);
    assert!(matches!(compile(&[], &helpers, OPTS), Err(JitError::Empty)));
}

#[test]
fn typed_errors_for_bad_programs() {
    let h = random_helpers();
    let e = |p: &[Insn]| compile(p, &h, OPTS).unwrap_err();
    macro_rules! rejects {
        ($p:expr, $pat:pat) => {{
            let err = e(&$p);
            assert!(matches!(err, $pat), "{err:?}");
        }};
    }
    rejects!(
        [Insn::new(0xff, 0, 0, 0, 0), exit()],
        JitError::InvalidOpcode { pc: 0, opc: 0xff }
    );
    rejects!(
        [mov64(10, 1), exit()],
        JitError::BadRegister { pc: 0, reg: 10 }
    );
    rejects!(
        [alu64_x(ALU_ADD, 0, 11), exit()],
        JitError::BadRegister { pc: 0, reg: 11 }
    );
    rejects!(
        [ja(5), exit()],
        JitError::JumpOutOfRange { pc: 0, target: 6 }
    );
    rejects!(
        [ja(-2), exit()],
        JitError::JumpOutOfRange { pc: 0, target: -1 }
    );
    rejects!(
        prog([&[ja(1)], &lddw(0, 1), &[exit()]]),
        JitError::JumpIntoLddw { pc: 0, target: 2 }
    );
    rejects!([lddw(0, 1)[0]], JitError::IncompleteLddw { pc: 0 });
    rejects!(
        [call(99), exit()],
        JitError::UnknownHelper { pc: 0, id: 99 }
    );
    rejects!(
        [Insn::new(CLS_ALU64 | ALU_DIV | SRC_X, 0, 1, 2, 0), exit()],
        JitError::InvalidOpcode { pc: 0, opc: 0x3f }
    );
    rejects!(
        [Insn::new(CLS_ALU | ALU_END | SRC_K, 0, 0, 0, 24), exit()],
        JitError::InvalidOpcode { pc: 0, opc: 0xd4 }
    );
    rejects!(
        [atomic(SIZE_DW, 0x33, 1, 2, 0), exit()],
        JitError::InvalidOpcode { pc: 0, opc: 0xdb }
    );
    rejects!(
        [atomic(SIZE_DW, ATOMIC_XCHG, 1, 10, 0), exit()],
        JitError::BadRegister { pc: 0, reg: 10 }
    );
    rejects!(
        [Insn::new(CLS_LD | MODE_ABS | SIZE_W, 0, 0, 0, 0), exit()],
        JitError::InvalidOpcode { pc: 0, opc: 0x20 }
    );
}

#[test]
fn random_valid_programs_run_within_their_regions() {
    let mut rng = Rng(77);
    let mut outcomes = [0u32; 3];
    for n in 0..1500 {
        let p = random_program(&mut rng, 1 + n % 40, 32);
        let r = run_guarded(&p, 10_000).expect("valid programs compile");
        outcomes[match r {
            Ok(_) => 0,
            Err(Fault::OutOfBounds { .. }) => 1,
            Err(_) => 2,
        }] += 1;
    }
    // The generator reaches every outcome.
    assert!(outcomes.iter().all(|&c| c > 20), "{outcomes:?}");
}

#[test]
fn mutated_programs_are_rejected_or_run_safely() {
    let mut rng = Rng(5);
    let mut ran = 0;
    for n in 0..3000 {
        let mut p = random_program(&mut rng, 2 + n % 30, 32);
        for _ in 0..1 + rng.below(3) {
            let k = rng.below(p.len() as u64) as usize;
            let mut b = p[k].to_bytes();
            let j = rng.below(8) as usize;
            b[j] ^= 1 << rng.below(8);
            p[k] = Insn::from_bytes(b);
        }
        if run_guarded(&p, 5_000).is_some() {
            ran += 1;
        }
    }
    assert!(ran > 1000, "{ran}");
}
