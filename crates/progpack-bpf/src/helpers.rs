//! The helper registry: `u32` id (and optional name) -> host function.
//!
//! Helpers are `extern "C"` so that JIT code can call them directly with the System V calling
//! convention (arguments in rdi, rsi, rdx, rcx, r8; result in rax). A *plain* helper
//! ([`HelperFn`]) gets r1..r5; a *context* helper ([`ContextHelperFn`]) also gets the running
//! program's [`HelperContext`] as a sixth argument (in r9), through which it checks and
//! translates pointers, reaches the program's maps and the host's data, and can end the
//! program (see [`crate::context`] for the ABI).
//!
//! Names are for ELF objects, whose helper calls may be relocations against a symbol
//! (`bpf_map_lookup_elem`) instead of a numeric id.

use std::collections::BTreeMap;

use crate::context::HelperContext;

/// A plain helper function: five arguments (r1..r5), one result (r0).
pub type HelperFn = extern "C" fn(u64, u64, u64, u64, u64) -> u64;

/// A helper function that also receives the running program's context (sixth argument).
pub type ContextHelperFn = extern "C" fn(u64, u64, u64, u64, u64, &mut HelperContext<'_>) -> u64;

/// A registered helper.
#[derive(Clone, Copy, Debug)]
pub enum Helper {
    /// Gets r1..r5.
    Plain(HelperFn),
    /// Gets r1..r5 and the [`HelperContext`].
    Context(ContextHelperFn),
}

impl Helper {
    /// The function's address (what JIT code calls).
    pub fn addr(self) -> u64 {
        match self {
            Helper::Plain(f) => f as usize as u64,
            Helper::Context(f) => f as usize as u64,
        }
    }

    /// Whether the helper receives the context (and so may end the program).
    pub fn takes_context(self) -> bool {
        matches!(self, Helper::Context(_))
    }

    /// Calls the helper with `args` = r1..r5.
    #[inline]
    pub fn call(self, args: [u64; 5], cx: &mut HelperContext<'_>) -> u64 {
        let [a, b, c, d, e] = args;
        match self {
            Helper::Plain(f) => f(a, b, c, d, e),
            Helper::Context(f) => f(a, b, c, d, e, cx),
        }
    }
}

/// Id of the conformance suite's "unwind" helper: returns its first argument; when that is 0
/// the program stops (as in rbpf's `examples/rbpf_plugin.rs`).
pub const UNWIND_HELPER_ID: u32 = 5;

/// Maps helper ids (and names) to functions.
#[derive(Clone, Debug, Default)]
pub struct Helpers {
    map: BTreeMap<u32, Helper>,
    names: BTreeMap<String, u32>,
    unwind: Option<u32>,
}

impl Helpers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) plain helper `id`.
    pub fn register(&mut self, id: u32, f: HelperFn) -> &mut Self {
        self.map.insert(id, Helper::Plain(f));
        self
    }

    /// Registers (or replaces) context helper `id`.
    pub fn register_context(&mut self, id: u32, f: ContextHelperFn) -> &mut Self {
        self.map.insert(id, Helper::Context(f));
        self
    }

    /// Names helper `id` (for ELF relocations against a helper symbol). A name names one id;
    /// naming it again moves it.
    pub fn set_name(&mut self, id: u32, name: &str) -> &mut Self {
        self.names.insert(name.to_owned(), id);
        self
    }

    /// Looks up helper `id`.
    pub fn get(&self, id: u32) -> Option<Helper> {
        self.map.get(&id).copied()
    }

    /// The id named `name`, if that id is registered.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.names
            .get(name)
            .copied()
            .filter(|id| self.map.contains_key(id))
    }

    /// The names of helper `id`.
    pub fn names_of(&self, id: u32) -> impl Iterator<Item = &str> + '_ {
        self.names
            .iter()
            .filter(move |(_, &i)| i == id)
            .map(|(n, _)| n.as_str())
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

    /// Number of registered helpers (constant time, unlike counting [`iter`](Self::iter)).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no helper is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Iterates over the registered helpers in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Helper)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }
}

/// The conformance suite's unwind helper: returns its first argument.
pub extern "C" fn unwind_helper(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    a
}
