//! Random valid programs, for differential tests between engines (and for benchmarks).
//!
//! A generated program is loop-free: a prologue gives r0 and r2..r9 random values, a body of
//! random instructions follows (arithmetic, loads, stores, atomics, helper calls, forward
//! jumps, and optionally one `call local` to a leaf function), and an epilogue folds r0 and
//! r2..r9 into r0 before `exit`. Programs always pass the checker.
//!
//! Values that depend on host addresses never reach r0 or memory: r1 (the memory address) and
//! r10 are only used as load/store bases, never as arithmetic operands, stored values or
//! helper arguments that the helper reads (helper [`MIX_HELPER_ID`] ignores r1). So two
//! engines that follow the execution model must agree on r0, on the final memory and on
//! error/no-error, whatever addresses they give the memory and the stack.
//!
//! [`Features`] records which instruction kinds a program uses, so a comparison against an
//! engine that lacks some of them (rbpf) can skip and count those programs.

use crate::decode::{AluOp, AtomicOp, Cond, EndOp, Instr, Size, Src, Width};
use crate::insn::Insn;

/// Id of the generated programs' helper ([`mix_helper`]).
pub const MIX_HELPER_ID: u32 = 1;

/// The helper generated programs call: a deterministic mix of r2..r5 (r1 is ignored because
/// it holds a host address).
pub extern "C" fn mix_helper(_r1: u64, r2: u64, r3: u64, r4: u64, r5: u64) -> u64 {
    r2.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ r3.rotate_left(17) ^ r4.wrapping_add(r5 << 3)
}

/// SplitMix64: a small deterministic generator (tests must be reproducible from a seed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Instruction kinds a program uses beyond the classic eBPF set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `sdiv`/`smod` (off = 1).
    pub signed_divmod: bool,
    /// `movsx`.
    pub movsx: bool,
    /// `bswap` (ALU64 END).
    pub bswap: bool,
    /// Sign-extending loads.
    pub memsx: bool,
    /// Atomic operations.
    pub atomics: bool,
    /// `ja32`.
    pub ja32: bool,
    /// `callx`.
    pub callx: bool,
    /// `call local`.
    pub call_local: bool,
    /// 32-bit modulo (rbpf leaves the upper half of the dividend on `x % 0`; RFC 9669 zeroes
    /// it).
    pub mod32: bool,
    /// 64-bit unsigned comparisons with a negative immediate (rbpf zero-extends the
    /// immediate; RFC 9669 sign-extends it).
    pub jmp64_negative_imm: bool,
    /// 64-bit `neg` (rbpf 0.4 computes `-(x as i64)`, which panics on `i64::MIN` when
    /// overflow checks are on, as in test builds).
    pub neg64: bool,
}

impl Features {
    /// Whether rbpf 0.4's interpreter runs the program with RFC 9669 semantics.
    pub fn rbpf_compatible(&self) -> bool {
        *self == Features::default()
    }
}

/// Generator settings.
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Instructions in the body (not counting prologue and epilogue).
    pub body: usize,
    /// Memory region size in bytes (at least 1).
    pub mem_len: usize,
    /// Restrict to instructions rbpf 0.4 runs with RFC 9669 semantics.
    pub rbpf_subset: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            body: 40,
            mem_len: 64,
            rbpf_subset: false,
        }
    }
}

/// A generated program and the memory to run it on.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The program.
    pub slots: Vec<Insn>,
    /// Initial memory.
    pub mem: Vec<u8>,
    /// Instruction kinds used.
    pub features: Features,
}

/// Registers the body may write and read as values (not r1, not r10).
const VALUE_REGS: [u8; 9] = [0, 2, 3, 4, 5, 6, 7, 8, 9];

fn imm(rng: &mut Rng) -> i32 {
    match rng.below(6) {
        0 => rng.pick(&[0, 1, -1, 2, 7, 31, 32, 63, 64]),
        1 => rng.pick(&[i32::MIN, i32::MAX, -2, 0x8000, 0xffff]),
        2 => rng.below(256) as i32 - 128,
        _ => rng.next_u64() as i32,
    }
}

