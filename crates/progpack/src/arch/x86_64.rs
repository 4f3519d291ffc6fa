//! x86-64: the trap is `int3`, and nothing needs flushing after code is written.
//!
//! The instruction and data caches are coherent, and the processor snoops writes to code it
//! has fetched (Intel SDM Vol. 3A, "Self-Modifying Code" and "Handling Self- and
//! Cross-Modifying Code"): a thread that reaches new code through a synchronizing operation
//! (the lock or atomic that published the `Program`) executes the new bytes.

/// The trap instruction pattern: x86 `int3` (0xCC).
pub const TRAP: &[u8] = &[0xcc];

/// Nothing to do (see the module docs).
pub(super) fn clear_icache(addr: usize, len: usize) {
    let _ = (addr, len);
}
