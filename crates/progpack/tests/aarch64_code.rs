//! aarch64: generated functions run, and freed code traps (BRK → SIGTRAP). Runs only on
//! aarch64 (on x86-64 hosts: under qemu-user, see the README's aarch64 note).
#![cfg(target_arch = "aarch64")]

mod support;

use progpack::{Allocator, Config};
use support::{run_in_child, ChildExit};

/// `movz w0, #lo; movk w0, #hi, lsl #16; ret`.
fn ret_imm(v: u32) -> [u8; 12] {
    let movz = 0x5280_0000u32 | ((v & 0xffff) << 5);
    let movk = 0x72a0_0000u32 | ((v >> 16) << 5);
    let ret = 0xd65f_03c0u32;
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&movz.to_le_bytes());
    out[4..8].copy_from_slice(&movk.to_le_bytes());
    out[8..].copy_from_slice(&ret.to_le_bytes());
    out
}

fn load(alloc: &Allocator) -> Vec<progpack::Program> {
    (0..2000u32)
        .map(|i| {
            let mut d = alloc.draft(12, 4).unwrap();
            d.image_mut().copy_from_slice(&ret_imm(i * 70_001));
            d.finalize().unwrap()
        })
        .collect()
}

#[test]
fn functions_run() {
    let alloc = Allocator::new(Config::default()).unwrap();
    eprintln!("backend: {}", alloc.backend_report());
    for (i, p) in load(&alloc).iter().enumerate() {
        // SAFETY: a complete AAPCS64 function returning a u32.
        let f = unsafe { p.as_fn::<extern "C" fn() -> u32>() };
        assert_eq!(f(), i as u32 * 70_001);
    }
}

/// Needs real hardware: qemu-user's translation cache does not see writes made by the kernel
/// (`/proc/self/mem`) or through an alias, so under qemu the old code keeps running.
#[test]
fn freed_code_traps() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut progs = load(&alloc);
    // SAFETY: a complete AAPCS64 function returning a u32.
    let f = unsafe { progs[5].as_fn::<extern "C" fn() -> u32>() };
    assert_eq!(f(), 5 * 70_001);
    let freed = progs.remove(5);
    let addr = freed.addr();
    drop(freed);
    let out = run_in_child(|| {
        // SAFETY: deliberately calls freed code, which holds only BRK instructions.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute::<usize, _>(addr) };
        Err(format!("freed code returned {}", f()))
    });
    assert_eq!(
        out.exit,
        ChildExit::Signaled(libc::SIGTRAP),
        "{}",
        out.message
    );
    alloc.check_invariants().unwrap();
}
