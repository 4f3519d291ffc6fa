//! The static checker: decides whether a slot sequence is a program both engines may run.
//!
//! A program passes when:
//! - it has 1..=[`MAX_SLOTS`] slots and every instruction decodes ([`crate::decode`]): known
//!   opcode, zero reserved fields, registers r0..=r10, complete `lddw`;
//! - no instruction writes r10 (the frame pointer is read-only);
//! - every jump lands on an instruction (inside the program, not on the second slot of an
//!   `lddw`) of the same function, and every `call local` lands on one;
//! - execution cannot fall off the end of a function: the last instruction of each function is
//!   `exit` or an unconditional jump (functions are the entry point and every `call local`
//!   target; each runs up to the next one);
//! - every static `call` names a registered helper;
//! - if the call graph has no cycle, its depth (frames, including the entry) is at most
//!   [`MAX_CALL_DEPTH`]. Recursive programs are accepted; their depth is bounded at run time
//!   ([`crate::RunError::CallDepthExceeded`]).
//!
//! It does not track values: memory accesses, `callx` targets and loop bounds are checked at
//! run time by the engines.

use std::cell::RefCell;

use crate::decode::{decode_at, Instr};
use crate::helpers::Helpers;
use crate::insn::*;

/// Most slots a program may have.
pub const MAX_SLOTS: usize = 1 << 20;

