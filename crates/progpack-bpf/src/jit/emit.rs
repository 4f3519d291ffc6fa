//! eBPF -> x86-64 translation.
//!
//! Register map (eBPF -> x86-64; the five argument registers line up with the System V calling
//! convention so helper calls need no shuffling, and r6-r10 sit in callee-saved registers):
//!
//! | eBPF | r0  | r1  | r2  | r3  | r4  | r5 | r6  | r7  | r8  | r9  | r10 | ctx | scratch       |
//! |------|-----|-----|-----|-----|-----|----|-----|-----|-----|-----|-----|-----|---------------|
//! | x86  | rax | rdi | rsi | rdx | rcx | r8 | rbx | r13 | r14 | r15 | rbp | r12 | r9, r10, r11  |
//!
//! Layout of the emitted code: prologue (`call` into the body, then the epilogue), the fault
//! exit, the body (one label per instruction slot), then the out-of-line stubs (the second
//! half of bounds checks, fault words) and the frame-zeroing subroutine of local calls.
//!
//! Invariants the emitted code keeps:
//! - Every load, store and atomic goes through [`Cx::mem_operand`]: the access `[a, a+n)` is
//!   allowed iff it lies in the memory region, in the live frames `[r10 - 512, top)`, or in
//!   one of the environment's extra regions (map values; [`crate::memory`]), the interpreter's
//!   rule. Memory and stack are checked inline and in a stub; the extra regions last, by a
//!   call from the stub to [`extra_region_check`] through a shared subroutine. The check is skipped for `r10 + off` inside the current frame, which
//!   is in range by construction. The likelier region (the stack for r10-based addresses, else
//!   memory) is checked inline; an address outside it goes to a stub that checks the other
//!   region (then the extra regions) and either comes back or loads a fault word (`pc | kind << 24`) into r10, the
//!   address being in r11, and goes to the fault exit.
//! - The eBPF stack is not the native stack: return addresses and saved registers are out of
//!   the program's reach. r10 is the top of the current 512-byte frame inside the stack region;
//!   a `call local` first checks that one more frame fits (this is the call depth limit), then
//!   zeroes the new frame.
//! - Helper calls follow [`crate::context`]'s ABI: r9 = the `HelperContext` pointer (and its
//!   `frame` = r10 when the program has a stack); after a context helper, a non-zero `stop`
//!   word in it ends the program like the unwind helper.
//! - The native stack is 16-byte aligned at every helper call: the body is entered by a `call`
//!   after six pushes, a local call pushes five registers plus its return address, and a
//!   helper call saves r1-r5 (the interpreter keeps them) with six pushes.
//! - With the instruction budget on, each basic block charges its instruction count when it
//!   is entered, so a run fails exactly when the interpreter's instruction limit would.
//! - The fault exit restores the native stack pointer saved at entry, so a fault (or unwind)
//!   inside nested local calls returns straight to the host.
//! - Division never traps: a zero divisor and the signed `INT_MIN / -1` are handled before
//!   `div`/`idiv` runs.

use std::mem::offset_of;

use std::cell::RefCell;

use super::x86::{AbsCallSite, Alu, Asm, AsmVecs, Cond, Label, Shift, R, W};
use super::JitError;
use crate::context::{HelperContext, HCTX_FRAME, HCTX_STOP};
use crate::helpers::{Helper, Helpers};
use crate::insn::*;
use crate::memory;

/// Bytes of stack the program can address: one 512-byte frame per call depth.
pub(crate) const STACK_SIZE: usize = MAX_CALL_DEPTH * STACK_FRAME_SIZE;

/// Largest program (in slots) the JIT compiles: the pc must fit in 24 bits of a fault word.
pub(crate) const MAX_SLOTS: usize = 1 << 24;

/// The run-time context the JIT code receives (pointer in rdi, kept in r12).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Initial r1: the memory region's address, 0 when it is empty.
    pub r1: u64,
    /// Start address of the program memory region.
    pub mem_start: u64,
    /// Length of the program memory region (r2).
    pub mem_len: u64,
    /// For access size `1 << i`: highest valid start address in the memory region,
    /// `start + len - (1 << i)`; below `mem_start` (an empty range) when the region is
    /// shorter than the access. (`mem_start` itself is the lowest.)
    pub mem_hi: [u64; 4],
    /// For access size `1 << i`: highest valid address in the stack region (`top - size`).
    pub stack_hi: [u64; 4],
    /// Start address of the stack region.
    pub stack_start: u64,
    /// End address of the stack region (r10 at call depth 0).
    pub stack_top: u64,
    /// Native stack pointer after the prologue's pushes, restored by the fault exit.
    pub saved_rsp: u64,
    /// Fault word (`pc | kind << 24`), 0 if the program exited normally or unwound.
    pub fault: u64,
    /// Fault detail: the address of a bad access, or the helper id of a bad `callx`.
    pub fault_extra: u64,
    /// Instructions left before [`FAULT_BUDGET`] (used if compiled with the budget).
    pub budget: u64,
    /// The run's [`HelperContext`] (passed to helpers in r9; its extra regions are checked by
    /// [`extra_region_check`]). Never null during a run.
    pub hctx: *mut HelperContext<'static>,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            r1: 0,
            mem_start: 0,
            mem_len: 0,
            mem_hi: [0; 4],
            stack_hi: [0; 4],
            stack_start: 0,
            stack_top: 0,
            saved_rsp: 0,
            fault: 0,
            fault_extra: 0,
            budget: 0,
            hctx: std::ptr::null_mut(),
        }
    }
}

