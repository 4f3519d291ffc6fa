//! Relocation encodings: what to write into a relocated field, given where the field will run
//! and where its target is. Pure functions, no memory is touched here.
//!
//! Resolving is split from writing so that a module whose relocations do not all resolve
//! changes nothing: [`encode`] checks every range first, [`apply`] writes afterwards. Kinds
//! that OR bits into an instruction (aarch64) are therefore applied exactly once, to the bytes
//! Cranelift emitted.
//!
//! Supported, as in `cranelift-jit` with `is_pic = false`: `Abs4`, `Abs8`, `X86PCRel4`,
//! `X86CallPCRel4`; aarch64's `Arm64Call`, `Aarch64AdrPrelPgHi21`, `Aarch64AddAbsLo12Nc`.
//! Every other kind (GOT and PLT forms, thread-local forms, other architectures) is refused,
//! where `cranelift-jit` panics.

use cranelift_codegen::binemit::Reloc;

/// The bytes to put in a relocated field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// Store these 4 bytes (little endian).
    Le32(u32),
    /// Store these 8 bytes (little endian).
    Le64(u64),
    /// OR these bits into the 32-bit little-endian instruction already there.
    Or32(u32),
}

/// Why a relocation cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The kind is not one this module applies.
    Unsupported,
    /// The target does not fit the field's encoding from where the field runs.
    OutOfRange,
}

/// Number of bytes the field of `kind` covers, or `None` for kinds this module refuses.
pub(crate) fn width(kind: Reloc) -> Option<usize> {
    match kind {
        Reloc::Abs8 => Some(8),
        Reloc::Abs4
        | Reloc::X86PCRel4
        | Reloc::X86CallPCRel4
        | Reloc::Arm64Call
        | Reloc::Aarch64AdrPrelPgHi21
        | Reloc::Aarch64AddAbsLo12Nc => Some(4),
        _ => None,
    }
}

/// Encodes a relocation of `kind` whose field runs at address `at` and must reach
/// `target + addend`.
pub(crate) fn encode(kind: Reloc, at: usize, target: usize, addend: i64) -> Result<Field, Refusal> {
    let what = (target as i64).wrapping_add(addend);
    let pc_rel = || what.wrapping_sub(at as i64);
    match kind {
        Reloc::Abs8 => Ok(Field::Le64(what as u64)),
        Reloc::Abs4 => u32::try_from(what)
            .map(Field::Le32)
            .map_err(|_| Refusal::OutOfRange),
        Reloc::X86PCRel4 | Reloc::X86CallPCRel4 => i32::try_from(pc_rel())
            .map(|d| Field::Le32(d as u32))
            .map_err(|_| Refusal::OutOfRange),
        Reloc::Arm64Call => {
            // `bl imm26`: a word offset, ±128 MiB. Cranelift's addend is 0 for calls.
            let d = pc_rel();
            if d % 4 != 0 || !(-(1 << 27)..(1 << 27)).contains(&d) {
                return Err(Refusal::OutOfRange);
            }
            Ok(Field::Or32(((d >> 2) as u32) & 0x03ff_ffff))
        }
        Reloc::Aarch64AdrPrelPgHi21 => {
            // `adrp`: the 4 KiB page delta, ±4 GiB, split into immlo (bits 29-30) and immhi
            // (bits 5-23).
            let page = |x: i64| x & !0xfff;
            let d = page(what).wrapping_sub(page(at as i64)) >> 12;
            if !(-(1 << 20)..(1 << 20)).contains(&d) {
                return Err(Refusal::OutOfRange);
            }
            let imm = (d as u32) & 0x1f_ffff;
            Ok(Field::Or32(((imm & 0x3) << 29) | ((imm >> 2) << 5)))
        }
        Reloc::Aarch64AddAbsLo12Nc => Ok(Field::Or32(((what as u32) & 0xfff) << 10)),
        _ => Err(Refusal::Unsupported),
    }
}

