//! The translator's pre-pass: one linear walk over the slots that finds instruction starts,
//! basic blocks, the registers the program reads and writes, what it needs at run time
//! (stack, local calls, helper calls), the instruction charge of every block, and an upper
//! bound of the code size of every slot (so forward jumps can be emitted short in one pass).
//! Per-opcode facts come from a table built at compile time ([`PROPS`]). A program of the
//! same shape as the last one analysed (the same slots but for immediates the walk does not
//! read) with the same arguments reuses its results.
//!
//! Invariants (per slot, fields of one vector of `Slot`s):
//! - `flags[pc] & START` iff slot `pc` begins an instruction (not the second slot of `lddw`).
//! - A slot is a `LEADER` iff it begins a basic block: slot 0, every jump or local-call
//!   target, the slot after every jump, call and exit. A block, once entered, runs to its end
//!   unless an access faults.
//! - `charge[pc]` (budget on) is what entering the block at `pc` charges: its instruction
//!   count (an `lddw` counts once), plus, when the block ends in `ja T` that is *merged*, the
//!   count of `T`'s block; a merged `ja` jumps past `T`'s own charge, and a block reached by a
//!   merged jump never merges itself (so nothing is charged twice and no merge chains).
//! - `size_before[pc]` bounds the bytes of code emitted for the slots before `pc` (charges
//!   included): a forward jump from the end of slot `a` to the start of slot `b` spans at
//!   most `size_before[b] - size_before[a + 1]` bytes.
//! - The register masks over-approximate: a register the program may read while it still
//!   holds its initial zero is in `zero_on_entry`, whatever the path.

use super::JitError;
use crate::insn::*;

/// Slot begins an instruction.
pub(crate) const START: u8 = 1;
/// Slot begins a basic block.
pub(crate) const LEADER: u8 = 2;
/// A merged `ja` jumps to this slot, past its charge.
pub(crate) const MERGED_TARGET: u8 = 4;
/// The block ending at this slot (a `ja`) is merged with its target.
pub(crate) const MERGED_JA: u8 = 8;

/// Bytes a block's budget charge may take (`sub r/m, imm32` + `jb rel32`).
pub(crate) const CHARGE_SIZE: u32 = 16;

/// Registers r0, r3..r9: those that start at zero (r1, r2 and r10 are set at entry).
const ZERO_AT_ENTRY: u16 = 0x3f9;

/// What the pre-pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bit `r`: eBPF register `r` appears as an operand (explicitly, or implicitly: r0-r5 of
    /// a helper call, r0 of `exit` and `cmpxchg`).
    pub regs: u16,
    /// Bit `r`: some instruction writes register `r`.
    pub written: u16,
    /// Bit `r`: register `r` may be read while it still holds its initial zero, so the
    /// prologue must zero it.
    pub zero_on_entry: u16,
    /// Whether any instruction reads r10. If none does, no address the program computes can
    /// be meant for the stack (it would have to be guessed), so the code gets no stack window.
    pub stack: bool,
    /// Whether the program has a `call local`. If not, every `exit` leaves the program.
    pub calls: bool,
    /// Whether the program calls helpers (`call` or `callx`).
    pub helper_calls: bool,
    /// Whether some jump or local call goes backwards (a loop, or a function placed before
    /// its caller).
    pub backward: bool,
    /// Whether the code needs r9 as a scratch register (division, fetching atomics, helper
    /// calls, which may clobber it).
    pub needs_r9: bool,
    /// Bit `log2(size)`: an access of that size whose address the emitter must check in
    /// general form (not `r10 + off` in the frame, not the unwritten r1 plus an offset).
    pub general_sizes: u8,
    /// Whether some access may be checked against the input memory at all.
    pub any_checks: bool,
    /// Whether some access is not `r10 + off` inside the current frame (stays true when
    /// proofs remove its check).
    pub any_mem: bool,
    /// Whether the program may read r2 while it still holds the input length (only then can
    /// it compare addresses with the end of the input, see [`super::ranges`]).
    pub len_read: bool,
}

impl Usage {
    /// Whether register `r` is mentioned.
    pub(crate) fn has(self, r: usize) -> bool {
        self.regs & (1 << r) != 0
    }
    /// Whether register `r` is written somewhere.
    pub(crate) fn writes(self, r: usize) -> bool {
        self.written & (1 << r) != 0
    }
}

