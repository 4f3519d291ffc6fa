//! The translator keeps facts of the last program it compiled on a thread, to reuse them for
//! the next program of the same shape (many filters made from one template differ only in
//! their constants). A compile must give the same result whatever the thread compiled before.

mod jit_support;

use jit_support::imm_is_control as control;
use progpack_bpf::gen::{generate, mix_helper, GenConfig, Rng, MIX_HELPER_ID};
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, CompileOptions};
use progpack_bpf::Helpers;

/// A compile's whole result (code, pc offsets, needs; or the error), as text.
fn result(slots: &[Insn], helpers: &Helpers, o: CompileOptions) -> String {
    format!("{:?}", compile(slots, helpers, o))
}

/// The same compile on a thread that has compiled nothing before.
fn cold(slots: &[Insn], helpers: &Helpers, o: CompileOptions) -> String {
    std::thread::scope(|s| s.spawn(|| result(slots, helpers, o)).join().unwrap())
}

/// `p` with new random immediates in slots whose immediate is a plain operand (not of a
/// call, an atomic or a 32-bit `ja`, whose immediates are control flow).
fn new_constants(rng: &mut Rng, p: &[Insn]) -> Vec<Insn> {
    p.iter()
        .map(|&i| {
            if control(i) || rng.chance(1, 3) {
                i
            } else {
                Insn {
                    imm: rng.next_u64() as i32,
                    ..i
                }
            }
        })
        .collect()
}

/// `p` with one field of one slot changed: 0 offset, 1 dst, 2 src, 3 immediate (of a
/// control slot if there is one), 4 opcode to another of its class.
fn one_change(rng: &mut Rng, p: &[Insn], field: u32) -> Vec<Insn> {
    let mut q = p.to_vec();
    let mut k = rng.below(q.len() as u64) as usize;
    if field == 3 {
        let c: Vec<usize> = (0..q.len()).filter(|&k| control(q[k])).collect();
        if !c.is_empty() {
            k = c[rng.below(c.len() as u64) as usize];
        }
    }
    let i = &mut q[k];
    match field {
        0 if rng.chance(1, 2) => i.off = i.off.wrapping_add(rng.below(8) as i16 - 4),
        0 => i.off = rng.below(1200) as i16 - 600,
        1 => i.dst = rng.below(11) as u8,
        2 => i.src = rng.below(11) as u8,
        3 if control(*i) && i.class() == CLS_STX => {
            i.imm = if rng.chance(1, 2) {
                i.imm ^ ATOMIC_FETCH
            } else {
                ATOMIC_CMPXCHG
            }
        }
        3 if control(*i) => i.imm = i.imm.wrapping_add(rng.below(5) as i32 - 2),
        3 => i.imm = rng.next_u64() as i32,
        _ => i.opc = (i.opc & 7) | (rng.below(32) as u8) << 3,
    }
    q
}

fn options(k: u32) -> CompileOptions {
    CompileOptions {
        rel_calls: k & 1 != 0,
        budget: k & 2 != 0,
        budget_loops_only: k & 4 != 0,
        blind_constants: k & 8 != 0,
        hide_addresses: false,
    }
}

#[test]
fn a_compile_after_one_of_the_same_shape_is_the_same_as_a_cold_one() {
    let mut helpers = Helpers::new();
    helpers.register(MIX_HELPER_ID, mix_helper);
    let mut rng = Rng::new(0x7e3);
    for n in 0..600 {
        let cfg = GenConfig {
            body: 1 + n % 50,
            rbpf_subset: n % 3 == 0,
            ..GenConfig::default()
        };
        let p = generate(&mut rng, cfg).slots;
        let q = new_constants(&mut rng, &p);
        // Blinding draws a random key per compile: only the other options compare bytes.
        let o = options(rng.below(8) as u32);
        let want = cold(&p, &helpers, o);
        // The template first, then the program: the second compile reuses the first's facts.
        let _ = result(&q, &helpers, o);
        assert_eq!(result(&p, &helpers, o), want, "program {n}: {p:?}");
        // Other options in between, and a blinded compile of the same shape: nothing stale.
        let _ = result(&q, &helpers, options(8 | rng.below(8) as u32));
        let _ = result(&q, &helpers, options(rng.below(8) as u32));
        assert_eq!(result(&p, &helpers, o), want, "program {n} again: {p:?}");
        // A program that differs in something else than a constant first.
        for field in 0..5 {
            let q = one_change(&mut rng, &p, field);
            let _ = result(&q, &helpers, o);
            assert_eq!(
                result(&p, &helpers, o),
                want,
                "program {n}, change {field}: {q:?}"
            );
        }
    }
}

