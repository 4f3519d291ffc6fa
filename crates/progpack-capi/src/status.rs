//! Status codes, the thread-local last-error message, and the boundary guard every exported
//! function runs its body in.
//!
//! Invariants: an exported function never unwinds into C (a panic becomes
//! [`Status::Internal`]); every failure sets the calling thread's last-error message before
//! returning; a successful call leaves the message as it was.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a call did. `PROGPACK_STATUS_OK` (0) is success; every other value is a failure whose
/// text `progpack_last_error()` returns on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer argument (a handle or an output pointer) was NULL.
    Null = 1,
    /// The handle is not one this library made, or is of another kind (a program passed as a
    /// draft, a stack address cast to a handle).
    BadHandle = 2,
    /// The handle was valid once and is gone: freed, finalized or abandoned already (a double
    /// free, a finalize after free).
    StaleHandle = 3,
    /// A bad argument: zero or oversized length, alignment not a power of two or larger than
    /// a page, a shrink that does not shorten, bad configuration, slot index out of range,
    /// freeing the shared allocator.
    InvalidArgument = 4,
    /// Heap memory or address space ran out.
    OutOfMemory = 5,
    /// A system call failed; the message names it and its errno.
    Os = 6,
    /// The backend cannot do this here (for example a memfd alias after `fork`).
    Unsupported = 7,
    /// No text poke backend works in this process; the message says what each probe answered.
    NoBackend = 8,
    /// The code range is full, or no range could be reserved near the requested address.
    CodeRange = 9,
    /// The caller's buffer is too small; the size needed was written where the function says.
    BufferTooSmall = 10,
    /// No live draft or program starts at the address looked up.
    NotFound = 11,
    /// A bug inside progpack (a panic caught at the boundary, an unexpected error).
    Internal = 12,
}

impl Status {
    /// Every status, in value order.
    const ALL: [Status; 13] = [
        Status::Ok,
        Status::Null,
        Status::BadHandle,
        Status::StaleHandle,
        Status::InvalidArgument,
        Status::OutOfMemory,
        Status::Os,
        Status::Unsupported,
        Status::NoBackend,
        Status::CodeRange,
        Status::BufferTooSmall,
        Status::NotFound,
        Status::Internal,
    ];

    /// A NUL-terminated name for the status.
    fn name(self) -> &'static std::ffi::CStr {
        match self {
            Status::Ok => c"ok",
            Status::Null => c"null pointer",
            Status::BadHandle => c"bad handle",
            Status::StaleHandle => c"stale handle",
            Status::InvalidArgument => c"invalid argument",
            Status::OutOfMemory => c"out of memory",
            Status::Os => c"system call failed",
            Status::Unsupported => c"unsupported",
            Status::NoBackend => c"no backend",
            Status::CodeRange => c"code range",
            Status::BufferTooSmall => c"buffer too small",
            Status::NotFound => c"not found",
            Status::Internal => c"internal error",
        }
    }
}

/// A failed call: the status to return and the message for `progpack_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<progpack::Error> for Failure {
    fn from(e: progpack::Error) -> Failure {
        use progpack::Error as E;
        let status = match &e {
            E::ZeroLength | E::TooLarge { .. } | E::BadAlign { .. } | E::BadConfig(_) => {
                Status::InvalidArgument
            }
            E::BadSlot(_) | E::BadShrink { .. } => Status::InvalidArgument,
            E::OutOfMemory(_) => Status::OutOfMemory,
            E::Os { .. } if e.is_out_of_memory() => Status::OutOfMemory,
            E::Os { .. } => Status::Os,
            E::Unsupported { .. } | E::Forked { .. } => Status::Unsupported,
            E::NoBackend(_) | E::ProbeFailed { .. } => Status::NoBackend,
            E::CodeRangeFull { .. } | E::CodeRangeUnavailable { .. } => Status::CodeRange,
            _ => Status::Internal,
        };
        Failure::new(status, e.to_string())
    }
}

/// Result of an exported function's body.
pub(crate) type CResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = text);
}

/// Runs an exported function's body: turns its failure or panic into a status and records
/// the message for the calling thread.
pub(crate) fn guard(body: impl FnOnce() -> CResult) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in progpack): {what}"));
            Status::Internal
        }
    }
}

/// The message of the last failed call on this thread, or an empty string if none failed
/// yet. The text stays valid until the next failed call on the same thread.
#[no_mangle]
pub extern "C" fn progpack_last_error() -> *const c_char {
    // The CString lives in this thread's slot until the next failure replaces it; C reads it
    // before then (documented above).
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

/// A short, static, NUL-terminated name for a status value ("stale handle"); "unknown status"
/// for a value that is not a `progpack_status`.
#[no_mangle]
pub extern "C" fn progpack_status_name(status: i32) -> *const c_char {
    Status::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"unknown status".as_ptr(), |s| s.name().as_ptr())
}
