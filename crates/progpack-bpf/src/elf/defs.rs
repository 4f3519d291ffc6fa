//! Map definitions of an object: BTF-defined (`.maps`), legacy (`maps`), and the global data
//! sections (`.data*`, `.rodata*`, `.bss*`), each a one-element array whose value is the
//! section. A definition is identified by its section and offset, which is what relocations
//! point at.

use super::btf::Btf;
use super::ElfError;
use crate::maps::{MapDef, MapKind};

/// Most maps one object may define.
pub(crate) const MAX_MAPS: usize = 4096;

/// Largest global data section.
const MAX_DATA_SECTION: u64 = 64 << 20;

/// A map to create for an object.
#[derive(Clone, Debug)]
pub(crate) struct MapSpec {
    pub name: String,
    pub def: MapDef,
    /// ELF section index and offset of the definition (global data: offset 0).
    pub section: usize,
    pub offset: u64,
    /// Global data: the initial value (`.bss`: zeros), and whether programs may only read it.
    pub data: Option<(Vec<u8>, bool)>,
}

/// Which kind of section holds global data, by name.
pub(crate) fn data_section(name: &str) -> Option<bool> {
    let is = |p: &str| name == p || name.starts_with(&format!("{p}."));
    if is(".rodata") {
        Some(true)
    } else if is(".data") || is(".bss") {
        Some(false)
    } else {
        None
    }
}

/// The maps of a BTF-defined `.maps` section (`section` its index).
pub(crate) fn btf_maps(btf: &Btf, section: usize) -> Result<Vec<MapSpec>, ElfError> {
    let vars = btf.datasec(".maps")?;
    if vars.len() > MAX_MAPS {
        return Err(ElfError::TooMany {
            what: "maps",
            count: vars.len(),
        });
    }
    let mut specs = Vec::with_capacity(vars.len());
    for v in vars {
        let (mut kind, mut key, mut value, mut max, mut flags) = (None, 0, 0, 0, 0);
        for m in btf.members(v.type_id)? {
            match m.name.as_str() {
                "type" => kind = Some(btf.uint_member(m.type_id)?),
                "max_entries" => max = btf.uint_member(m.type_id)?,
                "map_flags" => flags = btf.uint_member(m.type_id)?,
                "key_size" => key = btf.uint_member(m.type_id)?,
                "value_size" => value = btf.uint_member(m.type_id)?,
                "key" => key = btf.pointee_size(m.type_id)?,
                "value" => value = btf.pointee_size(m.type_id)?,
                // pinning, values (static initialisation), ...: not supported, ignored.
                _ => {}
            }
        }
        let id = kind.ok_or(ElfError::BadMap {
            name: v.name.clone(),
            reason: "no type",
        })?;
        specs.push(MapSpec {
            def: MapDef {
                kind: kind_of(&v.name, id)?,
                key_size: key,
                value_size: value,
                max_entries: max,
                flags,
            },
            name: v.name,
            section,
            offset: v.offset as u64,
            data: None,
        });
    }
    Ok(specs)
}

fn kind_of(name: &str, id: u32) -> Result<MapKind, ElfError> {
    MapKind::from_id(id).ok_or_else(|| ElfError::UnsupportedMapType {
        name: name.to_owned(),
        type_id: id,
    })
}

/// A legacy `struct bpf_map_def` (type, key_size, value_size, max_entries[, map_flags]) named
/// `name` at `offset` of section `section`, whose bytes from there are `bytes`.
pub(crate) fn legacy_map(
    name: &str,
    bytes: &[u8],
    section: usize,
    offset: u64,
) -> Result<MapSpec, ElfError> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            bytes.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    let (Some(t), Some(k), Some(v), Some(m)) = (word(0), word(1), word(2), word(3)) else {
        return Err(ElfError::BadMap {
            name: name.to_owned(),
            reason: "legacy definition shorter than 16 bytes",
        });
    };
    Ok(MapSpec {
        name: name.to_owned(),
        def: MapDef {
            kind: kind_of(name, t)?,
            key_size: k,
            value_size: v,
            max_entries: m,
            flags: word(4).unwrap_or(0),
        },
        section,
        offset,
        data: None,
    })
}

/// The one-element array holding global data section `name` (index `section`) of `len`
/// bytes, initialised with `data` (empty for `.bss`).
pub(crate) fn data_map(
    name: &str,
    section: usize,
    len: u64,
    data: &[u8],
) -> Result<MapSpec, ElfError> {
    let read_only = data_section(name).unwrap_or(false);
    if len > MAX_DATA_SECTION {
        return Err(ElfError::BadMap {
            name: name.to_owned(),
            reason: "global data section over 64 MiB",
        });
    }
    let size = len as u32;
    let mut init = data.to_vec();
    init.resize(size as usize, 0);
    Ok(MapSpec {
        name: name.to_owned(),
        def: MapDef {
            kind: MapKind::Array,
            key_size: 4,
            value_size: size.max(1),
            max_entries: 1,
            flags: 0,
        },
        section,
        offset: 0,
        data: Some((init, read_only)),
    })
}
