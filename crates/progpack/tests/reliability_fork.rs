//! fork(): nothing a child does may change the parent's code, and the child's own use of the
//! inherited allocator is either correct or refused with a clear error.
//!
//! For each backend the parent loads programs (leaving holes), copies every byte of every
//! pack, and forks. The child calls the inherited programs, frees half of them, loads hundreds
//! of new ones (into the parent's holes first: first fit) and calls them, makes a fresh
//! allocator and uses it, and forks a grandchild that loads too. Then the parent checks that
//! every byte of every pack is as before, that its programs still run, and goes on loading.
//!
//! procmem: the child reopens `/proc/self/mem` (its own memory, copy-on-write), so its
//! inherited programs keep working and its loads work. dualmap: the packs are a shared memfd,
//! so neither view is inherited (`MADV_DONTFORK`): the child's inherited programs fault when
//! called and read back as traps, a write into an inherited pack is refused with
//! `Error::Forked` and the refused chunks are quarantined (in the child); loads then go to
//! packs the child maps itself, which work.
//!
//! The other direction is tested too: the parent rewriting a chunk after the fork never
//! reaches the child, and a child dropping its inherited allocator never unmaps memory of its
//! own that the kernel placed where the parent's uninherited views were.

mod support;

use progpack::{Allocator, BackendChoice, CodeRange, Config, Error, Program};
use support::{
    call_u64, maps_snapshot, ret_imm64, run_in_child, run_in_raw_clone_child, spawn_in_child,
    spawn_in_raw_clone_child, ChildExit, Gate, MapEntry,
};

const PACK: usize = 64 << 10;

fn config(backend: BackendChoice) -> Config {
    Config::default()
        .pack_size(PACK)
        .chunk_size(64)
        .reserve_packs(1)
        .shards(1)
        .backend(backend)
}

fn load(alloc: &Allocator, value: u64, len: usize) -> progpack::Result<Program> {
    let mut d = alloc.draft(len, 16)?;
    let code = ret_imm64(value);
    d.image_mut()[..code.len()].copy_from_slice(&code);
    d.finalize()
}

/// A copy of every byte of every pack.
fn pack_bytes(alloc: &Allocator) -> Vec<(usize, Vec<u8>)> {
    alloc
        .occupancy()
        .packs
        .iter()
        .map(|p| {
            // SAFETY: the pack is mapped readable while the allocator lists it, and nothing
            // else runs on this allocator meanwhile.
            let bytes = unsafe { std::slice::from_raw_parts(p.base as *const u8, PACK) };
            (p.base, bytes.to_vec())
        })
        .collect()
}

