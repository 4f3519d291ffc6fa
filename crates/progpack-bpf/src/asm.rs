//! Assembler and disassembler for the syntax of the bpf_conformance `.data` files.
//!
//! One instruction per line; `#` starts a comment; `name:` defines a label (alone on its line
//! or before an instruction). Registers are `%r0`..`%r10` (also without `%`; `%r11`..`%r15`
//! assemble, for negative tests, and the checker rejects them). Numbers are decimal or `0x`
//! hex, optionally signed; 32-bit immediates accept `-2^31..2^32` and wrap to the 32-bit
//! encoding (`0xffffffff` is -1). Jump targets are labels or signed slot offsets (`+3`, `-1`).
//! The first `exit` also defines the label `exit`, as upstream does.
//!
//! | form | examples |
//! |---|---|
//! | ALU (64-bit; `32` suffix for 32-bit, `64` suffix accepted) | `add %r1, 4`, `mov32 %r0, %r2`, `sdiv %r0, -3`, `smod32 %r1, %r2`, `neg %r1`, `arsh64 %r0, 3` |
//! | sign-extending moves | `movsx832 %r0, %r1`, `movsx1664 %r0, %r1`, `movsx3264 %r0, %r1` |
//! | byte order | `le16 %r0`, `be32 %r0`, `bswap64 %r0` (also `swap64`) |
//! | 64-bit immediate | `lddw %r0, 0x1122334455667788` |
//! | loads / sign-extending loads | `ldxw %r0, [%r1+4]`, `ldxdw %r0, [%r10-8]`, `ldxsh %r0, [%r1]` (also `ldxhsx`) |
//! | stores | `stw [%r1+2], 5`, `stxdw [%r10-8], %r1` |
//! | atomics | `lock add [%r10-8], %r1`, `lock fetch xor32 [%r1], %r2`, `lock xchg [%r1], %r2`, `lock cmpxchg32 [%r1], %r2` |
//! | jumps | `ja L1`, `ja +2`, `ja32 L1` (also `gotol`), `jeq %r1, 5, L2`, `jsgt32 %r1, %r2, -3` |
//! | calls | `call 5`, `call helper 5`, `call %r2` (callx), `call local func1`, `call runtime 7` |
//! | return | `exit` |
//!
//! [`disassemble`] prints this syntax with numeric jump offsets, and
//! `assemble(&disassemble(p)) == p` for every program whose instructions all decode.

use std::collections::HashMap;
use std::fmt;

use crate::decode::{decode_at, AluOp, AtomicOp, Cond, EndOp, Instr, Size, Src, Width};
use crate::insn::{Insn, CALL};

/// Why a text did not assemble. `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AsmError {
    /// The mnemonic is not known.
    #[error("line {line}: unknown mnemonic `{mnemonic}`")]
    UnknownMnemonic {
        /// Line number.
        line: usize,
        /// The mnemonic.
        mnemonic: String,
    },
    /// An operand is malformed, or the operand count is wrong.
    #[error("line {line}: {msg}")]
    Syntax {
        /// Line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A jump or call names a label that is not defined.
    #[error("line {line}: undefined label `{label}`")]
    UndefinedLabel {
        /// Line number.
        line: usize,
        /// The label.
        label: String,
    },
    /// A label is defined twice.
    #[error("line {line}: duplicate label `{label}`")]
    DuplicateLabel {
        /// Line number.
        line: usize,
        /// The label.
        label: String,
    },
    /// A resolved jump offset does not fit its field.
    #[error("line {line}: jump offset {offset} does not fit")]
    OffsetRange {
        /// Line number.
        line: usize,
        /// The offset.
        offset: i64,
    },
}

/// A jump target before label resolution.
#[derive(Clone, Debug)]
enum Target {
    Offset(i64),
    Label(String),
}

/// What a line assembles to: a typed instruction (possibly with a target to resolve), or a
/// raw slot for encodings the typed form does not have (`call runtime`).
#[derive(Clone, Debug)]
enum Item {
    Instr(Instr, Option<Target>),
    Raw(Insn),
}

