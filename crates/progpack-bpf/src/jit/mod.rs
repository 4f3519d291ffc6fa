//! The x86-64 JIT: compiles a checked eBPF program to machine code placed in a progpack pack.
//!
//! [`compile`] translates a program (raw slots, as the checker accepted them) into position
//! independent code apart from helper calls; [`JitCode::link`] fixes those for the address the
//! code will run at. [`JitProgram`] does both against a progpack [`Draft`](progpack::Draft) and
//! runs the result.
//!
//! The JIT exists only for x86-64 hosts: elsewhere [`available`] is false and compiling
//! or placing a program fails with [`JitError::UnsupportedArch`] (the interpreter works
//! everywhere).
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
//! basic block then subtracts its instruction count from the run's budget (kept in a
//! register when the program leaves one free) when entered, and the run fails when the
//! budget would go negative, which is when the interpreter hits the same limit. (If an access
//! in a block faults and the budget also runs out in that block, the JIT reports the budget
//! and the interpreter the access.) Without counting, a program that loops forever runs
//! forever.
//!
//! A [`BpfProgram`](crate::BpfProgram)'s code counts only when the program can run an
//! instruction twice (a backward jump or a local call; [`CompileOptions::budget_loops_only`]).
//! Any other program executes at most its number of instructions
//! ([`JitProgram::max_instructions`]), so a limit at or above that cannot be reached and the
//! code has no charge at all; a run with a lower limit goes to the interpreter, which stops
//! exactly where the limit says (for these runs the access-or-budget case above gives the
//! interpreter's answer).
//!
//! Constant blinding ([`CompileOptions::blind_constants`], [`JitOptions::blind_constants`]):
//! every immediate of the program (ALU, jump and store immediates, `lddw` constants) is
//! emitted as `value ^ key` and XORed back with `key` at run time, with a fresh key per
//! constant derived from a random key per compile, so a program cannot place chosen bytes in
//! executable memory (JIT spraying). This is what Linux does for unprivileged programs
//! (`bpf_jit_harden`, on by default for them). Not blinded: shift counts (one byte below 64),
//! load/store offsets (16 bits) and values the JIT derives itself (charges, fault words).
//!
//! Costs worth knowing: a helper call saves and restores r1-r5 around the call (the
//! interpreter keeps them); `callx` compares its register with every registered helper id in
//! turn (linear in the size of the registry); a `call local` zeroes the callee's 512-byte frame.
//! Atomics use `lock`-prefixed instructions also on unaligned addresses, which the hardware
//! allows but which a kernel with split-lock detection may slow down or signal when the access
//! crosses a cache line.

mod analysis;
pub(crate) mod deferred;
mod emit;
mod program;
mod ranges;
mod x86;

pub(crate) use program::fault_to_run_error;
pub use program::{shared_allocator, JitOptions, JitProgram};

use x86::AbsCallSite;

use crate::helpers::Helpers;
use crate::insn::Insn;

/// Whether this build has a JIT for the host architecture (x86-64 only).
pub const fn available() -> bool {
    cfg!(target_arch = "x86_64")
}

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
    /// The host is not x86-64: there is no JIT for it (use the interpreter).
    #[error("JIT not available on this architecture ({arch}); use the interpreter")]
    UnsupportedArch {
        /// The host architecture (`std::env::consts::ARCH`).
        arch: &'static str,
    },
}

impl JitError {
    /// The error for hosts without a JIT.
    pub(crate) fn unsupported_arch() -> JitError {
        JitError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        }
    }
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
    /// With `budget`: count only in programs that can run an instruction twice (a backward
    /// jump or a local call). The code of any other program counts nothing: a run executes
    /// at most [`JitCode::max_instructions`] instructions, and the caller must run lower
    /// limits elsewhere (a [`BpfProgram`](crate::BpfProgram) runs them in the interpreter).
    pub budget_loops_only: bool,
    /// Blind the program's immediates with a random key (see the module documentation).
    pub blind_constants: bool,
    /// The program sees virtual addresses instead of host ones ([`crate::vaddr`]); the code
    /// must then run in an environment that hides addresses.
    pub hide_addresses: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            rel_calls: true,
            budget: false,
            budget_loops_only: false,
            blind_constants: false,
            hide_addresses: false,
        }
    }
}

/// What the environment a program will run in asks of its code: checks of extra regions
/// ([`crate::memory`]; programs whose environment has maps) and hidden addresses
/// ([`crate::vaddr`]). Code compiled for one shape runs only in environments of that shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvShape {
    /// Accesses outside memory and stack are checked against the environment's regions.
    pub extra_regions: bool,
    /// The program sees virtual addresses.
    pub hide: bool,
}

impl EnvShape {
    /// The shape of `env`.
    pub(crate) fn of(env: &crate::ProgramEnv) -> EnvShape {
        EnvShape {
            extra_regions: !env.regions().is_empty(),
            hide: env.hides_addresses(),
        }
    }
}

impl CompileOptions {
    pub(crate) fn emit_options(self, shape: EnvShape) -> emit::Options {
        emit::Options {
            budget: self.budget,
            loops_only: self.budget_loops_only,
            rel_calls: self.rel_calls,
            blind: self.blind_constants.then(blinding_key),
            extra_regions: shape.extra_regions,
            unchecked: false,
            hide: self.hide_addresses || shape.hide,
        }
    }
}

