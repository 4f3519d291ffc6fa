//! The JIT's bounds proofs (accesses it emits without a check because the program compared
//! the address with the end of the input first) never let an access out: random programs
//! that compare pointers and lengths in every way, right and off by one, run on the JIT and
//! the interpreter over every input length from 0 to 40, inside guard bytes. Both must give the
//! same result, the same fault and the same memory, guards included; and the JIT must have
//! proven a good share of the accesses, or the test would show nothing.

mod jit_support;

use jit_support::*;
use progpack_bpf::check::check;
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::interp;
use progpack_bpf::jit::{compile, CompileOptions, JitOptions, JitProgram};
use progpack_bpf::{RunError, RunOptions};

/// Bytes of guard on each side of the input.
const GUARD: usize = 64;
const LIMIT: u64 = 5_000;

const CONDS: [u8; 11] = [
    JMP_JEQ, JMP_JNE, JMP_JGT, JMP_JGE, JMP_JLT, JMP_JLE, JMP_JSGT, JMP_JSGE, JMP_JSLT, JMP_JSLE,
    JMP_JSET,
];

fn cond(rng: &mut Rng) -> u8 {
    // Mostly the unsigned orderings programs use for bounds.
    match rng.below(3) {
        0 => CONDS[rng.below(CONDS.len() as u64) as usize],
        _ => [JMP_JGT, JMP_JGE, JMP_JLT, JMP_JLE][rng.below(4) as usize],
    }
}

fn small(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as u64) as i64
}

/// An access of `size` bytes (`SIZE_*`) at `[base + off]`: a load into r5 (added to r0), a
/// store of r5 or of an immediate.
fn access_of(rng: &mut Rng, size: u8, base: u8, off: i16) -> Vec<Insn> {
    match rng.below(4) {
        0 => vec![stx(size, base, 5, off)],
        1 => vec![st(size, base, off, rng.next() as i32)],
        _ => vec![ldx(size, 5, base, off), alu64_x(ALU_ADD, 0, 5)],
    }
}

/// A random size: (`SIZE_*`, bytes).
fn size(rng: &mut Rng) -> (u8, i64) {
    [(SIZE_B, 1), (SIZE_H, 2), (SIZE_W, 4), (SIZE_DW, 8)][rng.below(4) as usize]
}

/// Off by one now and then.
fn nudge(rng: &mut Rng) -> i64 {
    [-1, 0, 0, 0, 1][rng.below(5) as usize]
}

/// `end = r1 + r2 (+k)` into `re`.
fn end(rng: &mut Rng, re: u8) -> Vec<Insn> {
    let mut v = vec![alu64_x(ALU_MOV, re, 1), alu64_x(ALU_ADD, re, 2)];
    match rng.below(4) {
        0 => v.push(alu64_k(ALU_ADD, re, small(rng, -3, 3) as i32)),
        1 => v.push(alu64_k(ALU_SUB, re, small(rng, -3, 3) as i32)),
        _ => {}
    }
    v
}

/// A conditional jump over `skip` instructions comparing `a` and `b`: half the time
/// `good` (the compare a correct program makes), else in either order, with any condition,
/// 64-bit mostly, sometimes 32-bit.
fn compare(rng: &mut Rng, good: (u8, u8, u8), skip: i16) -> Insn {
    let (op, a, b) = good;
    if rng.below(2) == 0 {
        return jcc_x(CLS_JMP, op, a, b, skip);
    }
    let (x, y) = if rng.below(2) == 0 { (a, b) } else { (b, a) };
    let cls = if rng.below(6) == 0 {
        CLS_JMP32
    } else {
        CLS_JMP
    };
    jcc_x(cls, cond(rng), x, y, skip)
}

/// The data/data_end shape: p = r1 + c; if p + n > end goto out; access [p + off], where n
/// is about what the access needs (or random).
fn shape_check(rng: &mut Rng) -> Vec<Insn> {
    let mut p = vec![mov64(0, 0), mov64(5, 7)];
    p.extend(end(rng, 3));
    p.push(alu64_x(ALU_MOV, 4, 1));
    p.push(alu64_k(ALU_ADD, 4, small(rng, -2, 24) as i32));
    let off = small(rng, -3, 10) as i16;
    let (sz, bytes) = size(rng);
    let acc = access_of(rng, sz, 4, off);
    let n = if rng.below(2) == 0 {
        off as i64 + bytes + nudge(rng)
    } else {
        small(rng, 0, 12)
    };
    p.push(alu64_x(ALU_MOV, 6, 4));
    p.push(alu64_k(ALU_ADD, 6, n as i32));
    p.push(compare(rng, (JMP_JGT, 6, 3), acc.len() as i16));
    p.extend(acc);
    p.push(exit());
    p
}