fn check_programs(progs: &[(Program, u64)]) -> Result<(), String> {
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

/// In a dualmap child: inherited programs read back as traps, and calling one faults (in a
/// grandchild, so the fault is observed rather than fatal).
fn check_uninherited(progs: &[(Program, u64)]) -> Result<(), String> {
    for (p, _) in progs {
        if !progpack::arch::is_all_traps(p.bytes()) {
            return Err(format!(
                "inherited program at {:#x} reads as code",
                p.addr()
            ));
        }
    }
    for (p, v) in progs.iter().step_by(97) {
        let out = run_in_child(|| Err(call_u64(p).to_string()));
        if out.exit != ChildExit::Signaled(libc::SIGSEGV) {
            return Err(format!(
                "calling inherited program {:#x} (value {v:#x}): {:?} {}",
                p.addr(),
                out.exit,
                out.message
            ));
        }
    }
    Ok(())
}

/// The programs a child inherited behave as documented for the backend: unchanged (procmem),
/// or gone (dualmap: traps when read, a fault when called).
fn check_inherited(progs: &[(Program, u64)], refusable: bool) -> Result<(), String> {
    if refusable {
        check_uninherited(progs)
    } else {
        check_programs(progs)
    }
}

/// What the child does with the inherited allocator. `refusable`: whether `Error::Forked`
/// is an acceptable answer (dualmap) or not (procmem).
fn child_work(
    alloc: Allocator,
    mut progs: Vec<(Program, u64)>,
    refusable: bool,
) -> Result<(), String> {
    check_inherited(&progs, refusable)?;
    // Free half of the inherited programs.
    let mut kept = Vec::new();
    for (i, pv) in progs.drain(..).enumerate() {
        if i % 2 == 0 {
            drop(pv);
        } else {
            kept.push(pv);
        }
    }
    let st = alloc.stats();
    if !refusable && st.chunks_quarantined != 0 {
        return Err(format!(
            "procmem child quarantined {} chunks",
            st.chunks_quarantined
        ));
    }
    if refusable && st.chunks_quarantined == 0 {
        return Err("dualmap child freed inherited code without being refused".into());
    }
    check_inherited(&kept, refusable)?;
    // Load new programs: first fit puts the first ones in the parent's holes. A dualmap child
    // is refused there (each refused draft's chunks are quarantined in the child), until the
    // inherited free space is used up and it maps packs of its own.
    // Free chunks, and those the forking thread's run held (the child gives them back).
    let st = alloc.stats();
    let inherited_free = st.chunks_free + st.chunks_cached;
    let (mut ok, mut refused) = (0, 0);
    let mut mine = Vec::new();
    for i in 0..(600 + inherited_free as u64) {
        if ok == 600 {
            break;
        }
        let v = 0xc41d_0000 + i;
        match load(&alloc, v, 40) {
            Ok(p) => {
                ok += 1;
                mine.push((p, v));
            }
            Err(Error::Forked { .. }) if refusable => refused += 1,
            Err(e) => return Err(format!("child load {i}: {e}")),
        }
    }
    check_programs(&mine)?;
    check_inherited(&kept, refusable)?;
    alloc.check_invariants()?;
    if ok != 600
        || (!refusable && refused != 0)
        || (refusable && refused == 0)
        || refused > inherited_free
    {
        return Err(format!(
            "child loads: {ok} ok, {refused} refused, {inherited_free} free chunks inherited"
        ));
    }
    // A fresh allocator in the child works fully.
    let fresh = Allocator::new(config(BackendChoice::Detect)).map_err(|e| e.to_string())?;
    let p = load(&fresh, 77, 100).map_err(|e| format!("fresh allocator in child: {e}"))?;
    if call_u64(&p) != 77 {
        return Err("fresh allocator in child: wrong result".into());
    }
    // A grandchild loads through the (twice) inherited allocator.
    let grand = run_in_child(|| {
        let (mut ok, mut refused) = (0, 0);
        let st = alloc.stats();
        let inherited_free = (st.chunks_free + st.chunks_cached) as u64;
        for i in 0..(300 + inherited_free) {
            if ok == 300 {
                break;
            }
            match load(&alloc, 0x6000 + i, 24) {
                Ok(p) if call_u64(&p) == 0x6000 + i => ok += 1,
                Ok(_) => return Err("grandchild: wrong result".into()),
                Err(Error::Forked { .. }) if refusable => refused += 1,
                Err(e) => return Err(format!("grandchild load: {e}")),
            }
        }
        check_inherited(&kept, refusable)?;
        if ok != 300 || (!refusable && refused > 0) {
            return Err(format!("grandchild: {ok} ok, {refused} refused"));
        }
        Ok(())
    });
    if grand.exit != ChildExit::Exited(0) {
        return Err(format!("grandchild: {:?} {}", grand.exit, grand.message));
    }
    drop(mine);
    drop(kept);
    drop(alloc);
    Ok(())
}

fn fork_keeps_parent_code(backend: BackendChoice, refusable: bool) {
    let alloc = Allocator::new(config(backend)).expect("allocator");
    let mut progs: Vec<(Program, u64)> = (0..3000u64)
        .map(|i| {
            let v = 0x9a4e_0000 + i;
            (load(&alloc, v, 20 + (i as usize % 300)).expect("load"), v)
        })
        .collect();
    // Holes: free every third program.
    let mut i = 0;
    progs.retain(|_| {
        i += 1;
        i % 3 != 0
    });
    assert!(alloc.stats().packs >= 3, "want several packs");
    let before = pack_bytes(&alloc);
    let parent_view: Vec<(usize, u64)> = progs.iter().map(|(p, v)| (p.addr(), *v)).collect();
    // The closure runs only in the child: it takes the child's copy of `progs` (fork copied
    // the address space); the parent's vector is untouched.
    let outcome = run_in_child(|| child_work(alloc.clone(), std::mem::take(&mut progs), refusable));
    outcome.assert_ok();
    // Every byte of every pack is as before, and the programs still run.
    let after = pack_bytes(&alloc);
    assert_eq!(before.len(), after.len(), "pack list changed");
    for ((b0, m0), (b1, m1)) in before.iter().zip(&after) {
        assert_eq!(b0, b1);
        let diff = m0.iter().zip(m1).position(|(x, y)| x != y);
        assert_eq!(diff, None, "the child changed the parent's pack at {b0:#x}");
    }
    check_programs(&progs).expect("parent programs after the child");
    assert_eq!(
        progs
            .iter()
            .map(|(p, v)| (p.addr(), *v))
            .collect::<Vec<_>>(),
        parent_view
    );
    alloc.check_invariants().expect("parent invariants");
    assert_eq!(alloc.stats().chunks_quarantined, 0);
    // The parent goes on: free everything, load again.
    progs.clear();
    let p = load(&alloc, 5, 64).expect("parent load after fork");
    assert_eq!(call_u64(&p), 5);
}

#[test]
fn fork_procmem() {
    fork_keeps_parent_code(BackendChoice::ProcMem, false);
}

#[test]
fn fork_dualmap() {
    fork_keeps_parent_code(BackendChoice::DualMap, true);
}

#[test]
fn fork_dualmap_per_write() {
    fork_keeps_parent_code(BackendChoice::DualMapPerWrite, true);
}

/// A child made by a raw `clone()` system call runs no `pthread_atfork` handler. Once, such a
/// child wrote through the inherited `/proc/self/mem` descriptor, which names the *parent's*
/// memory, and the per-write dualmap child wrote the shared memfd: freeing its copy of the
/// programs trap-filled the parent's code. The wipe-on-fork epoch (`sys::process_epoch`) sees
/// every child: procmem reopens its own descriptor (loads work), and both dualmap modes refuse
/// with `Error::Forked`. In no case does the parent's code change.
#[test]
fn raw_clone_child_cannot_change_parent_code() {
    for backend in [
        BackendChoice::ProcMem,
        BackendChoice::DualMap,
        BackendChoice::DualMapPerWrite,
    ] {
        let alloc = Allocator::new(config(backend.clone())).expect("allocator");
        let mut progs: Vec<(Program, u64)> = (0..200u64)
            .map(|v| (load(&alloc, v, 30).expect("load"), v))
            .collect();
        let before = pack_bytes(&alloc);
        let outcome = run_in_raw_clone_child(|| {
            let progs = std::mem::take(&mut progs);
            drop(progs); // trap-fills (or refuses to) in the child
            match load(&alloc, 1234, 30) {
                Ok(p) if call_u64(&p) == 1234 => Ok(()),
                Ok(_) => Err("wrong result in the child".into()),
                Err(Error::Forked { .. }) => Err("refused".into()),
                Err(e) => Err(format!("unexpected error: {e}")),
            }
        });
        match backend {
            BackendChoice::ProcMem => outcome.assert_ok(),
            _ => {
                assert_eq!(outcome.exit, ChildExit::Exited(1), "{}", outcome.message);
                assert_eq!(outcome.message, "refused");
            }
        }
        assert!(
            pack_bytes(&alloc) == before,
            "{backend:?}: a raw clone child changed the parent's code"
        );
        check_programs(&progs).expect("parent programs");
        alloc.check_invariants().expect("invariants");
    }
}

/// What a child found when it looked at an inherited program after the parent had rewritten
/// that program's chunk: how its bytes read, and what calling it did (called in a grandchild,
/// so a fault is reported rather than ending the child).
fn inspect_inherited(p: &Program, original: &[u8], value: u64) -> String {
    // Reading is safe Rust: whatever the backend did, this must not fault.
    let bytes = p.bytes();
    let bytes = if bytes == original {
        "unchanged"
    } else if progpack::arch::is_all_traps(bytes) {
        "traps"
    } else {
        "CHANGED"
    };
    let call = run_in_child(|| Err(call_u64(p).to_string()));
    let call = match call.exit {
        ChildExit::Exited(1) if call.message == value.to_string() => "same value".to_string(),
        ChildExit::Exited(1) => format!("RETURNED {}", call.message),
        ChildExit::Signaled(libc::SIGSEGV) => "faults".to_string(),
        ChildExit::Signaled(libc::SIGTRAP) => "traps".to_string(),
        other => format!("{other:?} {}", call.message),
    };
    format!("bytes {bytes}, call {call}")
}

/// After a fork the parent frees a program and loads another into the very same chunk, while
/// the child waits; then the child looks at its inherited copy. It must never run (or read)
/// what the parent wrote after the fork. procmem: the child's copy is private (copy-on-write)
/// and keeps working unchanged. dualmap: the child inherits no view of the shared file, so the
/// program reads back as traps and calling it faults: loud, never the parent's new code.
fn rewrite_after_fork(backend: BackendChoice, raw_clone: bool) -> String {
    let alloc = Allocator::new(config(backend.clone()).randomize(false)).expect("allocator");
    let neighbours: Vec<Program> = (0..20u64)
        .map(|v| load(&alloc, 0x100 + v, 40).expect("load"))
        .collect();
    let old = load(&alloc, 1, 40).expect("load");
    let (addr, original) = (old.addr(), old.bytes().to_vec());
    let gate = Gate::new();
    let body = || {
        if !gate.wait() {
            return Err("the parent went away".into());
        }
        Err(inspect_inherited(&old, &original, 1))
    };
    let child = if raw_clone {
        spawn_in_raw_clone_child(body)
    } else {
        spawn_in_child(body)
    };
    drop(old); // trap-filled in the parent
               // Load programs returning 2 until one lands on the freed program's address (the allocator
               // hands out a thread's run of chunks first; trim gives it back).
    alloc.trim();
    let mut news = Vec::new();
    let mut reused = false;
    for _ in 0..4 * PACK / 64 {
        let new = load(&alloc, 2, 40).expect("load");
        reused = new.addr() == addr;
        news.push(new);
        if reused {
            break;
        }
    }
    // Let the child go before any assertion, so a failure cannot leave it waiting.
    gate.open();
    let out = child.wait();
    assert!(
        reused,
        "no new program landed on the freed address {addr:#x}"
    );
    assert_eq!(news.last().map(call_u64), Some(2));
    assert_eq!(
        out.exit,
        ChildExit::Exited(1),
        "{backend:?}: {}",
        out.message
    );
    check_programs(&neighbours.into_iter().zip(0x100u64..).collect::<Vec<_>>())
        .expect("parent programs");
    out.message
}

#[test]
fn parent_rewrite_never_reaches_child() {
    for raw_clone in [false, true] {
        let procmem = rewrite_after_fork(BackendChoice::ProcMem, raw_clone);
        assert_eq!(procmem, "bytes unchanged, call same value", "procmem");
        for backend in [BackendChoice::DualMap, BackendChoice::DualMapPerWrite] {
            let dual = rewrite_after_fork(backend.clone(), raw_clone);
            assert_eq!(dual, "bytes traps, call faults", "{backend:?}");
        }
    }
}

/// Every mapping that belongs to `alloc`'s packs and `progs`' dedicated mappings: the one
/// holding each address, and every other view of the same file (a dualmap alias).
fn views_of(alloc: &Allocator, progs: &[Program]) -> Vec<MapEntry> {
    let maps = maps_snapshot();
    let packs = alloc.occupancy().packs;
    let addrs = packs
        .iter()
        .map(|p| p.base)
        .chain(progs.iter().filter(|p| p.is_dedicated()).map(|p| p.addr()));
    let mut views: Vec<MapEntry> = Vec::new();
    for addr in addrs {
        let m = maps
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
            .expect("a pack is mapped");
        let same_file = maps
            .iter()
            .filter(|v| v == &m || (m.inode != 0 && v.inode == m.inode));
        for v in same_file {
            if !views.contains(v) {
                views.push(v.clone());
            }
        }
    }
    views
}

/// The ranges (start, end) of `maps`.
fn ranges(maps: &[MapEntry]) -> Vec<(usize, usize)> {
    maps.iter().map(|m| (m.start, m.end)).collect()
}

/// Those of `ranges` (of the parent's mappings) that are free in this (child) process.
fn free_here(ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let here = maps_snapshot();
    ranges
        .iter()
        .copied()
        .filter(|&(start, end)| !here.iter().any(|h| h.start < end && start < h.end))
        .collect()
}

/// A child drops its inherited allocator after it has mapped memory of its own where the
/// parent's uninherited views were (`MADV_DONTFORK`: free in the child, so the child's own
/// `mmap` may get them). Dropping must leave the child's memory alone: it never unmaps (or
/// re-reserves over) a range it does not own.
fn child_drop_spares_child_memory(backend: BackendChoice, code_range: bool) -> usize {
    let mut cfg = config(backend.clone());
    if code_range {
        cfg = cfg.code_range(CodeRange::near_this_binary().size(16 * PACK));
    }
    let mut alloc = Some(Allocator::new(cfg).expect("allocator"));
    let a = alloc.as_ref().expect("just made");
    let mut progs: Vec<Program> = (0..1500u64)
        .map(|v| load(a, v, 100).expect("load"))
        .collect();
    progs.push(load(a, 7, 3 * PACK).expect("a large program"));
    let views = ranges(&views_of(a, &progs));
    let outcome = run_in_child(|| {
        let free = free_here(&views);
        let mut mine = Vec::new();
        for &(start, end) in &free {
            // SAFETY: MAP_FIXED_NOREPLACE takes only a free range; nothing refers to it.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    end - start,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as usize != start {
                return Err(format!("could not map {start:#x}..{end:#x}"));
            }
            // SAFETY: just mapped read+write, owned by this test.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0x5a, end - start) };
            mine.push((start, end));
        }
        drop(std::mem::take(&mut progs));
        drop(alloc.take());
        let here = maps_snapshot();
        for &(start, end) in &mine {
            let mapped = here
                .iter()
                .any(|m| m.start <= start && end <= m.end && m.perms.starts_with("rw"));
            if !mapped {
                return Err(format!(
                    "dropping the inherited allocator unmapped the child's own memory at \
                     {start:#x}..{end:#x}"
                ));
            }
            // SAFETY: still mapped read+write (checked above), owned by this test.
            let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, end - start) };
            if bytes.iter().any(|&b| b != 0x5a) {
                return Err(format!("the child's memory at {start:#x} was overwritten"));
            }
        }
        Err(mine.len().to_string())
    });
    assert_eq!(
        outcome.exit,
        ChildExit::Exited(1),
        "{backend:?}: {}",
        outcome.message
    );
    let taken: usize = outcome
        .message
        .parse()
        .unwrap_or_else(|_| panic!("{backend:?} code range {code_range}: {}", outcome.message));
    // The parent's allocator is untouched by all this.
    let a = alloc.as_ref().expect("parent still has it");
    check_programs(&[(load(a, 99, 64).expect("parent load"), 99)]).expect("parent");
    a.check_invariants().expect("parent invariants");
    taken
}

