//! Hash map speed: the flow counter of the CLI's `ebpf-maps` workload (per packet, look the TCP
//! source port up in a hash map of 65,536 entries and write count + 1 back with
//! `map_update_elem`) on both engines, the same through the host API, and a native
//! `std::collections::HashMap<u32, u64>` doing get + insert.
//!
//! `cargo bench -p progpack-bpf --bench maps [-- SYSTEM... [--packets N] [--passes N]]`, with
//! SYSTEM among `jit`, `interp`, `host`, `lru-jit`, `lru-full-jit`, `native` (default: all).
//! `lru-full-jit` counts in an LRU map of 16,384 entries, a quarter of the ports: it stays
//! full, and most packets evict a key. Prints the fastest pass in ns per packet. Small
//! `--packets` and `--passes 1` suit callgrind.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use progpack_bpf::insn::{encode_slots, LD_DW_IMM, PSEUDO_MAP_FD};
use progpack_bpf::jit::shared_allocator;
use progpack_bpf::{asm, BpfProgram, Helpers, JitOptions, Map, MapDef, MapKind, UpdateFlag, Vm};

/// Bytes between packet starts.
const STRIDE: usize = 128;

/// The CLI workload's program (shared with it): lookup, then update with count + 1.
const PROGRAM: &str = include_str!("flow_counter.s");

/// Packets of 64..=128 bytes with a uniformly random source port at bytes 34..36.
fn packets(n: usize) -> (Vec<u8>, Vec<usize>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; n * STRIDE];
    let mut lens = Vec::with_capacity(n);
    for p in buf.chunks_exact_mut(STRIDE) {
        let r = next();
        p[34..36].copy_from_slice(&(r as u16).to_be_bytes());
        lens.push(64 + (r >> 32) as usize % 65);
    }
    (buf, lens)
}

fn flow_map(kind: MapKind, max_entries: u32) -> Arc<Map> {
    let def = MapDef {
        kind,
        key_size: 4,
        value_size: 8,
        max_entries,
        flags: 0,
    };
    Map::new("flows", def).expect("map")
}

fn load(map: &Arc<Map>, jit: bool) -> BpfProgram {
    let mut slots = asm::assemble(PROGRAM).expect("assembles");
    for s in slots.iter_mut().filter(|s| s.opc == LD_DW_IMM) {
        s.src = PSEUDO_MAP_FD;
    }
    let mut vm = Vm::new(Helpers::standard());
    if jit {
        vm.enable_jit(
            shared_allocator().expect("allocator"),
            JitOptions::default(),
        );
    }
    vm.load_with_maps(&encode_slots(&slots), &[Arc::clone(map)])
        .expect("loads")
}

/// Fastest of `passes` timed passes after a warm-up one, in ns per packet.
fn time(buf: &mut [u8], lens: &[usize], passes: usize, mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut best = f64::INFINITY;
    for pass in 0..=passes {
        let start = Instant::now();
        for (p, &len) in buf.chunks_exact_mut(STRIDE).zip(lens) {
            f(&mut p[..len]);
        }
        let ns = start.elapsed().as_nanos() as f64 / lens.len() as f64;
        if pass > 0 {
            best = best.min(ns);
        }
    }
    best
}

fn run(system: &str, buf: &mut [u8], lens: &[usize], passes: usize) -> Option<f64> {
    Some(match system {
        "jit" | "interp" | "lru-jit" | "lru-full-jit" => {
            let (kind, max) = match system {
                "lru-jit" => (MapKind::LruHash, 65536),
                "lru-full-jit" => (MapKind::LruHash, 16384),
                _ => (MapKind::Hash, 65536),
            };
            let map = flow_map(kind, max);
            let jit = system != "interp";
            let prog = load(&map, jit);
            time(buf, lens, passes, |p| {
                let r = if jit {
                    prog.run_jit(p).ok()
                } else {
                    prog.run_interp(p).ok()
                };
                black_box(r);
            })
        }
        "host" => {
            let map = flow_map(MapKind::Hash, 65536);
            time(buf, lens, passes, |p| {
                let key = (u16::from_le_bytes([p[34], p[35]]) as u32).to_le_bytes();
                let n = map.lookup(&key).map_or(0, |v| {
                    u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
                });
                let _ = map.update(&key, &(n + 1).to_le_bytes(), UpdateFlag::Any);
            })
        }
        "native" => {
            let mut m: HashMap<u32, u64> = HashMap::with_capacity(65536);
            time(buf, lens, passes, |p| {
                let port = u16::from_le_bytes([p[34], p[35]]) as u32;
                let n = m.get(&port).copied().unwrap_or(0) + 1;
                m.insert(port, black_box(n));
            })
        }
        _ => return None,
    })
}

fn main() {
    let mut systems = Vec::new();
    let mut n = 200_000;
    let mut passes = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--packets" => n = args.next().and_then(|v| v.parse().ok()).unwrap_or(n),
            "--passes" => passes = args.next().and_then(|v| v.parse().ok()).unwrap_or(passes),
            "--bench" => {}
            s => systems.push(s.to_owned()),
        }
    }
    if systems.is_empty() {
        systems = ["jit", "interp", "host", "lru-jit", "lru-full-jit", "native"]
            .map(String::from)
            .to_vec();
    }
    let (mut buf, lens) = packets(n);
    for s in &systems {
        match run(s, &mut buf, &lens, passes) {
            Some(ns) => println!("{s:<8} {ns:8.2} ns/packet"),
            None => eprintln!("unknown system {s}"),
        }
    }
}
