//! The helper registry: `u32` id -> host function of five `u64` arguments.
//!
//! Helpers are `extern "C"` so that JIT code can call them directly with the System V calling
//! convention (arguments in rdi, rsi, rdx, rcx, r8; result in rax).

use std::collections::BTreeMap;

/// A helper function: five arguments (r1..r5), one result (r0).
pub type HelperFn = extern "C" fn(u64, u64, u64, u64, u64) -> u64;

/// Id of the conformance suite's "unwind" helper: returns its first argument; when that is 0
/// the program stops (as in rbpf's `examples/rbpf_plugin.rs`).
pub const UNWIND_HELPER_ID: u32 = 5;

/// Maps helper ids to functions.
#[derive(Clone, Debug, Default)]
pub struct Helpers {
    map: BTreeMap<u32, HelperFn>,
    unwind: Option<u32>,
}

impl Helpers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) helper `id`.
    pub fn register(&mut self, id: u32, f: HelperFn) -> &mut Self {
        self.map.insert(id, f);
        self
    }

    /// Looks up helper `id`.
    pub fn get(&self, id: u32) -> Option<HelperFn> {
        self.map.get(&id).copied()
    }

    /// Marks helper `id` as the unwind helper: when a call to it returns 0, the program ends
    /// at once with r0 = 0 (both engines). `None` clears it.
    pub fn set_unwind(&mut self, id: Option<u32>) -> &mut Self {
        self.unwind = id;
        self
    }

    /// The unwind helper id, if any.
    pub fn unwind(&self) -> Option<u32> {
        self.unwind
    }

    /// The registry the bpf_conformance suite expects: helper [`UNWIND_HELPER_ID`] returns its
    /// first argument and is the unwind helper.
    pub fn conformance() -> Self {
        let mut h = Self::new();
        h.register(UNWIND_HELPER_ID, unwind_helper)
            .set_unwind(Some(UNWIND_HELPER_ID));
        h
    }

    /// Iterates over the registered helpers in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, HelperFn)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }
}

/// The conformance suite's unwind helper: returns its first argument.
pub extern "C" fn unwind_helper(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    a
}
