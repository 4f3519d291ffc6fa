//! JIT semantics beyond arithmetic: jumps, loads and stores with their bounds, atomics,
//! helper calls (incl. `callx` and unwind), local calls with their frames and depth limit,
//! and the instruction budget.

mod jit_support;

use jit_support::*;
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::jit::Fault;

fn cond_ref(op: u8, w64: bool, a: u64, b: u64) -> bool {
    let (a, b) = if w64 {
        (a, b)
    } else {
        (a as u32 as u64, b as u32 as u64)
    };
    let (sa, sb) = if w64 {
        (a as i64, b as i64)
    } else {
        (a as u32 as i32 as i64, b as u32 as i32 as i64)
    };
    match op {
        JMP_JEQ => a == b,
        JMP_JNE => a != b,
        JMP_JGT => a > b,
        JMP_JGE => a >= b,
        JMP_JLT => a < b,
        JMP_JLE => a <= b,
        JMP_JSET => a & b != 0,
        JMP_JSGT => sa > sb,
        JMP_JSGE => sa >= sb,
        JMP_JSLT => sa < sb,
        JMP_JSLE => sa <= sb,
        _ => unreachable!(),
    }
}

#[test]
fn conditional_jumps_match_the_reference() {
    let ops = [
        JMP_JEQ, JMP_JNE, JMP_JGT, JMP_JGE, JMP_JLT, JMP_JLE, JMP_JSET, JMP_JSGT, JMP_JSGE,
        JMP_JSLT, JMP_JSLE,
    ];
    let mut rng = Rng(42);
    let mut taken = 0;
    let mut total = 0;
    for &op in &ops {
        for cls in [CLS_JMP, CLS_JMP32] {
            for x in [false, true] {
                for _ in 0..40 {
                    let d = 1 + rng.below(9) as u8;
                    let s = 1 + rng.below(9) as u8;
                    let a = rng.value();
                    let mut b = if rng.below(4) == 0 { a } else { rng.value() };
                    let k = b as i32;
                    let mut p = lddw(d, a).to_vec();
                    let j = if x {
                        if s == d {
                            b = a;
                        } else {
                            p.extend(lddw(s, b));
                        }
                        jcc_x(cls, op, d, s, 2)
                    } else {
                        b = if cls == CLS_JMP {
                            k as i64 as u64
                        } else {
                            k as u32 as u64
                        };
                        jcc_k(cls, op, d, k, 2)
                    };
                    p.extend([j, mov64(0, 0), exit(), mov64(0, 1), exit()]);
                    let want = cond_ref(op, cls == CLS_JMP, a, b);
                    let got = run(&p, &Helpers::new(), &mut []).unwrap();
                    assert_eq!(got, want as u64, "{j:?} a={a:#x} b={b:#x}");
                    taken += want as u32;
                    total += 1;
                }
            }
        }
    }
    // Both outcomes were exercised a fair number of times.
    assert!(
        taken > total / 5 && taken < total * 4 / 5,
        "{taken}/{total}"
    );
}

#[test]
fn loops_and_long_jumps() {
    // r0 = sum 1..=100 with a backward jump.
    let p = [
        mov64(0, 0),
        mov64(1, 100),
        alu64_x(ALU_ADD, 0, 1),
        alu64_k(ALU_SUB, 1, 1),
        jcc_k(CLS_JMP, JMP_JNE, 1, 0, -3),
        exit(),
    ];
    assert_eq!(run(&p, &Helpers::new(), &mut []), Ok(5050));
    // Forward and backward jumps over ~200 instructions (rel32 displacements), and gotol.
    let mut p = vec![mov64(0, 0), ja(200)];
    let back = p.len();
    p.push(alu64_k(ALU_ADD, 0, 1000)); // reached by the backward jump
    p.push(exit());
    for _ in 0..198 {
        p.push(alu64_k(ALU_ADD, 0, 1)); // skipped
    }
    p.push(Insn::new(CLS_JMP32 | JMP_JA, 0, 0, 0, 1)); // gotol +1: skips the next insn
    p.push(alu64_k(ALU_ADD, 0, 7)); // skipped
    assert_eq!(p.len(), 204);
    p.push(jcc_k(
        CLS_JMP,
        JMP_JEQ,
        0,
        0,
        back as i16 - (p.len() as i16 + 1),
    ));
    p.push(exit());
    assert_eq!(run(&p, &Helpers::new(), &mut []), Ok(1000));
}