fn syntax(line: usize, msg: impl Into<String>) -> AsmError {
    AsmError::Syntax {
        line,
        msg: msg.into(),
    }
}

/// Parses a signed decimal or `0x` hex integer.
fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()?
    } else {
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        body.parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

struct Line<'a> {
    no: usize,
    mnemonic: &'a str,
    ops: Vec<&'a str>,
}

impl Line<'_> {
    fn err(&self, msg: impl Into<String>) -> AsmError {
        syntax(self.no, msg)
    }

    fn want(&self, n: usize) -> Result<(), AsmError> {
        if self.ops.len() != n {
            return Err(self.err(format!(
                "`{}` takes {n} operand(s), got {}",
                self.mnemonic,
                self.ops.len()
            )));
        }
        Ok(())
    }

    fn reg(&self, s: &str) -> Result<u8, AsmError> {
        let t = s.trim();
        let t = t.strip_prefix('%').unwrap_or(t);
        t.strip_prefix('r')
            .and_then(|n| {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse::<u8>().ok()
            })
            .filter(|&n| n <= 15)
            .ok_or_else(|| self.err(format!("bad register `{s}`")))
    }

    fn is_reg(s: &str) -> bool {
        let t = s.trim();
        let t = t.strip_prefix('%').unwrap_or(t);
        t.len() >= 2 && t.starts_with('r') && t[1..].bytes().all(|b| b.is_ascii_digit())
    }

    fn int_in(&self, s: &str, lo: i128, hi: i128, what: &str) -> Result<i128, AsmError> {
        parse_int(s)
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(|| self.err(format!("bad {what} `{s}`")))
    }

    fn imm32(&self, s: &str) -> Result<i32, AsmError> {
        Ok(self.int_in(s, i32::MIN as i128, u32::MAX as i128, "32-bit immediate")? as u32 as i32)
    }

    fn imm64(&self, s: &str) -> Result<u64, AsmError> {
        Ok(self.int_in(s, i64::MIN as i128, u64::MAX as i128, "64-bit immediate")? as u64)
    }

    fn src(&self, s: &str) -> Result<Src, AsmError> {
        if Self::is_reg(s) {
            Ok(Src::Reg(self.reg(s)?))
        } else {
            Ok(Src::Imm(self.imm32(s)?))
        }
    }

    /// `[%rN]`, `[%rN+off]`, `[%rN-off]`.
    fn mem(&self, s: &str) -> Result<(u8, i16), AsmError> {
        let inner = s
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| self.err(format!("bad memory operand `{s}`")))?;
        let split = inner.find(['+', '-']);
        let (r, off) = match split {
            Some(i) => (&inner[..i], {
                let v = self.int_in(&inner[i..].replace(' ', ""), -32768, 65535, "offset")?;
                v as u16 as i16
            }),
            None => (inner, 0),
        };
        Ok((self.reg(r)?, off))
    }

    fn target(&self, s: &str) -> Result<Target, AsmError> {
        let t = s.trim();
        if let Some(v) = parse_int(t) {
            return Ok(Target::Offset(
                v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
            ));
        }
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            && !t.as_bytes()[0].is_ascii_digit();
        if ok {
            Ok(Target::Label(t.to_string()))
        } else {
            Err(self.err(format!("bad jump target `{s}`")))
        }
    }
}

fn size_of(s: &str) -> Option<Size> {
    Some(match s {
        "b" => Size::B,
        "h" => Size::H,
        "w" => Size::W,
        "dw" => Size::DW,
        _ => return None,
    })
}

