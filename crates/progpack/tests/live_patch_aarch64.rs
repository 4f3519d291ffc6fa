//! aarch64 live patching: a single aligned B/BL/NOP/BRK... is one store; anything else is a
//! typed error unless no thread runs the program ([`Program::patch_quiescent`]). Runs only on
//! aarch64 (on x86-64 hosts: under qemu-user, see the README's aarch64 note).
#![cfg(target_arch = "aarch64")]

use progpack::{Allocator, Config, Error, Program};

type Fn0 = extern "C" fn() -> u32;

const NOP: u32 = 0xd503_201f;
const RET: u32 = 0xd65f_03c0;
const BRK: u32 = 0xd420_0000;

/// `b` from offset `at` to offset `to` of the same program.
fn b(at: usize, to: usize) -> u32 {
    0x1400_0000 | (((to as i64 - at as i64) / 4) as u32 & 0x03ff_ffff)
}

/// `movz w0, #v` (v < 2^16).
fn movz_w0(v: u32) -> u32 {
    0x5280_0000 | (v << 5)
}

/// `b L1; brk; L1: movz w0, #1; ret; L2: movz w0, #2; ret`: the branch at 0 picks the block.
fn two_blocks_bytes() -> Vec<u8> {
    [b(0, 8), BRK, movz_w0(1), RET, movz_w0(2), RET]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

fn two_blocks(alloc: &Allocator) -> Program {
    let code = two_blocks_bytes();
    let mut d = alloc.draft(code.len(), 4).unwrap();
    d.image_mut().copy_from_slice(&code);
    d.finalize().unwrap()
}

fn word_at(p: &Program, offset: usize) -> u32 {
    u32::from_le_bytes(p.bytes()[offset..offset + 4].try_into().unwrap())
}

#[test]
fn a_branch_is_retargeted_with_one_store() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = two_blocks(&alloc);
    // SAFETY: the branch at 0 goes to a complete `mov w0, #1; ret`.
    assert_eq!(unsafe { p.as_fn::<Fn0>() }(), 1);
    for k in 0..50 {
        let to = if k % 2 == 0 { 16 } else { 8 };
        p.patch(0, &b(0, to).to_le_bytes()).unwrap();
        assert_eq!(word_at(&p, 0), b(0, to));
        assert_eq!(
            &p.bytes()[4..],
            &two_blocks_bytes()[4..],
            "only the branch changed"
        );
    }
    // NOP and BRK are in the set too.
    p.patch(0, &NOP.to_le_bytes()).unwrap();
    assert_eq!(word_at(&p, 0), NOP);
    p.patch(0, &BRK.to_le_bytes()).unwrap();
    assert_eq!(word_at(&p, 0), BRK);
    alloc.check_invariants().unwrap();
}

/// Needs real hardware: qemu-user's translation cache does not see writes made by the kernel
/// (`/proc/self/mem`) or through an alias, so under qemu the old branch keeps running.
#[test]
fn the_retargeted_branch_runs() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = two_blocks(&alloc);
    // SAFETY: the branch at 0 always goes to a complete `mov w0, #k; ret`.
    let f = unsafe { p.as_fn::<Fn0>() };
    for k in 0..50 {
        let to = if k % 2 == 0 { 16 } else { 8 };
        p.patch(0, &b(0, to).to_le_bytes()).unwrap();
        assert_eq!(f(), if to == 16 { 2 } else { 1 });
    }
}

#[test]
fn other_patches_are_typed_errors_and_write_nothing() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = two_blocks(&alloc);
    let before = p.bytes().to_vec();
    // `movz` is not in the set, neither as the old nor as the new instruction.
    assert!(matches!(
        p.patch(8, &movz_w0(7).to_le_bytes()),
        Err(Error::PatchNotConcurrent { .. })
    ));
    assert!(matches!(
        p.patch(0, &RET.to_le_bytes()),
        Err(Error::PatchNotConcurrent { .. })
    ));
    // Not one aligned instruction.
    assert!(matches!(
        p.patch(2, &[0, 0, 0, 0x14]),
        Err(Error::PatchNotConcurrent { .. })
    ));
    assert!(matches!(
        p.patch(0, &[0x02, 0, 0, 0x14, 0x1f, 0x20, 0x03, 0xd5]),
        Err(Error::PatchNotConcurrent { .. })
    ));
    assert!(matches!(p.patch(0, &[]), Err(Error::EmptyPatch)));
    assert!(matches!(
        p.patch(24, &NOP.to_le_bytes()),
        Err(Error::PatchOutOfRange { .. })
    ));
    assert_eq!(p.bytes(), before.as_slice());
    // With no thread running it, anything goes.
    // SAFETY: no other thread runs `p`.
    unsafe { p.patch_quiescent(8, &movz_w0(7).to_le_bytes()) }.unwrap();
    assert_eq!(word_at(&p, 8), movz_w0(7));
}