fn value64(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => rng.pick(&[0, 1, u64::MAX, 1 << 63, (1 << 63) - 1, 0xffff_ffff, 1 << 32]),
        1 => rng.below(512),
        _ => rng.next_u64(),
    }
}

/// A body instruction, with an unresolved forward target for jumps (index into the body).
enum Item {
    Plain(Instr),
    Jump(Instr, usize),
    CallLeaf,
}

struct Gen<'a> {
    rng: &'a mut Rng,
    cfg: GenConfig,
    f: Features,
}

impl Gen<'_> {
    fn vreg(&mut self) -> u8 {
        self.rng.pick(&VALUE_REGS)
    }

    fn src(&mut self) -> Src {
        if self.rng.chance(1, 2) {
            Src::Reg(self.vreg())
        } else {
            Src::Imm(imm(self.rng))
        }
    }

    /// A memory operand: base register and offset, mostly in bounds.
    fn mem_operand(&mut self, size: Size) -> (u8, i16) {
        let n = size.bytes() as i64;
        if self.rng.chance(1, 3) {
            // Stack: frame 0 is [r10 - 512, r10); a little slack on both sides.
            let off = -(self.rng.below(512 + 16) as i64) + 8 - n;
            let off = if self.rng.chance(15, 16) {
                off.clamp(-512, -n)
            } else {
                off
            };
            (10, off as i16)
        } else {
            let len = self.cfg.mem_len as i64;
            let off = if self.rng.chance(15, 16) {
                self.rng.below((len - n + 1).max(1) as u64) as i64
            } else {
                self.rng.below((len + 16) as u64) as i64 - 8
            };
            (1, off as i16)
        }
    }

    fn alu(&mut self) -> Instr {
        let width = if self.rng.chance(1, 2) {
            Width::W64
        } else {
            Width::W32
        };
        let mut ops = vec![
            AluOp::Add,
            AluOp::Sub,
            AluOp::Mul,
            AluOp::Div,
            AluOp::Or,
            AluOp::And,
            AluOp::Lsh,
            AluOp::Rsh,
            AluOp::Mod,
            AluOp::Xor,
            AluOp::Mov,
            AluOp::Arsh,
        ];
        if !self.cfg.rbpf_subset {
            ops.extend([AluOp::SDiv, AluOp::SMod, AluOp::MovSx(8), AluOp::MovSx(16)]);
            if width == Width::W64 {
                ops.push(AluOp::MovSx(32));
            }
        }
        let mut op = self.rng.pick(&ops);
        if self.cfg.rbpf_subset && op == AluOp::Mod && width == Width::W32 {
            op = AluOp::Div;
        }
        let dst = self.vreg();
        let src = match op {
            AluOp::MovSx(_) => Src::Reg(self.vreg()),
            _ => self.src(),
        };
        match op {
            AluOp::SDiv | AluOp::SMod => self.f.signed_divmod = true,
            AluOp::MovSx(_) => self.f.movsx = true,
            AluOp::Mod if width == Width::W32 => self.f.mod32 = true,
            _ => {}
        }
        Instr::Alu {
            width,
            op,
            dst,
            src,
        }
    }

    fn jcc(&mut self) -> Instr {
        let width = if self.rng.chance(1, 2) {
            Width::W64
        } else {
            Width::W32
        };
        let cond = self.rng.pick(&[
            Cond::Eq,
            Cond::Gt,
            Cond::Ge,
            Cond::Set,
            Cond::Ne,
            Cond::Sgt,
            Cond::Sge,
            Cond::Lt,
            Cond::Le,
            Cond::Slt,
            Cond::Sle,
        ]);
        let mut src = self.src();
        let unsigned = matches!(
            cond,
            Cond::Eq | Cond::Gt | Cond::Ge | Cond::Ne | Cond::Lt | Cond::Le
        );
        if let Src::Imm(i) = src {
            if width == Width::W64 && unsigned && i < 0 {
                if self.cfg.rbpf_subset {
                    src = Src::Imm(i & i32::MAX);
                } else {
                    self.f.jmp64_negative_imm = true;
                }
            }
        }
        Instr::Jcc {
            width,
            cond,
            dst: self.vreg(),
            src,
            off: 0,
        }
    }

    fn item(&mut self) -> Item {
        let full = !self.cfg.rbpf_subset;
        let size = self.rng.pick(&[Size::B, Size::H, Size::W, Size::DW]);
        match self.rng.below(100) {
            0..=39 => Item::Plain(self.alu()),
            40..=43 => {
                let width = if full && self.rng.chance(1, 2) {
                    Width::W64
                } else {
                    Width::W32
                };
                self.f.neg64 |= width == Width::W64;
                Item::Plain(Instr::Neg {
                    width,
                    dst: self.vreg(),
                })
            }
            44..=47 => {
                let mut ops = vec![EndOp::Le, EndOp::Be];
                if full {
                    ops.push(EndOp::Swap);
                }
                let op = self.rng.pick(&ops);
                self.f.bswap |= op == EndOp::Swap;
                Item::Plain(Instr::End {
                    op,
                    bits: self.rng.pick(&[16, 32, 64]),
                    dst: self.vreg(),
                })
            }
            48..=50 => Item::Plain(Instr::Lddw {
                dst: self.vreg(),
                imm: value64(self.rng),
            }),
            51..=60 => {
                let signed = full && size != Size::DW && self.rng.chance(1, 3);
                self.f.memsx |= signed;
                let (base, off) = self.mem_operand(size);
                Item::Plain(Instr::Load {
                    size,
                    signed,
                    dst: self.vreg(),
                    base,
                    off,
                })
            }
            61..=68 => {
                let (base, off) = self.mem_operand(size);
                if self.rng.chance(1, 2) {
                    Item::Plain(Instr::StoreImm {
                        size,
                        base,
                        off,
                        imm: imm(self.rng),
                    })
                } else {
                    Item::Plain(Instr::StoreReg {
                        size,
                        base,
                        off,
                        src: self.vreg(),
                    })
                }
            }
            69..=73 if full => {
                self.f.atomics = true;
                let width = self.rng.pick(&[Width::W32, Width::W64]);
                let size = if width == Width::W64 {
                    Size::DW
                } else {
                    Size::W
                };
                let (base, off) = self.mem_operand(size);
                let op = self.rng.pick(&[
                    AtomicOp::Add,
                    AtomicOp::Or,
                    AtomicOp::And,
                    AtomicOp::Xor,
                    AtomicOp::Xchg,
                    AtomicOp::CmpXchg,
                ]);
                Item::Plain(Instr::Atomic {
                    width,
                    op,
                    fetch: matches!(op, AtomicOp::Xchg | AtomicOp::CmpXchg)
                        || self.rng.chance(1, 2),
                    base,
                    off,
                    src: self.vreg(),
                })
            }
            74..=89 => {
                let j = self.jcc();
                Item::Jump(j, 0)
            }
            90..=93 => {
                let long = full && self.rng.chance(1, 2);
                self.f.ja32 |= long;
                Item::Jump(Instr::Ja { off: 0, long }, 0)
            }
            94..=96 => {
                if full && self.rng.chance(1, 2) {
                    // callx through a register holding the helper id.
                    self.f.callx = true;
                    Item::Plain(Instr::Callx { reg: 0 })
                } else {
                    Item::Plain(Instr::Call { id: MIX_HELPER_ID })
                }
            }
            97..=99 if full => {
                self.f.call_local = true;
                Item::CallLeaf
            }
            _ => Item::Plain(self.alu()),
        }
    }
}

