//! The one error type of the crate.
//!
//! Every failure is a typed variant: bad input is caught before anything is mapped, and an
//! operating-system failure keeps the operation that failed and its raw `errno`.

use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A raw `errno` value from a failed system call, printed with the system's text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

/// Everything that can go wrong in progpack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program of length zero was requested.
    #[error("program length must be at least 1 byte")]
    ZeroLength,
    /// The requested length exceeds [`Config::max_len`](crate::Config::max_len) or overflows.
    #[error("program length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The alignment is not a power of two or is larger than the page size (or the chunk
    /// size, if that is larger).
    #[error("alignment {align} must be a power of two no larger than {max}")]
    BadAlign {
        /// Requested alignment.
        align: usize,
        /// The largest alignment accepted: the page size (or the chunk size if larger).
        max: usize,
    },
    /// [`Draft::shrink`](crate::Draft::shrink) was asked to grow the image or make it empty.
    #[error("cannot shrink an image of {len} bytes to {new_len} bytes")]
    BadShrink {
        /// The image's length.
        len: usize,
        /// The length asked for.
        new_len: usize,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    /// The backend does not implement the operation (the trait's default, like the kernel's
    /// weak `bpf_arch_text_copy`).
    #[error("{op} is not supported by the `{backend}` backend")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// Operation that was asked for.
        op: &'static str,
    },
    /// A program name is empty or longer than [`MAX_NAME`](crate::MAX_NAME) bytes.
    #[error("a program name must have 1 to {max} bytes, not {len}")]
    BadName {
        /// Length of the name given.
        len: usize,
        /// The longest name accepted.
        max: usize,
    },
    /// `.eh_frame` bytes given with a draft or batch slot cannot be registered for it.
    #[error("unwind information rejected at byte {offset}: {why}")]
    BadUnwindInfo {
        /// Offset in the bytes given.
        offset: usize,
        /// What is wrong.
        why: String,
    },
    /// A batch slot index that was never pushed.
    #[error("no slot {index} in a batch of {slots}")]
    NoSuchSlot {
        /// The index given.
        index: usize,
        /// Slots pushed.
        slots: usize,
    },
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// The operation (system call and purpose).
        op: &'static str,
        /// The raw error number.
        errno: Errno,
    },
    /// A text write copied fewer bytes than asked.
    #[error("short text write: {written} of {wanted} bytes")]
    ShortWrite {
        /// Bytes asked for.
        wanted: usize,
        /// Bytes actually written.
        written: usize,
    },
    /// A write or fill fell outside its mapping (a bug in a caller of [`Mapping`](crate::Mapping)).
    #[error("range {offset}+{len} is outside a mapping of {size} bytes")]
    OutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Mapping size.
        size: usize,
    },
    /// The reserved code range has no room for another pack or dedicated mapping.
    #[error("the code range of {size} bytes near {near:#x} is full")]
    CodeRangeFull {
        /// The address the range was asked to be near.
        near: usize,
        /// Size of the reservation.
        size: usize,
    },
    /// No address range within ±2 GiB of the requested address could be reserved.
    #[error("no free {size}-byte range within ±2 GiB of {near:#x}")]
    CodeRangeUnavailable {
        /// The address the range was asked to be near.
        near: usize,
        /// Requested size.
        size: usize,
    },
    /// Heap memory for a writable image could not be allocated.
    #[error("cannot allocate a {0}-byte writable image")]
    OutOfMemory(usize),
    /// The process forked after this backend was created and the backend cannot write safely
    /// in the child (a `MAP_SHARED` alias would change the parent's code).
    #[error("the `{backend}` backend was created before fork(); writing in the child would change the parent's code")]
    Forked {
        /// Backend name.
        backend: &'static str,
    },
    /// A backend's probe wrote and read back, and what it read was wrong: writes are being
    /// dropped or redirected (a sandbox masking `/proc/self/mem`, an emulator, a broken
    /// custom backend).
    #[error("the `{backend}` probe failed: {what}")]
    ProbeFailed {
        /// Backend name.
        backend: &'static str,
        /// What was wrong.
        what: &'static str,
    },
    /// No backend works on this system; the text says what each probe answered.
    #[error("no text poke backend works here: {0}")]
    NoBackend(String),
    /// A patch of no bytes ([`Program::patch`](crate::Program::patch)).
    #[error("a patch must replace at least one byte")]
    EmptyPatch,
    /// A live patch longer than one instruction can be
    /// ([`MAX_PATCH`](crate::patch::MAX_PATCH)).
    #[error("a live patch replaces one instruction: {len} bytes is more than {max}")]
    PatchTooLong {
        /// Bytes asked for.
        len: usize,
        /// The longest live patch.
        max: usize,
    },
    /// A patch whose offset is past the program's end, or that crosses it.
    #[error("a patch of {len} bytes at offset {offset} does not fit in a program of {program_len} bytes")]
    PatchOutOfRange {
        /// Offset of the patch in the program.
        offset: usize,
        /// Length of the patch.
        len: usize,
        /// Length of the program.
        program_len: usize,
    },
    /// This patch cannot be made safely while threads run the program on this architecture
    /// (aarch64 allows only a few instructions); [`Program::patch_quiescent`](crate::Program::patch_quiescent)
    /// can make it when no thread does.
    #[error("cannot patch a running program here: {reason}")]
    PatchNotConcurrent {
        /// Why.
        reason: &'static str,
    },
    /// A batch slot that does not belong to this batch.
    #[error("slot {0} does not belong to this batch")]
    BadSlot(usize),
}

impl Error {
    /// Builds [`Error::Os`] from a rustix error.
    pub(crate) fn os(op: &'static str, e: rustix::io::Errno) -> Self {
        Error::Os {
            op,
            errno: Errno(e.raw_os_error()),
        }
    }

    /// The raw `errno` behind this error, if it came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(errno.0),
            _ => None,
        }
    }

    /// True if the system ran out of memory or address space (`ENOMEM`), or the heap did.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory(_)) || self.raw_os_error() == Some(libc::ENOMEM)
    }
}
