//! The x86-64 JIT: compiles a checked eBPF program to machine code placed in a progpack pack.
//!
//! [`compile`] translates a program (raw slots, as the checker accepted them) into position
//! independent code apart from helper calls; [`JitCode::link`] fixes those for the address the
//! code will run at. [`JitProgram`] does both against a progpack [`Draft`](progpack::Draft) and
//! runs the result.
//!
//! Semantics are those of the interpreter (RFC 9669): every memory access is bounds-checked in
//! the emitted code against the memory region and the stack region, a violation returns the
//! faulting pc to the caller; division by zero gives 0, modulo by zero leaves the dividend;
//! `call local` gets a fresh 512-byte frame and preserves r6-r9; at most
//! [`MAX_CALL_DEPTH`](crate::insn::MAX_CALL_DEPTH) frames are live; the registry's unwind
//! helper ([`Helpers::set_unwind`]) stops the program with r0 = 0 when it returns 0.
//!
//! Instruction limit: [`JitProgram`] code counts instructions unless
//! [`JitOptions::count_instructions`] is off ([`compile`]: [`CompileOptions::budget`]). Every
//! basic block then subtracts its instruction count from the run's budget when entered (one
//! `sub` to memory and a branch per block) and the run fails when the budget would go
//! negative, which is when the interpreter hits the same limit. (If an access in a block faults
//! and the budget also runs out in that block, the JIT reports the budget and the interpreter
//! the access.) Without counting, a program that loops forever runs forever.
//!
//! Costs worth knowing: a helper call saves and restores r1-r5 around the call (the
//! interpreter keeps them); `callx` compares its register with every registered helper id in
//! turn (linear in the size of the registry); a `call local` zeroes the callee's 512-byte frame.
//! Atomics use `lock`-prefixed instructions also on unaligned addresses, which the hardware
//! allows but which a kernel with split-lock detection may slow down or signal when the access
//! crosses a cache line.

mod emit;
mod program;
mod x86;

pub(crate) use program::fault_to_run_error;
pub use program::{shared_allocator, JitOptions, JitProgram};

use x86::AbsCallSite;

use std::mem::MaybeUninit;

use crate::context::{HelperContext, ProgramEnv};
use crate::helpers::Helpers;
use crate::insn::{Insn, STACK_FRAME_SIZE};

/// Why a program could not be compiled or placed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JitError {
    /// The program has no instructions.
    #[error("empty program")]
    Empty,
    /// The program is longer than the JIT supports.
    #[error("program of {slots} slots is too large for the JIT")]
    TooLarge {
        /// Number of slots.
        slots: usize,
    },
    /// An opcode (or opcode/field combination) the JIT does not know.
    #[error("invalid opcode {opc:#04x} at pc {pc}")]
    InvalidOpcode {
        /// Slot index.
        pc: usize,
        /// The opcode byte.
        opc: u8,
    },
    /// A register number out of range, or a write to r10.
    #[error("bad register r{reg} at pc {pc}")]
    BadRegister {
        /// Slot index.
        pc: usize,
        /// Register number.
        reg: u8,
    },
    /// A jump or local call whose target is outside the program.
    #[error("jump at pc {pc} to {target} is out of range")]
    JumpOutOfRange {
        /// Slot index.
        pc: usize,
        /// The computed target slot.
        target: i64,
    },
    /// A jump or local call into the second slot of `lddw`.
    #[error("jump at pc {pc} into the middle of lddw at {target}")]
    JumpIntoLddw {
        /// Slot index.
        pc: usize,
        /// The target slot.
        target: usize,
    },
    /// `lddw` without a valid second slot.
    #[error("incomplete lddw at pc {pc}")]
    IncompleteLddw {
        /// Slot index.
        pc: usize,
    },
    /// A `call` to a helper id that is not registered.
    #[error("unknown helper {id} at pc {pc}")]
    UnknownHelper {
        /// Slot index.
        pc: usize,
        /// Helper id.
        id: u32,
    },
    /// A helper is out of `call rel32` reach from the code's address.
    #[error("helper at {target:#x} is out of rel32 reach from code at {base:#x}")]
    HelperOutOfReach {
        /// Code base address.
        base: u64,
        /// Helper address.
        target: u64,
    },
    /// A bug in the JIT, reported rather than panicking.
    #[error("internal JIT error: {0}")]
    Internal(&'static str),
    /// The allocator could not place the code.
    #[error("placing JIT code: {0}")]
    Alloc(#[from] progpack::Error),
    /// The program was not JIT-compiled (see [`crate::Vm::enable_jit`]).
    #[error("the program was not JIT-compiled")]
    NotCompiled,
}

/// How [`compile`] generates code.
#[derive(Clone, Copy, Debug)]
pub struct CompileOptions {
    /// Reach helpers with `call rel32` (needs [`JitCode::link`] with an address within ±2 GiB
    /// of every helper); else `mov rax, imm64; call rax`.
    pub rel_calls: bool,
    /// Count executed instructions; the run fails with [`Fault::Budget`] when the budget
    /// given to the run is used up.
    pub budget: bool,
}

/// Whether code may access extra regions ([`crate::memory`]): true for programs whose
/// environment has maps. Code compiled without may only run with an environment without
/// extra regions.
pub(crate) type ExtraRegions = bool;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            rel_calls: true,
            budget: false,
        }
    }
}

