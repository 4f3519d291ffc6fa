//! The emitted machine code, decoded with iced-x86: every byte decodes to a valid instruction,
//! every branch lands on an instruction boundary inside the code, the branches that implement
//! eBPF jumps and local calls land exactly on the code of their target instruction, helper
//! calls reach the helper, and short jumps are used where they fit.

mod jit_support;

use std::collections::HashSet;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter, Mnemonic,
};
use jit_support::*;
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, CompileOptions, JitCode};

fn decode(code: &JitCode, base: u64) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, code.bytes(), base, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        assert!(
            !i.is_invalid(),
            "invalid instruction at {:#x}",
            i.ip() - base
        );
        out.push(i);
    }
    out
}

/// Disassembly, for failure messages.
fn listing(code: &JitCode, base: u64) -> String {
    let mut f = IntelFormatter::new();
    let mut s = String::new();
    for i in decode(code, base) {
        let mut t = String::new();
        f.format(&i, &mut t);
        s += &format!("{:5x}: {t}\n", i.ip() - base);
    }
    s
}

fn is_ja(i: Insn) -> bool {
    i.opc == CLS_JMP | JMP_JA || i.opc == CLS_JMP32 | JMP_JA
}

/// Checks the structure of `code` for program `p` linked at `base`.
fn check_structure(p: &[Insn], code: &JitCode, base: u64) {
    let insns = decode(code, base);
    let starts: HashSet<u64> = insns.iter().map(|i| i.ip()).collect();
    let end = base + code.len() as u64;
    let ctx = || listing(code, base);
    // (offset of branch, target offset) of every near branch.
    let mut branches = Vec::new();
    for i in &insns {
        match i.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call => {
                if i.is_call_near() && !(base..end).contains(&i.near_branch_target()) {
                    continue; // a helper
                }
                let t = i.near_branch_target();
                assert!(
                    starts.contains(&t),
                    "branch at {:#x} into the middle of an instruction\n{}",
                    i.ip() - base,
                    ctx()
                );
                branches.push((i.ip() - base, t - base));
            }
            FlowControl::IndirectCall => {
                assert_eq!(i.code(), Code::Call_rm64, "{}", ctx());
            }
            FlowControl::Next | FlowControl::Return => {}
            other => panic!("unexpected {other:?} at {:#x}\n{}", i.ip() - base, ctx()),
        }
    }
    // eBPF control flow maps to branches from the instruction's code to its target's code.
    let mut pcs: Vec<(usize, u64)> = (0..p.len())
        .filter_map(|pc| code.pc_offset(pc).map(|o| (pc, o as u64)))
        .collect();
    pcs.push((p.len(), u64::MAX));
    for w in pcs.windows(2) {
        let ((pc, lo), (_, hi)) = (w[0], w[1]);
        let i = p[pc];
        let rel = match (i.class(), i.opc & 0xf0) {
            (CLS_JMP, JMP_EXIT) => None,
            (CLS_JMP, JMP_CALL) if i.opc == CALL && i.src == CALL_LOCAL => Some(i.imm as i64),
            (CLS_JMP, JMP_CALL) => None,
            (CLS_JMP32, JMP_JA) => Some(i.imm as i64),
            (CLS_JMP | CLS_JMP32, _) => Some(i.off as i64),
            _ => None,
        };
        let Some(rel) = rel else { continue };
        if rel == 0 {
            continue;
        }
        let t = code.pc_offset((pc as i64 + 1 + rel) as usize).unwrap() as u64;
        // An unconditional jump may skip its target's budget charge (`sub`, `jb`), which the
        // jumping block has paid.
        let past_charge = insns
            .iter()
            .position(|x| x.ip() - base == t)
            .filter(|&k| {
                insns[k].mnemonic() == Mnemonic::Sub
                    && insns.get(k + 1).map(|j| j.mnemonic()) == Some(Mnemonic::Jb)
            })
            .map(|k| insns[k + 2].ip() - base);
        assert!(
            branches.iter().any(|&(at, to)| (lo..hi).contains(&at)
                && (to == t || Some(to) == past_charge && is_ja(i))),
            "pc {pc} ({i:?}): no branch to {t:#x} in its code [{lo:#x}, {hi:#x})\n{}",
            ctx()
        );
    }
}

#[test]
fn random_programs_decode_and_branch_to_the_right_places() {
    let mut rng = Rng(0xdec0de);
    let helpers = random_helpers();
    for n in 0..300 {
        let p = random_program(&mut rng, 1 + n % 60, 32);
        for budget in [false, true] {
            for rel_calls in [false, true] {
                let mut code = compile(
                    &p,
                    &helpers,
                    CompileOptions {
                        rel_calls,
                        budget,
                        ..Default::default()
                    },
                )
                .unwrap();
                // A base within reach of the helpers when calls are relative.
                let base = if rel_calls {
                    (random_helpers as *const () as u64 & !0xfff) - 0x1000_0000
                } else {
                    0x7f00_1234_5000
                };
                code.link(base).unwrap();
                check_structure(&p, &code, base);
            }
        }
    }
}

