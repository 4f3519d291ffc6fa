//! A draft: chunks reserved in a pack plus a writable heap image that is never executable.
//!
//! The JIT emits into [`Draft::image_mut`] but computes every jump and call target against
//! [`Draft::exec_addr`], where the code will run. [`Draft::finalize`] places the image with one
//! backend write and returns a [`Program`]. Dropping a draft that was never finalized returns
//! its chunks (they were never written, so they are still traps).

use crate::allocation::Allocation;
use crate::error::{Error, Result};
use crate::program::Program;
use std::fmt;

/// A program being written: chunks reserved in a pack, plus a writable heap image that is never
/// executable. Made by [`Allocator::draft`](crate::Allocator::draft).
///
/// Emit into [`image_mut`](Self::image_mut), but compute every jump and call target against
/// [`exec_addr`](Self::exec_addr): that is where the first byte will run.
/// [`finalize`](Self::finalize) places the image with one backend write and returns a
/// [`Program`]. Dropping a draft that was never finalized returns its chunks (they were never
/// written, so they still hold traps).
///
/// ```
/// # use progpack::{Allocator, Config};
/// let alloc = Allocator::new(Config::default())?;
/// let mut draft = alloc.draft(6, 16)?;
/// assert_eq!(draft.exec_addr() % 16, 0);
/// assert!(progpack::arch::is_all_traps(draft.image()));
/// # #[cfg(target_arch = "x86_64")]
/// draft.image_mut().copy_from_slice(&[0xb8, 7, 0, 0, 0, 0xc3]); // mov eax, 7; ret
/// let program = draft.finalize()?;
/// assert_eq!(program.len(), 6);
/// # Ok::<(), progpack::Error>(())
/// ```
pub struct Draft {
    pub(crate) alloc: Allocation,
    /// The whole span (chunk multiple), trap-filled, laid out as it will be in the pack.
    pub(crate) buf: Vec<u8>,
    /// Where the image starts inside `buf`.
    pub(crate) offset: usize,
    /// Image length.
    pub(crate) len: usize,
}

impl fmt::Debug for Draft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Draft")
            .field("exec_addr", &format_args!("{:#x}", self.exec_addr()))
            .field("len", &self.len)
            .finish()
    }
}

/// A heap buffer of `len` trap bytes, or [`Error::OutOfMemory`].
pub(crate) fn trap_buffer(len: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory(len))?;
    crate::arch::extend_traps(&mut buf, len);
    Ok(buf)
}

impl Draft {
    pub(crate) fn new(alloc: Allocation, offset: usize, len: usize) -> Result<Draft> {
        let buf = trap_buffer(alloc.span())?;
        Ok(Draft {
            alloc,
            buf,
            offset,
            len,
        })
    }

    /// The address the first byte of the image will have once finalized: the base for every
    /// jump and call target the JIT computes.
    pub fn exec_addr(&self) -> usize {
        self.alloc.base() + self.offset
    }

    /// The image, `len()` bytes, initially all trap instructions.
    pub fn image(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    /// The writable image, `len()` bytes, initially all trap instructions. It is ordinary heap
    /// memory: it is never executable.
    pub fn image_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.offset..self.offset + self.len]
    }

    /// Image length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a draft has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Places the image where [`exec_addr`](Self::exec_addr) says with one backend write of the
    /// whole chunk range, makes it visible to instruction fetch, and frees the buffer.
    ///
    /// If the backend fails, the chunks are trap-filled and freed and the error says why.
    pub fn finalize(mut self) -> Result<Program> {
        let (addr, len) = (self.exec_addr(), self.len);
        self.alloc.dirty = true;
        let (m, off) = self.alloc.mapping();
        crate::allocation::place(m, off, &self.buf)?;
        Ok(Program::new(self.alloc, addr, len))
    }
}
