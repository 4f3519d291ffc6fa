//! Unwind information for JIT code: `.eh_frame` bytes given with a draft or batch slot,
//! relocated to where the code runs and registered with the unwinder (`__register_frame`), so
//! that a panic unwinds through JIT frames and `std::backtrace` walks past them.
//!
//! The bytes are what a code generator emits for code not yet placed: CIEs and FDEs whose
//! initial locations are offsets from the image's first byte, written as 8-byte absolute
//! pointers (`DW_EH_PE_absptr`, `udata8` or `sdata8`: what gimli writes for
//! `Address::Constant(offset)`, and what Cranelift's `UnwindInfo::to_fde` with its
//! `create_systemv_cie` produces). [`Frames::parse`] checks them when they are given (a typed
//! error for anything else: a truncated entry, a pointer encoding that cannot hold an address,
//! an FDE outside the image); at finalize each initial location gets the program's address
//! added, a terminator is appended, and the copy is registered until the program's free
//! begins (before its trap fill).
//!
//! Registration follows the unwinder linked in: libgcc (glibc targets) takes a whole section,
//! LLVM's libunwind (musl, macOS) one FDE per call.
#![allow(unsafe_code)] // the unwinder's registration functions

use crate::error::{Error, Result};

/// Pointer encodings accepted for FDE initial locations (`DW_EH_PE_*`).
const DW_EH_PE_ABSPTR: u8 = 0x00;
const DW_EH_PE_UDATA8: u8 = 0x04;
const DW_EH_PE_SDATA8: u8 = 0x0c;
const DW_EH_PE_OMIT: u8 = 0xff;

/// Checked `.eh_frame` bytes, relative to their image.
#[derive(Debug, Clone)]
pub(crate) struct Frames {
    bytes: Box<[u8]>,
    /// Each FDE: the offset of its initial-location field, and its range in the image.
    fdes: Vec<Fde>,
}

#[derive(Debug, Clone, Copy)]
struct Fde {
    /// Offset of the FDE itself (its length field).
    at: usize,
    /// Offset of the initial-location field.
    field: usize,
    begin: u64,
    range: u64,
}

/// Registered unwind information: deregistered when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    /// The relocated section the unwinder points into (kept unchanged until deregistered).
    #[cfg_attr(not(feature = "gdb-jit"), allow(dead_code))]
    bytes: Box<[u8]>,
    /// What was passed to `__register_frame` (the section, or each FDE).
    registered: Vec<usize>,
}

fn bad(at: usize, why: impl Into<String>) -> Error {
    Error::BadUnwindInfo {
        offset: at,
        why: why.into(),
    }
}

/// A little-endian cursor over the section.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Result<u8> {
        let v = *self
            .b
            .get(self.at)
            .ok_or_else(|| bad(self.at, "truncated"))?;
        self.at += 1;
        Ok(v)
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self
            .b
            .get(self.at..self.at + N)
            .ok_or_else(|| bad(self.at, "truncated"))?;
        self.at += N;
        Ok(s.try_into().expect("N bytes"))
    }
    fn uleb(&mut self) -> Result<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
    }
    fn cstr(&mut self) -> Result<&[u8]> {
        let start = self.at;
        let end = self.b[start..]
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| bad(start, "unterminated augmentation string"))?;
        self.at = start + end + 1;
        Ok(&self.b[start..start + end])
    }
    /// Skips a pointer of encoding `enc` (personality routines: left as given).
    fn skip_pointer(&mut self, enc: u8) -> Result<()> {
        let n = match enc & 0x0f {
            0x00 | 0x04 | 0x0c => 8,
            0x02 | 0x0a => 2,
            0x03 | 0x0b => 4,
            0x01 | 0x09 => {
                self.uleb()?;
                0
            }
            _ => return Err(bad(self.at, format!("unknown pointer encoding {enc:#x}"))),
        };
        if self.at + n > self.b.len() {
            return Err(bad(self.at, "truncated"));
        }
        self.at += n;
        Ok(())
    }
}