#[test]
fn helper_calls_reach_the_helper() {
    extern "C" fn h(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
        a
    }
    let mut helpers = Helpers::new();
    helpers.register(9, h);
    let target = h as *const () as u64;
    let p = [call(9), exit()];
    // Relative: `call rel32` straight to the helper.
    let mut code = compile(&p, &helpers, CompileOptions::default()).unwrap();
    assert!(code.needs_link());
    let base = (target & !0xfff) + 0x7000_0000;
    code.link(base).unwrap();
    let calls: Vec<u64> = decode(&code, base)
        .iter()
        .filter(|i| i.is_call_near())
        .map(|i| i.near_branch_target())
        .collect();
    assert!(calls.contains(&target), "{}", listing(&code, base));
    // Out of reach: link refuses rather than emitting a wrong call.
    let far = target.wrapping_add(1 << 40);
    assert!(!code.reaches(far));
    assert!(code.link(far).is_err());
    // Absolute: `mov rax, imm64; call rax`.
    let code = compile(
        &p,
        &helpers,
        CompileOptions {
            rel_calls: false,
            budget: false,
            budget_loops_only: false,
            blind_constants: false,
            hide_addresses: false,
        },
    )
    .unwrap();
    let insns = decode(&code, 0);
    let k = insns
        .iter()
        .position(|i| i.code() == Code::Call_rm64)
        .expect("indirect call");
    assert_eq!(insns[k - 1].code(), Code::Mov_r64_imm64);
    assert_eq!(insns[k - 1].immediate64(), target);
}

#[test]
fn short_jumps_where_they_fit_long_ones_elsewhere() {
    // A tight loop: its jumps fit in rel8.
    let p = [
        mov64(0, 0),
        alu64_k(ALU_ADD, 0, 1),
        jcc_k(CLS_JMP, JMP_JLT, 0, 10, -2),
        exit(),
    ];
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    let insns = decode(&code, 0);
    let jcc: Vec<&Instruction> = insns
        .iter()
        .filter(|i| i.flow_control() == FlowControl::ConditionalBranch)
        .collect();
    assert_eq!(jcc.len(), 1);
    assert_eq!(jcc[0].len(), 2, "rel8 jcc expected\n{}", listing(&code, 0));
    // Over 100 instructions: rel32.
    let mut p = vec![jcc_k(CLS_JMP, JMP_JEQ, 1, 0, 100)];
    p.extend(std::iter::repeat_n(alu64_k(ALU_ADD, 0, 100_000), 100));
    p.push(exit());
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    let insns = decode(&code, 0);
    let j = insns
        .iter()
        .find(|i| i.flow_control() == FlowControl::ConditionalBranch)
        .unwrap();
    assert_eq!(j.len(), 6);
    check_structure(&p, &code, 0);
}

#[test]
fn code_size_is_reasonable() {
    // Straight-line arithmetic compiles to a few bytes per instruction.
    let mut p: Vec<Insn> = (0..100)
        .map(|i| alu64_k(ALU_ADD, (i % 10) as u8, i))
        .collect();
    p.push(exit());
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    assert!(code.len() < 100 * 5 + 120, "{} bytes", code.len());
}

/// The packet filter of the benchmarks: a program that never reads r10 gets neither a stack
/// window nor rbp set-up, saves no register (its run-time values fit in registers it leaves
/// free), and the body is entered by falling through.
#[test]
fn a_stackless_filter_compiles_to_compact_code() {
    let p: Vec<Insn> = vec![
        ldx(SIZE_H, 2, 1, 12),
        jcc_k(CLS_JMP, JMP_JNE, 2, 8, 6),
        ldx(SIZE_B, 3, 1, 23),
        jcc_k(CLS_JMP, JMP_JNE, 3, 6, 4),
        ldx(SIZE_H, 4, 1, 36),
        jcc_k(CLS_JMP, JMP_JNE, 4, 0x5000, 2),
        mov64(0, 1),
        exit(),
        mov64(0, 0),
        exit(),
    ];
    let opts = CompileOptions {
        rel_calls: true,
        budget: false,
        budget_loops_only: false,
        blind_constants: false,
        hide_addresses: false,
    };
    let code = compile(&p, &Helpers::new(), opts).unwrap();
    assert!(!code.uses_stack());
    let insns = decode(&code, 0);
    let text = listing(&code, 0);
    assert!(code.len() <= 192, "{} bytes\n{text}", code.len());
    assert!(!text.contains("rbp"), "{text}");
    assert!(!text.contains("call"), "{text}");
    let pushes = insns
        .iter()
        .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Push)
        .count();
    assert_eq!(pushes, 0, "{text}");
    check_structure(&p, &code, 0);
}
