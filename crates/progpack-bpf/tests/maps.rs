//! Maps through the host API and through programs: the kernel's update flags, LRU eviction,
//! per-CPU values, and map values bounds-checked by both engines with the same errors.

use std::sync::Arc;

use progpack_bpf::insn::{encode_slots, PSEUDO_MAP_FD, PSEUDO_MAP_VALUE};
use progpack_bpf::jit::shared_allocator;
use progpack_bpf::{
    asm, BpfProgram, Error, Helpers, JitOptions, Map, MapDef, MapError, MapKind, RunError,
    UpdateFlag, Vm,
};

fn def(kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapDef {
    MapDef {
        kind,
        key_size,
        value_size,
        max_entries,
        flags: 0,
    }
}

fn k(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

#[test]
fn hash_update_flags_follow_the_kernel() {
    let m = Map::new("h", def(MapKind::Hash, 4, 8, 2)).unwrap();
    let v = |x: u64| x.to_le_bytes();
    assert_eq!(
        m.update(&k(1), &v(1), UpdateFlag::Exist),
        Err(MapError::NotFound)
    );
    m.update(&k(1), &v(1), UpdateFlag::NoExist).unwrap();
    assert_eq!(
        m.update(&k(1), &v(2), UpdateFlag::NoExist),
        Err(MapError::Exists)
    );
    m.update(&k(1), &v(3), UpdateFlag::Exist).unwrap();
    m.update(&k(2), &v(4), UpdateFlag::Any).unwrap();
    assert_eq!(m.update(&k(3), &v(5), UpdateFlag::Any), Err(MapError::Full));
    assert_eq!(m.lookup(&k(1)), Some(v(3).to_vec()));
    m.delete(&k(1)).unwrap();
    assert_eq!(m.delete(&k(1)), Err(MapError::NotFound));
    m.update(&k(3), &v(5), UpdateFlag::Any).unwrap();
    let mut keys = m.keys();
    keys.sort();
    assert_eq!(keys, [k(2).to_vec(), k(3).to_vec()]);
    assert_eq!(UpdateFlag::from_u64(4), Err(MapError::BadFlags(4)));
    assert_eq!(MapError::Exists.errno(), 17);
}

#[test]
fn arrays_have_every_index_and_no_deletion() {
    let m = Map::new("a", def(MapKind::Array, 4, 4, 3)).unwrap();
    assert_eq!(m.lookup(&k(2)), Some(vec![0; 4]));
    assert_eq!(m.lookup(&k(3)), None);
    assert_eq!(
        m.update(&k(0), &[1; 4], UpdateFlag::NoExist),
        Err(MapError::Exists)
    );
    assert_eq!(
        m.update(&k(3), &[1; 4], UpdateFlag::Any),
        Err(MapError::IndexOutOfRange)
    );
    m.update(&k(0), &[1, 2, 3, 4], UpdateFlag::Exist).unwrap();
    assert_eq!(m.lookup(&k(0)), Some(vec![1, 2, 3, 4]));
    assert!(m.delete(&k(0)).is_err());
    assert!(Map::new("bad", def(MapKind::Array, 8, 4, 3)).is_err());
    assert!(matches!(
        Map::new("huge", def(MapKind::Array, 4, 1 << 20, 1 << 20)),
        Err(MapError::TooLarge { .. })
    ));
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let m = Map::new("l", def(MapKind::LruHash, 4, 8, 3)).unwrap();
    for i in 0..3 {
        m.update(&k(i), &[i as u8; 8], UpdateFlag::Any).unwrap();
    }
    m.lookup(&k(0)); // 1 is now the oldest
    m.update(&k(9), &[9; 8], UpdateFlag::Any).unwrap();
    assert_eq!(m.lookup(&k(1)), None);
    assert!(m.lookup(&k(0)).is_some() && m.lookup(&k(2)).is_some());
    assert_eq!(m.lookup(&k(9)), Some(vec![9; 8]));
}

#[test]
fn per_cpu_hash_values_are_per_thread() {
    let m = Map::new("p", def(MapKind::PerCpuHash, 4, 8, 4)).unwrap();
    m.update(&k(1), &7u64.to_le_bytes(), UpdateFlag::Any)
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Present, but this thread's value starts at zero.
            assert_eq!(m.lookup(&k(1)), Some(vec![0; 8]));
            m.update(&k(1), &5u64.to_le_bytes(), UpdateFlag::Exist)
                .unwrap();
        });
    });
    assert_eq!(m.lookup(&k(1)), Some(7u64.to_le_bytes().to_vec()));
    let all = m.lookup_per_cpu(&k(1)).unwrap();
    let mut nonzero: Vec<u64> = all
        .iter()
        .map(|v| u64::from_le_bytes(v[..8].try_into().unwrap()))
        .filter(|&v| v != 0)
        .collect();
    nonzero.sort();
    assert_eq!(nonzero, [5, 7]);
}

