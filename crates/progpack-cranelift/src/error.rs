//! The crate's one error type, and how it travels inside Cranelift's [`ModuleError`].
//!
//! The [`Module`](cranelift_module::Module) trait returns [`ModuleError`]; everything this crate
//! adds (a symbol that does not resolve, a relocation that does not reach, thread-local data,
//! freeing code that is still called) is an [`Error`] carried as [`ModuleError::Backend`].
//! [`Error::from_module_error`] gets it back.

use cranelift_codegen::binemit::Reloc;
use cranelift_module::ModuleError;

/// What can go wrong in a [`ProgpackModule`](crate::ProgpackModule) beyond Cranelift's own
/// [`ModuleError`] variants. Reaches callers as [`ModuleError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that is neither defined in the module, nor in the builder's symbol table, nor
    /// found by any lookup function.
    #[error("cannot resolve symbol `{0}`")]
    UnresolvedSymbol(String),
    /// A library call whose symbol nothing resolves.
    #[error("cannot resolve libcall {libcall} (symbol `{symbol}`)")]
    UnresolvedLibcall {
        /// The libcall, as Cranelift prints it.
        libcall: String,
        /// The symbol `libcall_names` gave for it.
        symbol: String,
    },
    /// A relocation target out of the reach of the relocation's encoding (for example a
    /// `call rel32` to a function more than 2 GiB away).
    #[error(
        "{kind:?} relocation in `{item}` at offset {offset}: target {target:#x} does not reach \
         from {at:#x} (declare it non-colocated, or keep code in a code range near it)"
    )]
    OutOfRange {
        /// The function or data object being relocated.
        item: String,
        /// The relocation kind.
        kind: Reloc,
        /// Offset of the relocated field in the item.
        offset: u32,
        /// Execution address of the relocated field.
        at: usize,
        /// The address the field should reach (symbol plus addend).
        target: usize,
    },
    /// A relocation kind this module does not apply (GOT/PLT forms, thread-local forms,
    /// other architectures' kinds).
    #[error("unsupported relocation {kind:?} in `{item}` at offset {offset}")]
    UnsupportedReloc {
        /// The function or data object being relocated.
        item: String,
        /// The relocation kind.
        kind: Reloc,
        /// Offset of the relocated field in the item.
        offset: u32,
    },
    /// A relocation whose field does not lie inside the item.
    #[error("relocation {kind:?} at offset {offset} lies outside `{item}` ({len} bytes)")]
    RelocOutOfBounds {
        /// The function or data object being relocated.
        item: String,
        /// The relocation kind.
        kind: Reloc,
        /// Offset of the relocated field in the item.
        offset: u32,
        /// Length of the item.
        len: usize,
    },
    /// A relocation target this module cannot name (a test-case name, a known linker symbol such
    /// as the GOT, a namespace other than functions and data).
    #[error("unsupported relocation target {target} in `{item}`")]
    UnsupportedTarget {
        /// The function or data object being relocated.
        item: String,
        /// The target, as Cranelift prints it.
        target: String,
    },
    /// Thread-local data objects are not supported (neither are they by `cranelift-jit`).
    #[error("thread-local data object `{0}` is not supported")]
    ThreadLocal(String),
    /// The ISA was built with `is_pic = true`; this module, like `cranelift-jit`, needs
    /// non-PIC code (it applies absolute and PC-relative relocations itself).
    #[error("the ISA must be built with is_pic = false")]
    PicNotSupported,
    /// No native ISA for this host.
    #[error("host machine is not supported: {0}")]
    HostNotSupported(String),
    /// A data object defined without contents (`Init::Uninitialized`).
    #[error("data object `{0}` is defined without contents")]
    Uninitialized(String),
    /// An alignment that is not a power of two.
    #[error("alignment {align} of `{item}` is not a power of two")]
    BadAlignment {
        /// The function or data object.
        item: String,
        /// The alignment asked for.
        align: u64,
    },
    /// The item was never defined, or was freed.
    #[error("`{0}` is not defined")]
    NotDefined(String),
    /// The item is defined but [`finalize_definitions`](crate::ProgpackModule::finalize_definitions)
    /// has not placed it yet.
    #[error("`{0}` is not finalized yet")]
    NotFinalized(String),
    /// Freeing code or data that finalized code or data still references directly (a `call`,
    /// an address in an instruction or a data object). Free the referrers first.
    #[error("`{name}` is still referenced by {count} relocation(s) in finalized code or data ({by}); free those first")]
    StillReferenced {
        /// The item that was to be freed.
        name: String,
        /// How many relocations in live items point at it.
        count: u32,
        /// Names of (some of) the referrers.
        by: String,
    },
    /// The allocator failed (out of memory, out of code range, backend refused a write).
    #[error("progpack: {0}")]
    Progpack(#[from] progpack::Error),
}

impl Error {
    /// The [`Error`] inside a [`ModuleError::Backend`], if there is one.
    pub fn from_module_error(e: &ModuleError) -> Option<&Error> {
        match e {
            ModuleError::Backend(inner) => inner.downcast_ref::<Error>(),
            _ => None,
        }
    }
}

impl From<Error> for ModuleError {
    fn from(e: Error) -> Self {
        ModuleError::Backend(anyhow::Error::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_module_error() {
        let m: ModuleError = Error::ThreadLocal("tls_var".into()).into();
        assert!(matches!(
            Error::from_module_error(&m),
            Some(Error::ThreadLocal(n)) if n == "tls_var"
        ));
        assert!(Error::from_module_error(&ModuleError::Undeclared("x".into())).is_none());
        assert!(m.to_string().contains("tls_var"), "{m}");
    }
}
