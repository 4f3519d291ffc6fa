//! fork(): nothing a child does may change the parent's code, and the child's own use of the
//! inherited allocator is either correct or refused with a clear error.
//!
//! For each backend the parent loads programs (leaving holes), copies every byte of every
//! pack, and forks. The child calls the inherited programs, frees half of them, loads hundreds
//! of new ones (into the parent's holes first: first fit) and calls them, makes a fresh
//! allocator and uses it, and forks a grandchild that loads too. Then the parent checks that
//! every byte of every pack is as before, that its programs still run, and goes on loading.
//!
//! procmem: the child reopens `/proc/self/mem` (its own memory, copy-on-write), so its loads
//! work. dualmap: the packs are a shared memfd, so a child's write would land in the parent's
//! code; the backend refuses it with `Error::Forked`, and the refused chunks are quarantined
//! (in the child); loads then go to packs the child maps itself, which work.

mod support;

use progpack::{Allocator, BackendChoice, Config, Error, Program};
use support::{call_u64, ret_imm64, run_in_child, run_in_raw_clone_child, ChildExit};

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

/// What the child does with the inherited allocator. `refusable`: whether `Error::Forked`
/// is an acceptable answer (dualmap) or not (procmem).
fn child_work(
    alloc: Allocator,
    mut progs: Vec<(Program, u64)>,
    refusable: bool,
) -> Result<(), String> {
    check_programs(&progs)?;
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
    check_programs(&kept)?;
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
    check_programs(&kept)?;
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
        check_programs(&kept)?;
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
