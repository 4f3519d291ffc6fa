//! Decoding the aarch64 Cache Type Register (`CTR_EL0`) into the cache maintenance a range of
//! freshly written code needs. Pure arithmetic, so it is tested on every architecture; only
//! aarch64 executes the plan (`aarch64.rs`).
//!
//! Fields used (Arm ARM, DDI 0487, register description of CTR_EL0):
//! - `IminLine`, bits 3:0: log2 of the number of 4-byte words in the smallest instruction
//!   cache line;
//! - `DminLine`, bits 19:16: the same for the smallest data or unified cache line;
//! - `IDC`, bit 28: data cache clean to the point of unification is not required for
//!   instruction-to-data coherence;
//! - `DIC`, bit 29: instruction cache invalidation to the point of unification is not
//!   required for instruction-to-data coherence.

/// The maintenance a range needs: the line size to clean the data cache by (`DC CVAU`), and
/// the line size to invalidate the instruction cache by (`IC IVAU`); `None` where `CTR_EL0`
/// says the step is not required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Step for `DC CVAU`, or `None` when `CTR_EL0.IDC` is set.
    pub(crate) dc_line: Option<usize>,
    /// Step for `IC IVAU`, or `None` when `CTR_EL0.DIC` is set.
    pub(crate) ic_line: Option<usize>,
}

const IDC: u64 = 1 << 28;
const DIC: u64 = 1 << 29;

/// The plan for a core whose `CTR_EL0` reads `ctr`.
pub(crate) fn plan(ctr: u64) -> Plan {
    let words = |shift: u32| 4usize << ((ctr >> shift) & 0xf);
    Plan {
        dc_line: (ctr & IDC == 0).then(|| words(16)),
        ic_line: (ctr & DIC == 0).then(|| words(0)),
    }
}

/// The line-aligned addresses a maintenance loop with lines of `line` bytes visits to cover
/// `addr..addr + len` (every line that holds a byte of the range, each once).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn lines(addr: usize, len: usize, line: usize) -> impl Iterator<Item = usize> {
    let first = addr & !(line - 1);
    let end = if len == 0 { first } else { addr + len };
    (first..end).step_by(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cache_type_registers() {
        // Cortex-A72's reset value (its TRM): 64-byte lines both sides, IDC and DIC clear.
        assert_eq!(
            plan(0x8444_c004),
            Plan {
                dc_line: Some(64),
                ic_line: Some(64)
            }
        );
        // The same with IDC set: no clean needed, the invalidate still is.
        assert_eq!(
            plan(0x9444_c004),
            Plan {
                dc_line: None,
                ic_line: Some(64)
            }
        );
        // IDC and DIC set: only the barriers remain.
        assert_eq!(
            plan(0xb444_c004),
            Plan {
                dc_line: None,
                ic_line: None
            }
        );
        // Different line sizes: 32-byte instruction lines, 128-byte data lines; the upper
        // half of the register (other fields) does not matter.
        assert_eq!(
            plan(0xffff_0000_8005_c003),
            Plan {
                dc_line: Some(128),
                ic_line: Some(32)
            }
        );
    }

    #[test]
    fn lines_cover_every_byte_once() {
        // 0x1003..0x1081 touches three lines.
        let got: Vec<usize> = lines(0x1003, 0x7e, 64).collect();
        assert_eq!(got, vec![0x1000, 0x1040, 0x1080]);
        assert_eq!(lines(0x1003, 0x7d, 64).count(), 2);
        assert_eq!(lines(0x1000, 64, 64).collect::<Vec<_>>(), vec![0x1000]);
        assert_eq!(
            lines(0x103f, 2, 64).collect::<Vec<_>>(),
            vec![0x1000, 0x1040]
        );
        assert_eq!(lines(0x1000, 0, 64).count(), 0);
        assert_eq!(lines(0x20_0000, 2 << 20, 64).count(), (2 << 20) / 64);
    }
}
