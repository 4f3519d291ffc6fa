//! Fuzz target `bpf_engines`: random bytes -> decode + check + disassemble + interpret.
//!
//! Input layout: byte 0 selects the mode.
//! - bit 7 clear: raw mode. Bytes 1.. are the program (whole 8-byte slots; a trailing partial
//!   slot is dropped); byte 0 (0..=127) is the memory length. Random bytes must never make
//!   the checker, the disassembler or the interpreter panic; an accepted program's
//!   disassembly must assemble back to the same slots; running it must never reach an
//!   invalid instruction.
//! - bit 7 set: generated mode. Bytes 1..9 seed [`progpack_bpf::gen`], which builds a valid
//!   program that uses the whole instruction set; it must load and run deterministically.
//!
//! In both modes, once the JIT exists, its result must equal the interpreter's (see TODO).
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

fn run_engines(prog: &BpfProgram, mem: &[u8]) {
    let mut m1 = mem.to_vec();
    let r1 = prog.run_interp_with(&mut m1, &OPTS);
    assert!(
        !matches!(r1, Err(RunError::InvalidInstruction { .. })),
        "checked program reached an invalid instruction"
    );
    let mut m2 = mem.to_vec();
    let r2 = prog.run_interp_with(&mut m2, &OPTS);
    assert_eq!(r1.is_ok(), r2.is_ok());
    if let (Ok(a), Ok(b)) = (&r1, &r2) {
        assert_eq!((a, &m1), (b, &m2), "interpreter is not deterministic");
    }
    // TODO(jit): run `prog.run_jit(&mut m3)` on a fresh copy of `mem` and assert it equals
    // the interpreter: same r0 and memory when both succeed, both fail otherwise.
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
            run_engines(&prog, &mem);
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
        run_engines(&prog, &g.mem);
    }
});