/// A length guard: if r2 ? K goto out (or K in a register); access [r1 + off].
fn shape_len(rng: &mut Rng) -> Vec<Insn> {
    let mut p = vec![mov64(0, 0), mov64(5, 9)];
    let off = small(rng, -2, 18) as i16;
    let (sz, bytes) = size(rng);
    let acc = access_of(rng, sz, 1, off);
    let k = if rng.below(2) == 0 {
        (off as i64 + bytes + nudge(rng)).max(0) as i32
    } else {
        small(rng, 0, 20) as i32
    };
    let skip = acc.len() as i16;
    if rng.below(2) == 0 {
        let op = if rng.below(2) == 0 {
            JMP_JLT
        } else {
            cond(rng)
        };
        p.push(jcc_k(CLS_JMP, op, 2, k, skip));
    } else {
        p.push(mov64(3, k));
        p.push(compare(rng, (JMP_JGT, 3, 2), skip));
    }
    p.extend(acc);
    p.push(exit());
    p
}

/// A loop walking a pointer: top-tested (`if p ? end goto out; access; p += s; ja loop`) or
/// bottom-tested behind a length test (clang's shape).
fn shape_loop(rng: &mut Rng) -> Vec<Insn> {
    let mut p = vec![mov64(0, 0), mov64(5, 3)];
    p.extend(end(rng, 3));
    p.push(alu64_x(ALU_MOV, 4, 1));
    if rng.below(3) == 0 {
        p.push(alu64_k(ALU_ADD, 4, small(rng, -1, 2) as i32));
    }
    let (off, (sz, _)) = if rng.below(2) == 0 {
        (0, (SIZE_B, 1))
    } else {
        (small(rng, -1, 2) as i16, size(rng))
    };
    let step = small(rng, 1, 3) as i32;
    let acc = access_of(rng, sz, 4, off);
    if rng.below(2) == 0 {
        // loop: if p ? end goto out; acc; p += step; ja loop
        let n = acc.len() as i16;
        p.push(compare(rng, (JMP_JGE, 4, 3), n + 2));
        p.extend(acc);
        p.push(alu64_k(ALU_ADD, 4, step));
        p.push(ja(-(n + 4)));
    } else {
        // if len ? 0 goto out; loop: acc; p += step; if p ? end goto loop
        let n = acc.len() as i16;
        let op = if rng.below(2) == 0 {
            JMP_JEQ
        } else {
            cond(rng)
        };
        p.push(jcc_k(CLS_JMP, op, 2, small(rng, 0, 1) as i32, n + 2));
        p.extend(acc);
        p.push(alu64_k(ALU_ADD, 4, step));
        p.push(compare(rng, (JMP_JGT, 3, 4), -(n + 2)));
    }
    p.push(exit());
    p
}

fn run_both(
    p: &[Insn],
    len: usize,
    seed: u64,
) -> (Result<u64, RunError>, Result<u64, RunError>, bool) {
    let helpers = Helpers::new();
    let checked = check(p, &helpers).expect("generated programs check");
    let jit = JitProgram::new(
        near_alloc(),
        p,
        &helpers,
        JitOptions {
            count_instructions: true,
            ..Default::default()
        },
    )
    .expect("compiles");
    let mut rng = Rng(seed);
    let init: Vec<u8> = (0..2 * GUARD + len).map(|_| rng.next() as u8).collect();
    let mut a = init.clone();
    let mut b = init.clone();
    let opts = RunOptions {
        instruction_limit: LIMIT,
    };
    let want = interp::run(&checked, &helpers, &mut a[GUARD..GUARD + len], &opts);
    let got = jit.run_limited(&mut b[GUARD..GUARD + len], LIMIT);
    let same_memory = a == b;
    (
        want,
        got,
        same_memory && b[..GUARD] == init[..GUARD] && b[GUARD + len..] == init[GUARD + len..],
    )
}