impl Frames {
    /// Checks `bytes` (see the module docs) against an image of `len` bytes.
    pub(crate) fn parse(bytes: &[u8], len: usize) -> Result<Frames> {
        let mut c = Cursor { b: bytes, at: 0 };
        // CIE offset -> its FDE pointer encoding.
        let mut cies: Vec<(usize, u8)> = Vec::new();
        let mut fdes = Vec::new();
        while c.at < bytes.len() {
            let at = c.at;
            let length = u32::from_le_bytes(c.bytes()?);
            if length == 0 {
                break; // a terminator: nothing after it is read
            }
            if length == u32::MAX {
                return Err(bad(at, "64-bit DWARF entries are not supported"));
            }
            let end =
                c.at.checked_add(length as usize)
                    .filter(|&e| e <= bytes.len())
                    .ok_or_else(|| bad(at, "entry runs past the end"))?;
            let id_at = c.at;
            let id = u32::from_le_bytes(c.bytes()?);
            if id == 0 {
                cies.push((at, cie_fde_encoding(&mut c)?));
            } else {
                let cie = id_at
                    .checked_sub(id as usize)
                    .ok_or_else(|| bad(at, "CIE pointer before the section"))?;
                let &(_, enc) = cies
                    .iter()
                    .find(|(o, _)| *o == cie)
                    .ok_or_else(|| bad(at, "FDE refers to no CIE before it"))?;
                if !matches!(enc, DW_EH_PE_ABSPTR | DW_EH_PE_UDATA8 | DW_EH_PE_SDATA8) {
                    return Err(bad(
                        at,
                        format!(
                            "FDE pointer encoding {enc:#x}: only 8-byte absolute offsets \
                             (DW_EH_PE_absptr) can be relocated"
                        ),
                    ));
                }
                let field = c.at;
                let begin = u64::from_le_bytes(c.bytes()?);
                let range = u64::from_le_bytes(c.bytes()?);
                if c.at > end {
                    return Err(bad(at, "FDE shorter than its addresses"));
                }
                fdes.push(Fde {
                    at,
                    field,
                    begin,
                    range,
                });
            }
            c.at = end;
        }
        let frames = Frames {
            bytes: bytes[..c.at].into(),
            fdes,
        };
        frames.check_fits(len)?;
        Ok(frames)
    }

