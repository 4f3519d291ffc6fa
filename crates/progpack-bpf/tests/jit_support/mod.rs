//! Shared support for the JIT tests: allocators to place code with, and raw instruction
//! builders.
#![allow(dead_code)]

use std::sync::OnceLock;

use progpack::{Allocator, CodeRange, Config};
use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, CompileOptions, Fault, JitCode, JitProgram};

/// An allocator whose packs are within rel32 reach of this binary (helpers via `call rel32`).
pub fn near_alloc() -> &'static Allocator {
    static A: OnceLock<Allocator> = OnceLock::new();
    A.get_or_init(|| {
        Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))
            .expect("allocator with a code range")
    })
}

/// An allocator without a code range (helpers via `mov rax, imm64; call rax`).
pub fn far_alloc() -> &'static Allocator {
    static A: OnceLock<Allocator> = OnceLock::new();
    A.get_or_init(|| Allocator::new(Config::default()).expect("allocator"))
}

/// JIT code placed in a pack.
pub struct Mapped(pub JitProgram);

impl Mapped {
    /// Places compiled code with the near (`near`) or the far allocator.
    pub fn new(code: JitCode, near: bool, counted: bool) -> Mapped {
        let alloc = if near { near_alloc() } else { far_alloc() };
        Mapped(JitProgram::place(alloc, code, counted).expect("placed"))
    }

    /// Runs the code over `mem` with instruction budget `budget` (if compiled with one).
    pub fn run(&self, mem: &mut [u8], budget: u64) -> Result<u64, Fault> {
        self.0.run_fault(mem, budget)
    }
}

/// Compiles (rel32 helper calls) and places near the binary.
pub fn jit(insns: &[Insn], helpers: &Helpers) -> Mapped {
    jit_with(insns, helpers, false)
}

/// As [`jit`], with the instruction budget compiled in if `budget`.
pub fn jit_with(insns: &[Insn], helpers: &Helpers, budget: bool) -> Mapped {
    let code = compile(
        insns,
        helpers,
        CompileOptions {
            rel_calls: true,
            budget,
            budget_loops_only: false,
            blind_constants: false,
            hide_addresses: false,
        },
    )
    .expect("compiles");
    Mapped::new(code, true, budget)
}

/// Compiles, places and runs.
pub fn run(insns: &[Insn], helpers: &Helpers, mem: &mut [u8]) -> Result<u64, Fault> {
    jit(insns, helpers).run(mem, 0)
}

// ---- instruction builders ----

pub fn alu64_k(op: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(CLS_ALU64 | op | SRC_K, dst, 0, 0, imm)
}
pub fn alu64_x(op: u8, dst: u8, src: u8) -> Insn {
    Insn::new(CLS_ALU64 | op | SRC_X, dst, src, 0, 0)
}
pub fn alu32_k(op: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(CLS_ALU | op | SRC_K, dst, 0, 0, imm)
}
pub fn alu32_x(op: u8, dst: u8, src: u8) -> Insn {
    Insn::new(CLS_ALU | op | SRC_X, dst, src, 0, 0)
}
pub fn mov64(dst: u8, imm: i32) -> Insn {
    alu64_k(ALU_MOV, dst, imm)
}
pub fn lddw(dst: u8, v: u64) -> [Insn; 2] {
    [
        Insn::new(LD_DW_IMM, dst, 0, 0, v as u32 as i32),
        Insn::new(0, 0, 0, 0, (v >> 32) as u32 as i32),
    ]
}
pub fn exit() -> Insn {
    Insn::new(EXIT, 0, 0, 0, 0)
}
pub fn ja(off: i16) -> Insn {
    Insn::new(CLS_JMP | JMP_JA, 0, 0, off, 0)
}
pub fn jcc_k(cls: u8, op: u8, dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(cls | op | SRC_K, dst, 0, off, imm)
}
pub fn jcc_x(cls: u8, op: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(cls | op | SRC_X, dst, src, off, 0)
}
pub fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(CLS_LDX | MODE_MEM | size, dst, src, off, 0)
}
pub fn ldxsx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(CLS_LDX | MODE_MEMSX | size, dst, src, off, 0)
}
pub fn st(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    Insn::new(CLS_ST | MODE_MEM | size, dst, 0, off, imm)
}
pub fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(CLS_STX | MODE_MEM | size, dst, src, off, 0)
}
pub fn atomic(size: u8, op: i32, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(CLS_STX | MODE_ATOMIC | size, dst, src, off, op)
}
pub fn call(id: i32) -> Insn {
    Insn::new(CALL, 0, CALL_HELPER, 0, id)
}
pub fn call_local(rel: i32) -> Insn {
    Insn::new(CALL, 0, CALL_LOCAL, 0, rel)
}
pub fn callx(reg: u8) -> Insn {
    Insn::new(CALLX, reg, 0, 0, 0)
}

