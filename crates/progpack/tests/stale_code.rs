//! Stale code never runs: in a child process, calling a freed program's address, or an
//! address inside a hole, ends in SIGTRAP.

mod support;

use progpack::{Allocator, BackendChoice, Config};
use support::{in_child, ret_imm, ChildEnd};

type Fn0 = extern "C" fn() -> u32;

fn call_at(addr: usize) -> i32 {
    // SAFETY: deliberately calls an address that holds only traps; the child dies of SIGTRAP
    // at the first byte (what this test checks) before anything else can happen.
    let f: Fn0 = unsafe { std::mem::transmute::<usize, Fn0>(addr) };
    f() as i32
}

fn check_backend(choice: BackendChoice) {
    let alloc = Allocator::new(Config::default().backend(choice)).unwrap();
    let mut progs: Vec<_> = (0..64u32)
        .map(|i| {
            let mut d = alloc.draft(6, 1).unwrap();
            d.image_mut().copy_from_slice(&ret_imm(i));
            d.finalize().unwrap()
        })
        .collect();
    // A live program runs in the child too (the control: the child mechanism works).
    let live = progs[1].addr();
    assert_eq!(in_child(|| call_at(live)), ChildEnd::Exited(1));

    // Free one in the middle: its address now traps.
    let freed = progs.remove(10);
    let freed_addr = freed.addr();
    drop(freed);
    assert_eq!(
        in_child(|| call_at(freed_addr)),
        ChildEnd::Signaled(libc::SIGTRAP)
    );

    // The slack before a program's first byte, and the free tail of the pack, are holes.
    let p = &progs[20];
    let chunk_start = p.addr() & !63;
    if chunk_start < p.addr() {
        assert_eq!(
            in_child(|| call_at(chunk_start)),
            ChildEnd::Signaled(libc::SIGTRAP)
        );
    }
    let after_last = progs.iter().map(|p| p.addr() + p.len()).max().unwrap();
    let tail = after_last.next_multiple_of(64) + 64 * 10;
    assert_eq!(
        in_child(|| call_at(tail)),
        ChildEnd::Signaled(libc::SIGTRAP)
    );
    // The byte right after a program's `ret` is a trap too.
    let after = progs[30].addr() + progs[30].len();
    assert_eq!(
        in_child(|| call_at(after)),
        ChildEnd::Signaled(libc::SIGTRAP)
    );
    // Freeing many at once (one trap fill per run) leaves traps too.
    let tail_progs: Vec<_> = progs.drain(40..).collect();
    let addrs: Vec<usize> = tail_progs.iter().map(|p| p.addr()).collect();
    alloc.free_all(tail_progs);
    for a in [addrs[0], addrs[addrs.len() / 2], *addrs.last().unwrap()] {
        assert_eq!(in_child(|| call_at(a)), ChildEnd::Signaled(libc::SIGTRAP));
    }
    // Neighbours of the freed programs are untouched.
    for (i, p) in progs.iter().enumerate() {
        let want = if i < 10 { i as u32 } else { i as u32 + 1 };
        assert_eq!(p.bytes(), &ret_imm(want));
    }
    alloc.check_invariants().unwrap();
}

#[test]
fn freed_and_hole_addresses_trap_procmem() {
    check_backend(BackendChoice::ProcMem);
}

#[test]
fn freed_and_hole_addresses_trap_dualmap() {
    check_backend(BackendChoice::DualMap);
}
