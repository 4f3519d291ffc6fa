//! Hidden host addresses: in a VM that hides them, programs see the fixed virtual addresses
//! of `vaddr` (r1, r10, stack and map value addresses), on both engines, whatever buffer the
//! host passes; returning or storing them tells nothing about the host. Everything else
//! behaves as without hiding: the conformance suite and random programs agree between the
//! engines, and map programs compute the same.

mod jit_support;

use std::sync::Arc;

use jit_support::*;
use progpack_bpf::conformance::{collect_files, run_file};
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::vaddr::{extra_base, INPUT, STACK_TOP};
use progpack_bpf::{BpfProgram, Hardening, JitOptions, Map, MapDef, MapKind, RunOptions, Vm};

fn hidden_vm(helpers: Helpers) -> Vm {
    let mut vm = Vm::new(helpers);
    vm.set_hardening(Hardening {
        hide_addresses: true,
        ..Hardening::NONE
    });
    vm.enable_jit(near_alloc().clone(), JitOptions::default());
    vm
}

/// r0 on both engines (which must agree), for a run over `mem`.
fn both(p: &BpfProgram, mem: &mut [u8]) -> u64 {
    let init = mem.to_vec();
    let a = p.run_interp(mem).expect("interpreter");
    let after = mem.to_vec();
    mem.copy_from_slice(&init);
    let b = p.run_jit(mem).expect("JIT");
    assert_eq!(a, b, "engines disagree");
    assert_eq!(after, mem, "engines leave different memory");
    a
}

#[test]
fn programs_see_virtual_addresses_only() {
    let vm = hidden_vm(Helpers::new());
    let cases: [(&str, u64); 6] = [
        ("mov %r0, %r1\nexit", INPUT),
        ("mov %r0, %r1\nadd %r0, %r2\nexit", INPUT + 24),
        ("mov %r0, %r10\nexit", STACK_TOP),
        ("mov %r0, %r10\nadd %r0, -40\nexit", STACK_TOP - 40),
        // Through memory: store r10 in the input, load it back.
        ("stxdw [%r1+8], %r10\nldxdw %r0, [%r1+8]\nexit", STACK_TOP),
        // A stack address used as a pointer, then returned.
        (
            "mov %r2, %r10\nadd %r2, -8\nstdw [%r2], 7\nldxdw %r0, [%r10-8]\nadd %r0, %r2\nexit",
            STACK_TOP - 8 + 7,
        ),
    ];
    for (text, want) in cases {
        let p = vm.load_asm(text).unwrap();
        // Two buffers at different host addresses: the same result.
        let mut a = vec![0u8; 24];
        let mut b = [0u8; 64];
        assert_eq!(both(&p, &mut a), want, "{text}");
        assert_eq!(both(&p, &mut b[..24]), want, "{text} (other buffer)");
    }
    // Without input, r1 and r2 are 0 as always.
    let p = vm.load_asm("mov %r0, %r1\nadd %r0, %r2\nexit").unwrap();
    assert_eq!(both(&p, &mut []), 0);
    // A plain VM hands out host addresses.
    let mut plain = Vm::new(Helpers::new());
    plain.enable_jit(near_alloc().clone(), JitOptions::default());
    let p = plain.load_asm("mov %r0, %r1\nexit").unwrap();
    let mut mem = [0u8; 8];
    assert_eq!(p.run_jit(&mut mem).unwrap(), mem.as_ptr() as u64);
}

