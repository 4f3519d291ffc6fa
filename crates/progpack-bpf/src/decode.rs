//! Typed instructions: the decoded form of raw [`Insn`] slots, and back.
//!
//! [`decode_at`] turns the slot at `pc` (and, for `lddw`, the one after it) into an [`Instr`],
//! rejecting unknown opcodes and non-zero reserved fields with a [`CheckError`].
//! [`Instr::encode`] is its exact inverse: for every `Ok(i)` from `decode_at`,
//! `decode_at(&i.encode(), 0) == Ok(i)`, and the encoding equals the slots decoded.
//!
//! Decoding looks at one instruction only; control flow (jump targets, calls, the end of the
//! program) is checked in [`crate::check`].

use crate::check::CheckError;
use crate::insn::*;

/// Operand width of arithmetic, jumps and atomics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// 32-bit: operands are the low halves, results are zero-extended.
    W32,
    /// 64-bit.
    W64,
}

/// Memory access size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte.
    B,
    /// 2 bytes.
    H,
    /// 4 bytes.
    W,
    /// 8 bytes.
    DW,
}

impl Size {
    /// Size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }

    const fn bits(self) -> u8 {
        match self {
            Size::B => SIZE_B,
            Size::H => SIZE_H,
            Size::W => SIZE_W,
            Size::DW => SIZE_DW,
        }
    }

    const fn from_bits(opc: u8) -> Size {
        match opc & 0x18 {
            SIZE_B => Size::B,
            SIZE_H => Size::H,
            SIZE_W => Size::W,
            _ => Size::DW,
        }
    }

    /// Mnemonic suffix (`b`, `h`, `w`, `dw`).
    pub const fn suffix(self) -> &'static str {
        match self {
            Size::B => "b",
            Size::H => "h",
            Size::W => "w",
            Size::DW => "dw",
        }
    }
}

/// Second operand of arithmetic and conditional jumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    /// A register (`BPF_X`).
    Reg(u8),
    /// The 32-bit immediate (`BPF_K`), sign-extended to 64 bits where the width is 64.
    Imm(i32),
}

/// Two-operand arithmetic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// unsigned `/` (x / 0 = 0)
    Div,
    /// signed `/` (x / 0 = 0), `off = 1`
    SDiv,
    /// `|`
    Or,
    /// `&`
    And,
    /// `<<` (shift amount masked to the width)
    Lsh,
    /// logical `>>`
    Rsh,
    /// unsigned `%` (x % 0 = x)
    Mod,
    /// signed `%` (x % 0 = x), `off = 1`
    SMod,
    /// `^`
    Xor,
    /// copy
    Mov,
    /// copy with sign extension from the low 8, 16 or 32 bits (`off` = bits, register source)
    MovSx(u8),
    /// arithmetic `>>`
    Arsh,
}

/// Byte-order operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndOp {
    /// Convert to little endian (`le16/32/64`; on x86 a truncation).
    Le,
    /// Convert to big endian (`be16/32/64`).
    Be,
    /// Unconditional byte swap (`bswap16/32/64`, ALU64 class).
    Swap,
}

/// Conditions of conditional jumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// `==`
    Eq,
    /// unsigned `>`
    Gt,
    /// unsigned `>=`
    Ge,
    /// `& != 0`
    Set,
    /// `!=`
    Ne,
    /// signed `>`
    Sgt,
    /// signed `>=`
    Sge,
    /// unsigned `<`
    Lt,
    /// unsigned `<=`
    Le,
    /// signed `<`
    Slt,
    /// signed `<=`
    Sle,
}

/// Atomic read-modify-write operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// `+=`
    Add,
    /// `|=`
    Or,
    /// `&=`
    And,
    /// `^=`
    Xor,
    /// exchange (always fetches)
    Xchg,
    /// compare with r0 and exchange (always fetches into r0)
    CmpXchg,
}

