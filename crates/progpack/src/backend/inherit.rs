//! Address ranges a child process does not inherit, and what the child does about them.
//!
//! `dualmap` packs are `MAP_SHARED` views of a `memfd`. Inherited, they would let parent and
//! child change each other's code after a `fork()`, so both views are `MADV_DONTFORK`: in a
//! child their address ranges are simply free. A free range is a hazard of its own: the
//! child's kernel may hand it out again for the child's own memory, and a child that then
//! released "its" pack there would unmap that memory instead.
//!
//! So this registry lists the executable ranges of live `MADV_DONTFORK` mappings, each with
//! the [`process_epoch`](sys::process_epoch) of the process that made it. The first time
//! progpack runs in a child (before it maps anything, and before it reads, writes or releases
//! such a mapping), it *claims* every range it did not inherit, with a `PROT_NONE` reservation
//! made by `MAP_FIXED_NOREPLACE`, which succeeds only where the range is still free:
//! - claimed: the range belongs to this process (and to its own children, which inherit the
//!   reservation). Calling an inherited program there faults; progpack maps nothing new over it
//!   while the old mapping lives, and releases it like any reservation.
//! - lost: the child had already mapped something of its own there. progpack never touches
//!   the range again.
//!
//! Reads of such a mapping in a child (`Program::bytes`, invariant checks) are served from a
//! read-only view of traps ([`trap_view`]): the code is gone from this process, and freed code
//! reads back as traps everywhere in progpack.
//!
//! Invariants: an entry exists while the mapping that registered it exists in this process's
//! memory (inherited data included); an entry is [`Owner::Maker`] only in the process whose
//! epoch it records, from the moment [`claim_inherited`] has run in any other process (which it
//! does before anything else reads the entry there); a [`Owner::Claimed`] range is a
//! `PROT_NONE` reservation of this process.
//!
//! The registry and the trap view are process-wide, so a `fork()` must not catch another thread
//! holding their locks: `pthread_atfork` handlers take both before the C library forks and
//! release them in parent and child, as glibc does for `malloc`. A child made by a raw `clone`
//! system call runs no such handler; it, and any child of a multithreaded process that uses an
//! allocator inherited from its parent (whose locks another thread may have held), must use
//! progpack only as `fork(2)` allows.

use super::sys;
use crate::error::Result;
use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Who holds a registered range in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This process made the mapping, and it is mapped as made.
    Maker,
    /// A `PROT_NONE` reservation of this process holds the range (this process claimed it, or
    /// inherited the claim of the child that made it).
    Claimed,
    /// Something this process mapped for other purposes holds (part of) the range.
    Lost,
}

#[derive(Debug)]
struct Entry {
    len: usize,
    /// Epoch of the process that made the mapping.
    epoch: u64,
    owner: Owner,
}

static REGISTRY: Mutex<BTreeMap<usize, Entry>> = Mutex::new(BTreeMap::new());

/// The epoch in which [`claim_inherited`] last finished: equal to the current one means there is
/// nothing to claim.
static CLAIMED_IN: AtomicU64 = AtomicU64::new(0);

/// The trap view: its base and length (see [`trap_view`]).
static VIEW: Mutex<(usize, usize)> = Mutex::new((0, 0));

fn registry() -> MutexGuard<'static, BTreeMap<usize, Entry>> {
    hold_locks_across_fork();
    REGISTRY.lock()
}

/// Installs (once per process) the `pthread_atfork` handlers that keep [`REGISTRY`] and
/// [`VIEW`] usable in a child: taken before the fork, released after it on both sides.
fn hold_locks_across_fork() {
    extern "C" fn prepare() {
        // The guards are forgotten: `release` unlocks in the parent and in the child.
        std::mem::forget(VIEW.lock());
        std::mem::forget(REGISTRY.lock());
    }
    extern "C" fn release() {
        // SAFETY: `prepare` locked both in this thread (the one that forks) and forgot the
        // guards; in the child this thread is the only one, and it inherited them locked.
        unsafe {
            REGISTRY.force_unlock();
            VIEW.force_unlock();
        }
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are plain functions that live for the whole process; they take
        // and release two locks that nothing holds across a fork otherwise. A failure (ENOMEM)
        // leaves the fork hazard the module docs describe, nothing worse.
        let _ = unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
    });
}