/// Why a program was rejected. `pc` is the slot index of the offending instruction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The byte string is not a whole number of 8-byte slots.
    #[error("program length {len} is not a multiple of 8")]
    PartialSlot {
        /// Length in bytes.
        len: usize,
    },
    /// The program has no instruction.
    #[error("empty program")]
    Empty,
    /// The program has more than [`MAX_SLOTS`] slots.
    #[error("program of {slots} slots is longer than {MAX_SLOTS}")]
    TooLong {
        /// Number of slots.
        slots: usize,
    },
    /// The opcode byte is not an RFC 9669 instruction this VM runs (this includes the legacy
    /// packet-access loads).
    #[error("unknown opcode {opc:#04x} at pc {pc}")]
    UnknownOpcode {
        /// Slot index.
        pc: usize,
        /// The opcode byte.
        opc: u8,
    },
    /// A field that must be zero for this opcode is not.
    #[error("reserved field {field} is {value} at pc {pc}")]
    ReservedField {
        /// Slot index.
        pc: usize,
        /// Field name (`dst`, `src`, `off`, `imm`).
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A field has a value the opcode does not define (e.g. `be24`, an unknown atomic
    /// operation, `off = 2` on a division, a map-relative `lddw`).
    #[error("invalid {field} {value} at pc {pc}")]
    InvalidField {
        /// Slot index.
        pc: usize,
        /// Field name.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A register number above 10.
    #[error("bad register r{reg} at pc {pc}")]
    BadRegister {
        /// Slot index.
        pc: usize,
        /// The register number.
        reg: u8,
    },
    /// An instruction writes r10.
    #[error("write to read-only r10 at pc {pc}")]
    WriteToR10 {
        /// Slot index.
        pc: usize,
    },
    /// `lddw` in the last slot.
    #[error("lddw at pc {pc} has no second slot")]
    TruncatedLddw {
        /// Slot index of the `lddw`.
        pc: usize,
    },
    /// The second slot of an `lddw` has a non-zero opcode, register or offset.
    #[error("invalid lddw second slot at pc {pc}")]
    BadLddwSecondSlot {
        /// Slot index of the second slot.
        pc: usize,
    },
    /// A jump target outside the program.
    #[error("jump out of range at pc {pc} (target {target})")]
    JumpOutOfRange {
        /// Slot index of the jump.
        pc: usize,
        /// Target slot index (may be negative).
        target: i64,
    },
    /// A jump or call into the second slot of an `lddw`.
    #[error("jump into the middle of lddw at pc {pc} (target {target})")]
    JumpIntoLddw {
        /// Slot index of the jump.
        pc: usize,
        /// Target slot index.
        target: usize,
    },
    /// A jump that leaves the function it is in.
    #[error("jump at pc {pc} leaves its function (target {target})")]
    JumpAcrossFunctions {
        /// Slot index of the jump.
        pc: usize,
        /// Target slot index.
        target: usize,
    },
    /// A `call local` target outside the program.
    #[error("local call out of range at pc {pc} (target {target})")]
    CallOutOfRange {
        /// Slot index of the call.
        pc: usize,
        /// Target slot index (may be negative).
        target: i64,
    },
    /// Execution can run past the last instruction of a function (of the program, when
    /// `pc` is the last slot).
    #[error("execution falls off the end of the function at pc {pc}")]
    FallsOffEnd {
        /// Slot index of the last instruction of the function.
        pc: usize,
    },
    /// A static `call` to a helper id that is not registered.
    #[error("unknown helper {id} at pc {pc}")]
    UnknownHelper {
        /// Slot index.
        pc: usize,
        /// Helper id.
        id: u32,
    },
    /// The (acyclic) call graph is deeper than [`MAX_CALL_DEPTH`] frames.
    #[error("call depth {depth} exceeds {MAX_CALL_DEPTH}")]
    CallDepth {
        /// Deepest chain of frames, the entry included.
        depth: usize,
    },
}

/// A program that passed the checker: its slots and their decoded form, one entry per slot
/// (the second slot of an `lddw` decodes to [`Instr::LddwHi`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The raw slots.
    pub slots: Vec<Insn>,
    /// `instrs[pc]` is the instruction starting at slot `pc`.
    pub instrs: Vec<Instr>,
    /// Function entry slots, sorted; `functions[0] == 0`.
    pub functions: Vec<usize>,
}

/// Checks `slots` against the rules in the module documentation. `helpers` decides which
/// static `call` ids are known.
pub fn check(slots: &[Insn], helpers: &Helpers) -> Result<Checked, CheckError> {
    check_vec(slots.to_vec(), helpers)
}

/// [`check`] of slots the caller hands over (no copy).
pub(crate) fn check_vec(slots: Vec<Insn>, helpers: &Helpers) -> Result<Checked, CheckError> {
    check_len(&slots)?;
    let mut instrs = Vec::with_capacity(slots.len());
    let functions = check_into(&slots, helpers, &mut instrs)?.unwrap_or_else(|| vec![0]);
    Ok(Checked {
        slots,
        instrs,
        functions,
    })
}

/// [`check`] without a [`Checked`] to show for it: for callers that keep only the slots (a
/// JIT-compiled program decodes its instructions again if the interpreter ever needs them).
/// Allocates nothing once the thread has checked a program of this size.
pub(crate) fn validate(slots: &[Insn], helpers: &Helpers) -> Result<(), CheckError> {
    validate_quick(slots, helpers).map(drop)
}

/// [`validate`], also saying whether the quick pass took `slots`: then, with the same
/// helpers, it takes every program of their shape (see [`same_quick_shape`]).
pub(crate) fn validate_quick(slots: &[Insn], helpers: &Helpers) -> Result<bool, CheckError> {
    check_len(slots)?;
    if quick_pass(slots, helpers) {
        return Ok(true);
    }
    thread_local! {
        static INSTRS: RefCell<Vec<Instr>> = const { RefCell::new(Vec::new()) };
    }
    /// Decoded instructions kept at most between checks (a huge program's are dropped).
    const KEEP: usize = 1 << 14;
    INSTRS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut instrs) => {
            instrs.clear();
            let r = check_into(slots, helpers, &mut instrs).map(|_| false);
            if instrs.capacity() > KEEP {
                *instrs = Vec::new();
            }
            r
        }
        Err(_) => check_vec(slots.to_vec(), helpers).map(|_| false),
    })
}

/// Whether [`quick_pass`] reads the same of the bytecode `a` and `b` (whole slots), so that,
/// with the same helpers, it takes `b` if it took `a`: as many slots, each the same but for
/// immediates the pass does not read. Many programs made from one template differ only in
/// such constants. One compare per slot, on the bytes.
pub(crate) fn same_quick_shape(a: &[u8], b: &[u8]) -> bool {
    let (a, _) = a.as_chunks::<INSN_SIZE>();
    let (b, _) = b.as_chunks::<INSN_SIZE>();
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let (x, y) = (u64::from_le_bytes(*x), u64::from_le_bytes(*y));
            (x ^ y) & QUICK_READS[x as u8 as usize] == 0
        })
}

