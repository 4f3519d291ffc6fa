//! Just enough of BTF (the BPF Type Format, `.BTF` section) to read BTF-defined maps: the
//! type table, struct members, arrays, pointers, `DATASEC` variables, and type sizes.
//!
//! Hostile input is expected: every read is bounds-checked, type ids are checked against the
//! table, and resolving a type follows at most [`MAX_CHAIN`] links, so a cyclic or absurdly
//! deep type graph is an error, not a stack overflow. Sizes are computed with checked
//! arithmetic.

use super::ElfError;

/// Most links followed when resolving a type (typedef/const/volatile chains, array nesting).
const MAX_CHAIN: usize = 64;
/// Most types a `.BTF` section may declare.
const MAX_TYPES: usize = 1 << 20;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type: its header and where its trailing records start in the type section.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Offset of the trailing data in the type section.
    extra: usize,
}

/// A member of a struct: name and type id.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: String,
    pub type_id: u32,
}

/// A variable of a `DATASEC`: its name, type id and offset in the section.
#[derive(Clone, Debug)]
pub(crate) struct SecVar {
    pub name: String,
    pub type_id: u32,
    pub offset: u32,
}

/// A parsed `.BTF` section.
pub(crate) struct Btf<'a> {
    types: Vec<Type>,
    type_sec: &'a [u8],
    strings: &'a [u8],
}

fn err(what: &'static str) -> ElfError {
    ElfError::Btf(what)
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b
        .get(off..off.checked_add(4).ok_or(err("offset overflow"))?)
        .ok_or(err("truncated"))?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian `.BTF` section.
    pub(crate) fn parse(data: &'a [u8]) -> Result<Btf<'a>, ElfError> {
        let magic = data.get(..2).ok_or(err("truncated header"))?;
        if magic != [0x9f, 0xeb] {
            return Err(err("bad magic (or big-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let body = data
            .get(hdr_len..)
            .ok_or(err("header longer than section"))?;
        let range = |off: usize, len: usize| {
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or(err("type or string section out of range"))
        };
        let type_sec = range(type_off, type_len)?;
        let strings = range(str_off, str_len)?;
        let mut types = Vec::new();
        let mut off = 0;
        while off < type_sec.len() {
            if types.len() >= MAX_TYPES {
                return Err(err("too many types"));
            }
            let name_off = u32_at(type_sec, off)?;
            let info = u32_at(type_sec, off + 4)?;
            let size_or_type = u32_at(type_sec, off + 8)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
            let extra = off + 12;
            let n = vlen as usize;
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * n,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * n,
                _ => return Err(err("unknown type kind")),
            };
            off = extra + trailing;
            if off > type_sec.len() {
                return Err(err("truncated type"));
            }
            types.push(Type {
                name_off,
                kind,
                vlen,
                size_or_type,
                extra,
            });
        }
        Ok(Btf {
            types,
            type_sec,
            strings,
        })
    }

    fn ty(&self, id: u32) -> Result<Type, ElfError> {
        // Id 0 is void; type ids start at 1.
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .copied()
            .ok_or(err("type id out of range"))
    }

    fn name(&self, off: u32) -> Result<String, ElfError> {
        let s = self
            .strings
            .get(off as usize..)
            .ok_or(err("name out of range"))?;
        let end = s
            .iter()
            .position(|&b| b == 0)
            .ok_or(err("unterminated name"))?;
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    /// Skips typedefs, qualifiers and type tags.
    fn strip(&self, mut id: u32) -> Result<(u32, Type), ElfError> {
        for _ in 0..MAX_CHAIN {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok((id, t)),
            }
        }
        Err(err("type chain too long (or cyclic)"))
    }

    /// The variables of the `DATASEC` named `name`.
    pub(crate) fn datasec(&self, name: &str) -> Result<Vec<SecVar>, ElfError> {
        let Some(t) = self.types.iter().find(|t| {
            t.kind == KIND_DATASEC && self.name(t.name_off).ok().as_deref() == Some(name)
        }) else {
            return Ok(Vec::new());
        };
        let mut vars = Vec::with_capacity(t.vlen as usize);
        for k in 0..t.vlen as usize {
            let at = t.extra + 12 * k;
            let var_id = u32_at(self.type_sec, at)?;
            let offset = u32_at(self.type_sec, at + 4)?;
            let v = self.ty(var_id)?;
            if v.kind != KIND_VAR {
                return Err(err("DATASEC entry is not a VAR"));
            }
            vars.push(SecVar {
                name: self.name(v.name_off)?,
                type_id: v.size_or_type,
                offset,
            });
        }
        Ok(vars)
    }

    /// The members of struct `id` (through typedefs and qualifiers).
    pub(crate) fn members(&self, id: u32) -> Result<Vec<Member>, ElfError> {
        let (_, t) = self.strip(id)?;
        if t.kind != KIND_STRUCT {
            return Err(err("map definition is not a struct"));
        }
        (0..t.vlen as usize)
            .map(|k| {
                let at = t.extra + 12 * k;
                Ok(Member {
                    name: self.name(u32_at(self.type_sec, at)?)?,
                    type_id: u32_at(self.type_sec, at + 4)?,
                })
            })
            .collect()
    }

    /// For a member declared `int (*name)[N]` (`__uint`): N.
    pub(crate) fn uint_member(&self, id: u32) -> Result<u32, ElfError> {
        let (_, p) = self.strip(id)?;
        if p.kind != KIND_PTR {
            return Err(err("__uint member is not a pointer"));
        }
        let (_, a) = self.strip(p.size_or_type)?;
        if a.kind != KIND_ARRAY {
            return Err(err("__uint member does not point to an array"));
        }
        u32_at(self.type_sec, a.extra + 8)
    }

    /// For a member declared `T *name` (`__type`): the size of T.
    pub(crate) fn pointee_size(&self, id: u32) -> Result<u32, ElfError> {
        let (_, p) = self.strip(id)?;
        if p.kind != KIND_PTR {
            return Err(err("__type member is not a pointer"));
        }
        self.size_of(p.size_or_type)
    }

    /// Size in bytes of type `id`.
    pub(crate) fn size_of(&self, mut id: u32) -> Result<u32, ElfError> {
        let mut factor: u64 = 1;
        for _ in 0..MAX_CHAIN {
            let (sid, t) = self.strip(id)?;
            let size = match t.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT
                | KIND_DATASEC => t.size_or_type as u64,
                KIND_PTR => 8,
                KIND_ARRAY => {
                    let elem = u32_at(self.type_sec, t.extra)?;
                    let n = u32_at(self.type_sec, t.extra + 8)?;
                    factor = factor.checked_mul(n as u64).ok_or(err("size overflow"))?;
                    id = elem;
                    continue;
                }
                KIND_VAR => {
                    id = t.size_or_type;
                    continue;
                }
                _ => return Err(err("type has no size")),
            };
            let _ = sid;
            return u32::try_from(factor.checked_mul(size).ok_or(err("size overflow"))?)
                .map_err(|_| err("size overflow"));
        }
        Err(err("type chain too long (or cyclic)"))
    }
}
