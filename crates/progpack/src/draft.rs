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

/// The rest of [`Draft::finalize`] for a program that is named or announced.
#[cold]
#[inline(never)]
fn announced(mut span: Span) -> Result<Program> {
    span.became_program();
    let mut program = Program::new(span);
    crate::program::announce(std::slice::from_mut(&mut program), None)?;
    Ok(program)
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
            // Never announced: packs that announce every program hand out no image in place,
            // and a draft being named leaves its place (so this path pays nothing for names).
            debug_assert!(!span.announced());
            span.publish_in_place()?;
        } else {
            span.place(image.bytes())?;
            if span.side().is_some() {
                // Named, or the allocator announces its code.
                drop(image);
                return announced(span);
            }
        }
        drop(image);
        span.became_program();
        Ok(Program::new(span))
    }

    /// Names the program this draft will become: the name perf, gdb, backtraces through the
    /// debugger and [`Allocator::program_at`](crate::Allocator::program_at) show for it (any
    /// bytes, 1 to [`MAX_NAME`](crate::MAX_NAME) of them; written escaped where a newline or a
    /// NUL would break a line or a string). Unnamed programs are `jit_<address in hex>`.
    ///
    /// Costs a record in a side table of the pack (nothing is added to the program itself).
    pub fn set_name(&mut self, name: impl AsRef<[u8]>) -> Result<()> {
        let name = name.as_ref();
        crate::observe::names::check(name)?;
        self.inner.image.leave_alias_with_bytes()?;
        self.inner.span.with_record_extra(|e| e.set_name(name));
        Ok(())
    }

    /// [`set_name`](Self::set_name), by value: `alloc.draft(len, align)?.named("f")?`.
    pub fn named(mut self, name: impl AsRef<[u8]>) -> Result<Draft> {
        self.set_name(name)?;
        Ok(self)
    }

    /// The name given, or `jit_<exec_addr in hex>`.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        self.inner.span.name()
    }

    /// Gives the code unwind information: `.eh_frame` bytes (CIEs and FDEs) whose FDE initial
    /// locations are offsets from the image's first byte, as 8-byte absolute pointers (what
    /// gimli writes for `Address::Constant(offset)` and Cranelift's `create_systemv_cie` and
    /// `UnwindInfo::to_fde` produce). At finalize they are relocated to
    /// [`exec_addr`](Self::exec_addr) and registered with the unwinder (`__register_frame`),
    /// so panics and `std::backtrace` walk through the program's frames; they are deregistered
    /// when the program's free begins.
    ///
    /// Errors ([`Error::BadUnwindInfo`]): bytes that do not parse, a pointer encoding that
    /// cannot be relocated, an FDE outside the image. (Shrinking the draft below an FDE after
    /// this makes [`finalize`](Self::finalize) fail with the same error.)
    pub fn set_eh_frame(&mut self, eh_frame: &[u8]) -> Result<()> {
        let frames = crate::observe::Frames::parse(eh_frame, self.len())?;
        self.inner.image.leave_alias_with_bytes()?;
        self.inner.span.with_record_extra(|e| e.set_frames(frames));
        Ok(())
    }

    /// Takes the draft apart (for [`Allocator::finalize_all`](crate::Allocator::finalize_all)).
    pub(crate) fn into_parts(self) -> (Span, Image) {
        (self.inner.span, self.inner.image)
    }
}