#[test]
fn loads_and_stores_within_and_outside_memory() {
    let sizes = [(SIZE_B, 1usize), (SIZE_H, 2), (SIZE_W, 4), (SIZE_DW, 8)];
    let base: Vec<u8> = (0..16u8).map(|i| 0x80 | (i * 7)).collect();
    for (sz, n) in sizes {
        for off in -3i16..20 {
            let mut mem = base.clone();
            let addr = mem.as_ptr() as u64;
            let inside = off >= 0 && off as usize + n <= mem.len();
            // Zero-extending load.
            let r = run(&[ldx(sz, 0, 1, off), exit()], &Helpers::new(), &mut mem);
            if inside {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&base[off as usize..off as usize + n]);
                assert_eq!(r, Ok(u64::from_le_bytes(b)));
                if n < 8 {
                    // Sign-extending load.
                    let r = run(&[ldxsx(sz, 0, 1, off), exit()], &Helpers::new(), &mut mem);
                    let v = u64::from_le_bytes(b);
                    let sh = 64 - 8 * n as u32;
                    assert_eq!(r, Ok((((v << sh) as i64) >> sh) as u64));
                }
            } else {
                assert_eq!(
                    r,
                    Err(Fault::OutOfBounds {
                        pc: 0,
                        addr: addr.wrapping_add(off as i64 as u64),
                        size: n,
                        write: false
                    })
                );
            }
            // Stores: register and immediate; memory outside the access is untouched.
            for imm_form in [false, true] {
                let mut mem = base.clone();
                let addr = mem.as_ptr() as u64;
                let store = if imm_form {
                    st(sz, 1, off, -2)
                } else {
                    stx(sz, 1, 3, off)
                };
                let p = prog([&lddw(3, (-2i64) as u64), &[store, mov64(0, 9), exit()]]);
                let r = run(&p, &Helpers::new(), &mut mem);
                let mut want = base.clone();
                if inside {
                    assert_eq!(r, Ok(9));
                    want[off as usize..off as usize + n].fill(0xff);
                    want[off as usize] = 0xfe;
                } else {
                    assert_eq!(
                        r,
                        Err(Fault::OutOfBounds {
                            pc: 2,
                            addr: addr.wrapping_add(off as i64 as u64),
                            size: n,
                            write: true
                        })
                    );
                }
                assert_eq!(mem, want);
            }
        }
    }
    // No memory at all (an empty slice's pointer is dangling, e.g. 1), or less than the
    // access, at every offset near the pointer: the check must not wrap around.
    for (sz, n) in sizes {
        for len in 0..n {
            for off in [-8i16, -1, 0, 1] {
                let p = [ldx(sz, 0, 1, off), exit()];
                let mut mem = vec![0u8; len];
                assert!(
                    matches!(
                        run(&p, &Helpers::new(), &mut mem),
                        Err(Fault::OutOfBounds { .. })
                    ),
                    "size {n} len {len} off {off}"
                );
                let p = [st(sz, 1, off, 1), mov64(0, 0), exit()];
                assert!(matches!(
                    run(&p, &Helpers::new(), &mut []),
                    Err(Fault::OutOfBounds { .. })
                ));
            }
        }
    }
    for wild in [0u64, u64::MAX, u64::MAX - 3, 1 << 63] {
        let p = prog([&lddw(2, wild), &[ldx(SIZE_DW, 0, 2, 0), exit()]]);
        assert!(matches!(
            run(&p, &Helpers::new(), &mut [0; 64]),
            Err(Fault::OutOfBounds { pc: 2, .. })
        ));
    }
}

#[test]
fn stack_bounds_are_the_live_frames() {
    for off in [-600i16, -520, -513, -512, -8, -1, 0, 8] {
        for n in [1usize, 8] {
            let sz = if n == 1 { SIZE_B } else { SIZE_DW };
            let inside = off >= -512 && off as i32 + n as i32 <= 0;
            // Direct r10 + off (static check) and through a copy of r10 (dynamic check).
            for p in [
                vec![st(sz, 10, off, 3), ldx(sz, 0, 10, off), exit()],
                vec![
                    alu64_x(ALU_MOV, 5, 10),
                    st(sz, 5, off, 3),
                    ldx(sz, 0, 5, off),
                    exit(),
                ],
            ] {
                let r = run(&p, &Helpers::new(), &mut []);
                if inside {
                    assert_eq!(r, Ok(3), "off {off} size {n}");
                } else {
                    assert!(
                        matches!(r, Err(Fault::OutOfBounds { size, write: true, .. }) if size == n),
                        "off {off} size {n}: {r:?}"
                    );
                }
            }
        }
    }
    // The stack starts zeroed.
    assert_eq!(
        run(
            &[ldx(SIZE_DW, 0, 10, -512), exit()],
            &Helpers::new(),
            &mut []
        ),
        Ok(0)
    );
}

