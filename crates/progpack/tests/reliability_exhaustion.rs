//! Resource exhaustion: address space (`RLIMIT_AS`), the code range, the kernel's limit on
//! mappings (`vm.max_map_count`) and file descriptors. Each runs in a forked child where it can
//! set limits without touching the test harness. In every case: a typed error, no panic, the
//! programs already loaded still run, and the allocator works again once room is made.

mod support;

use progpack::{Allocator, BackendChoice, CodeRange, Config, Error, Program};
use support::{call_u64, ret_imm64, run_in_child, status_kib};

fn load(alloc: &Allocator, value: u64, len: usize) -> progpack::Result<Program> {
    let mut d = alloc.draft(len, 1)?;
    d.image_mut()[..ret_imm64_len()].copy_from_slice(&ret_imm64(value));
    d.finalize()
}

fn ret_imm64_len() -> usize {
    ret_imm64(0).len()
}

fn check_all(progs: &[(Program, u64)]) -> Result<(), String> {
    for (p, v) in progs {
        let got = call_u64(p);
        if got != *v {
            return Err(format!(
                "program at {:#x} returned {got:#x}, not {v:#x}",
                p.addr()
            ));
        }
    }
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, cur: u64) -> Result<(), String> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a plain setrlimit of the soft limit only.
    let rc = unsafe {
        libc::getrlimit(resource, &mut old);
        libc::setrlimit(
            resource,
            &libc::rlimit {
                rlim_cur: cur,
                rlim_max: old.rlim_max,
            },
        )
    };
    if rc != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// With `RLIMIT_AS` just above what the process uses, a new 2 MiB pack (which needs 4 MiB of
/// address space to align) cannot be mapped: the current pack fills up, then drafts, batch
/// pushes and large programs fail with an out-of-memory error; frees make room again.
fn rlimit_as(backend: BackendChoice) -> Result<(), String> {
    let alloc = Allocator::new(
        Config::default()
            .backend(backend)
            .reserve_packs(0)
            .shards(1),
    )
    .map_err(|e| e.to_string())?;
    let mut progs: Vec<(Program, u64)> = Vec::with_capacity(40_000);
    for v in 0..1000 {
        progs.push((load(&alloc, v, 100).map_err(|e| e.to_string())?, v));
    }
    let vm = status_kib("VmSize") as u64 * 1024;
    set_limit(libc::RLIMIT_AS, vm + (1 << 20))?;
    // Fill the pack until the allocator needs a new one.
    let mut v = 1000;
    let err = loop {
        match load(&alloc, v, 100) {
            Ok(p) => progs.push((p, v)),
            Err(e) => break e,
        }
        v += 1;
        if v > 40_000 {
            return Err("RLIMIT_AS never refused a pack".into());
        }
    };
    if !err.is_out_of_memory() {
        return Err(format!("typed error expected, got {err:?}"));
    }
    let packs = alloc.stats().packs;
    if packs != 1 {
        return Err(format!("{packs} packs under the limit"));
    }
    check_all(&progs)?;
    alloc.check_invariants()?;
    let st = alloc.stats();
    if st.allocations != progs.len() {
        return Err(format!(
            "{} allocations for {} programs",
            st.allocations,
            progs.len()
        ));
    }
    // A large program and a batch that needs a new pack fail the same way.
    match alloc.draft(3 << 20, 1) {
        Err(e) if e.is_out_of_memory() => {}
        other => return Err(format!("large program under the limit: {other:?}")),
    }
    let mut b = alloc.batch();
    match b.push(100, 1) {
        Err(e) if e.is_out_of_memory() => {}
        other => return Err(format!("batch push under the limit: {other:?}")),
    }
    drop(b);
    // Free every other program: loads work again, in the same pack.
    let mut i = 0;
    progs.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    for _ in 0..100 {
        v += 1;
        progs.push((
            load(&alloc, v, 100).map_err(|e| format!("after freeing: {e}"))?,
            v,
        ));
    }
    check_all(&progs)?;
    alloc.check_invariants()?;
    // Lift the limit: a new pack maps.
    set_limit(libc::RLIMIT_AS, libc::RLIM_INFINITY)?;
    let p = load(&alloc, 7, 1 << 20).map_err(|e| format!("after lifting the limit: {e}"))?;
    if call_u64(&p) != 7 {
        return Err("wrong result".into());
    }
    Ok(())
}

