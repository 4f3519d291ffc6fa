//! [`JitProgram`]: a compiled program placed in a progpack pack, and its runs.
//!
//! Placement follows the pack protocol: compile to a byte buffer, reserve a
//! [`Draft`](progpack::Draft) of that size, link the code for the draft's `exec_addr()`, copy
//! it into the draft's image and finalize. The code only depends on its address through
//! `call rel32` to helpers, used when the allocator's code range keeps every helper within
//! ±2 GiB of every byte of the range; otherwise helpers are called through `mov rax, imm64;
//! call rax` and the code is position independent.

use std::sync::Mutex;

use progpack::{Allocator, CodeRange, Config, Program};

use super::{
    compile_with, run_entry, CompileOptions, EntryFn, ExtraRegions, Fault, JitCode, JitError,
};
use crate::context::ProgramEnv;
use crate::error::RunError;
use crate::helpers::Helpers;
use crate::insn::Insn;

/// Alignment of a JIT program's entry point.
const CODE_ALIGN: usize = 16;

/// How [`JitProgram::new`] compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitOptions {
    /// Count executed instructions so that a run stops at its instruction limit like the
    /// interpreter ([`RunError::InstructionLimit`]). Costs one `sub` to memory and a branch
    /// per basic block. Without it a program that loops forever never returns.
    pub count_instructions: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            count_instructions: true,
        }
    }
}

/// A program compiled to x86-64 and placed in executable memory. Dropping it frees (and
/// trap-fills) its chunks. `Send + Sync`: runs from many threads at once are independent.
#[derive(Debug)]
pub struct JitProgram {
    prog: Program,
    counted: bool,
    stack: bool,
    /// Compiled to check extra regions (see [`ExtraRegions`]).
    extra: ExtraRegions,
}

impl JitProgram {
    /// Compiles `slots` (a checked program) with `helpers` and places it with `alloc`.
    pub fn new(
        alloc: &Allocator,
        slots: &[Insn],
        helpers: &Helpers,
        options: JitOptions,
    ) -> Result<JitProgram, JitError> {
        Self::new_with(alloc, slots, helpers, options, false)
    }

    /// [`new`](Self::new) for an environment with or without extra regions.
    pub(crate) fn new_with(
        alloc: &Allocator,
        slots: &[Insn],
        helpers: &Helpers,
        options: JitOptions,
        extra: ExtraRegions,
    ) -> Result<JitProgram, JitError> {
        let budget = options.count_instructions;
        let rel_calls = range_reaches_helpers(alloc, helpers);
        let mut code = compile_with(slots, helpers, CompileOptions { rel_calls, budget }, extra)?;
        let mut draft = alloc.draft(code.len(), CODE_ALIGN)?;
        if !code.reaches(draft.exec_addr() as u64) {
            // The range did not keep its promise (or there is none): absolute calls.
            drop(draft);
            code = compile_with(
                slots,
                helpers,
                CompileOptions {
                    rel_calls: false,
                    budget,
                },
                extra,
            )?;
            draft = alloc.draft(code.len(), CODE_ALIGN)?;
        }
        code.link(draft.exec_addr() as u64)?;
        draft.image_mut().copy_from_slice(code.bytes());
        Ok(JitProgram {
            prog: draft.finalize()?,
            counted: budget,
            stack: code.uses_stack(),
            extra,
        })
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
        Self::new_batch_with(alloc, programs, helpers, options, false)
    }