#[test]
fn callee_frames_are_fresh_and_callers_frames_are_reachable() {
    // main: stores 7 at [r10-8], passes r10 in r1 to the callee twice.
    // callee: r0 = [r10-16] (its own frame: must be 0 every time) + [r1-8] (caller's: 7);
    // then dirties [r10-16] so a stale frame would show on the second call.
    let p = [
        st(SIZE_DW, 10, -8, 7),
        alu64_x(ALU_MOV, 1, 10),
        call_local(4),
        alu64_x(ALU_MOV, 6, 0),
        call_local(2),
        alu64_x(ALU_ADD, 0, 6),
        exit(),
        // callee at 7
        ldx(SIZE_DW, 0, 10, -16),
        ldx(SIZE_DW, 2, 1, -8),
        alu64_x(ALU_ADD, 0, 2),
        st(SIZE_DW, 10, -16, 100),
        exit(),
    ];
    assert_eq!(run(&p, &Helpers::new(), &mut []), Ok(14));
    // A callee cannot reach below its own frame.
    let p = [call_local(1), exit(), ldx(SIZE_B, 0, 10, -513), exit()];
    assert!(matches!(
        run(&p, &Helpers::new(), &mut []),
        Err(Fault::OutOfBounds { pc: 2, size: 1, .. })
    ));
}

#[test]
fn local_calls_preserve_r6_to_r9_and_limit_depth() {
    let p = [
        mov64(6, 6),
        mov64(7, 7),
        mov64(8, 8),
        mov64(9, 9),
        mov64(1, 1),
        call_local(8),
        // r0 = r6*1000 + r7*100 + r8*10 + r9 + r0 (callee returned 50000)
        alu64_k(ALU_MUL, 6, 1000),
        alu64_k(ALU_MUL, 7, 100),
        alu64_k(ALU_MUL, 8, 10),
        alu64_x(ALU_ADD, 0, 6),
        alu64_x(ALU_ADD, 0, 7),
        alu64_x(ALU_ADD, 0, 8),
        alu64_x(ALU_ADD, 0, 9),
        exit(),
        // callee at 14: clobbers r6-r9, r0 = 50000
        mov64(6, 0),
        mov64(7, 0),
        mov64(8, 0),
        mov64(9, 0),
        mov64(0, 50000),
        exit(),
    ];
    assert_eq!(run(&p, &Helpers::new(), &mut []), Ok(56789));

    // Recursion: f(n) = n == 0 ? 0 : 1 + f(n - 1), entered with n in r1.
    let rec = |n: i32| {
        vec![
            mov64(1, n),
            call_local(1),
            exit(),
            // f at 3
            jcc_k(CLS_JMP, JMP_JNE, 1, 0, 2),
            mov64(0, 0),
            exit(),
            alu64_k(ALU_SUB, 1, 1),
            call_local(-5),
            alu64_k(ALU_ADD, 0, 1),
            exit(),
        ]
    };
    // Frames: main + f(n) .. f(0) = n + 2; at most MAX_CALL_DEPTH.
    let deepest = MAX_CALL_DEPTH as i32 - 2;
    assert_eq!(
        run(&rec(deepest), &Helpers::new(), &mut []),
        Ok(deepest as u64)
    );
    assert_eq!(
        run(&rec(deepest + 1), &Helpers::new(), &mut []),
        Err(Fault::CallDepth { pc: 7 })
    );
}

extern "C" fn mix(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
    a.wrapping_mul(1)
        .wrapping_add(b.wrapping_mul(10))
        .wrapping_add(c.wrapping_mul(100))
        .wrapping_add(d.wrapping_mul(1000))
        .wrapping_add(e.wrapping_mul(10000))
}

extern "C" fn unwind(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    a
}

fn helpers() -> Helpers {
    let mut h = Helpers::new();
    h.register(1, mix)
        .register(UNWIND_ID, unwind)
        .register(0x8000_0001, mix)
        .set_unwind(Some(UNWIND_ID));
    h
}
const UNWIND_ID: u32 = progpack_bpf::helpers::UNWIND_HELPER_ID;