/// Flattens instruction groups into slots.
pub fn prog<const N: usize>(parts: [&[Insn]; N]) -> Vec<Insn> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// A small deterministic PRNG (xorshift64*), so tests need no extra crate.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Mostly interesting edge values, sometimes random ones.
    pub fn value(&mut self) -> u64 {
        const EDGE: [u64; 14] = [
            0,
            1,
            2,
            u64::MAX,
            u64::MAX - 1,
            i64::MIN as u64,
            i64::MAX as u64,
            0x8000_0000,
            0x7fff_ffff,
            0xffff_ffff,
            0xffff_ffff_8000_0000,
            0x1_0000_0000,
            63,
            64,
        ];
        if self.below(2) == 0 {
            EDGE[self.below(EDGE.len() as u64) as usize]
        } else {
            let v = self.next();
            match self.below(3) {
                0 => v,
                1 => v as u32 as u64,
                _ => v as u8 as u64,
            }
        }
    }
}

/// A random valid program of about `len` instructions: every opcode class, registers r0-r9
/// (r10 as a base), memory accesses mostly in range of a `mem_len`-byte region or the stack,
/// jumps forward or backward (run it with a budget), local calls into small functions, calls
/// to helpers 1 and 5 and `callx`. The last instruction is `exit`.
pub fn random_program(rng: &mut Rng, len: usize, mem_len: usize) -> Vec<Insn> {
    let mut p: Vec<Insn> = Vec::new();
    // A small function at the end: `r0 = r1 + 1; exit`, called with `call local`.
    let body_len = len.max(4);
    let mut jumps = Vec::new();
    while p.len() < body_len {
        let r = |rng: &mut Rng| rng.below(10) as u8;
        let k = rng.below(100);
        let dst = r(rng);
        let src = r(rng);
        match k {
            0..=34 => {
                const OPS: [u8; 13] = [
                    ALU_ADD, ALU_SUB, ALU_MUL, ALU_DIV, ALU_OR, ALU_AND, ALU_LSH, ALU_RSH, ALU_NEG,
                    ALU_MOD, ALU_XOR, ALU_MOV, ALU_ARSH,
                ];
                let op = OPS[rng.below(13) as usize];
                let cls = if rng.below(2) == 0 {
                    CLS_ALU
                } else {
                    CLS_ALU64
                };
                let x = op != ALU_NEG && rng.below(2) == 0;
                let off = match op {
                    ALU_DIV | ALU_MOD => rng.below(2) as i16,
                    ALU_MOV if x => {
                        [0, 8, 16, 32][rng.below(if cls == CLS_ALU64 { 4 } else { 3 }) as usize]
                    }
                    _ => 0,
                };
                let imm = if op == ALU_NEG { 0 } else { rng.value() as i32 };
                p.push(Insn::new(
                    cls | op | if x { SRC_X } else { SRC_K },
                    dst,
                    if x { src } else { 0 },
                    off,
                    if x { 0 } else { imm },
                ));
            }
            35..=39 => {
                let (opc, bits) = [
                    (CLS_ALU | ALU_END | SRC_K, 16),
                    (CLS_ALU | ALU_END | SRC_X, 32),
                    (CLS_ALU64 | ALU_END | SRC_K, 64),
                ][rng.below(3) as usize];
                p.push(Insn::new(opc, dst, 0, 0, bits));
            }
            40..=43 => p.extend(lddw(dst, rng.value())),
            44..=63 => {
                let (sz, n) =
                    [(SIZE_B, 1), (SIZE_H, 2), (SIZE_W, 4), (SIZE_DW, 8)][rng.below(4) as usize];
                let on_stack = rng.below(2) == 0;
                let (base, off) = if on_stack {
                    (10u8, -(1 + rng.below(520) as i16))
                } else {
                    (1u8, rng.below(mem_len as u64 + 4) as i16 - 2)
                };
                let _ = n;
                match rng.below(5) {
                    0 => p.push(ldx(sz, dst, base, off)),
                    1 if sz != SIZE_DW => p.push(ldxsx(sz, dst, base, off)),
                    2 => p.push(st(sz, base, off, rng.value() as i32)),
                    3 if sz == SIZE_W || sz == SIZE_DW => {
                        const A: [i32; 10] = [
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
                        // Keep r1 (the memory pointer) intact: no fetch into it.
                        let s = if src == 1 { 2 } else { src };
                        p.push(atomic(sz, A[rng.below(10) as usize], base, s, off));
                    }
                    _ => p.push(stx(sz, base, src, off)),
                }
            }
            64..=83 => {
                const J: [u8; 11] = [
                    JMP_JEQ, JMP_JNE, JMP_JGT, JMP_JGE, JMP_JLT, JMP_JLE, JMP_JSET, JMP_JSGT,
                    JMP_JSGE, JMP_JSLT, JMP_JSLE,
                ];
                let cls = if rng.below(2) == 0 {
                    CLS_JMP
                } else {
                    CLS_JMP32
                };
                let op = J[rng.below(11) as usize];
                jumps.push(p.len());
                if rng.below(2) == 0 {
                    p.push(jcc_x(cls, op, dst, src, 0));
                } else {
                    p.push(jcc_k(cls, op, dst, rng.value() as i32, 0));
                }
            }
            84..=86 => {
                jumps.push(p.len());
                p.push(ja(0));
            }
            87..=90 => {
                p.push(mov64(1, rng.below(3) as i32)); // unwind only on 0
                p.push(call(if rng.below(2) == 0 { 1 } else { 5 }));
            }
            91..=92 => {
                p.push(mov64(src, [1, 5, 7][rng.below(3) as usize]));
                p.push(callx(src));
            }
            93..=95 => {
                jumps.push(p.len());
                p.push(call_local(0));
            }
            // Restore r1 to the memory pointer now and then.
            _ => p.push(alu64_x(ALU_MOV, 1, 1)),
        }
    }
    p.push(exit());
    let func = p.len();
    p.push(alu64_x(ALU_MOV, 0, 1));
    p.push(alu64_k(ALU_ADD, 0, 1));
    p.push(exit());
    // Resolve jumps to instruction starts of the main body (or the function for calls).
    let starts: Vec<usize> = {
        let mut v = Vec::new();
        let mut pc = 0;
        while pc < func {
            v.push(pc);
            pc += if p[pc].opc == LD_DW_IMM { 2 } else { 1 };
        }
        v
    };
    for j in jumps {
        if p[j].opc == CALL {
            p[j].imm = func as i32 - j as i32 - 1;
        } else {
            let t = starts[rng.below(starts.len() as u64) as usize];
            p[j].off = (t as i64 - j as i64 - 1) as i16;
        }
    }
    p
}

/// Helpers for random programs: 1 = a pure mix of the arguments, 5 = unwind, 7 = identity.
pub fn random_helpers() -> Helpers {
    extern "C" fn mix(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
        a ^ b.rotate_left(7) ^ c.rotate_left(13) ^ d.rotate_left(29) ^ e.rotate_left(41)
    }
    extern "C" fn first(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
        a
    }
    let mut h = Helpers::new();
    h.register(1, mix)
        .register(5, first)
        .register(7, first)
        .set_unwind(Some(5));
    h
}

/// Whether the immediate of `i` is control flow or selects the operation (a call, an
/// atomic, a 32-bit `ja`) rather than a plain operand: the tests that give a program new
/// constants leave these alone.
pub fn imm_is_control(i: Insn) -> bool {
    i.opc == CALL
        || i.opc == CALLX
        || i.opc == (CLS_JMP32 | JMP_JA)
        || (i.class() == CLS_STX && i.opc & 0xe0 == MODE_ATOMIC)
}