/// Per opcode, the bits of a slot (as a little-endian `u64`) that [`quick_pass`] reads: the
/// opcode, registers and offset, and the immediate (the high half) unless the pass does not
/// read it (see [`quick_pass`]).
static QUICK_READS: [u64; 256] = {
    let mut t = [u64::MAX; 256];
    let mut i = 0;
    while i < 256 {
        let r = RULES[i];
        let plain = matches!(r.kind, K_PLAIN | K_JUMP | K_JA | K_EXIT | K_LDDW);
        if plain && r.zero & Z_IMM == 0 {
            t[i] = u32::MAX as u64;
        }
        i += 1;
    }
    t
};

/// What [`quick_pass`] checks of one opcode: the largest `dst` and `src` it allows (0: the
/// field must be zero), the fields that must be zero ([`Z_OFF`], [`Z_IMM`]), and what else to
/// look at (`K_*`).
#[derive(Clone, Copy)]
struct Rule {
    dst_max: u8,
    src_max: u8,
    zero: u8,
    kind: u8,
}

/// `off` must be zero.
const Z_OFF: u8 = 1;
/// `imm` must be zero.
const Z_IMM: u8 = 2;

/// Not handled by [`quick_pass`]: an invalid opcode, or one it leaves to the full check
/// (atomics, and the `off` forms of division, modulo and `mov`, which have `Z_OFF`).
const K_SLOW: u8 = 0;
/// Nothing more to check.
const K_PLAIN: u8 = 1;
/// A conditional jump to `pc + 1 + off`.
const K_JUMP: u8 = 2;
/// `ja` to `pc + 1 + off`.
const K_JA: u8 = 3;
/// `ja32` to `pc + 1 + imm`.
const K_JA32: u8 = 4;
/// `exit`.
const K_EXIT: u8 = 5;
/// `call` of helper `imm` (`src` 0: a local call goes to the full check).
const K_CALL: u8 = 6;
/// `lddw`: the next slot is its second half.
const K_LDDW: u8 = 7;
/// Byte order conversion: `imm` is 16, 32 or 64.
const K_END: u8 = 8;

/// The [`Rule`] of opcode `opc`, following [`decode_at`] (written registers at most r9:
/// r10 is read-only).
const fn rule(opc: u8) -> Rule {
    const fn r(dst_max: u8, src_max: u8, zero: u8, kind: u8) -> Rule {
        Rule {
            dst_max,
            src_max,
            zero,
            kind,
        }
    }
    const SLOW: Rule = r(0, 0, 0, K_SLOW);
    let x = opc & SRC_X != 0;
    let code = opc & 0xf0;
    match opc & 0x07 {
        CLS_ALU | CLS_ALU64 => match code {
            ALU_NEG if !x => r(9, 0, Z_OFF | Z_IMM, K_PLAIN),
            ALU_END if !(x && opc & 0x07 == CLS_ALU64) => r(9, 0, Z_OFF, K_END),
            ALU_NEG | ALU_END | 0xe0 | 0xf0 => SLOW,
            _ if x => r(9, 10, Z_OFF | Z_IMM, K_PLAIN),
            _ => r(9, 0, Z_OFF, K_PLAIN),
        },
        CLS_JMP | CLS_JMP32 => {
            let jmp64 = opc & 0x07 == CLS_JMP;
            match code {
                JMP_JA if x => SLOW,
                JMP_JA if jmp64 => r(0, 0, Z_IMM, K_JA),
                JMP_JA => r(0, 0, Z_OFF, K_JA32),
                JMP_CALL if jmp64 && x => r(10, 0, Z_OFF | Z_IMM, K_PLAIN),
                JMP_CALL if jmp64 => r(0, 0, Z_OFF, K_CALL),
                JMP_EXIT if jmp64 && !x => r(0, 0, Z_OFF | Z_IMM, K_EXIT),
                JMP_CALL | JMP_EXIT | 0xe0 | 0xf0 => SLOW,
                _ if x => r(10, 10, Z_IMM, K_JUMP),
                _ => r(10, 0, 0, K_JUMP),
            }
        }
        CLS_LD if opc == LD_DW_IMM => r(9, 0, Z_OFF, K_LDDW),
        CLS_LD => SLOW,
        CLS_LDX => match opc & 0xe0 {
            MODE_MEM => r(9, 10, Z_IMM, K_PLAIN),
            MODE_MEMSX if opc & 0x18 != SIZE_DW => r(9, 10, Z_IMM, K_PLAIN),
            _ => SLOW,
        },
        CLS_ST => match opc & 0xe0 {
            MODE_MEM => r(10, 0, 0, K_PLAIN),
            _ => SLOW,
        },
        _ => match opc & 0xe0 {
            MODE_MEM => r(10, 10, Z_IMM, K_PLAIN),
            _ => SLOW,
        },
    }
}

