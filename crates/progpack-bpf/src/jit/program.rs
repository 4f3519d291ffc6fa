//! [`JitProgram`]: a compiled program placed in a progpack pack, and its runs.
//!
//! Placement follows the pack protocol: compile (into a per-thread buffer), reserve a
//! [`Draft`](progpack::Draft) of that size, copy the code into the draft's image, link it for
//! the draft's `exec_addr()` and finalize. The code only depends on its address through
//! `call rel32` to helpers, used when the allocator's code range keeps every helper within
//! ±2 GiB of every byte of the range; otherwise helpers are called through `mov rax, imm64;
//! call rax` and the code is position independent.
//!
//! A run is one call of the code: no context is built in memory. Programs that never read
//! r10 get no stack at all; the others get a zeroed frame (or, with local calls, the whole
//! stack region) from a separate function, so that only they pay for it.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use progpack::{Allocator, CodeRange, Config, Program};

use super::deferred::{Combiner, JitCell};
use super::emit::{self, Output, RunNeeds, STACK_SIZE};
use super::{link, reaches, CompileOptions, EntryFn, EnvShape, Fault, JitCode, JitError, Outcome};
use crate::context::{HelperContext, ProgramEnv};
use crate::error::RunError;
use crate::helpers::Helpers;
use crate::insn::{Insn, STACK_FRAME_SIZE};

/// Alignment of a JIT program's entry point.
const CODE_ALIGN: usize = 16;

/// How [`JitProgram::new`] compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitOptions {
    /// Count executed instructions so that a run stops at its instruction limit like the
    /// interpreter ([`RunError::InstructionLimit`]). Costs a subtraction and a branch per
    /// basic block. Without it a program that loops forever never returns.
    pub count_instructions: bool,
    /// Blind every immediate of the program with a random key, so that no constant the
    /// program chooses appears in executable memory (see [`super`]). Off by default; on in
    /// [`crate::Vm::untrusted`].
    pub blind_constants: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            count_instructions: true,
            blind_constants: false,
        }
    }
}

/// A program compiled to x86-64 and placed in executable memory. Dropping it frees (and
/// trap-fills) its chunks. `Send + Sync`: runs from many threads at once are independent.
#[derive(Debug)]
pub struct JitProgram {
    /// The entry point, inside `prog`.
    entry: EntryFn,
    /// A run is one call of `entry`: no stack, no `HelperContext`, addresses not hidden.
    simple: bool,
    /// What a direct run compares its limit with (see [`JitCell::runs_directly`]): the floor
    /// (see [`RunNeeds::floor`]) if `simple`, else `u64::MAX` (never direct).
    direct_floor: u64,
    needs: RunNeeds,
    counted: bool,
    /// Compiled to check extra regions (see [`EnvShape`]).
    extra: EnvShape,
    prog: Program,
}

impl JitProgram {
    /// Compiles `slots` (a checked program) with `helpers` and places it with `alloc`.
    pub fn new(
        alloc: &Allocator,
        slots: &[Insn],
        helpers: &Helpers,
        options: JitOptions,
    ) -> Result<JitProgram, JitError> {
        Self::new_with(alloc, slots, helpers, options, EnvShape::default(), false)
    }

    /// [`new`](Self::new) for an environment of shape `extra` (extra regions, hidden
    /// addresses). `loops_only`: see [`CompileOptions::budget_loops_only`] (for callers that
    /// run limits below [`max_instructions`](Self::max_instructions) in the interpreter).
    pub(crate) fn new_with(
        alloc: &Allocator,
        slots: &[Insn],
        helpers: &Helpers,
        options: JitOptions,
        extra: EnvShape,
        loops_only: bool,
    ) -> Result<JitProgram, JitError> {
        if !super::available() {
            return Err(JitError::unsupported_arch());
        }
        let mut opts = CompileOptions {
            rel_calls: range_reaches_helpers(alloc, helpers),
            budget: options.count_instructions,
            budget_loops_only: loops_only,
            blind_constants: options.blind_constants,
            hide_addresses: false,
        };
        let placed = emit::translate(slots, helpers, opts.emit_options(extra), |out| {
            place(alloc, out, true, options.count_instructions, extra)
        })??;
        if let Some(p) = placed {
            return Ok(p);
        }
        // The range did not keep its promise (or there is none): absolute calls.
        opts.rel_calls = false;
        emit::translate(slots, helpers, opts.emit_options(extra), |out| {
            place(alloc, out, false, options.count_instructions, extra)
        })??
        .ok_or(JitError::Internal("absolute calls need no link"))
    }

