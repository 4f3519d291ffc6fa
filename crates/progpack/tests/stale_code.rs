//! Stale code never runs: calling a freed program's address, an address inside a hole (the
//! slack before a program's first byte, a free chunk after the last program), or the byte
//! right after a program traps at exactly that address.
//!
//! Each backend runs in a child with a SIGTRAP handler ([`support::trap`]) that records where
//! the trap was and returns a sentinel, so every address is checked in one process (`dualmap`
//! code is not inherited by a child, so "call it in a child" cannot be the method for it). For
//! procmem a sample is also called the plain way: a child calls it and must die of SIGTRAP.
//!
//! Where a check depends on chance (the random start leaves slack before a program only when
//! its offset is not 0), the test counts how many addresses it checked and demands a minimum,
//! and says SKIPPED for what it could not check.

mod support;

use progpack::{Allocator, BackendChoice, Config, Program};
use support::{call_addr, call_u64, ret_imm64, ret_imm64_len, run_in_child, trap, ChildExit};

const PROGRAMS: u64 = 64;
/// Programs (of `PROGRAMS`) that must have slack before their first byte, and a trap byte after
/// their last one, in their own chunk: with 64-byte chunks and the default random start, a
/// program starts at offset 0, or ends at the chunk's end, about one time in 40 each.
const MIN_CHANCE_CHECKS: usize = 48;

fn load(alloc: &Allocator, v: u64) -> Program {
    let mut d = alloc
        .draft(ret_imm64_len(), progpack::arch::TRAP.len())
        .expect("draft");
    d.image_mut().copy_from_slice(&ret_imm64(v));
    d.finalize().expect("finalize")
}

/// The first instruction boundary at or after `addr` (aarch64 fetches only 4-byte aligned
/// addresses).
fn insn(addr: usize) -> usize {
    addr.next_multiple_of(progpack::arch::TRAP.len())
}

/// What is checked per backend, and how much of it there was.
#[derive(Debug, Default)]
struct Checked {
    freed: usize,
    slack: usize,
    after: usize,
    tail: usize,
}

fn check(addr: usize, what: &str) -> Result<(), String> {
    // SAFETY: every address passed here lies in a live pack (read+execute) and holds traps or,
    // if the allocator were wrong, stale `ret_imm64` code, which returns.
    unsafe { trap::expect_trap_at(addr, what) }
}

fn freed_and_holes_trap(choice: BackendChoice) -> Result<Checked, String> {
    trap::install();
    let alloc = Allocator::new(Config::default().backend(choice)).map_err(|e| e.to_string())?;
    let mut progs: Vec<(Program, u64)> = (0..PROGRAMS).map(|v| (load(&alloc, v), v)).collect();
    let mut n = Checked::default();
    // Control: live programs run (the handler did not turn them into traps).
    for (p, v) in &progs {
        if call_u64(p) != *v {
            return Err(format!("live program {v} at {:#x} is wrong", p.addr()));
        }
    }
    // Free one in the middle: its address now traps.
    let (freed, _) = progs.remove(10);
    let freed_addr = freed.addr();
    drop(freed);
    check(freed_addr, "freed")?;
    n.freed += 1;
    for (p, _) in &progs {
        // The slack before a program's first byte (in its first chunk) is a hole.
        let chunk_start = p.addr() & !63;
        if chunk_start < p.addr() {
            check(chunk_start, "slack before a program at")?;
            n.slack += 1;
        }
        // The byte right after a program's last instruction is a trap too, unless the
        // program ends exactly at a chunk boundary (then the next chunk is someone else's).
        let after = insn(p.addr() + p.len());
        if !after.is_multiple_of(64) {
            check(after, "after a program at")?;
            n.after += 1;
        }
    }
    // A free chunk after the last program, in the same page (a pack may make its memory ready
    // page by page as it fills, and touching a part not ready yet faults with SIGBUS).
    let after_last = progs
        .iter()
        .map(|(p, _)| p.addr() + p.len())
        .max()
        .unwrap_or(0);
    let tail = after_last.next_multiple_of(64);
    if !tail.is_multiple_of(4096) {
        check(tail, "free tail at")?;
        n.tail += 1;
    }
    // Freeing many at once (one trap fill per run) leaves traps too.
    let tail_progs: Vec<(Program, u64)> = progs.drain(40..).collect();
    let addrs: Vec<usize> = tail_progs.iter().map(|(p, _)| p.addr()).collect();
    alloc.free_all(tail_progs.into_iter().map(|(p, _)| p).collect());
    for &a in &addrs {
        check(a, "freed (free_all)")?;
        n.freed += 1;
    }
    // Neighbours of the freed programs are untouched.
    for (p, v) in &progs {
        if p.bytes() != ret_imm64(*v).as_slice() || call_u64(p) != *v {
            return Err(format!("program {v} changed by its neighbours' frees"));
        }
    }
    alloc.check_invariants()?;
    Ok(n)
}