/// Fault addresses differ between runs only by where the input was; compare the rest.
fn normalized(r: &Result<u64, RunError>) -> Result<u64, (usize, usize)> {
    match r {
        Ok(v) => Ok(*v),
        Err(RunError::OutOfBounds { len, pc, .. }) => Err((*len, *pc)),
        Err(RunError::InstructionLimit { .. }) => Err((0, usize::MAX)),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn proven_accesses_stay_inside_the_input() {
    let mut rng = Rng(0xb0_0d5);
    let (mut programs, mut with_proofs, mut proven_runs, mut faults) = (0, 0, 0, 0);
    for n in 0..3000 {
        let p = match n % 3 {
            0 => shape_check(&mut rng),
            1 => shape_len(&mut rng),
            _ => shape_loop(&mut rng),
        };
        if check(&p, &Helpers::new()).is_err() {
            continue;
        }
        programs += 1;
        let code = compile(
            &p,
            &Helpers::new(),
            CompileOptions {
                budget: true,
                ..Default::default()
            },
        )
        .unwrap();
        let proofs = code.proven_accesses();
        with_proofs += usize::from(proofs > 0);
        for len in 0..=40 {
            let (want, got, memory) = run_both(&p, len, n as u64 * 41 + len as u64);
            if matches!(want, Err(RunError::InstructionLimit { .. })) {
                // (Counting is per block: memory may differ when the limit hits mid-block.)
                assert!(
                    matches!(got, Err(RunError::InstructionLimit { .. })),
                    "program {n} len {len}: {p:?}\n{want:?} / {got:?}"
                );
                continue;
            }
            assert_eq!(
                normalized(&got),
                normalized(&want),
                "program {n} with {len} bytes ({proofs} accesses proven): {p:?}"
            );
            assert!(
                memory,
                "program {n} with {len} bytes: memory differs: {p:?}"
            );
            proven_runs += usize::from(proofs > 0);
            faults += usize::from(want.is_err());
        }
    }
    assert!(programs > 2500, "{programs} programs");
    // The generator exercises both sides: proven programs, and faults the checks catch.
    assert!(
        with_proofs > programs / 5,
        "{with_proofs} of {programs} programs had proofs"
    );
    eprintln!("{programs} programs, {with_proofs} with proofs; {proven_runs} runs with proofs, {faults} faults");
    assert!(
        proven_runs > 10_000 && faults > 10_000,
        "{proven_runs} runs with proofs, {faults} faults"
    );
}

#[test]
fn the_clang_byte_sum_loop_is_proven() {
    // clang 14, -O2 -target bpf: for (u8 *e = p + len; p < e; p++) s += *p;
    let p = progpack_bpf::asm::assemble(
        "mov %r0, 0\nmov %r3, 1\njsgt %r3, %r2, +7\nmov %r3, %r1\nadd %r3, %r2\nmov %r0, 0\n\
         ldxb %r2, [%r1+0]\nadd %r0, %r2\nadd %r1, 1\njgt %r3, %r1, -4\nexit",
    )
    .unwrap();
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    assert_eq!(code.proven_accesses(), 1);
    // Off by one (`p <= e`): not proven.
    let mut bad = p.clone();
    bad[9] = jcc_x(CLS_JMP, JMP_JGE, 3, 1, -4);
    let code = compile(&bad, &Helpers::new(), CompileOptions::default()).unwrap();
    assert_eq!(code.proven_accesses(), 0);
}

#[test]
fn a_top_tested_loop_is_proven() {
    // p = r1; end = r1 + r2; loop: if p >= end goto out; r0 += *p; p += 1; goto loop
    let p = prog([&[
        mov64(0, 0),
        alu64_x(ALU_MOV, 3, 1),
        alu64_x(ALU_ADD, 3, 2),
        alu64_x(ALU_MOV, 4, 1),
        jcc_x(CLS_JMP, JMP_JGE, 4, 3, 4),
        ldx(SIZE_B, 5, 4, 0),
        alu64_x(ALU_ADD, 0, 5),
        alu64_k(ALU_ADD, 4, 1),
        ja(-5),
        exit(),
    ]]);
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    assert_eq!(code.proven_accesses(), 1);
    // Reading two bytes is not covered by `p < end`.
    let mut wide = p.clone();
    wide[5] = ldx(SIZE_H, 5, 4, 0);
    let code = compile(&wide, &Helpers::new(), CompileOptions::default()).unwrap();
    assert_eq!(code.proven_accesses(), 0);
}

#[test]
fn the_data_end_idiom_is_proven() {
    // r3 = r1 + 14; if r3 > end goto out; read the first 14 bytes.
    let p = prog([
        &[
            mov64(0, 0),
            alu64_x(ALU_MOV, 4, 1),
            alu64_x(ALU_ADD, 4, 2),
            alu64_x(ALU_MOV, 3, 1),
            alu64_k(ALU_ADD, 3, 14),
            jcc_x(CLS_JMP, JMP_JGT, 3, 4, 3),
            ldx(SIZE_H, 0, 1, 12),
            ldx(SIZE_DW, 5, 1, 0),
            ldx(SIZE_W, 5, 1, 11),
        ],
        &[exit()],
    ]);
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    // [r1+12, 2) and [r1, 8) lie in the first 14 bytes; [r1+11, 4) does not.
    assert_eq!(code.proven_accesses(), 2);
}

#[test]
fn huge_steps_prove_nothing() {
    // A pointer moved by a 64-bit constant could wrap around: never tracked.
    let p = prog([
        &[
            mov64(0, 0),
            alu64_x(ALU_MOV, 4, 1),
            alu64_x(ALU_ADD, 4, 2),
            alu64_x(ALU_MOV, 3, 1),
        ],
        &lddw(6, 1 << 63),
        &[
            alu64_x(ALU_ADD, 3, 6),
            jcc_x(CLS_JMP, JMP_JGE, 3, 4, 1),
            ldx(SIZE_B, 0, 3, 0),
            exit(),
        ],
    ]);
    let code = compile(&p, &Helpers::new(), CompileOptions::default()).unwrap();
    assert_eq!(code.proven_accesses(), 0);
    let mut mem = [0u8; 16];
    let jit = JitProgram::new(near_alloc(), &p, &Helpers::new(), JitOptions::default()).unwrap();
    assert!(matches!(
        jit.run(&mut mem),
        Err(RunError::OutOfBounds { .. }) | Ok(0)
    ));
}
