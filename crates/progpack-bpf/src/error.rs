//! Errors of the eBPF VM.
//!
//! [`RunError`] is what running a program returns, from either engine (interpreter or JIT):
//! both engines must report the same variant for the same program and memory, so that they can
//! be compared instruction for instruction. Load-time errors live with
//! the stage that finds them.
//!
//! `pc` fields are slot indexes (the index of the 8-byte slot of the faulting instruction; the
//! second slot of an `lddw` counts).

/// A run-time failure of a program that passed the checker.
///
/// Division and modulo by zero are *not* errors: RFC 9669 defines `x / 0 = 0` and `x % 0 = x`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A load, store or atomic touched bytes outside the program's memory region and the live
    /// stack frames.
    #[error("out of bounds access of {len} bytes at {addr:#x} (pc {pc})")]
    OutOfBounds {
        /// First byte of the access (host address).
        addr: u64,
        /// Access size in bytes (1, 2, 4 or 8).
        len: usize,
        /// Slot index of the instruction.
        pc: usize,
    },
    /// A `call` or `callx` named a helper id that is not registered.
    #[error("call to unknown helper {id} (pc {pc})")]
    UnknownHelper {
        /// Helper id (for `callx`, the low 32 bits of the register).
        id: u32,
        /// Slot index of the call.
        pc: usize,
    },
    /// A `call local` would nest deeper than [`crate::insn::MAX_CALL_DEPTH`] frames.
    #[error("call depth exceeded (pc {pc})")]
    CallDepthExceeded {
        /// Slot index of the call.
        pc: usize,
    },
    /// The program executed more instructions than its limit .
    #[error("instruction limit of {limit} exceeded")]
    InstructionLimit {
        /// The limit that was hit.
        limit: u64,
    },
    /// The input memory is larger than a run that hides host addresses can map
    /// ([`crate::vaddr::MAX_INPUT`]).
    #[error("input memory of {len} bytes is larger than {max} (hidden addresses)")]
    InputTooLarge {
        /// The input's length.
        len: u64,
        /// The largest input.
        max: u64,
    },
    /// Execution reached a slot that is not a valid instruction. The checker makes this
    /// impossible for loaded programs; engines report it instead of misbehaving.
    #[error("invalid instruction reached (pc {pc})")]
    InvalidInstruction {
        /// Slot index.
        pc: usize,
    },
}

/// Every error of this crate: loading (assembly, checking) or running a program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program text did not assemble.
    #[error(transparent)]
    Asm(#[from] crate::asm::AsmError),
    /// The program was rejected by the checker.
    #[error(transparent)]
    Check(#[from] crate::check::CheckError),
    /// The program failed at run time.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The JIT could not compile or place the program.
    #[error(transparent)]
    Jit(#[from] crate::jit::JitError),
    /// A map reference (`lddw` with `src` 1 or 2) could not be resolved.
    #[error(transparent)]
    Pseudo(#[from] crate::pseudo::PseudoError),
    /// An ELF object could not be loaded.
    #[error(transparent)]
    Elf(#[from] crate::elf::ElfError),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
