//! Live patching: replace one instruction of a finalized program while other threads run it
//! (the kernel's `text_poke_bp` / `bpf_arch_text_poke`, in user space).
//!
//! JITs rewrite placed code all the time: inline caches, tiering (retarget the callers of a
//! function to its faster version), sljit's `sljit_set_jump_addr`, breakpoints. Packs stay
//! read+execute for their whole life, so a patch goes through the pack's backend like every
//! other write (a `pwrite` of `/proc/self/mem`, or a store through the `dualmap` alias); nothing
//! is ever made writable and executable.
//!
//! # What is safe against concurrent execution
//!
//! [`Program::patch`] replaces the bytes `offset..offset + n` (`1 <= n <=` [`MAX_PATCH`]) with
//! `n` new bytes. The old bytes must be **one whole instruction** (or a sequence no thread can
//! be inside: no thread may be stopped, preempted or about to return at an address strictly
//! inside the range, and no jump may target one); the new bytes may be anything. Under that
//! condition:
//!
//! | architecture | backend | what a patch does | which patches are safe while threads run the program |
//! |---|---|---|---|
//! | x86-64 | `procmem` | `pwrite`s of `/proc/self/mem`, each followed by `membarrier` SYNC_CORE | any instruction, up to 16 bytes: the `text_poke_bp` protocol (below); a thread runs the old or the new instruction, never a mix |
//! | x86-64 | `dualmap` | byte stores through the writable alias, each followed by `membarrier` SYNC_CORE | the same |
//! | x86-64 | `dualmap-per-write` | `pwrite`s of the `memfd` (or a view mapped around each write where `pwrite` is refused) | the same |
//! | x86-64 | custom | [`Mapping::write`](crate::Mapping::write) | the same, if a 1-byte write is a single store (any copy is) |
//! | aarch64 | `procmem` | one 4-byte `pwrite` (the kernel's `memcpy` stores an aligned word whole), cache maintenance, `membarrier` SYNC_CORE | one aligned instruction, old and new both among B, BL, BRK, HVC, ISB, NOP, SMC, SVC (Arm ARM B2.2.5); anything else is [`Error::PatchNotConcurrent`] |
//! | aarch64 | `dualmap` | one atomic 32-bit store through the alias, cache maintenance, `membarrier` SYNC_CORE | the same |
//!
//! Why x86-64 is safe for any instruction: the first byte is replaced by `int3` and every core
//! is made to see it before the tail changes, and the first byte changes last, so the bytes a
//! thread can start executing at the instruction are always the old instruction, the new one,
//! or `int3`. A thread that reaches the `int3` traps into a SIGTRAP handler, installed once and
//! chained to whatever handler was there before (and to the default action), which waits for
//! the patch to end and resumes the thread at the instruction's first byte: it runs the new
//! instruction. A trap that is not a patch's (a real `int3` in a program, freed code, a
//! debugger's breakpoint) goes to the previous handler or the default action untouched. When
//! only the first byte changes (or the patch is one byte), a single byte store is atomic with
//! respect to instruction fetch, and no trap is needed. Every live patch returns only when
//! every core has executed a serializing instruction since the last write: from then on, no
//! thread starts the old instruction.
//!
//! Why aarch64 is restricted: the architecture guarantees "old or new" for a concurrently
//! modified instruction only for that set, written with one single-copy-atomic store; there is
//! no trap protocol (a `brk` handler would need to emulate or single-step), so other patches
//! need [`Program::patch_quiescent`].
//!
//! # Without concurrent execution
//!
//! [`Program::patch_quiescent`] (`unsafe`) writes any number of bytes with one backend write
//! and no protocol, for a program no thread is running: before it is published, or while
//! every thread that could run it is stopped. It is `unsafe` rather than a `&mut self`-only
//! path because `&mut Program` does not prove that no thread runs the code: threads call it
//! through function pointers ([`Program::as_fn`]) that no borrow tracks.
//!
//! On x86-64 the patches of the whole process are serialized (one lock, so also those of one
//! allocator): the protocol has one patch in progress at a time. On aarch64 a patch is one
//! store and needs no lock. A `fork()` child starts with fresh patching state: the parent's
//! other threads, and the patch one of them may have been making, do not exist there (a child
//! forked in the middle of a patch may find `int3` at that instruction, and dies of SIGTRAP if
//! it runs it). A program forgets its patch sites when it is dropped.
//!
//! Another SIGTRAP handler installed after the first patch must chain to the one it replaces
//! (as crash reporters do), or a thread that meets a temporary `int3` dies of SIGTRAP.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod sites;
#[cfg(target_arch = "x86_64")]
pub(crate) mod trap_handler;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::program::Program;

/// The longest live patch, in bytes (an x86 instruction is at most 15).
pub const MAX_PATCH: usize = 16;

