// Builds `.eh_frame` sections with gimli's writer, for the tests of unwind information (the
// integration tests declare it as a module; the unit tests of `observe::unwind` include it).

use gimli::write::{
    Address, CallFrameInstruction, CommonInformationEntry, EhFrame, EndianVec,
    FrameDescriptionEntry, FrameTable,
};
use gimli::{Encoding, Format, LittleEndian, Register};

/// An x86-64 `.eh_frame` with one CIE (return address at the CFA - 8, CFA = rsp + 8) and one
/// FDE per `(offset, length)` in the image, each saying the CFA is rsp + 16 after its first
/// byte (a function that pushes one register).
pub fn eh_frame(fdes: &[(u64, u32)]) -> Vec<u8> {
    let enc = Encoding {
        address_size: 8,
        format: Format::Dwarf32,
        version: 1,
    };
    let mut cie = CommonInformationEntry::new(enc, 1, -8, Register(16));
    cie.add_instruction(CallFrameInstruction::Cfa(Register(7), 8));
    cie.add_instruction(CallFrameInstruction::Offset(Register(16), -8));
    let mut table = FrameTable::default();
    let id = table.add_cie(cie);
    for &(at, len) in fdes {
        let mut fde = FrameDescriptionEntry::new(Address::Constant(at), len);
        fde.add_instruction(1, CallFrameInstruction::CfaOffset(16));
        table.add_fde(id, fde);
    }
    let mut out = EhFrame(EndianVec::new(LittleEndian));
    table
        .write_eh_frame(&mut out)
        .expect("gimli writes a valid table");
    out.0.into_vec()
}