#[test]
fn a_compile_after_a_bad_program_of_the_same_shape_is_the_same_as_a_cold_one() {
    let helpers = Helpers::new();
    let o = options(2);
    // Good: r0 = 1; exit. The bad one is cut short: an `lddw` without its second slot.
    let good = [
        Insn::new(CLS_ALU64 | ALU_MOV, 0, 0, 0, 1),
        Insn::new(EXIT, 0, 0, 0, 0),
    ];
    let lddw = [
        Insn::new(LD_DW_IMM, 0, 0, 0, 7),
        Insn::new(0, 0, 0, 0, 0),
        Insn::new(EXIT, 0, 0, 0, 0),
    ];
    let want_good = cold(&good, &helpers, o);
    let want_lddw = cold(&lddw, &helpers, o);
    let _ = result(&lddw[..1], &helpers, o);
    assert_eq!(result(&lddw, &helpers, o), want_lddw);
    let _ = result(&lddw[..1], &helpers, o);
    assert_eq!(result(&good, &helpers, o), want_good);
    assert_eq!(result(&lddw, &helpers, o), want_lddw);
}

#[test]
fn an_atomic_that_fetches_is_not_one_that_does_not() {
    let helpers = Helpers::new();
    // r0 = 0; *(u64 *)(r10 - 8) = 0; lock *(u64 *)(r10 - 8) op= r6; exit. Only a fetching
    // op writes r6 (a callee-saved host register), and cmpxchg also reads and writes r0.
    let atomic = |imm| {
        vec![
            Insn::new(CLS_ALU64 | ALU_MOV, 0, 0, 0, 0),
            Insn::new(CLS_ST | MODE_MEM | SIZE_DW, 10, 0, -8, 0),
            Insn::new(CLS_STX | MODE_ATOMIC | SIZE_DW, 10, 6, -8, imm),
            Insn::new(EXIT, 0, 0, 0, 0),
        ]
    };
    let ops = [ATOMIC_ADD, ATOMIC_ADD | ATOMIC_FETCH, ATOMIC_CMPXCHG];
    for k in 0..4 {
        let o = options(k);
        for a in ops {
            for b in ops {
                let want = cold(&atomic(b), &helpers, o);
                let _ = result(&atomic(a), &helpers, o);
                assert_eq!(result(&atomic(b), &helpers, o), want, "{a:#x} then {b:#x}");
            }
        }
    }
}

#[test]
fn load_many_checks_a_program_that_differs_from_the_last_in_what_the_checker_reads() {
    use progpack_bpf::{JitOptions, Vm};
    let mut vm = Vm::new(Helpers::new());
    let alloc = progpack::Allocator::new(progpack::Config::default()).unwrap();
    vm.enable_jit(alloc, JitOptions::default());
    // r0 = k; r0 = be16(r0) (the width is an immediate the checker reads); exit.
    let prog = |k: i32, width: i32| {
        encode_slots(&[
            Insn::new(CLS_ALU64 | ALU_MOV, 0, 0, 0, k),
            Insn::new(CLS_ALU | ALU_END | SRC_X, 0, 0, 0, width),
            Insn::new(EXIT, 0, 0, 0, 0),
        ])
    };
    let (a, b, bad) = (prog(1, 16), prog(2, 16), prog(1, 17));
    let loaded = vm.load_many(&[&a, &b]).unwrap();
    let mut mem = [];
    assert_eq!(loaded[1].run_jit(&mut mem).unwrap(), 0x200);
    let want = format!("{:?}", vm.load(&bad).map(drop));
    assert!(want.starts_with("Err"), "{want}");
    for codes in [[&a[..], &bad], [&bad, &a]] {
        let got = format!("{:?}", vm.load_many(&codes).map(drop));
        assert_eq!(got, want);
    }
}

/// A constant encoded like `v` (zero, one byte or four, the same sign) but most likely not
/// `v`: the translator reuses the last program's code for such programs, patching in the
/// constants.
fn like(rng: &mut Rng, v: i32) -> i32 {
    let small = i8::try_from(v).is_ok();
    let m = match (v, small) {
        (0, _) => return 0,
        (_, true) => 1 + rng.below(127) as i32,
        (_, false) => 128 + rng.below(i32::MAX as u64 - 128) as i32,
    };
    if v < 0 {
        -m
    } else {
        m
    }
}

#[test]
fn a_compile_after_one_with_constants_of_the_same_sizes_is_the_same_as_a_cold_one() {
    let mut helpers = Helpers::new();
    helpers.register(MIX_HELPER_ID, mix_helper);
    let mut rng = Rng::new(0x7e4);
    for n in 0..800 {
        let cfg = GenConfig {
            body: 1 + n % 40,
            rbpf_subset: n % 2 == 0,
            ..GenConfig::default()
        };
        let p = generate(&mut rng, cfg).slots;
        let q: Vec<Insn> = p
            .iter()
            .map(|&i| Insn {
                imm: if control(i) {
                    i.imm
                } else {
                    like(&mut rng, i.imm)
                },
                ..i
            })
            .collect();
        let mut o = options(rng.below(8) as u32);
        o.hide_addresses = rng.chance(1, 4);
        let want = cold(&p, &helpers, o);
        let _ = cold(&q, &helpers, o);
        let _ = result(&q, &helpers, o);
        assert_eq!(result(&p, &helpers, o), want, "program {n}: {p:?}");
        // The same program twice, and back.
        assert_eq!(result(&p, &helpers, o), want, "program {n} twice: {p:?}");
        let _ = result(&q, &helpers, o);
        assert_eq!(result(&p, &helpers, o), want, "program {n} again: {p:?}");
    }
}
