//! Turning one program of an object into slots: its function's instructions, the whole `.text`
//! appended when it calls into it, and every relocation applied.
//!
//! - `R_BPF_64_64` on an `lddw`: against a map definition, the `lddw` becomes
//!   `src = 1` (map by "fd", the map's index in the object); against global data, `src = 2`
//!   (map value: fd, and the offset in the second slot). Both are resolved to a map handle or
//!   a value address at load ([`crate::pseudo`]).
//! - `R_BPF_64_32` on a `call`: against an undefined symbol, a helper call by name (an unknown
//!   name is [`ElfError::UnknownHelper`]); against a function, a local call whose offset is
//!   fixed for where that function lands in the slots.
//!
//! Every offset, instruction and symbol a relocation names is checked; anything unexpected is
//! a typed [`ElfError`].

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SymbolSection,
};

use super::defs::MapSpec;
use super::ElfError;
use crate::helpers::Helpers;
use crate::insn::{decode_slots, Insn, CALL, LD_DW_IMM};

/// `R_BPF_64_64`: 64-bit immediate of an `lddw`.
pub(crate) const R_BPF_64_64: u32 = 1;
/// `R_BPF_64_32`: 32-bit immediate of a `call` (in instructions).
pub(crate) const R_BPF_64_32: u32 = 10;
/// Most relocations one section may have.
const MAX_RELOCS: usize = 1 << 20;

/// A code range of the object: section index, first byte, length in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub section: usize,
    pub start: u64,
    pub len: u64,
}

