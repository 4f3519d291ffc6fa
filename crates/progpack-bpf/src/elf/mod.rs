//! Loading eBPF ELF objects as clang writes them (`clang -O2 -target bpf -c`).
//!
//! [`Vm::load_elf`] reads an object with the `object` crate and returns an [`Object`]: its
//! maps, created from the object's definitions, and its programs, loaded (checked, and
//! JIT-compiled if the VM has the JIT on) in an environment holding every map of the object.
//!
//! - Programs: every function symbol of an executable section other than `.text` (a section
//!   without function symbols is one program). A program that calls into `.text` gets all of
//!   `.text` appended (bpf-to-bpf calls).
//! - Maps: BTF-defined ones in `.maps` (read from `.BTF` by the `btf` module), legacy
//!   `struct bpf_map_def`s in `maps`, and `.data*`, `.rodata*` (read-only) and `.bss*` as
//!   one-element arrays holding the section.
//! - Relocations: see the `link` module; `lddw` map references become map handles and value addresses
//!   ([`crate::pseudo`]).
//!
//! Everything is checked: a malformed or hostile object gives an [`ElfError`], never a panic;
//! sizes and counts are bounded before anything is allocated for them.
//!
//! BTF is read by our own small parser (module `btf`) rather than a crate: the `btfparse` crate
//! targets kernel BTF (its pointer size comes from the kernel's `struct list_head`) and
//! resolves sizes by unbounded recursion, which a cyclic type graph in a hostile object turns
//! into a stack overflow; `aya-obj` brings aya's whole object model.

mod btf;
mod defs;
mod link;

use std::sync::Arc;

use object::{Object as _, ObjectSection, ObjectSymbol, SectionFlags, SymbolKind, SymbolSection};

use crate::context::ProgramEnv;
use crate::maps::{Map, MapError, UpdateFlag};
use crate::{BpfProgram, Vm};
use defs::MapSpec;

/// Most programs one object may define.
const MAX_PROGRAMS: usize = 4096;
/// `SHF_EXECINSTR`.
const SHF_EXECINSTR: u64 = 0x4;
/// `EM_BPF`.
const EM_BPF: u16 = 247;

/// Why an object could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// Not a well-formed ELF file.
    #[error("not a valid ELF object: {0}")]
    Parse(String),
    /// An ELF file for another machine (or 32-bit, or big-endian).
    #[error("not a 64-bit little-endian eBPF object")]
    NotBpf,
    /// A section's data lies (partly) outside the file, or is not whole instructions.
    #[error("section {section} is truncated")]
    Truncated {
        /// Section name.
        section: String,
    },
    /// Two sections the loader uses overlap in the file.
    #[error("sections {a} and {b} overlap")]
    OverlappingSections {
        /// One section.
        a: String,
        /// The other.
        b: String,
    },
    /// A relocation whose offset is outside its section.
    #[error("relocation at {offset:#x} is outside section {section}")]
    RelocationOutOfRange {
        /// Section name.
        section: String,
        /// Relocation offset.
        offset: u64,
    },
    /// A relocation type the loader does not apply to code.
    #[error("unknown relocation type {r_type} in {section}")]
    UnknownRelocation {
        /// Section name.
        section: String,
        /// The ELF relocation type.
        r_type: u32,
    },
    /// A relocation that does not fit the instruction or symbol it names.
    #[error("bad relocation at {offset:#x} in {section}: {reason}")]
    BadRelocation {
        /// Section name.
        section: String,
        /// Relocation offset.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A call to a helper by a name the VM's registry does not know.
    #[error("unknown helper {name}")]
    UnknownHelper {
        /// The symbol name.
        name: String,
    },
    /// Malformed BTF.
    #[error("bad BTF: {0}")]
    Btf(&'static str),
    /// A map definition that makes no sense.
    #[error("bad map {name}: {reason}")]
    BadMap {
        /// Map name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A map type this runtime does not implement.
    #[error("map {name} has unsupported type {type_id}")]
    UnsupportedMapType {
        /// Map name.
        name: String,
        /// The kernel map type id.
        type_id: u32,
    },
    /// A map could not be created.
    #[error("creating map {name}: {error}")]
    Map {
        /// Map name.
        name: String,
        /// Why.
        error: MapError,
    },
    /// More of something than the loader accepts.
    #[error("too many {what} ({count})")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many (at least).
        count: usize,
    },
    /// The object has no program.
    #[error("no program in the object")]
    NoPrograms,
    /// A program was rejected (map reference, checker or JIT).
    #[error("program {name}: {error}")]
    Program {
        /// Program (function) name.
        name: String,
        /// Why.
        error: Box<crate::Error>,
    },
}

/// A program of an object.
#[derive(Clone, Debug)]
pub struct ObjectProgram {
    /// Its section (e.g. `socket`, `xdp/ingress`).
    pub section: String,
    /// Its function name (the section name if the section has no function symbol).
    pub name: String,
    /// The loaded program (shared: program arrays hold it weakly).
    pub program: Arc<BpfProgram>,
}

/// A loaded object: its maps (in definition order) and programs (in section order).
#[derive(Clone, Debug)]
pub struct Object {
    maps: Vec<Arc<Map>>,
    programs: Vec<ObjectProgram>,
}

impl Object {
    /// The maps, in definition order (`.maps`, `maps`, then global data sections).
    pub fn maps(&self) -> &[Arc<Map>] {
        &self.maps
    }

    /// The map named `name` (global data: the section name, e.g. `.bss`).
    pub fn map(&self, name: &str) -> Option<&Arc<Map>> {
        self.maps.iter().find(|m| m.name() == name)
    }

    /// The programs.
    pub fn programs(&self) -> &[ObjectProgram] {
        &self.programs
    }

    /// The first program whose function or section is named `name`.
    pub fn program(&self, name: &str) -> Option<&Arc<BpfProgram>> {
        self.programs
            .iter()
            .find(|p| p.name == name || p.section == name)
            .map(|p| &p.program)
    }
}

/// A section the loader reads: index, name, file range, data.
struct Sec<'d> {
    index: usize,
    name: String,
    file_range: Option<(u64, u64)>,
    size: u64,
    data: &'d [u8],
    exec: bool,
}