/// Machine code for one program, not yet placed.
#[derive(Debug, Clone)]
pub struct JitCode {
    code: Vec<u8>,
    calls: Vec<AbsCallSite>,
    pc_offsets: Vec<u32>,
    /// Whether the code reads r10 and so needs a stack window (see `emit::Usage`).
    stack: bool,
}

/// Compiles `insns` (raw slots; `lddw` takes two) with the helpers in `helpers`.
///
/// The program should have passed the checker; the JIT checks again what it relies on
/// (opcodes, registers, jump targets, helper ids) and reports a [`JitError`], never panics.
pub fn compile(
    insns: &[Insn],
    helpers: &Helpers,
    opts: CompileOptions,
) -> Result<JitCode, JitError> {
    compile_with(insns, helpers, opts, false)
}

/// [`compile`] for an environment with or without extra regions.
pub(crate) fn compile_with(
    insns: &[Insn],
    helpers: &Helpers,
    opts: CompileOptions,
    extra_regions: ExtraRegions,
) -> Result<JitCode, JitError> {
    let t = emit::translate(
        insns,
        helpers,
        opts.rel_calls,
        emit::Options {
            budget: opts.budget,
            extra_regions,
        },
    )?;
    Ok(JitCode {
        code: t.code,
        calls: t.calls,
        pc_offsets: t.pc_offsets,
        stack: t.usage.stack,
    })
}

impl JitCode {
    /// The code bytes (entry point at offset 0).
    pub fn bytes(&self) -> &[u8] {
        &self.code
    }

    /// Code length in bytes.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// Whether the code is empty (never, for compiled code).
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Offset of the code for instruction slot `pc` (`None` for the second slot of `lddw`).
    pub fn pc_offset(&self, pc: usize) -> Option<u32> {
        self.pc_offsets
            .get(pc)
            .copied()
            .filter(|&o| o != x86::UNBOUND)
    }

    /// Whether the program reads r10. Code that does not gets no stack region at run time:
    /// it could only reach the stack through a guessed address, which is out of bounds.
    pub fn uses_stack(&self) -> bool {
        self.stack
    }

    /// Whether helper calls depend on the final address (`call rel32`).
    pub fn needs_link(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Fixes `call rel32` helper calls for code running at `base`. Fails if a helper is out of
    /// reach; compile again with `rel_calls: false` then.
    pub fn link(&mut self, base: u64) -> Result<(), JitError> {
        for c in &self.calls {
            let next = base.wrapping_add(c.pos as u64 + 4);
            let rel = (c.target as i64).wrapping_sub(next as i64);
            let rel = i32::try_from(rel).map_err(|_| JitError::HelperOutOfReach {
                base,
                target: c.target,
            })?;
            let p = c.pos as usize;
            self.code[p..p + 4].copy_from_slice(&rel.to_le_bytes());
        }
        Ok(())
    }

    /// Whether every helper is within `call rel32` reach of code at `base`.
    pub fn reaches(&self, base: u64) -> bool {
        self.calls.iter().all(|c| {
            let next = base.wrapping_add(c.pos as u64 + 4);
            i32::try_from((c.target as i64).wrapping_sub(next as i64)).is_ok()
        })
    }
}

/// A run-time fault of JIT code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A load, store or atomic outside the memory region and the stack region.
    OutOfBounds {
        /// Slot index of the access.
        pc: usize,
        /// The address accessed.
        addr: u64,
        /// Access size in bytes.
        size: usize,
        /// Whether it was a store or atomic (else a load).
        write: bool,
    },
    /// `call local` beyond the call depth limit.
    CallDepth {
        /// Slot index of the call.
        pc: usize,
    },
    /// `callx` with an id that names no registered helper.
    UnknownHelper {
        /// Slot index of the call.
        pc: usize,
        /// The id (register value).
        id: u64,
    },
    /// Execution ran past the last instruction.
    FellOffEnd {
        /// The slot index past the end.
        pc: usize,
    },
    /// The instruction budget ran out.
    Budget {
        /// Slot index of the jump or call.
        pc: usize,
    },
}

