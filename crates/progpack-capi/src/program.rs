//! Programs from C: read their address, look them up by address, free them.

use crate::args::{out, out_opt};
use crate::handles::{handle, id, table, Kind};
use crate::status::{guard, Status};
use libc::size_t;

/// Opaque program handle.
pub struct ProgramHandle {
    _private: [u8; 0],
}

/// Reads a program's address (its first byte, where the draft's execution address said) and
/// length. Either output may be NULL.
///
/// # Safety
/// Each output is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn progpack_program_info(
    program: *mut ProgramHandle,
    out_addr: *mut usize,
    out_len: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises each pointer is NULL or writable (checked inside).
        let (out_addr, out_len) = unsafe { (out_opt(out_addr)?, out_opt(out_len)?) };
        let t = table();
        let p = t.program(id(program))?;
        if let Some(o) = out_addr {
            o.set(p.addr());
        }
        if let Some(o) = out_len {
            o.set(p.len());
        }
        Ok(())
    })
}

/// Finds the live program whose first byte is at `addr`. `PROGPACK_STATUS_NOT_FOUND` if there
/// is none.
///
/// # Safety
/// `out_program` points to writable storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_program_find(
    addr: usize,
    out_program: *mut *mut ProgramHandle,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_program` is NULL or writable (checked inside).
        let out_program = unsafe { out(out_program) }?;
        out_program.set(std::ptr::null_mut());
        let id = table().find(addr, Kind::Program)?;
        out_program.set(handle(id));
        Ok(())
    })
}

/// Frees a program: its chunks are filled with trap instructions, then returned. Calling the
/// code afterwards traps. A second free of the same handle is `PROGPACK_STATUS_STALE_HANDLE`.
#[no_mangle]
pub extern "C" fn progpack_program_free(program: *mut ProgramHandle) -> Status {
    guard(|| {
        let object = table().remove(id(program), Kind::Program)?;
        drop(object); // outside the table lock: trap-fills
        Ok(())
    })
}
