//! "CPUs" of per-CPU maps: in this userspace runtime, a per-CPU value is a per-*host-thread*
//! value. Each thread that touches a per-CPU map (or calls `get_smp_processor_id`) takes the
//! lowest free slot in `0..possible_cpus()` and gives it back when it exits, so live threads
//! never share a slot while there are at most [`possible_cpus`] of them; beyond that, threads
//! share slots (slot = a counter modulo the count) and their updates of one value may race,
//! as on a kernel where programs are preempted.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

/// Number of per-CPU slots of every per-CPU map: the machine's parallelism, at least 64.
pub fn possible_cpus() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(64)
    })
}

/// Slots in use (true) by live threads.
static SLOTS: Mutex<Vec<bool>> = Mutex::new(Vec::new());

/// Owns a slot for the life of its thread.
struct Slot(Cell<Option<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(i) = self.0.get() {
            let mut s = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = s.get_mut(i) {
                *b = false;
            }
        }
    }
}

thread_local! {
    static SLOT: Slot = const { Slot(Cell::new(None)) };
}

/// This thread's slot ("processor id"), in `0..possible_cpus()`.
pub fn current_cpu() -> usize {
    SLOT.try_with(|s| match s.0.get() {
        Some(i) => i,
        None => {
            let n = possible_cpus();
            let mut v = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            v.resize(n, false);
            let i = match v.iter().position(|b| !b) {
                Some(i) => {
                    v[i] = true;
                    i
                }
                None => {
                    static SHARED: std::sync::atomic::AtomicUsize =
                        std::sync::atomic::AtomicUsize::new(0);
                    SHARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n
                }
            };
            s.0.set(Some(i));
            i
        }
    })
    // A thread being torn down has no slot left: share slot 0.
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_threads_get_distinct_slots() {
        let barrier = std::sync::Barrier::new(4);
        let ids: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let id = current_cpu();
                        barrier.wait();
                        id
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{ids:?}");
        assert!(ids.iter().all(|&i| i < possible_cpus()));
    }
}