    /// Checks that every FDE lies inside an image of `len` bytes (a draft may have been shrunk
    /// since the bytes were given).
    pub(crate) fn check_fits(&self, len: usize) -> Result<()> {
        for f in &self.fdes {
            if f.begin.checked_add(f.range).is_none_or(|e| e > len as u64) {
                return Err(bad(
                    f.at,
                    format!(
                        "FDE covers {:#x}+{:#x}, outside the image of {len} bytes",
                        f.begin, f.range
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Relocates a copy to code at `addr` and registers it with the unwinder.
    pub(crate) fn register(&self, addr: usize) -> Registered {
        let mut bytes = Vec::with_capacity(self.bytes.len() + 4);
        bytes.extend_from_slice(&self.bytes);
        for f in &self.fdes {
            let v = f.begin.wrapping_add(addr as u64);
            bytes[f.field..f.field + 8].copy_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&0u32.to_le_bytes()); // terminator
        let bytes = bytes.into_boxed_slice();
        let base = bytes.as_ptr() as usize;
        let registered: Vec<usize> = if whole_section_unwinder() {
            vec![base]
        } else {
            self.fdes.iter().map(|f| base + f.at).collect()
        };
        for &p in &registered {
            // SAFETY: `p` points at a checked, relocated section (or one FDE of it) terminated
            // by a zero length, in a heap buffer that `Registered` keeps unchanged until it
            // deregisters the same pointer in `drop`.
            unsafe { __register_frame(p as *const u8) };
        }
        Registered { bytes, registered }
    }

    /// The bytes as given (before relocation).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Registered {
    /// The relocated section (for a debugger's copy).
    #[cfg(feature = "gdb-jit")]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for &p in self.registered.iter().rev() {
            // SAFETY: exactly the pointers registered in `register`, with the buffer unchanged.
            unsafe { __deregister_frame(p as *const u8) };
        }
    }
}

/// Reads a CIE (the cursor is past its id) and returns its FDE pointer encoding.
fn cie_fde_encoding(c: &mut Cursor<'_>) -> Result<u8> {
    let at = c.at;
    let version = c.u8()?;
    if !matches!(version, 1 | 3 | 4) {
        return Err(bad(at, format!("CIE version {version}")));
    }
    let aug = c.cstr()?.to_vec();
    if aug.starts_with(b"eh") {
        return Err(bad(at, "the obsolete `eh` augmentation"));
    }
    if version == 4 {
        c.u8()?; // address size
        c.u8()?; // segment selector size
    }
    c.uleb()?; // code alignment
    c.uleb()?; // data alignment (sleb: only skipped)
    if version == 1 {
        c.u8()?;
    } else {
        c.uleb()?;
    }
    let mut enc = DW_EH_PE_ABSPTR;
    if aug.first() == Some(&b'z') {
        c.uleb()?; // augmentation data length
        for &a in &aug[1..] {
            match a {
                b'R' => enc = c.u8()?,
                b'L' => {
                    c.u8()?;
                }
                b'P' => {
                    let e = c.u8()?;
                    if e != DW_EH_PE_OMIT {
                        c.skip_pointer(e)?;
                    }
                }
                b'S' | b'B' | b'G' => {}
                other => return Err(bad(at, format!("unknown augmentation {:?}", other as char))),
            }
        }
    } else if !aug.is_empty() {
        return Err(bad(at, "augmentation without `z`"));
    }
    Ok(enc)
}

/// True where `__register_frame` takes a whole `.eh_frame` section (libgcc), false where it
/// takes one FDE (LLVM's libunwind).
fn whole_section_unwinder() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu")) || cfg!(target_os = "freebsd")
}

extern "C" {
    /// libgcc / libunwind: adds unwind information for code the loader does not know.
    fn __register_frame(begin: *const u8);
    /// Removes what `__register_frame` added (the same pointer).
    fn __deregister_frame(begin: *const u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimli::write::{
        Address, CommonInformationEntry, EhFrame, EndianVec, FrameDescriptionEntry, FrameTable,
    };
    use gimli::{Encoding, Format, LittleEndian, Register};

    /// The `.eh_frame` builder the integration tests use too.
    mod builder {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/eh_frame/mod.rs"
        ));
    }
    use builder::eh_frame;

    #[test]
    fn gimli_output_is_parsed_and_relocated() {
        let bytes = eh_frame(&[(0, 32), (32, 16)]);
        let f = Frames::parse(&bytes, 48).unwrap();
        assert_eq!(f.fdes.len(), 2);
        let addr = 0x7f00_1234_0000usize;
        let mut copy = f.bytes().to_vec();
        for d in &f.fdes {
            copy[d.field..d.field + 8].copy_from_slice(&(d.begin + addr as u64).to_le_bytes());
        }
        // Read back with gimli's reader: the FDEs now start at the program's address.
        use gimli::{BaseAddresses, EhFrame as Read, UnwindSection};
        let section = Read::new(&copy, LittleEndian);
        let bases = BaseAddresses::default();
        let mut entries = section.entries(&bases);
        let mut starts = Vec::new();
        while let Some(e) = entries.next().unwrap() {
            if let gimli::CieOrFde::Fde(partial) = e {
                let fde = partial.parse(Read::cie_from_offset).unwrap();
                starts.push((fde.initial_address(), fde.len()));
            }
        }
        assert_eq!(starts, vec![(addr as u64, 32), (addr as u64 + 32, 16)]);
    }

    #[test]
    fn fdes_outside_the_image_are_refused() {
        let bytes = eh_frame(&[(16, 32)]);
        assert!(Frames::parse(&bytes, 48).is_ok());
        let e = Frames::parse(&bytes, 47).unwrap_err();
        assert!(matches!(e, Error::BadUnwindInfo { .. }), "{e}");
        let f = Frames::parse(&bytes, 48).unwrap();
        assert!(f.check_fits(40).is_err(), "shrunk below the FDE");
    }

    #[test]
    fn malformed_sections_are_typed_errors() {
        let good = eh_frame(&[(0, 8)]);
        for cut in 1..good.len() {
            // Every truncation either parses a prefix of whole entries or is an error; none
            // panics.
            let _ = Frames::parse(&good[..cut], 8);
        }
        assert!(Frames::parse(&good[..good.len() - 1], 8).is_err());
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Frames::parse(&huge, 8).is_err());
        let mut orphan = good.clone();
        // The FDE's CIE pointer (right after its length) pointing nowhere.
        let cie_len = u32::from_le_bytes(good[0..4].try_into().unwrap()) as usize + 4;
        orphan[cie_len + 4..cie_len + 8].copy_from_slice(&1u32.to_le_bytes());
        assert!(Frames::parse(&orphan, 8).is_err());
    }

    #[test]
    fn pc_relative_encodings_are_refused() {
        let enc = Encoding {
            address_size: 8,
            format: Format::Dwarf32,
            version: 1,
        };
        let mut cie = CommonInformationEntry::new(enc, 1, -8, Register(16));
        cie.fde_address_encoding = gimli::DW_EH_PE_pcrel | gimli::DW_EH_PE_sdata4;
        let mut table = FrameTable::default();
        let id = table.add_cie(cie);
        table.add_fde(id, FrameDescriptionEntry::new(Address::Constant(0), 8));
        let mut out = EhFrame(EndianVec::new(LittleEndian));
        table.write_eh_frame(&mut out).unwrap();
        let e = Frames::parse(&out.0.into_vec(), 8).unwrap_err();
        assert!(e.to_string().contains("encoding"), "{e}");
    }
}
