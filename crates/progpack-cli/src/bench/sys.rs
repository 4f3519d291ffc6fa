//! The one interface every compared system implements, so each workload is written once.
//!
//! A system loads a program the way a JIT does: it hands out a writable buffer of the
//! program's length, the workload emits the code into it, and the system makes it executable.
//! Emitting costs the same for every system (the same bytes are written into a buffer each
//! system provides), so differences are the allocators' own.
#![allow(unsafe_code)]

use thiserror::Error;

/// Handle of a loaded program inside one system (an index into its slab).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub u32);

/// Why a system could not load a program.
#[derive(Debug, Error)]
pub enum SysError {
    /// A system call failed.
    #[error("{op}: {errno}")]
    Os {
        /// The call, e.g. `mmap`.
        op: &'static str,
        /// What the kernel said.
        errno: rustix::io::Errno,
    },
    /// The `jit-allocator` crate refused.
    #[error("jit-allocator: {0:?}")]
    JitAlloc(jit_allocator::Error),
    /// progpack refused.
    #[error("progpack: {0}")]
    Progpack(String),
    /// The system cannot run this workload (e.g. a shared allocator for threads).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

/// A way of getting executable memory for many small programs.
pub trait System: Send {
    /// Name shown in the `system` column.
    fn name(&self) -> &'static str;

    /// Loads one program of `len` bytes: `emit` writes the code into the writable buffer
    /// (exactly `len` bytes), then the system makes it executable.
    fn load(&mut self, len: usize, emit: &mut dyn FnMut(&mut [u8])) -> Result<Id, SysError>;

    /// Loads `lens.len()` programs; `emit(i, buf)` writes program `i`. Systems that can
    /// make many programs executable at once (progpack's `Batch`) override this.
    fn load_many(
        &mut self,
        lens: &[usize],
        emit: &mut dyn FnMut(usize, &mut [u8]),
        out: &mut Vec<Id>,
    ) -> Result<(), SysError> {
        for (i, &len) in lens.iter().enumerate() {
            out.push(self.load(len, &mut |buf| emit(i, buf))?);
        }
        Ok(())
    }

    /// Address of the first instruction of a loaded program.
    fn addr(&self, id: Id) -> usize;

    /// Unloads a program; its memory may be reused.
    fn free(&mut self, id: Id);

    /// A handle for another thread that loads into the same underlying allocator, if the
    /// system has one (page-per-program systems just return an independent instance).
    fn for_thread(&mut self) -> Result<Box<dyn System>, SysError>;

    /// Makes room to track `n` more programs without reallocating.
    fn reserve(&mut self, n: usize);

    /// Packs (large shared executable regions) in use, for systems that have them.
    fn packs(&self) -> Option<usize> {
        None
    }
}

/// Calls a generated function (see `gen::emit_function`).
///
/// # Safety
/// `addr` must be the entry of a live, executable `extern "C" fn() -> u32`.
#[inline(always)]
pub unsafe fn call(addr: usize) -> u32 {
    // SAFETY: the caller guarantees `addr` is a live function of this signature.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(addr) };
    f()
}

/// Index-addressed storage with a free list, so every system tracks its programs the same way.
#[derive(Debug)]
pub struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    /// Reserves room for `n` more items, so loading does not reallocate (and needs no new
    /// mapping while a peer sits at `vm.max_map_count`).
    pub fn reserve(&mut self, n: usize) {
        self.items.reserve(n);
        self.free.reserve(n);
    }

    /// Stores `item`, returning its id.
    pub fn insert(&mut self, item: T) -> Id {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(item);
                Id(i)
            }
            None => {
                self.items.push(Some(item));
                Id(self.items.len() as u32 - 1)
            }
        }
    }

    /// The item `id` refers to.
    ///
    /// # Panics
    /// If `id` was freed (a bug in the workload).
    pub fn get(&self, id: Id) -> &T {
        self.items[id.0 as usize].as_ref().expect("live id")
    }

    /// Removes and returns the item.
    pub fn remove(&mut self, id: Id) -> Option<T> {
        let item = self.items.get_mut(id.0 as usize)?.take();
        if item.is_some() {
            self.free.push(id.0);
        }
        item
    }

    /// Removes every item (dropping them in insertion order).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.free.clear();
        self.items.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_freed_ids() {
        let mut s = Slab::default();
        s.reserve(4);
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let c = s.insert("c");
        assert_eq!(c, a);
        assert_eq!(*s.get(b), "b");
        assert_eq!(s.drain().collect::<Vec<_>>(), ["c", "b"]);
        assert_eq!(s.remove(b), None);
    }
}