fn alu_op(s: &str) -> Option<AluOp> {
    Some(match s {
        "add" => AluOp::Add,
        "sub" => AluOp::Sub,
        "mul" => AluOp::Mul,
        "div" => AluOp::Div,
        "sdiv" => AluOp::SDiv,
        "or" => AluOp::Or,
        "and" => AluOp::And,
        "lsh" => AluOp::Lsh,
        "rsh" => AluOp::Rsh,
        "mod" => AluOp::Mod,
        "smod" => AluOp::SMod,
        "xor" => AluOp::Xor,
        "mov" => AluOp::Mov,
        "movsx8" => AluOp::MovSx(8),
        "movsx16" => AluOp::MovSx(16),
        "movsx32" => AluOp::MovSx(32),
        "arsh" => AluOp::Arsh,
        _ => return None,
    })
}

fn cond_of(s: &str) -> Option<Cond> {
    Some(match s {
        "jeq" => Cond::Eq,
        "jgt" => Cond::Gt,
        "jge" => Cond::Ge,
        "jset" => Cond::Set,
        "jne" => Cond::Ne,
        "jsgt" => Cond::Sgt,
        "jsge" => Cond::Sge,
        "jlt" => Cond::Lt,
        "jle" => Cond::Le,
        "jslt" => Cond::Slt,
        "jsle" => Cond::Sle,
        _ => return None,
    })
}

fn atomic_op(s: &str) -> Option<AtomicOp> {
    Some(match s {
        "add" => AtomicOp::Add,
        "or" => AtomicOp::Or,
        "and" => AtomicOp::And,
        "xor" => AtomicOp::Xor,
        "xchg" => AtomicOp::Xchg,
        "cmpxchg" => AtomicOp::CmpXchg,
        _ => return None,
    })
}

/// Splits a mnemonic into its base and width (`add32` -> `add`, 32-bit).
fn width_suffix(m: &str) -> (&str, Width) {
    if let Some(b) = m.strip_suffix("32") {
        (b, Width::W32)
    } else if let Some(b) = m.strip_suffix("64") {
        (b, Width::W64)
    } else {
        (m, Width::W64)
    }
}

