//! Huge pages: with transparent huge pages in `madvise` (or `always`) mode, a filled procmem
//! pack is backed by `AnonHugePages` after the writes. Where THP is off, the test says
//! SKIPPED on stderr and checks only that the count is zero, rather than passing for the
//! wrong reason. It prints what it found (bytes backed, packs fully backed, programs called).
#![cfg(target_arch = "x86_64")]

mod support;

use progpack::{Allocator, BackendChoice, Config};
use support::ret_imm32 as ret_imm;

#[test]
fn a_filled_pack_is_backed_by_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let alloc = Allocator::new(Config::default().backend(BackendChoice::ProcMem)).unwrap();
    assert!(
        alloc.backend_caps().huge_pages == (thp.contains("[madvise]") || thp.contains("[always]"))
    );
    let mut b = alloc.batch();
    for i in 0..20_000u32 {
        let s = b.push(64, 1).unwrap();
        s.image[..6].copy_from_slice(&ret_imm(i));
    }
    let progs = b.finalize().unwrap();
    // One program at a time too, so the pack sees many separate /proc/self/mem writes.
    let more: Vec<_> = (0..2000u32)
        .map(|i| {
            let mut d = alloc.draft(6, 1).unwrap();
            d.image_mut().copy_from_slice(&ret_imm(i));
            d.finalize().unwrap()
        })
        .collect();
    let hp = alloc.huge_pages().unwrap();
    let snap = alloc.snapshot();
    if !alloc.backend_caps().huge_pages {
        eprintln!(
            "SKIPPED: transparent huge pages are off here ({}): nothing to check",
            thp.trim()
        );
        assert_eq!(hp.backed, 0);
        return;
    }
    assert!(hp.total >= 2 << 20);
    // The kernel may be short of free huge pages; demand most of the packs, not all.
    assert!(
        hp.ratio() >= 0.5,
        "huge-page coverage {:.2} ({hp:?})",
        hp.ratio()
    );
    assert!(
        snap.packs.iter().any(|p| p.huge_bytes == Some(2 << 20)),
        "{:?}",
        snap.packs.iter().map(|p| p.huge_bytes).collect::<Vec<_>>()
    );
    // The programs in the huge pages still run: a sample of each kind, counted.
    let mut called = 0;
    for (i, p) in progs.iter().enumerate().step_by(97) {
        // SAFETY: `mov eax, i; ret`.
        assert_eq!(unsafe { p.as_fn::<extern "C" fn() -> u32>() }(), i as u32);
        called += 1;
    }
    for (i, p) in more.iter().enumerate().step_by(97) {
        // SAFETY: `mov eax, i; ret`.
        assert_eq!(unsafe { p.as_fn::<extern "C" fn() -> u32>() }(), i as u32);
        called += 1;
    }
    assert!(called >= 220, "only {called} programs called");
    let full = snap
        .packs
        .iter()
        .filter(|p| p.huge_bytes == Some(2 << 20))
        .count();
    eprintln!(
        "huge pages: {} of {} bytes of {} packs backed ({full} packs fully); {called} programs \
         called",
        hp.backed,
        hp.total,
        snap.packs.len()
    );
}