impl Fault {
    fn decode(word: u64, extra: u64) -> Fault {
        let pc = (word & 0xff_ffff) as usize;
        let kind = (word >> 24) as u32;
        match kind {
            emit::FAULT_DEPTH => Fault::CallDepth { pc },
            emit::FAULT_CALLX => Fault::UnknownHelper { pc, id: extra },
            emit::FAULT_END => Fault::FellOffEnd { pc },
            emit::FAULT_BUDGET => Fault::Budget { pc },
            k => Fault::OutOfBounds {
                pc,
                addr: extra,
                size: 1 << (k & 3),
                write: k & emit::FAULT_STORE != 0,
            },
        }
    }
}

/// The JIT code's entry point: `extern "C" fn(ctx) -> r0`.
pub(crate) type EntryFn = extern "C" fn(*mut emit::Ctx) -> u64;

/// What a run returns besides faults: r0 and the program a helper asked to tail-call (the
/// caller runs it).
pub type Outcome = (u64, Option<std::sync::Arc<crate::BpfProgram>>);

/// Runs JIT code at `entry` over `mem` in environment `env` with a fresh stack (or none, if
/// the code does not use one), as the `tail_calls`-th tail call of its run; `budget` is the
/// instruction limit if the code counts instructions.
#[inline]
fn run_entry(
    entry: EntryFn,
    mem: &mut [u8],
    stack: bool,
    budget: u64,
    env: &ProgramEnv,
    tail_calls: u32,
) -> Result<Outcome, Fault> {
    if stack {
        let mut region = [MaybeUninit::<u8>::uninit(); emit::STACK_SIZE];
        // Only frame 0 needs zeroing: the code zeroes every other frame when a call enters
        // it, and never reads a frame that is not live.
        region[emit::STACK_SIZE - STACK_FRAME_SIZE..].fill(MaybeUninit::new(0));
        call_entry(
            entry,
            mem,
            region.as_mut_ptr() as u64,
            true,
            budget,
            env,
            tail_calls,
        )
    } else {
        // No window: the code never dereferences the stack region, so any address does for
        // r10 arithmetic (local-call depth checks); one that cannot wrap around.
        call_entry(entry, mem, NO_STACK, false, budget, env, tail_calls)
    }
}

/// Base of the (never dereferenced) stack region of code without a stack window.
const NO_STACK: u64 = 1 << 20;

#[inline(always)]
fn call_entry(
    entry: EntryFn,
    mem: &mut [u8],
    stack_start: u64,
    stack: bool,
    budget: u64,
    env: &ProgramEnv,
    tail_calls: u32,
) -> Result<Outcome, Fault> {
    let mem_start = mem.as_mut_ptr() as u64;
    let top = stack_start + emit::STACK_SIZE as u64;
    // Without a stack window the helpers see no stack either.
    let (hs, ht) = if stack { (stack_start, top) } else { (0, 0) };
    let mut hcx = HelperContext::new(mem_start, mem.len() as u64, hs, ht, env);
    hcx.tail_calls = tail_calls;
    let hcx_ptr = (&mut hcx as *mut HelperContext<'_>).cast::<HelperContext<'static>>();
    let mut ctx = emit::Ctx::new(
        mem_start,
        mem.len() as u64,
        stack_start,
        stack,
        budget,
        hcx_ptr,
    );
    // The code reads and writes only `ctx`, `hcx`, `mem`, the stack region (all borrowed
    // mutably for the call) and the environment's extra regions; every access is checked
    // against the regions `ctx` and `hcx` describe. Helpers get `hcx` only during the call.
    let r0 = entry(&mut ctx);
    if ctx.fault != 0 {
        return Err(Fault::decode(ctx.fault, ctx.fault_extra));
    }
    Ok((r0, hcx.tail_call.take()))
}