    /// Compiles `slots` *without any bounds check and without instruction counting*, for
    /// comparisons with JITs that check nothing (the benchmarks' unchecked reference).
    ///
    /// # Safety
    /// Every load, store and atomic of every run of the result must lie in the memory given
    /// to that run or in the current stack frame (`[r10 - 512, r10)`), and every run must
    /// end: nothing stops a stray access or an endless loop.
    #[doc(hidden)]
    #[allow(unsafe_code)]
    pub unsafe fn new_unchecked(
        alloc: &Allocator,
        slots: &[Insn],
        helpers: &Helpers,
    ) -> Result<JitProgram, JitError> {
        if !super::available() {
            return Err(JitError::unsupported_arch());
        }
        let opts = CompileOptions {
            rel_calls: false,
            budget: false,
            budget_loops_only: false,
            blind_constants: false,
            hide_addresses: false,
        };
        let mut eo = opts.emit_options(EnvShape::default());
        eo.unchecked = true;
        emit::translate(slots, helpers, eo, |out| {
            place(alloc, out, false, false, EnvShape::default())
        })??
        .ok_or(JitError::Internal("absolute calls need no link"))
    }

    /// Compiles many programs and places them together with one progpack
    /// [`Batch`](progpack::Batch): consecutive programs share chunks' runs, and the whole
    /// batch costs one backend write per run of chunks (usually one per pack) instead of one
    /// per program. All or nothing: the first program that fails fails the batch (its index is
    /// in the error).
    pub fn new_batch<'s>(
        alloc: &Allocator,
        programs: impl IntoIterator<Item = &'s [Insn]>,
        helpers: &Helpers,
        options: JitOptions,
    ) -> Result<Vec<JitProgram>, (usize, JitError)> {
        Self::place_batch(
            alloc,
            programs,
            helpers,
            options,
            EnvShape::default(),
            false,
        )
        .map(|placed| placed.collect())
    }

    /// [`new_batch`](Self::new_batch) for an environment of shape `extra`; `loops_only` as
    /// in [`new_with`](Self::new_with). Gives the placed programs as an iterator, in order, so
    /// that a caller keeps each where it wants (no vector of them in between).
    pub(crate) fn place_batch<'s>(
        alloc: &Allocator,
        programs: impl IntoIterator<Item = &'s [Insn]>,
        helpers: &Helpers,
        options: JitOptions,
        extra: EnvShape,
        loops_only: bool,
    ) -> Result<Placed, (usize, JitError)> {
        if !super::available() {
            return Err((0, JitError::unsupported_arch()));
        }
        let opts = CompileOptions {
            rel_calls: range_reaches_helpers(alloc, helpers),
            budget: options.count_instructions,
            budget_loops_only: loops_only,
            blind_constants: options.blind_constants,
            hide_addresses: false,
        };
        let mut batch = alloc.batch();
        let mut needs = Vec::new();
        for (i, slots) in programs.into_iter().enumerate() {
            let mut failed = None;
            let eo = opts.emit_options(extra);
            let r = emit::translate_to(slots, helpers, eo, |out| {
                match push_linked(&mut batch, &out) {
                    Ok(_) => needs.push(out.needs),
                    Err(e) => failed = Some(e),
                }
            });
            if let Err(e) = r {
                return Err((i, *e));
            }
            if let Some(e) = failed {
                return Err((i, e));
            }
        }
        let n = batch.len();
        let progs = batch.finalize().map_err(|e| (n, e.into()))?;
        Ok(Placed {
            progs: progs.into_iter(),
            needs: needs.into_iter(),
            counted: options.count_instructions,
            extra,
        })
    }

    /// Compiles `slots` like [`new_with`](Self::new_with) into a slot of `combiner`'s open
    /// batch, to be written with the other programs waiting there (see [`super::deferred`]).
    pub(crate) fn new_deferred(
        combiner: &Arc<Combiner>,
        slots: &[Insn],
        helpers: &Helpers,
        options: JitOptions,
        extra: EnvShape,
        loops_only: bool,
    ) -> Result<Arc<JitCell>, JitError> {
        if !super::available() {
            return Err(JitError::unsupported_arch());
        }
        let opts = CompileOptions {
            rel_calls: range_reaches_helpers(combiner.allocator(), helpers),
            budget: options.count_instructions,
            budget_loops_only: loops_only,
            blind_constants: options.blind_constants,
            hide_addresses: false,
        };
        emit::translate(slots, helpers, opts.emit_options(extra), |out| {
            let stage = |batch: &mut progpack::Batch| {
                let exec_addr = push_linked(batch, &out)?;
                #[allow(unsafe_code)]
                // SAFETY: the slot's image holds code produced by the translator, linked for
                // `exec_addr`, whose entry has the signature `EntryFn` (as in `from_program`).
                // The pointer is kept in the program's `JitCell`, which calls it only once the
                // batch holding the slot has been finalized and the code is there (see
                // `deferred`); the cell then holds the program that keeps it mapped.
                let entry = unsafe { std::mem::transmute::<usize, EntryFn>(exec_addr) };
                Ok::<_, JitError>((out.needs, extra, entry))
            };
            combiner.add(stage, options.count_instructions)
        })?
    }

    /// Like [`new`](Self::new) for code that is already compiled (and so already checked by
    /// [`compile`](super::compile)); links it for its place.
    pub fn place(
        alloc: &Allocator,
        mut code: JitCode,
        counted: bool,
    ) -> Result<JitProgram, JitError> {
        if !super::available() {
            return Err(JitError::unsupported_arch());
        }
        let mut draft = alloc.draft(code.len(), CODE_ALIGN)?;
        code.link(draft.exec_addr() as u64)?;
        draft.image_mut().copy_from_slice(code.bytes());
        Ok(JitProgram::from_program(
            draft.finalize()?,
            code.needs,
            counted,
            EnvShape {
                hide: code.needs.hide,
                ..EnvShape::default()
            },
        ))
    }

    /// A program around placed code whose entry has the [`EntryFn`] signature.
    #[inline]
    pub(super) fn from_program(
        prog: Program,
        needs: RunNeeds,
        counted: bool,
        extra: EnvShape,
    ) -> JitProgram {
        #[allow(unsafe_code)]
        // SAFETY: `prog` holds code produced by the translator, linked for the address it was
        // placed at, whose entry has the signature `EntryFn`; the pointer is kept in `self`
        // next to `prog`, which keeps the code mapped, and is called only through `&self`.
        // A call touches only the memory slice and the stack region the run passes (both
        // borrowed for the call), the extra regions of the run's environment (every access is
        // bounds-checked; the environment keeps their maps alive), and calls only registered
        // helpers, safe `extern "C"` functions of five `u64`s (and the `HelperContext` the run
        // owns), and `extra_region_check`.
        let entry = unsafe { prog.as_fn::<EntryFn>() };
        let simple = needs.stack_bytes == 0 && !needs.env && !extra.hide;
        JitProgram {
            entry,
            simple,
            direct_floor: if simple {
                u64::from(needs.floor)
            } else {
                u64::MAX
            },
            needs,
            counted: counted && needs.floor == 0,
            extra,
            prog,
        }
    }

    /// Runs the program over `mem` (r1 = its address, r2 = its length) with the default
    /// instruction limit ([`DEFAULT_INSTRUCTION_LIMIT`](crate::interp::DEFAULT_INSTRUCTION_LIMIT))
    /// if instructions are counted.
    #[inline]
    pub fn run(&self, mem: &mut [u8]) -> Result<u64, RunError> {
        self.run_limited(mem, crate::interp::DEFAULT_INSTRUCTION_LIMIT)
    }

    /// Runs the program with an instruction limit of `limit` (ignored unless the code
    /// [counts instructions](Self::counts_instructions)).
    #[inline]
    pub fn run_limited(&self, mem: &mut [u8], limit: u64) -> Result<u64, RunError> {
        match self.run_fault(mem, limit) {
            Ok(v) => Ok(v),
            Err(f) => Err(fault_to_run_error(f, limit)),
        }
    }

    /// Like [`run_limited`](Self::run_limited), with the JIT's own fault description (which
    /// also tells loads from stores).
    #[inline]
    pub fn run_fault(&self, mem: &mut [u8], limit: u64) -> Result<u64, Fault> {
        if !self.simple {
            return self.run_without_env(mem, limit);
        }
        let (r1, len) = entry_memory(mem);
        (self.entry)(r1, len, limit, 0, std::ptr::null_mut()).result()
    }

    /// [`run_fault`](Self::run_fault) for code that needs a stack, a `HelperContext` or hides
    /// addresses: in an empty environment of its shape.
    #[inline(never)]
    fn run_without_env(&self, mem: &mut [u8], limit: u64) -> Result<u64, Fault> {
        static EMPTY: ProgramEnv = ProgramEnv::EMPTY;
        static EMPTY_HIDDEN: ProgramEnv = ProgramEnv::EMPTY_HIDDEN;
        let env = if self.extra.hide {
            &EMPTY_HIDDEN
        } else {
            &EMPTY
        };
        self.run_env(mem, limit, env, 0).map(|(r0, _)| r0)
    }

    /// A run in environment `env` (maps, host data), as the `tail_calls`-th tail call of its
    /// run: with the stack the code needs and, if it reads it, a `HelperContext`. Also returns
    /// the program a helper asked to tail-call, which the caller runs.
    #[inline(never)]
    pub(crate) fn run_env(
        &self,
        mem: &mut [u8],
        limit: u64,
        env: &ProgramEnv,
        tail_calls: u32,
    ) -> Result<Outcome, Fault> {
        if self.needs.stack_bytes as usize <= STACK_FRAME_SIZE {
            let mut frame = [0u8; STACK_FRAME_SIZE];
            self.run_on(mem, limit, env, tail_calls, &mut frame)
        } else {
            let mut region = [MaybeUninit::<u8>::uninit(); STACK_SIZE];
            // Only frame 0 needs zeroing: the code zeroes every other frame when a call enters
            // it, and never reads a frame that is not live.
            region[STACK_SIZE - STACK_FRAME_SIZE..].fill(MaybeUninit::new(0));
            self.run_on(mem, limit, env, tail_calls, &mut region)
        }
    }

    /// One call of the code with `stack` as stack region (its top is r10; unused if the code
    /// reads no r10).
    #[inline(always)]
    fn run_on<T>(
        &self,
        mem: &mut [u8],
        limit: u64,
        env: &ProgramEnv,
        tail_calls: u32,
        stack: &mut [T],
    ) -> Result<Outcome, Fault> {
        debug_assert!(self.extra.extra_regions || env.regions().is_empty());
        debug_assert_eq!(self.extra.hide, env.hides_addresses());
        let (r1, len) = entry_memory(mem);
        if self.extra.hide && len > crate::vaddr::MAX_INPUT {
            return Err(Fault::InputTooLarge { len });
        }
        let start = stack.as_mut_ptr() as u64;
        let top = start + std::mem::size_of_val(stack) as u64;
        let (stack_start, top) = if self.needs.stack_bytes == 0 {
            (0, 0)
        } else {
            (start, top)
        };
        if !self.needs.env {
            let r0 = (self.entry)(r1, len, limit, top, std::ptr::null_mut()).result()?;
            return Ok((r0, None));
        }
        let mut hcx = HelperContext::new(mem.as_mut_ptr() as u64, len, stack_start, top, env);
        hcx.tail_calls = tail_calls;
        let hcx_ptr = (&mut hcx as *mut HelperContext<'_>).cast::<HelperContext<'static>>();
        // Helpers get `hcx` only during the calls the code makes to them.
        let r0 = (self.entry)(r1, len, limit, top, hcx_ptr).result()?;
        Ok((r0, hcx.tail_call.take()))
    }

    /// Whether runs count instructions (not when the code has no loops and leaves the
    /// limit to its caller: see [`max_instructions`](Self::max_instructions)).
    pub fn counts_instructions(&self) -> bool {
        self.counted
    }

    /// For code that was asked to count but has no loops and leaves the instruction limit to
    /// its caller (a [`BpfProgram`](crate::BpfProgram)'s code, see
    /// [`CompileOptions::budget_loops_only`]): the most instructions a run executes. A limit
    /// at or above it cannot be reached; runs of this code ignore lower ones, which its
    /// `BpfProgram` runs in the interpreter instead.
    pub fn max_instructions(&self) -> Option<u64> {
        (self.needs.floor != 0).then_some(u64::from(self.needs.floor))
    }

    /// The lowest instruction limit this code can run with exactly (0: any).
    #[inline(always)]
    pub(crate) fn floor(&self) -> u64 {
        u64::from(self.needs.floor)
    }

    /// The entry point.
    pub(super) fn entry(&self) -> EntryFn {
        self.entry
    }

    /// What a direct run compares its limit with (see [`JitCell::runs_directly`]).
    pub(super) fn direct_floor(&self) -> u64 {
        self.direct_floor
    }

    /// The placed code.
    pub fn program(&self) -> &Program {
        &self.prog
    }
}