/// One decoded instruction. Register fields are validated (0..=10) by [`decode_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instr {
    /// `dst = dst op src`
    Alu {
        /// Operand width.
        width: Width,
        /// Operation.
        op: AluOp,
        /// Destination (and first operand).
        dst: u8,
        /// Second operand.
        src: Src,
    },
    /// `dst = -dst`
    Neg {
        /// Operand width.
        width: Width,
        /// Register.
        dst: u8,
    },
    /// Byte order conversion of the low `bits` bits (zero-extending the result).
    End {
        /// Which conversion.
        op: EndOp,
        /// 16, 32 or 64.
        bits: u8,
        /// Register.
        dst: u8,
    },
    /// `dst = imm64` (two slots).
    Lddw {
        /// Destination.
        dst: u8,
        /// The 64-bit immediate.
        imm: u64,
    },
    /// The second slot of an `lddw`: never executed, never a jump target.
    LddwHi,
    /// `dst = *(size *)(base + off)`, sign-extended when `signed` (MEMSX).
    Load {
        /// Access size.
        size: Size,
        /// Sign-extending load.
        signed: bool,
        /// Destination register.
        dst: u8,
        /// Base address register.
        base: u8,
        /// Offset from the base.
        off: i16,
    },
    /// `*(size *)(base + off) = imm` (truncated to the size; `stdw` sign-extends).
    StoreImm {
        /// Access size.
        size: Size,
        /// Base address register.
        base: u8,
        /// Offset from the base.
        off: i16,
        /// Value.
        imm: i32,
    },
    /// `*(size *)(base + off) = src`
    StoreReg {
        /// Access size.
        size: Size,
        /// Base address register.
        base: u8,
        /// Offset from the base.
        off: i16,
        /// Value register.
        src: u8,
    },
    /// Atomic read-modify-write of `*(base + off)`.
    Atomic {
        /// 32- or 64-bit access.
        width: Width,
        /// Operation.
        op: AtomicOp,
        /// Return the old value in `src` (always true for xchg and cmpxchg).
        fetch: bool,
        /// Base address register.
        base: u8,
        /// Offset from the base.
        off: i16,
        /// Operand register.
        src: u8,
    },
    /// Unconditional jump to `pc + 1 + off` (`ja` with a 16-bit offset, `ja32`/`gotol` with a
    /// 32-bit one).
    Ja {
        /// Relative target.
        off: i32,
        /// Encoded as JMP32 `ja32` (offset in `imm`).
        long: bool,
    },
    /// Conditional jump to `pc + 1 + off`.
    Jcc {
        /// 64-bit (JMP) or 32-bit (JMP32) comparison.
        width: Width,
        /// Condition.
        cond: Cond,
        /// First operand.
        dst: u8,
        /// Second operand.
        src: Src,
        /// Relative target.
        off: i16,
    },
    /// Call helper `id`.
    Call {
        /// Helper id.
        id: u32,
    },
    /// bpf-to-bpf call of the function at `pc + 1 + off`, with a fresh stack frame.
    CallLocal {
        /// Relative target.
        off: i32,
    },
    /// Call the helper whose id is in register `reg` (low 32 bits).
    Callx {
        /// Register holding the helper id.
        reg: u8,
    },
    /// Return from the current function, or end the program with r0.
    Exit,
}

impl Instr {
    /// Number of slots this instruction occupies (2 for `lddw`, else 1).
    pub const fn slots(&self) -> usize {
        match self {
            Instr::Lddw { .. } => 2,
            _ => 1,
        }
    }

    /// Registers this instruction writes (at most two: the destination and, for fetching
    /// atomics, the source or r0).
    pub fn written_regs(&self) -> [Option<u8>; 2] {
        match *self {
            Instr::Alu { dst, .. }
            | Instr::Neg { dst, .. }
            | Instr::End { dst, .. }
            | Instr::Lddw { dst, .. }
            | Instr::Load { dst, .. } => [Some(dst), None],
            Instr::Atomic {
                op: AtomicOp::CmpXchg,
                ..
            } => [Some(0), None],
            Instr::Atomic {
                fetch: true, src, ..
            } => [Some(src), None],
            Instr::Call { .. } | Instr::Callx { .. } => [Some(0), None],
            _ => [None, None],
        }
    }

    /// Relative jump or call target (`pc + 1 + off`), for instructions that have one.
    pub fn branch_offset(&self) -> Option<i64> {
        match *self {
            Instr::Ja { off, .. } | Instr::CallLocal { off } => Some(off as i64),
            Instr::Jcc { off, .. } => Some(off as i64),
            _ => None,
        }
    }