/// [`rule`] of every opcode.
static RULES: [Rule; 256] = {
    let mut t = [rule(0); 256];
    let mut i = 0;
    while i < 256 {
        t[i] = rule(i as u8);
        i += 1;
    }
    t
};

/// A quick pass for the common program: one function, no atomics, no `off` forms of
/// arithmetic. `true` only if the full check accepts `slots` (1..=[`MAX_SLOTS`] of them);
/// `false` says nothing (the full check decides, and names the error).
///
/// One walk, no decoding: every instruction's fields against its opcode's [`Rule`], every
/// jump target in range and not a second `lddw` slot. Once every instruction passed, the
/// slots with opcode 0 are exactly the second halves of `lddw`s (no instruction has opcode
/// 0), so a target's opcode tells, even for a target further on that the walk has not
/// checked yet.
fn quick_pass(slots: &[Insn], helpers: &Helpers) -> bool {
    let n = slots.len();
    let mut kind = K_SLOW;
    let mut pc = 0;
    while pc < n {
        let i = slots[pc];
        let r = RULES[i.opc as usize];
        kind = r.kind;
        if i.dst > r.dst_max
            || i.src > r.src_max
            || (i.off != 0 && r.zero & Z_OFF != 0)
            || (i.imm != 0 && r.zero & Z_IMM != 0)
        {
            return false;
        }
        match kind {
            K_PLAIN | K_EXIT => {}
            K_JUMP | K_JA | K_JA32 => {
                let rel = if kind == K_JA32 {
                    i.imm as i64
                } else {
                    i.off as i64
                };
                let t = pc as i64 + 1 + rel;
                if t < 0 || t >= n as i64 || slots[t as usize].opc == 0 {
                    return false;
                }
            }
            K_CALL => {
                if helpers.get(i.imm as u32).is_none() {
                    return false;
                }
            }
            K_LDDW => match slots.get(pc + 1) {
                Some(hi) if hi.opc == 0 && hi.dst == 0 && hi.src == 0 && hi.off == 0 => pc += 1,
                _ => return false,
            },
            K_END => {
                if !matches!(i.imm, 16 | 32 | 64) {
                    return false;
                }
            }
            _ => return false,
        }
        pc += 1;
    }
    // The last instruction must not fall through.
    matches!(kind, K_JA | K_JA32 | K_EXIT)
}

/// The first rule: 1..=[`MAX_SLOTS`] slots.
fn check_len(slots: &[Insn]) -> Result<(), CheckError> {
    if slots.is_empty() {
        return Err(CheckError::Empty);
    }
    if slots.len() > MAX_SLOTS {
        return Err(CheckError::TooLong { slots: slots.len() });
    }
    Ok(())
}

