//! Raw eBPF instructions (RFC 9669 §3): the 8-byte encoding and the opcode constants.
//!
//! Invariants: an [`Insn`] is exactly one 64-bit slot. A wide instruction (`lddw`, opcode
//! [`LD_DW_IMM`]) occupies two consecutive slots; the second slot has opcode 0 and carries the
//! upper 32 bits of the immediate in its `imm`. Decoding never fails for a whole number of
//! slots: validity is the checker's job, not the decoder's.

/// Size of one instruction slot in bytes.
pub const INSN_SIZE: usize = 8;

/// One raw eBPF instruction slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Insn {
    /// Opcode byte: class in the low 3 bits, then source bit and operation.
    pub opc: u8,
    /// Destination register (low nibble of byte 1).
    pub dst: u8,
    /// Source register (high nibble of byte 1).
    pub src: u8,
    /// Signed 16-bit offset.
    pub off: i16,
    /// Signed 32-bit immediate.
    pub imm: i32,
}

impl Insn {
    /// Builds an instruction from its fields.
    pub const fn new(opc: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            opc,
            dst,
            src,
            off,
            imm,
        }
    }

    /// Decodes one little-endian slot.
    #[inline]
    pub fn from_bytes(b: [u8; INSN_SIZE]) -> Self {
        // One 64-bit load, then the fields by shifts.
        let w = u64::from_le_bytes(b);
        Insn {
            opc: w as u8,
            dst: (w >> 8) as u8 & 0x0f,
            src: (w >> 12) as u8 & 0x0f,
            off: (w >> 16) as u16 as i16,
            imm: (w >> 32) as u32 as i32,
        }
    }

    /// Encodes this slot as 8 little-endian bytes.
    pub fn to_bytes(self) -> [u8; INSN_SIZE] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.opc,
            (self.dst & 0x0f) | (self.src << 4),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }

    /// Instruction class (the low three bits of the opcode).
    pub const fn class(self) -> u8 {
        self.opc & 0x07
    }
}

/// Decodes a byte string into slots; `None` if the length is not a multiple of 8.
pub fn decode_slots(bytes: &[u8]) -> Option<Vec<Insn>> {
    let (slots, rest) = bytes.as_chunks::<INSN_SIZE>();
    if !rest.is_empty() {
        return None;
    }
    Some(slots.iter().map(|&b| Insn::from_bytes(b)).collect())
}