impl Ctx {
    /// A context for a run over `mem_len` bytes at `mem_start` with the stack region of
    /// [`STACK_SIZE`] bytes at `stack_start`. Without `stack_window` no address is in the
    /// stack region (for code that never reads r10, see [`Usage::stack`]).
    #[inline]
    pub(crate) fn new(
        mem_start: u64,
        mem_len: u64,
        stack_start: u64,
        stack_window: bool,
        budget: u64,
        hctx: *mut HelperContext<'static>,
    ) -> Ctx {
        // With len < n, `end - n` (saturating: an empty slice's dangling pointer may be 1) is
        // below `mem_start`, which is never 0: no address passes `start <= a <= end - n`.
        let end = mem_start + mem_len;
        let top = stack_start + STACK_SIZE as u64;
        let shi = |n: u64| if stack_window { top - n } else { 0 };
        Ctx {
            r1: if mem_len == 0 { 0 } else { mem_start },
            mem_start,
            mem_len,
            mem_hi: [
                end.saturating_sub(1),
                end.saturating_sub(2),
                end.saturating_sub(4),
                end.saturating_sub(8),
            ],
            stack_hi: [shi(1), shi(2), shi(4), shi(8)],
            stack_start,
            stack_top: top,
            saved_rsp: 0,
            fault: 0,
            fault_extra: 0,
            budget,
            hctx,
        }
    }
}

fn disp(off: usize) -> i32 {
    off as i32
}
const C_R1: usize = offset_of!(Ctx, r1);
const C_HCTX: usize = offset_of!(Ctx, hctx);
const C_MEM_START: usize = offset_of!(Ctx, mem_start);
const C_MEM_LEN: usize = offset_of!(Ctx, mem_len);
const C_MEM_HI: usize = offset_of!(Ctx, mem_hi);
const C_STACK_HI: usize = offset_of!(Ctx, stack_hi);
const C_STACK_START: usize = offset_of!(Ctx, stack_start);
const C_STACK_TOP: usize = offset_of!(Ctx, stack_top);
const C_SAVED_RSP: usize = offset_of!(Ctx, saved_rsp);
const C_FAULT: usize = offset_of!(Ctx, fault);
const C_FAULT_EXTRA: usize = offset_of!(Ctx, fault_extra);
const C_BUDGET: usize = offset_of!(Ctx, budget);

// ---- fault kinds (bits 24.. of the fault word) ----
/// `call local` would exceed the call depth limit.
pub(crate) const FAULT_DEPTH: u32 = 0x01;
/// `callx` named an unregistered helper (id in `fault_extra`).
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
const MAP: [R; 11] = [
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
const CTX: R = R::R12;

/// A short list of registers (at most six) without allocating.
#[derive(Clone, Copy)]
struct Regs {
    r: [R; 6],
    n: usize,
}

impl Default for Regs {
    fn default() -> Self {
        Regs {
            r: [R::Rax; 6],
            n: 0,
        }
    }
}

impl Regs {
    fn push(&mut self, r: R) {
        self.r[self.n] = r;
        self.n += 1;
    }
    fn len(&self) -> usize {
        self.n
    }
    fn as_slice(&self) -> &[R] {
        &self.r[..self.n]
    }
}

/// Which registers a program mentions, and whether it can reach the stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bit `r`: eBPF register `r` appears as an operand (explicitly, or implicitly: r0-r5 of
    /// a helper call, r0 of `exit` and `cmpxchg`). A register never mentioned keeps its
    /// initial value, so the prologue need not set it and no one needs to save it.
    pub regs: u16,
    /// Whether any instruction reads r10. If none does, no address the program computes can
    /// be meant for the stack (it would have to be guessed), so the code gets no stack window
    /// at all: nothing to zero, and any access outside the memory region is out of bounds.
    pub stack: bool,
    /// Whether the program has a `call local`. If not, every `exit` leaves the program: the
    /// body is entered by falling through from the prologue and `exit` is the epilogue.
    pub calls: bool,
}

impl Usage {
    fn of(insns: &[Insn], starts: &[bool]) -> Usage {
        let mut regs = 1u16; // r0: the result
        let mut calls = false;
        for (i, _) in insns.iter().zip(starts).filter(|(_, &s)| s) {
            calls |= i.opc == CALL && i.src == CALL_LOCAL;
            let (d, s) = (1u16 << (i.dst & 15), 1u16 << (i.src & 15));
            let x = i.opc & SRC_X != 0;
            regs |= match i.class() {
                CLS_ALU | CLS_ALU64 => d | if x { s } else { 0 },
                CLS_LD | CLS_ST => d,
                CLS_LDX => d | s,
                CLS_STX => d | s | 1,
                _ => match i.opc {
                    EXIT => 1,
                    CALL => 0x3f,
                    CALLX => d | 0x3f,
                    _ => d | if x { s } else { 0 },
                },
            };
        }
        Usage {
            regs: regs & 0x7ff,
            stack: regs & (1 << FRAME_REG) != 0,
            calls,
        }
    }

    fn has(self, r: usize) -> bool {
        self.regs & (1 << r) != 0
    }

    /// Host callee-saved registers holding r6-r9 that the program may change.
    fn saved_r6_r9(self) -> impl Iterator<Item = R> {
        (6..10).filter(move |&r| self.has(r)).map(|r| MAP[r])
    }
}

/// Code generation options.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    /// Count executed instructions against `Ctx::budget`.
    pub budget: bool,
    /// The program runs in an environment with extra regions (maps): accesses outside memory
    /// and stack are checked against them. Without, they fault at once.
    pub extra_regions: bool,
}