fn parse_line(l: &Line<'_>) -> Result<Item, AsmError> {
    let m = l.mnemonic;
    let ins = |i| Ok(Item::Instr(i, None));
    match m {
        "exit" => {
            l.want(0)?;
            return ins(Instr::Exit);
        }
        "lddw" => {
            l.want(2)?;
            return ins(Instr::Lddw {
                dst: l.reg(l.ops[0])?,
                imm: l.imm64(l.ops[1])?,
            });
        }
        "ja" | "ja32" | "gotol" => {
            l.want(1)?;
            return Ok(Item::Instr(
                Instr::Ja {
                    off: 0,
                    long: m != "ja",
                },
                Some(l.target(l.ops[0])?),
            ));
        }
        "callx" => {
            l.want(1)?;
            return ins(Instr::Callx {
                reg: l.reg(l.ops[0])?,
            });
        }
        "call" => {
            // `call N`, `call %rN`, `call helper N|%rN`, `call local T`, `call runtime N`.
            let words: Vec<&str> = l.ops.iter().flat_map(|o| o.split_whitespace()).collect();
            let (mode, arg) = match words[..] {
                [a] => ("helper", a),
                [mode, a] => (mode, a),
                _ => return Err(l.err("`call` takes [helper|local|runtime] and a target")),
            };
            return match mode {
                "helper" if Line::is_reg(arg) => ins(Instr::Callx { reg: l.reg(arg)? }),
                "helper" => ins(Instr::Call {
                    id: l.imm32(arg)? as u32,
                }),
                "local" => Ok(Item::Instr(
                    Instr::CallLocal { off: 0 },
                    Some(l.target(arg)?),
                )),
                "runtime" => Ok(Item::Raw(Insn::new(CALL, 0, 2, 0, l.imm32(arg)?))),
                _ => Err(l.err(format!("unknown call mode `{mode}`"))),
            };
        }
        "lock" => {
            // `lock [fetch] op[32] [%rN+off], %rM`: the first operand holds the words.
            if l.ops.len() != 2 {
                return Err(l.err("`lock` takes [fetch] op [mem], reg"));
            }
            let words: Vec<&str> = l.ops[0].split_whitespace().collect();
            let (fetch, op, memop) = match words[..] {
                ["fetch", op, mem] => (true, op, mem),
                [op, mem] => (false, op, mem),
                _ => return Err(l.err("`lock` takes [fetch] op [mem], reg")),
            };
            let (base, width) = width_suffix(op);
            let op = atomic_op(base).ok_or_else(|| AsmError::UnknownMnemonic {
                line: l.no,
                mnemonic: format!("lock {op}"),
            })?;
            let (base, off) = l.mem(memop)?;
            return ins(Instr::Atomic {
                width,
                op,
                fetch: fetch || matches!(op, AtomicOp::Xchg | AtomicOp::CmpXchg),
                base,
                off,
                src: l.reg(l.ops[1])?,
            });
        }
        _ => {}
    }
    // Byte order: le16, be32, bswap64, swap16.
    for (prefix, op) in [
        ("le", EndOp::Le),
        ("be", EndOp::Be),
        ("bswap", EndOp::Swap),
        ("swap", EndOp::Swap),
    ] {
        if let Some(bits) = m.strip_prefix(prefix) {
            if let Ok(bits @ (16 | 32 | 64)) = bits.parse::<u8>() {
                l.want(1)?;
                return ins(Instr::End {
                    op,
                    bits,
                    dst: l.reg(l.ops[0])?,
                });
            }
        }
    }
    // Loads: ldx{b,h,w,dw}, ldxs{b,h,w}, ldx{b,h,w}sx.
    if let Some(rest) = m.strip_prefix("ldx") {
        let (size, signed) = if let Some(s) = size_of(rest) {
            (s, false)
        } else if let Some(s) = rest.strip_prefix('s').and_then(size_of) {
            (s, true)
        } else if let Some(s) = rest.strip_suffix("sx").and_then(size_of) {
            (s, true)
        } else {
            return Err(AsmError::UnknownMnemonic {
                line: l.no,
                mnemonic: m.into(),
            });
        };
        l.want(2)?;
        let (base, off) = l.mem(l.ops[1])?;
        return ins(Instr::Load {
            size,
            signed,
            dst: l.reg(l.ops[0])?,
            base,
            off,
        });
    }
    // Stores: stx{b,h,w,dw} (register) and st{b,h,w,dw} (immediate).
    if let Some(size) = m.strip_prefix("stx").and_then(size_of) {
        l.want(2)?;
        let (base, off) = l.mem(l.ops[0])?;
        return ins(Instr::StoreReg {
            size,
            base,
            off,
            src: l.reg(l.ops[1])?,
        });
    }
    if let Some(size) = m.strip_prefix("st").and_then(size_of) {
        l.want(2)?;
        let (base, off) = l.mem(l.ops[0])?;
        return ins(Instr::StoreImm {
            size,
            base,
            off,
            imm: l.imm32(l.ops[1])?,
        });
    }
    let (base, width) = width_suffix(m);
    // Conditional jumps.
    if let Some(cond) = cond_of(base) {
        l.want(3)?;
        return Ok(Item::Instr(
            Instr::Jcc {
                width,
                cond,
                dst: l.reg(l.ops[0])?,
                src: l.src(l.ops[1])?,
                off: 0,
            },
            Some(l.target(l.ops[2])?),
        ));
    }
    if base == "neg" {
        l.want(1)?;
        return ins(Instr::Neg {
            width,
            dst: l.reg(l.ops[0])?,
        });
    }
    if let Some(op) = alu_op(base) {
        l.want(2)?;
        let src = l.src(l.ops[1])?;
        if matches!(op, AluOp::MovSx(_)) && !matches!(src, Src::Reg(_)) {
            return Err(l.err("movsx takes a register source"));
        }
        return ins(Instr::Alu {
            width,
            op,
            dst: l.reg(l.ops[0])?,
            src,
        });
    }
    Err(AsmError::UnknownMnemonic {
        line: l.no,
        mnemonic: m.into(),
    })
}

