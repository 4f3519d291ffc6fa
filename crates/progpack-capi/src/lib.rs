//! # progpack-capi: progpack from C
//!
//! A C API over [`progpack`]: a `cdylib` and a `staticlib` (`libprogpack_capi.so`,
//! `libprogpack_capi.a`) and the header `include/progpack.h`, generated from this crate by
//! cbindgen and checked to be current by `header-check/` (its own crate, so cbindgen stays
//! out of the workspace build).
//!
//! ## Conventions
//! - Every function returns a `progpack_status`; `PROGPACK_STATUS_OK` is 0. On failure,
//!   `progpack_last_error()` gives a message for the calling thread.
//! - Handles (`progpack_allocator *`, `progpack_draft *`, `progpack_program *`,
//!   `progpack_batch *`) are opaque ids from a table of live handles, never pointers to
//!   memory: a NULL, foreign, wrong-kind or already consumed handle is a status code
//!   (`NULL`, `BAD_HANDLE`, `STALE_HANDLE`), never a crash or a corruption. Ids are never
//!   reused, so a stale handle cannot alias a newer object.
//! - Outputs are written only on success, except handle outputs, which are set to NULL first.
//! - Thread-safe: any function may be called from any thread. The table's lock is never held
//!   across a system call.
//! - `progpack_config` grows only by fields appended at its end, each zero by default.
//!   `progpack_allocator_new_sized` takes the caller's `sizeof(progpack_config)`, so a program
//!   built against an older or newer header keeps its meaning (`progpack_allocator_new`
//!   assumes this header's size).
//!
//! ## Lifecycle
//! `progpack_allocator_new` → `progpack_draft_new` (a writable image that is never executable,
//! and the execution address to compute jumps against) → write the code →
//! `progpack_draft_finalize` (one copy into a read+execute pack) → call it →
//! `progpack_program_free` (trap-filled, then freed). `progpack_batch_*` places many programs
//! with one write per pack. `progpack_draft_find` and `progpack_program_find` look handles up
//! by address, for JITs whose own interface deals in addresses (sljit, see
//! `integrations/sljit`).
#![deny(missing_docs)]

mod allocator;
mod args;
mod batch;
mod draft;
mod handles;
mod program;
mod status;

pub use allocator::{
    progpack_allocator_free, progpack_allocator_new, progpack_allocator_new_sized,
    progpack_allocator_shared, progpack_allocator_stats, progpack_backend_report,
    progpack_code_range, AllocatorHandle, ConfigC, StatsC, PROGPACK_BACKEND_DETECT,
    PROGPACK_BACKEND_DUALMAP, PROGPACK_BACKEND_DUALMAP_PER_WRITE, PROGPACK_BACKEND_PROCMEM,
};
pub use batch::{
    progpack_batch_abandon, progpack_batch_finalize, progpack_batch_image, progpack_batch_len,
    progpack_batch_new, progpack_batch_push, BatchHandle,
};
pub use draft::{
    progpack_draft_abandon, progpack_draft_finalize, progpack_draft_find, progpack_draft_info,
    progpack_draft_new, progpack_draft_shrink, DraftHandle,
};
pub use program::{
    progpack_program_find, progpack_program_free, progpack_program_info, ProgramHandle,
};
pub use status::{progpack_last_error, progpack_status_name, Status};