/// Writes `field` at `image[offset..]`. The caller has checked that the field's
/// [`width`] fits in `image` from `offset`.
pub(crate) fn apply(image: &mut [u8], offset: usize, field: Field) {
    match field {
        Field::Le32(v) => image[offset..offset + 4].copy_from_slice(&v.to_le_bytes()),
        Field::Le64(v) => image[offset..offset + 8].copy_from_slice(&v.to_le_bytes()),
        Field::Or32(bits) => {
            let mut inst = [0; 4];
            inst.copy_from_slice(&image[offset..offset + 4]);
            let inst = u32::from_le_bytes(inst) | bits;
            image[offset..offset + 4].copy_from_slice(&inst.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_forms() {
        assert_eq!(
            encode(Reloc::Abs8, 0, 0x7fff_0000_1000, 8),
            Ok(Field::Le64(0x7fff_0000_1008))
        );
        assert_eq!(
            encode(Reloc::Abs4, 0, 0xffff_fff0, 0xf),
            Ok(Field::Le32(0xffff_ffff))
        );
        assert_eq!(
            encode(Reloc::Abs4, 0, 0xffff_fff0, 0x10),
            Err(Refusal::OutOfRange)
        );
    }

    #[test]
    fn x86_pc_relative_reaches_exactly_2_gib() {
        // Cranelift's rel32 addend is -4: relative to the end of the field.
        let at = 0x1_0000_0000;
        assert_eq!(
            encode(Reloc::X86CallPCRel4, at, at + 0x100, -4),
            Ok(Field::Le32(0xfc))
        );
        assert_eq!(
            encode(Reloc::X86PCRel4, at, at - 0x100, -4),
            Ok(Field::Le32((-0x104i32) as u32))
        );
        let max = at + i32::MAX as usize;
        assert!(encode(Reloc::X86CallPCRel4, at, max, 0).is_ok());
        assert_eq!(
            encode(Reloc::X86CallPCRel4, at, max + 1, 0),
            Err(Refusal::OutOfRange)
        );
        assert!(encode(Reloc::X86CallPCRel4, at, at - (1 << 31), 0).is_ok());
        assert_eq!(
            encode(Reloc::X86CallPCRel4, at, at - (1 << 31) - 1, 0),
            Err(Refusal::OutOfRange)
        );
    }

    #[test]
    fn aarch64_forms() {
        let bl = 0x9400_0000u32;
        let at = 0x40_0000;
        let f = encode(Reloc::Arm64Call, at, at + 8, 0).unwrap();
        let mut img = bl.to_le_bytes();
        apply(&mut img, 0, f);
        assert_eq!(u32::from_le_bytes(img), bl | 2);
        // Backwards: imm26 is two's complement.
        assert_eq!(
            encode(Reloc::Arm64Call, at, at - 4, 0),
            Ok(Field::Or32(0x03ff_ffff))
        );
        assert_eq!(
            encode(Reloc::Arm64Call, at, at + (128 << 20), 0),
            Err(Refusal::OutOfRange)
        );
        // adrp x0, target: page delta 0x12345 pages -> immlo = 1, immhi = 0x48d1.
        let f = encode(
            Reloc::Aarch64AdrPrelPgHi21,
            0x1000,
            0x1000 + (0x12345 << 12),
            0x7,
        )
        .unwrap();
        assert_eq!(f, Field::Or32((1 << 29) | (0x48d1 << 5)));
        assert_eq!(
            encode(Reloc::Aarch64AddAbsLo12Nc, 0, 0x1234_5678, 0),
            Ok(Field::Or32(0x678 << 10))
        );
    }

    #[test]
    fn refused_kinds() {
        for kind in [
            Reloc::X86GOTPCRel4,
            Reloc::X86CallPLTRel4,
            Reloc::ElfX86_64TlsGd,
            Reloc::Aarch64AdrGotPage21,
            Reloc::S390xPCRel32Dbl,
        ] {
            assert_eq!(width(kind), None, "{kind:?}");
            assert_eq!(encode(kind, 0, 0, 0), Err(Refusal::Unsupported), "{kind:?}");
        }
    }

    #[test]
    fn apply_writes_little_endian() {
        let mut img = [0xccu8; 12];
        apply(&mut img, 2, Field::Le64(0x0102_0304_0506_0708));
        assert_eq!(img, [0xcc, 0xcc, 8, 7, 6, 5, 4, 3, 2, 1, 0xcc, 0xcc]);
        apply(&mut img, 0, Field::Le32(0xa1b2_c3d4));
        assert_eq!(&img[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
    }
}