    /// Encodes the instruction into its slots (two for `lddw`).
    pub fn encode(&self) -> Vec<Insn> {
        let one = |opc, dst, src, off, imm| vec![Insn::new(opc, dst, src, off, imm)];
        let cls_alu = |w| if w == Width::W64 { CLS_ALU64 } else { CLS_ALU };
        let cls_jmp = |w| if w == Width::W64 { CLS_JMP } else { CLS_JMP32 };
        match *self {
            Instr::Alu {
                width,
                op,
                dst,
                src,
            } => {
                let (code, off) = match op {
                    AluOp::Add => (ALU_ADD, 0),
                    AluOp::Sub => (ALU_SUB, 0),
                    AluOp::Mul => (ALU_MUL, 0),
                    AluOp::Div => (ALU_DIV, 0),
                    AluOp::SDiv => (ALU_DIV, 1),
                    AluOp::Or => (ALU_OR, 0),
                    AluOp::And => (ALU_AND, 0),
                    AluOp::Lsh => (ALU_LSH, 0),
                    AluOp::Rsh => (ALU_RSH, 0),
                    AluOp::Mod => (ALU_MOD, 0),
                    AluOp::SMod => (ALU_MOD, 1),
                    AluOp::Xor => (ALU_XOR, 0),
                    AluOp::Mov => (ALU_MOV, 0),
                    AluOp::MovSx(bits) => (ALU_MOV, bits as i16),
                    AluOp::Arsh => (ALU_ARSH, 0),
                };
                match src {
                    Src::Reg(r) => one(cls_alu(width) | code | SRC_X, dst, r, off, 0),
                    Src::Imm(imm) => one(cls_alu(width) | code | SRC_K, dst, 0, off, imm),
                }
            }
            Instr::Neg { width, dst } => one(cls_alu(width) | ALU_NEG, dst, 0, 0, 0),
            Instr::End { op, bits, dst } => {
                let opc = match op {
                    EndOp::Le => CLS_ALU | ALU_END | SRC_K,
                    EndOp::Be => CLS_ALU | ALU_END | SRC_X,
                    EndOp::Swap => CLS_ALU64 | ALU_END | SRC_K,
                };
                one(opc, dst, 0, 0, bits as i32)
            }
            Instr::Lddw { dst, imm } => vec![
                Insn::new(LD_DW_IMM, dst, 0, 0, imm as u32 as i32),
                Insn::new(0, 0, 0, 0, (imm >> 32) as u32 as i32),
            ],
            Instr::LddwHi => one(0, 0, 0, 0, 0),
            Instr::Load {
                size,
                signed,
                dst,
                base,
                off,
            } => {
                let mode = if signed { MODE_MEMSX } else { MODE_MEM };
                one(CLS_LDX | mode | size.bits(), dst, base, off, 0)
            }
            Instr::StoreImm {
                size,
                base,
                off,
                imm,
            } => one(CLS_ST | MODE_MEM | size.bits(), base, 0, off, imm),
            Instr::StoreReg {
                size,
                base,
                off,
                src,
            } => one(CLS_STX | MODE_MEM | size.bits(), base, src, off, 0),
            Instr::Atomic {
                width,
                op,
                fetch,
                base,
                off,
                src,
            } => {
                let size = if width == Width::W64 { SIZE_DW } else { SIZE_W };
                let imm = match op {
                    AtomicOp::Add => ATOMIC_ADD,
                    AtomicOp::Or => ATOMIC_OR,
                    AtomicOp::And => ATOMIC_AND,
                    AtomicOp::Xor => ATOMIC_XOR,
                    AtomicOp::Xchg => ATOMIC_XCHG,
                    AtomicOp::CmpXchg => ATOMIC_CMPXCHG,
                } | if fetch { ATOMIC_FETCH } else { 0 };
                one(CLS_STX | MODE_ATOMIC | size, base, src, off, imm)
            }
            Instr::Ja { off, long: false } => one(CLS_JMP | JMP_JA, 0, 0, off as i16, 0),
            Instr::Ja { off, long: true } => one(CLS_JMP32 | JMP_JA, 0, 0, 0, off),
            Instr::Jcc {
                width,
                cond,
                dst,
                src,
                off,
            } => {
                let code = match cond {
                    Cond::Eq => JMP_JEQ,
                    Cond::Gt => JMP_JGT,
                    Cond::Ge => JMP_JGE,
                    Cond::Set => JMP_JSET,
                    Cond::Ne => JMP_JNE,
                    Cond::Sgt => JMP_JSGT,
                    Cond::Sge => JMP_JSGE,
                    Cond::Lt => JMP_JLT,
                    Cond::Le => JMP_JLE,
                    Cond::Slt => JMP_JSLT,
                    Cond::Sle => JMP_JSLE,
                };
                match src {
                    Src::Reg(r) => one(cls_jmp(width) | code | SRC_X, dst, r, off, 0),
                    Src::Imm(imm) => one(cls_jmp(width) | code | SRC_K, dst, 0, off, imm),
                }
            }
            Instr::Call { id } => one(CALL, 0, CALL_HELPER, 0, id as i32),
            Instr::CallLocal { off } => one(CALL, 0, CALL_LOCAL, 0, off),
            Instr::Callx { reg } => one(CALLX, reg, 0, 0, 0),
            Instr::Exit => one(EXIT, 0, 0, 0, 0),
        }
    }
}

