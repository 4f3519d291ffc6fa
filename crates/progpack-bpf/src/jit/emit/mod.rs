//! eBPF -> x86-64 translation, in one pass over the program after the pre-pass
//! ([`super::analysis`]).
//!
//! Register map (eBPF -> x86-64; the five argument registers line up with the System V calling
//! convention so helper calls need no shuffling, and r6-r10 sit in callee-saved registers):
//!
//! | eBPF | r0  | r1  | r2  | r3  | r4  | r5 | r6  | r7  | r8  | r9  | r10 | scratch       |
//! |------|-----|-----|-----|-----|-----|----|-----|-----|-----|-----|-----|---------------|
//! | x86  | rax | rdi | rsi | rdx | rcx | r8 | rbx | r13 | r14 | r15 | rbp | r9, r10, r11  |
//!
//! The run's own values (budget, input length and limits, stack top, environment) live in
//! registers the program leaves free, or in frame slots ([`layout`]).
//!
//! Entry (System V): `fn(r1 = input address, r2 = input length, budget, stack top,
//! environment) -> (rax, rdx)`. On a normal exit rax is r0 and rdx is 0; on a fault rdx is
//! the fault word (`pc | kind << 24`, see [`super::Fault`]) and rax its detail (the address
//! of a bad access, the id of a bad `callx`). Layout of the emitted code: prologue (with
//! local calls: `call` into the body, then the epilogue and the fault exit), the body (one
//! label per instruction slot), then (without local calls) the fault exit, and the
//! out-of-line stubs: fault words, the second half of bounds checks, the frame-zeroing
//! subroutine of local calls.
//!
//! Programs made from one template (the same slots but for plain constants) are often
//! compiled in a row: from the second of them on, the translator notes where the code holds
//! each constant, and a next program that differs only there, by constants encoded in the
//! same form, gets the kept code with its own constants written in ([`Template`]); its
//! bytes are those a translation would emit.
//!
//! Invariants the emitted code keeps:
//! - Every load, store and atomic goes through [`mem`]: the access `[a, a+n)` is allowed iff
//!   it lies in the input memory or in the live frames `[r10 - 512, top)`, the interpreter's
//!   rule. No check is emitted for `r10 + off` inside the current frame (in range by
//!   construction); `r1 + off` (off >= 0) when the program never writes r1 is one compare of
//!   the input length with `off + n`; any other address is one unsigned compare of
//!   `a - start` with the number of valid start offsets `len - n + 1`. An address outside the
//!   input memory goes to a stub that checks the live frames and either performs the access
//!   there and comes back, or returns the fault.
//! - The eBPF stack is not the native stack: return addresses and saved registers are out of
//!   the program's reach. r10 is the top of the current 512-byte frame inside the stack region;
//!   a `call local` first checks that one more frame fits (this is the call depth limit), then
//!   zeroes the new frame.
//! - The native stack is 16-byte aligned at every helper call.
//! - With the instruction budget on, each basic block charges its instruction count when it
//!   is entered (a block ending in a merged `ja` also charges its target's), so a run fails
//!   exactly when the interpreter's instruction limit would.
//! - The fault exit restores the native stack pointer (r12 with local calls), so a fault (or
//!   unwind) inside nested local calls returns straight to the host.
//! - Division never traps: a zero divisor and the signed `INT_MIN / -1` are handled before
//!   `div`/`idiv` runs.
//! - With constant blinding on, no immediate of the program (ALU, jump and store
//!   immediates, `lddw` constants, divisors) appears in the code: each is emitted XORed with
//!   a fresh key derived from the program's random key, and XORed back in a scratch register.

mod alu;
mod flow;
pub(crate) mod layout;
mod mem;

pub(crate) use mem::extra_region_check;

use std::cell::RefCell;

use super::analysis::{self, Analysis, Usage, LEADER, MERGED_TARGET, START};
use super::ranges::Ranges;
use super::x86::{AbsCallSite, Alu, Asm, Cond, Label, Mem, R};
use super::JitError;
use crate::helpers::Helpers;
use crate::insn::*;
use layout::{Layout, Loc, Needs};

/// Bytes of stack the program can address: one 512-byte frame per call depth.
pub(crate) const STACK_SIZE: usize = MAX_CALL_DEPTH * STACK_FRAME_SIZE;

/// Largest program (in slots) the JIT compiles: the pc must fit in 24 bits of a fault word.
pub(crate) const MAX_SLOTS: usize = 1 << 24;

/// Base of the (never dereferenced) stack region of code that uses local calls but no stack
/// window: r10 arithmetic for the depth check needs some address that cannot wrap.
pub(crate) const NO_STACK: u64 = 1 << 20;