/// Generates one program with `cfg` from `rng`.
pub fn generate(rng: &mut Rng, cfg: GenConfig) -> Generated {
    let cfg = GenConfig {
        mem_len: cfg.mem_len.clamp(1, i16::MAX as usize / 2),
        ..cfg
    };
    let mut g = Gen {
        rng,
        cfg,
        f: Features::default(),
    };
    let mut body: Vec<Item> = Vec::new();
    for r in VALUE_REGS {
        let v = value64(g.rng);
        body.push(Item::Plain(if v as i32 as i64 as u64 == v {
            Instr::Alu {
                width: Width::W64,
                op: AluOp::Mov,
                dst: r,
                src: Src::Imm(v as i32),
            }
        } else {
            Instr::Lddw { dst: r, imm: v }
        }));
    }
    let first = body.len();
    for _ in 0..cfg.body {
        let it = g.item();
        // callx needs the helper id in its register, set right before it.
        if let Item::Plain(Instr::Callx { .. }) = it {
            let reg = g.rng.pick(&[0u8, 6, 7, 8, 9]);
            body.push(Item::Plain(Instr::Alu {
                width: Width::W64,
                op: AluOp::Mov,
                dst: reg,
                src: Src::Imm(MIX_HELPER_ID as i32),
            }));
            body.push(Item::Plain(Instr::Callx { reg }));
            continue;
        }
        body.push(it);
    }
    // Index of the epilogue's first instruction.
    let end = body.len();
    // Forward jump targets: anywhere after the jump, up to the epilogue. A jump never lands
    // on a `callx`: it lands on the `mov` of the helper id before it, or the call would go
    // through whatever the register held (another helper, or none).
    for i in first..end {
        if !matches!(body[i], Item::Jump(..)) {
            continue;
        }
        let mut target = i + 1 + g.rng.below((end - i) as u64) as usize;
        if matches!(body.get(target), Some(Item::Plain(Instr::Callx { .. }))) {
            target -= 1;
        }
        if let Item::Jump(_, t) = &mut body[i] {
            *t = target;
        }
    }
    for r in [2u8, 3, 4, 5, 6, 7, 8, 9] {
        body.push(Item::Plain(Instr::Alu {
            width: Width::W64,
            op: AluOp::Xor,
            dst: 0,
            src: Src::Reg(r),
        }));
    }
    body.push(Item::Plain(Instr::Exit));

    // The leaf function of `call local`: writes its own frame, reads its caller's argument
    // registers and returns a value in r0 (clobbering r0 only; r6..r9 are preserved by the
    // call, r1 is left alone).
    let leaf = [
        Instr::StoreReg {
            size: Size::DW,
            base: 10,
            off: -8,
            src: 3,
        },
        Instr::Load {
            size: Size::DW,
            signed: false,
            dst: 0,
            base: 10,
            off: -8,
        },
        Instr::Alu {
            width: Width::W64,
            op: AluOp::Add,
            dst: 0,
            src: Src::Reg(2),
        },
        Instr::Alu {
            width: Width::W64,
            op: AluOp::Mov,
            dst: 6,
            src: Src::Imm(-1),
        },
        Instr::Exit,
    ];

    // Slot index of every body item.
    let mut slot_of = Vec::with_capacity(body.len() + 1);
    let mut slot = 0usize;
    for it in &body {
        slot_of.push(slot);
        slot += match it {
            Item::Plain(i) | Item::Jump(i, _) => i.slots(),
            Item::CallLeaf => 1,
        };
    }
    let leaf_slot = slot;
    slot_of.push(slot);
    let mut slots = Vec::with_capacity(slot + leaf.len());
    for (idx, it) in body.iter().enumerate() {
        let pc = slot_of[idx] as i64;
        let ins = match *it {
            Item::Plain(i) => i,
            Item::Jump(Instr::Ja { long, .. }, t) => Instr::Ja {
                off: (slot_of[t] as i64 - pc - 1) as i32,
                long,
            },
            Item::Jump(
                Instr::Jcc {
                    width,
                    cond,
                    dst,
                    src,
                    ..
                },
                t,
            ) => Instr::Jcc {
                width,
                cond,
                dst,
                src,
                off: (slot_of[t] as i64 - pc - 1) as i16,
            },
            Item::Jump(i, _) => i,
            Item::CallLeaf => Instr::CallLocal {
                off: (leaf_slot as i64 - pc - 1) as i32,
            },
        };
        slots.extend(ins.encode());
    }
    if g.f.call_local {
        for i in leaf {
            slots.extend(i.encode());
        }
    }
    let mem = (0..cfg.mem_len).map(|_| g.rng.next_u64() as u8).collect();
    Generated {
        slots,
        mem,
        features: g.f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Helpers;

    #[test]
    fn generated_programs_pass_the_checker() {
        let mut helpers = Helpers::new();
        helpers.register(MIX_HELPER_ID, mix_helper);
        let mut rng = Rng::new(7);
        for i in 0..500 {
            let cfg = GenConfig {
                rbpf_subset: i % 2 == 0,
                ..GenConfig::default()
            };
            let g = generate(&mut rng, cfg);
            crate::check::check(&g.slots, &helpers)
                .unwrap_or_else(|e| panic!("{e}\n{}", crate::asm::disassemble(&g.slots)));
            if cfg.rbpf_subset {
                assert!(g.features.rbpf_compatible(), "{:?}", g.features);
            }
        }
    }

    /// A jump that landed on a `callx` skipped the `mov` of the helper id before it, and the
    /// call went through whatever the register held: with the conformance registry, helper 5
    /// returns r1, the memory's address, and two runs of one program disagreed (found by the
    /// `bpf_engines` fuzz target, seed below). Checked two ways: no jump targets a `callx`, and
    /// runs with the memory at different addresses agree.
    #[test]
    fn jumps_never_skip_the_helper_id_of_a_callx() {
        let mut helpers = Helpers::conformance();
        helpers.register(MIX_HELPER_ID, mix_helper);
        let vm = crate::Vm::new(helpers);
        let cfg = GenConfig {
            body: 64,
            mem_len: 1,
            rbpf_subset: false,
        };
        let fuzz_seed = u64::from_le_bytes([0x02, 0xfd, 0x2b, 0x02, 0, 0, 0, 0]);
        let mut with_callx = 0;
        for seed in std::iter::once(fuzz_seed).chain(0..3000) {
            let g = generate(&mut Rng::new(seed), cfg);
            let instrs: Vec<(usize, Instr)> = {
                let mut out = Vec::new();
                let mut pc = 0;
                while pc < g.slots.len() {
                    let i = crate::decode::decode_at(&g.slots, pc).expect("decodes");
                    out.push((pc, i));
                    pc += i.slots();
                }
                out
            };
            let at = |pc: usize| instrs.iter().find(|(p, _)| *p == pc).map(|(_, i)| *i);
            for &(pc, i) in &instrs {
                let off = match i {
                    Instr::Ja { off, .. } => off as i64,
                    Instr::Jcc { off, .. } => off as i64,
                    _ => continue,
                };
                let target = (pc as i64 + 1 + off) as usize;
                assert!(
                    !matches!(at(target), Some(Instr::Callx { .. })),
                    "seed {seed}: the jump at {pc} lands on a callx\n{}",
                    crate::asm::disassemble(&g.slots)
                );
            }
            if !g.features.callx {
                continue;
            }
            with_callx += 1;
            let prog = vm.load_slots(&g.slots).expect("generated programs load");
            let opts = crate::RunOptions {
                instruction_limit: 20_000,
            };
            // Two buffers alive at once: the memory is at two different addresses.
            let (mut a, mut b) = (g.mem.clone(), g.mem.clone());
            let ra = prog
                .run_interp_with(&mut a, &opts)
                .map_err(|e| e.to_string());
            let rb = prog
                .run_interp_with(&mut b, &opts)
                .map_err(|e| e.to_string());
            assert_eq!(ra.is_ok(), rb.is_ok(), "seed {seed}: {ra:?} vs {rb:?}");
            if ra.is_ok() {
                assert_eq!((ra, &a), (rb, &b), "seed {seed}: runs differ");
            }
        }
        assert!(with_callx > 100, "only {with_callx} programs used callx");
    }
}