/// What the pre-pass knows of one slot (one vector of these, so one reset per compile).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Code-size bound of the slots before this one.
    size_before: u32,
    /// The charge of the block starting here (budget on; 0 elsewhere).
    charge: u32,
    /// Registers that may hold their initial zero on entry (forward programs).
    undef_in: u16,
    /// [`START`], [`LEADER`], [`MERGED_TARGET`], [`MERGED_JA`].
    flags: u8,
}

/// The pre-pass results, in a vector kept between compiles.
#[derive(Default)]
pub(crate) struct Analysis {
    /// Per slot, and one past the end.
    slots: Vec<Slot>,
    /// What the program uses.
    pub usage: Usage,
    /// Whether some `ja` is merged with its target (so labels past charges are needed).
    pub merged: bool,
    /// Whether blocks charge the budget (see [`Analysis::run`]).
    pub counted: bool,
    /// Number of instructions (an `lddw` is one).
    pub count: u32,
    /// The slots of the last successful run, and what that run was given and found: a run
    /// over a program of the same shape ([`shape`]) with the same arguments finds the same,
    /// so it only restores `usage` (which callers may change after a run). Many programs
    /// made from one template (filters that differ in a constant) are compiled one after
    /// another.
    last: Vec<Insn>,
    last_args: Option<RunArgs>,
    last_usage: Usage,
}

/// The arguments of [`Analysis::run`] besides the slots.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RunArgs {
    budget: bool,
    loops_only: bool,
    helpers: usize,
    blind: bool,
}

// ---- per-opcode facts ----

/// Reads dst.
const RD_DST: u16 = 1;
/// Writes dst.
const WR_DST: u16 = 2;
/// Reads src.
const RD_SRC: u16 = 4;
/// A load, store or atomic (base: src for loads, dst otherwise).
const MEM: u16 = 8;
/// A jump with a target (conditional or `ja`).
const JUMP: u16 = 16;
/// Ends its block without falling through (`exit`, `ja`).
const NO_FALL: u16 = 32;
/// `call` (helper or local, by src) or `callx`.
const CALL_ANY: u16 = 64;
/// Uses r9 as scratch.
const R9: u16 = 128;
/// An atomic: registers depend on the immediate.
const ATOMIC_OP: u16 = 256;
/// `lddw`.
const WIDE: u16 = 512;
/// A load (base in src).
const LOAD: u16 = 1024;
/// `ja` of the 32-bit jump class (offset in imm).
const JA32: u16 = 2048;

/// Anything [`special`] handles.
const SPECIAL: u16 = MEM | JUMP | NO_FALL | CALL_ANY | R9 | ATOMIC_OP | WIDE;

/// What the pre-pass carries from slot to slot.
struct Walk {
    /// Registers read (explicitly, or implicitly by helper calls and `exit`).
    read: u16,
    /// Registers written.
    written: u16,
    /// Registers that may still hold their initial zero (exact for forward programs).
    undef: u16,
    /// Registers that may be read while they still hold their initial zero.
    need_zero: u16,
    /// `F_*` facts found so far.
    facts: u8,
    /// [`Usage::general_sizes`] so far.
    general_sizes: u8,
}

/// Some instruction uses r9 as scratch.
const F_R9: u8 = 1;
/// Some access is not `r10 + off` inside the frame.
const F_CHECKS: u8 = 2;
/// A `call local`.
const F_CALLS: u8 = 4;
/// A helper call (`call` or `callx`).
const F_HELPER_CALLS: u8 = 8;
/// A jump or local call goes backwards.
const F_BACKWARD: u8 = 16;
/// A `ja`.
const F_JA: u8 = 32;

/// Facts about one opcode.
#[derive(Clone, Copy)]
struct Props {
    /// Bits above.
    f: u16,
    /// Registers read and written implicitly.
    imp_rd: u16,
    imp_wr: u16,
    /// Upper bound of the emitted code size (bytes, without blinding or charge).
    size: u8,
    /// log2 of the access size of a memory instruction.
    log: u8,
}