/// Machine code for one program, not yet placed.
#[derive(Debug, Clone, Default)]
pub struct JitCode {
    code: Vec<u8>,
    calls: Vec<AbsCallSite>,
    pc_offsets: Vec<u32>,
    needs: emit::RunNeeds,
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
    let shape = EnvShape::default();
    emit::translate(insns, helpers, opts.emit_options(shape), |out| JitCode {
        code: out.code.to_vec(),
        calls: out.calls.to_vec(),
        pc_offsets: out.pc_offsets.to_vec(),
        needs: out.needs,
    })
}

/// [`compile`] into `code`, reusing its buffers (no allocation once they are large enough):
/// for callers that compile many programs and keep only what they place.
pub fn compile_into(
    code: &mut JitCode,
    insns: &[Insn],
    helpers: &Helpers,
    opts: CompileOptions,
) -> Result<(), JitError> {
    let shape = EnvShape::default();
    emit::translate(insns, helpers, opts.emit_options(shape), |out| {
        code.code.clear();
        code.code.extend_from_slice(out.code);
        code.calls.clear();
        code.calls.extend_from_slice(out.calls);
        code.pc_offsets.clear();
        code.pc_offsets.extend_from_slice(out.pc_offsets);
        code.needs = out.needs;
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
        self.needs.stack_bytes != 0
    }

    /// How many loads and stores the JIT proved inside the input memory (the program compared
    /// their addresses with the end of the input first) and emitted without a run-time check.
    pub fn proven_accesses(&self) -> usize {
        self.needs.proven as usize
    }

    /// For code compiled with [`CompileOptions::budget_loops_only`] from a program without
    /// loops: the most instructions a run executes (its code counts nothing, so it must not
    /// run with a lower instruction limit). `None` when the code counts, or was not asked to.
    pub fn max_instructions(&self) -> Option<u64> {
        (self.needs.floor != 0).then_some(u64::from(self.needs.floor))
    }

    /// Whether helper calls depend on the final address (`call rel32`).
    pub fn needs_link(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Fixes `call rel32` helper calls for code running at `base`. Fails if a helper is out of
    /// reach; compile again with `rel_calls: false` then.
    pub fn link(&mut self, base: u64) -> Result<(), JitError> {
        link(&mut self.code, &self.calls, base)
    }

    /// Whether every helper is within `call rel32` reach of code at `base`.
    pub fn reaches(&self, base: u64) -> bool {
        reaches(&self.calls, base)
    }
}

/// Fixes the `call rel32` sites `calls` of `code` for code running at `base`.
fn link(code: &mut [u8], calls: &[AbsCallSite], base: u64) -> Result<(), JitError> {
    for c in calls {
        let next = base.wrapping_add(c.pos as u64 + 4);
        let rel = (c.target as i64).wrapping_sub(next as i64);
        let rel = i32::try_from(rel).map_err(|_| JitError::HelperOutOfReach {
            base,
            target: c.target,
        })?;
        let p = c.pos as usize;
        code[p..p + 4].copy_from_slice(&rel.to_le_bytes());
    }
    Ok(())
}

/// Whether every call site of `calls` reaches its target from code at `base`.
fn reaches(calls: &[AbsCallSite], base: u64) -> bool {
    calls.iter().all(|c| {
        let next = base.wrapping_add(c.pos as u64 + 4);
        i32::try_from((c.target as i64).wrapping_sub(next as i64)).is_ok()
    })
}

/// A fresh random key for constant blinding: unpredictable to whoever writes the program
/// (seeded per thread from the standard library's randomly keyed hasher, then stepped).
fn blinding_key() -> u64 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> =
            Cell::new(std::collections::hash_map::RandomState::new().hash_one(0x5eedu64));
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        // SipHash output mixed once more; the translator never uses a zero key.
        std::collections::hash_map::RandomState::new().hash_one(x) | 1
    })
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
    /// The input memory is too large for code that hides addresses
    /// ([`crate::vaddr::MAX_INPUT`]).
    InputTooLarge {
        /// The input's length.
        len: u64,
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
    /// The fault for fault word `word` (`pc | kind << 24`) with detail `detail`.
    #[cold]
    fn decode(word: u64, detail: u64) -> Fault {
        let pc = (word & 0xff_ffff) as usize;
        let kind = (word >> 24) as u32;
        match kind {
            emit::FAULT_DEPTH => Fault::CallDepth { pc },
            emit::FAULT_CALLX => Fault::UnknownHelper { pc, id: detail },
            emit::FAULT_END => Fault::FellOffEnd { pc },
            emit::FAULT_BUDGET => Fault::Budget { pc },
            k => Fault::OutOfBounds {
                pc,
                addr: detail,
                size: 1 << (k & 3),
                write: k & emit::FAULT_STORE != 0,
            },
        }
    }
}

/// What a run returns besides faults: r0 and the program a helper asked to tail-call (the
/// caller runs it).
pub type Outcome = (u64, Option<std::sync::Arc<crate::BpfProgram>>);

/// What JIT code returns: r0 (or the fault detail) in rax, the fault word (0: none) in rdx.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ret {
    value: u64,
    fault: u64,
}

/// The JIT code's entry point: `(r1, r2, budget, stack top, environment) -> Ret` (see the
/// `emit` module for the convention). The environment is the run's `HelperContext` for code
/// that reads it ([`JitProgram`] knows), else null.
pub(crate) type EntryFn =
    extern "C" fn(u64, u64, u64, u64, *mut crate::context::HelperContext<'static>) -> Ret;

impl Ret {
    /// The run's result.
    #[inline(always)]
    fn result(self) -> Result<u64, Fault> {
        if self.fault == 0 {
            Ok(self.value)
        } else {
            Err(Fault::decode(self.fault, self.value))
        }
    }
}