#[test]
fn bad_virtual_addresses_fault_on_both_engines() {
    let vm = hidden_vm(Helpers::new());
    // The host address of the input is not an address for the program.
    let mut mem = [1u8; 16];
    let host = mem.as_ptr() as u64;
    let text = format!("lddw %r3, {host:#x}\nldxb %r0, [%r3]\nexit");
    let p = vm.load_asm(&text).unwrap();
    let e1 = p.run_interp(&mut mem).unwrap_err();
    let e2 = p.run_jit(&mut mem).unwrap_err();
    assert_eq!(e1.to_string(), e2.to_string());
    // Just past the input, just below the live frame, a guess between regions.
    for text in [
        "mov %r3, %r1\nadd %r3, 16\nldxb %r0, [%r3]\nexit",
        "mov %r3, %r10\nadd %r3, -513\nldxb %r0, [%r3]\nexit",
        "lddw %r3, 0x200000000\nldxb %r0, [%r3]\nexit",
    ] {
        let p = vm.load_asm(text).unwrap();
        let a = p.run_interp(&mut mem).unwrap_err();
        let b = p.run_jit(&mut mem).unwrap_err();
        assert_eq!(a.to_string(), b.to_string(), "{text}");
    }
}

#[test]
fn map_values_have_virtual_addresses() {
    let map = Arc::new(
        Map::new(
            "values",
            MapDef {
                kind: MapKind::Array,
                key_size: 4,
                value_size: 16,
                max_entries: 4,
                flags: 0,
            },
        )
        .unwrap(),
    );
    let vm = hidden_vm(Helpers::standard());
    // lddw with src = 2: map 0's value, offset 4; then read through it and return both.
    let mut code = Vec::new();
    code.extend(encode_slots(&[
        Insn::new(LD_DW_IMM, 1, PSEUDO_MAP_VALUE, 0, 0),
        Insn::new(0, 0, 0, 0, 4),
    ]));
    code.extend(encode_slots(&[
        st(SIZE_W, 1, 0, 77),
        ldx(SIZE_W, 2, 1, 0),
        alu64_x(ALU_MOV, 0, 1),
        exit(),
    ]));
    let p = vm.load_with_maps(&code, &[Arc::clone(&map)]).unwrap();
    let region = p
        .env()
        .regions()
        .iter()
        .position(|_| true)
        .expect("the map's values are a region");
    assert_eq!(both(&p, &mut []), extra_base(region) + 4);
    // map_lookup_elem returns a virtual address too.
    let text = "mov %r2, %r10\nadd %r2, -4\nstw [%r2], 1\nlddw %r1, 0\ncall 1\nexit";
    let mut slots = progpack_bpf::asm::assemble(text).unwrap();
    slots[3].src = PSEUDO_MAP_FD;
    let p = vm
        .load_with_maps(&encode_slots(&slots), &[Arc::clone(&map)])
        .unwrap();
    assert_eq!(both(&p, &mut []), extra_base(region) + 16);
}

