//! Bounds proofs: an abstract interpretation over the program's control-flow graph that finds
//! loads and stores whose address the program itself has already compared against the end of
//! the input memory, so the JIT can emit them without a check (the kernel verifier's
//! `data`/`data_end` idea, for our calling convention: r1 = start, r2 = length).
//!
//! Abstract values of r0..r9 (r10 is never tracked):
//! - `Ptr { lo, hi }`: `start + off` with `lo <= off` and `off <= hi`, where `hi` is a
//!   constant, or `len + k`, or both, or unknown;
//! - `End(k)`: `start + len + k`; `Len(k)`: `len + k`; `Const(c)`; `Top`: anything.
//!
//! and per state a lower bound of `len` (`min_len`). Facts come from arithmetic (`mov`, `add`
//! and `sub` of constants, `ptr + len`, `len + const`) and from the edges of 64-bit conditional
//! jumps comparing such values. An access `[b + d, +n)` is *proven* when in every state that
//! reaches it `b` is a `Ptr` with `lo + d >= 0` and `off + d + n <= len` (from `hi`).
//!
//! Soundness rests on these invariants:
//! - no tracked value wraps around: the input memory lies in user space (below 2^47) and every
//!   tracked constant and offset is below 2^40 in magnitude, so `start + off`, `start + len + k`
//!   and `len + k` are the exact sums; a compare only refines when the values it relies on
//!   cannot have wrapped (finite offsets, `len + k >= 0` known);
//! - joins keep bounds that hold on every incoming edge; after a few passes a changing value is
//!   widened to what is surely true (unknown bounds, `Top`), so the fixed point is reached;
//! - registers written in ways not modelled become `Top`; helper calls change only r0 (r1-r5
//!   are kept by both engines); programs with local calls are not analysed (no proofs);
//! - proofs are read from the fixed point only; unreachable code gets none.

use super::analysis::{Analysis, LEADER, START};
use crate::insn::*;

/// Offsets and constants are tracked below this magnitude (no wrap-around, see above).
const LIMIT: i64 = 1 << 40;
/// Passes before changing values are widened.
const WIDEN_AFTER: usize = 3;
/// Passes at most (a safety net: widening converges long before).
const MAX_PASSES: usize = 12;
/// Largest program analysed (slots): the state vectors stay small.
const MAX_SLOTS: usize = 4096;
/// `lo` unknown.
const NEG_INF: i64 = i64::MIN;

/// An upper bound of a pointer's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hi {
    /// `off <= c`.
    c: Option<i64>,
    /// `off <= len + k`.
    l: Option<i64>,
}

const HI_NONE: Hi = Hi { c: None, l: None };

/// The abstract value of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Top,
    Const(i64),
    Len(i64),
    End(i64),
    Ptr { lo: i64, hi: Hi },
}

/// What is known at a program point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    r: [Val; 10],
    min_len: i64,
}

/// Proofs for one program, in vectors kept between compiles.
#[derive(Default)]
pub(crate) struct Ranges {
    /// In-state of each block leader (`None`: not reached yet).
    states: Vec<Option<State>>,
    /// Per slot: the access there is proven in bounds of the input memory.
    pub proven: Vec<bool>,
}

fn small(v: i64) -> bool {
    (-LIMIT..LIMIT).contains(&v)
}

/// `v + c` for a tracked value (`Top` when it would leave the tracked range).
fn add_const(v: Val, c: i64) -> Val {
    if !small(c) {
        return Val::Top;
    }
    let ok = |x: i64| small(x).then_some(x);
    match v {
        Val::Const(a) => ok(a + c).map_or(Val::Top, Val::Const),
        Val::Len(k) => ok(k + c).map_or(Val::Top, Val::Len),
        Val::End(k) => ok(k + c).map_or(Val::Top, Val::End),
        Val::Ptr { lo, hi } => {
            let lo = if lo == NEG_INF {
                NEG_INF
            } else {
                match ok(lo + c) {
                    Some(x) => x,
                    None => return Val::Top,
                }
            };
            let hi = Hi {
                c: hi.c.and_then(|x| ok(x + c)),
                l: hi.l.and_then(|x| ok(x + c)),
            };
            Val::Ptr { lo, hi }
        }
        Val::Top => Val::Top,
    }
}

/// `a + b` of two tracked values.
fn add_vals(a: Val, b: Val) -> Val {
    match (a, b) {
        (x, Val::Const(c)) | (Val::Const(c), x) => add_const(x, c),
        (Val::Ptr { lo, hi }, Val::Len(k)) | (Val::Len(k), Val::Ptr { lo, hi })
            if hi.c == Some(lo) =>
        {
            // An exact offset plus the length: the end, shifted.
            add_const(Val::End(k), lo)
        }
        _ => Val::Top,
    }
}

