//! Allocators from C: configuration, creation, the process-wide shared allocator, statistics
//! and the backend report.
//!
//! Invariant: the shared allocator is made once, on first use, and its handle stays live for
//! the life of the process (freeing it is refused).

use crate::args::{out, read_config_sized};
use crate::handles::{handle, id, table, Object};
use crate::status::{guard, CResult, Failure, Status};
use libc::size_t;
use progpack::{Allocator, BackendChoice, CodeRange, Config};
use std::collections::HashSet;
use std::ffi::{c_char, CStr, CString};
use std::sync::{LazyLock, Mutex, OnceLock};

/// Opaque allocator handle.
pub struct AllocatorHandle {
    _private: [u8; 0],
}

/// `progpack_config.backend`: probe procmem, then dualmap (the default).
pub const PROGPACK_BACKEND_DETECT: u32 = 0;
/// `progpack_config.backend`: writes through `/proc/self/mem`; fails where that is forbidden.
pub const PROGPACK_BACKEND_PROCMEM: u32 = 1;
/// `progpack_config.backend`: a memfd with a persistent writable alias.
pub const PROGPACK_BACKEND_DUALMAP: u32 = 2;
/// `progpack_config.backend`: a memfd written with `pwrite`, no lasting writable view.
pub const PROGPACK_BACKEND_DUALMAP_PER_WRITE: u32 = 3;

/// Allocator configuration. A zeroed struct (`progpack_config cfg = {0};`) is the default
/// configuration, and so is passing NULL: every zero field means "the library default".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigC {
    /// One of the `PROGPACK_BACKEND_*` values.
    pub backend: u32,
    /// Nonzero: start every image on a chunk boundary. Zero (default): start it at a random
    /// offset inside its first chunk's slack, as the kernel does against JIT spraying.
    pub no_randomize: u32,
    /// Chunk size in bytes: a power of two, at least 16; 0 for the default (64).
    pub chunk_size: size_t,
    /// Pack size in bytes: a power of two, at least a page, at most 256 MiB; 0 for the
    /// default (2 MiB).
    pub pack_size: size_t,
    /// Nonzero: keep all code within +-2 GiB of this address (e.g. a host function's), so
    /// JIT code can `call rel32` it. Zero: code may go anywhere.
    pub code_range_near: usize,
    /// Address space reserved for the code range; 0 for the default (256 MiB).
    pub code_range_size: size_t,
    /// Nonzero: a thread's runs of chunks in a pack follow each other (a compact layout for
    /// code finalized one program at a time, less entropy); zero (default): each run starts
    /// at a random free word of its pack. Only with randomization on.
    pub no_scatter_runs: u32,
    /// Bytes added to every request before rounding to whole chunks, so that each image
    /// starts at a random offset of at least `0..=min_slack` (the kernel's BPF JIT uses 16);
    /// 0 (default): no footprint added. At most the chunk size.
    pub min_slack: size_t,
}

impl ConfigC {
    /// The Rust configuration this describes.
    pub(crate) fn to_config(self) -> CResult<Config> {
        let backend = match self.backend {
            PROGPACK_BACKEND_DETECT => BackendChoice::Detect,
            PROGPACK_BACKEND_PROCMEM => BackendChoice::ProcMem,
            PROGPACK_BACKEND_DUALMAP => BackendChoice::DualMap,
            PROGPACK_BACKEND_DUALMAP_PER_WRITE => BackendChoice::DualMapPerWrite,
            other => {
                return Err(Failure::new(
                    Status::InvalidArgument,
                    format!("unknown backend {other} (expected a PROGPACK_BACKEND_* value)"),
                ))
            }
        };
        let mut config = Config::default()
            .backend(backend)
            .randomize(self.no_randomize == 0)
            .scatter_runs(self.no_scatter_runs == 0)
            .min_slack(self.min_slack);
        if self.chunk_size != 0 {
            config = config.chunk_size(self.chunk_size);
        }
        if self.pack_size != 0 {
            config = config.pack_size(self.pack_size);
        }
        if self.code_range_near != 0 {
            let mut range = CodeRange::near(self.code_range_near);
            if self.code_range_size != 0 {
                range = range.size(self.code_range_size);
            }
            config = config.code_range(range);
        }
        Ok(config)
    }
}