const fn props(opc: u8) -> Props {
    let mut p = Props {
        f: 0,
        imp_rd: 0,
        imp_wr: 0,
        size: 0,
        log: 0,
    };
    let x = opc & SRC_X != 0;
    match opc & 7 {
        CLS_ALU | CLS_ALU64 => {
            let op = opc & 0xf0;
            p.f = WR_DST | if x { RD_SRC } else { 0 };
            if op != ALU_MOV {
                p.f |= RD_DST;
            }
            if op == ALU_END || op == ALU_NEG {
                p.f = RD_DST | WR_DST;
            }
            p.size = 12;
            if op == ALU_DIV || op == ALU_MOD {
                p.f |= R9;
                p.size = 72;
            } else if op == ALU_LSH || op == ALU_RSH || op == ALU_ARSH {
                p.size = 16;
            }
        }
        CLS_LD => {
            // Only `lddw` is valid (the emitter rejects the legacy packet loads).
            if opc == LD_DW_IMM {
                p.f = WR_DST | WIDE;
            }
            p.size = 12;
        }
        CLS_LDX => {
            p.f = WR_DST | RD_SRC | MEM | LOAD;
            p.size = 96;
        }
        CLS_ST => {
            p.f = RD_DST | MEM;
            p.size = 96;
        }
        CLS_STX => {
            p.f = RD_DST | RD_SRC | MEM;
            if opc & 0xe0 == MODE_ATOMIC {
                p.f |= ATOMIC_OP;
            }
            p.size = 96;
        }
        _ => {
            let j32 = opc & 7 == CLS_JMP32;
            match opc & 0xf0 {
                JMP_JA => {
                    p.f = JUMP | NO_FALL | if j32 { JA32 } else { 0 };
                    p.size = 6;
                }
                JMP_EXIT => {
                    p.f = NO_FALL;
                    p.imp_rd = 1;
                    p.size = 32;
                }
                JMP_CALL => {
                    p.f = CALL_ANY;
                    p.size = 128;
                }
                _ => {
                    p.f = JUMP | RD_DST | if x { RD_SRC } else { 0 };
                    p.size = 16;
                }
            }
        }
    }
    p.log = match opc & 0x18 {
        SIZE_W => 2,
        SIZE_H => 1,
        SIZE_B => 0,
        _ => 3,
    };
    p
}

/// [`props`] of every opcode.
static PROPS: [Props; 256] = {
    let mut t = [props(0); 256];
    let mut i = 0;
    while i < 256 {
        t[i] = props(i as u8);
        i += 1;
    }
    t
};

impl Analysis {
    /// Capacity kept, in bytes.
    pub(crate) fn capacity(&self) -> usize {
        std::mem::size_of::<Slot>() * self.slots.capacity()
            + std::mem::size_of::<Insn>() * self.last.capacity()
    }

    /// Per-slot flags: [`START`], [`LEADER`], [`MERGED_TARGET`], [`MERGED_JA`].
    #[inline]
    pub(crate) fn flags(&self, pc: usize) -> u8 {
        self.slots[pc].flags
    }

    /// What entering the block at `pc` charges (budget on; 0 elsewhere).
    #[inline]
    pub(crate) fn charge(&self, pc: usize) -> u32 {
        self.slots[pc].charge
    }

    /// Upper bound of the bytes of code of the whole program's body.
    pub(crate) fn code_bound(&self) -> u32 {
        self.slots.last().map_or(0, |s| s.size_before)
    }

    /// Whether a forward jump from the end of slot `from` to the start of slot `to` (past
    /// its charge if `past_charge`) surely fits in a rel8 displacement.
    pub(crate) fn near(&self, from: usize, to: usize, past_charge: bool) -> bool {
        if to <= from {
            return false;
        }
        let span = self.slots[to].size_before - self.slots[from + 1].size_before
            + if past_charge { CHARGE_SIZE } else { 0 };
        span <= 127
    }

