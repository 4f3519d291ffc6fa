//! Finding the calling thread's [`Local`] for an allocator: one thread-local read and one
//! compare on the fast path.
//!
//! Each thread keeps a list of (allocator, `Local`) pairs and a pointer to the one it used
//! last. When the thread exits, every `Local` of a live allocator is retired: its run goes back
//! to its pack and its counters into the allocator's totals. After that (in other thread-local
//! destructors) the cache answers `None`, and callers take the slow path without it.
//!
//! Invariants: `CURRENT` is null or points to a `Local` held by an entry of `OWNED`, and its id
//! is that entry's allocator id; an entry is removed only after `CURRENT` stops pointing at it.
#![allow(unsafe_code)] // the fast path dereferences `CURRENT`

use crate::run::{Local, LocalState};
use crate::shared::Shared;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};

struct Entry {
    id: u64,
    shared: Weak<Shared>,
    local: Arc<Local>,
}

/// The calling thread's entries; retires them when the thread exits.
struct Owned {
    entries: RefCell<Vec<Entry>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        CURRENT.set((0, std::ptr::null()));
        for e in self.entries.get_mut().drain(..) {
            if let Some(shared) = e.shared.upgrade() {
                // SAFETY: this is the owner thread, holding a strong reference to the
                // allocator; nothing else on this thread is using the entry.
                unsafe { shared.retire_local(&e.local) };
            }
        }
    }
}

thread_local! {
    /// The allocator id and `Local` this thread used last.
    static CURRENT: Cell<(u64, *const Local)> = const { Cell::new((0, std::ptr::null())) };
    static OWNED: Owned = const {
        Owned {
            entries: RefCell::new(Vec::new()),
        }
    };
}

/// Runs `f` with the calling thread's state for `shared` (created on first use). `None` while
/// the thread is being torn down.
///
/// The caller holds `shared`, a strong reference: that is what keeps the allocator's teardown
/// from touching the same state (see [`Local::state_mut`]).
#[inline]
pub(crate) fn with_state<R>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Local, &mut LocalState) -> R,
) -> Option<R> {
    let (current, ptr) = CURRENT.get();
    if current == shared.id {
        // SAFETY: `CURRENT` points to a `Local` kept alive by an entry of `OWNED` (module
        // invariant), and this is its owner thread.
        let local = unsafe { &*ptr };
        // SAFETY: owner thread, holding a strong reference to the allocator (`shared`); `f`
        // does not re-enter the cache.
        let st = unsafe { local.state_mut() };
        adopt_after_fork(shared, local, st);
        return Some(f(local, st));
    }
    let local = slow(shared.id, || Some(shared.clone()))?;
    // SAFETY: as above.
    let st = unsafe { local.state_mut() };
    adopt_after_fork(shared, &local, st);
    Some(f(&local, st))
}

/// In a child process (the epoch changed), the state still describes the parent's run and
/// random numbers: drop the one, reseed the other.
#[inline]
fn adopt_after_fork(shared: &Shared, local: &Local, st: &mut LocalState) {
    if !crate::backend::sys::is_process_epoch(st.epoch) {
        let epoch = crate::backend::sys::process_epoch();
        if st.epoch != epoch {
            shared.adopt_after_fork(local, st, epoch);
        }
    }
}

/// The calling thread's state for `shared` when it is the one this thread used last (the
/// fast case: one thread-local read, one compare, and the fork check); `None` otherwise (then
/// [`with_state`] finds or makes it).
///
/// # Safety
/// The caller holds `shared` (a strong reference) while it uses the references, uses them only
/// within its own call (they must not outlive it), and meanwhile calls nothing that reaches
/// this thread's state again (no `with_state`, `current` or `with_counters`).
#[inline(always)]
#[allow(clippy::mut_from_ref)] // the state is the thread's own, not `shared`'s (see Safety)
pub(crate) unsafe fn current(shared: &Shared) -> Option<(&Local, &mut LocalState)> {
    let (id, ptr) = CURRENT.get();
    if id != shared.id {
        return None;
    }
    // SAFETY: `CURRENT` points to a `Local` kept alive by an entry of `OWNED` (module
    // invariant); this is its owner thread; the caller's contract rules out a second
    // reference to the state and keeps the allocator alive.
    let (local, st) = unsafe {
        let local = &*ptr;
        (local, local.state_mut())
    };
    adopt_after_fork(shared, local, st);
    Some((local, st))
}

/// Runs `f` with the calling thread's counters for the allocator with id `id`, if this thread
/// has any (never creates them, never touches the state, so the allocator need not be held).
#[inline]
pub(crate) fn with_counters(id: u64, f: impl FnOnce(&Local)) -> bool {
    let (current, ptr) = CURRENT.get();
    if current == id {
        // SAFETY: `CURRENT` points to a `Local` kept alive by an entry of `OWNED`.
        f(unsafe { &*ptr });
        return true;
    }
    match slow(id, || None) {
        Some(local) => {
            f(&local);
            true
        }
        None => false,
    }
}

/// Finds (or, when `shared` gives the allocator, creates) this thread's `Local` for `id` and
/// makes it current. `None` while the thread is being torn down, or if it has none and
/// `shared` gives none.
#[cold]
fn slow(id: u64, shared: impl FnOnce() -> Option<Arc<Shared>>) -> Option<Arc<Local>> {
    // The entry `CURRENT` points to may be pruned below.
    CURRENT.set((0, std::ptr::null()));
    let local = OWNED
        .try_with(|o| {
            let mut entries = o.entries.try_borrow_mut().ok()?;
            // Forget allocators that are gone (their teardown took the runs back).
            entries.retain(|e| e.shared.strong_count() > 0);
            if let Some(e) = entries.iter().find(|e| e.id == id) {
                return Some(e.local.clone());
            }
            let shared = shared()?;
            let local = shared.register_local();
            entries.push(Entry {
                id,
                shared: Arc::downgrade(&shared),
                local: local.clone(),
            });
            Some(local)
        })
        .ok()??;
    CURRENT.set((id, Arc::as_ptr(&local)));
    Some(local)
}
