//! A minimal x86-64 encoder: exactly the instruction forms the eBPF JIT emits, plus labels and
//! one-pass jump fixups.
//!
//! Invariants:
//! - Code is emitted in one pass into a buffer that is reused between compiles
//!   ([`Asm::reset`] starts the next compile in the same allocations).
//! - A jump to a label that is already bound (a backward jump) gets its exact displacement
//!   at once, in the short form when it fits. A jump to a label not yet bound (a forward jump)
//!   is recorded as a fixup, in the short form only when the caller proves that the distance
//!   fits in a signed byte (the eBPF translator knows an upper bound of every instruction's
//!   code size); [`Asm::patch_jumps`] resolves every fixup at the end and reports a short jump
//!   that does not fit as an error, never by writing a wrong displacement.
//! - Every instruction is at most 15 bytes and is committed with one fixed 16-byte copy.

/// An x86-64 general-purpose register, numbered as in the instruction encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub(crate) enum R {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl R {
    fn num(self) -> u8 {
        self as u8
    }
    fn low(self) -> u8 {
        self as u8 & 7
    }
    fn hi(self) -> u8 {
        (self as u8 >> 3) & 1
    }
    /// As an 8-bit register, spl/bpl/sil/dil need a REX prefix (else they mean ah/ch/dh/bh).
    fn byte_needs_rex(self) -> bool {
        (4..8).contains(&(self as u8))
    }
}

/// A memory operand `[base + index + disp]` (index optional, scale 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    /// Base register.
    pub base: R,
    /// Index register (never rsp).
    pub index: Option<R>,
    /// Displacement.
    pub disp: i32,
}

impl Mem {
    /// `[base + disp]`.
    pub(crate) fn at(base: R, disp: i32) -> Mem {
        Mem {
            base,
            index: None,
            disp,
        }
    }
    /// `[base + index + disp]`.
    pub(crate) fn indexed(base: R, index: R, disp: i32) -> Mem {
        Mem {
            base,
            index: Some(index),
            disp,
        }
    }
}

/// A jump target inside the code being emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Label(u32);

/// Condition codes (the low nibble of `jcc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub(crate) enum Cond {
    B = 0x2,
    Ae = 0x3,
    E = 0x4,
    Ne = 0x5,
    Be = 0x6,
    A = 0x7,
    L = 0xc,
    Ge = 0xd,
    Le = 0xe,
    G = 0xf,
}

/// Two-operand arithmetic in its `op r/m, reg` encoding (the opcode byte) and its
/// `op r/m, imm` encoding (the /digit of 0x81/0x83).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Alu {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
}

impl Alu {
    fn rm_reg_opcode(self) -> u8 {
        match self {
            Alu::Add => 0x01,
            Alu::Or => 0x09,
            Alu::And => 0x21,
            Alu::Sub => 0x29,
            Alu::Xor => 0x31,
            Alu::Cmp => 0x39,
        }
    }
    fn imm_digit(self) -> u8 {
        match self {
            Alu::Add => 0,
            Alu::Or => 1,
            Alu::And => 4,
            Alu::Sub => 5,
            Alu::Xor => 6,
            Alu::Cmp => 7,
        }
    }
}

/// Shift kinds (the /digit of 0xC1/0xD3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Shift {
    Ror = 1,
    Shl = 4,
    Shr = 5,
    Sar = 7,
}

/// Operand width of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum W {
    B8,
    B16,
    B32,
    B64,
}

impl W {
    /// Width from a byte count of 1, 2, 4 or 8.
    pub(crate) fn from_bytes(n: usize) -> W {
        match n {
            1 => W::B8,
            2 => W::B16,
            4 => W::B32,
            _ => W::B64,
        }
    }
}

/// A forward jump waiting for its label.
#[derive(Clone, Copy, Debug)]
struct Fixup {
    label: Label,
    /// Offset of the end of the jump instruction (displacements are relative to it).
    end: u32,
    /// Whether the displacement field is one byte (else four).
    short: bool,
}