/// Counters of an allocator at one moment (`progpack_stats`). Mirrors the Rust `Stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatsC {
    /// Backend in use: a static NUL-terminated name ("procmem", "dualmap", ...).
    pub backend: *const c_char,
    /// Pack size in bytes.
    pub pack_size: size_t,
    /// Chunk size in bytes.
    pub chunk_size: size_t,
    /// Packs currently mapped.
    pub packs: size_t,
    /// Of those, empty packs kept in reserve.
    pub reserve_packs: size_t,
    /// Dedicated mappings (programs larger than a pack).
    pub dedicated_mappings: size_t,
    /// Bytes in dedicated mappings.
    pub dedicated_bytes: size_t,
    /// Live finalized programs.
    pub programs: size_t,
    /// Live allocations: programs plus drafts and batch slots not finalized yet.
    pub allocations: size_t,
    /// Chunks in use in packs.
    pub chunks_used: size_t,
    /// Free chunks in packs.
    pub chunks_free: size_t,
    /// Chunks never reused because trap-filling them failed.
    pub chunks_quarantined: size_t,
    /// Bytes asked for by live allocations.
    pub bytes_requested: size_t,
    /// Bytes of executable memory mapped (packs and dedicated mappings).
    pub bytes_mapped: size_t,
    /// Packs mapped over the allocator's life.
    pub packs_mapped_total: size_t,
    /// Packs released over the allocator's life.
    pub packs_released_total: size_t,
}

/// A static NUL-terminated copy of a backend name (a handful exist; each is made once).
fn static_name(name: &'static str) -> *const c_char {
    static NAMES: LazyLock<Mutex<HashSet<&'static CStr>>> = LazyLock::new(Default::default);
    let mut names = crate::handles::lock(&NAMES);
    if let Some(n) = names.iter().find(|n| n.to_bytes() == name.as_bytes()) {
        return n.as_ptr();
    }
    let owned = CString::new(name).unwrap_or_else(|_| c"?".into());
    let leaked: &'static CStr = Box::leak(owned.into_boxed_c_str());
    names.insert(leaked);
    leaked.as_ptr()
}

/// Creates an allocator. `config` may be NULL (defaults). Probes the backend; maps nothing yet
/// except the code range reservation, if one is asked for.
///
/// # Safety
/// `config` is NULL or points to a readable `progpack_config`; `out` points to writable
/// storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_allocator_new(
    config: *const ConfigC,
    out_allocator: *mut *mut AllocatorHandle,
) -> Status {
    // SAFETY: forwarded from the caller: `config` is NULL or a whole `progpack_config`.
    unsafe { progpack_allocator_new_sized(config, std::mem::size_of::<ConfigC>(), out_allocator) }
}

