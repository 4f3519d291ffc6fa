//! Memory: loads, stores and atomics, each behind its bounds check (see the invariants in
//! the parent module).
//!
//! Fast paths, in order:
//! - `[r10 + off]` inside the current frame, or an access [`super::super::ranges`] proves
//!   inside the input memory: no check.
//! - `[r1 + off]`, `off >= 0`, in a program that never writes r1: `cmp len, off + n` and
//!   a branch to the stub.
//! - anything else: `a - start` (one `lea`, one `sub`) against the number of valid start
//!   offsets for `n` bytes, one unsigned compare and a branch to the stub.
//!
//! The stub (out of line) recomputes the address, checks the live stack frames, performs
//! the same access there and jumps back; otherwise it returns the fault with the address.

use super::super::analysis::{self, access_size};
use super::super::x86::{Alu, Cond, Label, Mem, R, W};
use super::layout::Loc;
use super::{word, Cx, JitError, Stub, FAULT_LOAD, FAULT_STORE, MAP};
use crate::context::HelperContext;
use crate::insn::*;
use crate::memory;

/// One memory operation, without its address.
#[derive(Clone, Copy, Debug)]
pub(super) enum Access {
    /// `dst = *(size *)addr`, zero- or sign-extended.
    Load { w: W, signed: bool, dst: R },
    /// `*(size *)addr = src`.
    Store { w: W, src: R },
    /// `*(size *)addr = imm`.
    StoreImm { w: W, imm: i32 },
    /// An atomic operation (`imm` as in the instruction) with source register `src`.
    Atomic { w64: bool, imm: i32, src: R },
}