/// In a child, claims every registered range made by another process (see the module docs).
/// Costs two loads when this process has already done so: no system call, no lock.
pub(crate) fn claim_inherited() {
    let now = sys::process_epoch();
    if CLAIMED_IN.load(Ordering::Acquire) == now {
        return;
    }
    let mut reg = registry();
    for (&base, e) in reg.iter_mut() {
        if e.owner == Owner::Maker && e.epoch != now {
            e.owner = match sys::reserve_exact(base, e.len) {
                Ok(true) => Owner::Claimed,
                // Something is there already (or the kernel refused): not ours to touch.
                Ok(false) | Err(_) => Owner::Lost,
            };
        }
    }
    CLAIMED_IN.store(now, Ordering::Release);
}

/// Records `base..base + len`, just mapped by this process with `MADV_DONTFORK`.
pub(crate) fn register(base: usize, len: usize) {
    claim_inherited();
    let epoch = sys::process_epoch();
    let old = registry().insert(
        base,
        Entry {
            len,
            epoch,
            owner: Owner::Maker,
        },
    );
    debug_assert!(old.is_none(), "range {base:#x} registered twice");
}

/// Who holds the range registered at `base` in this process (claiming first, in a child).
pub(crate) fn owner(base: usize) -> Owner {
    claim_inherited();
    registry().get(&base).map_or(Owner::Lost, |e| e.owner)
}

/// Forgets the range registered at `base` (its mapping is being dropped) and says who holds it
/// in this process, so the caller releases it only if it is this process's.
pub(crate) fn unregister(base: usize) -> Owner {
    claim_inherited();
    let removed = registry().remove(&base);
    debug_assert!(removed.is_some(), "range {base:#x} was never registered");
    removed.map_or(Owner::Lost, |e| e.owner)
}

/// The address of a read-only view of at least `len` bytes of traps, valid for the rest of the
/// process: what a mapping this process did not inherit reads as.
///
/// Built once per size class from one trap-filled `memfd` of at most 2 MiB mapped as many
/// times as needed, so a view of any size costs at most 2 MiB of memory. Views only grow; a
/// smaller one is kept (slices into it may still be alive).
pub(crate) fn trap_view(len: usize) -> Result<usize> {
    hold_locks_across_fork();
    let mut view = VIEW.lock();
    if view.1 >= len {
        return Ok(view.0);
    }
    let page = sys::page_size();
    let unit = len.next_power_of_two().clamp(page, 2 << 20);
    let total = len.max(view.1 * 2).next_multiple_of(unit);
    let fd = sys::memfd("progpack-traps", unit)?;
    sys::pwrite_traps(&fd, 0, unit)?;
    let base = sys::reserve_aligned(total, page)?;
    for at in (base..base + total).step_by(unit) {
        // SAFETY: `at..at + unit` lies in the reservation just made above, which nothing else
        // knows about.
        if let Err(e) = unsafe { sys::map_shared_fixed(&fd, at, unit, 0, sys::View::Read) } {
            // SAFETY: the whole reservation is ours and nothing refers to it yet.
            let _ = unsafe { sys::unmap(base, total) };
            return Err(e);
        }
    }
    *view = (base, total);
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_views_grow_and_read_as_traps() {
        let small = trap_view(100).unwrap();
        // SAFETY: the view is at least 100 bytes, read-only, and lives for the process.
        assert!(crate::arch::is_all_traps(unsafe { sys::slice(small, 100) }));
        let big_len = (5 << 20) + 123;
        let big = trap_view(big_len).unwrap();
        // SAFETY: as above, `big_len` bytes.
        assert!(crate::arch::is_all_traps(unsafe {
            sys::slice(big, big_len)
        }));
        assert_eq!(trap_view(64).unwrap(), big, "a big enough view is reused");
    }

    #[test]
    fn the_maker_owns_its_ranges() {
        let base = sys::reserve_aligned(1 << 16, 1 << 16).unwrap();
        register(base, 1 << 16);
        assert_eq!(owner(base), Owner::Maker);
        assert_eq!(unregister(base), Owner::Maker);
        // SAFETY: reserved above for this test only.
        unsafe { sys::unmap(base, 1 << 16) }.unwrap();
    }
}
