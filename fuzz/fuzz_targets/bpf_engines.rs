//! Fuzz target `bpf_engines`: random bytes -> decode + check + disassemble + interpret.
//!
//! Input layout: byte 0 selects the mode.
//! - bit 7 clear: raw mode. Bytes 1.. are the program (whole 8-byte slots; a trailing partial
//!   slot is dropped); byte 0 (0..=127) is the memory length. Random bytes must never make
//!   the checker, the disassembler or the interpreter panic; an accepted program's
//!   disassembly must assemble back to the same slots; running it must never reach an
//!   invalid instruction. (Such programs may compute with host addresses, so their results
//!   are not compared between runs or engines.)
//! - bit 7 set: generated mode. Bytes 1..9 seed [`progpack_bpf::gen`], which builds a valid
//!   program that uses the whole instruction set and never computes with addresses; it must
//!   load, and two runs (with memory and stack at different addresses) must agree.
//!
//! Once the JIT is wired in (see the TODOs), it must not crash on raw-mode programs and must
//! equal the interpreter on generated ones.
//! The input is also fed to the assembler as text, which must not panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use progpack_bpf::asm::{assemble, disassemble};
use progpack_bpf::gen::{generate, mix_helper, GenConfig, Rng, MIX_HELPER_ID};
use progpack_bpf::insn::decode_slots;
use progpack_bpf::{BpfProgram, Helpers, RunError, RunOptions, Vm};

fn vm() -> &'static Vm {
    static VM: OnceLock<Vm> = OnceLock::new();
    VM.get_or_init(|| {
        let mut h = Helpers::conformance();
        h.register(MIX_HELPER_ID, mix_helper);
        Vm::new(h)
    })
}

const OPTS: RunOptions = RunOptions {
    instruction_limit: 20_000,
};

/// Runs a program that may use host addresses as values (raw mode): its result may depend
/// on where memory and stack are, so only robustness is checked.
fn run_raw(prog: &BpfProgram, mem: &[u8]) {
    let r = prog.run_interp_with(&mut mem.to_vec(), &OPTS);
    assert!(
        !matches!(r, Err(RunError::InvalidInstruction { .. })),
        "checked program reached an invalid instruction"
    );
    // TODO(jit): also run `prog.run_jit` here: it must return (Ok or a RunError), not crash.
}

/// Runs an address-independent program (generated mode) on fresh copies of `mem`: every run,
/// whatever addresses it gets, must give the same r0, memory and error/no-error.
fn run_compared(prog: &BpfProgram, mem: &[u8]) {
    let run = || {
        let mut m = mem.to_vec();
        prog.run_interp_with(&mut m, &OPTS).map(|r0| (r0, m))
    };
    let (a, b) = (run(), run());
    assert!(!matches!(a, Err(RunError::InvalidInstruction { .. })));
    assert_eq!(a.is_ok(), b.is_ok());
    if let (Ok(a), Ok(b)) = (&a, &b) {
        assert_eq!(a, b, "interpreter runs differ");
    }
    // TODO(jit): run `prog.run_jit` on a fresh copy of `mem` and assert it equals `a`: same
    // r0 and memory when both succeed, both fail otherwise.
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = assemble(text);
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 == 0 {
        let code = &rest[..rest.len() / 8 * 8];
        let slots = decode_slots(code).expect("whole slots");
        let listing = disassemble(&slots);
        if let Ok(prog) = vm().load(code) {
            assert_eq!(
                assemble(&listing).expect("disassembly assembles"),
                slots,
                "disassembly does not round-trip:\n{listing}"
            );
            let mem: Vec<u8> = (0..mode as usize).map(|i| i as u8 ^ 0xa5).collect();
            run_raw(&prog, &mem);
        }
    } else {
        let mut seed = [0u8; 8];
        let n = rest.len().min(8);
        seed[..n].copy_from_slice(&rest[..n]);
        let mut rng = Rng::new(u64::from_le_bytes(seed));
        let cfg = GenConfig {
            body: 1 + (mode as usize & 0x3f),
            mem_len: 1 + rest.get(8).copied().unwrap_or(0) as usize,
            rbpf_subset: false,
        };
        let g = generate(&mut rng, cfg);
        let prog = vm()
            .load_slots(&g.slots)
            .expect("generated programs are valid");
        run_compared(&prog, &g.mem);
    }
});
