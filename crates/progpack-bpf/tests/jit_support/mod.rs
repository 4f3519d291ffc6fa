//! Shared support for the JIT tests: placing JIT code in executable memory without the
//! allocator (plain mmap + mprotect), and building raw instructions.
#![allow(dead_code, unsafe_code)]

use progpack_bpf::helpers::Helpers;
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, run_code, CompileOptions, EntryFn, Fault, JitCode};

/// JIT code copied into its own read+execute mapping.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps `code`, linking it for the address it lands at; `near` asks for an address within
    /// rel32 reach of this binary (so helper calls use `call rel32`).
    pub fn new(code: &mut JitCode, near: bool) -> Mapped {
        let len = code.len().div_ceil(4096) * 4096;
        let mut ptr = libc::MAP_FAILED;
        if near {
            let anchor = Mapped::new as *const () as usize;
            for k in 1..64usize {
                let hint = ((anchor + (k << 24)) & !0xfff) as *mut libc::c_void;
                // SAFETY: a fresh anonymous mapping at a free address (NOREPLACE).
                ptr = unsafe {
                    libc::mmap(
                        hint,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                if ptr != libc::MAP_FAILED {
                    break;
                }
            }
            assert_ne!(ptr, libc::MAP_FAILED, "no free address near the binary");
        } else {
            // SAFETY: a fresh anonymous mapping anywhere.
            ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
        }
        code.link(ptr as u64).expect("helpers in reach");
        // SAFETY: the mapping is `len >= code.len()` writable bytes we own.
        unsafe {
            std::ptr::copy_nonoverlapping(code.bytes().as_ptr(), ptr as *mut u8, code.len());
            assert_eq!(libc::mprotect(ptr, len, libc::PROT_READ | libc::PROT_EXEC), 0);
        }
        Mapped { ptr, len }
    }

    /// Runs the code over `mem`.
    pub fn run(&self, mem: &mut [u8], budget: u64) -> Result<u64, Fault> {
        // SAFETY: the mapping holds linked JIT code and lives as long as `self`.
        unsafe {
            let f: EntryFn = std::mem::transmute(self.ptr);
            run_code(f, mem, budget)
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Compiles (rel32 helper calls) and maps near the binary, falling back to absolute calls.
pub fn jit(insns: &[Insn], helpers: &Helpers) -> Mapped {
    jit_with(insns, helpers, false)
}

/// As [`jit`], with the instruction budget compiled in if `budget`.
pub fn jit_with(insns: &[Insn], helpers: &Helpers, budget: bool) -> Mapped {
    let mut code = compile(
        insns,
        helpers,
        CompileOptions {
            rel_calls: true,
            budget,
        },
    )
    .expect("compiles");
    Mapped::new(&mut code, true)
}

/// Compiles, maps and runs.
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
