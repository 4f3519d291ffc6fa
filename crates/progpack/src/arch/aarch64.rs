//! aarch64: the trap is `brk #0`, and code written with ordinary stores must be pushed from the
//! data side to the instruction side by hand.
//!
//! The instruction and data caches are not coherent with each other. The Arm ARM (DDI 0487;
//! section numbers move between editions, the titles do not) gives the sequence in
//! "Synchronization and coherency issues between data and instruction accesses" (B2.4.4 in
//! early Armv8 editions, B2.7.4.2 in recent ones): after the store, `DC CVAU` (clean the data
//! cache line to the point of unification), `DSB ISH`, `IC IVAU` (invalidate the instruction
//! cache line to the point of unification), `DSB ISH`, `ISB`. The line sizes, and whether the
//! clean or the invalidate may be skipped (`CTR_EL0.IDC`, `CTR_EL0.DIC`), come from `CTR_EL0`
//! (see `cache_type.rs`; the instructions are described in "About cache maintenance in AArch64
//! state" and "A64 Cache maintenance instructions", section D7.5 "Cache support" in recent
//! editions). `DC CVAU` and `IC IVAU` by virtual address are broadcast to the Inner Shareable
//! domain, so other cores' caches are maintained too; the `ISB` only resynchronizes this core.
//!
//! Other cores may still hold instructions fetched before the maintenance completed: "The PE
//! might have fetched the instructions from memory at any time since the last Context
//! Synchronization event on that PE" (same section; and B2.2.5 "Concurrent modification and
//! execution of instructions" limits what may be changed while another core runs it without
//! that). progpack never rewrites code that can be running (a chunk is written only while it
//! is free or drafted), and [`super::pipeline_flush`] then makes every thread of the process
//! pass a context synchronization event (`membarrier` `SYNC_CORE`).
//!
//! Why by hand: `wasmtime-jit-icache-coherence` 34's `clear_cache` does nothing on aarch64 (it
//! counts on the kernel's maintenance at an `mprotect` from writable to executable, which a
//! pack never makes after it exists).
#![allow(unsafe_code)] // cache maintenance instructions (inline assembly) and one system register read

use super::cache_type;
use std::arch::asm;
use std::sync::atomic::{AtomicU64, Ordering};

/// The trap instruction pattern: aarch64 `brk #0` (0xd4200000, little endian).
pub const TRAP: &[u8] = &[0x00, 0x00, 0x20, 0xd4];

/// `CTR_EL0`, read once. Linux lets EL0 read it (`SCTLR_EL1.UCT`), or traps and emulates the
/// read with the system-wide safe value (the smallest line sizes) where cores differ.
fn ctr_el0() -> u64 {
    static CTR: AtomicU64 = AtomicU64::new(0);
    let cached = CTR.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect; Linux permits (or emulates) it at EL0.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    // Bit 31 is RES1, so a real value is never 0 (0 means "not read yet").
    CTR.store(ctr, Ordering::Relaxed);
    ctr
}

/// The architecture's maintenance sequence over `addr..addr + len` (see the module docs).
/// `addr..addr + len` must be readable in this process (the executable view of a pack: the
/// instructions fault on an address with no read permission).
pub(super) fn clear_icache(addr: usize, len: usize) {
    let plan = cache_type::plan(ctr_el0());
    if let Some(line) = plan.dc_line {
        for at in cache_type::lines(addr, len, line) {
            // SAFETY: cleans one data cache line holding part of the caller's readable range;
            // Linux lets EL0 issue DC CVAU (SCTLR_EL1.UCI). No memory contents change. Not
            // `nomem`: the compiler must keep the code stores before it.
            unsafe { asm!("dc cvau, {}", in(reg) at, options(nostack, preserves_flags)) };
        }
    }
    // Even with IDC set the writes must be complete before the invalidate (or the ISB).
    // SAFETY: a barrier; no operands.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    if let Some(line) = plan.ic_line {
        for at in cache_type::lines(addr, len, line) {
            // SAFETY: invalidates one instruction cache line of the caller's readable range;
            // Linux lets EL0 issue IC IVAU (SCTLR_EL1.UCI). No memory contents change.
            unsafe { asm!("ic ivau, {}", in(reg) at, options(nostack, preserves_flags)) };
        }
        // SAFETY: a barrier; no operands.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    }
    // SAFETY: a context synchronization event for this core; no operands.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register read gives a real value: bit 31 (RES1) set, and line sizes the
    /// architecture allows for a cache entry (16 bytes to 2 KiB).
    #[test]
    fn ctr_el0_reads_a_plausible_value() {
        let ctr = ctr_el0();
        assert_ne!(ctr & (1 << 31), 0, "CTR_EL0 {ctr:#x}");
        let plan = cache_type::plan(ctr);
        for line in [plan.dc_line, plan.ic_line].into_iter().flatten() {
            assert!((16..=2048).contains(&line), "CTR_EL0 {ctr:#x}: line {line}");
        }
        assert_eq!(ctr_el0(), ctr, "read once, then cached");
    }
}