#[test]
fn helper_calls_pass_arguments_and_keep_r1_to_r5() {
    let p = [
        mov64(1, 1),
        mov64(2, 2),
        mov64(3, 3),
        mov64(4, 4),
        mov64(5, 5),
        call(1),
        // r0 = 54321; add r1..r5 (kept) * 1_000_000 each
        alu64_x(ALU_ADD, 1, 2),
        alu64_x(ALU_ADD, 1, 3),
        alu64_x(ALU_ADD, 1, 4),
        alu64_x(ALU_ADD, 1, 5),
        alu64_k(ALU_MUL, 1, 1_000_000),
        alu64_x(ALU_ADD, 0, 1),
        exit(),
    ];
    assert_eq!(run(&p, &helpers(), &mut []), Ok(15_054_321));
    // Both call forms: near (rel32) and absolute.
    let code = progpack_bpf::jit::compile(
        &p,
        &helpers(),
        progpack_bpf::jit::CompileOptions {
            rel_calls: false,
            budget: false,
            budget_loops_only: false,
            blind_constants: false,
            hide_addresses: false,
        },
    )
    .unwrap();
    assert!(!code.needs_link());
    assert_eq!(
        Mapped::new(code, false, false).run(&mut [], 0),
        Ok(15_054_321)
    );
}

#[test]
fn callx_dispatches_on_the_low_32_bits() {
    let run_x = |id: u64| {
        let p = prog([&lddw(7, id), &[mov64(1, 2), mov64(2, 3), callx(7), exit()]]);
        run(&p, &helpers(), &mut [])
    };
    assert_eq!(run_x(1), Ok(32));
    assert_eq!(run_x(0xffff_ffff_0000_0001), Ok(32));
    assert_eq!(run_x(0x8000_0001), Ok(32));
    assert_eq!(run_x(UNWIND_ID as u64), Ok(2));
    assert_eq!(run_x(3), Err(Fault::UnknownHelper { pc: 4, id: 3 }));
}

#[test]
fn unwind_stops_the_program_with_r0_zero() {
    for (arg, want) in [(0, 0), (-1, 2)] {
        // Also from inside a local call: the whole program stops.
        let p = [
            call_local(2),
            mov64(0, 2),
            exit(),
            mov64(1, arg),
            call(UNWIND_ID as i32),
            exit(),
        ];
        assert_eq!(run(&p, &helpers(), &mut []), Ok(want));
        let p = [
            mov64(1, arg),
            mov64(7, UNWIND_ID as i32),
            callx(7),
            mov64(0, 2),
            exit(),
        ];
        assert_eq!(run(&p, &helpers(), &mut []), Ok(want));
    }
}

fn atomic_ref(op: i32, w64: bool, old: u64, src: u64, r0: u64) -> (u64, u64, u64) {
    // returns (new memory, new src, new r0)
    let mask = if w64 { u64::MAX } else { u32::MAX as u64 };
    let (old, s) = (old & mask, src & mask);
    let fetch = op & ATOMIC_FETCH != 0;
    match op {
        ATOMIC_CMPXCHG => {
            let new = if old == r0 & mask { s } else { old };
            (new, src, old)
        }
        ATOMIC_XCHG => (s, old, r0),
        _ => {
            let new = match op & !ATOMIC_FETCH {
                ATOMIC_ADD => old.wrapping_add(s),
                ATOMIC_OR => old | s,
                ATOMIC_AND => old & s,
                _ => old ^ s,
            } & mask;
            (new, if fetch { old } else { src }, r0)
        }
    }
}

#[test]
fn atomics_match_the_reference() {
    let ops = [
        ATOMIC_ADD,
        ATOMIC_OR,
        ATOMIC_AND,
        ATOMIC_XOR,
        ATOMIC_ADD | ATOMIC_FETCH,
        ATOMIC_OR | ATOMIC_FETCH,
        ATOMIC_AND | ATOMIC_FETCH,
        ATOMIC_XOR | ATOMIC_FETCH,
        ATOMIC_XCHG,
        ATOMIC_CMPXCHG,
    ];
    let mut rng = Rng(99);
    for &op in &ops {
        for w64 in [false, true] {
            // src = r0 exercises the cmpxchg-loop path that must not lose r0.
            for src in [0u8, 2, 4] {
                for on_stack in [false, true] {
                    for _ in 0..8 {
                        let old = rng.value();
                        let s = rng.value();
                        let r0 = if rng.below(2) == 0 { old } else { rng.value() };
                        let (sz, n) = if w64 { (SIZE_DW, 8) } else { (SIZE_W, 4) };
                        let (base, off) = if on_stack { (10u8, -16i16) } else { (1, 8) };
                        let mut mem = [0u8; 24];
                        mem[8..16].copy_from_slice(&old.to_le_bytes());
                        let mut p = vec![];
                        if on_stack {
                            p.extend(lddw(3, old));
                            p.push(stx(SIZE_DW, 10, 3, -16));
                        }
                        p.extend(lddw(0, r0));
                        if src != 0 {
                            p.extend(lddw(src, s));
                        }
                        p.push(atomic(sz, op, base, src, off));
                        // Report: [mem+0] = r0, [mem+16] = src, r0 = memory word.
                        p.push(stx(SIZE_DW, 1, 0, 0));
                        p.push(stx(SIZE_DW, 1, src, 16));
                        p.push(ldx(SIZE_DW, 0, base, off));
                        p.push(exit());
                        let got = run(&p, &Helpers::new(), &mut mem).unwrap();
                        let src_val = if src == 0 { r0 } else { s };
                        let (want_mem, mut want_src, mut want_r0) =
                            atomic_ref(op, w64, old, src_val, r0);
                        if src == 0 {
                            // src and r0 are the same register: the last write wins.
                            if op == ATOMIC_CMPXCHG {
                                want_src = want_r0;
                            } else {
                                want_r0 = want_src;
                            }
                        }
                        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
                        let want_word = if w64 {
                            want_mem
                        } else {
                            (old & !0xffff_ffff) | want_mem
                        };
                        let ctx = format!(
                            "op {op:#x} w64 {w64} src r{src} old {old:#x} s {s:#x} r0 {r0:#x}"
                        );
                        assert_eq!(got, want_word, "memory: {ctx}");
                        assert_eq!(word(&mem[0..8]), want_r0, "r0: {ctx}");
                        assert_eq!(word(&mem[16..24]), want_src, "src: {ctx}");
                        let _ = n;
                    }
                }
            }
        }
    }
}