#[test]
fn rlimit_as_procmem() {
    run_in_child(|| rlimit_as(BackendChoice::ProcMem)).assert_ok();
}

#[test]
fn rlimit_as_dualmap() {
    run_in_child(|| rlimit_as(BackendChoice::DualMap)).assert_ok();
}

/// More programs than a code range holds: `CodeRangeFull`, everything loaded lies within reach
/// of the host and runs; freeing makes room; a program larger than the range is refused.
#[test]
fn code_range_full() {
    const PACK: usize = 64 << 10;
    let near = code_range_full as fn() as usize;
    let alloc = Allocator::new(
        Config::default()
            .pack_size(PACK)
            .reserve_packs(0)
            .code_range(CodeRange::near(near).size(4 * PACK)),
    )
    .expect("allocator");
    let (base, size) = alloc.code_range().expect("a code range");
    let mut progs = Vec::new();
    let mut v = 0u64;
    let err = loop {
        match load(&alloc, v, 1000) {
            Ok(p) => progs.push((p, v)),
            Err(e) => break e,
        }
        v += 1;
        assert!(v < 10_000, "the code range never filled");
    };
    assert!(matches!(err, Error::CodeRangeFull { .. }), "{err:?}");
    assert_eq!(alloc.stats().packs, 4);
    // 4 packs of 64 KiB, 1000-byte programs in 1024-byte spans (with the 16 bytes of slack).
    assert_eq!(progs.len(), 4 * (PACK / 1024));
    for (p, _) in &progs {
        assert!(p.addr() >= base && p.addr() + p.len() <= base + size);
        assert!(
            p.addr().abs_diff(near) < (2 << 30) && (p.addr() + p.len()).abs_diff(near) < (2 << 30)
        );
    }
    check_all(&progs).expect("programs in a full code range");
    // Larger than the whole range, and larger than a pack while every slot is taken.
    assert!(matches!(
        alloc.draft(5 * PACK, 1),
        Err(Error::CodeRangeFull { .. })
    ));
    assert!(matches!(
        alloc.draft(PACK + 1, 1),
        Err(Error::CodeRangeFull { .. })
    ));
    // Free the programs of one pack: its slot comes back, a large program fits there.
    let first_pack = progs[0].0.addr() & !(PACK - 1);
    progs.retain(|(p, _)| p.addr() & !(PACK - 1) != first_pack);
    assert_eq!(alloc.stats().packs, 3);
    let big = load(&alloc, 42, PACK - 100).expect("a pack-sized program after freeing");
    assert_eq!(call_u64(&big), 42);
    assert!(big.addr() >= base && big.addr() < base + size);
    check_all(&progs).expect("programs after freeing");
    alloc.check_invariants().expect("invariants");
}

