//! The baseline progpack is measured against: one `mmap` per program, written, then
//! `mprotect(PROT_READ|PROT_EXEC)` — what dynasmrt, rbpf and most small JITs do.
#![allow(unsafe_code)]

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};

/// One program in its own page-rounded mapping. Unmapped on drop.
pub struct PageProgram {
    addr: usize,
    len: usize,
}

impl PageProgram {
    /// Maps `code.len()` bytes read+write, copies the code, then makes it read+execute.
    pub fn load(code: &[u8]) -> rustix::io::Result<PageProgram> {
        let page = rustix::param::page_size();
        let len = code.len().max(1).next_multiple_of(page);
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen address aliases nothing.
        let ptr = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }?;
        let prog = PageProgram {
            addr: ptr as usize,
            len,
        };
        // SAFETY: the mapping is ours, read+write, and at least `code.len()` bytes long.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), ptr.cast::<u8>(), code.len()) };
        // SAFETY: the mapping is ours; no Rust reference points into it.
        unsafe { mm::mprotect(ptr, len, MprotectFlags::READ | MprotectFlags::EXEC) }?;
        Ok(prog)
    }

    /// Address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }
}

impl Drop for PageProgram {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { mm::munmap(self.addr as *mut _, self.len) };
    }
}