impl State {
    fn entry() -> State {
        let mut r = [Val::Const(0); 10];
        r[1] = Val::Ptr {
            lo: 0,
            hi: Hi {
                c: Some(0),
                l: Some(0),
            },
        };
        r[2] = Val::Len(0);
        State { r, min_len: 0 }
    }

    /// Whether `len + k >= 0` surely (so `len + k` and `start + len + k` do not wrap).
    fn nonneg_len(&self, k: i64) -> bool {
        k >= 0 || self.min_len >= -k
    }

    fn raise_min_len(&mut self, m: i64) {
        if m > self.min_len && m < LIMIT {
            self.min_len = m;
        }
    }

    /// Whether `[b + d, +n)` with `b` = register value `v` surely lies in the input memory.
    fn proves(&self, v: Val, d: i64, n: i64) -> bool {
        let Val::Ptr { lo, hi } = v else {
            return false;
        };
        if lo == NEG_INF || lo + d < 0 {
            return false;
        }
        hi.l.is_some_and(|k| k + d + n <= 0) || hi.c.is_some_and(|c| c + d + n <= self.min_len)
    }

    /// The value of an operand: a register (`Ok`) or an immediate (`Err`).
    fn operand(&self, o: Result<usize, i64>) -> Val {
        match o {
            Ok(r) => self.r[r],
            Err(imm) => Val::Const(imm),
        }
    }

    /// Learns `a < b` (`strict`) or `a <= b` from a 64-bit compare (`signed` or not).
    fn learn_less(
        &mut self,
        a: Result<usize, i64>,
        b: Result<usize, i64>,
        strict: bool,
        signed: bool,
    ) {
        let e = i64::from(strict);
        match (self.operand(a), self.operand(b)) {
            // An address below the end: its offset is below len + k. (Both sums are exact:
            // the offset is finite and not negative, len + k is not negative.)
            (Val::Ptr { lo, hi }, Val::End(k)) if !signed => {
                let finite = lo != NEG_INF && lo >= 0 && (hi.c.is_some() || hi.l.is_some());
                let Ok(a) = a else { return };
                if !finite || !self.nonneg_len(k) {
                    return;
                }
                let bound = k - e;
                let hi = Hi {
                    c: hi.c,
                    l: Some(hi.l.map_or(bound, |x| x.min(bound))),
                };
                self.r[a] = Val::Ptr { lo, hi };
                // lo <= off < len + k: the length is at least lo - k + e.
                self.raise_min_len(lo - k + e);
            }
            // A constant below the length: the length is above it. (Signed compares act like
            // unsigned ones here: both sides are below 2^63.)
            (Val::Const(c), Val::Len(k)) if c >= 0 && self.nonneg_len(k) => {
                self.raise_min_len(c - k + e);
            }
            _ => {}
        }
    }

    /// Refines the state by the outcome `taken` of jump `i`.
    fn learn_jump(&mut self, i: Insn, taken: bool) {
        if i.class() != CLS_JMP || i.dst > 9 {
            return;
        }
        let x = i.opc & SRC_X != 0;
        if x && i.src > 9 {
            return;
        }
        let d: Result<usize, i64> = Ok(i.dst as usize);
        let s: Result<usize, i64> = if x {
            Ok(i.src as usize)
        } else {
            Err(i.imm as i64)
        };
        let op = i.opc & 0xf0;
        // Each outcome as `lhs < rhs` or `lhs <= rhs`: (swap operands, strict, signed).
        let (swap, strict, signed) = match (op, taken) {
            (JMP_JLT, true) | (JMP_JGE, false) => (false, true, false),
            (JMP_JLE, true) | (JMP_JGT, false) => (false, false, false),
            (JMP_JGT, true) | (JMP_JLE, false) => (true, true, false),
            (JMP_JGE, true) | (JMP_JLT, false) => (true, false, false),
            (JMP_JSLT, true) | (JMP_JSGE, false) => (false, true, true),
            (JMP_JSLE, true) | (JMP_JSGT, false) => (false, false, true),
            (JMP_JSGT, true) | (JMP_JSLE, false) => (true, true, true),
            (JMP_JSGE, true) | (JMP_JSLT, false) => (true, false, true),
            (JMP_JEQ, _) | (JMP_JNE, _) => {
                self.learn_equal(i.dst as usize, s, (op == JMP_JEQ) == taken);
                return;
            }
            _ => return,
        };
        if swap {
            self.learn_less(s, d, strict, signed);
        } else {
            self.learn_less(d, s, strict, signed);
        }
    }