    /// [`new_batch`](Self::new_batch) for an environment with or without extra regions.
    pub(crate) fn new_batch_with<'s>(
        alloc: &Allocator,
        programs: impl IntoIterator<Item = &'s [Insn]>,
        helpers: &Helpers,
        options: JitOptions,
        extra: ExtraRegions,
    ) -> Result<Vec<JitProgram>, (usize, JitError)> {
        let opts = CompileOptions {
            rel_calls: range_reaches_helpers(alloc, helpers),
            budget: options.count_instructions,
        };
        let mut batch = alloc.batch();
        let mut stacks = Vec::new();
        for (i, slots) in programs.into_iter().enumerate() {
            let mut code = compile_with(slots, helpers, opts, extra).map_err(|e| (i, e))?;
            let slot = batch
                .push(code.len(), CODE_ALIGN)
                .map_err(|e| (i, e.into()))?;
            // A rel32 call out of reach means the code range broke its promise: an error
            // rather than a recompilation, since the slot is already sized.
            code.link(slot.exec_addr as u64).map_err(|e| (i, e))?;
            slot.image.copy_from_slice(code.bytes());
            stacks.push(code.uses_stack());
        }
        let n = batch.len();
        let progs = batch.finalize().map_err(|e| (n, e.into()))?;
        Ok(progs
            .into_iter()
            .zip(stacks)
            .map(|(prog, stack)| JitProgram {
                prog,
                counted: options.count_instructions,
                stack,
                extra,
            })
            .collect())
    }

    /// Like [`new`](Self::new) for code that is already compiled (and so already checked by
    /// [`compile`](super::compile)); links it for its place.
    pub fn place(
        alloc: &Allocator,
        mut code: JitCode,
        counted: bool,
    ) -> Result<JitProgram, JitError> {
        let mut draft = alloc.draft(code.len(), CODE_ALIGN)?;
        code.link(draft.exec_addr() as u64)?;
        draft.image_mut().copy_from_slice(code.bytes());
        Ok(JitProgram {
            prog: draft.finalize()?,
            counted,
            stack: code.uses_stack(),
            extra: false,
        })
    }

    /// Runs the program over `mem` (r1 = its address, r2 = its length) with the default
    /// instruction limit ([`DEFAULT_INSTRUCTION_LIMIT`](crate::interp::DEFAULT_INSTRUCTION_LIMIT))
    /// if instructions are counted.
    pub fn run(&self, mem: &mut [u8]) -> Result<u64, RunError> {
        self.run_limited(mem, crate::interp::DEFAULT_INSTRUCTION_LIMIT)
    }

    /// Runs the program with an instruction limit of `limit` (ignored unless compiled with
    /// [`JitOptions::count_instructions`]).
    pub fn run_limited(&self, mem: &mut [u8], limit: u64) -> Result<u64, RunError> {
        self.run_fault(mem, limit)
            .map_err(|f| fault_to_run_error(f, limit))
    }

    /// Like [`run_limited`](Self::run_limited), with the JIT's own fault description (which
    /// also tells loads from stores).
    pub fn run_fault(&self, mem: &mut [u8], limit: u64) -> Result<u64, Fault> {
        static EMPTY: ProgramEnv = ProgramEnv::EMPTY;
        self.run_env(mem, limit, &EMPTY, 0).map(|(r0, _)| r0)
    }

    /// Like [`run_fault`](Self::run_fault) in environment `env` (maps, host data), as the
    /// `tail_calls`-th tail call of its run; also returns the program a helper asked to
    /// tail-call, which the caller runs.
    pub(crate) fn run_env(
        &self,
        mem: &mut [u8],
        limit: u64,
        env: &ProgramEnv,
        tail_calls: u32,
    ) -> Result<super::Outcome, Fault> {
        debug_assert!(self.extra || env.regions.is_empty());
        #[allow(unsafe_code)]
        // SAFETY: `prog` holds code produced by `compile`, linked for the address it was
        // placed at, whose entry has the signature `EntryFn`; it stays mapped while `self`
        // (which owns it) lives, and `run_entry` calls it only during this borrow. The code
        // touches only the context, `mem`, the stack `run_entry` passes it and the extra
        // regions of `env` (every access is bounds-checked; `env` keeps their maps alive),
        // and calls only registered helpers, which are safe `extern "C"` functions of five
        // `u64`s (and the `HelperContext` that `run_entry` owns for the run) and
        // `extra_region_check`.
        let entry = unsafe { self.prog.as_fn::<EntryFn>() };
        run_entry(entry, mem, self.stack, limit, env, tail_calls)
    }

    /// Whether runs count instructions.
    pub fn counts_instructions(&self) -> bool {
        self.counted
    }

    /// The placed code.
    pub fn program(&self) -> &Program {
        &self.prog
    }
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
