//! Control flow: jumps, `exit`, helper calls (`call`, `callx`, the unwind helper) and local
//! calls with their frames and depth limit.

use super::super::analysis::MERGED_JA;
use super::super::x86::{Alu, Cond, Mem, R};
use super::layout::Regs;
use super::{Cx, JitError, FAULT_CALLX, FAULT_DEPTH, MAP};
use crate::context::{HCTX_FRAME, HCTX_STOP};
use crate::helpers::Helper;
use crate::insn::*;

impl Cx<'_> {
    pub(super) fn jmp(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let j32 = i.class() == CLS_JMP32;
        let x = i.opc & SRC_X != 0;
        let op = i.opc & 0xf0;
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        match op {
            JMP_JA => {
                if x {
                    return Err(bad);
                }
                let rel = if j32 { i.imm as i64 } else { i.off as i64 };
                let t = self.target(pc, rel)?;
                if rel != 0 {
                    let merged = self.an.flags(pc) & MERGED_JA != 0;
                    let l = if merged {
                        self.charged_label(t)
                    } else {
                        self.pc_label(t)
                    };
                    let near = self.an.near(pc, t, merged);
                    self.a.jmp(l, near);
                }
                return Ok(());
            }
            JMP_CALL if !j32 => return self.call(pc, i),
            JMP_EXIT if !j32 => {
                if x {
                    return Err(bad);
                }
                if self.an.usage.calls {
                    self.a.ret();
                } else {
                    self.exit_program();
                }
                return Ok(());
            }
            _ => {}
        }
        let cond = match op {
            JMP_JEQ => Cond::E,
            JMP_JNE => Cond::Ne,
            JMP_JGT => Cond::A,
            JMP_JGE => Cond::Ae,
            JMP_JLT => Cond::B,
            JMP_JLE => Cond::Be,
            JMP_JSGT => Cond::G,
            JMP_JSGE => Cond::Ge,
            JMP_JSLT => Cond::L,
            JMP_JSLE => Cond::Le,
            JMP_JSET => Cond::Ne,
            _ => return Err(bad),
        };
        self.dst_r(pc, i)?;
        if x {
            self.src_r(pc, i)?;
        }
        let t = self.target(pc, i.off as i64)?;
        // Operands as values (r10 virtual with hidden addresses: dst in r10, src in r11).
        let d = self.value_of(i.dst, R::R10);
        let s = if x {
            Some(if i.src == i.dst {
                d
            } else {
                self.value_of(i.src, R::R11)
            })
        } else {
            None
        };
        let w64 = !j32;
        let s = match s {
            Some(s) => Some(s),
            None => self.blinded_imm(w64, R::R11, i.imm),
        };
        let a = &mut self.a;
        match (op == JMP_JSET, s) {
            (false, Some(s)) => a.alu_rr(w64, Alu::Cmp, d, s),
            (false, None) => {
                a.alu_ri(w64, Alu::Cmp, d, i.imm);
                self.imm_site(pc, i);
            }
            (true, Some(s)) => a.test_rr(w64, d, s),
            (true, None) => {
                a.test_ri(w64, d, i.imm);
                self.imm_site(pc, i);
            }
        }
        let l = self.pc_label(t);
        let near = self.an.near(pc, t, false);
        self.a.jcc(cond, l, near);
        Ok(())
    }

    fn call(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        if i.opc == CALLX {
            self.dst_r(pc, i)?;
            let r = self.value_of(i.dst, R::R11);
            return self.callx(pc, r);
        }
        match i.src {
            CALL_HELPER => {
                let id = i.imm as u32;
                let f = self
                    .helpers
                    .get(id)
                    .ok_or(JitError::UnknownHelper { pc, id })?;
                self.call_helper(id, f);
                Ok(())
            }
            CALL_LOCAL => {
                let t = self.target(pc, i.imm as i64)?;
                self.call_local(pc, t);
                Ok(())
            }
            _ => Err(bad),
        }
    }

    /// `call local` to slot `t`: check the depth, save r6-r9 in use and r10, enter a fresh
    /// zeroed frame.
    fn call_local(&mut self, pc: usize, t: usize) {
        let u = self.an.usage;
        // Without a stack window no frame can be read: nothing to zero.
        let zero = u.stack.then(|| match self.zero_frame {
            Some(l) => l,
            None => {
                let l = self.a.label();
                self.zero_frame = Some(l);
                l
            }
        });
        // Saved for the caller: r6-r9 in use and r10; an odd count of pushes keeps the
        // callee's native stack 16-byte aligned (with the return address).
        let mut saved = Regs::default();
        for (r, &x) in MAP.iter().enumerate().take(10).skip(6) {
            if u.has(r) {
                saved.push(x);
            }
        }
        saved.push(MAP[10]);
        if saved.len().is_multiple_of(2) {
            saved.push(R::R11); // padding (scratch)
        }
        // One more frame must fit: r10 - 512 >= the deepest r10 (r10 moves in 512s).
        match self.lay.depth_limit {
            Some(dl) => {
                let r = self.value_in(dl, R::R11);
                self.a.alu_rr(true, Alu::Cmp, MAP[10], r);
            }
            None => {
                // r10 of the deepest frame: top - (depth - 1) * 512, top = NO_STACK + size.
                let deepest = super::NO_STACK + STACK_FRAME_SIZE as u64;
                self.a.alu_ri(true, Alu::Cmp, MAP[10], deepest as i32);
            }
        }
        let end = self.a.jcc_out(Cond::Be);
        self.stub(end, pc, FAULT_DEPTH);
        for &r in saved.as_slice() {
            self.a.push(r);
        }
        self.a
            .alu_ri(true, Alu::Sub, MAP[10], STACK_FRAME_SIZE as i32);
        if let Some(zero) = zero {
            self.a.call_label(zero);
        }
        let l = self.pc_label(t);
        self.a.call_label(l);
        for &r in saved.as_slice().iter().rev() {
            self.a.pop(r);
        }
    }

    /// Calls helper `f` with r1-r5 as arguments; r0 = result, r1-r5 kept (saved around the
    /// call: six pushes keep the native stack 16-byte aligned). A context helper also gets
    /// the `HelperContext` in r9, with its `frame` set to r10 first when the program has a
    /// stack, and a non-zero `stop` word after it returns ends the program like the unwind
    /// helper ([`crate::context`]).
    fn call_helper(&mut self, id: u32, f: Helper) {
        const ARGS: [R; 5] = [MAP[1], MAP[2], MAP[3], MAP[4], MAP[5]];
        for r in ARGS {
            self.a.push(r);
        }
        self.a.push(MAP[5]);
        let env = self.lay.env.filter(|_| f.takes_context());
        if let Some(env) = env {
            let r = self.value_in(env, R::R9);
            if r != R::R9 {
                self.a.mov_rr(true, R::R9, r);
            }
            if self.an.usage.stack {
                let frame = self.value_of(FRAME_REG, R::R11);
                self.a.mov_mr(Mem::at(R::R9, HCTX_FRAME), frame);
            }
        }
        self.a.call_abs(f.addr());
        self.a.pop(R::R9);
        for r in ARGS.iter().rev() {
            self.a.pop(*r);
        }
        let unwind = self.helpers.unwind() == Some(id);
        if !unwind && env.is_none() {
            return;
        }
        let l = match self.unwind {
            Some(l) => l,
            None => {
                let l = self.a.label();
                self.unwind = Some(l);
                l
            }
        };
        if unwind {
            self.a.test_rr(true, R::Rax, R::Rax);
            self.a.jcc(Cond::E, l, false);
        }
        if let Some(env) = env {
            let r = self.value_in(env, R::R9);
            self.a.alu_mi(Alu::Cmp, Mem::at(r, HCTX_STOP), 0);
            self.a.jcc(Cond::Ne, l, false);
        }
    }

    /// `callx`: the helper id is the low 32 bits of register `r`; dispatch over the registry.
    fn callx(&mut self, pc: usize, r: R) -> Result<(), JitError> {
        let done = self.a.label();
        self.a.mov_rr(false, R::R11, r);
        let helpers = self.helpers;
        for (id, f) in helpers.iter() {
            let next = self.a.label();
            self.a.alu_ri(false, Alu::Cmp, R::R11, id as i32);
            self.a.jcc(Cond::Ne, next, false);
            self.call_helper(id, f);
            self.a.jmp(done, false);
            self.a.bind(next);
        }
        // Detail: the id.
        self.a.mov_rr(true, R::Rax, R::R11);
        self.fault_here(pc, FAULT_CALLX);
        self.a.bind(done);
        Ok(())
    }
}