/// The checks of [`check`] after [`check_len`], decoding `slots` into `instrs` (empty on
/// entry). Returns the function entries of a program with local calls (`None`: one
/// function, at slot 0). Inlined into its two callers, so that each keeps `instrs` in
/// registers.
#[inline(always)]
fn check_into(
    slots: &[Insn],
    helpers: &Helpers,
    instrs: &mut Vec<Instr>,
) -> Result<Option<Vec<usize>>, CheckError> {
    let n = slots.len();
    instrs.reserve(n);

    // Pass 1: decode, registers, helpers; note whether there are local calls.
    let mut has_calls = false;
    let mut pc = 0;
    while pc < n {
        let ins = decode_at(slots, pc)?;
        if ins.written_regs().contains(&Some(FRAME_REG)) {
            return Err(CheckError::WriteToR10 { pc });
        }
        match ins {
            Instr::Call { id } if helpers.get(id).is_none() => {
                return Err(CheckError::UnknownHelper { pc, id });
            }
            Instr::CallLocal { off } => {
                let target = pc as i64 + 1 + off as i64;
                if target < 0 || target >= n as i64 {
                    return Err(CheckError::CallOutOfRange { pc, target });
                }
                has_calls = true;
            }
            _ => {}
        }
        instrs.push(ins);
        if ins.slots() == 2 {
            instrs.push(Instr::LddwHi);
        }
        pc += ins.slots();
    }
    let instrs = &instrs[..];
    if !has_calls {
        // One function: no function table, no call graph.
        control_flow(instrs, None, None)?;
        return Ok(None);
    }

    let mut is_function = vec![false; n];
    is_function[0] = true;
    for (pc, ins) in instrs.iter().enumerate() {
        if let Instr::CallLocal { off } = *ins {
            let target = (pc as i64 + 1 + off as i64) as usize;
            // Local call targets must be instructions, not second halves of lddw.
            if matches!(instrs[target], Instr::LddwHi) {
                return Err(CheckError::JumpIntoLddw { pc, target });
            }
            is_function[target] = true;
        }
    }

    // Function index of every slot.
    let functions: Vec<usize> = (0..n).filter(|&i| is_function[i]).collect();
    let mut func_of = vec![0usize; n];
    let mut f = 0;
    for (i, slot) in func_of.iter_mut().enumerate() {
        if f + 1 < functions.len() && functions[f + 1] == i {
            f += 1;
        }
        *slot = f;
    }

    // Pass 2: control flow.
    control_flow(instrs, Some(&is_function), Some(&func_of))?;

    // Pass 3: call depth over the function call graph, when acyclic.
    let mut callees: Vec<Vec<usize>> = vec![Vec::new(); functions.len()];
    for (pc, ins) in instrs.iter().enumerate() {
        if let Instr::CallLocal { off } = *ins {
            let target = (pc as i64 + 1 + off as i64) as usize;
            callees[func_of[pc]].push(func_of[target]);
        }
    }
    if let Some(depth) = max_depth(&callees) {
        if depth > MAX_CALL_DEPTH {
            return Err(CheckError::CallDepth { depth });
        }
    }

    Ok(Some(functions))
}

/// Pass 2: every jump lands on an instruction of its own function, and no function falls
/// off its end. Without `is_function` / `func_of` the program is one function.
fn control_flow(
    instrs: &[Instr],
    is_function: Option<&[bool]>,
    func_of: Option<&[usize]>,
) -> Result<(), CheckError> {
    let n = instrs.len();
    for (pc, ins) in instrs.iter().enumerate() {
        if matches!(ins, Instr::LddwHi) {
            continue;
        }
        if let (Some(off), false) = (ins.branch_offset(), matches!(ins, Instr::CallLocal { .. })) {
            let target = pc as i64 + 1 + off;
            if target < 0 || target >= n as i64 {
                return Err(CheckError::JumpOutOfRange { pc, target });
            }
            let target = target as usize;
            if matches!(instrs[target], Instr::LddwHi) {
                return Err(CheckError::JumpIntoLddw { pc, target });
            }
            if let Some(func_of) = func_of {
                if func_of[target] != func_of[pc] {
                    return Err(CheckError::JumpAcrossFunctions { pc, target });
                }
            }
        }
        // The last instruction of each function must not fall through.
        let next = pc + ins.slots();
        let last_of_function = next == n || is_function.is_some_and(|f| f[next]);
        if last_of_function && !matches!(ins, Instr::Exit | Instr::Ja { .. }) {
            return Err(CheckError::FallsOffEnd { pc });
        }
    }
    Ok(())
}

