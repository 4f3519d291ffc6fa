//! Fuzz target `bpf_elf`: hostile ELF objects through the loader, and random operations on
//! maps.
//!
//! Input layout: byte 0 selects the mode.
//! - bit 0 clear: the rest is an ELF object (start the corpus from
//!   `crates/progpack-bpf/tests/elf/*.o`). Loading must return an object or an `ElfError`,
//!   never panic or crash; every program of a loaded object then runs on both engines over
//!   16 bytes of memory with a small instruction limit (a result or a `RunError`), and every
//!   map takes a few host operations.
//! - bit 0 set: map operations. Byte 1 picks a map kind, bytes 2..6 its sizes; the rest is a
//!   sequence of operations (lookup, update with each flag, delete, ring buffer output and
//!   consume) checked against a model (`std` maps of the expected contents) for the hash and
//!   array kinds.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use progpack_bpf::{Helpers, JitOptions, Map, MapDef, MapError, MapKind, RunOptions, UpdateFlag, Vm};

fn vm() -> &'static Vm {
    static VM: OnceLock<Vm> = OnceLock::new();
    VM.get_or_init(|| {
        let mut vm = Vm::new(Helpers::standard());
        vm.set_run_options(RunOptions {
            instruction_limit: 10_000,
        });
        let alloc = progpack_bpf::jit::shared_allocator().expect("JIT allocator");
        vm.enable_jit(alloc, JitOptions::default());
        vm
    })
}

fn elf(data: &[u8]) {
    let Ok(obj) = vm().load_elf(data) else {
        return;
    };
    for p in obj.programs() {
        let mut mem = [0u8; 16];
        let _ = p.program.run_interp(&mut mem);
        let _ = p.program.run_jit(&mut mem);
    }
    for m in obj.maps() {
        let d = m.def();
        let key = vec![1u8; d.key_size as usize];
        let value = vec![2u8; d.value_size as usize];
        let _ = m.update(&key, &value, UpdateFlag::Any);
        let _ = m.lookup(&key);
        let _ = m.lookup_per_cpu(&key);
        let _ = m.keys();
        let _ = m.delete(&key);
        m.consume(|_| {});
    }
}

fn maps(data: &[u8]) {
    let Some((&[kind, ks, vs, max, _], ops)) = data.split_first_chunk::<5>() else {
        return;
    };
    let kinds = [
        MapKind::Hash,
        MapKind::Array,
        MapKind::LruHash,
        MapKind::PerCpuHash,
        MapKind::PerCpuArray,
        MapKind::RingBuf,
    ];
    let kind = kinds[kind as usize % kinds.len()];
    let def = MapDef {
        kind,
        key_size: if matches!(kind, MapKind::Array | MapKind::PerCpuArray) {
            4
        } else {
            (ks % 9) as u32
        },
        value_size: (vs % 17) as u32,
        max_entries: if kind == MapKind::RingBuf {
            1 << (max % 12)
        } else {
            (max % 9) as u32
        },
        flags: 0,
    };
    let Ok(map) = Map::new("fuzz", def) else {
        return;
    };
    let (k, v) = (def.key_size as usize, def.value_size as usize);
    // The model: key -> value, for the kinds whose contents it predicts.
    let modelled = matches!(kind, MapKind::Hash | MapKind::Array);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    if kind == MapKind::Array {
        for i in 0..def.max_entries {
            model.insert(i.to_le_bytes().to_vec(), vec![0; v]);
        }
    }
    for op in ops.chunks(3) {
        let &[code, kb, vb] = op else { break };
        let mut key = vec![0u8; k];
        if let Some(b) = key.first_mut() {
            *b = kb % 12;
        }
        let value = vec![vb; v];
        match code % 6 {
            0 => {
                let got = map.lookup(&key);
                if modelled {
                    assert_eq!(got.as_ref(), model.get(&key));
                }
            }
            f @ 1..=3 => {
                let flag = [UpdateFlag::Any, UpdateFlag::NoExist, UpdateFlag::Exist][f as usize - 1];
                let r = map.update(&key, &value, flag);
                if modelled {
                    let exists = model.contains_key(&key);
                    let expect = match (kind, flag, exists) {
                        (MapKind::Array, _, false) => Err(MapError::IndexOutOfRange),
                        (MapKind::Array, UpdateFlag::NoExist, true) => Err(MapError::Exists),
                        (_, UpdateFlag::NoExist, true) => Err(MapError::Exists),
                        (_, UpdateFlag::Exist, false) => Err(MapError::NotFound),
                        (MapKind::Hash, _, false) if model.len() >= def.max_entries as usize => {
                            Err(MapError::Full)
                        }
                        _ => Ok(()),
                    };
                    assert_eq!(r, expect, "{kind:?} {flag:?} exists={exists}");
                    if r.is_ok() {
                        model.insert(key, value);
                    }
                }
            }
            4 => {
                let r = map.delete(&key);
                if kind == MapKind::Hash {
                    assert_eq!(r.is_ok(), model.remove(&key).is_some());
                }
            }
            _ => {
                if kind == MapKind::RingBuf {
                    let data = vec![vb; kb as usize];
                    map.ring_output(&data);
                    if code & 0x80 != 0 {
                        map.consume(|r| assert!(r.iter().all(|&b| b == r[0])));
                    }
                } else if modelled {
                    let mut keys = map.keys();
                    keys.sort();
                    let mut want: Vec<_> = model.keys().cloned().collect();
                    want.sort();
                    assert_eq!(keys, want);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m & 1 == 0 => elf(rest),
        Some((_, rest)) => maps(rest),
        None => {}
    }
});