fn vm() -> Vm {
    let mut vm = Vm::new(Helpers::standard());
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    vm
}

/// Loads `text`, whose `lddw`s with imm 0xfd0/0xfd1 become map fd 0 (handle) / map value of
/// fd 0 at the second slot's offset.
fn load(vm: &Vm, text: &str, maps: &[Arc<Map>]) -> BpfProgram {
    let mut slots = asm::assemble(text).unwrap();
    for s in slots.iter_mut().filter(|s| s.opc == 0x18) {
        match s.imm {
            0xfd0 => s.src = PSEUDO_MAP_FD,
            0xfd1 => s.src = PSEUDO_MAP_VALUE,
            _ => continue,
        }
        s.imm = 0;
    }
    vm.load_with_maps(&encode_slots(&slots), maps).unwrap()
}

fn both(p: &BpfProgram) -> Result<u64, RunError> {
    let i = p.run_interp(&mut []);
    let j = p.run_jit(&mut []).map_err(|e| match e {
        Error::Run(r) => r,
        e => panic!("{e}"),
    });
    assert_eq!(i, j);
    i
}

#[test]
fn map_values_are_bounds_checked_like_memory() {
    let vm = vm();
    let m = Map::new("a", def(MapKind::Array, 4, 16, 2)).unwrap();
    let m = vec![m];
    // Look up index 1, write its last byte, read it back.
    let ok = "stw [%r10-4], 1
              lddw %r1, 0xfd0
              mov %r2, %r10
              add %r2, -4
              call 1
              jeq %r0, 0, +3
              stb [%r0+15], 0x5a
              ldxb %r0, [%r0+15]
              exit
              mov %r0, 99
              exit";
    assert_eq!(both(&load(&vm, ok, &m)), Ok(0x5a));
    assert_eq!(m[0].lookup(&k(1)).unwrap()[15], 0x5a);
    // One byte past the arena (index 1 is the last value): out of bounds on both engines.
    let past = ok.replace("stb [%r0+15], 0x5a", "stb [%r0+16], 0x5a");
    let p = load(&vm, &past, &m);
    let err = both(&p).unwrap_err();
    assert!(
        matches!(err, RunError::OutOfBounds { len: 1, pc: 7, .. }),
        "{err}"
    );
    // Direct value access (lddw src 2), with an offset.
    let direct = "lddw %r1, 0xfd1\nldxb %r0, [%r1+31]\nexit";
    let mut slots = asm::assemble(direct).unwrap();
    slots[0].src = PSEUDO_MAP_VALUE;
    slots[0].imm = 0;
    slots[1].imm = 0; // offset 0 of value 0; +31 reaches the last byte of value 1
    let p = vm.load_with_maps(&encode_slots(&slots), &m).unwrap();
    assert_eq!(both(&p), Ok(0x5a));
    // A bad fd and a value offset outside the value are load errors.
    slots[0].imm = 1;
    assert!(matches!(
        vm.load_with_maps(&encode_slots(&slots), &m),
        Err(Error::Pseudo(_))
    ));
    slots[0].imm = 0;
    slots[1].imm = 16;
    assert!(matches!(
        vm.load_with_maps(&encode_slots(&slots), &m),
        Err(Error::Pseudo(_))
    ));
}

#[test]
fn read_only_maps_reject_program_stores() {
    let vm = vm();
    let ro = Map::new_read_only("ro", def(MapKind::Array, 4, 8, 1)).unwrap();
    ro.update(&k(0), &[3; 8], UpdateFlag::Any).unwrap();
    let maps = vec![ro];
    let read = load(&vm, "lddw %r1, 0xfd1\nldxb %r0, [%r1]\nexit", &maps);
    assert_eq!(both(&read), Ok(3));
    let write = load(
        &vm,
        "lddw %r1, 0xfd1\nstb [%r1], 1\nmov %r0, 0\nexit",
        &maps,
    );
    assert!(matches!(
        both(&write),
        Err(RunError::OutOfBounds { pc: 2, .. })
    ));
}

#[test]
fn helpers_refuse_bad_pointers_and_handles() {
    let vm = vm();
    let m = vec![Map::new("h", def(MapKind::Hash, 4, 8, 4)).unwrap()];
    // Key pointer 0 (no memory): lookup returns NULL, update -EFAULT.
    let p = load(&vm, "lddw %r1, 0xfd0\nmov %r2, 0\ncall 1\nexit", &m);
    assert_eq!(both(&p), Ok(0));
    let p = load(
        &vm,
        "lddw %r1, 0xfd0\nmov %r2, 0\nmov %r3, 0\nmov %r4, 0\ncall 2\nexit",
        &m,
    );
    assert_eq!(both(&p), Ok((-14i64) as u64));
    // A made-up handle: -EINVAL.
    let p = load(
        &vm,
        "mov %r1, 12345\nmov %r2, %r10\nadd %r2, -8\nmov %r3, %r2\nmov %r4, 0\ncall 2\nexit",
        &m,
    );
    assert_eq!(both(&p), Ok((-22i64) as u64));
    // Bad update flags: -EINVAL, and nothing inserted.
    let p = load(
        &vm,
        "stdw [%r10-8], 0\nlddw %r1, 0xfd0\nmov %r2, %r10\nadd %r2, -8\nmov %r3, %r2\nmov %r4, 7\ncall 2\nexit",
        &m,
    );
    assert_eq!(both(&p), Ok((-22i64) as u64));
    assert!(m[0].keys().is_empty());
}

