//! Thousands of JIT programs loaded into one allocator share its packs, run independently
//! (also from several threads), and give their chunks back when dropped.

use std::sync::Arc;

use progpack::{Allocator, CodeRange, Config};
use progpack_bpf::{Helpers, JitOptions, Vm};

fn source(k: u32) -> String {
    // r0 = mem[0] + k, with a bounds check the program must pass.
    format!("ldxb %r0, [%r1]\nadd %r0, {k}\njgt %r2, 0, +1\nmov %r0, 0\nexit")
}

#[test]
fn thousands_of_programs_share_packs() {
    let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))
        .expect("allocator");
    let mut vm = Vm::new(Helpers::conformance());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    const N: u32 = 4000;
    let progs: Vec<_> = (0..N)
        .map(|k| vm.load_asm(&source(k)).expect("loads"))
        .collect();
    // Loads one by one wait in groups to be written together: write the last group now.
    vm.flush();
    let s = alloc.stats();
    assert_eq!(s.programs, N as usize);
    let code_bytes: usize = progs.iter().map(|p| p.jit().unwrap().program().len()).sum();
    // Packed: the packs hold all programs with little waste (each program takes whole
    // chunks, so allow chunk rounding), far fewer mappings than programs.
    assert!(s.packs <= 1 + code_bytes * 2 / s.pack_size, "{s:?}");
    assert!(s.chunks_used * s.chunk_size <= code_bytes + N as usize * (s.chunk_size + 16));
    assert!(s.packs < 10, "{s:?}");
    // Every program runs, in the JIT and in the interpreter, with the same result.
    let progs = Arc::new(progs);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let progs = Arc::clone(&progs);
            std::thread::spawn(move || {
                for k in (t..N).step_by(4) {
                    let mut mem = [7u8; 3];
                    let p = &progs[k as usize];
                    assert_eq!(p.run_jit(&mut mem).unwrap(), 7 + k as u64);
                    assert_eq!(p.run_interp(&mut mem).unwrap(), 7 + k as u64);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(progs);
    let s = alloc.stats();
    assert_eq!((s.programs, s.chunks_used), (0, 0), "{s:?}");
    assert!(alloc.check_invariants().is_ok());
}

#[test]
fn vm_without_jit_reports_it() {
    let vm = Vm::new(Helpers::new());
    let p = vm.load_asm("mov %r0, 1\nexit").unwrap();
    assert!(p.jit().is_none());
    assert!(matches!(
        p.run_jit(&mut []),
        Err(progpack_bpf::Error::Jit(
            progpack_bpf::jit::JitError::NotCompiled
        ))
    ));
    // Compiling afterwards works, into any allocator (here one without a code range).
    let mut p = p;
    let alloc = Allocator::new(Config::default()).unwrap();
    p.jit_compile(&alloc, JitOptions::default()).unwrap();
    assert_eq!(p.run_jit(&mut []).unwrap(), 1);
}

#[test]
fn run_options_set_the_jit_instruction_limit() {
    let alloc = progpack_bpf::jit::shared_allocator().unwrap();
    let mut vm = Vm::new(Helpers::new());
    vm.enable_jit(alloc, JitOptions::default());
    let p = vm
        .load_asm("mov %r0, 0\nl:\nadd %r0, 1\njlt %r0, 100, l\nexit")
        .unwrap();
    // 1 + 2 * 100 + 1 instructions.
    let limit = |n| progpack_bpf::RunOptions {
        instruction_limit: n,
    };
    assert_eq!(p.run_jit_with(&mut [], &limit(202)).unwrap(), 100);
    let err = p.run_jit_with(&mut [], &limit(201)).unwrap_err();
    assert!(matches!(
        err,
        progpack_bpf::Error::Run(progpack_bpf::RunError::InstructionLimit { limit: 201 })
    ));
    assert_eq!(
        p.run_interp_with(&mut [], &limit(201))
            .unwrap_err()
            .to_string(),
        err.to_string()
    );
}

#[test]
fn batch_loading_places_many_programs_with_few_writes() {
    let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))
        .expect("allocator");
    let mut vm = Vm::new(Helpers::conformance());
    vm.enable_jit(alloc.clone(), JitOptions::default());
    let codes: Vec<Vec<u8>> = (0..1000)
        .map(|k| {
            let slots = progpack_bpf::asm::assemble(&source(k)).unwrap();
            progpack_bpf::insn::encode_slots(&slots)
        })
        .collect();
    let refs: Vec<&[u8]> = codes.iter().map(|c| &c[..]).collect();
    let progs = vm.load_many(&refs).expect("batch loads");
    assert_eq!(alloc.stats().programs, 1000);
    // Consecutive programs are adjacent in one pack, in a few stretches (a batch starts at a
    // random free spot of the pack and goes on elsewhere where it meets used chunks or the
    // end of the pack).
    let addrs: Vec<usize> = progs
        .iter()
        .map(|p| p.jit().unwrap().program().addr())
        .collect();
    let breaks = addrs
        .windows(2)
        .filter(|w| !(w[0] < w[1] && w[1] - w[0] < 1024))
        .count();
    assert!(breaks <= 3, "{breaks} breaks in 1000 programs");
    for (k, p) in progs.iter().enumerate() {
        let mut mem = [1u8];
        assert_eq!(p.run_jit(&mut mem).unwrap(), 1 + k as u64);
    }
    // One bad program fails the batch and leaves nothing behind.
    let bad = [0xffu8, 0, 0, 0, 0, 0, 0, 0];
    let mut with_bad = refs.clone();
    with_bad.insert(500, &bad);
    assert!(vm.load_many(&with_bad).is_err());
    drop(progs);
    assert_eq!(alloc.stats().programs, 0);
    assert_eq!(alloc.stats().chunks_used, 0);
}