/// Helper-call site using `call rel32` whose displacement depends on the final address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbsCallSite {
    /// Offset of the rel32 field.
    pub pos: u32,
    /// Absolute target address.
    pub target: u64,
}

/// Bytes of buffer an instruction is encoded into (at most 15 are used).
const WINDOW: usize = 32;

/// An unbound label's offset.
pub(crate) const UNBOUND: u32 = u32::MAX;

/// The code buffer with its labels and jump fixups. One is kept per thread between
/// compiles ([`Asm::reset`] starts the next compile in the same allocations).
#[derive(Default)]
pub(crate) struct Asm {
    /// The code; `buf.len()` is at least `len + WINDOW` once an instruction is emitted.
    buf: Vec<u8>,
    /// Bytes emitted so far.
    len: u32,
    labels: Vec<u32>,
    fixups: Vec<Fixup>,
    /// `call rel32` sites to helpers, fixed up once the final address is known.
    calls: Vec<AbsCallSite>,
    /// Whether helpers are reached by `call rel32` (else `mov rax, imm64; call rax`).
    pub rel_calls: bool,
    /// Set if an instruction could not be written (a bug; fails the compile).
    broken: bool,
}

impl Asm {
    /// Starts a new compile in this assembler's allocations; `size_hint` is the expected
    /// code size.
    pub(crate) fn reset(&mut self, rel_calls: bool, size_hint: usize) {
        self.labels.clear();
        self.fixups.clear();
        self.calls.clear();
        let want = size_hint + WINDOW;
        if self.buf.len() < want {
            self.buf.resize(want.max(256), 0);
        }
        self.len = 0;
        self.rel_calls = rel_calls;
        self.broken = false;
    }