/// r1 and r2 at entry for input memory `mem`: its address and length, or 0 and 0 when it is
/// empty (as the upstream conformance runner's plugins pass a null pointer).
#[inline(always)]
pub(super) fn entry_memory(mem: &mut [u8]) -> (u64, u64) {
    let len = mem.len() as u64;
    let r1 = if len == 0 { 0 } else { mem.as_mut_ptr() as u64 };
    (r1, len)
}

/// The programs of a batch [`JitProgram::place_batch`] placed, in order.
pub(crate) struct Placed {
    progs: std::vec::IntoIter<Program>,
    needs: std::vec::IntoIter<RunNeeds>,
    counted: bool,
    extra: EnvShape,
}

impl Iterator for Placed {
    type Item = JitProgram;

    #[inline]
    fn next(&mut self) -> Option<JitProgram> {
        let prog = self.progs.next()?;
        let needs = self.needs.next()?;
        Some(JitProgram::from_program(
            prog,
            needs,
            self.counted,
            self.extra,
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.progs.size_hint()
    }
}

/// Pushes translated code into `batch`, linked for where it will run; returns that address.
fn push_linked(batch: &mut progpack::Batch, out: &Output<'_>) -> Result<usize, JitError> {
    let slot = batch.push(out.code.len(), CODE_ALIGN)?;
    slot.image.copy_from_slice(out.code);
    // A rel32 call out of reach means the code range broke its promise: an error rather than
    // a recompilation, since the slot is already sized.
    link(slot.image, out.calls, slot.exec_addr as u64)?;
    Ok(slot.exec_addr)
}

/// Places translated code with `alloc`; `Ok(None)` if it has relative helper calls that do
/// not reach from where the draft landed (and `rel` says they were relative).
fn place(
    alloc: &Allocator,
    out: Output<'_>,
    rel: bool,
    counted: bool,
    extra: EnvShape,
) -> Result<Option<JitProgram>, JitError> {
    let mut draft = alloc.draft(out.code.len(), CODE_ALIGN)?;
    let base = draft.exec_addr() as u64;
    if rel && !reaches(out.calls, base) {
        return Ok(None);
    }
    let image = draft.image_mut();
    image.copy_from_slice(out.code);
    link(image, out.calls, base)?;
    Ok(Some(JitProgram::from_program(
        draft.finalize()?,
        out.needs,
        counted,
        extra,
    )))
}

/// A process-wide allocator for JIT code whose packs lie within rel32 reach of this binary
/// (so helpers defined in it are reached with `call rel32`), created on first use, with the
/// kernel's 16 bytes of minimum slack for a random start of every program
/// (`Config::min_slack(16)`). For callers without an allocator of their own (the conformance
/// engine, the plugin); an allocator given to `Vm::enable_jit` keeps its own settings.
pub fn shared_allocator() -> Result<Allocator, JitError> {
    static SHARED: Mutex<Option<Allocator>> = Mutex::new(None);
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = g.as_ref() {
        return Ok(a.clone());
    }
    // The kernel's 16 bytes of slack: every program starts at a random offset of at least
    // 0..=16 bytes, as in the kernel's BPF JIT (eBPF programs may come from users this process
    // does not trust; see progpack's notes on JIT spraying).
    let config = Config::default().min_slack(16);
    let near = Allocator::new(config.clone().code_range(CodeRange::near_this_binary()));
    // Without room near the binary, an allocator anywhere (helpers via absolute calls).
    let a = match near {
        Ok(a) => a,
        Err(_) => Allocator::new(config)?,
    };
    *g = Some(a.clone());
    Ok(a)
}

/// The interpreter's error for a JIT fault.
#[cold]
pub(crate) fn fault_to_run_error(f: Fault, limit: u64) -> RunError {
    match f {
        Fault::OutOfBounds { pc, addr, size, .. } => RunError::OutOfBounds {
            addr,
            len: size,
            pc,
        },
        Fault::CallDepth { pc } => RunError::CallDepthExceeded { pc },
        Fault::UnknownHelper { pc, id } => RunError::UnknownHelper { id: id as u32, pc },
        Fault::FellOffEnd { pc } => RunError::InvalidInstruction { pc },
        Fault::InputTooLarge { len } => RunError::InputTooLarge {
            len,
            max: crate::vaddr::MAX_INPUT,
        },
        Fault::Budget { .. } => RunError::InstructionLimit { limit },
    }
}

/// Whether every helper is within `call rel32` reach of every address of the allocator's
/// code range (none configured: no).
fn range_reaches_helpers(alloc: &Allocator, helpers: &Helpers) -> bool {
    let Some((base, size)) = alloc.code_range() else {
        return false;
    };
    let (lo, hi) = (base as i128, base as i128 + size as i128);
    let own = super::emit::extra_region_check as *const () as usize as u64;
    let targets = helpers.iter().map(|(_, f)| f.addr()).chain([own]);
    targets.into_iter().all(|t| {
        let t = t as i128;
        // Margin for the call's own offset inside the code.
        let reach = i32::MAX as i128 - (1 << 20);
        (t - lo).abs() < reach && (t - hi).abs() < reach
    })
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JitProgram>();
};
