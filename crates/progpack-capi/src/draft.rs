//! Drafts from C: reserve (writable image + execution address), look up, finalize, abandon.
//!
//! Invariant: the image pointer handed to C is the draft's heap buffer, which does not move
//! while the draft lives (the `Draft` value may move inside the table; its buffer does not);
//! it is recorded once, at creation, and never re-derived.

use crate::allocator::AllocatorHandle;
use crate::args::{out, out_opt};
use crate::handles::{handle, id, table, take, Kind, Object};
use crate::program::ProgramHandle;
use crate::status::{guard, Failure, Status};
use libc::size_t;
use std::sync::{Arc, Mutex};

/// Opaque draft handle.
pub struct DraftHandle {
    _private: [u8; 0],
}

/// Reserves room for `len` bytes of code aligned to `align` (a power of two, at most the page
/// size). Stores the draft handle, the writable image (`len` bytes of trap instructions, plain
/// heap memory that is never executable; valid until the draft is finalized or abandoned) and
/// the execution address (where the first byte will run: the base for every jump and call
/// target). `out_image` and `out_exec_addr` may be NULL.
///
/// # Safety
/// `out_draft` points to writable storage for a handle; `out_image` and `out_exec_addr` are
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn progpack_draft_new(
    allocator: *mut AllocatorHandle,
    len: size_t,
    align: size_t,
    out_draft: *mut *mut DraftHandle,
    out_image: *mut *mut u8,
    out_exec_addr: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises each pointer is NULL or writable (checked inside).
        let (out_draft, out_image, out_exec) = unsafe {
            (
                out(out_draft)?,
                out_opt(out_image)?,
                out_opt(out_exec_addr)?,
            )
        };
        out_draft.set(std::ptr::null_mut());
        let alloc = table().allocator(id(allocator))?;
        let mut draft = alloc.draft(len, align)?;
        let image = draft.image_mut().as_mut_ptr();
        let exec = draft.exec_addr();
        let id = table().insert(Object::Draft {
            draft: Arc::new(Mutex::new(Some(draft))),
            image: image as usize,
            exec,
        })?;
        out_draft.set(handle(id));
        if let Some(o) = out_image {
            o.set(image);
        }
        if let Some(o) = out_exec {
            o.set(exec);
        }
        Ok(())
    })
}

/// Reads a draft's writable image, execution address and length. Any output may be NULL.
///
/// # Safety
/// Each output is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn progpack_draft_info(
    draft: *mut DraftHandle,
    out_image: *mut *mut u8,
    out_exec_addr: *mut usize,
    out_len: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises each pointer is NULL or writable (checked inside).
        let (out_image, out_exec, out_len) = unsafe {
            (
                out_opt(out_image)?,
                out_opt(out_exec_addr)?,
                out_opt(out_len)?,
            )
        };
        let (shared, image, exec) = match table().get(id(draft), Kind::Draft)? {
            Object::Draft { draft, image, exec } => (draft.clone(), *image, *exec),
            _ => return Err(Failure::new(Status::Internal, "kind mismatch")),
        };
        let len = crate::handles::lock(&shared)
            .as_ref()
            .map(|d| d.len())
            .ok_or_else(|| Failure::new(Status::StaleHandle, "the draft was consumed"))?;
        if let Some(o) = out_image {
            o.set(image as *mut u8);
        }
        if let Some(o) = out_exec {
            o.set(exec);
        }
        if let Some(o) = out_len {
            o.set(len);
        }
        Ok(())
    })
}

/// Finds the live draft whose writable image or execution address starts at `addr`.
/// `PROGPACK_STATUS_NOT_FOUND` if there is none.
///
/// # Safety
/// `out_draft` points to writable storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_draft_find(
    addr: usize,
    out_draft: *mut *mut DraftHandle,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_draft` is NULL or writable (checked inside).
        let out_draft = unsafe { out(out_draft) }?;
        out_draft.set(std::ptr::null_mut());
        let id = table().find(addr, Kind::Draft)?;
        out_draft.set(handle(id));
        Ok(())
    })
}

/// Shortens a draft's image to `new_len` bytes (1 up to its length) and gives back the chunks
/// past its new end: for code generators that reserve an upper bound and learn the real size
/// after emitting. The execution address, the image pointer and the bytes kept do not change.
#[no_mangle]
pub extern "C" fn progpack_draft_shrink(draft: *mut DraftHandle, new_len: size_t) -> Status {
    guard(|| {
        let shared = match table().get(id(draft), Kind::Draft)? {
            Object::Draft { draft, .. } => draft.clone(),
            _ => return Err(Failure::new(Status::Internal, "kind mismatch")),
        };
        let mut guard = crate::handles::lock(&shared);
        let draft = guard
            .as_mut()
            .ok_or_else(|| Failure::new(Status::StaleHandle, "the draft was consumed"))?;
        draft.shrink(new_len)?;
        Ok(())
    })
}

/// Places the image at its execution address with one backend write, syncs the instruction
/// cache, and stores the program handle. The draft handle is consumed either way: on failure
/// its chunks are trap-filled and freed, and the status says why.
///
/// # Safety
/// `out_program` points to writable storage for a handle. No thread writes to the image
/// during or after this call.
#[no_mangle]
pub unsafe extern "C" fn progpack_draft_finalize(
    draft: *mut DraftHandle,
    out_program: *mut *mut ProgramHandle,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_program` is NULL or writable (checked inside).
        let out_program = unsafe { out(out_program) }?;
        out_program.set(std::ptr::null_mut());
        let Object::Draft { draft, .. } = table().remove(id(draft), Kind::Draft)? else {
            return Err(Failure::new(Status::Internal, "kind mismatch"));
        };
        let program = take(&draft, "the draft")?.finalize()?;
        let id = table().insert(Object::Program(program))?;
        out_program.set(handle(id));
        Ok(())
    })
}

/// Gives a draft up without placing it: its chunks (still traps) are freed.
#[no_mangle]
pub extern "C" fn progpack_draft_abandon(draft: *mut DraftHandle) -> Status {
    guard(|| {
        let Object::Draft { draft, .. } = table().remove(id(draft), Kind::Draft)? else {
            return Err(Failure::new(Status::Internal, "kind mismatch"));
        };
        drop(take(&draft, "the draft")?); // outside the table lock
        Ok(())
    })
}
