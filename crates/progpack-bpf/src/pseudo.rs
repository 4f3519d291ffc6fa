//! Load-time resolution of map references in bytecode: `lddw` with `src = 1` (map by fd) and
//! `src = 2` (map value), as the kernel resolves them. "fd" is the map's index in the list the
//! program is loaded with. After resolution the `lddw` is a plain 64-bit immediate: the map's
//! handle ([`Map::handle`]) or the address of byte `offset` of the array's first value.

use std::sync::Arc;

use crate::insn::{Insn, LD_DW_IMM, PSEUDO_MAP_FD, PSEUDO_MAP_VALUE};
use crate::maps::Map;

/// Why a map reference could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PseudoError {
    /// The fd names no map of the list.
    #[error("lddw at pc {pc} names map fd {fd}, but only {count} maps were given")]
    BadFd {
        /// Slot index.
        pc: usize,
        /// The fd.
        fd: i32,
        /// Number of maps given.
        count: usize,
    },
    /// A map value reference to a map that is not an array, or an offset outside its value.
    #[error("lddw at pc {pc}: bad map value reference (offset {offset})")]
    BadValue {
        /// Slot index.
        pc: usize,
        /// The offset.
        offset: i32,
    },
}

/// Resolves every `lddw` with `src` 1 or 2 in `slots` against `maps`.
pub fn resolve(slots: &mut [Insn], maps: &[Arc<Map>]) -> Result<(), PseudoError> {
    let mut pc = 0;
    while pc + 1 < slots.len() {
        let i = slots[pc];
        if i.opc != LD_DW_IMM {
            pc += 1;
            continue;
        }
        if i.src == PSEUDO_MAP_FD || i.src == PSEUDO_MAP_VALUE {
            let map = usize::try_from(i.imm)
                .ok()
                .and_then(|fd| maps.get(fd))
                .ok_or(PseudoError::BadFd {
                    pc,
                    fd: i.imm,
                    count: maps.len(),
                })?;
            let value = if i.src == PSEUDO_MAP_FD {
                // The second slot's imm must be 0 for a map fd.
                if slots[pc + 1].imm != 0 {
                    return Err(PseudoError::BadValue {
                        pc,
                        offset: slots[pc + 1].imm,
                    });
                }
                map.handle()
            } else {
                let off = slots[pc + 1].imm;
                let base = map
                    .array_base()
                    .ok_or(PseudoError::BadValue { pc, offset: off })?;
                if off < 0 || off as u32 >= map.def().value_size {
                    return Err(PseudoError::BadValue { pc, offset: off });
                }
                base + off as u64
            };
            slots[pc].src = 0;
            slots[pc].imm = value as u32 as i32;
            slots[pc + 1].imm = (value >> 32) as u32 as i32;
        }
        pc += 2;
    }
    Ok(())
}
