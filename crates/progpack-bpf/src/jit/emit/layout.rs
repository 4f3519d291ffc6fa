//! Where the emitted code keeps the run's own values: the instruction budget, the input
//! memory's start and length and the per-size access limits, the stack's top and the
//! deepest frame allowed, and the run environment pointer.
//!
//! These live in x86 registers the program does not use (an eBPF register that no
//! instruction mentions leaves its host register free; r9 too when nothing needs it as
//! scratch; r12 always), the busiest first, and in 8-byte slots of the native frame
//! (`[r12 + 8k]`, r12 then pointing at the frame) when registers run out or local calls need a
//! fixed frame pointer. Caller-saved registers are free only in programs that never call out
//! (a helper call names r1-r5 and clobbers r9; the extra regions' check is a call from an
//! access stub).
//!
//! Invariants: no two values share a location; a location never is the host register of an
//! eBPF register the program mentions, nor rdi/rsi (r1/r2, which are set at entry), nor a
//! scratch register (r10, r11, and r9 when `needs_r9`); every callee-saved register the code
//! changes is in `saved`.

use super::super::analysis::Usage;
use super::super::x86::{Mem, R};
use super::MAP;

/// Where a run-time value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// In a register.
    Reg(R),
    /// In the 8-byte slot at `[r12 + offset]`.
    Slot(i32),
}

impl Loc {
    /// The memory operand of a slot.
    pub(crate) fn mem(self) -> Option<Mem> {
        match self {
            Loc::Slot(d) => Some(Mem::at(FRAME, d)),
            Loc::Reg(_) => None,
        }
    }
}

/// The frame pointer register, when the code needs one.
pub(crate) const FRAME: R = R::R12;

/// A short list of registers (at most eight) without allocating.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs {
    r: [R; 8],
    n: usize,
}

impl Default for Regs {
    fn default() -> Self {
        Regs {
            r: [R::Rax; 8],
            n: 0,
        }
    }
}

impl Regs {
    pub(crate) fn push(&mut self, r: R) {
        if self.n < 8 && !self.as_slice().contains(&r) {
            self.r[self.n] = r;
            self.n += 1;
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.n
    }
    pub(crate) fn as_slice(&self) -> &[R] {
        &self.r[..self.n]
    }
}

/// What the layout is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Needs {
    /// The pre-pass results.
    pub usage: Usage,
    /// Whether blocks charge the instruction budget.
    pub budget: bool,
    /// Whether code reads the run environment pointer (context helpers, extra regions).
    pub env: bool,
    /// Whether access stubs call out to check extra regions (a call from anywhere in the
    /// body: caller-saved registers hold nothing of ours, and the stack stays aligned).
    pub extra_regions: bool,
    /// Whether the program sees virtual addresses (input memory at a fixed address).
    pub hide: bool,
}

/// The run-time values' locations (`None`: not needed).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layout {
    /// Instructions left.
    pub budget: Option<Loc>,
    /// Length of the input memory.
    pub len: Option<Loc>,
    /// Host address of the input memory (for the general check, and every access when
    /// addresses are hidden).
    pub mem: Option<Loc>,
    /// With hidden addresses and a stack: host top of the stack minus its virtual top, so
    /// that the program's r10 is `rbp - delta`.
    pub vdelta: Option<Loc>,
    /// For access size `1 << i` (i = 1..3): the number of valid start offsets
    /// `len - size + 1` (0 when `len < size`). Size 1 uses `len`.
    pub cnt: [Option<Loc>; 4],
    /// End of the stack region (r10 of frame 0), with local calls and a stack window.
    pub top: Option<Loc>,
    /// Lowest r10 a local call may make (deepest frame), with local calls and a window.
    pub depth_limit: Option<Loc>,
    /// The run environment pointer.
    pub env: Option<Loc>,
    /// Whether r12 points at the frame of slots (and is the native stack pointer to
    /// restore on a fault inside local calls).
    pub frame: bool,
    /// Callee-saved registers the prologue pushes, in order.
    pub saved: Regs,
    /// Bytes the prologue subtracts from rsp after the pushes (slots and alignment).
    pub frame_bytes: i32,
}

/// Free registers in order of preference: caller-saved first (no save needed), then r12
/// and the callee-saved ones.
const ORDER: [R; 10] = [
    R::R8,
    R::Rcx,
    R::Rdx,
    R::R9,
    R::R12,
    R::Rbx,
    R::R13,
    R::R14,
    R::R15,
    R::Rbp,
];

