//! clang-compiled objects (`tests/elf/*.c`, committed as `.o`) load and run on both engines
//! with the same results, which are also checked against what the C code computes.

use std::path::PathBuf;
use std::sync::Arc;

use progpack_bpf::jit::shared_allocator;
use progpack_bpf::{BpfProgram, Helpers, JitOptions, Object, UpdateFlag, Vm};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Interp,
    Jit,
}

const ENGINES: [Engine; 2] = [Engine::Interp, Engine::Jit];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/elf")
}

fn vm() -> Vm {
    let mut vm = Vm::new(Helpers::standard());
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    vm
}

fn load(name: &str) -> Object {
    let bytes = std::fs::read(dir().join(format!("{name}.o"))).unwrap();
    vm().load_elf(&bytes).unwrap()
}

fn run(p: &BpfProgram, e: Engine, mem: &mut [u8]) -> u64 {
    match e {
        Engine::Interp => p.run_interp(mem).unwrap(),
        Engine::Jit => p.run_jit(mem).unwrap(),
    }
}

fn packet(proto: u8) -> Vec<u8> {
    let mut p = vec![0u8; 34];
    p[23] = proto;
    p
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

#[test]
fn packet_counter_keyed_by_protocol() {
    for e in ENGINES {
        let obj = load("counter");
        let p = obj.program("count_by_proto").unwrap();
        let got: Vec<u64> = [6, 6, 17, 6, 17]
            .into_iter()
            .map(|proto| run(p, e, &mut packet(proto)))
            .chain([run(p, e, &mut [0u8; 10])])
            .collect();
        assert_eq!(got, [1, 2, 1, 3, 2, 0], "{e:?}");
        let m = obj.map("proto_count").unwrap();
        assert_eq!(m.lookup(&6u32.to_le_bytes()).map(|v| u64_of(&v)), Some(3));
        assert_eq!(m.lookup(&17u32.to_le_bytes()).map(|v| u64_of(&v)), Some(2));
        assert_eq!(m.keys().len(), 2);
        // The host's updates are what the program sees.
        m.update(
            &6u32.to_le_bytes(),
            &100u64.to_le_bytes(),
            UpdateFlag::Exist,
        )
        .unwrap();
        assert_eq!(run(p, e, &mut packet(6)), 101);
    }
}

#[test]
fn threads_share_maps_on_both_engines_at_once() {
    const THREADS: usize = 4;
    const RUNS: u64 = 2000;
    let obj = load("counter");
    let p = obj.program("count_by_proto").unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let e = ENGINES[t % 2];
            s.spawn(move || {
                let mut pkt = packet(6);
                for _ in 0..RUNS {
                    run(p, e, &mut pkt);
                }
            });
        }
    });
    let m = obj.map("proto_count").unwrap();
    assert_eq!(
        m.lookup(&6u32.to_le_bytes()).map(|v| u64_of(&v)),
        Some(THREADS as u64 * RUNS)
    );
}

#[test]
fn per_cpu_counter_is_per_thread() {
    for e in ENGINES {
        let obj = load("percpu");
        let p = obj.program("count_bytes").unwrap();
        assert_eq!(run(p, e, &mut [0; 10]), 10);
        assert_eq!(run(p, e, &mut [0; 20]), 30);
        // Another thread has its own slot.
        let other = std::thread::scope(|s| s.spawn(|| run(p, e, &mut [0; 5])).join().unwrap());
        assert_eq!(other, 5, "{e:?}");
        let m = obj.map("bytes_per_cpu").unwrap();
        assert_eq!(m.def().kind, progpack_bpf::MapKind::PerCpuArray);
        let all = m.lookup_per_cpu(&0u32.to_le_bytes()).unwrap();
        let totals: Vec<u64> = all.iter().map(|v| u64_of(v)).filter(|&v| v != 0).collect();
        assert_eq!(totals.iter().sum::<u64>(), 35);
        assert_eq!(totals.len(), 2, "{totals:?}");
        assert_eq!(m.lookup(&0u32.to_le_bytes()).map(|v| u64_of(&v)), Some(30));
    }
}

#[test]
fn ring_buffer_events_reach_the_host() {
    for e in ENGINES {
        let obj = load("ringbuf");
        let p = obj.program("produce").unwrap();
        assert_eq!(run(p, e, &mut [1, 2, 3, 4, 5]), 2);
        assert_eq!(run(p, e, &mut [0xff, 9, 9, 9]), 1, "discarded");
        assert_eq!(run(p, e, &mut [7, 8]), 0, "too short");
        let m = obj.map("events").unwrap();
        let mut events = Vec::new();
        assert_eq!(m.consume(|r| events.push(r.to_vec())), 3);
        let marker = 0x6d61726b6572u64.to_le_bytes().to_vec();
        assert_eq!(
            events,
            [vec![5, 0, 0, 0, 1, 2, 3, 4], marker.clone(), marker]
        );
        assert_eq!(m.ring_pending(), 0);
    }
}