/// What relocation targets resolve against.
pub(crate) struct Ctx<'o, 'd> {
    pub file: &'o object::File<'d>,
    pub maps: &'o [MapSpec],
    pub helpers: &'o Helpers,
    /// The `.text` section, if any: index and instructions.
    pub text: Option<(usize, &'o [u8])>,
}

fn section_name(file: &object::File, index: usize) -> String {
    file.section_by_index(object::SectionIndex(index))
        .ok()
        .and_then(|s| s.name().ok().map(str::to_owned))
        .unwrap_or_else(|| format!("#{index}"))
}

/// The slots of the program at `prog` (a function of a program section).
pub(crate) fn link(cx: &Ctx, prog: Range, code: &[u8]) -> Result<Vec<Insn>, ElfError> {
    let name = section_name(cx.file, prog.section);
    let bytes = prog
        .start
        .checked_add(prog.len)
        .and_then(|end| code.get(prog.start as usize..end as usize))
        .ok_or_else(|| ElfError::Truncated {
            section: name.clone(),
        })?;
    let mut slots = decode_slots(bytes).ok_or_else(|| ElfError::Truncated {
        section: name.clone(),
    })?;
    let main_len = slots.len();
    // Calls into .text append it once.
    let calls_text = |index: usize| -> Result<bool, ElfError> {
        Ok(relocs(cx, prog.section)?.iter().any(|r| {
            in_range(prog, r.offset) && r.r_type == R_BPF_64_32 && r.target_section == Some(index)
        }))
    };
    let text = match cx.text {
        Some(t) if calls_text(t.0)? => Some(t),
        _ => None,
    };
    let text_base = match text {
        Some((_, code)) => {
            let t = decode_slots(code).ok_or(ElfError::Truncated {
                section: ".text".into(),
            })?;
            slots.extend(t);
            Some(main_len)
        }
        None => None,
    };
    apply(cx, &mut slots, prog, 0, None, text_base)?;
    if let (Some(base), Some((text_index, text))) = (text_base, text) {
        let range = Range {
            section: text_index,
            start: 0,
            len: text.len() as u64,
        };
        apply(cx, &mut slots, range, base, Some(base), Some(base))?;
    }
    Ok(slots)
}

fn in_range(r: Range, off: u64) -> bool {
    off >= r.start && off - r.start < r.len
}

/// One relocation, decoded.
struct Reloc {
    offset: u64,
    r_type: u32,
    /// The symbol's name, whether it is undefined, its section and value.
    sym_name: String,
    undefined: bool,
    target_section: Option<usize>,
    sym_value: u64,
}

fn relocs(cx: &Ctx, section: usize) -> Result<Vec<Reloc>, ElfError> {
    let sec = cx
        .file
        .section_by_index(object::SectionIndex(section))
        .map_err(|e| ElfError::Parse(e.to_string()))?;
    let sname = section_name(cx.file, section);
    let size = sec.size();
    let mut out = Vec::new();
    for (offset, r) in sec.relocations() {
        if offset.checked_add(8).is_none_or(|end| end > size) {
            return Err(ElfError::RelocationOutOfRange {
                section: sname.clone(),
                offset,
            });
        }
        if out.len() >= MAX_RELOCS {
            return Err(ElfError::TooMany {
                what: "relocations",
                count: out.len(),
            });
        }
        let RelocationFlags::Elf { r_type } = r.flags() else {
            return Err(ElfError::Parse("non-ELF relocation".into()));
        };
        let RelocationTarget::Symbol(si) = r.target() else {
            return Err(ElfError::BadRelocation {
                section: sname.clone(),
                offset,
                reason: "target is not a symbol",
            });
        };
        let sym = cx
            .file
            .symbol_by_index(si)
            .map_err(|_| ElfError::BadRelocation {
                section: sname.clone(),
                offset,
                reason: "symbol index out of range",
            })?;
        let (undefined, target_section) = match sym.section() {
            SymbolSection::Undefined => (true, None),
            SymbolSection::Section(i) => (false, Some(i.0)),
            _ => (false, None),
        };
        out.push(Reloc {
            offset,
            r_type: r_type.0,
            sym_name: sym.name().unwrap_or("").to_owned(),
            undefined,
            target_section,
            sym_value: sym.address(),
        });
    }
    Ok(out)
}

/// Applies the relocations of `range` (whose first instruction is slot `base`); local calls
/// into the same section land relative to `same_base` (the section's slot 0), calls into
/// `.text` relative to `text_base`.
fn apply(
    cx: &Ctx,
    slots: &mut [Insn],
    range: Range,
    base: usize,
    same_base: Option<usize>,
    text_base: Option<usize>,
) -> Result<(), ElfError> {
    let sname = section_name(cx.file, range.section);
    for r in relocs(cx, range.section)? {
        if !in_range(range, r.offset) {
            // Another function of the same section.
            continue;
        }
        let bad = |reason| ElfError::BadRelocation {
            section: sname.clone(),
            offset: r.offset,
            reason,
        };
        let rel = r.offset - range.start;
        if !rel.is_multiple_of(8) {
            return Err(bad("offset not at an instruction"));
        }
        let pc = base + (rel / 8) as usize;
        let ins = *slots.get(pc).ok_or(ElfError::RelocationOutOfRange {
            section: sname.clone(),
            offset: r.offset,
        })?;
        match r.r_type {
            R_BPF_64_64 => {
                if ins.opc != LD_DW_IMM || pc + 1 >= slots.len() {
                    return Err(bad("R_BPF_64_64 not on an lddw"));
                }
                let sec = r
                    .target_section
                    .ok_or(bad("lddw against an undefined symbol"))?;
                let addend = ins.imm as u32 as u64;
                if let Some(i) = cx
                    .maps
                    .iter()
                    .position(|m| m.section == sec && m.data.is_none() && m.offset == r.sym_value)
                {
                    slots[pc].src = crate::insn::PSEUDO_MAP_FD;
                    slots[pc].imm = i as i32;
                } else if let Some(i) = cx
                    .maps
                    .iter()
                    .position(|m| m.section == sec && m.data.is_some())
                {
                    let off = r
                        .sym_value
                        .checked_add(addend)
                        .ok_or(bad("offset overflow"))?;
                    let off = i32::try_from(off).map_err(|_| bad("offset overflow"))?;
                    slots[pc].src = crate::insn::PSEUDO_MAP_VALUE;
                    slots[pc].imm = i as i32;
                    slots[pc + 1].imm = off;
                } else {
                    return Err(bad("lddw against neither a map nor global data"));
                }
            }
            R_BPF_64_32 => {
                if ins.opc != CALL {
                    return Err(bad("R_BPF_64_32 not on a call"));
                }
                if r.undefined {
                    let id =
                        cx.helpers
                            .id_of(&r.sym_name)
                            .ok_or_else(|| ElfError::UnknownHelper {
                                name: r.sym_name.clone(),
                            })?;
                    slots[pc].src = crate::insn::CALL_HELPER;
                    slots[pc].imm = id as i32;
                    continue;
                }
                let sec = r.target_section.ok_or(bad("call target has no section"))?;
                let target_base = if Some(sec) == cx.text.map(|t| t.0) {
                    text_base.ok_or(bad("call into .text without .text"))?
                } else if sec == range.section {
                    same_base.ok_or(bad("call to another function of a program section"))?
                } else {
                    return Err(bad("call into a section that is not .text"));
                };
                if !r.sym_value.is_multiple_of(8) {
                    return Err(bad("call target not at an instruction"));
                }
                // The target instruction, relative to its section: libbpf's `st_value / 8 +
                // imm + 1` (imm is -1 against a function, the offset against a section).
                let t = (r.sym_value / 8) as i64 + ins.imm as i64 + 1;
                let target = target_base as i64 + t;
                if t < 0 || target >= slots.len() as i64 {
                    return Err(bad("call target out of range"));
                }
                slots[pc].src = crate::insn::CALL_LOCAL;
                slots[pc].imm =
                    i32::try_from(target - pc as i64 - 1).map_err(|_| bad("call too far"))?;
            }
            t => {
                return Err(ElfError::UnknownRelocation {
                    section: sname.clone(),
                    r_type: t,
                })
            }
        }
    }
    Ok(())
}
