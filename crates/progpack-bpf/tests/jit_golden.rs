//! The emitted code and the checker's verdicts, pinned: a hash over the compiles of thousands
//! of generated programs (each followed by programs of its shape with other constants, so the
//! translator's reuse of the last program's facts is part of it), of the benchmark's filter
//! for many ports, and of the checker's results for the same programs. A change that makes the
//! JIT or the checker faster must leave both hashes as they are; a change of the code on
//! purpose updates them (and says why).

mod jit_support;

use jit_support::imm_is_control;
use progpack_bpf::check::check;
use progpack_bpf::gen::{generate, mix_helper, GenConfig, Rng, MIX_HELPER_ID};
use progpack_bpf::insn::*;
use progpack_bpf::jit::{compile, CompileOptions};
use progpack_bpf::Helpers;

/// FNV-1a, 64 bits: stable across Rust versions, unlike the standard library's hashers.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
        self.bytes(&[0xff]);
    }
}

/// Every option set whose code is the same in every process: helpers by `call rel32`
/// (`mov rax, imm64` would hold a helper's address), no blinding (a random key).
fn options(k: u32) -> CompileOptions {
    CompileOptions {
        rel_calls: true,
        budget: k & 1 != 0,
        budget_loops_only: k & 2 != 0,
        blind_constants: false,
        hide_addresses: k & 4 != 0,
    }
}

/// A compile's result into `h`: the code, the offset of every slot, what a run needs (or the
/// error).
fn hash_compile(h: &mut Fnv, slots: &[Insn], helpers: &Helpers, o: CompileOptions) {
    match compile(slots, helpers, o) {
        Ok(c) => {
            h.bytes(c.bytes());
            for pc in 0..slots.len() {
                h.bytes(&c.pc_offset(pc).unwrap_or(u32::MAX).to_le_bytes());
            }
            h.text(&format!(
                "{} {} {:?} {} {}",
                c.uses_stack(),
                c.proven_accesses(),
                c.max_instructions(),
                c.needs_link(),
                c.len()
            ));
        }
        Err(e) => h.text(&format!("{e:?}")),
    }
}

/// A constant of one of the classes encoders tell apart: zero, one byte, four bytes, either
/// sign.
fn constant(rng: &mut Rng) -> i32 {
    match rng.below(6) {
        0 => 0,
        1 => rng.below(128) as i32,
        2 => -(rng.below(129) as i32),
        3 => 128 + rng.below(1 << 20) as i32,
        4 => -129 - rng.below(1 << 20) as i32,
        _ => rng.next_u64() as i32,
    }
}

/// `p` with new constants in some slots whose immediate is a plain operand.
fn new_constants(rng: &mut Rng, p: &[Insn]) -> Vec<Insn> {
    p.iter()
        .map(|&i| {
            if imm_is_control(i) || rng.chance(1, 2) {
                i
            } else {
                Insn {
                    imm: constant(rng),
                    ..i
                }
            }
        })
        .collect()
}

/// The benchmark's packet filter (`progpack bench`, `ebpf-load`) for `port`.
fn filter(port: u16) -> Vec<Insn> {
    let i = Insn::new;
    vec![
        i(CLS_LDX | MODE_MEM | SIZE_H, 2, 1, 12, 0),
        i(CLS_JMP | JMP_JNE, 2, 0, 6, 0x0008),
        i(CLS_LDX | MODE_MEM | SIZE_B, 3, 1, 23, 0),
        i(CLS_JMP | JMP_JNE, 3, 0, 4, 6),
        i(CLS_LDX | MODE_MEM | SIZE_H, 4, 1, 36, 0),
        i(CLS_JMP | JMP_JNE, 4, 0, 2, port.swap_bytes() as i32),
        i(CLS_ALU64 | ALU_MOV, 0, 0, 0, 1),
        i(EXIT, 0, 0, 0, 0),
        i(CLS_ALU64 | ALU_MOV, 0, 0, 0, 0),
        i(EXIT, 0, 0, 0, 0),
    ]
}

/// The programs: generated ones, each followed by three of its shape with other constants,
/// then the filter for many ports.
fn programs() -> Vec<Vec<Insn>> {
    let mut rng = Rng::new(0x901d);
    let mut out = Vec::new();
    for n in 0..1500 {
        let cfg = GenConfig {
            body: 1 + n % 60,
            rbpf_subset: n % 3 == 0,
            ..GenConfig::default()
        };
        let p = generate(&mut rng, cfg).slots;
        for _ in 0..3 {
            let q = new_constants(&mut rng, &p);
            out.push(q);
        }
        out.insert(out.len() - 3, p);
    }
    for port in (0..=u16::MAX).step_by(257) {
        out.push(filter(port));
    }
    out
}

fn helpers() -> Helpers {
    let mut helpers = Helpers::new();
    helpers.register(MIX_HELPER_ID, mix_helper);
    helpers
}

#[test]
fn the_code_of_many_compiles_is_as_pinned() {
    let helpers = helpers();
    let progs = programs();
    let mut h = Fnv::new();
    for k in 0..8 {
        let o = options(k);
        for p in &progs {
            hash_compile(&mut h, p, &helpers, o);
        }
    }
    assert_eq!(h.0, 0x2c62_d148_c7ab_b872, "code hash (got {:#018x})", h.0);
}

#[test]
fn the_checker_s_results_are_as_pinned() {
    let helpers = helpers();
    let mut h = Fnv::new();
    for p in programs() {
        h.text(&format!("{:?}", check(&p, &helpers)));
        // A slot cut off or changed: programs the checker rejects, too.
        h.text(&format!("{:?}", check(&p[..p.len() - 1], &helpers)));
        let mut q = p.clone();
        let k = (p.len() * 7 / 11) % p.len();
        q[k].opc = q[k].opc.wrapping_add(8);
        h.text(&format!("{:?}", check(&q, &helpers)));
    }
    assert_eq!(
        h.0, 0x3d09_64a0_5927_62be,
        "checker hash (got {:#018x})",
        h.0
    );
}