/// Large programs each get a mapping of their own; load them until the kernel's limit on
/// mappings per process (`vm.max_map_count`, 65530 by default) refuses one. Bounded: at most
/// the limit plus a margin of loads, each 8 KiB.
///
/// Anonymous mappings with equal protections merge with their neighbours unless they are
/// named (`PR_SET_VMA_ANON_NAME` needs `CONFIG_ANON_VMA_NAME`): then procmem's mappings never
/// approach the limit, which is checked instead. dualmap's views are of distinct files and
/// never merge (two per program, plus a descriptor each: the descriptor limit is raised first
/// where allowed, else it is the limit that refuses).
fn max_map_count(backend: BackendChoice) -> Result<String, String> {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "max_map_count unreadable".to_string())?;
    if limit > 300_000 {
        return Ok(format!(
            "skipped: vm.max_map_count is {limit}, too many to reach quickly"
        ));
    }
    let _ = raise_nofile(limit as u64 + 1000);
    let alloc = Allocator::new(
        Config::default()
            .pack_size(4096)
            .chunk_size(64)
            .backend(backend),
    )
    .map_err(|e| e.to_string())?;
    let len = 4096 + 1; // one byte more than a pack: a dedicated 8 KiB mapping
    let mut progs: Vec<(Program, u64)> = Vec::with_capacity(limit + 1000);
    let vmas_at_start = support::maps_snapshot().len();
    let mut v = 0u64;
    let err = loop {
        match load(&alloc, v, len) {
            Ok(p) => progs.push((p, v)),
            Err(e) => break Some(e),
        }
        v += 1;
        if v == 2000 {
            let grown = support::maps_snapshot().len().saturating_sub(vmas_at_start);
            if grown < 200 {
                // Merged: 2000 mappings in fewer than 200 VMAs; the limit is out of reach.
                break None;
            }
        }
        if v as usize > limit + 1000 {
            return Err(format!("{v} dedicated mappings and no refusal"));
        }
    };
    let loaded = progs.len();
    let summary = match &err {
        None => format!(
            "{loaded} large programs in {} VMAs: neighbours merge, the limit is never approached",
            support::maps_snapshot().len() - vmas_at_start
        ),
        Some(e) => {
            let typed = e.is_out_of_memory() || e.raw_os_error() == Some(libc::EMFILE);
            if !typed {
                return Err(format!("typed error expected, got {e:?}"));
            }
            if loaded < limit / 4 {
                return Err(format!("refused after only {loaded} mappings: {e}"));
            }
            format!("{loaded} large programs loaded before: {e}")
        }
    };
    // Everything loaded still runs (every 97th, and the last ones).
    for (i, (p, v)) in progs.iter().enumerate() {
        if (i % 97 == 0 || i + 10 > loaded) && call_u64(p) != *v {
            return Err(format!("program {i} wrong after exhaustion"));
        }
    }
    let st = alloc.stats();
    if st.dedicated_mappings != loaded || st.allocations != loaded {
        return Err(format!("stats after exhaustion: {st:?}"));
    }
    // Make room: loads work again.
    progs.truncate(loaded - 50);
    for _ in 0..20 {
        v += 1;
        progs.push((
            load(&alloc, v, len).map_err(|e| format!("after freeing: {e}"))?,
            v,
        ));
    }
    check_all(&progs[progs.len() - 20..])?;
    alloc.check_invariants()?;
    Ok(summary)
}