/// Assembles `text` into instruction slots.
pub fn assemble(text: &str) -> Result<Vec<Insn>, AsmError> {
    let mut items: Vec<(usize, usize, Item)> = Vec::new(); // (line, slot, item)
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut slot = 0usize;
    for (idx, raw) in text.lines().enumerate() {
        let no = idx + 1;
        let mut line = raw.split('#').next().unwrap_or("").trim();
        // Labels: `name:` at the start of the line.
        while let Some(colon) = line.find(':') {
            let name = line[..colon].trim();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            if !valid {
                break;
            }
            if labels.insert(name.to_string(), slot).is_some() {
                return Err(AsmError::DuplicateLabel {
                    line: no,
                    label: name.into(),
                });
            }
            line = line[colon + 1..].trim();
        }
        if line.is_empty() {
            continue;
        }
        let (mnemonic, rest) = match line.find(char::is_whitespace) {
            Some(i) => (&line[..i], line[i..].trim()),
            None => (line, ""),
        };
        let ops: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',').map(str::trim).collect()
        };
        if ops.iter().any(|o| o.is_empty()) {
            return Err(syntax(no, "empty operand"));
        }
        let l = Line { no, mnemonic, ops };
        let item = parse_line(&l)?;
        if mnemonic == "exit" && !labels.contains_key("exit") {
            labels.insert("exit".into(), slot);
        }
        let n = match &item {
            Item::Instr(i, _) => i.slots(),
            Item::Raw(_) => 1,
        };
        items.push((no, slot, item));
        slot += n;
    }

    let mut out = Vec::with_capacity(slot);
    for (no, pc, item) in items {
        match item {
            Item::Raw(i) => out.push(i),
            Item::Instr(mut ins, target) => {
                if let Some(t) = target {
                    let off = match t {
                        Target::Offset(o) => o,
                        Target::Label(name) => {
                            let &dest = labels.get(&name).ok_or(AsmError::UndefinedLabel {
                                line: no,
                                label: name,
                            })?;
                            dest as i64 - pc as i64 - 1
                        }
                    };
                    let range = AsmError::OffsetRange {
                        line: no,
                        offset: off,
                    };
                    match &mut ins {
                        Instr::Ja { off: o, long } => {
                            let fits = if *long {
                                i32::try_from(off).is_ok()
                            } else {
                                i16::try_from(off).is_ok()
                            };
                            if !fits {
                                return Err(range);
                            }
                            *o = off as i32;
                        }
                        Instr::CallLocal { off: o } => {
                            *o = i32::try_from(off).map_err(|_| range)?;
                        }
                        Instr::Jcc { off: o, .. } => {
                            *o = i16::try_from(off).map_err(|_| range)?;
                        }
                        _ => {}
                    }
                }
                out.extend(ins.encode());
            }
        }
    }
    Ok(out)
}

fn reg(r: u8) -> String {
    format!("%r{r}")
}

fn mem(base: u8, off: i16) -> String {
    match off {
        0 => format!("[%r{base}]"),
        o if o > 0 => format!("[%r{base}+{o}]"),
        o => format!("[%r{base}{o}]"),
    }
}

fn rel(off: i64) -> String {
    if off >= 0 {
        format!("+{off}")
    } else {
        off.to_string()
    }
}

fn src(s: Src) -> String {
    match s {
        Src::Reg(r) => reg(r),
        Src::Imm(i) => i.to_string(),
    }
}

fn w(width: Width) -> &'static str {
    match width {
        Width::W32 => "32",
        Width::W64 => "",
    }
}