impl Vm {
    /// Loads an eBPF ELF object: creates its maps and loads its programs (see [`crate::elf`]).
    /// Helper calls by name resolve through this VM's registry ([`crate::Helpers::id_of`]).
    pub fn load_elf(&self, bytes: &[u8]) -> Result<Object, ElfError> {
        let file = object::File::parse(bytes).map_err(|e| ElfError::Parse(e.to_string()))?;
        check_machine(bytes, &file)?;
        let secs = sections(&file)?;
        let specs = map_specs(&file, &secs)?;
        let maps = create_maps(&specs)?;
        let mut env: ProgramEnv = self.env().clone();
        for m in &maps {
            env.add_map(Arc::clone(m));
        }
        let env = Arc::new(env);
        let text = secs
            .iter()
            .find(|s| s.name == ".text" && s.exec)
            .map(|s| (s.index, s.data));
        let cx = link::Ctx {
            file: &file,
            maps: &specs,
            helpers: self.helpers(),
            text,
        };
        let mut programs = Vec::new();
        for s in secs
            .iter()
            .filter(|s| s.exec && s.name != ".text" && !s.data.is_empty())
        {
            for (name, range) in functions(&file, s)? {
                if programs.len() >= MAX_PROGRAMS {
                    return Err(ElfError::TooMany {
                        what: "programs",
                        count: programs.len(),
                    });
                }
                let prog_err = |e: crate::Error| ElfError::Program {
                    name: name.clone(),
                    error: Box::new(e),
                };
                let mut slots = link::link(&cx, range, s.data)?;
                crate::vaddr::resolve(&mut slots, &maps, &env).map_err(|e| prog_err(e.into()))?;
                let program = self
                    .load_slots_in(&slots, Arc::clone(&env))
                    .map_err(prog_err)?;
                programs.push(ObjectProgram {
                    section: s.name.clone(),
                    name,
                    program: Arc::new(program),
                });
            }
        }
        if programs.is_empty() {
            return Err(ElfError::NoPrograms);
        }
        Ok(Object { maps, programs })
    }
}

fn check_machine(bytes: &[u8], file: &object::File) -> Result<(), ElfError> {
    // e_machine is at offset 18 of the ELF header.
    let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if !file.is_64() || !file.is_little_endian() || machine != Some(EM_BPF) {
        return Err(ElfError::NotBpf);
    }
    Ok(())
}