#[test]
fn conformance_suite_passes_with_hidden_addresses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let files = collect_files(&[dir]).unwrap();
    let vm = hidden_vm(Helpers::conformance());
    let mut failures = Vec::new();
    fn interp(p: &BpfProgram, m: &mut [u8]) -> progpack_bpf::Result<u64> {
        Ok(p.run_interp(m)?)
    }
    fn jit(p: &BpfProgram, m: &mut [u8]) -> progpack_bpf::Result<u64> {
        p.run_jit(m)
    }
    let engines: [(&str, progpack_bpf::conformance::Engine<'_>); 2] =
        [("interp", &interp), ("jit", &jit)];
    for (name, engine) in engines {
        for f in &files {
            if let Err(why) = run_file(&vm, f, engine) {
                failures.push(format!("{name} {}: {why}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn random_programs_agree_with_hidden_addresses() {
    let helpers = random_helpers();
    let vm = hidden_vm(helpers);
    let mut vm = vm;
    vm.set_run_options(RunOptions {
        instruction_limit: 2_000,
    });
    let mut rng = Rng(0x41de);
    let mut ran = 0;
    for n in 0..3000 {
        let p = random_program(&mut rng, 1 + n % 50, 32);
        let Ok(prog) = vm.load_slots(&p) else {
            continue;
        };
        let init: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
        // Different buffers for the two engines: with hidden addresses nothing may differ.
        let mut a = init.clone();
        let mut b = init.clone();
        let want = prog.run_interp(&mut a);
        let got = prog.run_jit(&mut b);
        use progpack_bpf::{Error, RunError};
        match (&want, &got) {
            // The JIT charges a block at its start (see jit_differential.rs).
            (
                Err(RunError::OutOfBounds { .. }),
                Err(Error::Run(RunError::InstructionLimit { .. })),
            )
            | (Err(RunError::InstructionLimit { .. }), Err(_)) => {}
            // Fault addresses are virtual: the same on both engines.
            (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string(), "program {n}: {p:?}"),
            (Ok(x), Ok(y)) => {
                assert_eq!(x, y, "program {n}: {p:?}");
                assert_eq!(a, b, "memory after program {n}: {p:?}");
            }
            _ => panic!("program {n}: interpreter {want:?}, JIT {got:?}: {p:?}"),
        }
        ran += 1;
    }
    assert!(ran > 2000, "{ran}");
}

#[test]
fn r10_as_a_value_in_every_form() {
    let vm = hidden_vm(random_helpers());
    let mut programs = Vec::new();
    // Arithmetic with r10 as source, 64- and 32-bit.
    for cls in [CLS_ALU64, CLS_ALU] {
        for op in [
            ALU_ADD, ALU_SUB, ALU_MUL, ALU_DIV, ALU_OR, ALU_AND, ALU_LSH, ALU_RSH, ALU_MOD,
            ALU_XOR, ALU_MOV, ALU_ARSH,
        ] {
            programs.push(vec![
                mov64(0, 0x1234_5678),
                Insn::new(cls | op | SRC_X, 0, 10, 0, 0),
                exit(),
            ]);
        }
    }
    // Jumps comparing r10 (either side, with itself, with an immediate).
    for op in [JMP_JEQ, JMP_JGT, JMP_JSLT, JMP_JSET] {
        for (d, s) in [(10, 1), (1, 10), (10, 10)] {
            programs.push(vec![
                mov64(0, 1),
                jcc_x(CLS_JMP, op, d, s, 1),
                mov64(0, 2),
                exit(),
            ]);
        }
        programs.push(vec![
            mov64(0, 1),
            jcc_k(CLS_JMP, op, 10, 0x1000, 1),
            mov64(0, 2),
            exit(),
        ]);
    }
    // Stores of r10 (every size) and an atomic add of it, read back.
    for size in [SIZE_B, SIZE_H, SIZE_W, SIZE_DW] {
        programs.push(vec![stx(size, 10, 10, -8), ldx(SIZE_DW, 0, 10, -8), exit()]);
        programs.push(vec![stx(size, 1, 10, 4), ldx(SIZE_DW, 0, 1, 0), exit()]);
    }
    programs.push(vec![
        stx(SIZE_DW, 1, 10, 0),
        atomic(SIZE_DW, ATOMIC_ADD, 1, 10, 0),
        ldx(SIZE_DW, 0, 1, 0),
        exit(),
    ]);
    // r10 in a callee (one frame down), a pointer into the caller's frame used there.
    programs.push(prog([
        &[
            mov64(6, 5),
            stx(SIZE_DW, 10, 6, -8),
            alu64_x(ALU_MOV, 1, 10),
            alu64_k(ALU_ADD, 1, -8),
            call_local(1),
            exit(),
        ],
        &[ldx(SIZE_DW, 0, 1, 0), alu64_x(ALU_ADD, 0, 10), exit()],
    ]));
    // callx through r10 (an unknown helper: the same error on both engines).
    programs.push(vec![callx(10), exit()]);
    for p in programs {
        let prog = vm.load_slots(&p).unwrap();
        let mut a = [7u8; 16];
        let mut b = [7u8; 16];
        let x = prog.run_interp(&mut a).map_err(|e| e.to_string());
        let y = prog.run_jit(&mut b).map_err(|e| e.to_string());
        assert_eq!(x, y, "{p:?}");
        assert_eq!(a, b, "memory: {p:?}");
    }
}