#[test]
fn child_drop_spares_child_memory_at_uninherited_addresses() {
    for code_range in [false, true] {
        // procmem packs are private memory: all inherited, nothing is free in the child.
        assert_eq!(
            child_drop_spares_child_memory(BackendChoice::ProcMem, code_range),
            0
        );
        for backend in [BackendChoice::DualMap, BackendChoice::DualMapPerWrite] {
            let taken = child_drop_spares_child_memory(backend.clone(), code_range);
            // At least the packs' views and the large program's: the test did take the
            // child's memory where the parent's views were.
            assert!(
                taken >= 2,
                "{backend:?} code range {code_range}: {taken} ranges taken"
            );
        }
    }
}

/// The other half of the child's bookkeeping: progpack running in a child first reserves
/// (`PROT_NONE`) the ranges of the views it did not inherit, so nothing new lands where an
/// inherited program's address points; and it releases those reservations with the inherited
/// allocator, leaving nothing behind.
fn child_claims_and_releases(backend: BackendChoice, code_range: bool) -> Result<(), String> {
    let mut cfg = config(backend.clone());
    if code_range {
        cfg = cfg.code_range(CodeRange::near_this_binary().size(16 * PACK));
    }
    let mut alloc = Some(Allocator::new(cfg).expect("allocator"));
    let a = alloc.as_ref().expect("just made");
    let mut progs: Vec<Program> = (0..1500u64)
        .map(|v| load(a, v, 100).expect("load"))
        .collect();
    progs.push(load(a, 7, 3 * PACK).expect("a large program"));
    let exec: Vec<(usize, usize)> = views_of(a, &progs)
        .iter()
        .filter(|m| m.executable())
        .map(|m| (m.start, m.end))
        .collect();
    let outcome = run_in_child(|| {
        if free_here(&exec).len() != exec.len() {
            return Err("the child inherited executable views".into());
        }
        // New packs in the child: first the inherited ranges are claimed.
        let fresh = Allocator::new(config(backend.clone())).map_err(|e| e.to_string())?;
        let mine: Vec<(Program, u64)> = (0..2000u64)
            .map(|v| load(&fresh, v, 100).map(|p| (p, v)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        check_programs(&mine)?;
        let here = maps_snapshot();
        for &(start, end) in &exec {
            let claimed = here
                .iter()
                .any(|m| m.start <= start && end <= m.end && m.perms == "---p");
            if !claimed {
                return Err(format!(
                    "inherited range {start:#x}..{end:#x} is not reserved"
                ));
            }
        }
        drop(mine);
        drop(fresh);
        drop(std::mem::take(&mut progs));
        drop(alloc.take());
        let left = exec.len() - free_here(&exec).len();
        if left != 0 {
            return Err(format!(
                "{left} reservations left after everything was dropped"
            ));
        }
        Ok(())
    });
    if outcome.exit != ChildExit::Exited(0) {
        return Err(format!("{:?}: {}", outcome.exit, outcome.message));
    }
    Ok(())
}

#[test]
fn child_claims_uninherited_ranges_and_releases_them() {
    for code_range in [false, true] {
        for backend in [BackendChoice::DualMap, BackendChoice::DualMapPerWrite] {
            child_claims_and_releases(backend.clone(), code_range)
                .unwrap_or_else(|e| panic!("{backend:?} code range {code_range}: {e}"));
        }
    }
}