impl Cx<'_> {
    pub(super) fn mem(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        let mode = i.opc & 0xe0;
        let size = access_size(i.opc);
        let w = W::from_bytes(size);
        match (i.class(), mode) {
            (CLS_LDX, MODE_MEM) | (CLS_LDX, MODE_MEMSX) => {
                let signed = mode == MODE_MEMSX;
                if signed && size == 8 {
                    return Err(bad);
                }
                let dst = self.dst_w(pc, i)?;
                self.src_r(pc, i)?;
                let acc = Access::Load { w, signed, dst };
                self.access(pc, i.src, i.off, size, acc, FAULT_LOAD);
            }
            (CLS_ST, MODE_MEM) => {
                self.dst_r(pc, i)?;
                let acc = Access::StoreImm { w, imm: i.imm };
                self.access(pc, i.dst, i.off, size, acc, FAULT_STORE);
            }
            (CLS_STX, MODE_MEM) => {
                self.dst_r(pc, i)?;
                let src = self.src_r(pc, i)?;
                let acc = Access::Store { w, src };
                self.access(pc, i.dst, i.off, size, acc, FAULT_STORE);
            }
            (CLS_STX, MODE_ATOMIC) if size >= 4 => {
                let fetch = i.imm & ATOMIC_FETCH != 0;
                let known = matches!(
                    i.imm & !ATOMIC_FETCH,
                    ATOMIC_ADD | ATOMIC_OR | ATOMIC_AND | ATOMIC_XOR
                );
                if !known && i.imm != ATOMIC_XCHG && i.imm != ATOMIC_CMPXCHG {
                    return Err(bad);
                }
                self.dst_r(pc, i)?;
                // A fetching atomic writes its source register (cmpxchg writes r0 instead).
                let src = if fetch && i.imm != ATOMIC_CMPXCHG {
                    if i.src > 9 {
                        return Err(JitError::BadRegister { pc, reg: i.src });
                    }
                    MAP[i.src as usize]
                } else {
                    self.src_r(pc, i)?
                };
                let acc = Access::Atomic {
                    w64: size == 8,
                    imm: i.imm,
                    src,
                };
                self.access(pc, i.dst, i.off, size, acc, FAULT_STORE);
            }
            _ => return Err(bad),
        }
        Ok(())
    }

    /// Emits `acc` at `[base + off]` of `size` bytes behind its check.
    fn access(&mut self, pc: usize, base: u8, off: i16, size: usize, acc: Access, kind: u32) {
        let off32 = off as i32;
        let b = MAP[base as usize];
        if analysis::in_frame(base, off, size as i32) {
            self.emit_access(acc, Mem::at(b, off32));
            return;
        }
        let proven = self.proven.get(pc).copied().unwrap_or(false);
        if proven || self.opts.unchecked {
            // (Proofs are about addresses derived from r1, never from r10.)
            let m = self.input_operand(base, off32);
            self.emit_access(acc, m);
            return;
        }
        let log = size.trailing_zeros() as usize;
        let (end, m) = if base == 1 && !self.an.usage.writes(1) && off >= 0 {
            // [r1 + off] with r1 = start: in bounds iff off + size <= len.
            let end = off32 + size as i32;
            match self.lay.len.expect("input length with checks") {
                Loc::Reg(r) => self.a.alu_ri(true, Alu::Cmp, r, end),
                s => self.a.alu_mi(Alu::Cmp, s.mem().expect("slot"), end),
            }
            let end = self.a.jcc_out(Cond::B);
            (end, self.input_operand(base, off32))
        } else {
            // Offset into the input memory, against the count of valid start offsets.
            self.address(base, off32, R::R11);
            if self.opts.hide {
                self.a
                    .alu_ri(true, Alu::Sub, R::R11, crate::vaddr::INPUT as i32);
            } else {
                match self.lay.mem.expect("input start with checks") {
                    Loc::Reg(r) => self.a.alu_rr(true, Alu::Sub, R::R11, r),
                    s => self.a.alu_rm(Alu::Sub, R::R11, s.mem().expect("slot")),
                }
            }
            match self.lay.cnt[log].expect("limit for this size") {
                Loc::Reg(r) => self.a.alu_rr(true, Alu::Cmp, R::R11, r),
                s => self.a.alu_rm(Alu::Cmp, R::R11, s.mem().expect("slot")),
            }
            let end = self.a.jcc_out(Cond::Ae);
            let m = if self.opts.hide {
                // r11 = offset into the input: the host address is start + r11.
                match self.lay.mem.expect("input start with hidden addresses") {
                    Loc::Reg(r) => Mem::indexed(r, R::R11, 0),
                    s => {
                        self.a.alu_rm(Alu::Add, R::R11, s.mem().expect("slot"));
                        Mem::at(R::R11, 0)
                    }
                }
            } else {
                Mem::at(b, off32)
            };
            (end, m)
        };
        self.emit_access(acc, m);
        let back = self.a.pos();
        self.stubs.push(Stub::Access {
            end,
            back,
            base,
            off: off32,
            size,
            acc,
            word: word(pc, kind | log as u32),
        });
    }

    /// The program address `base + off` into `r` (virtual r10 with hidden addresses).
    fn address(&mut self, base: u8, off: i32, r: R) {
        let b = self.value_of(base, r);
        if off == 0 {
            if b != r {
                self.a.mov_rr(true, r, b);
            }
        } else {
            self.a.lea(r, Mem::at(b, off));
        }
    }

    /// The host operand of `[base + off]`, an address inside the input memory derived from
    /// r1: the address itself, or with hidden addresses `start + (base + off - INPUT)`.
    fn input_operand(&mut self, base: u8, off: i32) -> Mem {
        let b = MAP[base as usize];
        if !self.opts.hide {
            return Mem::at(b, off);
        }
        let disp = off - crate::vaddr::INPUT as i32;
        match self.lay.mem.expect("input start with hidden addresses") {
            Loc::Reg(r) => Mem::indexed(r, b, disp),
            s => {
                self.a.mov_rm(R::R11, s.mem().expect("slot"));
                Mem::indexed(R::R11, b, disp)
            }
        }
    }

    /// The out-of-line half of a check: the live stack frames, then the environment's extra
    /// regions, else the fault (its detail: the program's address).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn access_stub(
        &mut self,
        end: u32,
        back: u32,
        base: u8,
        off: i32,
        size: usize,
        acc: Access,
        word: u32,
    ) {
        self.a.patch_here(end);
        self.address(base, off, R::R11);
        let in_region = self.a.label();
        if self.an.usage.stack {
            let bad = self.a.label();
            // With hidden addresses, the host address a stack address stands for (a bijection,
            // so nothing else lands in the frames).
            let vd = self.lay.vdelta.filter(|_| self.opts.hide);
            if let Some(vd) = vd {
                self.add_value(R::R11, vd, Alu::Add);
            }
            self.stack_check(size, bad);
            self.a.jmp(in_region, false);
            self.a.bind(bad);
            if let Some(vd) = vd {
                self.add_value(R::R11, vd, Alu::Sub);
            }
        }
        if self.opts.extra_regions {
            // r10 = size | write << 8; the subroutine leaves in r9 the host address, or 0.
            let write = (word >> 24) & FAULT_STORE != 0;
            self.a
                .mov_imm32(R::R10, size as u32 | u32::from(write) << 8);
            let sub = self.extra_check_label();
            self.a.call_label(sub);
            self.a.test_rr(true, R::R9, R::R9);
            let none = self.a.label();
            self.a.jcc(Cond::E, none, true);
            self.a.mov_rr(true, R::R11, R::R9);
            self.a.jmp(in_region, false);
            self.a.bind(none);
        }
        self.a.mov_rr(true, R::Rax, R::R11);
        self.a.mov_imm32(R::Rdx, word);
        let f = self.fault;
        self.a.jmp(f, false);
        if self.an.usage.stack || self.opts.extra_regions {
            self.a.bind(in_region);
            self.emit_access(acc, Mem::at(R::R11, 0));
            self.a.jmp_back(back);
        }
    }

    fn extra_check_label(&mut self) -> Label {
        match self.extra_check {
            Some(l) => l,
            None => {
                let l = self.a.label();
                self.extra_check = Some(l);
                l
            }
        }
    }

    /// The subroutine behind every access stub's last check: with r11 = the address and
    /// r10 = `size | write << 8`, calls [`extra_region_check`]`(env, r11, r10)` and returns
    /// its answer (the host address, or 0) in r9; every other register is kept. Called from
    /// the body, where the native stack is 16-byte aligned: the return address and seven
    /// pushes keep it aligned. (With extra regions no run-time value lives in a caller-saved
    /// register, see `layout`.)
    pub(super) fn extra_check_subroutine(&mut self, l: Label) {
        const KEPT: [R; 7] = [R::Rax, R::Rdi, R::Rsi, R::Rdx, R::Rcx, R::R8, R::R11];
        self.a.bind(l);
        for r in KEPT {
            self.a.push(r);
        }
        let env = self.lay.env.expect("environment with extra regions");
        let r = self.value_in(env, R::Rdi);
        if r != R::Rdi {
            self.a.mov_rr(true, R::Rdi, r);
        }
        self.a.mov_rr(true, R::Rsi, R::R11);
        self.a.mov_rr(true, R::Rdx, R::R10);
        self.a
            .call_abs(extra_region_check as *const () as usize as u64);
        self.a.mov_rr(true, R::R9, R::Rax);
        for r in KEPT.iter().rev() {
            self.a.pop(*r);
        }
        self.a.ret();
    }

    /// `r op= value` for a run-time value in a register or slot.
    fn add_value(&mut self, r: R, v: Loc, op: Alu) {
        match v {
            Loc::Reg(x) => self.a.alu_rr(true, op, r, x),
            s => self.a.alu_rm(op, r, s.mem().expect("slot")),
        }
    }

    /// Jumps to `bad` unless `[r11, r11 + size)` lies in the live frames `[r10 - 512, top)`.
    /// Clobbers r10.
    fn stack_check(&mut self, size: usize, bad: Label) {
        let frame = STACK_FRAME_SIZE as i32;
        match self.lay.top {
            None => {
                // Without local calls top = r10: a - (r10 - 512) <= 512 - size.
                self.a.lea(R::R10, Mem::at(R::R11, frame));
                self.a.alu_rr(true, Alu::Sub, R::R10, MAP[10]);
                self.a.alu_ri(true, Alu::Cmp, R::R10, frame - size as i32);
                self.a.jcc(Cond::A, bad, false);
            }
            Some(top) => {
                self.a.lea(R::R10, Mem::at(MAP[10], -frame));
                self.a.alu_rr(true, Alu::Cmp, R::R11, R::R10);
                self.a.jcc(Cond::B, bad, false);
                let t = self.value_in(top, R::R10);
                if t != R::R10 {
                    self.a.mov_rr(true, R::R10, t);
                }
                self.a.alu_ri(true, Alu::Sub, R::R10, size as i32);
                self.a.alu_rr(true, Alu::Cmp, R::R11, R::R10);
                self.a.jcc(Cond::A, bad, false);
            }
        }
    }

    /// Emits the access itself at `m`.
    fn emit_access(&mut self, acc: Access, m: Mem) {
        // A stored (or atomically added) r10 is its program value.
        let src_value = |cx: &mut Self, src: R| {
            if cx.opts.hide && src == MAP[10] {
                cx.virtual_r10(R::R10)
            } else {
                src
            }
        };
        match acc {
            Access::Load { w, signed, dst } => self.a.load(w, signed, dst, m),
            Access::Store { w, src } => {
                let src = src_value(self, src);
                self.a.store(w, m, src)
            }
            Access::StoreImm { w, imm } => match self.blinded_imm(w == W::B64, R::R10, imm) {
                Some(r) => self.a.store(w, m, r),
                None => self.a.store_imm(w, m, imm),
            },
            Access::Atomic { w64, imm, src } => {
                let src = src_value(self, src);
                self.atomic(w64, imm, src, m)
            }
        }
    }

    fn atomic(&mut self, w64: bool, imm: i32, s: R, m: Mem) {
        // The fetch loop and cmpxchg change rax: address through r11 if rax is the base.
        let m = if m.base == R::Rax || m.index == Some(R::Rax) {
            self.a.lea(R::R11, m);
            Mem::at(R::R11, 0)
        } else {
            m
        };
        let fetch = imm & ATOMIC_FETCH != 0;
        let op = match imm & !ATOMIC_FETCH {
            ATOMIC_ADD => Some(Alu::Add),
            ATOMIC_OR => Some(Alu::Or),
            ATOMIC_AND => Some(Alu::And),
            ATOMIC_XOR => Some(Alu::Xor),
            _ => None,
        };
        let a = &mut self.a;
        match (op, fetch) {
            (Some(op), false) => a.lock_alu_mr(w64, op, m, s),
            (Some(Alu::Add), true) => a.lock_xadd(w64, m, s),
            (Some(op), true) => {
                // No x86 instruction returns the old value of or/and/xor: cmpxchg loop.
                a.mov_rr(true, R::R10, R::Rax);
                let sv = if s == R::Rax { R::R10 } else { s };
                a.mov_load(w64, R::Rax, m);
                let again = a.label();
                a.bind(again);
                a.mov_rr(w64, R::R9, R::Rax);
                a.alu_rr(w64, op, R::R9, sv);
                a.lock_cmpxchg(w64, m, R::R9);
                a.jcc(Cond::Ne, again, true);
                if !w64 {
                    a.mov_rr(false, R::Rax, R::Rax);
                }
                if s != R::Rax {
                    a.mov_rr(true, s, R::Rax);
                    a.mov_rr(true, R::Rax, R::R10);
                }
            }
            (None, _) if imm == ATOMIC_XCHG => a.xchg_mr(w64, m, s),
            (None, _) => {
                a.lock_cmpxchg(w64, m, s);
                if !w64 {
                    // 32-bit cmpxchg leaves the upper half of rax alone when it succeeds.
                    a.mov_rr(false, R::Rax, R::Rax);
                }
            }
        }
    }
}

/// The last bounds check of JIT code: whether an access of `size_write & 0xff` bytes at
/// program address `addr` (a store or atomic if bit 8 is set) lies in an extra region of the
/// run's environment. Returns its host address if allowed (`addr` itself unless the
/// environment hides addresses), else 0.
pub(crate) extern "C" fn extra_region_check(
    hcx: &HelperContext<'_>,
    addr: u64,
    size_write: u64,
) -> u64 {
    let (n, write) = (size_write & 0xff, size_write & 0x100 != 0);
    let regions = &hcx.env().regions;
    if hcx.env().hides_addresses() {
        return crate::vaddr::extra_to_host(regions, addr, n, write).map_or(0, |(h, _)| h);
    }
    memory::find(regions, addr, n, write).map_or(0, |_| addr)
}
