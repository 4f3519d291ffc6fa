//! x86-64 live patching: the Linux kernel's `text_poke_bp` protocol, in user space.
//!
//! To replace the instruction at `a` (old bytes `o`, new bytes `n`, same length) while other
//! threads may be running it:
//! 1. write `int3` over `o[0]`; make every core see it (`membarrier` SYNC_CORE). From now on a
//!    thread reaching `a` traps; one already past `a` finishes the old instruction, which is
//!    intact behind the trap byte;
//! 2. write the tail `n[1..]`; sync. No thread can start an instruction at `a` meanwhile, and no
//!    thread is inside the old one any more (it was a single instruction: no thread can be at an
//!    instruction boundary strictly inside it);
//! 3. write `n[0]`; sync. Threads reaching `a` run the new instruction.
//!
//! A thread that trapped at `a` waits in the SIGTRAP handler (`super::trap_handler`) until
//! step 3 is done, then resumes at `a`: it runs the old instruction or the new one, never a mix.
//! When only the first byte changes (or the patch is one byte), a single byte store is already
//! atomic with respect to instruction fetch: one write and one sync, no trap.

use super::trap_handler::State;
use super::Site;
use crate::backend::sys;
use crate::error::Result;

/// The x86 trap byte (`int3`).
const INT3: u8 = 0xcc;

/// Makes every thread of the process execute a serializing instruction before it runs code
/// again (registering for it first, once per process).
fn sync_all_cores(st: &State) -> Result<()> {
    st.ensure_sync_core()?;
    sys::sync_core_all_threads()
}

/// True if replacing `old` with `new` takes the trap protocol (more than the first byte
/// changes); false if one byte store does.
pub(super) fn needs_trap(old: &[u8], new: &[u8]) -> bool {
    old[1..] != new[1..]
}

/// Replaces `old` with `new` at `site` while other threads may run it (`st.serial` held).
/// Returns true if the site went through the trap protocol (and so is now in `st.sites`).
pub(super) fn patch_live(st: &State, site: &Site<'_>, old: &[u8], new: &[u8]) -> Result<bool> {
    if !needs_trap(old, new) {
        site.write(0, &new[..1])?;
        sync_all_cores(st)?;
        return Ok(false);
    }
    st.ensure_installed()?;
    st.sites.insert(site.addr);
    st.begin(site.addr);
    let done = text_poke_bp(site, old, new);
    st.end();
    done.map(|()| true)
}

/// Steps 1 to 3 of the module docs. If a write fails half way, the old instruction is put
/// back (the tail first, the first byte last, so no thread sees a mix); if even that fails, the
/// `int3` stays and a thread reaching it dies of SIGTRAP rather than run a torn instruction.
fn text_poke_bp(site: &Site<'_>, old: &[u8], new: &[u8]) -> Result<()> {
    // 1. The trap byte first: no thread can start the instruction after this.
    site.write(0, &[INT3])?;
    sys::sync_core_all_threads()?;
    // 2. The tail, behind the trap.
    if let Err(e) = site
        .write(1, &new[1..])
        .and_then(|()| sys::sync_core_all_threads())
    {
        let _ = site
            .write(1, &old[1..])
            .and_then(|()| sys::sync_core_all_threads())
            .and_then(|()| site.write(0, &old[..1]))
            .and_then(|()| sys::sync_core_all_threads());
        return Err(e);
    }
    // 3. The new first byte completes the new instruction.
    site.write(0, &new[..1])?;
    sys::sync_core_all_threads()
}

/// Writes `new` at `site` with no protocol: one write, then every core syncs.
pub(super) fn patch_quiescent(st: &State, site: &Site<'_>, new: &[u8]) -> Result<()> {
    st.ensure_sync_core()?;
    site.write(0, new)?;
    sys::sync_core_all_threads()
}
