//! The addresses programs see in an environment that hides host addresses
//! ([`Hardening::hide_addresses`](crate::Hardening::hide_addresses)).
//!
//! Every region a program may access gets a fixed virtual base, the same in every run, and
//! both engines (and [`HelperContext`](crate::HelperContext) for helpers) translate each
//! access from it:
//!
//! | region | virtual addresses |
//! |---|---|
//! | input memory (r1, length r2) | `[INPUT, INPUT + len)` (r1 = 0 when the input is empty) |
//! | stack (r10 = top of the current frame) | frame 0's top is `STACK_TOP`; frame *d* is `[STACK_TOP - 512 (d+1), STACK_TOP - 512 d)` |
//! | extra region *i* of the environment (map values, ring buffers) | `[(4 + i) << 32, ... + len)` |
//!
//! So r1, r10, map value addresses (`lddw` with `src = 2`, `map_lookup_elem`,
//! `bpf_ringbuf_reserve`) and anything computed from them carry no host address: a program
//! cannot learn where the host's memory is, through r0, through stores to memory the host
//! reads (input, maps), or through helpers. Invariants: the ranges are disjoint (the input is
//! at most [`MAX_INPUT`] bytes, a run over more fails with
//! [`RunError::InputTooLarge`](crate::RunError::InputTooLarge); each extra region is reached
//! through its first 4 GiB); translation is exact both ways.

use std::sync::Arc;

use crate::insn::{Insn, LD_DW_IMM, PSEUDO_MAP_VALUE};
use crate::interp::STACK_SIZE;
use crate::maps::Map;
use crate::memory::Region;
use crate::pseudo::PseudoError;
use crate::ProgramEnv;

/// Virtual address of the first input byte. (Below 2^31, so JIT code subtracts it as an
/// immediate.)
pub const INPUT: u64 = 0x4000_0000;

/// r10 of frame 0.
pub const STACK_TOP: u64 = 0x3_0000_0000;

/// Largest input a hiding run accepts: everything below the stack region.
pub const MAX_INPUT: u64 = STACK_TOP - STACK_SIZE as u64 - INPUT;

/// Each extra region is visible through this many bytes at most.
pub const MAX_EXTRA: u64 = 1 << 32;

/// Virtual base of extra region `i`.
pub fn extra_base(i: usize) -> u64 {
    (4 + i as u64) << 32
}

/// The host address of `[v, v + len)` if it lies in an extra region of `regions` (writable
/// if `write`), and that region.
pub fn extra_to_host(regions: &[Region], v: u64, len: u64, write: bool) -> Option<(u64, &Region)> {
    let i = usize::try_from((v >> 32).checked_sub(4)?).ok()?;
    let r = regions.get(i)?;
    let off = v & (MAX_EXTRA - 1);
    let visible = r.len.min(MAX_EXTRA);
    (len != 0 && len <= visible && off <= visible - len && (r.writable || !write))
        .then_some((r.start + off, r))
}

/// The virtual address of host address `host` if it lies in an extra region of `regions`.
pub fn extra_to_virtual(regions: &[Region], host: u64) -> Option<u64> {
    regions.iter().enumerate().find_map(|(i, r)| {
        let off = host.checked_sub(r.start)?;
        (off < r.len.min(MAX_EXTRA)).then(|| extra_base(i) + off)
    })
}

/// [`crate::pseudo::resolve`] for a program that will run in `env` (which contains `maps`):
/// map value addresses are virtual when `env` hides host addresses.
pub fn resolve(slots: &mut [Insn], maps: &[Arc<Map>], env: &ProgramEnv) -> Result<(), PseudoError> {
    if env.hides_addresses() {
        hide_map_values(slots, maps, env)?;
    }
    crate::pseudo::resolve(slots, maps)
}

/// Rewrites the `lddw` with `src = 2` (an address inside array `maps[imm]`'s first value) of
/// `slots` into plain `lddw`s of the value's virtual address in `env` (which must contain the
/// maps). What [`crate::pseudo::resolve`] does with host addresses.
pub fn hide_map_values(
    slots: &mut [Insn],
    maps: &[Arc<Map>],
    env: &ProgramEnv,
) -> Result<(), PseudoError> {
    let mut pc = 0;
    while pc + 1 < slots.len() {
        let i = slots[pc];
        if i.opc != LD_DW_IMM {
            pc += 1;
            continue;
        }
        if i.src == PSEUDO_MAP_VALUE {
            let bad_fd = PseudoError::BadFd {
                pc,
                fd: i.imm,
                count: maps.len(),
            };
            let map = usize::try_from(i.imm)
                .ok()
                .and_then(|fd| maps.get(fd))
                .ok_or(bad_fd)?;
            let off = slots[pc + 1].imm;
            let bad = PseudoError::BadValue { pc, offset: off };
            if off < 0 || off as u32 >= map.def().value_size {
                return Err(bad);
            }
            let host = map.array_base().ok_or(bad.clone())? + off as u64;
            let v = extra_to_virtual(env.regions(), host).ok_or(bad)?;
            slots[pc].src = 0;
            slots[pc].imm = v as u32 as i32;
            slots[pc + 1].imm = (v >> 32) as u32 as i32;
        }
        pc += 2;
    }
    Ok(())
}
