//! Unwind information given with drafts and batch slots is registered with the unwinder at
//! finalize and deregistered when the program is freed: libgcc's own lookup,
//! `_Unwind_Find_FDE`, finds an FDE for an address inside the code exactly while the program
//! lives. Information that does not fit the code is a typed error.
//!
//! (Backtraces and panics through registered JIT frames are shown by the `cranelift` example.)
#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(unsafe_code)]

use progpack::{Allocator, Config, Error, Observe, Program};

extern "C" {
    /// libgcc: the FDE covering `pc` among the objects it knows (loaded and registered).
    fn _Unwind_Find_FDE(pc: *const u8, bases: *mut [usize; 3]) -> *const u8;
}

fn unwinder_knows(addr: usize) -> bool {
    let mut bases = [0usize; 3];
    // SAFETY: a lookup; `bases` is the three-pointer struct libgcc fills.
    !unsafe { _Unwind_Find_FDE(addr as *const u8, &mut bases) }.is_null()
}

mod eh_frame;

/// An `.eh_frame` with one FDE covering `0..len` of the image.
fn eh_frame(len: u32) -> Vec<u8> {
    eh_frame::eh_frame(&[(0, len)])
}

fn alloc() -> Allocator {
    Allocator::new(Config::default().observe(Observe::default().ignore_env())).unwrap()
}

#[test]
fn drafts_and_batch_slots_are_known_to_the_unwinder_while_they_live() {
    let alloc = alloc();
    let mut d = alloc.draft(64, 16).unwrap();
    d.image_mut().fill(0xc3);
    d.set_eh_frame(&eh_frame(64)).unwrap();
    let p = d.finalize().unwrap();
    assert!(unwinder_knows(p.addr() + 10));
    let mut b = alloc.batch();
    for i in 0..5 {
        b.push(48, 16).unwrap().image.fill(0xc3);
        if i % 2 == 0 {
            b.set_eh_frame(i, &eh_frame(48)).unwrap();
        }
    }
    let progs = b.finalize().unwrap();
    for (i, q) in progs.iter().enumerate() {
        assert_eq!(unwinder_knows(q.addr() + 1), i % 2 == 0, "slot {i}");
    }
    let at = p.addr();
    drop(p);
    assert!(!unwinder_knows(at + 10), "deregistered at free");
    let addrs: Vec<usize> = progs.iter().map(Program::addr).collect();
    alloc.free_all(progs);
    assert!(addrs.iter().all(|&a| !unwinder_knows(a + 1)));
}

#[test]
fn unwind_information_that_does_not_fit_is_refused() {
    let alloc = alloc();
    let mut d = alloc.draft(32, 16).unwrap();
    assert!(matches!(
        d.set_eh_frame(&eh_frame(64)),
        Err(Error::BadUnwindInfo { .. })
    ));
    drop(d);
    // Given while it fitted, then the draft shrank below it: finalize refuses, frees the draft.
    let mut d = alloc.draft(64, 16).unwrap();
    d.set_eh_frame(&eh_frame(64)).unwrap();
    d.shrink(16).unwrap();
    assert!(matches!(d.finalize(), Err(Error::BadUnwindInfo { .. })));
    assert_eq!(alloc.stats().allocations, 0);
    alloc.check_invariants().unwrap();
    let mut b = alloc.batch();
    b.push(16, 1).unwrap();
    assert!(matches!(
        b.set_eh_frame(0, &eh_frame(64)),
        Err(Error::BadUnwindInfo { .. })
    ));
    assert!(matches!(
        b.set_eh_frame(3, &eh_frame(8)),
        Err(Error::NoSuchSlot { index: 3, .. })
    ));
}
