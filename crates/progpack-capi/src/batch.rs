//! Batches from C: many drafts laid out next to each other and placed with one backend write
//! per pack.
//!
//! Invariant: an image pointer from a batch is valid only until the next push, finalize or
//! abandon on the same batch (a push may grow the staging buffer and move it); C gets it
//! again with `progpack_batch_image`. Lock order: a batch's lock, then the table's.

use crate::allocator::AllocatorHandle;
use crate::args::{out, out_opt};
use crate::handles::{handle, id, lock, table, Kind, Object};
use crate::program::ProgramHandle;
use crate::status::{guard, Failure, Status};
use libc::size_t;
use std::sync::{Arc, Mutex};

/// Opaque batch handle.
pub struct BatchHandle {
    _private: [u8; 0],
}

fn consumed() -> Failure {
    Failure::new(Status::StaleHandle, "the batch was consumed")
}

/// Starts a batch on an allocator.
///
/// # Safety
/// `out_batch` points to writable storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_batch_new(
    allocator: *mut AllocatorHandle,
    out_batch: *mut *mut BatchHandle,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_batch` is NULL or writable (checked inside).
        let out_batch = unsafe { out(out_batch) }?;
        out_batch.set(std::ptr::null_mut());
        let alloc = table().allocator(id(allocator))?;
        let batch = Arc::new(Mutex::new(Some(alloc.batch())));
        let id = table().insert(Object::Batch(batch))?;
        out_batch.set(handle(id));
        Ok(())
    })
}

/// Reserves a slot of `len` bytes aligned to `align`, right after the previous slot when the
/// pack has room. Stores the slot's writable image (valid until the next push, finalize or
/// abandon on this batch), its execution address and its index (its position in the
/// programs `progpack_batch_finalize` returns). Outputs may be NULL.
///
/// # Safety
/// Each output is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn progpack_batch_push(
    batch: *mut BatchHandle,
    len: size_t,
    align: size_t,
    out_image: *mut *mut u8,
    out_exec_addr: *mut usize,
    out_index: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises each pointer is NULL or writable (checked inside).
        let (out_image, out_exec, out_index) = unsafe {
            (
                out_opt(out_image)?,
                out_opt(out_exec_addr)?,
                out_opt(out_index)?,
            )
        };
        let shared = table().batch(id(batch))?;
        let mut guard = lock(&shared);
        let batch = guard.as_mut().ok_or_else(consumed)?;
        let slot = batch.push(len, align)?;
        if let Some(o) = out_image {
            o.set(slot.image.as_mut_ptr());
        }
        if let Some(o) = out_exec {
            o.set(slot.exec_addr);
        }
        if let Some(o) = out_index {
            o.set(slot.index);
        }
        Ok(())
    })
}

/// Stores the writable image of slot `index` (valid until the next push, finalize or abandon
/// on this batch) and, if `out_len` is not NULL, its length.
///
/// # Safety
/// `out_image` points to writable storage; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn progpack_batch_image(
    batch: *mut BatchHandle,
    index: size_t,
    out_image: *mut *mut u8,
    out_len: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises each pointer is NULL or writable (checked inside).
        let (out_image, out_len) = unsafe { (out(out_image)?, out_opt(out_len)?) };
        let shared = table().batch(id(batch))?;
        let mut guard = lock(&shared);
        let batch = guard.as_mut().ok_or_else(consumed)?;
        let image = batch.image_mut(index).ok_or_else(|| {
            Failure::new(
                Status::InvalidArgument,
                format!("slot {index} does not exist in this batch"),
            )
        })?;
        out_image.set(image.as_mut_ptr());
        if let Some(o) = out_len {
            o.set(image.len());
        }
        Ok(())
    })
}

/// Stores the number of slots pushed so far.
///
/// # Safety
/// `out_len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn progpack_batch_len(
    batch: *mut BatchHandle,
    out_len: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_len` is NULL or writable (checked inside).
        let out_len = unsafe { out(out_len) }?;
        let shared = table().batch(id(batch))?;
        let len = lock(&shared).as_ref().ok_or_else(consumed)?.len();
        out_len.set(len);
        Ok(())
    })
}

/// Places every slot with one backend write per run of adjacent slots and stores one program
/// handle per slot, in push order, in `out_programs[0..len)`. If `capacity` is smaller than
/// the number of slots, returns `PROGPACK_STATUS_BUFFER_TOO_SMALL` and the batch stays live.
/// Otherwise the batch handle is consumed either way: all or nothing, a failed write frees
/// every slot.
///
/// # Safety
/// `out_programs` is writable for `capacity` handles. No thread writes to a slot's image
/// during or after this call.
#[no_mangle]
pub unsafe extern "C" fn progpack_batch_finalize(
    batch: *mut BatchHandle,
    out_programs: *mut *mut ProgramHandle,
    capacity: size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_programs` is NULL or writable (checked inside, for
        // the first element; the rest by the caller's promise about `capacity`).
        let _checked = unsafe { out(out_programs) }?;
        let shared = table().batch(id(batch))?;
        let mut guard = lock(&shared);
        let len = guard.as_ref().ok_or_else(consumed)?.len();
        if capacity < len {
            return Err(Failure::new(
                Status::BufferTooSmall,
                format!("the batch has {len} slots; out_programs holds {capacity}"),
            ));
        }
        table().remove(id(batch), Kind::Batch)?;
        let programs = guard.take().ok_or_else(consumed)?.finalize()?;
        drop(guard);
        let mut t = table();
        for (i, p) in programs.into_iter().enumerate() {
            let id = t.insert(Object::Program(p))?;
            // SAFETY: i < len <= capacity, and `out_programs` is writable for `capacity`
            // handles (caller's promise); the pointer is non-NULL and aligned (checked).
            unsafe { out_programs.add(i).write(handle(id)) };
        }
        Ok(())
    })
}

/// Gives a batch up without placing it: every slot's chunks (still traps) are freed.
#[no_mangle]
pub extern "C" fn progpack_batch_abandon(batch: *mut BatchHandle) -> Status {
    guard(|| {
        let Object::Batch(shared) = table().remove(id(batch), Kind::Batch)? else {
            return Err(Failure::new(Status::Internal, "kind mismatch"));
        };
        let taken = lock(&shared).take();
        drop(taken); // outside both locks
        Ok(())
    })
}