    /// Runs the pre-pass over `insns`. `budget`: compute block charges, only for programs
    /// with a backward jump or a local call if `loops_only` (any other program runs each
    /// instruction at most once per run: at most [`Analysis::count`] in all). `helpers`:
    /// number of registered helpers (a `callx` is a compare chain over them). `blind`:
    /// constants are blinded (longer code). Returns whether `insns` had the shape of the
    /// last program analysed (with the same arguments), whose results it reused.
    pub(crate) fn run(
        &mut self,
        insns: &[Insn],
        budget: bool,
        loops_only: bool,
        helpers: usize,
        blind: bool,
    ) -> Result<bool, JitError> {
        let args = RunArgs {
            budget,
            loops_only,
            helpers,
            blind,
        };
        if self.last_args == Some(args) && same_shape(&self.last, insns) {
            // Everything the walk reads of the slots is in their shapes: the same results.
            self.usage = self.last_usage;
            return Ok(true);
        }
        self.last_args = None;
        self.walk(insns, budget, loops_only, helpers, blind)?;
        self.last.clear();
        self.last.extend_from_slice(insns);
        self.last_args = Some(args);
        self.last_usage = self.usage;
        Ok(false)
    }

    /// [`run`](Self::run) without the shape check.
    fn walk(
        &mut self,
        insns: &[Insn],
        budget: bool,
        loops_only: bool,
        helpers: usize,
        blind: bool,
    ) -> Result<(), JitError> {
        let n = insns.len();
        self.slots.clear();
        self.slots.resize(n + 1, Slot::default());
        let slots = &mut self.slots[..];
        slots[0].flags = LEADER;
        let mut w = Walk {
            read: 0,
            written: 0,
            // r2 tracked too: "still the input length".
            undef: ZERO_AT_ENTRY | 1 << 2,
            need_zero: 0,
            facts: 0,
            general_sizes: 0,
        };
        let blind_extra: u32 = if blind { 24 } else { 0 };
        let mut size = 0u32;
        let mut wide = 0u32;
        let mut pc = 0;
        while pc < n {
            let i = insns[pc];
            let p = PROPS[i.opc as usize];
            slots[pc].flags |= START;
            slots[pc].size_before = size;
            let d = 1u16 << (i.dst & 15);
            let s = 1u16 << (i.src & 15);
            // Plain instructions read/write dst and src as the table says.
            let mut r = (d & 0u16.wrapping_sub(p.f & RD_DST))
                | (s & 0u16.wrapping_sub((p.f & RD_SRC) >> 2))
                | p.imp_rd;
            let mut wr = (d & 0u16.wrapping_sub((p.f & WR_DST) >> 1)) | p.imp_wr;
            let mut bytes = p.size as u32 + blind_extra;
            if p.f & SPECIAL != 0 {
                let (r2, w2, b2) = special(slots, &mut w, insns, pc, i, p, helpers)?;
                r |= r2;
                wr |= w2;
                bytes += b2;
            }
            w.need_zero |= r & w.undef;
            w.undef &= !wr;
            w.read |= r;
            w.written |= wr;
            if p.f & NO_FALL != 0 {
                w.undef = 0;
            }
            size += bytes;
            if p.f & WIDE != 0 {
                pc += 1;
                wide += 1;
                slots[pc].size_before = size;
            }
            pc += 1;
            if pc < n {
                w.undef |= slots[pc].undef_in;
            }
        }
        slots[n].size_before = size;
        let facts = w.facts;
        let calls = facts & F_CALLS != 0;
        // The callee of a local call may read anything (the call itself names nothing).
        let read = w.read | if calls { 0x3ff } else { 0 };
        let mut u = Usage {
            regs: (1 | w.read | w.written) & 0x7ff,
            written: w.written & 0x7ff,
            zero_on_entry: 0,
            stack: read & (1 << FRAME_REG) != 0,
            calls,
            helper_calls: facts & F_HELPER_CALLS != 0,
            backward: facts & F_BACKWARD != 0,
            needs_r9: facts & F_R9 != 0,
            general_sizes: w.general_sizes,
            any_checks: facts & F_CHECKS != 0,
            any_mem: facts & F_CHECKS != 0,
            len_read: false,
        };
        if u.any_checks && u.writes(1) {
            // Accesses [r1 + off] need the general check after all.
            for pc in (0..n).filter(|&pc| self.slots[pc].flags & START != 0) {
                let i = insns[pc];
                let p = PROPS[i.opc as usize];
                let base = if p.f & LOAD != 0 { i.src } else { i.dst };
                if p.f & MEM != 0 && base == 1 && !in_frame(base, i.off, 1 << p.log) {
                    u.general_sizes |= 1 << p.log;
                }
            }
        }
        let first_reads = if u.backward || u.calls {
            read
        } else {
            w.need_zero
        };
        u.zero_on_entry = first_reads & ZERO_AT_ENTRY & u.regs;
        u.len_read = first_reads & (1 << 2) != 0;
        self.usage = u;
        self.merged = false;
        self.count = n as u32 - wide;
        self.counted = budget && (!loops_only || u.backward || u.calls);
        if self.counted {
            self.block_charges(insns, facts & F_JA != 0);
        }
        Ok(())
    }

