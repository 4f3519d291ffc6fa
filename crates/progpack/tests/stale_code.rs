//! Stale code never runs: in a child process, calling a freed program's address, or an
//! address inside a hole, ends in SIGTRAP.

mod support;

use progpack::{Allocator, BackendChoice, Config};
use support::{ret_imm32 as ret_imm, run_in_child, ChildExit};

type Fn0 = extern "C" fn() -> u32;

/// Calls `addr` in a child; how the child ended (it exits 1 if the call returned).
fn call_in_child(addr: usize) -> ChildExit {
    run_in_child(|| {
        // SAFETY: deliberately calls an address that holds a live function or only traps; a
        // trap kills the child with SIGTRAP at the first byte, which is what is checked.
        let f: Fn0 = unsafe { std::mem::transmute::<usize, Fn0>(addr) };
        Err(format!("returned {}", f()))
    })
    .exit
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
    assert_eq!(call_in_child(live), ChildExit::Exited(1));

    // Free one in the middle: its address now traps.
    let freed = progs.remove(10);
    let freed_addr = freed.addr();
    drop(freed);
    assert_eq!(
        call_in_child(freed_addr),
        ChildExit::Signaled(libc::SIGTRAP)
    );

    // The slack before a program's first byte, and the free tail of the pack, are holes.
    let p = &progs[20];
    let chunk_start = p.addr() & !63;
    if chunk_start < p.addr() {
        assert_eq!(
            call_in_child(chunk_start),
            ChildExit::Signaled(libc::SIGTRAP)
        );
    }
    // A free chunk after the last program, in the same page (a pack may make its memory ready
    // page by page as it fills, and touching a part not ready yet faults with SIGBUS).
    let after_last = progs.iter().map(|p| p.addr() + p.len()).max().unwrap();
    let tail = after_last.next_multiple_of(64);
    if tail % 4096 != 0 {
        assert_eq!(call_in_child(tail), ChildExit::Signaled(libc::SIGTRAP));
    } else {
        eprintln!("free tail: SKIPPED (the last program ends its page; freed chunks are checked)");
    }
    // The byte right after a program's `ret` is a trap too.
    let after = progs[30].addr() + progs[30].len();
    assert_eq!(call_in_child(after), ChildExit::Signaled(libc::SIGTRAP));
    // Freeing many at once (one trap fill per run) leaves traps too.
    let tail_progs: Vec<_> = progs.drain(40..).collect();
    let addrs: Vec<usize> = tail_progs.iter().map(|p| p.addr()).collect();
    alloc.free_all(tail_progs);
    for a in [addrs[0], addrs[addrs.len() / 2], *addrs.last().unwrap()] {
        assert_eq!(call_in_child(a), ChildExit::Signaled(libc::SIGTRAP));
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