impl fmt::Display for Instr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Instr::Alu {
                width,
                op,
                dst,
                src: s,
            } => {
                let name = match op {
                    AluOp::Add => "add",
                    AluOp::Sub => "sub",
                    AluOp::Mul => "mul",
                    AluOp::Div => "div",
                    AluOp::SDiv => "sdiv",
                    AluOp::Or => "or",
                    AluOp::And => "and",
                    AluOp::Lsh => "lsh",
                    AluOp::Rsh => "rsh",
                    AluOp::Mod => "mod",
                    AluOp::SMod => "smod",
                    AluOp::Xor => "xor",
                    AluOp::Mov => "mov",
                    AluOp::MovSx(bits) => {
                        let suffix = if width == Width::W64 { "64" } else { "32" };
                        return write!(f, "movsx{bits}{suffix} {}, {}", reg(dst), src(s));
                    }
                    AluOp::Arsh => "arsh",
                };
                write!(f, "{name}{} {}, {}", w(width), reg(dst), src(s))
            }
            Instr::Neg { width, dst } => write!(f, "neg{} {}", w(width), reg(dst)),
            Instr::End { op, bits, dst } => {
                let name = match op {
                    EndOp::Le => "le",
                    EndOp::Be => "be",
                    EndOp::Swap => "bswap",
                };
                write!(f, "{name}{bits} {}", reg(dst))
            }
            Instr::Lddw { dst, imm } => write!(f, "lddw {}, {imm:#x}", reg(dst)),
            Instr::LddwHi => write!(f, "# (second slot of lddw)"),
            Instr::Load {
                size,
                signed,
                dst,
                base,
                off,
            } => {
                let s = if signed { "s" } else { "" };
                write!(
                    f,
                    "ldx{s}{} {}, {}",
                    size.suffix(),
                    reg(dst),
                    mem(base, off)
                )
            }
            Instr::StoreImm {
                size,
                base,
                off,
                imm,
            } => write!(f, "st{} {}, {imm}", size.suffix(), mem(base, off)),
            Instr::StoreReg {
                size,
                base,
                off,
                src: s,
            } => write!(f, "stx{} {}, {}", size.suffix(), mem(base, off), reg(s)),
            Instr::Atomic {
                width,
                op,
                fetch,
                base,
                off,
                src: s,
            } => {
                let name = match op {
                    AtomicOp::Add => "add",
                    AtomicOp::Or => "or",
                    AtomicOp::And => "and",
                    AtomicOp::Xor => "xor",
                    AtomicOp::Xchg => "xchg",
                    AtomicOp::CmpXchg => "cmpxchg",
                };
                let fe = if fetch && !matches!(op, AtomicOp::Xchg | AtomicOp::CmpXchg) {
                    "fetch "
                } else {
                    ""
                };
                write!(
                    f,
                    "lock {fe}{name}{} {}, {}",
                    w(width),
                    mem(base, off),
                    reg(s)
                )
            }
            Instr::Ja { off, long } => {
                write!(
                    f,
                    "{} {}",
                    if long { "ja32" } else { "ja" },
                    rel(off as i64)
                )
            }
            Instr::Jcc {
                width,
                cond,
                dst,
                src: s,
                off,
            } => {
                let name = match cond {
                    Cond::Eq => "jeq",
                    Cond::Gt => "jgt",
                    Cond::Ge => "jge",
                    Cond::Set => "jset",
                    Cond::Ne => "jne",
                    Cond::Sgt => "jsgt",
                    Cond::Sge => "jsge",
                    Cond::Lt => "jlt",
                    Cond::Le => "jle",
                    Cond::Slt => "jslt",
                    Cond::Sle => "jsle",
                };
                write!(
                    f,
                    "{name}{} {}, {}, {}",
                    w(width),
                    reg(dst),
                    src(s),
                    rel(off as i64)
                )
            }
            Instr::Call { id } => write!(f, "call {id}"),
            Instr::CallLocal { off } => write!(f, "call local {}", rel(off as i64)),
            Instr::Callx { reg: r } => write!(f, "call {}", reg(r)),
            Instr::Exit => write!(f, "exit"),
        }
    }
}

