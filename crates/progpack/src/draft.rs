//! A draft: chunks reserved in a pack plus a writable image that is never executable.
//!
//! The JIT emits into [`Draft::image_mut`] but computes every jump and call target against
//! [`Draft::exec_addr`], where the code will run. [`Draft::finalize`] places the image with one
//! backend write and returns a [`Program`]. Dropping a draft that was never finalized returns
//! its chunks (nothing was written into the pack, so they still hold traps).

use crate::error::{Error, Result};
use crate::program::Program;
use crate::span::{Fresh, Span};
use crate::staging::Image;
use std::fmt;

/// A program being written: chunks reserved in a pack, plus a writable image that is never
/// executable. Made by [`Allocator::draft`](crate::Allocator::draft).
///
/// Emit into [`image_mut`](Self::image_mut), but compute every jump and call target against
/// [`exec_addr`](Self::exec_addr): that is where the first byte will run.
/// [`finalize`](Self::finalize) places the image with one backend write and returns a
/// [`Program`]. Dropping a draft that was never finalized returns its chunks (trap-filled
/// first if its image lived in the pack).
///
/// The image is a slice of a staging buffer the calling thread shares with its other drafts
/// (laid out like the chunks in the pack) or, with the persistent `dualmap` backend, the
/// draft's own bytes of the pack's writable alias (never executable; nothing is copied at
/// finalize). Its address stays the same until the draft is finalized or dropped, even if the
/// draft moves to another thread.
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
    /// The span and the image, as the allocator made them.
    inner: Fresh,
}

impl fmt::Debug for Draft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Draft")
            .field("exec_addr", &format_args!("{:#x}", self.exec_addr()))
            .field("len", &self.len())
            .finish()
    }
}

impl Draft {
    #[inline(always)]
    pub(crate) fn new(inner: Fresh) -> Draft {
        Draft { inner }
    }

    /// The address the first byte of the image will have once finalized: the base for every
    /// jump and call target the JIT computes.
    #[inline]
    pub fn exec_addr(&self) -> usize {
        self.inner.span.exec_addr()
    }

    /// The image, `len()` bytes, initially all trap instructions.
    pub fn image(&self) -> &[u8] {
        self.inner.image.bytes()
    }

    /// The writable image, `len()` bytes, initially all trap instructions. It is ordinary heap
    /// memory: it is never executable.
    #[inline]
    pub fn image_mut(&mut self) -> &mut [u8] {
        self.inner.image.bytes_mut()
    }

    /// Image length in bytes.
    pub fn len(&self) -> usize {
        self.inner.image.bytes().len()
    }

    /// Always false: a draft has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the image to `new_len` bytes (`1..=len()`) and gives back the chunks past its
    /// new end, for code generators that reserve an upper bound and learn the real size after
    /// emitting. `exec_addr` does not change; the bytes kept are unchanged. A draft larger
    /// than a pack keeps its mapping's size.
    ///
    /// ```
    /// # use progpack::{Allocator, Config};
    /// let alloc = Allocator::new(Config::default())?;
    /// let mut draft = alloc.draft(4096, 16)?; // an upper bound
    /// draft.shrink(6)?;                        // what was actually emitted
    /// assert_eq!(draft.len(), 6);
    /// assert!(draft.shrink(7).is_err());
    /// # Ok::<(), progpack::Error>(())
    /// ```
    pub fn shrink(&mut self, new_len: usize) -> Result<()> {
        let len = self.len();
        if new_len == 0 || new_len > len {
            return Err(Error::BadShrink { len, new_len });
        }
        self.inner.span.shrink(new_len)?;
        self.inner.image.truncate(new_len);
        Ok(())
    }

    /// Places the image where [`exec_addr`](Self::exec_addr) says with one backend write of
    /// the image's bytes, makes it visible to instruction fetch, and returns the program.
    ///
    /// If the backend fails, the chunks are trap-filled and freed and the error says why.
    #[inline(always)]
    pub fn finalize(self) -> Result<Program> {
        let Fresh { mut span, image } = self.inner;
        if image.in_place() {
            span.publish_in_place()?;
        } else {
            span.place(image.bytes())?;
        }
        drop(image);
        span.became_program();
        Ok(Program::new(span))
    }

    /// Takes the draft apart (for [`Allocator::finalize_all`](crate::Allocator::finalize_all)).
    pub(crate) fn into_parts(self) -> (Span, Image) {
        (self.inner.span, self.inner.image)
    }
}
