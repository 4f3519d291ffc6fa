//! Constant blinding: with it on, no immediate a program chooses appears in the JIT code,
//! neither as an instruction's immediate or displacement (decoded with iced-x86) nor as raw
//! bytes anywhere (what JIT spraying enters at an offset); without it, the same constants are
//! there (so the check can fail). Blinded code computes what unblinded code and the
//! interpreter compute.

mod jit_support;

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};
use jit_support::*;
use progpack_bpf::check::check;
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::interp;
use progpack_bpf::jit::{compile, CompileOptions, JitOptions, JitProgram};
use progpack_bpf::{Hardening, RunOptions, Vm};

/// Constants an attacker would choose: x86 code (`cmp al, 0x90; nop; nop`), a trap sled, a
/// marker.
const CHOSEN: [u32; 4] = [0x3c90_9090, 0xcccc_cccc, 0x1234_5678, 0x9090_58c3];
const CHOSEN64: u64 = 0x0123_4567_89ab_cdef;

/// A program using every kind of immediate with the chosen constants.
fn sprayer() -> Vec<Insn> {
    let mut p = Vec::new();
    for (k, &c) in CHOSEN.iter().enumerate() {
        let c = c as i32;
        let r = 1 + (k % 5) as u8;
        p.push(mov64(r, c));
        p.push(Insn::new(CLS_ALU | ALU_MOV | SRC_K, 6, 0, 0, c));
        for op in [
            ALU_ADD, ALU_SUB, ALU_OR, ALU_AND, ALU_XOR, ALU_MUL, ALU_DIV, ALU_MOD,
        ] {
            p.push(alu64_k(op, 7, c));
            p.push(alu32_k(op, 8, c));
        }
        p.push(jcc_k(CLS_JMP, JMP_JEQ, 7, c, 0));
        p.push(jcc_k(CLS_JMP32, JMP_JGT, 8, c, 0));
        p.push(jcc_k(CLS_JMP, JMP_JSET, 9, c, 0));
        for size in [SIZE_W, SIZE_DW] {
            p.push(st(size, 10, -16, c));
        }
        p.push(alu64_x(ALU_ADD, 0, 7));
        p.push(alu64_x(ALU_ADD, 0, 8));
        p.push(alu64_x(ALU_ADD, 0, r));
    }
    p.extend(lddw(9, CHOSEN64));
    p.push(alu64_x(ALU_XOR, 0, 9));
    p.push(ldx(SIZE_DW, 5, 10, -16));
    p.push(alu64_x(ALU_ADD, 0, 5));
    p.push(exit());
    p
}

fn decode(code: &[u8]) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        assert!(!i.is_invalid(), "invalid instruction at {:#x}", i.ip());
        out.push(i);
    }
    out
}

/// Every immediate and displacement value in `code`, as 64-bit values.
fn operands(code: &[u8]) -> Vec<u64> {
    let mut v = Vec::new();
    for i in decode(code) {
        for k in 0..i.op_count() {
            match i.op_kind(k) {
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64 => v.push(i.immediate(k)),
                OpKind::Memory => v.push(i.memory_displacement64()),
                _ => {}
            }
        }
    }
    v
}

/// Which chosen constants appear in `code`, as operands or as bytes.
fn chosen_in(code: &[u8]) -> Vec<String> {
    let ops = operands(code);
    let mut found = Vec::new();
    let bytes_contain = |pat: &[u8]| code.windows(pat.len()).any(|w| w == pat);
    for c in CHOSEN {
        let as32 = |x: u64| x as u32 == c;
        if ops.iter().any(|&x| as32(x)) {
            found.push(format!("operand {c:#x}"));
        }
        if bytes_contain(&c.to_le_bytes()) {
            found.push(format!("bytes {c:#x}"));
        }
    }
    for half in [CHOSEN64 as u32, (CHOSEN64 >> 32) as u32] {
        if bytes_contain(&half.to_le_bytes()) {
            found.push(format!("bytes {half:#x} (of lddw)"));
        }
    }
    if ops.contains(&CHOSEN64) {
        found.push(format!("operand {CHOSEN64:#x}"));
    }
    found
}