    /// Recomputes which checks remain once the accesses marked in `proven` need none:
    /// `any_checks` and `general_sizes` of [`Usage`].
    pub(crate) fn drop_proven(&mut self, insns: &[Insn], proven: &[bool]) {
        let u = &mut self.usage;
        u.any_checks = false;
        u.general_sizes = 0;
        for (pc, i) in insns.iter().enumerate() {
            let p = PROPS[i.opc as usize];
            if self.slots[pc].flags & START == 0 || p.f & MEM == 0 || proven.get(pc) == Some(&true)
            {
                continue;
            }
            let base = if p.f & LOAD != 0 { i.src } else { i.dst };
            if in_frame(base, i.off, 1 << p.log) {
                continue;
            }
            u.any_checks = true;
            if !(base == 1 && i.off >= 0 && !u.writes(1)) {
                u.general_sizes |= 1 << p.log;
            }
        }
    }

    /// Block charges with merged `ja`s (see the module invariants), and the charges' code in
    /// the size bounds.
    fn block_charges(&mut self, insns: &[Insn], has_ja: bool) {
        let n = insns.len();
        let mut current = 0;
        let mut extra = 0;
        for pc in 0..n {
            let f = self.slots[pc].flags;
            self.slots[pc].size_before += extra;
            if f & LEADER != 0 {
                current = pc;
                extra += CHARGE_SIZE;
            }
            if f & START != 0 {
                self.slots[current].charge += 1;
            }
        }
        self.slots[n].size_before += extra;
        if !has_ja {
            return;
        }
        // Merge `ja T` into its block's charge when T's block does not end in a `ja`.
        let mut leader = 0;
        for pc in 0..n {
            let f = self.slots[pc].flags;
            if f & LEADER != 0 {
                leader = pc;
            }
            let i = insns[pc];
            if f & START == 0 || !is_ja(i) {
                continue;
            }
            let rel = if i.class() == CLS_JMP32 {
                i.imm as i64
            } else {
                i.off as i64
            };
            let t = pc as i64 + 1 + rel;
            if !(0..n as i64).contains(&t) {
                continue;
            }
            let t = t as usize;
            if t == leader
                || t == pc + 1
                || self.slots[t].flags & MERGED_JA != 0
                || self.ends_in_ja(insns, t)
            {
                continue;
            }
            self.slots[leader].charge += self.slots[t].charge;
            self.merged = true;
            self.slots[pc].flags |= MERGED_JA;
            self.slots[t].flags |= MERGED_TARGET;
        }
    }

    /// Whether the block starting at leader `t` ends in a `ja`.
    fn ends_in_ja(&self, insns: &[Insn], t: usize) -> bool {
        let n = insns.len();
        let mut pc = t;
        loop {
            if self.slots[pc].flags & START != 0 {
                let i = insns[pc];
                let cls = i.class();
                if cls == CLS_JMP || cls == CLS_JMP32 {
                    return is_ja(i);
                }
            }
            pc += 1;
            if pc >= n || self.slots[pc].flags & LEADER != 0 {
                return false;
            }
        }
    }
}