    /// Learns `r[d] == s` (`eq`) or `!=`.
    fn learn_equal(&mut self, d: usize, s: Result<usize, i64>, eq: bool) {
        if let (Val::Len(k), Val::Const(c)) = (self.r[d], self.operand(s)) {
            if !self.nonneg_len(k) || c < 0 {
                return;
            }
            if eq {
                self.raise_min_len(c - k);
            } else if c == k {
                // len + k != k: len != 0.
                self.raise_min_len(1);
            }
        }
    }

    /// Runs one non-jump instruction.
    fn step(&mut self, i: Insn, next: Option<Insn>) {
        let d = i.dst as usize;
        let x = i.opc & SRC_X != 0;
        let src = |st: &State| -> Val {
            if i.src as usize >= 10 {
                Val::Top
            } else {
                st.r[i.src as usize]
            }
        };
        let set = |st: &mut State, v: Val| {
            if d < 10 {
                st.r[d] = v;
            }
        };
        match i.class() {
            CLS_ALU64 => {
                let v = match (i.opc & 0xf0, x) {
                    (ALU_MOV, false) if i.off == 0 => Val::Const(i.imm as i64),
                    (ALU_MOV, true) if i.off == 0 => src(self),
                    (ALU_ADD, false) => {
                        add_const(self.r.get(d).copied().unwrap_or(Val::Top), i.imm as i64)
                    }
                    (ALU_SUB, false) => {
                        add_const(self.r.get(d).copied().unwrap_or(Val::Top), -(i.imm as i64))
                    }
                    (ALU_ADD, true) => {
                        add_vals(self.r.get(d).copied().unwrap_or(Val::Top), src(self))
                    }
                    _ => Val::Top,
                };
                let v = match v {
                    Val::Const(c) if !small(c) => Val::Top,
                    v => v,
                };
                set(self, v);
            }
            CLS_ALU => {
                let v = match (i.opc & 0xf0, x) {
                    (ALU_MOV, false) if i.off == 0 => Val::Const(i.imm as u32 as i64),
                    _ => Val::Top,
                };
                let v = match v {
                    Val::Const(c) if !small(c) => Val::Top,
                    v => v,
                };
                set(self, v);
            }
            CLS_LD => {
                let v = match next {
                    Some(n) if i.opc == LD_DW_IMM => {
                        let c = ((n.imm as u32 as u64) << 32 | i.imm as u32 as u64) as i64;
                        if small(c) {
                            Val::Const(c)
                        } else {
                            Val::Top
                        }
                    }
                    _ => Val::Top,
                };
                set(self, v);
            }
            CLS_LDX => set(self, Val::Top),
            CLS_STX if i.opc & 0xe0 == MODE_ATOMIC => {
                if i.imm == ATOMIC_CMPXCHG {
                    self.r[0] = Val::Top;
                } else if i.imm & ATOMIC_FETCH != 0 && (i.src as usize) < 10 {
                    self.r[i.src as usize] = Val::Top;
                }
            }
            CLS_JMP | CLS_JMP32 if i.opc == CALL || i.opc == CALLX => self.r[0] = Val::Top,
            _ => {}
        }
    }

    /// Joins `o` into `self`; returns whether `self` changed. With `widen`, values that change
    /// are replaced by what surely holds.
    fn join(&mut self, o: &State, widen: bool) -> bool {
        let old = *self;
        let min_self = self.min_len;
        let min_other = o.min_len;
        self.min_len = self.min_len.min(o.min_len);
        for k in 0..10 {
            self.r[k] = join_val(self.r[k], min_self, o.r[k], min_other);
        }
        if widen && *self != old {
            if self.min_len != old.min_len {
                self.min_len = 0;
            }
            for k in 0..10 {
                if self.r[k] != old.r[k] {
                    self.r[k] = match self.r[k] {
                        Val::Ptr { lo, hi } => {
                            let lo = match old.r[k] {
                                Val::Ptr { lo: l0, .. } if l0 == lo => lo,
                                _ => NEG_INF,
                            };
                            let keep =
                                |x: Option<i64>, y: Option<i64>| (x == y).then_some(x).flatten();
                            let (oc, ol) = match old.r[k] {
                                Val::Ptr { hi: h0, .. } => (h0.c, h0.l),
                                _ => (None, None),
                            };
                            Val::Ptr {
                                lo,
                                hi: Hi {
                                    c: keep(hi.c, oc),
                                    l: keep(hi.l, ol),
                                },
                            }
                        }
                        _ => Val::Top,
                    };
                }
            }
        }
        *self != old
    }
}