/// Disassembles slots, one instruction per line. Slots that do not decode are printed as
/// comments with their raw value (such output does not assemble back to the same slots).
pub fn disassemble(slots: &[Insn]) -> String {
    let mut out = String::new();
    let mut pc = 0;
    while pc < slots.len() {
        match decode_at(slots, pc) {
            Ok(i) => {
                out.push_str(&i.to_string());
                out.push('\n');
                pc += i.slots();
            }
            Err(e) => {
                let raw = u64::from_le_bytes(slots[pc].to_bytes());
                out.push_str(&format!("# {raw:#018x}: {e}\n"));
                pc += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::*;

    #[test]
    fn assembles_conformance_forms() {
        let p = assemble(
            "mov %r1, 0 # comment\n\
             ja L2\n\
             L1:\n\
             lddw %r0, 0x1122334455667788\n\
             exit\n\
             L2: ldxdw %r2, [%r10-8]\n\
             lock fetch add32 [%r10-8], %r1\n\
             jne32 %r1, 0x80000000, L1\n\
             call local L1\n\
             call %r2\n\
             ja exit\n",
        )
        .unwrap();
        assert_eq!(p[0], Insn::new(CLS_ALU64 | ALU_MOV, 1, 0, 0, 0));
        assert_eq!(p[1], Insn::new(CLS_JMP, 0, 0, 3, 0));
        assert_eq!(p[2], Insn::new(LD_DW_IMM, 0, 0, 0, 0x55667788));
        assert_eq!(p[3], Insn::new(0, 0, 0, 0, 0x11223344));
        assert_eq!(p[5], Insn::new(CLS_LDX | MODE_MEM | SIZE_DW, 2, 10, -8, 0));
        assert_eq!(
            p[6],
            Insn::new(CLS_STX | MODE_ATOMIC | SIZE_W, 10, 1, -8, ATOMIC_FETCH)
        );
        assert_eq!(p[7], Insn::new(CLS_JMP32 | JMP_JNE, 1, 0, -6, i32::MIN));
        assert_eq!(p[8], Insn::new(CALL, 0, CALL_LOCAL, 0, -7));
        assert_eq!(p[9], Insn::new(CALLX, 2, 0, 0, 0));
        assert_eq!(p[10], Insn::new(CLS_JMP, 0, 0, -7, 0));
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(
            assemble("frob %r1"),
            Err(AsmError::UnknownMnemonic { line: 1, .. })
        ));
        assert!(matches!(
            assemble("ja nowhere\nexit"),
            Err(AsmError::UndefinedLabel { line: 1, .. })
        ));
        assert!(matches!(
            assemble("a:\na:\nexit"),
            Err(AsmError::DuplicateLabel { line: 2, .. })
        ));
        assert!(matches!(
            assemble("mov %r1, 0x100000000"),
            Err(AsmError::Syntax { line: 1, .. })
        ));
        assert!(matches!(assemble("add %r1"), Err(AsmError::Syntax { .. })));
        assert!(matches!(
            assemble("ldxw %r1, %r2"),
            Err(AsmError::Syntax { .. })
        ));
    }

    #[test]
    fn disassembly_round_trips() {
        let text = "add32 %r1, -3\nsdiv %r0, %r2\nmovsx1664 %r3, %r4\nbe16 %r0\nbswap32 %r1\n\
                    ldxsh %r0, [%r1+2]\nstw [%r10-4], 7\nstxdw [%r1], %r2\n\
                    lock xchg32 [%r1+8], %r3\nlock cmpxchg [%r1], %r2\nlock or [%r2-2], %r1\n\
                    ja32 -2\njsle %r1, %r2, +1\ncall 5\ncall local -3\ncall %r3\n\
                    lddw %r9, 0xffffffffffffffff\nneg %r2\nexit\n";
        let p = assemble(text).unwrap();
        let d = disassemble(&p);
        assert_eq!(d, text);
        assert_eq!(assemble(&d).unwrap(), p);
    }
}