/// The sections with their data; checks that the ones with file data do not overlap.
fn sections<'d>(file: &object::File<'d>) -> Result<Vec<Sec<'d>>, ElfError> {
    let mut out: Vec<Sec<'d>> = Vec::new();
    for s in file.sections() {
        let name = s
            .name()
            .map_err(|e| ElfError::Parse(e.to_string()))?
            .to_owned();
        let data = s.data().map_err(|_| ElfError::Truncated {
            section: name.clone(),
        })?;
        let exec = matches!(s.flags(), SectionFlags::Elf { sh_flags, .. } if sh_flags.0 & SHF_EXECINSTR != 0);
        out.push(Sec {
            index: s.index().0,
            name,
            file_range: s.file_range(),
            size: s.size(),
            data,
            exec,
        });
    }
    let mut ranges: Vec<(u64, u64, &str)> = out
        .iter()
        .filter_map(|s| {
            s.file_range
                .filter(|r| r.1 > 0)
                .map(|(o, l)| (o, o + l, s.name.as_str()))
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(ElfError::OverlappingSections {
                a: w[0].2.to_owned(),
                b: w[1].2.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Every map definition of the object, in order: `.maps`, `maps`, global data.
fn map_specs(file: &object::File, secs: &[Sec]) -> Result<Vec<MapSpec>, ElfError> {
    let mut specs = Vec::new();
    if let Some(maps) = secs.iter().find(|s| s.name == ".maps") {
        let btf = secs
            .iter()
            .find(|s| s.name == ".BTF")
            .ok_or(ElfError::Btf(".maps without .BTF"))?;
        let btf = btf::Btf::parse(btf.data)?;
        specs.extend(defs::btf_maps(&btf, maps.index)?);
    }
    if let Some(legacy) = secs.iter().find(|s| s.name == "maps") {
        let mut syms: Vec<_> = file
            .symbols()
            .filter(|y| y.section() == SymbolSection::Section(object::SectionIndex(legacy.index)))
            .filter(|y| y.kind() != SymbolKind::Section)
            .collect();
        syms.sort_by_key(|y| y.address());
        for y in syms {
            if specs.len() >= defs::MAX_MAPS {
                return Err(ElfError::TooMany {
                    what: "maps",
                    count: specs.len(),
                });
            }
            let name = y.name().unwrap_or("").to_owned();
            let bytes = legacy
                .data
                .get(y.address() as usize..)
                .ok_or(ElfError::BadMap {
                    name: name.clone(),
                    reason: "definition outside the maps section",
                })?;
            specs.push(defs::legacy_map(&name, bytes, legacy.index, y.address())?);
        }
    }
    for s in secs
        .iter()
        .filter(|s| defs::data_section(&s.name).is_some() && !s.exec)
    {
        if specs.len() >= defs::MAX_MAPS {
            return Err(ElfError::TooMany {
                what: "maps",
                count: specs.len(),
            });
        }
        specs.push(defs::data_map(&s.name, s.index, s.size, s.data)?);
    }
    Ok(specs)
}

/// Creates the maps and fills global data.
fn create_maps(specs: &[MapSpec]) -> Result<Vec<Arc<Map>>, ElfError> {
    specs
        .iter()
        .map(|s| {
            let map_err = |error| ElfError::Map {
                name: s.name.clone(),
                error,
            };
            let map = match &s.data {
                Some((_, true)) => Map::new_read_only(&s.name, s.def),
                _ => Map::new(&s.name, s.def),
            }
            .map_err(map_err)?;
            if let Some((init, _)) = &s.data {
                if !init.is_empty() {
                    map.update(&0u32.to_le_bytes(), init, UpdateFlag::Any)
                        .map_err(map_err)?;
                }
            }
            Ok(map)
        })
        .collect()
}

/// The programs of executable section `s`: its global function symbols (name, code range),
/// or the whole section under its own name if it has none.
fn functions(file: &object::File, s: &Sec) -> Result<Vec<(String, link::Range)>, ElfError> {
    let mut f: Vec<(String, link::Range)> = file
        .symbols()
        .filter(|y| y.section() == SymbolSection::Section(object::SectionIndex(s.index)))
        .filter(|y| y.kind() == SymbolKind::Text && y.is_global())
        .map(|y| {
            (
                y.name().unwrap_or("").to_owned(),
                link::Range {
                    section: s.index,
                    start: y.address(),
                    len: y.size(),
                },
            )
        })
        .collect();
    if f.is_empty() {
        f.push((
            s.name.clone(),
            link::Range {
                section: s.index,
                start: 0,
                len: s.data.len() as u64,
            },
        ));
    }
    for (name, r) in &f {
        if !r.start.is_multiple_of(8) || !r.len.is_multiple_of(8) || r.len == 0 {
            return Err(ElfError::Truncated {
                section: format!("{} ({name})", s.name),
            });
        }
    }
    Ok(f)
}
