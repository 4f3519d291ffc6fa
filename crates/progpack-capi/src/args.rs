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

/// Reads a configuration of `size` bytes, the caller's `sizeof(progpack_config)`: the default
/// for NULL; fields past `size` keep their defaults; bytes past this library's struct must be
/// zero (settings this library does not know would be ignored).
///
/// # Safety
/// `p` is NULL or readable for `size` bytes.
pub(crate) unsafe fn read_config_sized(p: *const ConfigC, size: usize) -> CResult<ConfigC> {
    if p.is_null() {
        return Ok(ConfigC::default());
    }
    if !p.is_aligned() {
        return Err(Failure::new(
            Status::InvalidArgument,
            "misaligned progpack_config pointer",
        ));
    }
    // The fields of the first published `progpack_config`: every caller's struct has them.
    let first = std::mem::offset_of!(ConfigC, no_scatter_runs);
    if size < first {
        return Err(Failure::new(
            Status::InvalidArgument,
            format!("progpack_config size {size} is smaller than any version of it ({first})"),
        ));
    }
    let ours = std::mem::size_of::<ConfigC>();
    let bytes = p.cast::<u8>();
    if size > ours {
        // SAFETY: readable for `size` bytes by the caller's promise, and `ours < size`.
        let newer = unsafe { std::slice::from_raw_parts(bytes.add(ours), size - ours) };
        if newer.iter().any(|&b| b != 0) {
            return Err(Failure::new(
                Status::InvalidArgument,
                format!(
                    "progpack_config has settings past the {ours} bytes this library knows \
                     (built against a newer header?)"
                ),
            ));
        }
    }
    let mut config = ConfigC::default();
    // SAFETY: `bytes` is readable for `size` bytes (the caller's promise) and the copy takes at
    // most `ours` of them into a `ConfigC` of `ours` bytes, which does not overlap the caller's
    // memory; every bit pattern is a valid `ConfigC` (integers only), so the fields the copy
    // does not reach keep their defaults and a partial copy leaves no invalid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes,
            (&mut config as *mut ConfigC).cast::<u8>(),
            size.min(ours),
        );
    }
    Ok(config)
}
