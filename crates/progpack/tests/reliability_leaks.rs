//! Leaks: a long alloc/free cycle keeps the process's mappings, resident memory and pack count
//! flat, and once the allocator is dropped the process's mappings are exactly what they were.
//!
//! Runs in a forked child (one thread, nobody else mapping memory meanwhile). The workload is
//! run once first so that the C library's heap reaches its working size; the comparison is
//! then of the whole of `/proc/self/maps`, line for line, except that a malloc arena (an
//! anonymous read+write mapping followed by the `PROT_NONE` rest of its reservation) is
//! compared as one range: the C library moves the boundary between the two as it grows and
//! trims, but the range it covers is fixed.

mod support;

use progpack::{Allocator, BackendChoice, CodeRange, Config, Program};
use support::{
    call_u64, maps_snapshot, progpack_mappings, ret_imm64, run_in_child, status_kib, MapEntry, Rng,
};

/// `/proc/self/maps` with each malloc arena (anonymous `rw-p` directly followed by anonymous
/// `---p`) folded into one entry.
fn maps_normalized() -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for m in maps_snapshot() {
        if let Some(prev) = out.last_mut() {
            let anon = |e: &MapEntry| e.inode == 0 && e.path.is_empty();
            if anon(prev)
                && anon(&m)
                && prev.perms == "rw-p"
                && m.perms == "---p"
                && prev.end == m.start
            {
                prev.end = m.end;
                prev.perms = "arena".into();
                continue;
            }
        }
        out.push(m);
    }
    out
}

const PACK: usize = 64 << 10;
const ROUNDS: usize = 30;

struct Round {
    progpack_maps: usize,
    rss_kib: usize,
    packs: usize,
}

fn load(alloc: &Allocator, v: u64, len: usize) -> Result<Program, String> {
    let mut d = alloc.draft(len, 1).map_err(|e| e.to_string())?;
    d.image_mut()[..ret_imm64(v).len()].copy_from_slice(&ret_imm64(v));
    d.finalize().map_err(|e| e.to_string())
}

/// One allocator through `ROUNDS` rounds of loading ~1000 programs and freeing them all.
fn cycle(config: &Config, seed: u64) -> Result<Vec<Round>, String> {
    let alloc = Allocator::new(config.clone()).map_err(|e| e.to_string())?;
    let mut rng = Rng(seed);
    let mut rounds = Vec::new();
    for r in 0..ROUNDS {
        let mut progs: Vec<(Program, u64)> = Vec::new();
        for i in 0..800u64 {
            let v = (r as u64) << 32 | i;
            progs.push((load(&alloc, v, ret_imm64(0).len() + rng.below(300))?, v));
        }
        let mut b = alloc.batch();
        let mut vals = Vec::new();
        for i in 0..200u64 {
            let v = (r as u64) << 32 | (1000 + i);
            let s = b
                .push(ret_imm64(0).len() + rng.below(100), 1)
                .map_err(|e| e.to_string())?;
            s.image[..ret_imm64(v).len()].copy_from_slice(&ret_imm64(v));
            vals.push(v);
        }
        for (p, v) in b
            .finalize()
            .map_err(|e| e.to_string())?
            .into_iter()
            .zip(vals)
        {
            progs.push((p, v));
        }
        for i in 0..3u64 {
            let v = (r as u64) << 32 | (2000 + i);
            progs.push((load(&alloc, v, PACK + rng.below(PACK))?, v));
        }
        drop(alloc.draft(100, 1)); // never finalized
        for (p, v) in &progs {
            if call_u64(p) != *v {
                return Err(format!("round {r}: wrong result"));
            }
        }
        // Free in random order.
        while !progs.is_empty() {
            let i = rng.below(progs.len());
            progs.swap_remove(i);
        }
        alloc.check_invariants()?;
        // This thread's run still holds a few chunks (of at most one pack): give them back.
        alloc.trim();
        let st = alloc.stats();
        if st.allocations != 0 || st.chunks_used != 0 || st.dedicated_mappings != 0 {
            return Err(format!("round {r}: left after freeing everything: {st:?}"));
        }
        rounds.push(Round {
            progpack_maps: progpack_mappings().iter().map(MapEntry::len).sum(),
            rss_kib: status_kib("VmRSS"),
            packs: st.packs,
        });
    }
    Ok(rounds)
}

fn leaks(config: Config) -> Result<String, String> {
    let reserve = 1;
    let config = config.pack_size(PACK).reserve_packs(reserve).shards(1);
    cycle(&config, 1)?; // warm-up: the heap reaches its working size
    let before = maps_normalized();
    let rounds = cycle(&config, 2)?;
    let after = maps_normalized();
    if after != before {
        let gone: Vec<_> = before.iter().filter(|m| !after.contains(m)).collect();
        let new: Vec<_> = after.iter().filter(|m| !before.contains(m)).collect();
        return Err(format!(
            "mappings differ after the drop: gone {gone:?}, new {new:?}"
        ));
    }
    // Flat: the same after the second round as after the last.
    let (second, last) = (&rounds[1], &rounds[ROUNDS - 1]);
    if last.packs > reserve || rounds.iter().any(|r| r.packs > reserve) {
        return Err("more empty packs kept than the reserve".into());
    }
    if last.progpack_maps > second.progpack_maps {
        return Err(format!(
            "progpack mappings grew from {} to {} bytes",
            second.progpack_maps, last.progpack_maps
        ));
    }
    if last.rss_kib > second.rss_kib + 2048 {
        return Err(format!(
            "RSS grew from {} KiB to {} KiB",
            second.rss_kib, last.rss_kib
        ));
    }
    Ok(format!(
        "{ROUNDS} rounds: RSS {} -> {} KiB, progpack mappings {} -> {} bytes, maps identical after drop",
        second.rss_kib, last.rss_kib, second.progpack_maps, last.progpack_maps
    ))
}

fn run(config: Config) {
    let out = run_in_child(|| leaks(config).and_then(Err));
    assert_eq!(out.exit, support::ChildExit::Exited(1), "{}", out.message);
    assert!(
        out.message.contains("maps identical after drop"),
        "{}",
        out.message
    );
    eprintln!("{}", out.message);
}

#[test]
fn no_leaks_procmem() {
    run(Config::default().backend(BackendChoice::ProcMem));
}

#[test]
fn no_leaks_dualmap() {
    run(Config::default().backend(BackendChoice::DualMap));
}

#[test]
fn no_leaks_dualmap_per_write() {
    run(Config::default().backend(BackendChoice::DualMapPerWrite));
}

#[test]
fn no_leaks_code_range() {
    run(Config::default()
        .backend(BackendChoice::ProcMem)
        .code_range(CodeRange::near_this_binary().size(64 << 20)));
}