// ---- fault kinds (bits 24.. of the fault word) ----
/// `call local` would exceed the call depth limit.
pub(crate) const FAULT_DEPTH: u32 = 0x01;
/// `callx` named an unregistered helper (id in the detail).
pub(crate) const FAULT_CALLX: u32 = 0x02;
/// Execution ran past the last instruction.
pub(crate) const FAULT_END: u32 = 0x03;
/// The instruction budget ran out.
pub(crate) const FAULT_BUDGET: u32 = 0x04;
/// Out-of-bounds load; low two bits: log2 of the access size.
pub(crate) const FAULT_LOAD: u32 = 0x10;
/// Out-of-bounds store or atomic; low two bits: log2 of the access size.
pub(crate) const FAULT_STORE: u32 = 0x20;

/// eBPF register -> x86-64 register.
pub(crate) const MAP: [R; 11] = [
    R::Rax,
    R::Rdi,
    R::Rsi,
    R::Rdx,
    R::Rcx,
    R::R8,
    R::Rbx,
    R::R13,
    R::R14,
    R::R15,
    R::Rbp,
];

/// Entry arguments after r1 and r2, by register.
const ARG_BUDGET: R = R::Rdx;
const ARG_TOP: R = R::Rcx;
const ARG_ENV: R = R::R8;

/// Code generation options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// Count executed instructions against the budget argument.
    pub budget: bool,
    /// With `budget`: count only in programs with a backward jump or a local call. The
    /// others run at most [`RunNeeds::floor`] instructions, so their code ignores the budget
    /// argument and the caller runs lower limits elsewhere (the interpreter).
    pub loops_only: bool,
    /// Reach helpers with `call rel32` (else `mov rax, imm64; call rax`).
    pub rel_calls: bool,
    /// Blind the program's immediates with keys derived from this (non-zero) key.
    pub blind: Option<u64>,
    /// The program runs in an environment with extra regions (maps): accesses outside memory
    /// and stack are checked against them. Without, they fault at once.
    pub extra_regions: bool,
    /// Emit no bounds check at all (a reference for benchmarks; see
    /// [`super::JitProgram::new_unchecked`]).
    pub unchecked: bool,
    /// The program sees virtual addresses ([`crate::vaddr`]): r1 is `INPUT`, r10 is virtual,
    /// accesses translate.
    pub hide: bool,
}

/// What a run of the code needs from its caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunNeeds {
    /// Bytes of stack region to pass (0: none; else frame 0, or all frames with local calls).
    /// (32 bits keep a `JitProgram`, which holds these, small.)
    pub stack_bytes: u32,
    /// Whether the code reads the environment argument (a `HelperContext`): it calls context
    /// helpers or checks extra regions.
    pub env: bool,
    /// Accesses emitted without a check because [`Ranges`] proved them in bounds.
    pub proven: u32,
    /// The code hides addresses: it must run in an environment that does.
    pub hide: bool,
    /// Non-zero when the budget was asked for but the code does not count
    /// ([`Options::loops_only`] on a program without loops): the most instructions a run
    /// executes. A run with a lower limit must not use this code.
    pub floor: u32,
}

/// Out-of-line code after the body.
#[derive(Clone, Copy, Debug)]
enum Stub {
    /// Raise fault `word` (no detail); reached by the rel32 jump ending at `end`.
    Fault { end: u32, word: u32 },
    /// An access that missed the input memory (reached by the rel32 jump ending at `end`):
    /// recompute its address, try the live frames (performing the access there and going
    /// back to offset `back`), else fault.
    Access {
        end: u32,
        back: u32,
        base: u8,
        off: i32,
        size: usize,
        acc: mem::Access,
        word: u32,
    },
}

/// Translation state.
struct Cx<'a> {
    a: &'a mut Asm,
    insns: &'a [Insn],
    an: &'a Analysis,
    /// Per slot: the access there is proven in bounds (empty: no proofs).
    proven: &'a [bool],
    lay: Layout,
    helpers: &'a Helpers,
    opts: Options,
    /// Label of slot 0 (before its charge); slot `pc` has label `pcs + pc`.
    pcs: Label,
    /// Label of slot 0 past its charge; only bound at merged-jump targets.
    charged: Label,
    fault: Label,
    unwind: Option<Label>,
    stubs: Vec<Stub>,
    /// The shared frame-zeroing subroutine, once a local call needs it.
    zero_frame: Option<Label>,
    /// The shared subroutine calling [`mem::extra_region_check`], once an access needs it.
    extra_check: Option<Label>,
    /// Blinding: constants blinded so far (mixed into each key).
    blinded: u64,
    /// Where the code holds the program's plain constants (see [`Template`]), noted only
    /// if `record`.
    sites: &'a mut Vec<ImmSite>,
    record: bool,
}

/// Where the code holds the immediate of slot `pc` as it is: its last byte (`wide`: four
/// bytes, little-endian) ends an instruction encoded in a form chosen only by
/// [`imm_class`] of the slot.
#[derive(Clone, Copy, Debug)]
struct ImmSite {
    pc: u32,
    pos: u32,
    wide: bool,
    class: u8,
}