/// The rarer facts of instruction `i` at `pc` (for [`Analysis::run`]): memory accesses,
/// jumps, calls, atomics, `lddw`, scratch needs. Marks the leaders it finds in `slots`;
/// returns extra registers read and written and extra code bytes.
#[inline(always)]
fn special(
    slots: &mut [Slot],
    w: &mut Walk,
    insns: &[Insn],
    pc: usize,
    i: Insn,
    p: Props,
    helpers: usize,
) -> Result<(u16, u16, u32), JitError> {
    let n = insns.len();
    let d = 1u16 << (i.dst & 15);
    let s = 1u16 << (i.src & 15);
    let (mut r, mut wr, mut bytes) = (0u16, 0u16, 0u32);
    if p.f & R9 != 0 {
        w.facts |= F_R9;
    }
    if p.f & ATOMIC_OP != 0 {
        if i.imm == ATOMIC_CMPXCHG {
            r |= 1;
            wr |= 1;
        } else if i.imm & ATOMIC_FETCH != 0 {
            wr |= s;
            w.facts |= F_R9;
        }
    }
    if p.f & MEM != 0 {
        let base = if p.f & LOAD != 0 { i.src } else { i.dst };
        if !in_frame(base, i.off, 1 << p.log) {
            w.facts |= F_CHECKS;
            // Base r1 with a non-negative offset: decided once `written` is known.
            if !(base == 1 && i.off >= 0) {
                w.general_sizes |= 1 << p.log;
            }
        }
    }
    if p.f & WIDE != 0 {
        let next = insns.get(pc + 1).ok_or(JitError::IncompleteLddw { pc })?;
        if next.opc != 0 || next.dst != 0 || next.src != 0 || next.off != 0 {
            return Err(JitError::IncompleteLddw { pc });
        }
        // The second blinded half.
        bytes += p.size as u32;
    }
    let mut target = None;
    if p.f & CALL_ANY != 0 {
        if i.opc == CALL && i.src == CALL_LOCAL {
            w.facts |= F_CALLS;
            // The callee may read anything (added at the end, see `run`); whatever may
            // still be zero here may be read.
            w.need_zero |= w.undef;
            target = Some(i.imm as i64);
        } else {
            w.facts |= F_HELPER_CALLS | F_R9;
            r |= 0x3e;
            wr |= 1;
            if i.opc == CALLX {
                r |= d;
                bytes += 128 * helpers as u32;
            }
        }
    }
    if p.f & JUMP != 0 {
        if p.f & NO_FALL != 0 {
            w.facts |= F_JA;
        }
        target = Some(if p.f & JA32 != 0 {
            i.imm as i64
        } else {
            i.off as i64
        });
    }
    if p.f & (JUMP | CALL_ANY | NO_FALL) != 0 {
        slots[pc + 1].flags |= LEADER;
    }
    if let Some(rel) = target {
        let t = pc as i64 + 1 + rel;
        if (0..n as i64).contains(&t) {
            let t = t as usize;
            slots[t].flags |= LEADER;
            if t <= pc {
                w.facts |= F_BACKWARD;
            } else {
                slots[t].undef_in |= w.undef & !wr;
            }
        }
    }
    Ok((r, wr, bytes))
}

/// What [`Analysis::run`] reads of slot `i`: all of it but the immediate, which it reads
/// only for atomics, calls and 32-bit `ja` (set to 0 for the others).
#[inline(always)]
fn shape(i: Insn) -> Insn {
    let uses_imm = PROPS[i.opc as usize].f & (ATOMIC_OP | CALL_ANY | JA32) != 0;
    Insn {
        imm: if uses_imm { i.imm } else { 0 },
        ..i
    }
}

/// Whether `a` and `b` have the same shape ([`shape`]).
fn same_shape(a: &[Insn], b: &[Insn]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| shape(x) == shape(y))
}

/// Whether `[r10 + off, +size)` lies inside the current 512-byte frame.
pub(crate) fn in_frame(base: u8, off: i16, size: i32) -> bool {
    let off = off as i32;
    base == FRAME_REG && off >= -(STACK_FRAME_SIZE as i32) && off + size <= 0
}

/// Whether `i` is an unconditional jump (`ja`, either class).
pub(crate) fn is_ja(i: Insn) -> bool {
    i.opc == (CLS_JMP | JMP_JA) || i.opc == (CLS_JMP32 | JMP_JA)
}

/// Bytes accessed by a load or store with opcode `opc`.
pub(crate) fn access_size(opc: u8) -> usize {
    1 << PROPS[opc as usize].log
}
