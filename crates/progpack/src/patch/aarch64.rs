//! aarch64 live patching: one aligned 4-byte store of an instruction the architecture lets
//! threads execute while it is being modified, then cache maintenance.
//!
//! The Arm Architecture Reference Manual (DDI 0487), section B2.2.5 "Concurrent modification
//! and execution of instructions" (B2.6.5 in issue A.a, quoted by Linux's
//! `aarch64_insn_hotpatch_safe`), allows another thread to execute an instruction while it is
//! modified, without explicit synchronization, only when both the instruction before and the
//! instruction after the modification are among B, BL, BRK, HVC, ISB, NOP, SMC and SVC: such a
//! thread then behaves as if it ran either the old or the new instruction. For any other
//! instruction the result may be any behaviour reachable at the same exception level. The
//! modification must be a single-copy-atomic store of the whole 32-bit instruction (naturally
//! aligned); it becomes visible to instruction fetch after the data-cache clean and
//! instruction-cache invalidate of [`crate::arch::sync_icache`], which then makes every thread
//! of the process execute an instruction synchronization barrier (`membarrier` SYNC_CORE, as
//! the kernel's `aarch64_insn_patch_text` kicks every CPU).

use super::Site;
use crate::error::{Error, Result};

/// True if `insn` is one of the instructions of the module docs.
pub(crate) fn concurrent_safe(insn: u32) -> bool {
    let b_or_bl = insn & 0x7c00_0000 == 0x1400_0000; // B: 000101 imm26; BL: 100101 imm26
    let exception = insn & 0xffe0_001c == 0xd400_0000; // SVC/HVC/SMC: opc 000, LL 01/10/11
    let svc_hvc_smc = exception && insn & 3 != 0;
    let brk = insn & 0xffe0_001f == 0xd420_0000; // BRK #imm16
    let nop = insn == 0xd503_201f;
    let isb = insn & 0xffff_f0ff == 0xd503_30df; // ISB with any option
    b_or_bl || svc_hvc_smc || brk || nop || isb
}

/// Replaces the instruction `old` with `new` at `site` while other threads may run it: only a
/// single aligned instruction of the allowed set, else [`Error::PatchNotConcurrent`]. Returns
/// false: no site is recorded (there is no trap protocol on aarch64).
pub(super) fn patch_live(site: &Site<'_>, old: &[u8], new: &[u8]) -> Result<bool> {
    let reason = if new.len() != 4 {
        Some("only one 4-byte instruction can be replaced under concurrent execution")
    } else if !site.addr.is_multiple_of(4) {
        Some("the instruction is not 4-byte aligned")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(Error::PatchNotConcurrent { reason });
    }
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let (old, new) = (word(old), word(new));
    if !concurrent_safe(old) || !concurrent_safe(new) {
        return Err(Error::PatchNotConcurrent {
            reason: "the old and the new instruction must both be B, BL, BRK, HVC, ISB, NOP, SMC \
                     or SVC (Arm ARM B2.2.5)",
        });
    }
    site.pack.store_u32(site.offset, new)?;
    crate::arch::sync_icache(site.addr, 4)?;
    Ok(false)
}

/// Writes `new` at `site` with no protocol, then cleans the caches and syncs every core.
pub(super) fn patch_quiescent(site: &Site<'_>, new: &[u8]) -> Result<()> {
    site.write(0, new)?;
    crate::arch::sync_icache(site.addr, new.len())
}

#[cfg(test)]
mod tests {
    use super::concurrent_safe;

    #[test]
    fn the_allowed_set() {
        for ok in [
            0x1400_0000u32, // b .
            0x17ff_ffff,    // b .-4
            0x9400_0010,    // bl .+64
            0xd503_201f,    // nop
            0xd420_0000,    // brk #0
            0xd43e_0000,    // brk #0xf000
            0xd400_0001,    // svc #0
            0xd400_0002,    // hvc #0
            0xd400_0003,    // smc #0
            0xd503_3fdf,    // isb
        ] {
            assert!(concurrent_safe(ok), "{ok:#010x}");
        }
        for bad in [
            0xd65f_03c0u32, // ret
            0x5280_0540,    // movz w0, #42
            0x5400_0000,    // b.eq .
            0xb400_0000,    // cbz x0, .
            0xd63f_0000,    // blr x0
            0xd400_0000,    // (svc with LL = 00: unallocated)
            0xd440_0000,    // hlt #0
            0xd503_203f,    // yield
        ] {
            assert!(!concurrent_safe(bad), "{bad:#010x}");
        }
    }
}
