//! # progpack-pcre2: PCRE2's JIT with its code placed by progpack
//!
//! PCRE2 is built from source by `pcre2-sys` with the sljit hooks of
//! `integrations/sljit/sljitConfigPre.h` (see `.cargo/config.toml`): every program sljit
//! generates is a progpack draft, finalized into a read+execute pack when
//! `sljit_generate_code` ends, and freed when PCRE2 frees the pattern. PCRE2 passes no
//! allocator to sljit, so the code goes to progpack's process-wide shared allocator.
//!
//! This crate holds what the tests and the benchmark share: the shared allocator's counters
//! ([`shared_stats`]), whether the hooks are compiled in ([`hooks_active`]), a regex builder
//! that always JIT-compiles ([`jit_forced`]), and a seccomp filter that makes any
//! writable+executable mapping fatal ([`wx`]).

#![deny(missing_docs)]

pub mod corpus;
pub mod jit_forced;
pub mod wx;

use progpack_capi::{progpack_allocator_shared, progpack_allocator_stats, StatsC, Status};

/// The counters of progpack's shared allocator, the one sljit's hooks use.
///
/// # Panics
/// If the shared allocator cannot be made (no backend works here).
pub fn shared_stats() -> StatsC {
    let mut alloc = std::ptr::null_mut();
    // SAFETY: `alloc` is a valid place for a handle.
    let st = unsafe { progpack_allocator_shared(&mut alloc) };
    assert_eq!(st, Status::Ok, "progpack's shared allocator");
    let mut stats = std::mem::MaybeUninit::<StatsC>::uninit();
    // SAFETY: `stats` is valid for writing a StatsC; the call fills it on success.
    let st = unsafe { progpack_allocator_stats(alloc, stats.as_mut_ptr()) };
    assert_eq!(st, Status::Ok, "progpack_allocator_stats");
    // SAFETY: the call returned Ok, so it wrote the whole struct.
    unsafe { stats.assume_init() }
}

/// True if PCRE2 was built with progpack's sljit hooks: JIT-compiling a pattern adds a live
/// program to the shared allocator. (A build without them, `CFLAGS= cargo ...`, uses sljit's
/// own allocator and this is false.)
///
/// The count is of live programs, which other threads may free meanwhile, so the probe is
/// tried up to 100 times: one rise is proof (without the hooks nothing ever adds a program),
/// and 100 misses in a row mean no hooks.
pub fn hooks_active() -> bool {
    (0..100).any(|_| {
        let before = shared_stats().programs;
        let re = pcre2::bytes::RegexBuilder::new()
            .jit(true)
            .build("progpack-probe-[0-9]+")
            .expect("a JIT-compilable pattern");
        let during = shared_stats().programs;
        drop(re);
        during > before
    })
}
