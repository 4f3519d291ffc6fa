//! Malformed and hostile objects: each corruption of a real clang object gives its typed
//! `ElfError`, and no prefix of an object makes the loader panic.

use object::{Object, ObjectSection};
use progpack_bpf::{ElfError, Helpers, MapError, Vm};

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/elf");
    std::fs::read(dir.join(format!("{name}.o"))).unwrap()
}

fn load(bytes: &[u8]) -> Result<progpack_bpf::Object, ElfError> {
    Vm::new(Helpers::standard()).load_elf(bytes)
}

/// File offset and index of section `name`.
fn section(bytes: &[u8], name: &str) -> (usize, usize) {
    let f = object::File::parse(bytes).unwrap();
    let s = f.section_by_name(name).unwrap();
    (s.file_range().unwrap().0 as usize, s.index().0)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn every_prefix_is_an_error_not_a_panic() {
    for name in ["counter", "calls", "globals", "tailcall"] {
        let bytes = fixture(name);
        for len in (0..bytes.len()).step_by(7) {
            assert!(load(&bytes[..len]).is_err(), "{name}: prefix {len} loaded");
        }
        assert!(load(&bytes).is_ok());
    }
}

#[test]
fn unknown_relocation_type() {
    let mut b = fixture("counter");
    let (rel, _) = section(&b, ".relsocket");
    // r_info's low 32 bits are the type.
    put_u32(&mut b, rel + 8, 99);
    assert!(matches!(
        load(&b),
        Err(ElfError::UnknownRelocation { r_type: 99, .. })
    ));
}

#[test]
fn relocation_offset_out_of_range() {
    let mut b = fixture("counter");
    let (rel, _) = section(&b, ".relsocket");
    put_u64(&mut b, rel, 0x10_0000);
    assert!(matches!(
        load(&b),
        Err(ElfError::RelocationOutOfRange {
            offset: 0x10_0000,
            ..
        })
    ));
    // Inside the section but not at an instruction.
    let mut b = fixture("counter");
    put_u64(&mut b, rel, 0x3c);
    assert!(matches!(load(&b), Err(ElfError::BadRelocation { .. })));
}

#[test]
fn overlapping_sections() {
    let mut b = fixture("counter");
    let (maps_off, _) = section(&b, ".maps");
    let (_, socket) = section(&b, "socket");
    let shoff = u64::from_le_bytes(b[0x28..0x30].try_into().unwrap()) as usize;
    // sh_offset of the `socket` section header := where .maps starts.
    put_u64(&mut b, shoff + 64 * socket + 0x18, maps_off as u64);
    assert!(matches!(
        load(&b),
        Err(ElfError::OverlappingSections { .. })
    ));
}

#[test]
fn huge_map_sizes_are_refused_before_allocating() {
    let mut b = fixture("percpu");
    let (maps, _) = section(&b, "maps");
    // max_entries of the legacy definition; value size 8, 64+ CPUs: far over 1 GiB.
    put_u32(&mut b, maps + 12, u32::MAX);
    assert!(matches!(
        load(&b),
        Err(ElfError::Map {
            error: MapError::TooLarge { .. },
            ..
        })
    ));
    // An unknown map type.
    let mut b = fixture("percpu");
    put_u32(&mut b, maps, 99);
    assert!(matches!(
        load(&b),
        Err(ElfError::UnsupportedMapType { type_id: 99, .. })
    ));
}

#[test]
fn corrupt_btf_is_an_error() {
    let mut b = fixture("counter");
    let (btf, _) = section(&b, ".BTF");
    // type_len (header offset 12) far past the section.
    put_u32(&mut b, btf + 12, u32::MAX - 64);
    assert!(matches!(load(&b), Err(ElfError::Btf(_))));
    let mut b = fixture("counter");
    b[btf] = 0; // magic
    assert!(matches!(load(&b), Err(ElfError::Btf(_))));
}

#[test]
fn other_machines_are_refused() {
    let mut b = fixture("counter");
    b[18] = 62; // EM_X86_64
    assert!(matches!(load(&b), Err(ElfError::NotBpf)));
    assert!(matches!(load(b"\x7fELF"), Err(ElfError::Parse(_))));
}
