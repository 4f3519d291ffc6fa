//! Checked access to the pointers C passes in: output slots and the configuration.
//!
//! Invariant: an [`Out`] exists only for a non-NULL, aligned pointer that the caller of an
//! exported function promised is writable (that promise is each function's `# Safety`).

use crate::allocator::ConfigC;
use crate::status::{CResult, Failure, Status};

/// A checked output slot: written with [`Out::set`], never read.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Stores `value` in the slot (without reading or dropping what was there).
    pub(crate) fn set(&self, value: T) {
        // SAFETY: `out` checked the pointer is non-NULL and aligned; the exported function's
        // caller promised it is writable for a `T`.
        unsafe { self.0.write(value) }
    }
}

/// Checks an output pointer.
///
/// # Safety
/// `p` is NULL or writable for a `T` until the exported function returns.
pub(crate) unsafe fn out<T>(p: *mut T) -> CResult<Out<T>> {
    if p.is_null() {
        return Err(Failure::new(Status::Null, "NULL output pointer"));
    }
    if !p.is_aligned() {
        return Err(Failure::new(
            Status::InvalidArgument,
            "misaligned output pointer",
        ));
    }
    Ok(Out(p))
}

/// Checks an optional output pointer: `None` for NULL.
///
/// # Safety
/// As [`out`].
pub(crate) unsafe fn out_opt<T>(p: *mut T) -> CResult<Option<Out<T>>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { out(p) }.map(Some)
    }
}

/// Reads a configuration: the default for NULL.
///
/// # Safety
/// `p` is NULL or readable for a `progpack_config`.
pub(crate) unsafe fn read_config(p: *const ConfigC) -> CResult<ConfigC> {
    if p.is_null() {
        return Ok(ConfigC::default());
    }
    if !p.is_aligned() {
        return Err(Failure::new(
            Status::InvalidArgument,
            "misaligned progpack_config pointer",
        ));
    }
    // SAFETY: non-NULL and aligned (checked); readable by the caller's promise; every bit
    // pattern is a valid `ConfigC` (integers only).
    Ok(unsafe { p.read() })
}