#[test]
fn a_failing_batch_names_the_program_and_frees_everything() {
    use progpack_bpf::insn::Insn;
    use progpack_bpf::jit::JitError;
    use progpack_bpf::JitProgram;
    let alloc = Allocator::new(Config::default()).unwrap();
    let good = progpack_bpf::asm::assemble("mov %r0, 1\nexit").unwrap();
    let bad = vec![Insn::new(0xff, 0, 0, 0, 0)];
    let progs: Vec<&[Insn]> = vec![&good, &good, &bad, &good];
    let err =
        JitProgram::new_batch(&alloc, progs, &Helpers::new(), JitOptions::default()).unwrap_err();
    assert!(
        matches!(err, (2, JitError::InvalidOpcode { pc: 0, opc: 0xff })),
        "{err:?}"
    );
    let s = alloc.stats();
    assert_eq!(
        (s.programs, s.allocations, s.chunks_used),
        (0, 0, 0),
        "{s:?}"
    );
}

#[test]
fn jit_programs_show_the_same_checked_program_as_the_checker() {
    // With a local call (two functions) and an lddw (a second slot).
    let text = "lddw %r0, 0x100000002\ncall local +1\nexit\nmov %r0, 3\nexit";
    let slots = progpack_bpf::asm::assemble(text).expect("assembles");
    let helpers = Helpers::conformance();
    let want = progpack_bpf::check::check(&slots, &helpers).expect("checks");
    let mut vm = Vm::new(helpers);
    vm.enable_jit(
        Allocator::new(Config::default()).expect("allocator"),
        JitOptions::default(),
    );
    let bytes = progpack_bpf::insn::encode_slots(&slots);
    let one = vm.load(&bytes).expect("loads");
    let many = vm.load_many(&[&bytes, &bytes]).expect("loads");
    for p in std::iter::once(&one).chain(&many) {
        assert_eq!(p.slots(), &slots[..]);
        assert_eq!(p.checked(), &want);
        assert_eq!(p.checked().functions, vec![0, 4]);
        // The interpreter (which runs the decoded form) and the JIT agree.
        assert_eq!(p.run_interp(&mut []).unwrap(), 3);
        assert_eq!(p.run_jit(&mut []).unwrap(), 3);
        // A clone made before the first decode decodes on its own.
        let q = p.clone();
        assert_eq!(q.checked(), &want);
    }
}