/// What the encoders choose by the immediate of a slot that has an [`ImmSite`]: `mov`: zero
/// (`xor`), positive, negative; `test`: nothing; `op r, imm` and `cmp`: one byte or four.
/// Slots of the same instruction but for an immediate of the same class have code of the
/// same bytes but for the immediate's own.
fn imm_class(i: Insn) -> u8 {
    let op = i.opc & 0xf0;
    match i.class() {
        CLS_ALU | CLS_ALU64 if op == ALU_MOV => match i.imm {
            0 => 0,
            x if x > 0 => 1,
            _ => 2,
        },
        CLS_JMP | CLS_JMP32 if op == JMP_JSET => 3,
        _ if i8::try_from(i.imm).is_ok() => 4,
        _ => 5,
    }
}

/// The last compile's code, kept for the next program if it is the same but for plain
/// constants (many filters made from one template, compiled in a row): its code is then the
/// same bytes but at the [`ImmSite`]s, so it is patched there instead of translated again.
/// Kept only for code that depends on nothing but the slots and the options (no helper or
/// local calls, no blinding, no bounds proofs, which follow constants).
#[derive(Default)]
struct Template {
    /// Whether the assembler holds the code of `insns` compiled with `opts`.
    valid: bool,
    opts: Options,
    insns: Vec<Insn>,
    /// In slot order, at most one per slot.
    sites: Vec<ImmSite>,
    needs: RunNeeds,
}

impl Template {
    /// Whether `insns` compiled with `opts` is the kept code with other constants at its
    /// sites (of the same classes). (Not inlined: the options stay in memory, compared as
    /// they are, rather than taken apart into registers in the caller.)
    #[inline(never)]
    fn fits(&self, insns: &[Insn], opts: &Options) -> bool {
        if self.opts != *opts || self.insns.len() != insns.len() {
            return false;
        }
        let mut k = 0;
        for (pc, (a, b)) in self.insns.iter().zip(insns).enumerate() {
            // (Bitwise, without a branch per field.)
            let head = (a.opc ^ b.opc) | (a.dst ^ b.dst) | (a.src ^ b.src);
            if u16::from(head) | (a.off ^ b.off) as u16 != 0 {
                return false;
            }
            if a.imm == b.imm {
                continue;
            }
            while self.sites.get(k).is_some_and(|s| (s.pc as usize) < pc) {
                k += 1;
            }
            match self.sites.get(k) {
                Some(s) if s.pc as usize == pc && s.class == imm_class(*b) => {}
                _ => return false,
            }
        }
        true
    }

    /// Writes the constants of `insns` (which [`fits`](Self::fits)) into the kept code.
    fn apply(&mut self, insns: &[Insn], asm: &mut Asm) -> Result<RunNeeds, JitError> {
        // (Only the sites' slots can differ.)
        for s in &self.sites {
            let pc = s.pc as usize;
            let (Some(old), Some(new)) = (self.insns.get_mut(pc), insns.get(pc)) else {
                self.valid = false;
                return Err(JitError::Internal("a constant's slot outside the program"));
            };
            if old.imm != new.imm {
                if !asm.set_imm(s.pos, s.wide, new.imm) {
                    self.valid = false;
                    return Err(JitError::Internal("a constant's place outside the code"));
                }
                old.imm = new.imm;
            }
        }
        Ok(self.needs)
    }
}

/// The values computed last for a few keys: a lookup compares the keys, newest first; a new
/// key takes the place of the oldest.
struct Recent<K, V> {
    entries: [Option<(K, V)>; RECENT],
    /// The newest entry.
    newest: usize,
}

/// Keys a [`Recent`] keeps.
const RECENT: usize = 8;

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent {
            entries: std::array::from_fn(|_| None),
            newest: 0,
        }
    }
}

impl<K: PartialEq, V: Default> Recent<K, V> {
    /// The value kept for `key`.
    #[inline]
    fn get(&self, key: &K) -> Option<&V> {
        (0..RECENT).find_map(
            |k| match &self.entries[(self.newest + RECENT - k) % RECENT] {
                Some((x, v)) if x == key => Some(v),
                _ => None,
            },
        )
    }

    /// The place of `key` (which [`get`](Self::get) did not find): the oldest entry's, with
    /// its value to overwrite (its allocations reused).
    fn slot(&mut self, key: K) -> &mut V {
        self.newest = (self.newest + 1) % RECENT;
        let v = match self.entries[self.newest].take() {
            Some((_, v)) => v,
            None => V::default(),
        };
        &mut self.entries[self.newest].insert((key, v)).1
    }
}

