//! The JIT's arithmetic against a reference model of RFC 9669, with every register as
//! destination and source, so the x86 special cases (div/mod through rax:rdx, shifts through
//! cl) are exercised with their registers in every role. Each program dumps all ten registers
//! to memory, so a clobbered bystander register is caught too.

mod jit_support;

use jit_support::*;
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;

fn sx(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

/// RFC 9669 semantics of `dst op= src` (src already widened as the class prescribes).
fn reference(w64: bool, op: u8, off: i16, d: u64, s: u64) -> u64 {
    if w64 {
        match op {
            ALU_ADD => d.wrapping_add(s),
            ALU_SUB => d.wrapping_sub(s),
            ALU_MUL => d.wrapping_mul(s),
            ALU_DIV if off == 1 => {
                if s == 0 {
                    0
                } else {
                    (d as i64).wrapping_div(s as i64) as u64
                }
            }
            ALU_DIV => d.checked_div(s).unwrap_or(0),
            ALU_MOD if off == 1 => {
                if s == 0 {
                    d
                } else {
                    (d as i64).wrapping_rem(s as i64) as u64
                }
            }
            ALU_MOD => d.checked_rem(s).unwrap_or(d),
            ALU_OR => d | s,
            ALU_AND => d & s,
            ALU_XOR => d ^ s,
            ALU_LSH => d << (s & 63),
            ALU_RSH => d >> (s & 63),
            ALU_ARSH => ((d as i64) >> (s & 63)) as u64,
            ALU_NEG => d.wrapping_neg(),
            ALU_MOV if off == 0 => s,
            ALU_MOV => sx(s, off as u32),
            _ => unreachable!(),
        }
    } else {
        let (d, s) = (d as u32, s as u32);
        (match op {
            ALU_ADD => d.wrapping_add(s),
            ALU_SUB => d.wrapping_sub(s),
            ALU_MUL => d.wrapping_mul(s),
            ALU_DIV if off == 1 => {
                if s == 0 {
                    0
                } else {
                    (d as i32).wrapping_div(s as i32) as u32
                }
            }
            ALU_DIV => d.checked_div(s).unwrap_or(0),
            ALU_MOD if off == 1 => {
                if s == 0 {
                    d
                } else {
                    (d as i32).wrapping_rem(s as i32) as u32
                }
            }
            ALU_MOD => d.checked_rem(s).unwrap_or(d),
            ALU_OR => d | s,
            ALU_AND => d & s,
            ALU_XOR => d ^ s,
            ALU_LSH => d << (s & 31),
            ALU_RSH => d >> (s & 31),
            ALU_ARSH => ((d as i32) >> (s & 31)) as u32,
            ALU_NEG => d.wrapping_neg(),
            ALU_MOV if off == 0 => s,
            ALU_MOV => sx(s as u64, off as u32) as u32,
            _ => unreachable!(),
        }) as u64
    }
}

fn end_reference(opc: u8, imm: i32, v: u64) -> u64 {
    let swap = opc != (CLS_ALU | ALU_END | SRC_K);
    match (swap, imm) {
        (false, 16) => v as u16 as u64,
        (false, 32) => v as u32 as u64,
        (false, _) => v,
        (true, 16) => (v as u16).swap_bytes() as u64,
        (true, 32) => (v as u32).swap_bytes() as u64,
        (true, _) => v.swap_bytes(),
    }
}

/// Runs `op` with registers r0..r9 preset to `init`; returns all ten registers afterwards.
fn run_op(op: Insn, init: [u64; 10]) -> [u64; 10] {
    let mut p = vec![stx(SIZE_DW, 10, 1, -88)];
    for (r, v) in init.iter().enumerate() {
        p.extend(lddw(r as u8, *v));
    }
    p.push(op);
    for r in 0..10u8 {
        p.push(stx(SIZE_DW, 10, r, -8 * (r as i16 + 1)));
    }
    p.push(ldx(SIZE_DW, 1, 10, -88));
    for r in 0..10i16 {
        p.push(ldx(SIZE_DW, 2, 10, -8 * (r + 1)));
        p.push(stx(SIZE_DW, 1, 2, 8 * r));
    }
    p.push(exit());
    let mut mem = [0u8; 80];
    run(&p, &Helpers::new(), &mut mem).expect("runs");
    let mut out = [0u64; 10];
    for (r, o) in out.iter_mut().enumerate() {
        *o = u64::from_le_bytes(mem[8 * r..8 * r + 8].try_into().unwrap());
    }
    out
}

fn imm(rng: &mut Rng) -> i32 {
    const EDGE: [i32; 10] = [0, 1, -1, 2, i32::MIN, i32::MAX, 31, 32, 63, 64];
    if rng.below(2) == 0 {
        EDGE[rng.below(EDGE.len() as u64) as usize]
    } else {
        rng.value() as i32
    }
}

#[test]
fn alu_ops_match_the_reference_in_every_register() {
    let ops = [
        ALU_ADD, ALU_SUB, ALU_MUL, ALU_DIV, ALU_OR, ALU_AND, ALU_LSH, ALU_RSH, ALU_NEG, ALU_MOD,
        ALU_XOR, ALU_MOV, ALU_ARSH,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases = 0;
    for &op in &ops {
        for w64 in [false, true] {
            for x in [false, true] {
                if op == ALU_NEG && x {
                    continue;
                }
                let offs: &[i16] = match (op, x, w64) {
                    (ALU_DIV | ALU_MOD, _, _) => &[0, 1],
                    (ALU_MOV, true, true) => &[0, 8, 16, 32],
                    (ALU_MOV, true, false) => &[0, 8, 16],
                    _ => &[0],
                };
                for &off in offs {
                    for dst in 0..10u8 {
                        for src in 0..10u8 {
                            if !x && src > 0 {
                                break;
                            }
                            for _ in 0..3 {
                                let mut init = [0u64; 10];
                                for v in init.iter_mut() {
                                    *v = rng.value();
                                }
                                let k = imm(&mut rng);
                                let cls = if w64 { CLS_ALU64 } else { CLS_ALU };
                                let insn = if x {
                                    Insn::new(cls | op | SRC_X, dst, src, off, 0)
                                } else {
                                    Insn::new(cls | op | SRC_K, dst, 0, off, k)
                                };
                                let s = if x {
                                    init[src as usize]
                                } else if w64 {
                                    k as i64 as u64
                                } else {
                                    k as u32 as u64
                                };
                                let mut want = init;
                                want[dst as usize] = reference(w64, op, off, init[dst as usize], s);
                                let got = run_op(insn, init);
                                assert_eq!(
                                    got, want,
                                    "{insn:?} with registers {init:x?} (src value {s:#x})"
                                );
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(cases > 5000);
}

#[test]
fn byte_swaps_match_the_reference() {
    let mut rng = Rng(7);
    for opc in [
        CLS_ALU | ALU_END | SRC_K,
        CLS_ALU | ALU_END | SRC_X,
        CLS_ALU64 | ALU_END | SRC_K,
    ] {
        for bits in [16, 32, 64] {
            for dst in 0..10u8 {
                let mut init = [0u64; 10];
                for v in init.iter_mut() {
                    *v = rng.next();
                }
                let mut want = init;
                want[dst as usize] = end_reference(opc, bits, init[dst as usize]);
                let insn = Insn::new(opc, dst, 0, 0, bits);
                assert_eq!(run_op(insn, init), want, "{insn:?}");
            }
        }
    }
}

#[test]
fn lddw_and_mov_immediates() {
    for v in [
        0u64,
        1,
        u32::MAX as u64,
        0x8000_0000,
        u64::MAX,
        0x1234_5678_9abc_def0,
    ] {
        for dst in 0..10u8 {
            let mut init = [0x5555u64; 10];
            init[dst as usize] = v;
            let got = run_op(Insn::new(CLS_ALU64 | ALU_ADD | SRC_K, dst, 0, 0, 0), init);
            assert_eq!(got, init);
        }
    }
    // mov32 zero-extends, mov64 sign-extends.
    let init = [u64::MAX; 10];
    let mut want = init;
    want[3] = 0xffff_fffe;
    assert_eq!(run_op(alu32_k(ALU_MOV, 3, -2), init), want);
    want[3] = (-2i64) as u64;
    assert_eq!(run_op(mov64(3, -2), init), want);
}