    /// Total capacity, in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
            + 4 * self.labels.capacity()
            + 12 * self.fixups.capacity()
            + 16 * self.calls.capacity()
    }

    /// The code emitted so far (after [`Asm::patch_jumps`]: the compile's code).
    pub(crate) fn code(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The helper-call sites so far.
    pub(crate) fn calls(&self) -> &[AbsCallSite] {
        &self.calls
    }

    /// Offsets of the first `n` labels (`UNBOUND` if unbound).
    pub(crate) fn label_offsets(&self, n: usize) -> &[u32] {
        &self.labels[..n.min(self.labels.len())]
    }

    /// Current offset.
    pub(crate) fn pos(&self) -> u32 {
        self.len
    }

    /// How many labels, jump fixups and helper-call sites there are so far: code emitted
    /// while these stay the same refers to no label and needs no fixing up.
    pub(crate) fn refs(&self) -> (usize, usize, usize) {
        (self.labels.len(), self.fixups.len(), self.calls.len())
    }

    /// Appends `code` as it is (code emitted before by the same calls, see [`Asm::refs`]).
    pub(crate) fn raw(&mut self, code: &[u8]) {
        let at = self.len as usize;
        if self.buf.len() < at + code.len() + WINDOW {
            self.grow(at + code.len() + WINDOW);
        }
        match self.buf.get_mut(at..at + code.len()) {
            Some(dst) => {
                dst.copy_from_slice(code);
                self.len += code.len() as u32;
            }
            None => self.broken = true,
        }
    }

    /// A new, unbound label.
    #[inline]
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(UNBOUND);
        Label(self.labels.len() as u32 - 1)
    }

    /// `n` new labels with consecutive ids; returns the first.
    pub(crate) fn labels(&mut self, n: usize) -> Label {
        let first = self.labels.len() as u32;
        self.labels.resize(self.labels.len() + n, UNBOUND);
        Label(first)
    }

    /// The label `i` places after `first` (see [`Asm::labels`]).
    pub(crate) fn nth(first: Label, i: usize) -> Label {
        Label(first.0 + i as u32)
    }

    /// Binds `l` to the current offset.
    #[inline]
    pub(crate) fn bind(&mut self, l: Label) {
        let p = self.pos();
        self.labels[l.0 as usize] = p;
    }

    /// Resolves every forward jump. Fails (a bug, reported as an error rather than a panic)
    /// if a label was never bound or a short jump does not reach.
    pub(crate) fn patch_jumps(&mut self) -> Result<(), &'static str> {
        if self.broken {
            return Err("code buffer");
        }
        for f in &self.fixups {
            let target = self.labels[f.label.0 as usize];
            if target == UNBOUND {
                return Err("jump to an unbound label");
            }
            let d = target as i64 - f.end as i64;
            if f.short {
                let d = i8::try_from(d).map_err(|_| "rel8 jump out of range")?;
                self.buf[f.end as usize - 1] = d as u8;
            } else {
                let d = i32::try_from(d).map_err(|_| "rel32 jump out of range")?;
                self.buf[f.end as usize - 4..f.end as usize].copy_from_slice(&d.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Writes `imm` over the immediate field of `wide` (4) or 1 byte at `pos` of the code
    /// (the last compile's code reused for a program that differs from it only in
    /// constants). `false` if `pos` is not inside the code.
    pub(crate) fn set_imm(&mut self, pos: u32, wide: bool, imm: i32) -> bool {
        let p = pos as usize;
        let n = if wide { 4 } else { 1 };
        if p + n > self.len as usize {
            return false;
        }
        match self.buf.get_mut(p..p + 4) {
            Some(d) if wide => d.copy_from_slice(&imm.to_le_bytes()),
            Some(d) => d[0] = imm as u8,
            None => return false,
        }
        true
    }

    // ---- committing instructions ----

    /// Appends one instruction: `f` encodes it into a 32-byte window of the buffer at the
    /// current end (one capacity check per instruction, no copy) and returns its length.
    #[inline(always)]
    fn put(&mut self, f: impl FnOnce(&mut Enc<'_>)) {
        let at = self.len as usize;
        if self.buf.len() < at + WINDOW {
            self.grow(at + WINDOW);
        }
        // (Cannot fail after `grow`; if it did, `patch_jumps` reports it.)
        let Some(Ok(w)) = self
            .buf
            .get_mut(at..at + WINDOW)
            .map(<&mut [u8; WINDOW]>::try_from)
        else {
            self.broken = true;
            return;
        };
        let mut e = Enc { w, p: 0 };
        f(&mut e);
        self.len += e.p as u32;
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, need: usize) {
        let n = need.max(self.buf.len() * 2).max(256);
        self.buf.resize(n, 0);
    }

    // ---- moves ----

    /// `mov dst, src` (32-bit form zero-extends).
    #[inline]
    pub(crate) fn mov_rr(&mut self, w64: bool, dst: R, src: R) {
        self.put(|e| e.rr(width(w64), &[0x89], src.num(), dst, false));
    }

    /// Loads a 64-bit constant in the shortest form.
    pub(crate) fn mov_imm64(&mut self, dst: R, imm: u64) {
        if imm == 0 {
            self.alu_rr(false, Alu::Xor, dst, dst);
        } else if imm <= u32::MAX as u64 {
            self.mov_imm32(dst, imm as u32);
        } else if let Ok(v) = i32::try_from(imm as i64) {
            self.mov_sext32(dst, v);
        } else {
            self.movabs(dst, imm);
        }
    }

    /// `mov dst, imm64` always in its 10-byte form.
    pub(crate) fn movabs(&mut self, dst: R, imm: u64) {
        self.put(|e| {
            e.rex(true, 0, 0, dst.hi(), false);
            e.u8(0xb8 + dst.low());
            e.q64(imm);
        });
    }

    /// `mov dst32, imm32` (zero-extends into the upper half); `xor` for 0.
    #[inline]
    pub(crate) fn mov_imm32(&mut self, dst: R, imm: u32) {
        if imm == 0 {
            self.alu_rr(false, Alu::Xor, dst, dst);
            return;
        }
        self.mov_imm32_full(dst, imm);
    }

    /// `mov dst32, imm32` in its 5- or 6-byte form, also for 0 (leaves the flags alone).
    #[inline]
    pub(crate) fn mov_imm32_full(&mut self, dst: R, imm: u32) {
        self.put(|e| {
            e.rex(false, 0, 0, dst.hi(), false);
            e.u8(0xb8 + dst.low());
            e.d32(imm as i32);
        });
    }

    /// `mov dst, sext(imm32)` (REX.W C7 /0).
    pub(crate) fn mov_sext32(&mut self, dst: R, imm: i32) {
        self.put(|e| {
            e.rr(W::B64, &[0xc7], 0, dst, false);
            e.d32(imm);
        });
    }

    /// `movsx`/`movsxd dst, src` from `from` bits (8, 16, 32); `w64` selects the target width.
    pub(crate) fn movsx_rr(&mut self, w64: bool, dst: R, src: R, from: W) {
        self.put(|e| match from {
            W::B8 => e.rr(width(w64), &[0x0f, 0xbe], dst.num(), src, true),
            W::B16 => e.rr(width(w64), &[0x0f, 0xbf], dst.num(), src, false),
            _ => e.rr(W::B64, &[0x63], dst.num(), src, false),
        });
    }

    /// `movzx dst32, src16` (zero-extends to 64).
    pub(crate) fn movzx16_rr(&mut self, dst: R, src: R) {
        self.put(|e| e.rr(W::B32, &[0x0f, 0xb7], dst.num(), src, false));
    }

    /// `lea dst, [m]`.
    #[inline]
    pub(crate) fn lea(&mut self, dst: R, m: Mem) {
        self.put(|e| e.m(W::B64, &[0x8d], dst.num(), m, false));
    }

    /// Zero- or sign-extending load of `size` bytes from `m` into `dst` (64 bits).
    #[inline]
    pub(crate) fn load(&mut self, size: W, signed: bool, dst: R, m: Mem) {
        let d = dst.num();
        self.put(|e| match (size, signed) {
            (W::B8, false) => e.m(W::B32, &[0x0f, 0xb6], d, m, false),
            (W::B16, false) => e.m(W::B32, &[0x0f, 0xb7], d, m, false),
            (W::B32, false) => e.m(W::B32, &[0x8b], d, m, false),
            (W::B64, _) => e.m(W::B64, &[0x8b], d, m, false),
            (W::B8, true) => e.m(W::B64, &[0x0f, 0xbe], d, m, false),
            (W::B16, true) => e.m(W::B64, &[0x0f, 0xbf], d, m, false),
            (W::B32, true) => e.m(W::B64, &[0x63], d, m, false),
        });
    }

    /// Store of the low `size` bytes of `src` to `m`.
    #[inline]
    pub(crate) fn store(&mut self, size: W, m: Mem, src: R) {
        let opc: &[u8] = if size == W::B8 { &[0x88] } else { &[0x89] };
        self.put(|e| e.m(size, opc, src.num(), m, size == W::B8));
    }

    /// Store of an immediate (sign-extended for 64 bits) to `m`.
    #[inline]
    pub(crate) fn store_imm(&mut self, size: W, m: Mem, imm: i32) {
        self.put(|e| match size {
            W::B8 => {
                e.m(W::B8, &[0xc6], 0, m, false);
                e.u8(imm as u8);
            }
            W::B16 => {
                e.m(W::B16, &[0xc7], 0, m, false);
                let [lo, hi] = (imm as u16).to_le_bytes();
                e.u8(lo);
                e.u8(hi);
            }
            _ => {
                e.m(size, &[0xc7], 0, m, false);
                e.d32(imm);
            }
        });
    }

    /// `mov dst, [m]` (64-bit).
    pub(crate) fn mov_rm(&mut self, dst: R, m: Mem) {
        self.put(|e| e.m(W::B64, &[0x8b], dst.num(), m, false));
    }

    /// `mov [m], src` (64-bit).
    pub(crate) fn mov_mr(&mut self, m: Mem, src: R) {
        self.put(|e| e.m(W::B64, &[0x89], src.num(), m, false));
    }

    // ---- arithmetic ----

    /// `op dst, src`.
    #[inline]
    pub(crate) fn alu_rr(&mut self, w64: bool, op: Alu, dst: R, src: R) {
        let opc = [op.rm_reg_opcode()];
        self.put(|e| e.rr(width(w64), &opc, src.num(), dst, false));
    }

    /// `op dst, imm` (imm sign-extended to 64 bits in the 64-bit form).
    #[inline]
    pub(crate) fn alu_ri(&mut self, w64: bool, op: Alu, dst: R, imm: i32) {
        self.put(|e| {
            if let Ok(i) = i8::try_from(imm) {
                e.rr(width(w64), &[0x83], op.imm_digit(), dst, false);
                e.u8(i as u8);
            } else {
                e.rr(width(w64), &[0x81], op.imm_digit(), dst, false);
                e.d32(imm);
            }
        });
    }

    /// `op dst, [m]` (64-bit; the `reg, r/m` direction).
    #[inline]
    pub(crate) fn alu_rm(&mut self, op: Alu, dst: R, m: Mem) {
        let opc = [op.rm_reg_opcode() + 2];
        self.put(|e| e.m(W::B64, &opc, dst.num(), m, false));
    }

    /// `op qword [m], imm` (imm sign-extended).
    #[inline]
    pub(crate) fn alu_mi(&mut self, op: Alu, m: Mem, imm: i32) {
        self.put(|e| {
            if let Ok(i) = i8::try_from(imm) {
                e.m(W::B64, &[0x83], op.imm_digit(), m, false);
                e.u8(i as u8);
            } else {
                e.m(W::B64, &[0x81], op.imm_digit(), m, false);
                e.d32(imm);
            }
        });
    }

    /// `test a, b`.
    pub(crate) fn test_rr(&mut self, w64: bool, a: R, b: R) {
        self.put(|e| e.rr(width(w64), &[0x85], b.num(), a, false));
    }

    /// `test a, imm` (imm sign-extended in the 64-bit form).
    pub(crate) fn test_ri(&mut self, w64: bool, a: R, imm: i32) {
        self.put(|e| {
            e.rr(width(w64), &[0xf7], 0, a, false);
            e.d32(imm);
        });
    }

    /// `imul dst, src`.
    pub(crate) fn imul_rr(&mut self, w64: bool, dst: R, src: R) {
        self.put(|e| e.rr(width(w64), &[0x0f, 0xaf], dst.num(), src, false));
    }

    /// `imul dst, dst, imm`.
    pub(crate) fn imul_ri(&mut self, w64: bool, dst: R, imm: i32) {
        self.put(|e| {
            if let Ok(i) = i8::try_from(imm) {
                e.rr(width(w64), &[0x6b], dst.num(), dst, false);
                e.u8(i as u8);
            } else {
                e.rr(width(w64), &[0x69], dst.num(), dst, false);
                e.d32(imm);
            }
        });
    }

    /// `neg dst`.
    pub(crate) fn neg(&mut self, w64: bool, dst: R) {
        self.put(|e| e.rr(width(w64), &[0xf7], 3, dst, false));
    }

    /// `div src` (unsigned) or `idiv src` (signed): rdx:rax / src.
    pub(crate) fn div(&mut self, w64: bool, signed: bool, src: R) {
        let digit = if signed { 7 } else { 6 };
        self.put(|e| e.rr(width(w64), &[0xf7], digit, src, false));
    }

    /// `cqo` (64) or `cdq` (32): sign-extend rax into rdx.
    pub(crate) fn cqo(&mut self, w64: bool) {
        self.put(|e| {
            if w64 {
                e.u8(0x48);
            }
            e.u8(0x99);
        });
    }

    /// Shift by an immediate.
    pub(crate) fn shift_ri(&mut self, w: W, op: Shift, dst: R, imm: u8) {
        self.put(|e| {
            e.rr(w, &[0xc1], op as u8, dst, false);
            e.u8(imm);
        });
    }

    /// Shift by `cl`.
    pub(crate) fn shift_cl(&mut self, w64: bool, op: Shift, dst: R) {
        self.put(|e| e.rr(width(w64), &[0xd3], op as u8, dst, false));
    }

    /// `bswap dst` (32 or 64 bits).
    pub(crate) fn bswap(&mut self, w64: bool, dst: R) {
        self.put(|e| {
            e.rex(w64, 0, 0, dst.hi(), false);
            e.u8(0x0f);
            e.u8(0xc8 + dst.low());
        });
    }

    /// `pxor xmm0, xmm0`.
    pub(crate) fn pxor_xmm0(&mut self) {
        self.put(|e| {
            e.u8(0x66);
            e.u8(0x0f);
            e.u8(0xef);
            e.u8(0xc0);
        });
    }

    /// `movups [m], xmm0`.
    pub(crate) fn movups_store_xmm0(&mut self, m: Mem) {
        self.put(|e| e.m(W::B32, &[0x0f, 0x11], 0, m, false));
    }

    // ---- atomics ----

    /// `lock op [m], src` for add/or/and/xor.
    pub(crate) fn lock_alu_mr(&mut self, w64: bool, op: Alu, m: Mem, src: R) {
        let opc = [op.rm_reg_opcode()];
        self.put(|e| {
            e.u8(0xf0);
            e.m(width(w64), &opc, src.num(), m, false);
        });
    }

    /// `lock xadd [m], src`.
    pub(crate) fn lock_xadd(&mut self, w64: bool, m: Mem, src: R) {
        self.put(|e| {
            e.u8(0xf0);
            e.m(width(w64), &[0x0f, 0xc1], src.num(), m, false);
        });
    }

    /// `xchg [m], src` (implicitly locked).
    pub(crate) fn xchg_mr(&mut self, w64: bool, m: Mem, src: R) {
        self.put(|e| e.m(width(w64), &[0x87], src.num(), m, false));
    }

    /// `lock cmpxchg [m], src` (compares with rax/eax).
    pub(crate) fn lock_cmpxchg(&mut self, w64: bool, m: Mem, src: R) {
        self.put(|e| {
            e.u8(0xf0);
            e.m(width(w64), &[0x0f, 0xb1], src.num(), m, false);
        });
    }

    /// Plain load `mov dst, [m]` of 32 or 64 bits.
    pub(crate) fn mov_load(&mut self, w64: bool, dst: R, m: Mem) {
        self.put(|e| e.m(width(w64), &[0x8b], dst.num(), m, false));
    }

    // ---- control flow ----

    /// Emits a jump to `l`: opcode bytes `short` (then rel8) or the `long_len` first bytes
    /// of `long` (then rel32); a forward jump is short only if `near` (the caller's proof
    /// that it reaches).
    #[inline(always)]
    fn jump(&mut self, short: u8, long: [u8; 2], long_len: usize, l: Label, near: bool) {
        let target = self.labels[l.0 as usize];
        // Displacement 0 for a forward jump (patched later).
        let (short_form, disp) = if target != UNBOUND {
            let d = target as i64 - (self.len as i64 + 2);
            match i8::try_from(d) {
                Ok(d) => (true, d as i32),
                Err(_) => (
                    false,
                    (target as i64 - (self.len as i64 + long_len as i64 + 4)) as i32,
                ),
            }
        } else {
            (near, 0)
        };
        self.put(|e| {
            if short_form {
                e.u8(short);
                e.u8(disp as u8);
            } else {
                e.u8(long[0]);
                if long_len == 2 {
                    e.u8(long[1]);
                }
                e.d32(disp);
            }
        });
        if target == UNBOUND {
            self.fixups.push(Fixup {
                label: l,
                end: self.len,
                short: near,
            });
        }
    }

    /// `jcc rel32` to a place not known yet, without a label: returns the offset of the
    /// jump's end, for [`Asm::patch_here`] once the target is emitted.
    #[inline]
    pub(crate) fn jcc_out(&mut self, c: Cond) -> u32 {
        self.put(|e| {
            e.u8(0x0f);
            e.u8(0x80 | c as u8);
            e.d32(0);
        });
        self.len
    }

    /// `sub r, imm` then `jb rel32` to a place not known yet (one instruction budget charge):
    /// returns the offset of the jump's end, for [`Asm::patch_here`].
    #[inline]
    pub(crate) fn sub_jb_out(&mut self, r: R, imm: i32) -> u32 {
        self.put(|e| {
            if let Ok(i) = i8::try_from(imm) {
                e.rr(W::B64, &[0x83], Alu::Sub.imm_digit(), r, false);
                e.u8(i as u8);
            } else {
                e.rr(W::B64, &[0x81], Alu::Sub.imm_digit(), r, false);
                e.d32(imm);
            }
            e.u8(0x0f);
            e.u8(0x80 | Cond::B as u8);
            e.d32(0);
        });
        self.len
    }

    /// Points the rel32 jump ending at `end` (from [`Asm::jcc_out`], [`Asm::sub_jb_out`]) at
    /// the current offset.
    #[inline]
    pub(crate) fn patch_here(&mut self, end: u32) {
        let d = (self.len - end) as i32;
        let e = end as usize;
        if let Some(b) = self.buf.get_mut(e - 4..e) {
            b.copy_from_slice(&d.to_le_bytes());
        } else {
            self.broken = true;
        }
    }

    /// `jmp` back to offset `target` (already emitted), short when it fits.
    #[inline]
    pub(crate) fn jmp_back(&mut self, target: u32) {
        let d = target as i64 - (self.len as i64 + 2);
        match i8::try_from(d) {
            Ok(d) => self.put(|e| {
                e.u8(0xeb);
                e.u8(d as u8);
            }),
            Err(_) => {
                let d = (target as i64 - (self.len as i64 + 5)) as i32;
                self.put(|e| {
                    e.u8(0xe9);
                    e.d32(d);
                });
            }
        }
    }

    /// A fault stub: `mov edx, word` then `jmp` back to the bound label `l`.
    #[inline]
    pub(crate) fn fault_stub(&mut self, word: u32, l: Label) {
        self.mov_imm32_full(R::Rdx, word);
        match self.labels[l.0 as usize] {
            // (The fault exit is always bound before the stubs; never taken.)
            UNBOUND => self.jmp(l, false),
            target => self.jmp_back(target),
        }
    }

    /// `jmp label` (a forward jump is short if `near`).
    #[inline]
    pub(crate) fn jmp(&mut self, l: Label, near: bool) {
        self.jump(0xeb, [0xe9, 0], 1, l, near);
    }

    /// `jcc label` (a forward jump is short if `near`).
    #[inline]
    pub(crate) fn jcc(&mut self, c: Cond, l: Label, near: bool) {
        self.jump(0x70 | c as u8, [0x0f, 0x80 | c as u8], 2, l, near);
    }

    /// `call label` (rel32).
    pub(crate) fn call_label(&mut self, l: Label) {
        let target = self.labels[l.0 as usize];
        let d = if target != UNBOUND {
            (target as i64 - (self.len as i64 + 5)) as i32
        } else {
            0
        };
        self.put(|e| {
            e.u8(0xe8);
            e.d32(d);
        });
        if target == UNBOUND {
            self.fixups.push(Fixup {
                label: l,
                end: self.len,
                short: false,
            });
        }
    }

    /// Calls an absolute address: `call rel32` (fixed up at link time) or
    /// `mov rax, imm64; call rax` (clobbers rax, which holds the result anyway).
    pub(crate) fn call_abs(&mut self, target: u64) {
        if self.rel_calls {
            let pos = self.pos() + 1;
            self.put(|e| {
                e.u8(0xe8);
                e.d32(0);
            });
            self.calls.push(AbsCallSite { pos, target });
        } else {
            self.movabs(R::Rax, target);
            // call rax: FF /2, mod 11, rm 000
            self.put(|e| {
                e.u8(0xff);
                e.u8(0xd0);
            });
        }
    }

    /// `ret`.
    #[inline]
    pub(crate) fn ret(&mut self) {
        self.put(|e| e.u8(0xc3));
    }

    /// `push r`.
    #[inline]
    pub(crate) fn push(&mut self, r: R) {
        self.put(|e| {
            e.rex(false, 0, 0, r.hi(), false);
            e.u8(0x50 + r.low());
        });
    }

    /// `pop r`.
    #[inline]
    pub(crate) fn pop(&mut self, r: R) {
        self.put(|e| {
            e.rex(false, 0, 0, r.hi(), false);
            e.u8(0x58 + r.low());
        });
    }
}

/// Encodes one instruction into a window of the code buffer. Positions stay below 16 (no
/// instruction is longer than 15 bytes), so every write is in bounds of the 32-byte window.
pub(crate) struct Enc<'w> {
    w: &'w mut [u8; WINDOW],
    p: usize,
}

impl Enc<'_> {
    #[inline(always)]
    fn u8(&mut self, x: u8) {
        self.w[self.p & 15] = x;
        self.p += 1;
    }
    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.u8(x);
        }
    }
    #[inline(always)]
    fn d32(&mut self, x: i32) {
        let s = self.p & 15;
        self.w[s..s + 4].copy_from_slice(&x.to_le_bytes());
        self.p += 4;
    }
    #[inline(always)]
    fn q64(&mut self, x: u64) {
        let s = self.p & 15;
        self.w[s..s + 8].copy_from_slice(&x.to_le_bytes());
        self.p += 8;
    }

    /// A REX prefix if any bit is set or `force` (spl/bpl/sil/dil as byte registers): written
    /// unconditionally, kept only if needed.
    #[inline(always)]
    fn rex(&mut self, w: bool, r: u8, x: u8, b: u8, force: bool) {
        let v = 0x40 | (u8::from(w) << 3) | ((r & 1) << 2) | ((x & 1) << 1) | (b & 1);
        self.w[self.p & 15] = v;
        self.p += usize::from(v != 0x40 || force);
    }

    /// `[0x66] REX opcode modrm` with a register `rm` (mod = 11). `reg` is a register number
    /// or an opcode extension digit.
    #[inline(always)]
    fn rr(&mut self, w: W, opc: &[u8], reg: u8, rm: R, byte_regs: bool) {
        if w == W::B16 {
            self.u8(0x66);
        }
        let force = byte_regs && (rm.byte_needs_rex() || (4..8).contains(&reg));
        self.rex(w == W::B64, reg >> 3, 0, rm.hi(), force);
        self.bytes(opc);
        self.u8(0xc0 | ((reg & 7) << 3) | rm.low());
    }

    /// `[0x66] REX opcode modrm [sib] [disp]` with the memory operand `m`.
    #[inline(always)]
    fn m(&mut self, w: W, opc: &[u8], reg: u8, m: Mem, byte_reg: bool) {
        if w == W::B16 {
            self.u8(0x66);
        }
        let force = byte_reg && (4..8).contains(&reg);
        let x = m.index.map_or(0, R::hi);
        self.rex(w == W::B64, reg >> 3, x, m.base.hi(), force);
        self.bytes(opc);
        let r = (reg & 7) << 3;
        // mod 00 with base rbp/r13 means rip-relative (or no base): those always take a
        // displacement.
        let md = if m.disp == 0 && m.base.low() != 5 {
            0x00
        } else if i8::try_from(m.disp).is_ok() {
            0x40
        } else {
            0x80
        };
        match m.index {
            Some(x) => {
                // SIB: scale 1, index, base.
                self.u8(md | r | 4);
                self.u8((x.low() << 3) | m.base.low());
            }
            None => {
                self.u8(md | r | m.base.low());
                if m.base.low() == 4 {
                    // rsp/r12 as base need a SIB byte: scale 1, no index, that base.
                    self.u8(0x24);
                }
            }
        }
        match md {
            0x40 => self.u8(m.disp as i8 as u8),
            0x80 => self.d32(m.disp),
            _ => {}
        }
    }
}

fn width(w64: bool) -> W {
    if w64 {
        W::B64
    } else {
        W::B32
    }
}