/// Per-compile working vectors, kept per thread between compiles so that a compile
/// allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Scratch {
    an: Analysis,
    ranges: Ranges,
    stubs: Vec<Stub>,
    asm: Asm,
    /// The last layouts computed and their needs: programs of one shape (many filters from
    /// one template) get the same layout, and programs of different shapes often need the
    /// same (a layout costs more to compute than to compare).
    layout: Recent<Needs, Layout>,
    /// The last prologues emitted, with what each was computed from (the needs and the
    /// pre-pass usage; the layout follows from the needs): kept only when it refers to no
    /// label, so that its bytes are the same for every program of that key.
    prologue: Recent<(Needs, Usage), Vec<u8>>,
    /// The last compile's code, for a program that differs from it only in constants.
    template: Template,
}

impl Scratch {
    /// Bytes kept at most between compiles (a huge program's vectors are dropped).
    const KEEP: usize = 1 << 20;

    fn capacity(&self) -> usize {
        self.an.capacity()
            + self.ranges.capacity()
            + 40 * self.stubs.capacity()
            + self.asm.capacity()
            + 12 * self.template.insns.capacity()
            + 16 * self.template.sites.capacity()
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A translated program, borrowed from the thread's scratch space.
pub(crate) struct Output<'s> {
    /// The code (entry at offset 0).
    pub code: &'s [u8],
    /// `call rel32` helper sites to link.
    pub calls: &'s [AbsCallSite],
    /// Code offset of each slot (`x86::UNBOUND` for the second slot of `lddw`).
    pub pc_offsets: &'s [u32],
    /// What a run needs.
    pub needs: RunNeeds,
}

/// Translates `insns` and hands the result to `f` (the code lives in per-thread scratch
/// space, reused by the next compile on this thread).
pub(crate) fn translate<T>(
    insns: &[Insn],
    helpers: &Helpers,
    opts: Options,
    f: impl FnOnce(Output<'_>) -> T,
) -> Result<T, JitError> {
    let mut out = None;
    translate_to(insns, helpers, opts, |o| out = Some(f(o))).map_err(|e| *e)?;
    out.ok_or(JitError::Internal("a translation without output"))
}

/// [`translate`] for an `f` that keeps what it makes of the output itself. The result is
/// one word (the error is boxed), so that a caller's successful compile moves no error-sized
/// value through these layers.
pub(crate) fn translate_to(
    insns: &[Insn],
    helpers: &Helpers,
    opts: Options,
    f: impl FnOnce(Output<'_>),
) -> Result<(), Box<JitError>> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let r = run_translation(&mut scratch, insns, helpers, opts, f);
            if scratch.capacity() > Scratch::KEEP {
                *scratch = Scratch::default();
            }
            r
        }
        // A compile from inside `f` on this thread: fresh vectors, not reused.
        Err(_) => run_translation(&mut Scratch::default(), insns, helpers, opts, f),
    })
}