fn raise_nofile(n: u64) -> Result<(), String> {
    // SAFETY: plain setrlimit; raising the hard limit needs CAP_SYS_RESOURCE and may fail.
    let rc = unsafe {
        libc::setrlimit(
            libc::RLIMIT_NOFILE,
            &libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            },
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// Runs [`max_map_count`] in a child; its summary comes back as the child's message.
fn max_map_count_in_child(backend: BackendChoice) -> String {
    let out = run_in_child(|| max_map_count(backend).and_then(Err));
    assert_eq!(out.exit, support::ChildExit::Exited(1), "{}", out.message);
    let m = out.message;
    assert!(
        m.contains("large programs") || m.starts_with("skipped"),
        "{m}"
    );
    m
}

#[test]
fn max_map_count_procmem() {
    eprintln!(
        "procmem: {}",
        max_map_count_in_child(BackendChoice::ProcMem)
    );
}

#[test]
fn max_map_count_dualmap() {
    let m = max_map_count_in_child(BackendChoice::DualMap);
    eprintln!("dualmap: {m}");
    // Views of distinct files never merge: this backend does reach a limit.
    assert!(
        m.contains("loaded before") || m.starts_with("skipped"),
        "{m}"
    );
}

/// dualmap keeps one memfd descriptor per pack: with few descriptors left, mapping a pack
/// fails with a typed error (EMFILE) and the allocator carries on once packs are released.
#[test]
fn file_descriptors_exhausted_dualmap() {
    run_in_child(|| {
        let alloc = Allocator::new(
            Config::default()
                .pack_size(4096)
                .reserve_packs(0)
                .shards(1)
                .backend(BackendChoice::DualMap),
        )
        .map_err(|e| e.to_string())?;
        let open = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| e.to_string())?
            .count() as u64;
        set_limit(libc::RLIMIT_NOFILE, open + 30)?;
        let mut progs = Vec::new();
        let mut v = 0;
        let err = loop {
            match load(&alloc, v, 4000) {
                Ok(p) => progs.push((p, v)),
                Err(e) => break e,
            }
            v += 1;
            if v > 1000 {
                return Err("never ran out of descriptors".into());
            }
        };
        if err.raw_os_error() != Some(libc::EMFILE) {
            return Err(format!("EMFILE expected, got {err:?}"));
        }
        if progs.len() < 20 {
            return Err(format!("only {} packs before EMFILE", progs.len()));
        }
        check_all(&progs)?;
        progs.truncate(progs.len() - 5);
        for _ in 0..5 {
            v += 1;
            progs.push((
                load(&alloc, v, 4000).map_err(|e| format!("after freeing: {e}"))?,
                v,
            ));
        }
        check_all(&progs)?;
        alloc.check_invariants()
    })
    .assert_ok();
}

/// The heap runs out while a batch takes a slot: chunks are available in the pack, but the
/// writable image buffer cannot be allocated. The push is a typed error, and the batch stays
/// usable: it finalizes (with the slots that did succeed) instead of panicking. A 128 MiB pack
/// and a 100 MiB image make the buffer too large for any malloc arena, so it needs a fresh
/// mapping, which `RLIMIT_AS` refuses.
#[test]
fn batch_push_out_of_heap() {
    run_in_child(|| {
        let big = 100 << 20;
        let alloc = Allocator::new(
            Config::default()
                .pack_size(128 << 20)
                .reserve_packs(0)
                .shards(1)
                .backend(BackendChoice::DualMap), // no huge-page fill of 128 MiB
        )
        .map_err(|e| e.to_string())?;
        let keep = load(&alloc, 1, 100).map_err(|e| e.to_string())?; // maps the pack
        let vm = status_kib("VmSize") as u64 * 1024;
        set_limit(libc::RLIMIT_AS, vm + (256 << 10))?;
        if let Ok(d) = alloc.draft(big, 1) {
            return Err(format!("a draft of {big} bytes under the limit: {d:?}"));
        }
        // A first slot whose buffer cannot be had.
        let mut b = alloc.batch();
        match b.push(big, 1).map(|s| s.index) {
            Err(e) if e.is_out_of_memory() => {}
            other => return Err(format!("push of a 100 MiB image: {other:?}")),
        }
        let progs = b
            .finalize()
            .map_err(|e| format!("finalize after a failed push: {e}"))?;
        if !progs.is_empty() {
            return Err("programs from nothing".into());
        }
        // A batch with a good slot, then a failed one, then a good one.
        let mut b = alloc.batch();
        let s = b.push(64, 1).map_err(|e| e.to_string())?;
        s.image[..ret_imm64(2).len()].copy_from_slice(&ret_imm64(2));
        if b.push(big, 1).is_ok() {
            return Err("100 MiB image allowed under the limit".into());
        }
        let s = b.push(64, 1).map_err(|e| e.to_string())?;
        s.image[..ret_imm64(3).len()].copy_from_slice(&ret_imm64(3));
        let progs = b.finalize().map_err(|e| format!("finalize: {e}"))?;
        let got: Vec<u64> = progs.iter().map(call_u64).collect();
        if got != [2, 3] || call_u64(&keep) != 1 {
            return Err(format!("results {got:?}"));
        }
        drop(progs);
        alloc.check_invariants()?;
        let st = alloc.stats();
        if st.allocations != 1 {
            return Err(format!("{} allocations left, 1 expected", st.allocations));
        }
        Ok(())
    })
    .assert_ok();
}