/// Where a patch goes: an instruction of a live program, in its pack.
pub(crate) struct Site<'a> {
    /// The pack holding the program.
    pack: &'a Pack,
    /// Offset of the instruction in the pack.
    offset: usize,
    /// Address of the instruction (where threads run it).
    addr: usize,
}

impl Site<'_> {
    /// The site `offset` bytes into `program`'s code.
    fn of(program: &Program, offset: usize) -> Site<'_> {
        let (pack, at) = program.span().code_in_pack();
        Site {
            pack,
            offset: at + offset,
            addr: program.addr() + offset,
        }
    }

    /// Writes `bytes` at `from` bytes into the instruction, through the pack's backend (its
    /// persistent alias, or one backend write).
    fn write(&self, from: usize, bytes: &[u8]) -> Result<()> {
        self.pack.write(self.offset + from, bytes)
    }
}

/// Checks a patch of `len` bytes at `offset` against a program of `program_len` bytes.
fn check(offset: usize, len: usize, program_len: usize, max: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::EmptyPatch);
    }
    if len > max {
        return Err(Error::PatchTooLong { len, max });
    }
    match offset.checked_add(len) {
        Some(end) if end <= program_len => Ok(()),
        _ => Err(Error::PatchOutOfRange {
            offset,
            len,
            program_len,
        }),
    }
}

impl Program {
    /// Replaces the instruction at `offset` (its `bytes.len()` bytes) with `bytes`, safely
    /// while other threads run this program: each of them runs either the old or the new
    /// instruction, never a mix, and none dies of the patch. When it returns, no thread starts
    /// the old instruction any more.
    ///
    /// The old bytes must be one whole instruction (no thread may be inside them; see the
    /// [module docs](crate::patch) for the exact condition); `bytes` may be anything. What is
    /// safe per architecture and backend:
    /// - **x86-64, every backend**: any instruction of 1 to [`MAX_PATCH`] bytes, with the
    ///   kernel's `text_poke_bp` protocol: `int3` over the first byte, sync every core
    ///   (`membarrier` SYNC_CORE), write the tail, sync, write the new first byte, sync. A
    ///   thread reaching the temporary `int3` waits in a SIGTRAP handler (installed on the
    ///   first patch, chained to the one it replaces) and resumes at the instruction. A patch
    ///   that changes only the first byte is one byte store and one sync.
    /// - **aarch64**: one 4-byte aligned instruction whose old and new values are both B, BL,
    ///   BRK, HVC, ISB, NOP, SMC or SVC (Arm ARM B2.2.5): one single-copy-atomic store, then
    ///   cache maintenance and an instruction barrier on every thread. Anything else answers
    ///   [`Error::PatchNotConcurrent`]; use [`Program::patch_quiescent`] for it.
    ///
    /// `&mut self` keeps [`Program::bytes`] sound (no slice of the code is alive while it
    /// changes); threads that call the program through [`Program::as_fn`] need no borrow and
    /// keep running. On x86-64 patches are serialized process-wide. Patching the same bytes
    /// again is a no-op.
    ///
    /// A program recorded in a jitdump ([`Observe::jitdump`](crate::Observe::jitdump)) gets
    /// another record there with its new bytes, so `perf inject` shows the code as it was
    /// when each sample was taken.
    ///
    /// Errors, with nothing written: [`Error::EmptyPatch`], [`Error::PatchTooLong`] (more
    /// than [`MAX_PATCH`] bytes), [`Error::PatchOutOfRange`] (the offset is past the end, or
    /// the patch crosses it), [`Error::PatchNotConcurrent`] (aarch64), or [`Error::Os`] if
    /// `membarrier` SYNC_CORE or the SIGTRAP handler is not available here. A backend write
    /// that fails half way (it does not in practice) puts the old instruction back, or if
    /// that fails too leaves `int3` there: a thread reaching it then dies of SIGTRAP rather
    /// than run a torn instruction.
    ///
    /// ```
    /// # use progpack::{Allocator, Config};
    /// # #[cfg(target_arch = "x86_64")]
    /// # {
    /// let alloc = Allocator::new(Config::default())?;
    /// let mut draft = alloc.draft(6, 1)?;
    /// draft.image_mut().copy_from_slice(&[0xb8, 1, 0, 0, 0, 0xc3]); // mov eax, 1; ret
    /// let mut program = draft.finalize()?;
    /// // SAFETY: the bytes are a complete function of this type, before and after the patch.
    /// let f = unsafe { program.as_fn::<extern "C" fn() -> u32>() };
    /// assert_eq!(f(), 1);
    /// program.patch(0, &[0xb8, 2, 0, 0, 0])?; // mov eax, 2 (threads may be running f)
    /// assert_eq!(f(), 2);
    /// # }
    /// # Ok::<(), progpack::Error>(())
    /// ```
    pub fn patch(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        check(offset, bytes.len(), self.len(), MAX_PATCH)?;
        let old = &self.bytes()[offset..offset + bytes.len()];
        if old == bytes {
            return Ok(());
        }
        let mut before = [0u8; MAX_PATCH];
        before[..bytes.len()].copy_from_slice(old);
        let before = &before[..bytes.len()];
        // A patch with a temporary `int3` records the site (even if it then fails): the
        // program forgets it when dropped.
        #[cfg(target_arch = "x86_64")]
        if x86_64::needs_trap(before, bytes) {
            self.span_mut().mark_patched();
        }
        live(&Site::of(self, offset), before, bytes)?;
        crate::program::code_changed(self);
        Ok(())
    }

