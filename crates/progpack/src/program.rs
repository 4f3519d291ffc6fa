//! A program: finalized code in a pack (or a dedicated mapping), read+execute; its bytes change
//! only through a patch ([`crate::patch`]), which needs `&mut Program`.
//!
//! Dropping it forgets its patch sites, fills its bytes with traps through the backend, then
//! frees its chunks: once the `Program` is gone, calling its old address traps; it never runs
//! stale code.

use crate::span::Span;
use std::fmt;

/// Finalized, executable code. `Send + Sync`: its bytes change only through
/// [`Program::patch`] (or [`Program::patch_quiescent`]), which take `&mut self`, so no
/// [`Program::bytes`] slice is alive while they do.
///
/// Two words on 64-bit targets, and `Option<Program>` too: keeping many is cheap.
pub struct Program {
    /// The span; its written part is the code.
    span: Span,
}

// Programs are shared across threads by design; keep that true at compile time.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Program>();
    assert_send_sync::<crate::Allocator>();
    assert_send_sync::<crate::Draft>();
};

// A program is two words (its pack; the image's offset, flags and length), and
// `Option<Program>` costs nothing more: keep it so.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<Program>() == 16);
    assert!(std::mem::size_of::<Option<Program>>() == 16);
};

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .finish()
    }
}

impl Program {
    /// A program whose code is the span's image, placed.
    #[inline]
    pub(crate) fn new(span: Span) -> Program {
        Program { span }
    }

    /// Address of the first byte (the draft's `exec_addr()`).
    #[inline]
    pub fn addr(&self) -> usize {
        self.span.exec_addr()
    }

    /// The first byte as a pointer.
    pub fn as_ptr(&self) -> *const u8 {
        self.addr() as *const u8
    }

    /// Length of the code in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.span.len()
    }

    /// Always false: a program has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The code as placed (and patched), read back from executable memory.
    ///
    /// # Panics
    ///
    /// In a `fork()` child, for a program of a `dualmap` pack the child did not inherit (it
    /// reads as traps there, from a read-only view of traps made on first use), if that view
    /// cannot be mapped (out of memory or of mappings).
    pub fn bytes(&self) -> &[u8] {
        self.span.bytes()
    }

    /// The name given to its draft or batch slot, or `jit_<addr in hex>` (see
    /// [`Draft::set_name`](crate::Draft::set_name)).
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        self.span.name()
    }

    /// True if the program has a mapping of its own (it was larger than a pack).
    pub fn is_dedicated(&self) -> bool {
        self.span.is_dedicated()
    }

    /// The entry point as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be a function pointer type (e.g. `extern "C" fn(u64) -> u64`) whose ABI and
    /// signature match the code the JIT emitted at [`addr`](Self::addr). The pointer is valid
    /// only while this `Program` lives: calling it afterwards traps (or worse, if the chunks
    /// were reused). Calling it runs arbitrary machine code: it is as safe as that code.
    ///
    /// # Panics
    /// If `F` is not pointer-sized.
    #[allow(unsafe_code)]
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        assert_eq!(
            std::mem::size_of::<F>(),
            std::mem::size_of::<usize>(),
            "F must be a function pointer type"
        );
        let addr = self.addr();
        // SAFETY: F is pointer-sized (checked); the caller promises it is a function pointer
        // type matching the code at `addr`, which is mapped read+execute while `self` lives.
        unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
    }

    /// The span (for [`Allocator::free_all`](crate::Allocator::free_all)).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The span, writable (for [`Allocator::free_all`](crate::Allocator::free_all) and
    /// patching).
    pub(crate) fn span_mut(&mut self) -> &mut Span {
        &mut self.span
    }
}

/// Tells the observers that `program`'s code changed in place (a live patch): see
/// [`crate::observe::code_changed`].
pub(crate) fn code_changed(program: &mut Program) {
    if !program.span.announced() {
        return;
    }
    crate::observe::code_changed(
        program.span.side(),
        program.span.first_chunk(),
        program.addr(),
        program.bytes(),
    );
}

/// Announces programs just placed (a draft, a batch, `finalize_all`): records published,
/// unwind information registered, debugger entries, perf map lines and jitdump records.
/// `meta` carries a batch's per-slot side data, by index into `programs`.
///
/// Fails only if a program's unwind information no longer fits its code (a draft shrunk
/// after it was given); nothing is announced then, and the caller drops the programs.
pub(crate) fn announce(
    programs: &mut [Program],
    mut meta: Option<&mut crate::observe::BatchMeta>,
) -> crate::error::Result<()> {
    // Attach records and check everything first, so that a failure announces nothing.
    for (i, p) in programs.iter_mut().enumerate() {
        let given = meta.as_deref_mut().and_then(|m| m.take(i));
        if let Some(fits) = p.span.attach_record(given) {
            fits?;
        }
    }
    // Then publish and announce each program that has a record now.
    let mut out = crate::observe::Outputs::default();
    for p in programs.iter() {
        let placed = crate::observe::Placed {
            first: p.span.first_chunk(),
            chunks: p.span.chunk_count(),
            addr: p.addr(),
            bytes: p.bytes(),
        };
        // `programs` is held mutably: the owner of the programs being finalized, as `publish`
        // requires.
        crate::observe::publish(p.span.side(), &placed, &mut out);
    }
    out.flush();
    Ok(())
}
