//! The in-memory object file a debugger reads for one program: an ELF relocatable file with a
//! `.text` section at the program's address (`SHT_NOBITS`: the code is in the process already)
//! and one function symbol covering it, plus an `.eh_frame` section at the address of the
//! program's registered unwind information when it has some.
//!
//! GDB loads such a file with the section addresses written in it (as it does for LLVM's JIT
//! objects), so the symbol names the code where it runs and `bt` shows the name for frames
//! in it.

use object::elf;
use object::write::elf::{FileHeader, SectionHeader, Sym, Writer};
use object::Endianness;

#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183; // EM_AARCH64
#[cfg(not(target_arch = "aarch64"))]
const MACHINE: u16 = 62; // EM_X86_64

/// Builds the object file for `len` bytes of code at `addr` named `name` (already escaped: no
/// NUL), with `eh_frame` (bytes, and the address they are registered at) if any. `None` if the
/// writer refuses (it cannot for these inputs; nothing is registered then).
pub(crate) fn build(
    addr: usize,
    len: usize,
    name: &[u8],
    eh_frame: Option<(&[u8], usize)>,
) -> Option<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut w = Writer::new_single_phase(Endianness::Little, true, &mut buf);
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_REL,
        e_machine: elf::Machine(MACHINE),
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })
    .ok()?;
    let text_name = w.add_section_name(b".text");
    let eh_name = eh_frame.map(|_| w.add_section_name(b".eh_frame"));
    // The .eh_frame contents, if any, before the headers.
    let eh_at = eh_frame.map(|(bytes, _)| {
        let at = w.write_align(8);
        w.write(bytes);
        at
    });
    // Section indices, fixed by the order the headers are written below.
    const TEXT: u32 = 1;
    let sym_name = w.add_string(name);
    w.write_null_symbol();
    let st_name = w.string_offset(Some(sym_name));
    w.write_symbol(&Sym {
        section: Some(TEXT),
        st_name,
        st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_FUNC),
        st_other: elf::STV_DEFAULT.into(),
        st_shndx: elf::SymbolSection(0),
        st_value: 0, // an offset into .text in a relocatable file
        st_size: len as u64,
    });
    w.write_strtab().ok()?;
    w.write_shstrtab().ok()?;
    w.write_null_section_header();
    let text = w.write_section_header(&SectionHeader {
        sh_name: w.section_name_offset(Some(text_name)),
        sh_type: elf::SHT_NOBITS,
        sh_flags: elf::SHF_ALLOC | elf::SHF_EXECINSTR,
        sh_addr: addr as u64,
        sh_offset: 0,
        sh_size: len as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 1,
        sh_entsize: 0,
    });
    debug_assert_eq!(text.0, TEXT);
    if let (Some((bytes, at_addr)), Some(at), Some(name)) = (eh_frame, eh_at, eh_name) {
        w.write_section_header(&SectionHeader {
            sh_name: w.section_name_offset(Some(name)),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: elf::SHF_ALLOC,
            sh_addr: at_addr as u64,
            sh_offset: at,
            sh_size: bytes.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 8,
            sh_entsize: 0,
        });
    }
    w.write_strtab_section_header();
    w.write_symtab_section_header(1);
    w.write_shstrtab_section_header();
    let mut header: Vec<u8> = Vec::new();
    w.write_file_header_to(&mut header).ok()?;
    drop(w);
    buf[..header.len()].copy_from_slice(&header);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a little-endian integer of `N` bytes at `at`.
    fn le<const N: usize>(b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v[..N].copy_from_slice(&b[at..at + N]);
        u64::from_le_bytes(v)
    }

    #[test]
    fn the_object_has_the_symbol_at_the_address() {
        let img = build(0x7f00_0000_1040, 0x30, b"hot_loop", None).unwrap();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(le::<2>(&img, 16), 1, "ET_REL");
        assert_eq!(le::<2>(&img, 18), u64::from(MACHINE));
        let shoff = le::<8>(&img, 0x28) as usize;
        let shnum = le::<2>(&img, 0x3c) as usize;
        let shstrndx = le::<2>(&img, 0x3e) as usize;
        let sh = |i: usize| shoff + i * 64;
        let name_of = |i: usize| {
            let strtab = le::<8>(&img, sh(shstrndx) + 24) as usize;
            let off = strtab + le::<4>(&img, sh(i)) as usize;
            let end = img[off..].iter().position(|&c| c == 0).unwrap();
            String::from_utf8(img[off..off + end].to_vec()).unwrap()
        };
        let names: Vec<String> = (0..shnum).map(name_of).collect();
        assert_eq!(names, ["", ".text", ".strtab", ".symtab", ".shstrtab"]);
        assert_eq!(le::<4>(&img, sh(1) + 4), 8, ".text is NOBITS");
        assert_eq!(le::<8>(&img, sh(1) + 16), 0x7f00_0000_1040, "sh_addr");
        assert_eq!(le::<8>(&img, sh(1) + 32), 0x30, "sh_size");
        // The symbol: second entry of .symtab, named through .strtab, in section 1.
        let symtab = le::<8>(&img, sh(3) + 24) as usize;
        let strtab = le::<8>(&img, sh(2) + 24) as usize;
        let sym = symtab + 24;
        let name_at = strtab + le::<4>(&img, sym) as usize;
        assert_eq!(&img[name_at..name_at + 9], b"hot_loop\0");
        assert_eq!(img[sym + 4], 0x12, "GLOBAL FUNC");
        assert_eq!(le::<2>(&img, sym + 6), 1, "in .text");
        assert_eq!(le::<8>(&img, sym + 16), 0x30, "st_size");
    }

    #[test]
    fn unwind_information_becomes_a_section() {
        let img = build(0x1000, 16, b"f", Some((&[1, 2, 3, 4], 0x5000))).unwrap();
        let shoff = le::<8>(&img, 0x28) as usize;
        assert_eq!(le::<2>(&img, 0x3c), 6);
        let eh = shoff + 2 * 64;
        assert_eq!(le::<8>(&img, eh + 16), 0x5000);
        let off = le::<8>(&img, eh + 24) as usize;
        assert_eq!(&img[off..off + 4], &[1, 2, 3, 4]);
    }
}