#[test]
fn falling_off_the_end_is_a_fault() {
    assert_eq!(
        run(&[mov64(0, 1)], &Helpers::new(), &mut []),
        Err(Fault::FellOffEnd { pc: 1 })
    );
}

#[test]
fn budget_counts_instructions_exactly() {
    // 2 + 3 * 100 + 1 instructions.
    let p = [
        mov64(0, 0),
        mov64(1, 100),
        alu64_x(ALU_ADD, 0, 1),
        alu64_k(ALU_SUB, 1, 1),
        jcc_k(CLS_JMP, JMP_JNE, 1, 0, -3),
        exit(),
    ];
    let m = jit_with(&p, &Helpers::new(), true);
    let needed = 2 + 3 * 100 + 1;
    assert_eq!(m.run(&mut [], needed), Ok(5050));
    // The last block (the exit) is the one that does not fit.
    assert_eq!(m.run(&mut [], needed - 1), Err(Fault::Budget { pc: 5 }));
    // An infinite loop stops.
    let m = jit_with(&[ja(-1)], &Helpers::new(), true);
    assert_eq!(m.run(&mut [], 1000), Err(Fault::Budget { pc: 0 }));
    // Local calls and lddw count like the interpreter: each is one instruction.
    let p = prog([&[call_local(1), exit()], &lddw(0, 5), &[exit()]]);
    let m = jit_with(&p, &Helpers::new(), true);
    assert_eq!(m.run(&mut [], 4), Ok(5));
    assert!(matches!(m.run(&mut [], 3), Err(Fault::Budget { .. })));
}

/// Returns the misalignment of a 16-byte-aligned local: nonzero if the helper was entered
/// with a stack pointer that breaks the System V ABI (16-byte aligned before the call).
extern "C" fn stack_misalignment(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    #[repr(align(16))]
    struct A(#[allow(dead_code)] [u8; 16]);
    let a = A([0; 16]);
    (std::hint::black_box(&a) as *const A as usize % 16) as u64
}

#[test]
fn helpers_see_an_aligned_stack_in_every_frame_layout() {
    let mut h = Helpers::new();
    h.register(3, stack_misalignment);
    // Programs mentioning 0..=4 of r6-r9 (changing how many registers the prologue saves),
    // with and without r10 and local calls; the helper runs in the entry frame and, where
    // there are local calls, in a callee too.
    for k in 0..=4u8 {
        for stack in [false, true] {
            for local in [false, true] {
                let mut p: Vec<Insn> = (0..k).map(|i| mov64(6 + i, 1)).collect();
                if stack {
                    p.push(st(SIZE_DW, 10, -8, 0));
                }
                p.push(call(3));
                p.push(alu64_x(ALU_MOV, 6, 0));
                if local {
                    p.push(call_local(2));
                    p.push(alu64_x(ALU_ADD, 0, 6));
                    p.push(exit());
                    p.push(call(3));
                    p.push(exit());
                } else {
                    p.push(alu64_x(ALU_MOV, 0, 6));
                    p.push(exit());
                }
                assert_eq!(
                    run(&p, &h, &mut []),
                    Ok(0),
                    "r6..r{} stack {stack} local {local}",
                    5 + k
                );
            }
        }
    }
}