/// The join of two register values (`ma`, `mb`: the states' length bounds).
fn join_val(a: Val, ma: i64, b: Val, mb: i64) -> Val {
    if a == b {
        return a;
    }
    match (a, b) {
        (Val::Ptr { lo: la, hi: ha }, Val::Ptr { lo: lb, hi: hb }) => {
            let lo = la.min(lb);
            // off <= c in a state whose length is at least m: off <= len + (c - m).
            let as_len = |h: Hi, m: i64| match (h.l, h.c.map(|c| c - m)) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            let hi = Hi {
                c: match (ha.c, hb.c) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    _ => None,
                },
                l: match (as_len(ha, ma), as_len(hb, mb)) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    _ => None,
                },
            };
            if hi == HI_NONE && lo == NEG_INF {
                Val::Top
            } else {
                Val::Ptr { lo, hi }
            }
        }
        _ => Val::Top,
    }
}

impl Ranges {
    /// Capacity kept, in bytes.
    pub(crate) fn capacity(&self) -> usize {
        std::mem::size_of::<Option<State>>() * self.states.capacity() + self.proven.capacity()
    }

    /// Analyses `insns` (pre-pass results in `an`); afterwards `proven[pc]` says whether the
    /// access at `pc` needs no check. Does nothing (no proofs) for programs it does not cover.
    pub(crate) fn run(&mut self, insns: &[Insn], an: &Analysis) {
        let n = insns.len();
        self.proven.clear();
        self.proven.resize(n, false);
        let u = an.usage;
        if u.calls || !u.any_checks || n > MAX_SLOTS {
            return;
        }
        self.states.clear();
        self.states.resize(n, None);
        self.states[0] = Some(State::entry());
        let mut pass = 0;
        loop {
            let mut changed = false;
            for pc in 0..n {
                if an.flags(pc) & LEADER == 0 {
                    continue;
                }
                let Some(st) = self.states[pc] else { continue };
                changed |= self.block(insns, an, pc, st, pass >= WIDEN_AFTER, false);
            }
            pass += 1;
            if !changed {
                break;
            }
            if pass >= MAX_PASSES {
                // No fixed point (cannot happen with widening): no proofs.
                return;
            }
        }
        for pc in 0..n {
            if an.flags(pc) & LEADER == 0 {
                continue;
            }
            if let Some(st) = self.states[pc] {
                self.block(insns, an, pc, st, false, true);
            }
        }
    }

    /// Runs the block at leader `start` from state `st`: propagates to its successors
    /// (returns whether one changed), or with `record`, records its proofs.
    fn block(
        &mut self,
        insns: &[Insn],
        an: &Analysis,
        start: usize,
        mut st: State,
        widen: bool,
        record: bool,
    ) -> bool {
        let n = insns.len();
        let mut changed = false;
        let mut pc = start;
        loop {
            let i = insns[pc];
            let cls = i.class();
            if record && matches!(cls, CLS_LDX | CLS_ST | CLS_STX) {
                let base = if cls == CLS_LDX { i.src } else { i.dst } as usize;
                if base < 10 {
                    let size = super::analysis::access_size(i.opc) as i64;
                    self.proven[pc] = st.proves(st.r[base], i.off as i64, size);
                }
            }
            if cls == CLS_JMP || cls == CLS_JMP32 {
                let op = i.opc & 0xf0;
                if i.opc == EXIT {
                    return changed;
                }
                if op == JMP_CALL {
                    st.step(i, None);
                } else {
                    let rel = if i.opc == (CLS_JMP32 | JMP_JA) {
                        i.imm as i64
                    } else {
                        i.off as i64
                    };
                    let t = pc as i64 + 1 + rel;
                    let mut taken = st;
                    if op != JMP_JA {
                        taken.learn_jump(i, true);
                        st.learn_jump(i, false);
                    }
                    if (0..n as i64).contains(&t) && !record {
                        changed |= self.flow(t as usize, &taken, widen);
                    }
                    if op == JMP_JA {
                        return changed;
                    }
                }
            } else {
                let next = insns.get(pc + 1).copied();
                st.step(i, next);
            }
            pc += if i.opc == LD_DW_IMM { 2 } else { 1 };
            if pc >= n {
                return changed;
            }
            if an.flags(pc) & START != 0 && an.flags(pc) & LEADER != 0 {
                if !record {
                    changed |= self.flow(pc, &st, widen);
                }
                return changed;
            }
        }
    }

    /// Joins `st` into the in-state of leader `t`; returns whether it changed.
    fn flow(&mut self, t: usize, st: &State, widen: bool) -> bool {
        match &mut self.states[t] {
            Some(cur) => cur.join(st, widen),
            slot @ None => {
                *slot = Some(*st);
                true
            }
        }
    }
}
