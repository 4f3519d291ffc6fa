//! Arithmetic: `ALU` and `ALU64` instructions (RFC 9669 §4.1-4.3), with RFC semantics for
//! division and shifts, and immediates blinded when the option is on.

use super::super::x86::{Alu, Cond, Shift, R, W};
use super::{Cx, JitError};
use crate::insn::*;

impl Cx<'_> {
    pub(super) fn alu(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let w64 = i.class() == CLS_ALU64;
        let x = i.opc & SRC_X != 0;
        let op = i.opc & 0xf0;
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        let d = self.dst_w(pc, i)?;
        let s = if x {
            self.src_r(pc, i)?;
            // r10 as a value (virtual with hidden addresses), in a scratch the operation
            // leaves alone until it has read it.
            let scratch = if matches!(op, ALU_LSH | ALU_RSH | ALU_ARSH) {
                R::R10
            } else {
                R::R11
            };
            Some(self.value_of(i.src, scratch))
        } else {
            None
        };
        let simple = match op {
            ALU_ADD => Some(Alu::Add),
            ALU_SUB => Some(Alu::Sub),
            ALU_OR => Some(Alu::Or),
            ALU_AND => Some(Alu::And),
            ALU_XOR => Some(Alu::Xor),
            _ => None,
        };
        if let Some(op) = simple {
            match s {
                Some(s) => self.a.alu_rr(w64, op, d, s),
                None => match self.blinded_imm(w64, R::R10, i.imm) {
                    Some(r) => self.a.alu_rr(w64, op, d, r),
                    None => {
                        self.a.alu_ri(w64, op, d, i.imm);
                        self.imm_site(pc, i);
                    }
                },
            }
            return Ok(());
        }
        match op {
            ALU_MUL => match s {
                Some(s) => self.a.imul_rr(w64, d, s),
                None => match self.blinded_imm(w64, R::R10, i.imm) {
                    Some(r) => self.a.imul_rr(w64, d, r),
                    None => self.a.imul_ri(w64, d, i.imm),
                },
            },
            ALU_DIV | ALU_MOD => {
                let signed = match i.off {
                    0 => false,
                    1 => true,
                    _ => return Err(bad),
                };
                self.divmod(w64, signed, op == ALU_MOD, d, s, i.imm);
            }
            ALU_LSH | ALU_RSH | ALU_ARSH => {
                let sh = match op {
                    ALU_LSH => Shift::Shl,
                    ALU_RSH => Shift::Shr,
                    _ => Shift::Sar,
                };
                match s {
                    Some(s) => self.shift_reg(w64, sh, d, s),
                    None => {
                        // (A shift count is one byte below 64: not worth blinding.)
                        let n = (i.imm as u32 & if w64 { 63 } else { 31 }) as u8;
                        if n != 0 {
                            self.a.shift_ri(if w64 { W::B64 } else { W::B32 }, sh, d, n);
                        } else if !w64 {
                            self.a.mov_rr(false, d, d);
                        }
                    }
                }
            }
            ALU_NEG => {
                if x {
                    return Err(bad);
                }
                self.a.neg(w64, d);
            }
            ALU_MOV => match (s, i.off) {
                (None, 0) => {
                    self.mov_const(w64, d, i.imm);
                    if self.opts.blind.is_none() && i.imm != 0 {
                        // `mov r32, imm32` or `mov r64, sext(imm32)`.
                        self.imm_site(pc, i);
                    }
                }
                (Some(s), 0) => {
                    if !(w64 && s == d) {
                        self.a.mov_rr(w64, d, s);
                    }
                }
                (Some(s), 8) => self.a.movsx_rr(w64, d, s, W::B8),
                (Some(s), 16) => self.a.movsx_rr(w64, d, s, W::B16),
                (Some(s), 32) if w64 => self.a.movsx_rr(true, d, s, W::B32),
                _ => return Err(bad),
            },
            ALU_END => self.endian(w64, x, d, i.imm).ok_or(bad)?,
            _ => return Err(bad),
        }
        Ok(())
    }

    /// Byte-order conversions: ALU|K = to little endian (a truncation here), ALU|X = to big
    /// endian, ALU64|K = unconditional byte swap. `None` for an invalid combination.
    fn endian(&mut self, w64: bool, x: bool, d: R, bits: i32) -> Option<()> {
        let swap = match (w64, x) {
            (false, false) => false,
            (false, true) | (true, false) => true,
            (true, true) => return None,
        };
        let a = &mut self.a;
        match (bits, swap) {
            (16, false) => a.movzx16_rr(d, d),
            (32, false) => a.mov_rr(false, d, d),
            (64, false) => {}
            (16, true) => {
                a.shift_ri(W::B16, Shift::Ror, d, 8);
                a.movzx16_rr(d, d);
            }
            (32, true) => a.bswap(false, d),
            (64, true) => a.bswap(true, d),
            _ => return None,
        }
        Some(())
    }

    /// Shift of `d` by register `s` (count masked by the hardware exactly as RFC 9669 masks it).
    fn shift_reg(&mut self, w64: bool, sh: Shift, d: R, s: R) {
        let a = &mut self.a;
        if s == R::Rcx {
            a.shift_cl(w64, sh, d);
            if !w64 {
                a.mov_rr(false, d, d);
            }
            return;
        }
        a.mov_rr(true, R::R11, R::Rcx);
        a.mov_rr(false, R::Rcx, s);
        if d == R::Rcx {
            a.shift_cl(w64, sh, R::R11);
            a.mov_rr(w64, R::Rcx, R::R11);
        } else {
            a.shift_cl(w64, sh, d);
            a.mov_rr(true, R::Rcx, R::R11);
            if !w64 {
                // A 32-bit shift by a masked count of 0 is architecturally allowed to leave
                // the destination unwritten; make the zero-extension explicit.
                a.mov_rr(false, d, d);
            }
        }
    }

    /// Division and modulo without any trap: x / 0 = 0, x % 0 = x (its low half for 32-bit),
    /// signed MIN / -1 = MIN and MIN % -1 = 0 (wrapping), as RFC 9669 and the interpreter.
    fn divmod(&mut self, w64: bool, signed: bool, is_mod: bool, d: R, s: Option<R>, imm: i32) {
        if s.is_none() {
            if imm == 0 {
                if is_mod {
                    if !w64 {
                        self.a.mov_rr(false, d, d);
                    }
                } else {
                    self.a.mov_imm32(d, 0);
                }
                return;
            }
            if signed && imm == -1 {
                if is_mod {
                    self.a.mov_imm32(d, 0);
                } else {
                    self.a.neg(w64, d);
                }
                return;
            }
        }
        // r9 = divisor, r10/r11 = saved rax/rdx, rax = dividend.
        match s {
            Some(s) => self.a.mov_rr(w64, R::R9, s),
            None => self.mov_const(w64, R::R9, imm),
        }
        let a = &mut self.a;
        if d != R::Rax {
            a.mov_rr(true, R::R10, R::Rax);
            a.mov_rr(true, R::Rax, d);
        }
        if d != R::Rdx {
            a.mov_rr(true, R::R11, R::Rdx);
        }
        let done = a.label();
        let zero = a.label();
        if s.is_some() {
            a.test_rr(w64, R::R9, R::R9);
            a.jcc(Cond::E, zero, false);
            if signed {
                let normal = a.label();
                a.alu_ri(w64, Alu::Cmp, R::R9, -1);
                a.jcc(Cond::Ne, normal, true);
                if is_mod {
                    a.mov_imm32(R::Rax, 0);
                } else {
                    a.neg(w64, R::Rax);
                }
                a.jmp(done, false);
                a.bind(normal);
            }
        }
        if signed {
            a.cqo(w64);
        } else {
            a.mov_imm32(R::Rdx, 0);
        }
        a.div(w64, signed, R::R9);
        if is_mod {
            a.mov_rr(w64, R::Rax, R::Rdx);
        }
        if s.is_some() {
            a.jmp(done, true);
            a.bind(zero);
            if is_mod {
                if !w64 {
                    a.mov_rr(false, R::Rax, R::Rax);
                }
            } else {
                a.mov_imm32(R::Rax, 0);
            }
        }
        a.bind(done);
        // Result in rax; move it to d and restore what d is not.
        match d {
            R::Rax => a.mov_rr(true, R::Rdx, R::R11),
            R::Rdx => {
                a.mov_rr(true, R::Rdx, R::Rax);
                a.mov_rr(true, R::Rax, R::R10);
            }
            _ => {
                a.mov_rr(true, d, R::Rax);
                a.mov_rr(true, R::Rax, R::R10);
                a.mov_rr(true, R::Rdx, R::R11);
            }
        }
    }
}