    /// Replaces `bytes.len()` bytes at `offset` with one backend write and no protocol, then
    /// makes every core see them (cache maintenance on aarch64, `membarrier` SYNC_CORE). Any
    /// length inside the program, any instructions.
    ///
    /// Errors, with nothing written: [`Error::EmptyPatch`], [`Error::PatchOutOfRange`].
    ///
    /// # Safety
    /// No thread may execute `offset..offset + bytes.len()` of this program while the call
    /// runs: a thread fetching the bytes half written could run any instruction. (This is not
    /// about Rust borrows: threads run the code through function pointers that no borrow
    /// tracks.) After the call returns, threads may run the new bytes.
    #[allow(unsafe_code)]
    pub unsafe fn patch_quiescent(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        check(offset, bytes.len(), self.len(), usize::MAX)?;
        quiescent(&Site::of(self, offset), bytes)?;
        crate::program::code_changed(self);
        Ok(())
    }
}

/// A live patch: x86-64 serializes every patch of the process (the protocol has one patch in
/// progress at a time).
#[cfg(target_arch = "x86_64")]
fn live(site: &Site<'_>, old: &[u8], new: &[u8]) -> Result<()> {
    let st = trap_handler::state();
    let _one_at_a_time = st.serial.lock();
    x86_64::patch_live(st, site, old, new).map(|_| ())
}

/// A live patch: on aarch64 one store, independent of any other patch (two patches of one
/// program cannot run at once: they need `&mut`).
#[cfg(target_arch = "aarch64")]
fn live(site: &Site<'_>, old: &[u8], new: &[u8]) -> Result<()> {
    aarch64::patch_live(site, old, new).map(|_| ())
}

#[cfg(target_arch = "x86_64")]
fn quiescent(site: &Site<'_>, new: &[u8]) -> Result<()> {
    let st = trap_handler::state();
    let _one_at_a_time = st.serial.lock();
    x86_64::patch_quiescent(st, site, new)
}

#[cfg(target_arch = "aarch64")]
fn quiescent(site: &Site<'_>, new: &[u8]) -> Result<()> {
    aarch64::patch_quiescent(site, new)
}

/// How many times a thread met the temporary `int3` of a live patch and was resumed by the
/// SIGTRAP handler, in this process since it started (always 0 on aarch64, which has no trap
/// protocol). For tests and monitoring: it shows the protocol at work.
pub fn threads_resumed() -> u64 {
    #[cfg(target_arch = "x86_64")]
    return trap_handler::RESUMED.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "x86_64"))]
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_bad_patches() {
        assert!(matches!(check(0, 0, 10, 16), Err(Error::EmptyPatch)));
        assert!(matches!(
            check(0, 17, 100, 16),
            Err(Error::PatchTooLong { len: 17, max: 16 })
        ));
        assert!(matches!(
            check(10, 1, 10, 16),
            Err(Error::PatchOutOfRange { offset: 10, .. })
        ));
        assert!(matches!(
            check(8, 3, 10, 16),
            Err(Error::PatchOutOfRange { .. })
        ));
        assert!(matches!(
            check(usize::MAX, 2, 10, 16),
            Err(Error::PatchOutOfRange { .. })
        ));
        assert!(check(9, 1, 10, 16).is_ok());
        assert!(check(0, 16, 16, 16).is_ok());
        assert!(check(0, 100, 100, usize::MAX).is_ok());
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod site_tests {
    use crate::{Allocator, Config};

    #[test]
    fn a_dropped_program_forgets_its_sites() {
        let alloc = Allocator::new(Config::default()).unwrap();
        let mut d = alloc.draft(6, 1).unwrap();
        d.image_mut().copy_from_slice(&[0xb8, 1, 0, 0, 0, 0xc3]);
        let mut p = d.finalize().unwrap();
        let sites = &super::trap_handler::state().sites;
        p.patch(0, &[0xb8, 2, 0, 0, 0]).unwrap(); // the tail changes: a trap protocol
        assert!(sites.contains(p.addr()));
        // Only the first byte changes: one store, no site.
        p.patch(1, &[7]).unwrap();
        assert!(!sites.contains(p.addr() + 1));
        let at = p.addr();
        drop(p);
        assert!(!sites.contains(at));
        alloc.check_invariants().unwrap();
    }
}