/// Whether `r` is callee-saved in the System V ABI.
fn callee_saved(r: R) -> bool {
    matches!(r, R::Rbx | R::Rbp | R::R12 | R::R13 | R::R14 | R::R15)
}

impl Layout {
    /// Computes the layout for a program with these needs.
    pub(crate) fn new(n: Needs) -> Layout {
        let u = n.usage;
        let uses_rbp = u.stack || u.calls;
        // Bit per x86 register number: free for a value. The registers of r3-r9 and r10 are
        // free when the program never names them (r3-r5 only if nothing calls out).
        let calls_out = u.helper_calls || n.extra_regions;
        let mut free = 1u32 << R::R12 as u32;
        let mut unused = !u.regs;
        if calls_out {
            unused &= !0x38;
        }
        if uses_rbp {
            unused &= !(1 << 10);
        }
        let mut m = unused & 0x7f8;
        while m != 0 {
            free |= 1 << MAP[m.trailing_zeros() as usize] as u32;
            m &= m - 1;
        }
        if !u.needs_r9 && !n.extra_regions {
            free |= 1 << R::R9 as u32;
        }

        // The values needed, busiest first (bit k: value k of `locs` below).
        let checks = u.any_checks;
        let window_calls = u.calls && u.stack;
        let wanted = u16::from(n.budget)
            | u16::from(checks && u.writes(2)) << 1
            | u16::from((n.hide && u.any_mem) || (u.general_sizes != 0 && u.writes(1))) << 2
            | u16::from(u.general_sizes & 0b1110) << 2
            | (u16::from(window_calls) * 0b11) << 6
            | u16::from(n.env) << 8
            | u16::from(n.hide && u.stack) << 9;
        let frame = u.calls || wanted.count_ones() > free.count_ones();
        if frame {
            free &= !(1 << R::R12 as u32);
        }
        let mut lay = Layout {
            frame,
            ..Layout::default()
        };
        let mut slots = 0;
        let mut locs = [None; 10];
        let mut order = 0;
        let mut saved_values = Regs::default();
        let mut w = wanted;
        while w != 0 {
            let k = w.trailing_zeros() as usize;
            w &= w - 1;
            let loc = &mut locs[k];
            while order < ORDER.len() && free & (1 << ORDER[order] as u32) == 0 {
                order += 1;
            }
            *loc = Some(match ORDER.get(order) {
                Some(&r) => {
                    order += 1;
                    if callee_saved(r) {
                        saved_values.push(r);
                    }
                    Loc::Reg(r)
                }
                None => {
                    slots += 1;
                    Loc::Slot(8 * (slots - 1))
                }
            });
        }
        let [budget, len, mem, cnt2, cnt4, cnt8, top, depth_limit, env, vdelta] = locs;
        lay.budget = budget;
        lay.vdelta = vdelta;
        // Values that stay where the entry put them (with hidden addresses r1 is virtual).
        lay.len = len.or(checks.then_some(Loc::Reg(MAP[2])));
        lay.mem = mem.or((u.any_checks && !n.hide).then_some(Loc::Reg(MAP[1])));
        lay.cnt = [lay.len, cnt2, cnt4, cnt8];
        lay.top = top;
        lay.depth_limit = depth_limit;
        lay.env = env;

        // Callee-saved registers the code changes: r6-r9 in use, rbp for r10, r12 as frame,
        // and those holding values.
        let mut m = u.regs & 0x3c0;
        while m != 0 {
            lay.saved.push(MAP[m.trailing_zeros() as usize]);
            m &= m - 1;
        }
        if uses_rbp {
            lay.saved.push(R::Rbp);
        }
        if frame {
            lay.saved.push(R::R12);
        }
        for &r in saved_values.as_slice() {
            lay.saved.push(r);
        }
        // Native stack alignment at helper calls (System V: 16 bytes at the call). Entry
        // rsp is 8 mod 16; the body must be at 0 mod 16 when entered by falling through, at
        // 8 mod 16 when entered by `call` (local calls).
        let mut bytes = 8 * slots;
        let pushed = 8 * lay.saved.len() as i32 + bytes;
        let want_mod = if u.calls { 0 } else { 8 };
        if (calls_out || u.calls) && pushed.rem_euclid(16) != want_mod {
            bytes += 8;
        }
        lay.frame_bytes = bytes;
        lay
    }
}