fn reg(pc: usize, r: u8) -> Result<u8, CheckError> {
    if r as usize >= NUM_REGS {
        Err(CheckError::BadRegister { pc, reg: r })
    } else {
        Ok(r)
    }
}

fn zero(pc: usize, field: &'static str, value: i64) -> Result<(), CheckError> {
    if value != 0 {
        Err(CheckError::ReservedField { pc, field, value })
    } else {
        Ok(())
    }
}

fn jmp_cond(code: u8) -> Option<Cond> {
    Some(match code {
        JMP_JEQ => Cond::Eq,
        JMP_JGT => Cond::Gt,
        JMP_JGE => Cond::Ge,
        JMP_JSET => Cond::Set,
        JMP_JNE => Cond::Ne,
        JMP_JSGT => Cond::Sgt,
        JMP_JSGE => Cond::Sge,
        JMP_JLT => Cond::Lt,
        JMP_JLE => Cond::Le,
        JMP_JSLT => Cond::Slt,
        JMP_JSLE => Cond::Sle,
        _ => return None,
    })
}

/// Decodes the instruction whose first slot is `slots[pc]`.
///
/// Checks the opcode, reserved fields and register numbers (0..=10); does not check that r10
/// is not written, nor any jump target (see [`crate::check`]). For `lddw`, the second slot
/// must exist and have all fields but `imm` zero.
pub fn decode_at(slots: &[Insn], pc: usize) -> Result<Instr, CheckError> {
    let Some(&i) = slots.get(pc) else {
        return Err(CheckError::TruncatedLddw { pc });
    };
    let unknown = Err(CheckError::UnknownOpcode { pc, opc: i.opc });
    let src_x = i.opc & SRC_X != 0;
    match i.class() {
        CLS_ALU | CLS_ALU64 => {
            let width = if i.class() == CLS_ALU64 {
                Width::W64
            } else {
                Width::W32
            };
            let code = i.opc & 0xf0;
            let dst = reg(pc, i.dst)?;
            if code == ALU_NEG {
                if src_x {
                    return unknown;
                }
                zero(pc, "src", i.src as i64)?;
                zero(pc, "off", i.off as i64)?;
                zero(pc, "imm", i.imm as i64)?;
                return Ok(Instr::Neg { width, dst });
            }
            if code == ALU_END {
                let op = match (width, src_x) {
                    (Width::W32, false) => EndOp::Le,
                    (Width::W32, true) => EndOp::Be,
                    (Width::W64, false) => EndOp::Swap,
                    (Width::W64, true) => return unknown,
                };
                zero(pc, "src", i.src as i64)?;
                zero(pc, "off", i.off as i64)?;
                if !matches!(i.imm, 16 | 32 | 64) {
                    return Err(CheckError::InvalidField {
                        pc,
                        field: "imm",
                        value: i.imm as i64,
                    });
                }
                return Ok(Instr::End {
                    op,
                    bits: i.imm as u8,
                    dst,
                });
            }
            let bad_off = Err(CheckError::InvalidField {
                pc,
                field: "off",
                value: i.off as i64,
            });
            let op = match (code, i.off) {
                (ALU_ADD, 0) => AluOp::Add,
                (ALU_SUB, 0) => AluOp::Sub,
                (ALU_MUL, 0) => AluOp::Mul,
                (ALU_DIV, 0) => AluOp::Div,
                (ALU_DIV, 1) => AluOp::SDiv,
                (ALU_OR, 0) => AluOp::Or,
                (ALU_AND, 0) => AluOp::And,
                (ALU_LSH, 0) => AluOp::Lsh,
                (ALU_RSH, 0) => AluOp::Rsh,
                (ALU_MOD, 0) => AluOp::Mod,
                (ALU_MOD, 1) => AluOp::SMod,
                (ALU_XOR, 0) => AluOp::Xor,
                (ALU_MOV, 0) => AluOp::Mov,
                (ALU_MOV, 8 | 16) if src_x => AluOp::MovSx(i.off as u8),
                (ALU_MOV, 32) if src_x && width == Width::W64 => AluOp::MovSx(32),
                (ALU_ARSH, 0) => AluOp::Arsh,
                (ALU_ADD | ALU_SUB | ALU_MUL | ALU_DIV | ALU_OR | ALU_AND | ALU_LSH, _)
                | (ALU_RSH | ALU_MOD | ALU_XOR | ALU_MOV | ALU_ARSH, _) => return bad_off,
                _ => return unknown,
            };
            let src = if src_x {
                zero(pc, "imm", i.imm as i64)?;
                Src::Reg(reg(pc, i.src)?)
            } else {
                zero(pc, "src", i.src as i64)?;
                Src::Imm(i.imm)
            };
            Ok(Instr::Alu {
                width,
                op,
                dst,
                src,
            })
        }
        CLS_JMP | CLS_JMP32 => {
            let width = if i.class() == CLS_JMP {
                Width::W64
            } else {
                Width::W32
            };
            let code = i.opc & 0xf0;
            match code {
                JMP_JA => {
                    if src_x {
                        return unknown;
                    }
                    zero(pc, "dst", i.dst as i64)?;
                    zero(pc, "src", i.src as i64)?;
                    if width == Width::W64 {
                        zero(pc, "imm", i.imm as i64)?;
                        Ok(Instr::Ja {
                            off: i.off as i32,
                            long: false,
                        })
                    } else {
                        zero(pc, "off", i.off as i64)?;
                        Ok(Instr::Ja {
                            off: i.imm,
                            long: true,
                        })
                    }
                }
                JMP_CALL if width == Width::W64 => {
                    zero(pc, "off", i.off as i64)?;
                    if src_x {
                        zero(pc, "src", i.src as i64)?;
                        zero(pc, "imm", i.imm as i64)?;
                        return Ok(Instr::Callx {
                            reg: reg(pc, i.dst)?,
                        });
                    }
                    zero(pc, "dst", i.dst as i64)?;
                    match i.src {
                        CALL_HELPER => Ok(Instr::Call { id: i.imm as u32 }),
                        CALL_LOCAL => Ok(Instr::CallLocal { off: i.imm }),
                        other => Err(CheckError::InvalidField {
                            pc,
                            field: "src",
                            value: other as i64,
                        }),
                    }
                }
                JMP_EXIT if width == Width::W64 && !src_x => {
                    zero(pc, "dst", i.dst as i64)?;
                    zero(pc, "src", i.src as i64)?;
                    zero(pc, "off", i.off as i64)?;
                    zero(pc, "imm", i.imm as i64)?;
                    Ok(Instr::Exit)
                }
                _ => {
                    let Some(cond) = jmp_cond(code) else {
                        return unknown;
                    };
                    let dst = reg(pc, i.dst)?;
                    let src = if src_x {
                        zero(pc, "imm", i.imm as i64)?;
                        Src::Reg(reg(pc, i.src)?)
                    } else {
                        zero(pc, "src", i.src as i64)?;
                        Src::Imm(i.imm)
                    };
                    Ok(Instr::Jcc {
                        width,
                        cond,
                        dst,
                        src,
                        off: i.off,
                    })
                }
            }
        }
        CLS_LD => {
            if i.opc != LD_DW_IMM {
                // Legacy packet access (ABS/IND) and other LD modes are not supported.
                return unknown;
            }
            let dst = reg(pc, i.dst)?;
            if i.src != 0 {
                // src 1..=6 are map/BTF pseudo loads, which need a loader with maps.
                return Err(CheckError::InvalidField {
                    pc,
                    field: "src",
                    value: i.src as i64,
                });
            }
            zero(pc, "off", i.off as i64)?;
            let Some(&hi) = slots.get(pc + 1) else {
                return Err(CheckError::TruncatedLddw { pc });
            };
            if hi.opc != 0 || hi.dst != 0 || hi.src != 0 || hi.off != 0 {
                return Err(CheckError::BadLddwSecondSlot { pc: pc + 1 });
            }
            Ok(Instr::Lddw {
                dst,
                imm: (i.imm as u32 as u64) | ((hi.imm as u32 as u64) << 32),
            })
        }
        CLS_LDX => {
            let size = Size::from_bits(i.opc);
            let signed = match i.opc & 0xe0 {
                MODE_MEM => false,
                MODE_MEMSX if size != Size::DW => true,
                _ => return unknown,
            };
            zero(pc, "imm", i.imm as i64)?;
            Ok(Instr::Load {
                size,
                signed,
                dst: reg(pc, i.dst)?,
                base: reg(pc, i.src)?,
                off: i.off,
            })
        }
        CLS_ST => {
            if i.opc & 0xe0 != MODE_MEM {
                return unknown;
            }
            zero(pc, "src", i.src as i64)?;
            Ok(Instr::StoreImm {
                size: Size::from_bits(i.opc),
                base: reg(pc, i.dst)?,
                off: i.off,
                imm: i.imm,
            })
        }
        _ => {
            // CLS_STX
            let size = Size::from_bits(i.opc);
            match i.opc & 0xe0 {
                MODE_MEM => {
                    zero(pc, "imm", i.imm as i64)?;
                    Ok(Instr::StoreReg {
                        size,
                        base: reg(pc, i.dst)?,
                        off: i.off,
                        src: reg(pc, i.src)?,
                    })
                }
                MODE_ATOMIC if matches!(size, Size::W | Size::DW) => {
                    let width = if size == Size::DW {
                        Width::W64
                    } else {
                        Width::W32
                    };
                    let fetch = i.imm & ATOMIC_FETCH != 0;
                    let op = match i.imm {
                        x if x & !ATOMIC_FETCH == ATOMIC_ADD => AtomicOp::Add,
                        x if x & !ATOMIC_FETCH == ATOMIC_OR => AtomicOp::Or,
                        x if x & !ATOMIC_FETCH == ATOMIC_AND => AtomicOp::And,
                        x if x & !ATOMIC_FETCH == ATOMIC_XOR => AtomicOp::Xor,
                        ATOMIC_XCHG => AtomicOp::Xchg,
                        ATOMIC_CMPXCHG => AtomicOp::CmpXchg,
                        other => {
                            return Err(CheckError::InvalidField {
                                pc,
                                field: "imm",
                                value: other as i64,
                            });
                        }
                    };
                    Ok(Instr::Atomic {
                        width,
                        op,
                        fetch,
                        base: reg(pc, i.dst)?,
                        off: i.off,
                        src: reg(pc, i.src)?,
                    })
                }
                _ => unknown,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_byte_decodes_or_errors_and_round_trips() {
        // All 256 opcodes with a few field patterns: decoding never panics, and whatever
        // decodes re-encodes to the same slots.
        for opc in 0..=255u8 {
            for (dst, src, off, imm) in [
                (0, 0, 0, 0),
                (1, 2, 0, 0),
                (1, 0, 1, 0),
                (3, 4, 8, 0),
                (2, 0, 0, 16),
                (0, 1, 0, 7),
                (5, 0, 3, -1),
                (10, 10, 32, 64),
                (11, 0, 0, 0),
            ] {
                let slots = [Insn::new(opc, dst, src, off, imm), Insn::new(0, 0, 0, 0, 9)];
                if let Ok(i) = decode_at(&slots, 0) {
                    let enc = i.encode();
                    assert_eq!(&enc[..], &slots[..i.slots()], "{i:?}");
                }
            }
        }
    }

    #[test]
    fn rejects_reserved_fields_and_bad_registers() {
        let add_k_with_src = [Insn::new(CLS_ALU64 | ALU_ADD, 1, 2, 0, 5)];
        assert!(matches!(
            decode_at(&add_k_with_src, 0),
            Err(CheckError::ReservedField { field: "src", .. })
        ));
        let bad_reg = [Insn::new(CLS_ALU64 | ALU_MOV, 11, 0, 0, 5)];
        assert_eq!(
            decode_at(&bad_reg, 0),
            Err(CheckError::BadRegister { pc: 0, reg: 11 })
        );
        let movsx32_in_alu32 = [Insn::new(CLS_ALU | ALU_MOV | SRC_X, 1, 2, 32, 0)];
        assert!(decode_at(&movsx32_in_alu32, 0).is_err());
        let lddw_alone = [Insn::new(LD_DW_IMM, 1, 0, 0, 5)];
        assert_eq!(
            decode_at(&lddw_alone, 0),
            Err(CheckError::TruncatedLddw { pc: 0 })
        );
    }

    #[test]
    fn lddw_joins_halves() {
        let slots = Instr::Lddw {
            dst: 3,
            imm: 0x1122_3344_8877_6655,
        }
        .encode();
        assert_eq!(
            decode_at(&slots, 0),
            Ok(Instr::Lddw {
                dst: 3,
                imm: 0x1122_3344_8877_6655
            })
        );
    }
}
