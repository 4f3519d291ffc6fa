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
use std::sync::Mutex;

use progpack::{Allocator, CodeRange, Config, Program};

use super::emit::{self, Output, RunNeeds, STACK_SIZE};
use super::{link, reaches, CompileOptions, EntryFn, Fault, JitCode, JitError};
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
    needs: RunNeeds,
    counted: bool,
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
        if !super::available() {
            return Err(JitError::unsupported_arch());
        }
        let mut opts = CompileOptions {
            rel_calls: range_reaches_helpers(alloc, helpers),
            budget: options.count_instructions,
            blind_constants: options.blind_constants,
        };
        let placed = emit::translate(slots, helpers, opts.emit_options(), |out| {
            place(alloc, out, true, options.count_instructions)
        })??;
        if let Some(p) = placed {
            return Ok(p);
        }
        // The range did not keep its promise (or there is none): absolute calls.
        opts.rel_calls = false;
        emit::translate(slots, helpers, opts.emit_options(), |out| {
            place(alloc, out, false, options.count_instructions)
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
        if !super::available() {
            return Err((0, JitError::unsupported_arch()));
        }
        let opts = CompileOptions {
            rel_calls: range_reaches_helpers(alloc, helpers),
            budget: options.count_instructions,
            blind_constants: options.blind_constants,
        };
        let mut batch = alloc.batch();
        let mut needs = Vec::new();
        for (i, slots) in programs.into_iter().enumerate() {
            let r = emit::translate(slots, helpers, opts.emit_options(), |out| {
                let slot = batch.push(out.code.len(), CODE_ALIGN)?;
                slot.image.copy_from_slice(out.code);
                // A rel32 call out of reach means the code range broke its promise: an error
                // rather than a recompilation, since the slot is already sized.
                link(slot.image, out.calls, slot.exec_addr as u64)?;
                Ok::<_, JitError>(out.needs)
            });
            needs.push(r.and_then(|r| r).map_err(|e| (i, e))?);
        }
        let n = batch.len();
        let progs = batch.finalize().map_err(|e| (n, e.into()))?;
        Ok(progs
            .into_iter()
            .zip(needs)
            .map(|(prog, needs)| JitProgram::from_program(prog, needs, options.count_instructions))
            .collect())
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
        ))
    }

    /// A program around placed code whose entry has the [`EntryFn`] signature.
    fn from_program(prog: Program, needs: RunNeeds, counted: bool) -> JitProgram {
        #[allow(unsafe_code)]
        // SAFETY: `prog` holds code produced by the translator, linked for the address it was
        // placed at, whose entry has the signature `EntryFn`; the pointer is only called while
        // `self` (which owns `prog`) is alive, by `run_fault`, whose safety argument covers the
        // call itself.
        let entry = unsafe { prog.as_fn::<EntryFn>() };
        JitProgram {
            entry,
            needs,
            counted,
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

    /// Runs the program with an instruction limit of `limit` (ignored unless compiled with
    /// [`JitOptions::count_instructions`]).
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
        if self.needs.stack_bytes != 0 {
            return self.run_with_stack(mem, limit);
        }
        let r = (self.entry)(
            mem.as_mut_ptr() as u64,
            mem.len() as u64,
            limit,
            0,
            std::ptr::null_mut(),
        );
        r.result()
    }

    /// A run of code that reads r10: a zeroed frame 0 (all frames with local calls) on this
    /// function's stack.
    #[inline(never)]
    fn run_with_stack(&self, mem: &mut [u8], limit: u64) -> Result<u64, Fault> {
        let mem_start = mem.as_mut_ptr() as u64;
        let mem_len = mem.len() as u64;
        if self.needs.stack_bytes <= STACK_FRAME_SIZE {
            let mut frame = [0u8; STACK_FRAME_SIZE];
            let top = frame.as_mut_ptr() as u64 + STACK_FRAME_SIZE as u64;
            return (self.entry)(mem_start, mem_len, limit, top, std::ptr::null_mut()).result();
        }
        let mut region = [MaybeUninit::<u8>::uninit(); STACK_SIZE];
        // Only frame 0 needs zeroing: the code zeroes every other frame when a call enters
        // it, and never reads a frame that is not live.
        region[STACK_SIZE - STACK_FRAME_SIZE..].fill(MaybeUninit::new(0));
        let top = region.as_mut_ptr() as u64 + STACK_SIZE as u64;
        (self.entry)(mem_start, mem_len, limit, top, std::ptr::null_mut()).result()
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

/// Places translated code with `alloc`; `Ok(None)` if it has relative helper calls that do
/// not reach from where the draft landed (and `rel` says they were relative).
fn place(
    alloc: &Allocator,
    out: Output<'_>,
    rel: bool,
    counted: bool,
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
    )))
}

/// A process-wide allocator for JIT code whose packs lie within rel32 reach of this binary
/// (so helpers defined in it are reached with `call rel32`), created on first use. For
/// callers without an allocator of their own (the conformance engine, the plugin).
pub fn shared_allocator() -> Result<Allocator, JitError> {
    static SHARED: Mutex<Option<Allocator>> = Mutex::new(None);
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = g.as_ref() {
        return Ok(a.clone());
    }
    let near = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()));
    // Without room near the binary, an allocator anywhere (helpers via absolute calls).
    let a = match near {
        Ok(a) => a,
        Err(_) => Allocator::new(Config::default())?,
    };
    *g = Some(a.clone());
    Ok(a)
}

/// The interpreter's error for a JIT fault.
#[cold]
fn fault_to_run_error(f: Fault, limit: u64) -> RunError {
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
    helpers.iter().all(|(_, f)| {
        let t = f as usize as i128;
        // Margin for the call's own offset inside the code.
        let reach = i32::MAX as i128 - (1 << 20);
        (t - lo).abs() < reach && (t - hi).abs() < reach
    })
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JitProgram>();
};