/// Like [`progpack_allocator_new`], for a caller built against a header whose
/// `progpack_config` may be older or newer than this library's: `config_size` is the caller's
/// `sizeof(progpack_config)`. Fields the caller's struct does not have take their defaults; a
/// larger struct is accepted if every field this library does not know is zero (else
/// `PROGPACK_STATUS_INVALID_ARGUMENT`: a setting would be silently ignored). Every field ever
/// added is zero by default, so zero-initialized configurations of any version mean the same.
///
/// # Safety
/// `config` is NULL (then `config_size` is ignored) or readable for `config_size` bytes; `out`
/// points to writable storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_allocator_new_sized(
    config: *const ConfigC,
    config_size: size_t,
    out_allocator: *mut *mut AllocatorHandle,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_allocator` is NULL or writable (checked inside).
        let out_allocator = unsafe { out(out_allocator) }?;
        out_allocator.set(std::ptr::null_mut());
        // SAFETY: the caller promises `config` is NULL or readable for `config_size` bytes.
        let config = unsafe { read_config_sized(config, config_size) }?.to_config()?;
        let alloc = Allocator::new(config)?;
        let id = table().insert(Object::Allocator {
            alloc,
            shared: false,
        })?;
        out_allocator.set(handle(id));
        Ok(())
    })
}

/// The process-wide allocator with the default configuration, made on first use. Its handle
/// is the same on every call and stays valid for the life of the process; it cannot be freed.
/// Integrations that get no allocator from their host (sljit's `SLJIT_MALLOC_EXEC` called
/// with NULL data) use it.
///
/// # Safety
/// `out` points to writable storage for a handle.
#[no_mangle]
pub unsafe extern "C" fn progpack_allocator_shared(
    out_allocator: *mut *mut AllocatorHandle,
) -> Status {
    static SHARED: OnceLock<u64> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    guard(|| {
        // SAFETY: the caller promises `out_allocator` is NULL or writable (checked inside).
        let out_allocator = unsafe { out(out_allocator) }?;
        out_allocator.set(std::ptr::null_mut());
        let id = match SHARED.get() {
            Some(&id) => id,
            None => {
                // One thread makes it; a failure is returned and retried on the next call.
                let _making = crate::handles::lock(&MAKING);
                match SHARED.get() {
                    Some(&id) => id,
                    None => {
                        let alloc = Allocator::new(Config::default())?;
                        let id = table().insert(Object::Allocator {
                            alloc,
                            shared: true,
                        })?;
                        let _ = SHARED.set(id);
                        id
                    }
                }
            }
        };
        out_allocator.set(handle(id));
        Ok(())
    })
}

/// Frees an allocator handle. Drafts, batches and programs made from it stay valid; the
/// memory goes when the last of them is freed.
///
#[no_mangle]
pub extern "C" fn progpack_allocator_free(allocator: *mut AllocatorHandle) -> Status {
    guard(|| {
        let object = {
            let mut t = table();
            if let Object::Allocator { shared: true, .. } =
                t.get(id(allocator), crate::handles::Kind::Allocator)?
            {
                return Err(Failure::new(
                    Status::InvalidArgument,
                    "the shared allocator cannot be freed",
                ));
            }
            t.remove(id(allocator), crate::handles::Kind::Allocator)?
        };
        drop(object); // outside the table lock: may unmap
        Ok(())
    })
}

/// Reads the allocator's counters (no system calls).
///
/// # Safety
/// `out` points to a writable `progpack_stats`.
#[no_mangle]
pub unsafe extern "C" fn progpack_allocator_stats(
    allocator: *mut AllocatorHandle,
    out_stats: *mut StatsC,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_stats` is NULL or writable (checked inside).
        let out_stats = unsafe { out(out_stats) }?;
        let alloc = table().allocator(id(allocator))?;
        let s = alloc.stats();
        out_stats.set(StatsC {
            backend: static_name(s.backend),
            pack_size: s.pack_size,
            chunk_size: s.chunk_size,
            packs: s.packs,
            reserve_packs: s.reserve_packs,
            dedicated_mappings: s.dedicated_mappings,
            dedicated_bytes: s.dedicated_bytes,
            programs: s.programs,
            allocations: s.allocations,
            chunks_used: s.chunks_used,
            chunks_free: s.chunks_free,
            chunks_quarantined: s.chunks_quarantined,
            bytes_requested: s.bytes_requested,
            bytes_mapped: s.bytes_mapped,
            packs_mapped_total: s.packs_mapped_total,
            packs_released_total: s.packs_released_total,
        });
        Ok(())
    })
}

/// Copies the backend report (which backend was picked and what each probe answered) into
/// `buf` as a NUL-terminated string and stores its length (without the NUL) in `out_len`.
/// If `buf` is NULL or `capacity` is too small, stores the length and returns
/// `PROGPACK_STATUS_BUFFER_TOO_SMALL` without writing `buf`.
///
/// # Safety
/// `buf` is NULL or writable for `capacity` bytes; `out_len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn progpack_backend_report(
    allocator: *mut AllocatorHandle,
    buf: *mut c_char,
    capacity: size_t,
    out_len: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises `out_len` is NULL or writable (checked inside).
        let out_len = unsafe { out(out_len) }?;
        let alloc = table().allocator(id(allocator))?;
        let report = alloc.backend_report().replace('\0', " ");
        out_len.set(report.len());
        if buf.is_null() || capacity <= report.len() {
            return Err(Failure::new(
                Status::BufferTooSmall,
                format!("the backend report needs {} bytes", report.len() + 1),
            ));
        }
        // SAFETY: `buf` is writable for `capacity` > report.len() bytes (caller's promise,
        // checked length); the source is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(report.as_ptr(), buf.cast::<u8>(), report.len());
            buf.add(report.len()).write(0);
        }
        Ok(())
    })
}

/// The code range reservation of an allocator: its base address and size, or 0 and 0 if the
/// allocator was made without `code_range_near`.
///
/// # Safety
/// `out_base` and `out_size` point to writable storage.
#[no_mangle]
pub unsafe extern "C" fn progpack_code_range(
    allocator: *mut AllocatorHandle,
    out_base: *mut usize,
    out_size: *mut size_t,
) -> Status {
    guard(|| {
        // SAFETY: the caller promises both are NULL or writable (checked inside).
        let (out_base, out_size) = unsafe { (out(out_base)?, out(out_size)?) };
        let alloc = table().allocator(id(allocator))?;
        let (base, size) = alloc.code_range().unwrap_or((0, 0));
        out_base.set(base);
        out_size.set(size);
        Ok(())
    })
}