fn opts(blind: bool) -> CompileOptions {
    CompileOptions {
        rel_calls: false,
        budget: true,
        budget_loops_only: false,
        blind_constants: blind,
        hide_addresses: false,
    }
}

#[test]
fn blinded_code_contains_no_chosen_constant() {
    let p = sprayer();
    check(&p, &Helpers::new()).expect("the sprayer is a valid program");
    let plain = compile(&p, &Helpers::new(), opts(false)).unwrap();
    let found = chosen_in(plain.bytes());
    // Without blinding every constant is there (4 x 32-bit, both lddw halves, the 64-bit one).
    assert!(found.len() >= 4 + 2, "{found:?}");
    for _ in 0..50 {
        let blinded = compile(&p, &Helpers::new(), opts(true)).unwrap();
        let found = chosen_in(blinded.bytes());
        assert!(found.is_empty(), "blinded code contains {found:?}");
    }
}

#[test]
fn each_compile_uses_other_keys() {
    let p = sprayer();
    let a = compile(&p, &Helpers::new(), opts(true)).unwrap();
    let b = compile(&p, &Helpers::new(), opts(true)).unwrap();
    assert_ne!(a.bytes(), b.bytes());
}

#[test]
fn blinded_code_computes_the_same() {
    let p = sprayer();
    let helpers = Helpers::new();
    let checked = check(&p, &helpers).unwrap();
    let want = interp::run(&checked, &helpers, &mut [], &RunOptions::default()).unwrap();
    for blind in [false, true] {
        let j = JitProgram::new(
            near_alloc(),
            &p,
            &helpers,
            JitOptions {
                count_instructions: true,
                blind_constants: blind,
            },
        )
        .unwrap();
        assert_eq!(j.run(&mut []).unwrap(), want, "blind {blind}");
    }
    // Random programs too.
    let helpers = random_helpers();
    let mut rng = Rng(0xb11d);
    let mut compared = 0;
    for n in 0..1500 {
        let p = random_program(&mut rng, 1 + n % 40, 32);
        let Ok(checked) = check(&p, &helpers) else {
            continue;
        };
        let j = JitProgram::new(
            near_alloc(),
            &p,
            &helpers,
            JitOptions {
                count_instructions: true,
                blind_constants: true,
            },
        )
        .unwrap();
        // One buffer for both runs: programs may store its address.
        let init: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
        let mut mem = init.clone();
        let opts = RunOptions {
            instruction_limit: 2_000,
        };
        let want = interp::run(&checked, &helpers, &mut mem, &opts);
        let a = mem.clone();
        mem.copy_from_slice(&init);
        let got = j.run_limited(&mut mem, opts.instruction_limit);
        let b = mem;
        match (&want, &got) {
            (Err(_), Err(_)) => {}
            _ => {
                assert_eq!(got, want, "program {n}: {p:?}");
                assert_eq!(a, b, "memory after program {n}: {p:?}");
            }
        }
        compared += 1;
    }
    assert!(compared > 1000, "{compared}");
}

#[test]
fn untrusted_vms_blind_by_default() {
    let code = encode_slots(&sprayer());
    let placed = |vm: &mut Vm| {
        vm.enable_jit(near_alloc().clone(), JitOptions::default());
        let prog = vm.load(&code).unwrap();
        let p = prog.jit().unwrap().program();
        // SAFETY: the program's code stays mapped (readable and executable) while `prog`
        // lives; this only reads it.
        let bytes = unsafe { std::slice::from_raw_parts(p.addr() as *const u8, p.len()) }.to_vec();
        (bytes, prog.run_jit(&mut []).unwrap())
    };
    let mut vm = Vm::untrusted(Helpers::new());
    assert_eq!(vm.hardening(), Hardening::UNTRUSTED);
    let (bytes, r0) = placed(&mut vm);
    let found = chosen_in(&bytes);
    assert!(found.is_empty(), "untrusted VM: {found:?}");
    // A plain VM does not blind; an untrusted one can be told not to.
    let mut plain = Vm::new(Helpers::new());
    let (bytes, r0_plain) = placed(&mut plain);
    assert!(!chosen_in(&bytes).is_empty());
    assert_eq!(r0, r0_plain);
    vm.set_hardening(Hardening::NONE);
    assert!(!chosen_in(&placed(&mut vm).0).is_empty());
}