#[test]
fn tail_call_dispatcher() {
    for e in ENGINES {
        let obj = load("tailcall");
        let table = obj.map("handlers").unwrap();
        table
            .set_program(0, obj.program("handler0").unwrap())
            .unwrap();
        table
            .set_program(1, obj.program("handler1").unwrap())
            .unwrap();
        let d = obj.program("dispatch").unwrap();
        assert_eq!(run(d, e, &mut [0, 0, 0]), 103);
        // handler1 rewrites the first byte and tail-calls handler0.
        let mut pkt = [1, 0, 0, 0];
        assert_eq!(run(d, e, &mut pkt), 104);
        assert_eq!(pkt[0], 0);
        // Empty slot, and out of range: the tail call fails and the dispatcher goes on.
        assert_eq!(run(d, e, &mut [2]), 0xfa11);
        assert_eq!(run(d, e, &mut [9]), 0xfa11);
    }
}

#[test]
fn tail_calls_stop_after_33() {
    // A program that tail-calls itself: the 34th attempt fails and it returns its count.
    let vm = vm();
    let table = progpack_bpf::Map::new(
        "self",
        progpack_bpf::MapDef {
            kind: progpack_bpf::MapKind::ProgArray,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            flags: 0,
        },
    )
    .unwrap();
    let counter = progpack_bpf::Map::new(
        "n",
        progpack_bpf::MapDef {
            kind: progpack_bpf::MapKind::Array,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
        },
    )
    .unwrap();
    // n += 1; tail_call(ctx, self, 0); return n.
    let code = progpack_bpf::asm::assemble(
        "mov %r6, %r1
         lddw %r7, 0
         mov %r1, 1
         lock add [%r7], %r1
         mov %r1, %r6
         lddw %r2, 0
         mov %r3, 0
         call 12
         ldxdw %r0, [%r7]
         exit",
    )
    .unwrap();
    let mut slots = code;
    slots[1].src = 2; // map value: fd 1 (counter), offset 0
    slots[1].imm = 1;
    slots[6].src = 1; // map fd 0 (self)
    let bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_bytes()).collect();
    let p = Arc::new(
        vm.load_with_maps(&bytes, &[Arc::clone(&table), Arc::clone(&counter)])
            .unwrap(),
    );
    table.set_program(0, &p).unwrap();
    for (k, e) in ENGINES.into_iter().enumerate() {
        assert_eq!(run(&p, e, &mut []), 34 * (k as u64 + 1), "{e:?}");
    }
}

#[test]
fn global_variables() {
    for e in ENGINES {
        let obj = load("globals");
        let p = obj.program("accumulate").unwrap();
        assert_eq!(run(p, e, &mut [0; 10]), 1000 + 3 * 10 + 1);
        assert_eq!(run(p, e, &mut [0; 1]), 1030 + 3 + 2);
        let value = |name: &str| u64_of(&obj.map(name).unwrap().lookup(&[0; 4]).unwrap());
        assert_eq!(value(".bss"), 2);
        assert_eq!(value(".data"), 1033);
        assert_eq!(value(".rodata"), 3);
        // The host changes the scale (read-only for programs, not for the host).
        let ro = obj.map(".rodata").unwrap();
        ro.update(&[0; 4], &5u64.to_le_bytes(), UpdateFlag::Any)
            .unwrap();
        assert_eq!(run(p, e, &mut [0; 2]), 1033 + 10 + 3);
    }
}

#[test]
fn bpf_to_bpf_call_chain() {
    for e in ENGINES {
        let obj = load("calls");
        let p = obj.program("chain").unwrap();
        assert_eq!(run(p, e, &mut [1, 2, 3]), 2 * (1 + 4 + 9) + 1);
        assert_eq!(run(p, e, &mut [2; 10]), 2 * (8 * 4) + 1);
        assert_eq!(run(p, e, &mut []), 1);
    }
}

#[test]
fn unknown_helper_names_are_load_errors() {
    let bytes = std::fs::read(dir().join("calls.o")).unwrap();
    let vm = Vm::new(Helpers::new());
    let err = vm.load_elf(&bytes).unwrap_err();
    assert!(
        matches!(&err, progpack_bpf::ElfError::UnknownHelper { name } if name == "bpf_get_smp_processor_id"),
        "{err}"
    );
}

/// The committed objects are what `build.sh` makes from the sources, when the same clang is
/// installed; otherwise the check is skipped (and says so).
#[test]
fn objects_match_their_sources() {
    let version = std::process::Command::new("clang")
        .arg("--version")
        .output();
    let Ok(version) = version else {
        println!("SKIPPED: clang is not installed");
        return;
    };
    let expected = std::fs::read_to_string(dir().join("CLANG_VERSION")).unwrap();
    let have = String::from_utf8_lossy(&version.stdout);
    if have.lines().next() != expected.lines().next() {
        println!(
            "SKIPPED: clang is {:?}, objects were built with {expected:?}",
            have.lines().next()
        );
        return;
    }
    let out = std::env::temp_dir().join(format!("progpack-bpf-elf-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let status = std::process::Command::new(dir().join("build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "c") {
            let name = path.with_extension("o");
            let name = name.file_name().unwrap();
            let committed = std::fs::read(dir().join(name)).unwrap();
            let rebuilt = std::fs::read(out.join(name)).unwrap();
            assert!(
                committed == rebuilt,
                "{name:?} differs from its source's build"
            );
            n += 1;
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
    assert_eq!(n, 6);
}