/// Deepest chain of frames from function 0, or `None` if a cycle is reachable.
fn max_depth(callees: &[Vec<usize>]) -> Option<usize> {
    // Iterative DFS with colours: 0 = new, 1 = on stack, 2 = done.
    let n = callees.len();
    let mut colour = vec![0u8; n];
    let mut depth = vec![1usize; n];
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    colour[0] = 1;
    while let Some(&mut (f, ref mut next)) = stack.last_mut() {
        if let Some(&g) = callees[f].get(*next) {
            *next += 1;
            match colour[g] {
                0 => {
                    colour[g] = 1;
                    stack.push((g, 0));
                }
                1 => return None,
                _ => {}
            }
        } else {
            depth[f] = 1 + callees[f].iter().map(|&g| depth[g]).max().unwrap_or(0);
            colour[f] = 2;
            stack.pop();
        }
    }
    Some(depth[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit() -> Insn {
        Insn::new(EXIT, 0, 0, 0, 0)
    }
    fn mov(dst: u8, imm: i32) -> Insn {
        Insn::new(CLS_ALU64 | ALU_MOV, dst, 0, 0, imm)
    }
    fn ja(off: i16) -> Insn {
        Insn::new(CLS_JMP | JMP_JA, 0, 0, off, 0)
    }
    fn call_local(off: i32) -> Insn {
        Insn::new(CALL, 0, CALL_LOCAL, 0, off)
    }
    fn chk(p: &[Insn]) -> Result<Checked, CheckError> {
        check(p, &Helpers::new())
    }

    #[test]
    fn accepts_minimal_program() {
        let c = chk(&[mov(0, 1), exit()]).unwrap();
        assert_eq!(c.instrs.len(), 2);
        assert_eq!(c.functions, vec![0]);
    }

    #[test]
    fn rejects_empty_and_fall_off() {
        assert_eq!(chk(&[]), Err(CheckError::Empty));
        assert_eq!(chk(&[mov(0, 1)]), Err(CheckError::FallsOffEnd { pc: 0 }));
        // A conditional jump as the last instruction can fall through.
        let jeq = Insn::new(CLS_JMP | JMP_JEQ, 0, 0, -2, 0);
        assert_eq!(
            chk(&[exit(), mov(0, 1), jeq]),
            Err(CheckError::FallsOffEnd { pc: 2 })
        );
        // ... an unconditional one cannot.
        assert!(chk(&[mov(0, 1), exit(), ja(-3)]).is_ok());
    }

    #[test]
    fn rejects_r10_writes_and_bad_jumps() {
        assert_eq!(
            chk(&[mov(10, 1), exit()]),
            Err(CheckError::WriteToR10 { pc: 0 })
        );
        assert_eq!(
            chk(&[ja(5), exit()]),
            Err(CheckError::JumpOutOfRange { pc: 0, target: 6 })
        );
        assert_eq!(
            chk(&[ja(-2), exit()]),
            Err(CheckError::JumpOutOfRange { pc: 0, target: -1 })
        );
        let lddw = Instr::Lddw { dst: 0, imm: 7 }.encode();
        let p = [ja(1), lddw[0], lddw[1], exit()];
        assert_eq!(chk(&p), Err(CheckError::JumpIntoLddw { pc: 0, target: 2 }));
        let p = [lddw[0]];
        assert_eq!(chk(&p), Err(CheckError::TruncatedLddw { pc: 0 }));
    }

    #[test]
    fn helpers_must_be_registered() {
        extern "C" fn h(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
            a
        }
        let p = [Insn::new(CALL, 0, 0, 0, 7), exit()];
        assert_eq!(chk(&p), Err(CheckError::UnknownHelper { pc: 0, id: 7 }));
        let mut hs = Helpers::new();
        hs.register(7, h);
        assert!(check(&p, &hs).is_ok());
    }

    #[test]
    fn quick_pass_accepts_only_what_the_full_check_accepts() {
        extern "C" fn h(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
            a
        }
        let mut hs = Helpers::new();
        hs.register(7, h);
        let regs = [0u8, 1, 9, 10, 11, 15];
        let offs = [0i16, 1, -1, 2, -3, 8, 16, 32];
        let imms = [0i32, 1, -1, 2, 7, 16, 32, 64, 0xe1, 0xf1, 0x41, 0x50];
        let mut quick = 0;
        for opc in 0..=255u8 {
            for &dst in &regs {
                for &src in &regs {
                    for &off in &offs {
                        for &imm in &imms {
                            let x = Insn::new(opc, dst, src, off, imm);
                            // Room for short jumps either way, an lddw second slot, an exit.
                            for p in [
                                vec![x, Insn::new(0, 0, 0, 0, 5), exit(), exit(), exit()],
                                vec![exit(), x, exit(), exit(), exit()],
                                vec![x],
                                vec![exit(), x],
                            ] {
                                if quick_pass(&p, &hs) {
                                    quick += 1;
                                    assert!(check(&p, &hs).is_ok(), "{p:?}");
                                    // Programs of its shape pass too.
                                    let pb = encode_slots(&p);
                                    for &imm in &imms {
                                        let q: Vec<Insn> = p
                                            .iter()
                                            .map(|&i| if i == x { Insn { imm, ..i } } else { i })
                                            .collect();
                                        if same_quick_shape(&pb, &encode_slots(&q)) {
                                            assert!(quick_pass(&q, &hs), "{p:?} -> {q:?}");
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(quick > 5_000, "{quick}");
        // A program the quick pass takes: loads, arithmetic, jumps, lddw, a helper call.
        let lddw = Instr::Lddw { dst: 3, imm: 7 }.encode();
        let p = [
            Insn::new(CLS_LDX | MODE_MEM | SIZE_H, 2, 1, 12, 0),
            Insn::new(CLS_JMP | JMP_JNE, 2, 0, 3, 8),
            lddw[0],
            lddw[1],
            Insn::new(CALL, 0, 0, 0, 7),
            Insn::new(CLS_ALU | ALU_END | SRC_X, 0, 0, 0, 16),
            exit(),
        ];
        assert!(quick_pass(&p, &hs));
        // ... and leaves to the full check: an unknown helper, a jump into lddw, a fall
        // through, a write to r10.
        assert!(!quick_pass(&p, &Helpers::new()));
        let mut q = p;
        q[1].off = 1;
        assert!(!quick_pass(&q, &hs));
        assert!(!quick_pass(&p[..6], &hs));
        let mut q = p;
        q[0].dst = 10;
        assert!(!quick_pass(&q, &hs));
    }

    #[test]
    fn functions_and_call_depth() {
        // main: call f; exit. f: ja back into main -> crosses functions.
        let p = [call_local(1), exit(), ja(-3)];
        assert_eq!(
            chk(&p),
            Err(CheckError::JumpAcrossFunctions { pc: 2, target: 0 })
        );
        // Main falls through into f.
        let p = [call_local(1), mov(0, 1), exit()];
        assert_eq!(chk(&p), Err(CheckError::FallsOffEnd { pc: 1 }));
        assert_eq!(
            chk(&[call_local(5), exit()]),
            Err(CheckError::CallOutOfRange { pc: 0, target: 6 })
        );
        // A chain of MAX_CALL_DEPTH frames is fine, one more is not.
        let chain = |frames: usize| {
            let mut p = Vec::new();
            for _ in 0..frames - 1 {
                p.push(call_local(1));
                p.push(exit());
            }
            p.push(exit());
            p
        };
        assert!(chk(&chain(MAX_CALL_DEPTH)).is_ok());
        assert_eq!(
            chk(&chain(MAX_CALL_DEPTH + 1)),
            Err(CheckError::CallDepth {
                depth: MAX_CALL_DEPTH + 1
            })
        );
        // Recursion is left to the run-time limit.
        assert!(chk(&[call_local(-1), exit()]).is_ok());
    }
}