fn run_translation(
    scratch: &mut Scratch,
    insns: &[Insn],
    helpers: &Helpers,
    opts: Options,
    f: impl FnOnce(Output<'_>),
) -> Result<(), Box<JitError>> {
    let needs = translate_with(scratch, insns, helpers, opts).map_err(Box::new)?;
    f(Output {
        code: scratch.asm.code(),
        calls: scratch.asm.calls(),
        pc_offsets: scratch.asm.label_offsets(insns.len()),
        needs,
    });
    Ok(())
}

fn translate_with(
    scratch: &mut Scratch,
    insns: &[Insn],
    helpers: &Helpers,
    opts: Options,
) -> Result<RunNeeds, JitError> {
    if insns.is_empty() {
        return Err(JitError::Empty);
    }
    if insns.len() >= MAX_SLOTS {
        return Err(JitError::TooLarge { slots: insns.len() });
    }
    let Scratch {
        an,
        ranges,
        stubs,
        asm,
        layout,
        prologue,
        template,
    } = scratch;
    if template.valid && template.fits(insns, &opts) {
        if let Ok(needs) = template.apply(insns, asm) {
            return Ok(needs);
        }
        // The kept code did not match its own notes (never expected): translate afresh,
        // which resets the code below.
    }
    template.valid = false;
    let same_shape = an.run(
        insns,
        opts.budget,
        opts.loops_only,
        helpers.len(),
        opts.blind.is_some(),
    )?;
    // Bounds proofs only where the program can have compared addresses with the end.
    let prove = an.usage.any_checks && an.usage.len_read && !opts.unchecked;
    if prove {
        ranges.run(insns, an);
        an.drop_proven(insns, &ranges.proven);
    }
    let usage = an.usage;
    // The environment pointer: for context helpers, and for the extra regions' check.
    let context_calls = usage.helper_calls && helpers.iter().any(|(_, h)| h.takes_context());
    let mut usage = usage;
    if opts.unchecked {
        usage.any_checks = false;
        usage.general_sizes = 0;
    }
    let needs = Needs {
        usage,
        budget: an.counted,
        env: context_calls || opts.extra_regions,
        extra_regions: opts.extra_regions,
        hide: opts.hide,
    };
    let lay = match layout.get(&needs) {
        Some(lay) => *lay,
        None => {
            let lay = Layout::new(needs);
            *layout.slot(needs) = lay;
            lay
        }
    };
    let size_hint = an.code_bound() as usize + 256;
    asm.reset(opts.rel_calls, size_hint);
    let pcs = asm.labels(insns.len());
    let charged = if an.merged {
        asm.labels(insns.len())
    } else {
        Label::default()
    };
    let fault = asm.label();
    stubs.clear();
    let mut cx = Cx {
        a: asm,
        insns,
        an,
        proven: if prove { &ranges.proven } else { &[] },
        lay,
        helpers,
        opts,
        pcs,
        charged,
        fault,
        unwind: None,
        stubs: std::mem::take(stubs),
        zero_frame: None,
        extra_check: None,
        blinded: 0,
        sites: &mut template.sites,
        // Code that follows only from the slots and the options, of a program of the same
        // shape as the last one (the second of a run of programs from one template: the
        // next ones may reuse its code).
        record: same_shape && opts.blind.is_none() && !prove && !usage.calls && !usage.helper_calls,
    };
    cx.sites.clear();
    let r = cx.emit(needs, prologue);
    let (lay, record) = (cx.lay, cx.record);
    *stubs = std::mem::take(&mut cx.stubs);
    r.and_then(|()| asm.patch_jumps().map_err(JitError::Internal))?;
    let stack_bytes = match (usage.stack, usage.calls) {
        (false, _) => 0,
        (true, false) => STACK_FRAME_SIZE as u32,
        (true, true) => STACK_SIZE as u32,
    };
    let proven = if prove {
        ranges.proven.iter().filter(|&&p| p).count() as u32
    } else {
        0
    };
    let run_needs = RunNeeds {
        stack_bytes,
        env: lay.env.is_some(),
        proven,
        hide: opts.hide,
        floor: if opts.budget && !an.counted {
            an.count
        } else {
            0
        },
    };
    if record {
        template.insns.clear();
        template.insns.extend_from_slice(insns);
        template.opts = opts;
        template.needs = run_needs;
        template.valid = true;
    }
    Ok(run_needs)
}

impl Cx<'_> {
    fn emit(
        &mut self,
        needs: Needs,
        cache: &mut Recent<(Needs, Usage), Vec<u8>>,
    ) -> Result<(), JitError> {
        let key = (needs, self.an.usage);
        match cache.get(&key) {
            Some(code) => self.a.raw(code),
            None => {
                let before = self.a.refs();
                self.prologue();
                if self.a.refs() == before {
                    let code = cache.slot(key);
                    code.clear();
                    code.extend_from_slice(self.a.code());
                }
            }
        }
        self.body()?;
        self.tail();
        Ok(())
    }

    fn pc_label(&self, pc: usize) -> Label {
        Asm::nth(self.pcs, pc)
    }

    fn charged_label(&self, pc: usize) -> Label {
        Asm::nth(self.charged, pc)
    }

    // ---- run-time values ----

    /// Loads value `loc` into `r` (if it is not there already); returns where it is now.
    fn value_in(&mut self, loc: Loc, r: R) -> R {
        match loc {
            Loc::Reg(x) => x,
            Loc::Slot(_) => {
                self.a.mov_rm(r, loc.mem().expect("slot"));
                r
            }
        }
    }

    /// Stores `r` into `loc`.
    fn set_value(&mut self, loc: Loc, r: R) {
        match loc {
            Loc::Reg(x) => {
                if x != r {
                    self.a.mov_rr(true, x, r);
                }
            }
            Loc::Slot(_) => self.a.mov_mr(loc.mem().expect("slot"), r),
        }
    }

    // ---- entry and exit ----

    /// Entry: save the host's callee-saved registers the code changes, place the run's
    /// values, zero the registers that may be read before they are written. With local
    /// calls the body is entered by `call` (so that `exit` is `ret` at every depth),
    /// followed by the epilogue and the fault exit; without, the body follows.
    fn prologue(&mut self) {
        let u = self.an.usage;
        let lay = self.lay;
        for &r in lay.saved.as_slice() {
            self.a.push(r);
        }
        if lay.frame_bytes != 0 {
            self.a.alu_ri(true, Alu::Sub, R::Rsp, lay.frame_bytes);
        }
        if lay.frame {
            self.a.mov_rr(true, layout::FRAME, R::Rsp);
        }
        // Moves out of the argument registers (which may be the homes of other values).
        let mut moves: [(Loc, R); 6] = [(Loc::Reg(R::Rax), R::Rax); 6];
        let mut k = 0;
        let mut add = |dst: Option<Loc>, src: R| {
            if let Some(d) = dst {
                if d != Loc::Reg(src) {
                    moves[k] = (d, src);
                    k += 1;
                }
            }
        };
        add(lay.budget, ARG_BUDGET);
        if u.stack {
            add(Some(Loc::Reg(MAP[10])), ARG_TOP);
            add(lay.top, ARG_TOP);
        }
        add(lay.env, ARG_ENV);
        if lay.len != Some(Loc::Reg(MAP[2])) {
            add(lay.len, MAP[2]);
        }
        if lay.mem != Some(Loc::Reg(MAP[1])) {
            add(lay.mem, MAP[1]);
        }
        self.parallel_moves(&mut moves[..k]);
        if let Some(dl) = lay.depth_limit {
            // Deepest r10: top - (depth - 1) * 512.
            let r = self.value_in(lay.top.expect("top with depth limit"), R::R11);
            let d = ((MAX_CALL_DEPTH - 1) * STACK_FRAME_SIZE) as i32;
            self.a.lea(R::R10, Mem::at(r, -d));
            self.set_value(dl, R::R10);
        }
        if u.calls && !u.stack {
            self.a
                .mov_imm32(MAP[10], (NO_STACK + STACK_SIZE as u64) as u32);
        }
        if let Some(vd) = lay.vdelta {
            // delta = host top - virtual top: the program's r10 is rbp - delta.
            self.a.movabs(R::R11, crate::vaddr::STACK_TOP);
            self.a.mov_rr(true, R::R10, MAP[10]);
            self.a.alu_rr(true, Alu::Sub, R::R10, R::R11);
            self.set_value(vd, R::R10);
        }
        if self.opts.hide && u.has(1) {
            // r1 = INPUT, or 0 without input (the host start stays in `mem`).
            self.a.alu_rr(false, Alu::Xor, MAP[1], MAP[1]);
            self.a.test_rr(true, MAP[2], MAP[2]);
            let empty = self.a.label();
            self.a.jcc(Cond::E, empty, true);
            self.a.mov_imm32(MAP[1], crate::vaddr::INPUT as u32);
            self.a.bind(empty);
        }
        for log in 1..4 {
            if let Some(c) = lay.cnt[log] {
                // Valid start offsets for an access of `n` bytes: len - n + 1, or 0.
                let n = 1i32 << log;
                let len = self.value_in(lay.len.expect("len with limits"), R::R11);
                self.a.alu_rr(false, Alu::Xor, R::R10, R::R10);
                self.a.alu_ri(true, Alu::Cmp, len, n);
                let skip = self.a.label();
                self.a.jcc(Cond::B, skip, true);
                self.a.lea(R::R10, Mem::at(len, 1 - n));
                self.a.bind(skip);
                self.set_value(c, R::R10);
            }
        }
        for r in [0, 3, 4, 5, 6, 7, 8, 9] {
            if u.zero_on_entry & (1 << r) != 0 {
                self.a.alu_rr(false, Alu::Xor, MAP[r], MAP[r]);
            }
        }
        if u.calls {
            let body = self.pc_label(0);
            self.a.call_label(body);
            self.a.alu_rr(false, Alu::Xor, R::Rdx, R::Rdx);
            self.epilogue();
            self.fault_exit();
        }
    }

    /// Performs `moves` (destination, source register) as if all at once: a move whose
    /// destination is still to be read goes later; a cycle is broken through r11.
    fn parallel_moves(&mut self, moves: &mut [(Loc, R)]) {
        let mut done = 0u8;
        let n = moves.len();
        while (done.count_ones() as usize) < n {
            let mut progressed = false;
            for i in 0..n {
                if done & (1 << i) != 0 {
                    continue;
                }
                let (dst, src) = moves[i];
                let blocked =
                    (0..n).any(|j| j != i && done & (1 << j) == 0 && Loc::Reg(moves[j].1) == dst);
                if !blocked {
                    self.set_value(dst, src);
                    done |= 1 << i;
                    progressed = true;
                }
            }
            if !progressed {
                // A cycle among registers: park one source in r11.
                let i = (0..n)
                    .find(|&i| done & (1 << i) == 0)
                    .expect("pending move");
                let src = moves[i].1;
                self.a.mov_rr(true, R::R11, src);
                for m in moves.iter_mut() {
                    if m.1 == src {
                        m.1 = R::R11;
                    }
                }
            }
        }
    }

    /// Restores the host's registers and returns (rax and rdx hold the result).
    fn epilogue(&mut self) {
        // (Field by field: copying the whole layout costs more than this usually emits.)
        let frame_bytes = self.lay.frame_bytes;
        if frame_bytes != 0 {
            self.a.alu_ri(true, Alu::Add, R::Rsp, frame_bytes);
        }
        let saved = self.lay.saved;
        for &r in saved.as_slice().iter().rev() {
            self.a.pop(r);
        }
        self.a.ret();
    }

    /// `exit` at depth 0 of a program without local calls: r0 in rax, no fault.
    fn exit_program(&mut self) {
        self.a.alu_rr(false, Alu::Xor, R::Rdx, R::Rdx);
        self.epilogue();
    }

    /// Fault exit: rdx = fault word (0 for unwind), rax = detail. Unwinds the native stack
    /// to where the prologue left it.
    fn fault_exit(&mut self) {
        let fault = self.fault;
        self.a.bind(fault);
        if self.lay.frame {
            self.a.mov_rr(true, R::Rsp, layout::FRAME);
        }
        self.epilogue();
    }

    /// Jumps to the fault exit with fault `word` (detail: whatever rax holds).
    fn fault_here(&mut self, pc: usize, kind: u32) {
        self.a.mov_imm32(R::Rdx, word(pc, kind));
        let f = self.fault;
        self.a.jmp(f, false);
    }

    /// An out-of-line stub raising `kind` at `pc`, reached by the rel32 jump ending at `end`.
    fn stub(&mut self, end: u32, pc: usize, kind: u32) {
        self.stubs.push(Stub::Fault {
            end,
            word: word(pc, kind),
        });
    }

    // ---- body ----

    fn body(&mut self) -> Result<(), JitError> {
        let n = self.insns.len();
        let mut pc = 0;
        while pc < n {
            let l = self.pc_label(pc);
            self.a.bind(l);
            let f = self.an.flags(pc);
            if f & LEADER != 0 && self.an.counted {
                self.charge(pc);
            }
            if f & MERGED_TARGET != 0 {
                let l = self.charged_label(pc);
                self.a.bind(l);
            }
            let i = self.insns[pc];
            match i.class() {
                CLS_ALU | CLS_ALU64 => self.alu(pc, i)?,
                CLS_JMP | CLS_JMP32 => self.jmp(pc, i)?,
                CLS_LD => {
                    if i.opc != LD_DW_IMM || i.src != 0 {
                        return Err(JitError::InvalidOpcode { pc, opc: i.opc });
                    }
                    let d = self.dst_w(pc, i)?;
                    let hi = self.insns[pc + 1].imm as u32 as u64;
                    self.mov_const64(d, (hi << 32) | i.imm as u32 as u64);
                    pc += 1;
                }
                _ => self.mem(pc, i)?,
            }
            pc += 1;
        }
        debug_assert!(self.an.flags(0) & START != 0);
        Ok(())
    }

    /// Charges the block starting at `pc`.
    fn charge(&mut self, pc: usize) {
        let c = self.an.charge(pc);
        if c == 0 {
            return;
        }
        let end = match self.lay.budget.expect("budget location") {
            Loc::Reg(r) => self.a.sub_jb_out(r, c as i32),
            s => {
                self.a.alu_mi(Alu::Sub, s.mem().expect("slot"), c as i32);
                self.a.jcc_out(Cond::B)
            }
        };
        self.stub(end, pc, FAULT_BUDGET);
    }

    /// Fall-off-the-end guard, the fault exit (without local calls) and the stubs.
    fn tail(&mut self) {
        let last = self.insns.len() - 1;
        let ends = self.an.flags(last) & START != 0 && {
            let i = self.insns[last];
            i.opc == EXIT || analysis::is_ja(i)
        };
        if !ends {
            self.fault_here(self.insns.len(), FAULT_END);
        }
        if !self.an.usage.calls {
            self.fault_exit();
        }
        // (Emitting a stub never adds one.)
        for k in 0..self.stubs.len() {
            match self.stubs[k] {
                Stub::Fault { end, word } => {
                    self.a.patch_here(end);
                    let f = self.fault;
                    self.a.fault_stub(word, f);
                }
                Stub::Access {
                    end,
                    back,
                    base,
                    off,
                    size,
                    acc,
                    word,
                } => self.access_stub(end, back, base, off, size, acc, word),
            }
        }
        self.stubs.clear();
        if let Some(l) = self.unwind {
            self.a.bind(l);
            self.a.alu_rr(false, Alu::Xor, R::Rdx, R::Rdx);
            self.a.alu_rr(false, Alu::Xor, R::Rax, R::Rax);
            let f = self.fault;
            self.a.jmp(f, false);
        }
        if let Some(l) = self.extra_check {
            self.extra_check_subroutine(l);
        }
        if let Some(l) = self.zero_frame {
            // Zeroes [r10 - 512, r10) with 16-byte stores, 64 bytes per iteration. Clobbers
            // xmm0, r10, r11 (none of them holds eBPF state).
            let a = &mut self.a;
            a.bind(l);
            a.pxor_xmm0();
            a.lea(R::R10, Mem::at(MAP[10], -(STACK_FRAME_SIZE as i32)));
            a.mov_imm32(R::R11, (STACK_FRAME_SIZE / 64) as u32);
            let again = a.label();
            a.bind(again);
            for k in 0..4 {
                a.movups_store_xmm0(Mem::at(R::R10, 16 * k));
            }
            a.alu_ri(true, Alu::Add, R::R10, 64);
            a.alu_ri(false, Alu::Sub, R::R11, 1);
            a.jcc(Cond::Ne, again, true);
            a.ret();
        }
    }

    // ---- operands ----

    fn dst_w(&self, pc: usize, i: Insn) -> Result<R, JitError> {
        if i.dst > 9 {
            return Err(JitError::BadRegister { pc, reg: i.dst });
        }
        Ok(MAP[i.dst as usize])
    }
    fn dst_r(&self, pc: usize, i: Insn) -> Result<R, JitError> {
        if i.dst > 10 {
            return Err(JitError::BadRegister { pc, reg: i.dst });
        }
        Ok(MAP[i.dst as usize])
    }
    fn src_r(&self, pc: usize, i: Insn) -> Result<R, JitError> {
        if i.src > 10 {
            return Err(JitError::BadRegister { pc, reg: i.src });
        }
        Ok(MAP[i.src as usize])
    }
    fn target(&self, pc: usize, rel: i64) -> Result<usize, JitError> {
        let t = pc as i64 + 1 + rel;
        if t < 0 || t as usize >= self.insns.len() {
            return Err(JitError::JumpOutOfRange { pc, target: t });
        }
        if self.an.flags(t as usize) & START == 0 {
            return Err(JitError::JumpIntoLddw {
                pc,
                target: t as usize,
            });
        }
        Ok(t as usize)
    }

    // ---- constants and blinding ----

    /// The next blinding key (non-zero), or `None` without blinding.
    fn key(&mut self) -> Option<u64> {
        let k = self.opts.blind?;
        self.blinded += 1;
        let k = splitmix64(k.wrapping_add(self.blinded.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        Some(if k == 0 { 1 } else { k })
    }

    /// `dst = imm` (32-bit form: zero-extended; 64-bit: sign-extended), blinded if on.
    fn mov_const(&mut self, w64: bool, dst: R, imm: i32) {
        match self.key() {
            Some(k) if imm != 0 => {
                let k = k as u32 as i32;
                if w64 {
                    self.a.mov_sext32(dst, imm ^ k);
                    self.a.alu_ri(true, Alu::Xor, dst, k);
                } else {
                    self.a.mov_imm32_full(dst, (imm ^ k) as u32);
                    self.a.alu_ri(false, Alu::Xor, dst, k);
                }
            }
            _ if w64 => self.a.mov_imm64(dst, imm as i64 as u64),
            _ => self.a.mov_imm32(dst, imm as u32),
        }
    }

    /// `dst = v` for a 64-bit constant (`lddw`), blinded if on.
    fn mov_const64(&mut self, dst: R, v: u64) {
        match self.key() {
            Some(k) if v != 0 => {
                self.a.movabs(dst, v ^ k);
                self.a.movabs(R::R10, k);
                self.a.alu_rr(true, Alu::Xor, dst, R::R10);
            }
            _ => self.a.mov_imm64(dst, v),
        }
    }

    /// Notes that the code just emitted for slot `pc` ends with the immediate of `i` as it
    /// is: one byte for a class-4 constant of `op r, imm` or `cmp`, else four (see
    /// [`imm_class`]).
    fn imm_site(&mut self, pc: usize, i: Insn) {
        if !self.record {
            return;
        }
        let class = imm_class(i);
        let wide = class != 4;
        let n = if wide { 4 } else { 1 };
        self.sites.push(ImmSite {
            pc: pc as u32,
            pos: self.a.pos() - n,
            wide,
            class,
        });
    }

    /// With hidden addresses, the program's value of r10 in scratch register `r`.
    fn virtual_r10(&mut self, r: R) -> R {
        let vd = self
            .lay
            .vdelta
            .expect("delta with hidden addresses and a stack");
        self.a.mov_rr(true, r, MAP[10]);
        match vd {
            Loc::Reg(x) => self.a.alu_rr(true, Alu::Sub, r, x),
            s => self.a.alu_rm(Alu::Sub, r, s.mem().expect("slot")),
        }
        r
    }

    /// Register `reg` of the program as a value: its host register, or, for r10 with hidden
    /// addresses, its virtual value computed into scratch `scratch`.
    fn value_of(&mut self, reg: u8, scratch: R) -> R {
        if self.opts.hide && reg == FRAME_REG {
            self.virtual_r10(scratch)
        } else {
            MAP[reg as usize]
        }
    }

    /// With blinding on, the immediate `imm` in scratch register `r` (as `mov_const`);
    /// `None` without blinding (use the immediate form).
    fn blinded_imm(&mut self, w64: bool, r: R, imm: i32) -> Option<R> {
        self.opts.blind?;
        self.mov_const(w64, r, imm);
        Some(r)
    }
}

/// A fault word: `pc | kind << 24`.
fn word(pc: usize, kind: u32) -> u32 {
    pc as u32 | kind << 24
}

/// SplitMix64's output function: a bijective mix of 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