/// Which region an access check tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Mem,
    Stack,
}

/// Out-of-line code after the body.
#[derive(Clone, Copy, Debug)]
enum Stub {
    /// Raise fault `word`.
    Fault { at: Label, word: u32 },
    /// An access failed the inline check of its first region: check the other `region` (if
    /// any), then the extra regions; go back to `ok` if the access lies there, else raise
    /// fault `word`.
    Access {
        at: Label,
        region: Option<Region>,
        extra: bool,
        log: usize,
        ok: Label,
        word: u32,
    },
}

/// Translation state for one pass.
struct Cx<'a> {
    a: Asm,
    insns: &'a [Insn],
    /// `starts[pc]`: slot `pc` begins an instruction (false for the second slot of `lddw`).
    starts: &'a [bool],
    helpers: &'a Helpers,
    /// Label of slot 0; slot `pc` has label `pcs + pc`.
    pcs: Label,
    fault: Label,
    unwind: Option<Label>,
    /// Out-of-line code, emitted after the body.
    stubs: Vec<Stub>,
    /// With the budget on: instructions charged on entering slot `pc` (0: not a block start).
    charges: &'a [u32],
    /// The shared frame-zeroing subroutine, once a local call needs it.
    zero_frame: Option<Label>,
    /// The shared subroutine calling [`extra_region_check`], once an access needs it.
    extra_check: Option<Label>,
    /// Whether accesses are checked against extra regions ([`Options::extra_regions`]).
    extra: bool,
    usage: Usage,
}

/// A translated program.
pub(crate) struct Translated {
    pub code: Vec<u8>,
    pub calls: Vec<AbsCallSite>,
    /// Code offset of each slot (`x86::UNBOUND` for the second slot of `lddw`).
    pub pc_offsets: Vec<u32>,
    pub usage: Usage,
}

/// Per-compile working vectors, kept per thread between compiles so that a compile
/// allocates little more than its output.
#[derive(Default)]
struct Scratch {
    starts: Vec<bool>,
    leader: Vec<bool>,
    charges: Vec<u32>,
    stubs: Vec<Stub>,
    asm: AsmVecs,
}

impl Scratch {
    /// Elements kept at most between compiles (a huge program's vectors are dropped).
    const KEEP: usize = 1 << 16;