fn run(choice: BackendChoice) {
    let name = format!("{choice:?}");
    let out = run_in_child(|| {
        freed_and_holes_trap(choice)
            .map(|n| format!("{n:?}"))
            .and_then(Err)
    });
    assert_eq!(out.exit, ChildExit::Exited(1), "{name}: {}", out.message);
    // The child reports its counts as `Checked { freed: F, slack: S, after: A, tail: T }`.
    let count = |field: &str| -> usize {
        let at = out.message.find(&format!("{field}: ")).unwrap_or_else(|| {
            panic!("{name}: {}", out.message);
        });
        out.message[at + field.len() + 2..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {}", out.message))
    };
    let (freed, slack, after, tail) = (
        count("freed"),
        count("slack"),
        count("after"),
        count("tail"),
    );
    eprintln!(
        "{name}: {} addresses trapped in place: {freed} freed, {slack} slack holes, {after} \
         after a program, {tail} in the free tail",
        freed + slack + after + tail
    );
    let live = PROGRAMS as usize - 1;
    assert_eq!(freed, 1 + (live - 40), "{name}");
    if tail == 0 {
        eprintln!("{name}: SKIPPED free tail (the last program ends its page)");
    }
    for (what, checked) in [("slack before", slack), ("byte after", after)] {
        assert!(
            checked >= MIN_CHANCE_CHECKS,
            "{name}: only {checked} of {live} programs had a {what} them to check"
        );
        if checked < live {
            eprintln!(
                "{name}: SKIPPED the {what} check for {} programs (their chunk had none)",
                live - checked
            );
        }
    }
}

#[test]
fn freed_and_hole_addresses_trap_procmem() {
    run(BackendChoice::ProcMem);
}

#[test]
fn freed_and_hole_addresses_trap_dualmap() {
    run(BackendChoice::DualMap);
}

#[test]
fn freed_and_hole_addresses_trap_dualmap_per_write() {
    run(BackendChoice::DualMapPerWrite);
}

/// Without any handler: a child calling a freed address dies of SIGTRAP (procmem: the child
/// inherits the packs, copy-on-write).
#[test]
fn freed_code_kills_a_child_with_sigtrap() {
    let alloc = Allocator::new(Config::default().backend(BackendChoice::ProcMem)).unwrap();
    let progs: Vec<Program> = (0..8).map(|v| load(&alloc, v)).collect();
    let live = progs[1].addr();
    let out = run_in_child(|| {
        // SAFETY: a live `ret_imm64` function, inherited by the child.
        Err(format!("returned {}", unsafe { call_addr(live) }))
    });
    assert_eq!(out.exit, ChildExit::Exited(1), "control: {}", out.message);
    assert_eq!(out.message, "returned 1");
    let freed = progs[4].addr();
    drop(progs);
    let out = run_in_child(|| {
        // SAFETY: a freed address in a live pack: only traps.
        Err(format!("returned {}", unsafe { call_addr(freed) }))
    });
    assert_eq!(
        out.exit,
        ChildExit::Signaled(libc::SIGTRAP),
        "{}",
        out.message
    );
}