/// Encodes slots back to bytes.
pub fn encode_slots(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

// ---- classes (RFC 9669 §3.3) ----
/// Non-standard load operations.
pub const CLS_LD: u8 = 0x00;
/// Load into register.
pub const CLS_LDX: u8 = 0x01;
/// Store from immediate.
pub const CLS_ST: u8 = 0x02;
/// Store from register.
pub const CLS_STX: u8 = 0x03;
/// 32-bit arithmetic.
pub const CLS_ALU: u8 = 0x04;
/// 64-bit jumps.
pub const CLS_JMP: u8 = 0x05;
/// 32-bit jumps.
pub const CLS_JMP32: u8 = 0x06;
/// 64-bit arithmetic.
pub const CLS_ALU64: u8 = 0x07;

// ---- source bit (arithmetic and jumps) ----
/// Use the 32-bit immediate as source operand.
pub const SRC_K: u8 = 0x00;
/// Use the source register as source operand.
pub const SRC_X: u8 = 0x08;

// ---- arithmetic operation codes (high nibble) ----
/// dst += src
pub const ALU_ADD: u8 = 0x00;
/// dst -= src
pub const ALU_SUB: u8 = 0x10;
/// dst *= src
pub const ALU_MUL: u8 = 0x20;
/// dst /= src (unsigned; signed when off == 1)
pub const ALU_DIV: u8 = 0x30;
/// dst |= src
pub const ALU_OR: u8 = 0x40;
/// dst &= src
pub const ALU_AND: u8 = 0x50;
/// dst <<= src
pub const ALU_LSH: u8 = 0x60;
/// dst >>= src (logical)
pub const ALU_RSH: u8 = 0x70;
/// dst = -dst
pub const ALU_NEG: u8 = 0x80;
/// dst %= src (unsigned; signed when off == 1)
pub const ALU_MOD: u8 = 0x90;
/// dst ^= src
pub const ALU_XOR: u8 = 0xa0;
/// dst = src (sign-extending when off is 8, 16 or 32)
pub const ALU_MOV: u8 = 0xb0;
/// dst >>= src (arithmetic)
pub const ALU_ARSH: u8 = 0xc0;
/// Byte swap / endianness conversion (imm = 16, 32 or 64).
pub const ALU_END: u8 = 0xd0;

// ---- jump operation codes (high nibble) ----
/// Unconditional jump (`ja`); in JMP32 class the offset is in `imm` (`gotol`).
pub const JMP_JA: u8 = 0x00;
/// ==
pub const JMP_JEQ: u8 = 0x10;
/// > unsigned
pub const JMP_JGT: u8 = 0x20;
/// >= unsigned
pub const JMP_JGE: u8 = 0x30;
/// & != 0
pub const JMP_JSET: u8 = 0x40;
/// !=
pub const JMP_JNE: u8 = 0x50;
/// > signed
pub const JMP_JSGT: u8 = 0x60;
/// >= signed
pub const JMP_JSGE: u8 = 0x70;
/// Call: helper (src 0), local function (src 1), or helper by BTF id (src 2).
pub const JMP_CALL: u8 = 0x80;
/// Return from function / program.
pub const JMP_EXIT: u8 = 0x90;
/// < unsigned
pub const JMP_JLT: u8 = 0xa0;
/// <= unsigned
pub const JMP_JLE: u8 = 0xb0;
/// < signed
pub const JMP_JSLT: u8 = 0xc0;
/// <= signed
pub const JMP_JSLE: u8 = 0xd0;

// ---- load/store modes and sizes ----
/// 32-bit word.
pub const SIZE_W: u8 = 0x00;
/// 16-bit half word.
pub const SIZE_H: u8 = 0x08;
/// 8-bit byte.
pub const SIZE_B: u8 = 0x10;
/// 64-bit double word.
pub const SIZE_DW: u8 = 0x18;
/// 64-bit immediate (`lddw`).
pub const MODE_IMM: u8 = 0x00;
/// Legacy packet access (absolute).
pub const MODE_ABS: u8 = 0x20;
/// Legacy packet access (indirect).
pub const MODE_IND: u8 = 0x40;
/// Regular memory access.
pub const MODE_MEM: u8 = 0x60;
/// Sign-extending load.
pub const MODE_MEMSX: u8 = 0x80;
/// Atomic operation (imm selects which).
pub const MODE_ATOMIC: u8 = 0xc0;

// ---- atomic operations (imm of an atomic store) ----
/// Atomic add.
pub const ATOMIC_ADD: i32 = 0x00;
/// Atomic or.
pub const ATOMIC_OR: i32 = 0x40;
/// Atomic and.
pub const ATOMIC_AND: i32 = 0x50;
/// Atomic xor.
pub const ATOMIC_XOR: i32 = 0xa0;
/// Modifier: also return the old value in the source register.
pub const ATOMIC_FETCH: i32 = 0x01;
/// Atomic exchange (always fetches).
pub const ATOMIC_XCHG: i32 = 0xe0 | ATOMIC_FETCH;
/// Atomic compare-and-exchange with r0 (always fetches into r0).
pub const ATOMIC_CMPXCHG: i32 = 0xf0 | ATOMIC_FETCH;

// ---- whole opcodes used often ----
/// `lddw dst, imm64` (two slots).
pub const LD_DW_IMM: u8 = CLS_LD | MODE_IMM | SIZE_DW;
/// `exit`.
pub const EXIT: u8 = CLS_JMP | JMP_EXIT;
/// `call`.
pub const CALL: u8 = CLS_JMP | JMP_CALL;
/// `callx`: call the helper whose id is in a register (see the checker for which field names it).
pub const CALLX: u8 = CLS_JMP | JMP_CALL | SRC_X;

/// `src` value of a `call` to a helper by static id.
pub const CALL_HELPER: u8 = 0;
/// `src` value of a `call` to a local (bpf-to-bpf) function; `imm` is the relative slot offset.
pub const CALL_LOCAL: u8 = 1;

/// `src` value of an `lddw` whose `imm` is a map "fd" (its index in the program's map list),
/// resolved at load to the map's handle.
pub const PSEUDO_MAP_FD: u8 = 1;
/// `src` value of an `lddw` whose `imm` is a map "fd" and whose second slot's `imm` is an offset
/// into that array map's first value, resolved at load to the value's address.
pub const PSEUDO_MAP_VALUE: u8 = 2;

/// Number of general registers r0..r10.
pub const NUM_REGS: usize = 11;
/// The read-only frame pointer register.
pub const FRAME_REG: u8 = 10;
/// Size of one stack frame in bytes (per call depth).
pub const STACK_FRAME_SIZE: usize = 512;
/// Deepest bpf-to-bpf call nesting allowed (frames, including the main one).
pub const MAX_CALL_DEPTH: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_slot() {
        let i = Insn::new(CLS_ALU64 | ALU_ADD | SRC_X, 3, 7, -2, -123456);
        assert_eq!(Insn::from_bytes(i.to_bytes()), i);
        assert_eq!(i.to_bytes()[1], 0x73);
    }

    #[test]
    fn decode_rejects_partial_slot() {
        assert!(decode_slots(&[0u8; 7]).is_none());
        assert_eq!(decode_slots(&[0u8; 16]).unwrap().len(), 2);
    }
}