    fn capacity(&self) -> usize {
        self.starts.capacity()
            + self.leader.capacity()
            + self.charges.capacity()
            + self.stubs.capacity()
            + self.asm.capacity()
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Translates a program in two passes; see [`super::x86`] for the jump sizing.
pub(crate) fn translate(
    insns: &[Insn],
    helpers: &Helpers,
    rel_calls: bool,
    opts: Options,
) -> Result<Translated, JitError> {
    // `take` leaves an empty scratch behind, so a nested compile (a helper compiling while
    // this thread compiles? not possible today) would still work, just without reuse.
    let mut scratch = SCRATCH.with(|s| s.take());
    let r = translate_with(&mut scratch, insns, helpers, rel_calls, opts);
    if scratch.capacity() <= Scratch::KEEP {
        SCRATCH.with(|s| s.replace(scratch));
    }
    r
}

fn translate_with(
    scratch: &mut Scratch,
    insns: &[Insn],
    helpers: &Helpers,
    rel_calls: bool,
    opts: Options,
) -> Result<Translated, JitError> {
    if insns.is_empty() {
        return Err(JitError::Empty);
    }
    if insns.len() >= MAX_SLOTS {
        return Err(JitError::TooLarge { slots: insns.len() });
    }
    slot_starts(insns, &mut scratch.starts)?;
    let starts = &scratch.starts;
    let usage = Usage::of(insns, starts);
    scratch.charges.clear();
    if opts.budget {
        block_charges(insns, starts, &mut scratch.leader, &mut scratch.charges);
    }
    let env = Env {
        insns,
        starts,
        helpers,
        charges: &scratch.charges,
        usage,
        extra: opts.extra_regions,
    };
    let asm = Asm::new(rel_calls, std::mem::take(&mut scratch.asm));
    let mut stubs = std::mem::take(&mut scratch.stubs);
    stubs.clear();
    let (pass1, stubs) = Cx::run(asm, &env, stubs)?;
    let (pass2, sites1) = pass1.second_pass();
    let (mut a, stubs) = Cx::run(pass2, &env, stubs)?;
    scratch.stubs = stubs;
    if a.jump_sites() != sites1 {
        return Err(JitError::Internal("passes disagree"));
    }
    a.patch_jumps().map_err(JitError::Internal)?;
    // Cx::run creates the slot labels first, so slot `pc` has label number `pc`.
    let pc_offsets = a.label_offsets(insns.len());
    let (code, calls, vecs) = a.into_code();
    scratch.asm = vecs;
    Ok(Translated {
        code,
        calls,
        pc_offsets,
        usage,
    })
}

/// What both passes translate.
struct Env<'a> {
    insns: &'a [Insn],
    starts: &'a [bool],
    helpers: &'a Helpers,
    charges: &'a [u32],
    usage: Usage,
    extra: bool,
}

/// For each slot that starts a basic block, the number of instructions in the block (an
/// `lddw` counts once, as in the interpreter); 0 elsewhere. Blocks start at 0, at every jump
/// or local-call target and after every jump, call and exit, so a block, once entered, runs
/// to its end unless an access faults.
fn block_charges(insns: &[Insn], starts: &[bool], leader: &mut Vec<bool>, charges: &mut Vec<u32>) {
    let n = insns.len();
    leader.clear();
    leader.resize(n + 1, false);
    leader[0] = true;
    for pc in (0..n).filter(|&pc| starts[pc]) {
        let i = insns[pc];
        let cls = i.class();
        if cls != CLS_JMP && cls != CLS_JMP32 {
            continue;
        }
        leader[pc + 1] = true;
        let rel = match i.opc & 0xf0 {
            JMP_EXIT => None,
            JMP_CALL if i.opc == CALL && i.src == CALL_LOCAL => Some(i.imm as i64),
            JMP_CALL => None,
            JMP_JA if cls == CLS_JMP32 => Some(i.imm as i64),
            _ => Some(i.off as i64),
        };
        if let Some(rel) = rel {
            let t = pc as i64 + 1 + rel;
            if (0..n as i64).contains(&t) {
                leader[t as usize] = true;
            }
        }
    }
    charges.clear();
    charges.resize(n, 0);
    let mut current = 0;
    for pc in (0..n).filter(|&pc| starts[pc]) {
        if leader[pc] {
            current = pc;
        }
        charges[current] += 1;
    }
}

/// Marks which slots begin an instruction; checks that every `lddw` has its second slot.
fn slot_starts(insns: &[Insn], starts: &mut Vec<bool>) -> Result<(), JitError> {
    starts.clear();
    starts.resize(insns.len(), false);
    let mut pc = 0;
    while pc < insns.len() {
        starts[pc] = true;
        if insns[pc].opc == LD_DW_IMM {
            let next = insns.get(pc + 1).ok_or(JitError::IncompleteLddw { pc })?;
            if next.opc != 0 || next.dst != 0 || next.src != 0 || next.off != 0 {
                return Err(JitError::IncompleteLddw { pc });
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }
    Ok(())
}

impl<'a> Cx<'a> {
    /// One pass; `stubs` is an empty vector to use (returned empty).
    fn run(a: Asm, env: &Env<'a>, stubs: Vec<Stub>) -> Result<(Asm, Vec<Stub>), JitError> {
        let mut cx = Cx {
            a,
            insns: env.insns,
            starts: env.starts,
            helpers: env.helpers,
            pcs: Label::default(),
            fault: Label::default(),
            unwind: None,
            stubs,
            charges: env.charges,
            zero_frame: None,
            extra_check: None,
            extra: env.extra,
            usage: env.usage,
        };
        let insns = env.insns;
        cx.pcs = cx.a.labels(insns.len());
        cx.fault = cx.a.label();
        cx.prologue();
        cx.body()?;
        cx.tail();
        Ok((cx.a, cx.stubs))
    }

    fn pc_label(&self, pc: usize) -> Label {
        Asm::nth(self.pcs, pc)
    }

    /// Whether r10 (rbp) is needed at all: for the stack window or for local calls.
    fn uses_rbp(&self) -> bool {
        self.usage.stack || self.usage.calls
    }

    /// Host callee-saved registers the code changes (those of r6-r9 in use, rbp if r10 is
    /// needed, r12 for the context), and whether an 8-byte pad keeps the native stack
    /// 16-byte aligned in the body.
    fn host_saved(&self) -> (Regs, bool) {
        let mut v = Regs::default();
        for r in self.usage.saved_r6_r9() {
            v.push(r);
        }
        if self.uses_rbp() {
            v.push(R::Rbp);
        }
        v.push(R::R12);
        // Entry rsp is 8 mod 16. Entered by `call`, the body needs 8 mod 16 after the pushes
        // (an even count); entered by falling through, 0 mod 16 (an odd count).
        let pad = (v.len() % 2 == 1) == self.usage.calls;
        (v, pad)
    }

    /// Restores the host's registers and returns (rax holds the result).
    fn epilogue(&mut self) {
        let (saved, pad) = self.host_saved();
        if pad {
            self.a.alu_ri(true, Alu::Add, R::Rsp, 8);
        }
        for &r in saved.as_slice().iter().rev() {
            self.a.pop(r);
        }
        self.a.ret();
    }

    /// Entry: save the host's callee-saved registers the code changes, set up r1, r2, r10,
    /// the registers the program mentions, and the context. With local calls the body is
    /// entered by `call` (so that `exit` is `ret` at every depth), followed by the epilogue
    /// and the fault exit; without, the body follows and the fault exit comes at the end.
    fn prologue(&mut self) {
        let (saved, pad) = self.host_saved();
        let rbp = self.uses_rbp();
        let a = &mut self.a;
        for &r in saved.as_slice() {
            a.push(r);
        }
        if pad {
            a.alu_ri(true, Alu::Sub, R::Rsp, 8);
        }
        a.mov_rr(true, CTX, R::Rdi);
        a.mov_mr(CTX, disp(C_SAVED_RSP), R::Rsp);
        if rbp {
            a.mov_rm(MAP[10], CTX, disp(C_STACK_TOP));
        }
        a.mov_rm(MAP[1], CTX, disp(C_R1));
        a.mov_rm(MAP[2], CTX, disp(C_MEM_LEN));
        for r in [0, 3, 4, 5, 6, 7, 8, 9] {
            if self.usage.has(r) {
                a.mov_imm32(MAP[r], 0);
            }
        }
        if self.usage.calls {
            let body = self.pc_label(0);
            self.a.call_label(body);
            self.epilogue();
            self.fault_exit();
        }
    }

    /// Fault exit: r10 = fault word (0 for unwind), r11 = detail. Unwinds the native stack
    /// to where the prologue left it and returns 0.
    fn fault_exit(&mut self) {
        let fault = self.fault;
        let a = &mut self.a;
        a.bind(fault);
        a.mov_rm(R::Rsp, CTX, disp(C_SAVED_RSP));
        a.mov_mr(CTX, disp(C_FAULT), R::R10);
        a.mov_mr(CTX, disp(C_FAULT_EXTRA), R::R11);
        a.mov_imm32(R::Rax, 0);
        self.epilogue();
    }

    /// Fall-off-the-end guard and the out-of-line stubs.
    fn tail(&mut self) {
        let last = self.insns.len() - 1;
        let ends = self.starts[last] && {
            let i = self.insns[last];
            i.opc == EXIT || i.opc == (CLS_JMP | JMP_JA) || i.opc == (CLS_JMP32 | JMP_JA)
        };
        if !ends {
            self.fault_here(self.insns.len(), FAULT_END);
        }
        if !self.usage.calls {
            self.fault_exit();
        }
        // (Emitting a stub never adds one.)
        for k in 0..self.stubs.len() {
            match self.stubs[k] {
                Stub::Fault { at, word } => {
                    self.a.bind(at);
                    self.a.mov_imm32(R::R10, word);
                    self.a.jmp(self.fault);
                }
                Stub::Access {
                    at,
                    region,
                    extra: check_extra,
                    log,
                    ok,
                    word,
                } => {
                    self.a.bind(at);
                    let extra = self.a.label();
                    if let Some(region) = region {
                        self.region_check(region, log, extra);
                        self.a.jcc(Cond::Be, ok);
                    }
                    self.a.bind(extra);
                    if !check_extra {
                        self.a.mov_imm32(R::R10, word);
                        self.a.jmp(self.fault);
                        continue;
                    }
                    // r10 = size | write << 8; the subroutine leaves r9 = 1 if allowed.
                    let write = (word >> 24) & FAULT_STORE != 0;
                    self.a
                        .mov_imm32(R::R10, (1u32 << log) | (write as u32) << 8);
                    let sub = self.extra_check_label();
                    self.a.call_label(sub);
                    self.a.test_rr(true, R::R9, R::R9);
                    self.a.jcc(Cond::Ne, ok);
                    self.a.mov_imm32(R::R10, word);
                    self.a.jmp(self.fault);
                }
            }
        }
        self.stubs.clear();
        if let Some(l) = self.unwind {
            self.a.bind(l);
            self.a.mov_imm32(R::R10, 0);
            self.a.jmp(self.fault);
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
            a.lea(R::R10, MAP[10], -(STACK_FRAME_SIZE as i32));
            a.mov_imm32(R::R11, (STACK_FRAME_SIZE / 64) as u32);
            let again = a.label();
            a.bind(again);
            for k in 0..4 {
                a.movups_store_xmm0(R::R10, 16 * k);
            }
            a.alu_ri(true, Alu::Add, R::R10, 64);
            a.alu_ri(false, Alu::Sub, R::R11, 1);
            a.jcc(Cond::Ne, again);
            a.ret();
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
    /// r10 = `size | write << 8`, calls [`extra_region_check`]`(ctx, r11, r10)` and returns
    /// its answer in r9; every other register is kept. Called from the body, where the native
    /// stack is 16-byte aligned: the return address and seven pushes keep it aligned.
    fn extra_check_subroutine(&mut self, l: Label) {
        const KEPT: [R; 7] = [R::Rax, R::Rdi, R::Rsi, R::Rdx, R::Rcx, R::R8, R::R11];
        let a = &mut self.a;
        a.bind(l);
        for r in KEPT {
            a.push(r);
        }
        a.mov_rr(true, R::Rdi, CTX);
        a.mov_rr(true, R::Rsi, R::R11);
        a.mov_rr(true, R::Rdx, R::R10);
        a.call_abs(extra_region_check as *const () as usize as u64);
        a.mov_rr(true, R::R9, R::Rax);
        for r in KEPT.iter().rev() {
            a.pop(*r);
        }
        a.ret();
    }

    fn fault_here(&mut self, pc: usize, kind: u32) {
        self.a.mov_imm32(R::R10, word(pc, kind));
        self.a.jmp(self.fault);
    }

    /// A new out-of-line stub raising `kind` at `pc`.
    fn stub(&mut self, pc: usize, kind: u32) -> Label {
        let at = self.a.label();
        self.stubs.push(Stub::Fault {
            at,
            word: word(pc, kind),
        });
        at
    }

    /// Tests whether the access at r11 of `1 << log` bytes lies in `region`: jumps to `bad`
    /// if it starts below the region, else leaves the flags of `cmp r11, highest valid start`
    /// (so `jbe` = inside, `ja` = outside). Clobbers r10.
    fn region_check(&mut self, region: Region, log: usize, bad: Label) {
        let a = &mut self.a;
        match region {
            Region::Stack => {
                // Live frames: r10 - 512 <= a && a <= top - n.
                a.lea(R::R10, MAP[10], -(STACK_FRAME_SIZE as i32));
                a.alu_rr(true, Alu::Cmp, R::R11, R::R10);
                a.jcc(Cond::B, bad);
                a.cmp_rm(R::R11, CTX, disp(C_STACK_HI + 8 * log));
            }
            Region::Mem => {
                // Memory: start <= a && a <= start + len - n.
                a.cmp_rm(R::R11, CTX, disp(C_MEM_START));
                a.jcc(Cond::B, bad);
                a.cmp_rm(R::R11, CTX, disp(C_MEM_HI + 8 * log));
            }
        }
    }

    fn body(&mut self) -> Result<(), JitError> {
        let mut pc = 0;
        while pc < self.insns.len() {
            let l = self.pc_label(pc);
            self.a.bind(l);
            if let Some(&c) = self.charges.get(pc) {
                if c != 0 {
                    let stub = self.stub(pc, FAULT_BUDGET);
                    self.a.sub_mem_imm(CTX, disp(C_BUDGET), c as i32);
                    self.a.jcc(Cond::B, stub);
                }
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
                    self.a.mov_imm64(d, (hi << 32) | i.imm as u32 as u64);
                    pc += 1;
                }
                _ => self.mem(pc, i)?,
            }
            pc += 1;
        }
        Ok(())
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
    fn target(&self, pc: usize, rel: i64) -> Result<Label, JitError> {
        let t = pc as i64 + 1 + rel;
        if t < 0 || t as usize >= self.insns.len() {
            return Err(JitError::JumpOutOfRange { pc, target: t });
        }
        if !self.starts[t as usize] {
            return Err(JitError::JumpIntoLddw {
                pc,
                target: t as usize,
            });
        }
        Ok(self.pc_label(t as usize))
    }

    // ---- arithmetic ----

    fn alu(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let w64 = i.class() == CLS_ALU64;
        let x = i.opc & SRC_X != 0;
        let op = i.opc & 0xf0;
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        let d = self.dst_w(pc, i)?;
        let s = if x { Some(self.src_r(pc, i)?) } else { None };
        let a = &mut self.a;
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
                Some(s) => a.alu_rr(w64, op, d, s),
                None => a.alu_ri(w64, op, d, i.imm),
            }
            return Ok(());
        }
        match op {
            ALU_MUL => match s {
                Some(s) => a.imul_rr(w64, d, s),
                None => a.imul_ri(w64, d, i.imm),
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
                        let n = (i.imm as u32 & if w64 { 63 } else { 31 }) as u8;
                        if n != 0 {
                            a.shift_ri(if w64 { W::B64 } else { W::B32 }, sh, d, n);
                        } else if !w64 {
                            a.mov_rr(false, d, d);
                        }
                    }
                }
            }
            ALU_NEG => {
                if x {
                    return Err(bad);
                }
                a.neg(w64, d);
            }
            ALU_MOV => match (s, i.off) {
                (None, 0) => {
                    if w64 {
                        a.mov_imm64(d, i.imm as i64 as u64);
                    } else {
                        a.mov_imm32(d, i.imm as u32);
                    }
                }
                (Some(s), 0) => {
                    if !(w64 && s == d) {
                        a.mov_rr(w64, d, s);
                    }
                }
                (Some(s), 8) => a.movsx_rr(w64, d, s, W::B8),
                (Some(s), 16) => a.movsx_rr(w64, d, s, W::B16),
                (Some(s), 32) if w64 => a.movsx_rr(true, d, s, W::B32),
                _ => return Err(bad),
            },
            ALU_END => {
                // ALU|K = to little endian (a truncation here), ALU|X = to big endian,
                // ALU64|K = unconditional byte swap.
                let swap = match (w64, x) {
                    (false, false) => false,
                    (false, true) | (true, false) => true,
                    (true, true) => return Err(bad),
                };
                match (i.imm, swap) {
                    (16, false) => a.movzx16_rr(d, d),
                    (32, false) => a.mov_rr(false, d, d),
                    (64, false) => {}
                    (16, true) => {
                        a.shift_ri(W::B16, Shift::Ror, d, 8);
                        a.movzx16_rr(d, d);
                    }
                    (32, true) => a.bswap(false, d),
                    (64, true) => a.bswap(true, d),
                    _ => return Err(bad),
                }
            }
            _ => return Err(bad),
        }
        Ok(())
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
        let a = &mut self.a;
        if s.is_none() {
            if imm == 0 {
                if is_mod {
                    if !w64 {
                        a.mov_rr(false, d, d);
                    }
                } else {
                    a.mov_imm32(d, 0);
                }
                return;
            }
            if signed && imm == -1 {
                if is_mod {
                    a.mov_imm32(d, 0);
                } else {
                    a.neg(w64, d);
                }
                return;
            }
        }
        // r9 = divisor, r10/r11 = saved rax/rdx, rax = dividend.
        match s {
            Some(s) => a.mov_rr(w64, R::R9, s),
            None if w64 => a.mov_imm64(R::R9, imm as i64 as u64),
            None => a.mov_imm32(R::R9, imm as u32),
        }
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
            a.jcc(Cond::E, zero);
            if signed {
                let normal = a.label();
                a.alu_ri(w64, Alu::Cmp, R::R9, -1);
                a.jcc(Cond::Ne, normal);
                if is_mod {
                    a.mov_imm32(R::Rax, 0);
                } else {
                    a.neg(w64, R::Rax);
                }
                a.jmp(done);
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
            a.jmp(done);
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

    // ---- jumps and calls ----

    fn jmp(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
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
                    self.a.jmp(t);
                }
                return Ok(());
            }
            JMP_CALL if !j32 => return self.call(pc, i),
            JMP_EXIT if !j32 => {
                if x {
                    return Err(bad);
                }
                if self.usage.calls {
                    self.a.ret();
                } else {
                    self.epilogue();
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
        let d = self.dst_r(pc, i)?;
        let s = if x { Some(self.src_r(pc, i)?) } else { None };
        let t = self.target(pc, i.off as i64)?;
        let w64 = !j32;
        let a = &mut self.a;
        match (op == JMP_JSET, s) {
            (false, Some(s)) => a.alu_rr(w64, Alu::Cmp, d, s),
            (false, None) => a.alu_ri(w64, Alu::Cmp, d, i.imm),
            (true, Some(s)) => a.test_rr(w64, d, s),
            (true, None) => a.test_ri(w64, d, i.imm),
        }
        self.a.jcc(cond, t);
        Ok(())
    }

    fn call(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        if i.opc == CALLX {
            let r = self.dst_r(pc, i)?;
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
                let stub = self.stub(pc, FAULT_DEPTH);
                // Without a stack window no frame can be read: nothing to zero.
                let zero = self.usage.stack.then(|| match self.zero_frame {
                    Some(l) => l,
                    None => {
                        let l = self.a.label();
                        self.zero_frame = Some(l);
                        l
                    }
                });
                // Saved for the caller: r6-r9 in use and r10; an odd count of pushes keeps
                // the callee's native stack 16-byte aligned (with the return address).
                let mut saved = Regs::default();
                for r in self.usage.saved_r6_r9() {
                    saved.push(r);
                }
                saved.push(MAP[10]);
                if saved.len().is_multiple_of(2) {
                    saved.push(R::R11); // padding (scratch)
                }
                let a = &mut self.a;
                // One more frame must fit below the current one.
                a.lea(R::R11, MAP[10], -2 * STACK_FRAME_SIZE as i32);
                a.alu_rm(Alu::Cmp, R::R11, CTX, disp(C_STACK_START));
                a.jcc(Cond::B, stub);
                for &r in saved.as_slice() {
                    a.push(r);
                }
                a.alu_ri(true, Alu::Sub, MAP[10], STACK_FRAME_SIZE as i32);
                if let Some(zero) = zero {
                    a.call_label(zero);
                }
                a.call_label(t);
                for &r in saved.as_slice().iter().rev() {
                    a.pop(r);
                }
                Ok(())
            }
            _ => Err(bad),
        }
    }

    /// Calls helper `f` with r1-r5 as arguments and the `HelperContext` in r9 (its `frame`
    /// set to r10 first if the program has a stack); r0 = result, r1-r5 kept (saved around
    /// the call: six pushes keep the native stack 16-byte aligned). After a context helper, a
    /// non-zero `stop` word ends the program like the unwind helper.
    fn call_helper(&mut self, id: u32, f: Helper) {
        const ARGS: [R; 5] = [MAP[1], MAP[2], MAP[3], MAP[4], MAP[5]];
        for r in ARGS {
            self.a.push(r);
        }
        self.a.push(MAP[5]);
        self.a.mov_rm(R::R9, CTX, disp(C_HCTX));
        if self.usage.stack {
            self.a.mov_mr(R::R9, HCTX_FRAME, MAP[10]);
        }
        self.a.call_abs(f.addr());
        self.a.pop(R::R9);
        for r in ARGS.iter().rev() {
            self.a.pop(*r);
        }
        let unwind = self.helpers.unwind() == Some(id);
        if !unwind && !f.takes_context() {
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
            self.a.jcc(Cond::E, l);
        }
        if f.takes_context() {
            self.a.mov_rm(R::R9, CTX, disp(C_HCTX));
            self.a.mov_rm(R::R9, R::R9, HCTX_STOP);
            self.a.test_rr(true, R::R9, R::R9);
            self.a.jcc(Cond::Ne, l);
        }
    }

    /// `callx`: the helper id is the low 32 bits of register `r`; dispatch over the registry.
    fn callx(&mut self, pc: usize, r: R) -> Result<(), JitError> {
        let done = self.a.label();
        self.a.mov_rr(false, R::R11, r);
        let helpers: Vec<(u32, Helper)> = self.helpers.iter().collect();
        for (id, f) in helpers {
            let next = self.a.label();
            self.a.alu_ri(false, Alu::Cmp, R::R11, id as i32);
            self.a.jcc(Cond::Ne, next);
            self.call_helper(id, f);
            self.a.jmp(done);
            self.a.bind(next);
        }
        self.fault_here(pc, FAULT_CALLX);
        self.a.bind(done);
        Ok(())
    }

    // ---- memory ----

    /// Emits the bounds check for `[base + off]` of `size` bytes and returns the operand to
    /// access: `(rbp, off)` for an access inside the current frame, else `(r11, 0)` with
    /// r11 = the address, checked to lie in the memory region or the live frames. The likely
    /// region is checked inline, the other one out of line.
    fn mem_operand(&mut self, pc: usize, base: u8, off: i16, size: usize, kind: u32) -> (R, i32) {
        let off32 = off as i32;
        if base == FRAME_REG && off32 >= -(STACK_FRAME_SIZE as i32) && off32 + size as i32 <= 0 {
            return (MAP[10], off32);
        }
        let log = size.trailing_zeros() as usize;
        let b = MAP[base as usize];
        if off32 == 0 {
            self.a.mov_rr(true, R::R11, b);
        } else {
            self.a.lea(R::R11, b, off32);
        }
        // A frame-pointer-based access is most likely a stack access.
        let (first, second) = if base == FRAME_REG {
            (Region::Stack, Region::Mem)
        } else {
            (Region::Mem, Region::Stack)
        };
        let word = word(pc, kind | log as u32);
        let slow = self.a.label();
        let ok = self.a.label();
        if self.usage.stack || self.extra {
            // No stack window: outside memory, only the extra regions remain.
            self.stubs.push(Stub::Access {
                at: slow,
                region: self.usage.stack.then_some(second),
                extra: self.extra,
                log,
                ok,
                word,
            });
        } else {
            // Nothing but memory: outside it is out of bounds.
            self.stubs.push(Stub::Fault { at: slow, word });
        }
        self.region_check(first, log, slow);
        self.a.jcc(Cond::A, slow);
        self.a.bind(ok);
        (R::R11, 0)
    }

    fn mem(&mut self, pc: usize, i: Insn) -> Result<(), JitError> {
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        let mode = i.opc & 0xe0;
        let size = match i.opc & 0x18 {
            SIZE_B => 1,
            SIZE_H => 2,
            SIZE_W => 4,
            _ => 8,
        };
        let w = W::from_bytes(size);
        match (i.class(), mode) {
            (CLS_LDX, MODE_MEM) | (CLS_LDX, MODE_MEMSX) => {
                let signed = mode == MODE_MEMSX;
                if signed && size == 8 {
                    return Err(bad);
                }
                let d = self.dst_w(pc, i)?;
                self.src_r(pc, i)?;
                let (b, o) = self.mem_operand(pc, i.src, i.off, size, FAULT_LOAD);
                self.a.load(w, signed, d, b, o);
            }
            (CLS_ST, MODE_MEM) => {
                self.dst_r(pc, i)?;
                let (b, o) = self.mem_operand(pc, i.dst, i.off, size, FAULT_STORE);
                self.a.store_imm(w, b, o, i.imm);
            }
            (CLS_STX, MODE_MEM) => {
                self.dst_r(pc, i)?;
                let s = self.src_r(pc, i)?;
                let (b, o) = self.mem_operand(pc, i.dst, i.off, size, FAULT_STORE);
                self.a.store(w, b, o, s);
            }
            (CLS_STX, MODE_ATOMIC) if size >= 4 => self.atomic(pc, i, size == 8)?,
            _ => return Err(bad),
        }
        Ok(())
    }

    fn atomic(&mut self, pc: usize, i: Insn, w64: bool) -> Result<(), JitError> {
        let bad = JitError::InvalidOpcode { pc, opc: i.opc };
        let fetch = i.imm & ATOMIC_FETCH != 0;
        let op = match i.imm & !ATOMIC_FETCH {
            ATOMIC_ADD => Some(Alu::Add),
            ATOMIC_OR => Some(Alu::Or),
            ATOMIC_AND => Some(Alu::And),
            ATOMIC_XOR => Some(Alu::Xor),
            _ => None,
        };
        if op.is_none() && i.imm != ATOMIC_XCHG && i.imm != ATOMIC_CMPXCHG {
            return Err(bad);
        }
        self.dst_r(pc, i)?;
        // A fetching atomic writes its source register (cmpxchg writes r0 instead).
        let s = if fetch && i.imm != ATOMIC_CMPXCHG {
            if i.src > 9 {
                return Err(JitError::BadRegister { pc, reg: i.src });
            }
            MAP[i.src as usize]
        } else {
            self.src_r(pc, i)?
        };
        let size = if w64 { 8 } else { 4 };
        let (b, o) = self.mem_operand(pc, i.dst, i.off, size, FAULT_STORE);
        let a = &mut self.a;
        match (op, fetch) {
            (Some(op), false) => a.lock_alu_mr(w64, op, b, o, s),
            (Some(Alu::Add), true) => a.lock_xadd(w64, b, o, s),
            (Some(op), true) => {
                // No x86 instruction returns the old value of or/and/xor: cmpxchg loop.
                a.mov_rr(true, R::R10, R::Rax);
                let sv = if s == R::Rax { R::R10 } else { s };
                a.mov_load(w64, R::Rax, b, o);
                let again = a.label();
                a.bind(again);
                a.mov_rr(w64, R::R9, R::Rax);
                a.alu_rr(w64, op, R::R9, sv);
                a.lock_cmpxchg(w64, b, o, R::R9);
                a.jcc(Cond::Ne, again);
                if !w64 {
                    a.mov_rr(false, R::Rax, R::Rax);
                }
                if s != R::Rax {
                    a.mov_rr(true, s, R::Rax);
                    a.mov_rr(true, R::Rax, R::R10);
                }
            }
            (None, _) if i.imm == ATOMIC_XCHG => a.xchg_mr(w64, b, o, s),
            (None, _) => {
                a.lock_cmpxchg(w64, b, o, s);
                if !w64 {
                    // 32-bit cmpxchg leaves the upper half of rax alone when it succeeds.
                    a.mov_rr(false, R::Rax, R::Rax);
                }
            }
        }
        Ok(())
    }
}

fn word(pc: usize, kind: u32) -> u32 {
    pc as u32 | kind << 24
}

/// The last bounds check of JIT code: whether an access of `size_write & 0xff` bytes at `addr`
/// (a store or atomic if bit 8 is set) lies in an extra region of the run's environment.
/// Returns 1 if allowed, else 0.
pub(crate) extern "C" fn extra_region_check(ctx: &Ctx, addr: u64, size_write: u64) -> u64 {
    #[allow(unsafe_code)]
    // SAFETY: `ctx.hctx` points to the run's `HelperContext`, alive on the host stack of
    // `run_entry` for the whole run (never null during a run); JIT code is suspended in this
    // call, and helpers only borrow it while they run, so a shared borrow here is unique.
    let hcx = unsafe { &*ctx.hctx };
    let (n, write) = (size_write & 0xff, size_write & 0x100 != 0);
    memory::find(&hcx.env().regions, addr, n, write).is_some() as u64
}
