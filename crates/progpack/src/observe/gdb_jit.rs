//! The GDB JIT interface: the two symbols GDB (and LLDB) look for in a process,
//! `__jit_debug_register_code` (a function the debugger puts a breakpoint on) and
//! `__jit_debug_descriptor` (a list of in-memory object files), with exactly the C layout of
//! GDB's manual ("JIT Compilation Interface"):
//!
//! ```c
//! struct jit_code_entry { struct jit_code_entry *next_entry, *prev_entry;
//!                         const char *symfile_addr; uint64_t symfile_size; };
//! struct jit_descriptor { uint32_t version; uint32_t action_flag;  /* 0 none, 1 register, 2 unregister */
//!                         struct jit_code_entry *relevant_entry, *first_entry; };
//! void __attribute__((noinline)) __jit_debug_register_code(void) {}
//! struct jit_descriptor __jit_debug_descriptor = { 1, 0, 0, 0 };
//! ```
//!
//! Each registered program gets an object file (see [`super::gdb_image`]); registering links
//! its entry first in the list, sets `relevant_entry` and `action_flag` and calls the
//! function; unregistering (before the program's trap fill) unlinks it the same way. A global
//! lock serializes both, as the interface requires.
//!
//! Only one definition of these symbols may exist in a process. wasmtime defines them weak (so
//! these win, and its registrations go to this same list, under its own lock: do not let both
//! register at the same moment); LLVM's JIT defines them strong, which would not link with
//! these: turn off the `gdb-jit` feature (on by default) there.
#![allow(unsafe_code)] // the debugger's C interface

use std::cell::UnsafeCell;
use std::ptr::null_mut;
use std::sync::Mutex;

const JIT_NOACTION: u32 = 0;
const JIT_REGISTER_FN: u32 = 1;
const JIT_UNREGISTER_FN: u32 = 2;

/// `struct jit_code_entry`.
#[repr(C)]
struct JitCodeEntry {
    next_entry: *mut JitCodeEntry,
    prev_entry: *mut JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// `struct jit_descriptor`.
#[repr(C)]
pub struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *mut JitCodeEntry,
    first_entry: *mut JitCodeEntry,
}

/// The descriptor as a debugger sees it: the C struct, with no wrapper in its layout.
#[repr(transparent)]
pub struct Descriptor(UnsafeCell<JitDescriptor>);

// SAFETY: the descriptor is read and written only under `LOCK` (and read by the debugger while
// the process is stopped).
unsafe impl Sync for Descriptor {}

/// GDB's descriptor of in-memory object files.
#[no_mangle]
pub static __jit_debug_descriptor: Descriptor = Descriptor(UnsafeCell::new(JitDescriptor {
    version: 1,
    action_flag: JIT_NOACTION,
    relevant_entry: null_mut(),
    first_entry: null_mut(),
}));

/// The function GDB stops on to read the descriptor's change. Never inlined, and its body
/// cannot be removed: the call itself is the event.
#[no_mangle]
#[inline(never)]
pub extern "C" fn __jit_debug_register_code() {
    // An empty asm block: a side effect the compiler must keep, so the call is never elided.
    // SAFETY: it does nothing.
    unsafe { std::arch::asm!("", options(nostack, preserves_flags)) };
}

static LOCK: Mutex<()> = Mutex::new(());

/// A registered object file: unregistered when dropped.
pub(crate) struct Entry {
    entry: Box<JitCodeEntry>,
    _image: Box<[u8]>,
}

// SAFETY: the entry's pointers are touched only under `LOCK`; the image is plain bytes.
unsafe impl Send for Entry {}
// SAFETY: as above; `&Entry` exposes nothing.
unsafe impl Sync for Entry {}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("symfile_size", &self.entry.symfile_size)
            .finish()
    }
}

/// Registers `image` (an object file) with the debugger, if one is attached (it costs the
/// same either way: a list update and a call).
pub(crate) fn register(image: Vec<u8>) -> Entry {
    let image = image.into_boxed_slice();
    let mut entry = Box::new(JitCodeEntry {
        next_entry: null_mut(),
        prev_entry: null_mut(),
        symfile_addr: image.as_ptr(),
        symfile_size: image.len() as u64,
    });
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let d = __jit_debug_descriptor.0.get();
    let e: *mut JitCodeEntry = &mut *entry;
    // SAFETY: under `LOCK`, nothing else touches the descriptor or the entries on its list;
    // `e` and the list's entries are live boxes (an entry leaves the list before it is freed).
    unsafe {
        (*e).next_entry = (*d).first_entry;
        if !(*d).first_entry.is_null() {
            (*(*d).first_entry).prev_entry = e;
        }
        (*d).first_entry = e;
        (*d).relevant_entry = e;
        (*d).action_flag = JIT_REGISTER_FN;
    }
    __jit_debug_register_code();
    Entry {
        entry,
        _image: image,
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = __jit_debug_descriptor.0.get();
        let e: *mut JitCodeEntry = &mut *self.entry;
        // SAFETY: as in `register`; `e` is on the list (it was linked there and only this drop
        // unlinks it).
        unsafe {
            let (prev, next) = ((*e).prev_entry, (*e).next_entry);
            if prev.is_null() {
                (*d).first_entry = next;
            } else {
                (*prev).next_entry = next;
            }
            if !next.is_null() {
                (*next).prev_entry = prev;
            }
            (*d).relevant_entry = e;
            (*d).action_flag = JIT_UNREGISTER_FN;
        }
        __jit_debug_register_code();
    }
}

/// Object files on the list (for tests).
#[cfg(test)]
pub(crate) fn registered() -> usize {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = 0;
    // SAFETY: under `LOCK`, as in `register`.
    let mut e = unsafe { (*__jit_debug_descriptor.0.get()).first_entry };
    while !e.is_null() {
        n += 1;
        // SAFETY: as above.
        e = unsafe { (*e).next_entry };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_link_and_unlink() {
        let before = registered();
        let a = register(vec![1, 2, 3]);
        let b = register(vec![4]);
        let c = register(vec![5]);
        assert_eq!(registered(), before + 3);
        drop(b); // from the middle
        assert_eq!(registered(), before + 2);
        drop(c); // the head
        drop(a);
        assert_eq!(registered(), before);
        let action = {
            let _g = LOCK.lock().unwrap();
            // SAFETY: reading under the lock.
            unsafe { (*__jit_debug_descriptor.0.get()).action_flag }
        };
        assert_eq!(action, JIT_UNREGISTER_FN);
    }
}