#[test]
fn trace_printk_writes_to_the_sink() {
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut vm = vm();
    let sink = Arc::clone(&lines);
    vm.env_mut().set_trace_sink(Arc::new(move |l: &str| {
        sink.lock().unwrap().push(l.to_owned())
    }));
    // "n=%d\n" on the stack.
    let p = vm
        .load_asm(
            "lddw %r1, 0x000a64253d6e
             stxdw [%r10-8], %r1
             mov %r1, %r10
             add %r1, -8
             mov %r2, 6
             mov %r3, -5
             call 6
             exit",
        )
        .unwrap();
    assert_eq!(p.run_interp(&mut []).unwrap(), 5);
    assert_eq!(p.run_jit(&mut []).unwrap(), 5);
    assert_eq!(*lines.lock().unwrap(), ["n=-5", "n=-5"]);
}

/// Lookups take no lock: while other threads insert and delete (enough to force rebuilds of
/// the index), keys that stay present are always found with their value, for keys that are
/// their own tag (4 bytes) and keys compared in full (12 bytes).
#[test]
fn lookups_stay_right_while_other_threads_churn() {
    for key_size in [4usize, 12] {
        let m = Map::new("c", def(MapKind::Hash, key_size as u32, 8, 512)).unwrap();
        let key = |i: u32| {
            let mut k = vec![0x5a; key_size];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k
        };
        for i in 0..32 {
            m.update(&key(i), &(i as u64 * 3).to_le_bytes(), UpdateFlag::NoExist)
                .unwrap();
        }
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let (m, key) = (&m, &key);
                s.spawn(move || {
                    for round in 0..200u32 {
                        let base = 1_000 + t * 1_000_000 + round * 200;
                        for i in base..base + 200 {
                            m.update(&key(i), &[1; 8], UpdateFlag::NoExist).unwrap();
                        }
                        for i in base..base + 200 {
                            m.delete(&key(i)).unwrap();
                        }
                    }
                });
            }
            for _ in 0..2 {
                let (m, key) = (&m, &key);
                s.spawn(move || {
                    for _ in 0..2_000 {
                        for i in 0..32 {
                            let v = m.lookup(&key(i)).expect("a present key is found");
                            assert_eq!(v, (i as u64 * 3).to_le_bytes());
                        }
                    }
                });
            }
        });
        let mut keys = m.keys();
        keys.sort();
        assert_eq!(keys, (0..32).map(key).collect::<Vec<_>>());
    }
}

/// Programs on several threads counting into shared hash map values through
/// `map_lookup_elem` pointers and `map_update_elem`: every update lands (updates of one key
/// are serialised by the map; each thread counts its own keys).
#[test]
fn programs_on_many_threads_share_a_hash_map() {
    let vm = vm();
    let m = vec![Map::new("h", def(MapKind::Hash, 4, 8, 64)).unwrap()];
    // key = first input byte; value += 1 via lookup (0 if absent) and update.
    let p = load(
        &vm,
        "ldxb %r2, [%r1]
         stxw [%r10-4], %r2
         mov %r7, 0
         lddw %r1, 0xfd0
         mov %r2, %r10
         add %r2, -4
         call 1
         jeq %r0, 0, +1
         ldxdw %r7, [%r0]
         add %r7, 1
         stxdw [%r10-16], %r7
         lddw %r1, 0xfd0
         mov %r2, %r10
         add %r2, -4
         mov %r3, %r10
         add %r3, -16
         mov %r4, 0
         call 2
         exit",
        &m,
    );
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let p = &p;
            s.spawn(move || {
                for n in 0..2_000u32 {
                    let mut input = [t * 8 + (n % 8) as u8];
                    if n % 2 == 0 {
                        assert_eq!(p.run_jit(&mut input).unwrap(), 0);
                    } else {
                        assert_eq!(p.run_interp(&mut input).unwrap(), 0);
                    }
                }
            });
        }
    });
    let mut keys = m[0].keys();
    keys.sort();
    assert_eq!(keys, (0..32u32).map(|i| k(i).to_vec()).collect::<Vec<_>>());
    for i in 0..32 {
        assert_eq!(m[0].lookup(&k(i)), Some(250u64.to_le_bytes().to_vec()));
    }
}
