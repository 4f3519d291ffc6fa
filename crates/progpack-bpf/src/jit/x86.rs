//! A minimal x86-64 encoder: exactly the instruction forms the eBPF JIT emits, plus labels and
//! two-pass jump sizing.
//!
//! Invariants:
//! - Labels are plain indices handed out in emission order; a compile runs the same emission
//!   code twice, so label ids, jump sites and helper-call sites line up between the passes.
//! - Pass 1 only measures (counts bytes, stores none), taking every label jump as rel32, and
//!   records where each jump ends and where its target ended up. A jump whose pass-1 displacement fits in a signed byte is emitted as rel8
//!   in pass 2. Making jumps shorter never makes any displacement larger (code between a jump
//!   and its target only shrinks), so a rel8 decision from pass 1 stays valid in pass 2.
//! - Pass 2 writes placeholder displacements and patches them all at the end from its own
//!   label offsets ([`Asm::patch_jumps`]).

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

/// A jump to a label recorded during emission.
#[derive(Clone, Copy, Debug)]
struct Site {
    label: Label,
    /// Offset of the end of the jump instruction (displacements are relative to it).
    end: u32,
    /// Whether the displacement field is one byte (else four).
    short: bool,
}

/// Helper-call site using `call rel32` whose displacement depends on the final address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AbsCallSite {
    /// Offset of the rel32 field.
    pub pos: u32,
    /// Absolute target address.
    pub target: u64,
}

/// An unbound label's offset.
const UNBOUND: u32 = u32::MAX;

/// The code buffer with its labels and jump bookkeeping.
pub(crate) struct Asm {
    /// The code emitted so far (empty in a measuring pass).
    buf: Vec<u8>,
    /// Bytes emitted so far.
    len: u32,
    /// Pass 1 only measures: it counts bytes without storing them.
    measure: bool,
    labels: Vec<u32>,
    sites: Vec<Site>,
    /// Per jump site (in emission order): emit rel8? Empty during pass 1.
    short: Vec<bool>,
    /// `call rel32` sites to helpers, fixed up once the final address is known.
    pub calls: Vec<AbsCallSite>,
    /// Whether helpers are reached by `call rel32` (else `mov rax, imm64; call rax`).
    pub rel_calls: bool,
}

impl Asm {
    /// A fresh assembler for pass 1 (measuring only; every label jump taken as rel32).
    pub(crate) fn new(slots: usize, rel_calls: bool) -> Asm {
        Asm {
            // A few labels and jumps per slot.
            buf: Vec::new(),
            len: 0,
            measure: true,
            labels: Vec::with_capacity(slots * 3 + 8),
            sites: Vec::with_capacity(slots * 2 + 8),
            short: Vec::new(),
            calls: Vec::new(),
            rel_calls,
        }
    }

    /// After pass 1: the assembler for pass 2, which uses rel8 where pass 1 proved it fits.
    /// Reuses pass 1's buffers. Returns it with the number of pass-1 jump sites.
    pub(crate) fn second_pass(mut self) -> (Asm, usize) {
        let labels = &self.labels;
        self.short.clear();
        self.short.extend(self.sites.iter().map(|s| {
            let target = labels[s.label.0 as usize];
            target != UNBOUND && i8::try_from(target as i64 - s.end as i64).is_ok()
        }));
        let n = self.sites.len();
        let len = self.len as usize;
        self.reserve_exact(len);
        self.len = 0;
        self.measure = false;
        self.labels.clear();
        self.sites.clear();
        self.calls.clear();
        (self, n)
    }

    /// Current offset.
    pub(crate) fn pos(&self) -> u32 {
        self.len
    }

    /// A new, unbound label.
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
    pub(crate) fn bind(&mut self, l: Label) {
        let p = self.pos();
        self.labels[l.0 as usize] = p;
    }

    /// Offset a label was bound to, if it was.
    pub(crate) fn offset_of(&self, l: Label) -> Option<u32> {
        let o = self.labels[l.0 as usize];
        (o != UNBOUND).then_some(o)
    }

    /// Number of jump sites recorded.
    pub(crate) fn jump_sites(&self) -> usize {
        self.sites.len()
    }

    /// Resolves every label jump of pass 2. Fails (a bug, reported as an error rather than a
    /// panic) if a label was never bound or a rel8 decision no longer fits.
    pub(crate) fn patch_jumps(&mut self) -> Result<(), &'static str> {
        for s in &self.sites {
            let target = self.labels[s.label.0 as usize];
            if target == UNBOUND {
                return Err("jump to an unbound label");
            }
            let d = target as i64 - s.end as i64;
            if s.short {
                let d = i8::try_from(d).map_err(|_| "rel8 jump out of range")?;
                self.buf[s.end as usize - 1] = d as u8;
            } else {
                let d = i32::try_from(d).map_err(|_| "rel32 jump out of range")?;
                self.buf[s.end as usize - 4..s.end as usize].copy_from_slice(&d.to_le_bytes());
            }
        }
        Ok(())
    }

    // ---- committing instructions ----

    /// Appends one encoded instruction: a fixed 16-byte copy (no `memcpy` call, no per-byte
    /// capacity check), of which `i.n` bytes count. In the measuring pass only the length
    /// moves.
    #[inline]
    fn put(&mut self, i: Ins) {
        if !self.measure {
            let at = self.len as usize;
            if self.buf.len() < at + 16 {
                self.grow(at + 16);
            }
            self.buf[at..at + 16].copy_from_slice(&i.b);
        }
        self.len += i.n as u32;
    }

    #[cold]
    fn grow(&mut self, need: usize) {
        let n = need.max(self.buf.len() * 2).max(256);
        self.buf.resize(n, 0);
    }

    /// Sizes the buffer of the emitting pass for `len` bytes of code.
    fn reserve_exact(&mut self, len: usize) {
        self.buf = vec![0; len + 16];
    }

    /// The emitted code (pass 2), without the slack of the fixed-size copies.
    pub(crate) fn into_code(mut self) -> (Vec<u8>, Vec<AbsCallSite>) {
        self.buf.truncate(self.len as usize);
        (self.buf, self.calls)
    }

    // ---- moves ----

    /// `mov dst, src` (32-bit form zero-extends).
    pub(crate) fn mov_rr(&mut self, w64: bool, dst: R, src: R) {
        self.put(op_rr(width(w64), &[0x89], src.num(), dst, false));
    }

    /// Loads a 64-bit constant in the shortest form.
    pub(crate) fn mov_imm64(&mut self, dst: R, imm: u64) {
        if imm == 0 {
            self.alu_rr(false, Alu::Xor, dst, dst);
        } else if imm <= u32::MAX as u64 {
            self.mov_imm32(dst, imm as u32);
        } else if let Ok(v) = i32::try_from(imm as i64) {
            // REX.W C7 /0 id: sign-extended imm32.
            self.put(op_rr(W::B64, &[0xc7], 0, dst, false).d32(v));
        } else {
            let mut i = rex(Ins::new(), true, 0, 0, dst.hi(), false).u8(0xb8 + dst.low());
            for x in imm.to_le_bytes() {
                i = i.u8(x);
            }
            self.put(i);
        }
    }

    /// `mov dst32, imm32` (zero-extends into the upper half).
    pub(crate) fn mov_imm32(&mut self, dst: R, imm: u32) {
        if imm == 0 {
            self.alu_rr(false, Alu::Xor, dst, dst);
            return;
        }
        let i = rex(Ins::new(), false, 0, 0, dst.hi(), false);
        self.put(i.u8(0xb8 + dst.low()).d32(imm as i32));
    }

    /// `movsx`/`movsxd dst, src` from `from` bits (8, 16, 32); `w64` selects the target width.
    pub(crate) fn movsx_rr(&mut self, w64: bool, dst: R, src: R, from: W) {
        self.put(match from {
            W::B8 => op_rr(width(w64), &[0x0f, 0xbe], dst.num(), src, true),
            W::B16 => op_rr(width(w64), &[0x0f, 0xbf], dst.num(), src, false),
            _ => op_rr(W::B64, &[0x63], dst.num(), src, false),
        });
    }

    /// `movzx dst32, src16` (zero-extends to 64).
    pub(crate) fn movzx16_rr(&mut self, dst: R, src: R) {
        self.put(op_rr(W::B32, &[0x0f, 0xb7], dst.num(), src, false));
    }

    /// `lea dst, [base + disp]`.
    pub(crate) fn lea(&mut self, dst: R, base: R, disp: i32) {
        self.put(op_rm(W::B64, &[0x8d], dst.num(), base, disp, false));
    }

    /// Zero- or sign-extending load of `size` bytes from `[base + disp]` into `dst` (64 bits).
    pub(crate) fn load(&mut self, size: W, signed: bool, dst: R, base: R, disp: i32) {
        let d = dst.num();
        self.put(match (size, signed) {
            (W::B8, false) => op_rm(W::B32, &[0x0f, 0xb6], d, base, disp, false),
            (W::B16, false) => op_rm(W::B32, &[0x0f, 0xb7], d, base, disp, false),
            (W::B32, false) => op_rm(W::B32, &[0x8b], d, base, disp, false),
            (W::B64, _) => op_rm(W::B64, &[0x8b], d, base, disp, false),
            (W::B8, true) => op_rm(W::B64, &[0x0f, 0xbe], d, base, disp, false),
            (W::B16, true) => op_rm(W::B64, &[0x0f, 0xbf], d, base, disp, false),
            (W::B32, true) => op_rm(W::B64, &[0x63], d, base, disp, false),
        });
    }

    /// Store of the low `size` bytes of `src` to `[base + disp]`.
    pub(crate) fn store(&mut self, size: W, base: R, disp: i32, src: R) {
        let opc: &[u8] = if size == W::B8 { &[0x88] } else { &[0x89] };
        self.put(op_rm(size, opc, src.num(), base, disp, size == W::B8));
    }

    /// Store of an immediate (sign-extended for 64 bits) to `[base + disp]`.
    pub(crate) fn store_imm(&mut self, size: W, base: R, disp: i32, imm: i32) {
        self.put(match size {
            W::B8 => op_rm(W::B8, &[0xc6], 0, base, disp, false).u8(imm as u8),
            W::B16 => {
                let [lo, hi] = (imm as u16).to_le_bytes();
                op_rm(W::B16, &[0xc7], 0, base, disp, false).u8(lo).u8(hi)
            }
            _ => op_rm(size, &[0xc7], 0, base, disp, false).d32(imm),
        });
    }

    /// `mov dst, [base + disp]` (64-bit).
    pub(crate) fn mov_rm(&mut self, dst: R, base: R, disp: i32) {
        self.put(op_rm(W::B64, &[0x8b], dst.num(), base, disp, false));
    }

    /// `mov [base + disp], src` (64-bit).
    pub(crate) fn mov_mr(&mut self, base: R, disp: i32, src: R) {
        self.put(op_rm(W::B64, &[0x89], src.num(), base, disp, false));
    }

    // ---- arithmetic ----

    /// `op dst, src`.
    pub(crate) fn alu_rr(&mut self, w64: bool, op: Alu, dst: R, src: R) {
        self.put(op_rr(
            width(w64),
            &[op.rm_reg_opcode()],
            src.num(),
            dst,
            false,
        ));
    }

    /// `op dst, imm` (imm sign-extended to 64 bits in the 64-bit form).
    pub(crate) fn alu_ri(&mut self, w64: bool, op: Alu, dst: R, imm: i32) {
        self.put(if let Ok(i) = i8::try_from(imm) {
            op_rr(width(w64), &[0x83], op.imm_digit(), dst, false).u8(i as u8)
        } else {
            op_rr(width(w64), &[0x81], op.imm_digit(), dst, false).d32(imm)
        });
    }

    /// `op dst, [base + disp]` (64-bit; the `reg, r/m` direction).
    pub(crate) fn alu_rm(&mut self, op: Alu, dst: R, base: R, disp: i32) {
        let opc = [op.rm_reg_opcode() + 2];
        self.put(op_rm(W::B64, &opc, dst.num(), base, disp, false));
    }

    /// `test a, b`.
    pub(crate) fn test_rr(&mut self, w64: bool, a: R, b: R) {
        self.put(op_rr(width(w64), &[0x85], b.num(), a, false));
    }

    /// `test a, imm` (imm sign-extended in the 64-bit form).
    pub(crate) fn test_ri(&mut self, w64: bool, a: R, imm: i32) {
        self.put(op_rr(width(w64), &[0xf7], 0, a, false).d32(imm));
    }

    /// `imul dst, src`.
    pub(crate) fn imul_rr(&mut self, w64: bool, dst: R, src: R) {
        self.put(op_rr(width(w64), &[0x0f, 0xaf], dst.num(), src, false));
    }

    /// `imul dst, dst, imm`.
    pub(crate) fn imul_ri(&mut self, w64: bool, dst: R, imm: i32) {
        self.put(if let Ok(i) = i8::try_from(imm) {
            op_rr(width(w64), &[0x6b], dst.num(), dst, false).u8(i as u8)
        } else {
            op_rr(width(w64), &[0x69], dst.num(), dst, false).d32(imm)
        });
    }

    /// `neg dst`.
    pub(crate) fn neg(&mut self, w64: bool, dst: R) {
        self.put(op_rr(width(w64), &[0xf7], 3, dst, false));
    }

    /// `div src` (unsigned) or `idiv src` (signed): rdx:rax / src.
    pub(crate) fn div(&mut self, w64: bool, signed: bool, src: R) {
        let digit = if signed { 7 } else { 6 };
        self.put(op_rr(width(w64), &[0xf7], digit, src, false));
    }

    /// `cqo` (64) or `cdq` (32): sign-extend rax into rdx.
    pub(crate) fn cqo(&mut self, w64: bool) {
        let i = if w64 { Ins::new().u8(0x48) } else { Ins::new() };
        self.put(i.u8(0x99));
    }

    /// Shift by an immediate.
    pub(crate) fn shift_ri(&mut self, w: W, op: Shift, dst: R, imm: u8) {
        self.put(op_rr(w, &[0xc1], op as u8, dst, false).u8(imm));
    }

    /// Shift by `cl`.
    pub(crate) fn shift_cl(&mut self, w64: bool, op: Shift, dst: R) {
        self.put(op_rr(width(w64), &[0xd3], op as u8, dst, false));
    }

    /// `bswap dst` (32 or 64 bits).
    pub(crate) fn bswap(&mut self, w64: bool, dst: R) {
        let i = rex(Ins::new(), w64, 0, 0, dst.hi(), false);
        self.put(i.u8(0x0f).u8(0xc8 + dst.low()));
    }

    /// `pxor xmm0, xmm0`.
    pub(crate) fn pxor_xmm0(&mut self) {
        self.put(Ins::new().u8(0x66).u8(0x0f).u8(0xef).u8(0xc0));
    }

    /// `movups [base + disp], xmm0`.
    pub(crate) fn movups_store_xmm0(&mut self, base: R, disp: i32) {
        self.put(op_rm(W::B32, &[0x0f, 0x11], 0, base, disp, false));
    }

    /// `cmp a, [base + disp]` (64-bit).
    pub(crate) fn cmp_rm(&mut self, a: R, base: R, disp: i32) {
        self.alu_rm(Alu::Cmp, a, base, disp);
    }

    /// `sub qword [base + disp], imm` (sets CF when the value was below `imm`).
    pub(crate) fn sub_mem_imm(&mut self, base: R, disp: i32, imm: i32) {
        self.put(if let Ok(i) = i8::try_from(imm) {
            op_rm(W::B64, &[0x83], 5, base, disp, false).u8(i as u8)
        } else {
            op_rm(W::B64, &[0x81], 5, base, disp, false).d32(imm)
        });
    }

    // ---- atomics (all on [base + disp]) ----

    /// `lock op [base + disp], src` for add/or/and/xor.
    pub(crate) fn lock_alu_mr(&mut self, w64: bool, op: Alu, base: R, disp: i32, src: R) {
        let opc = [op.rm_reg_opcode()];
        self.put(lock(op_rm(width(w64), &opc, src.num(), base, disp, false)));
    }

    /// `lock xadd [base + disp], src`.
    pub(crate) fn lock_xadd(&mut self, w64: bool, base: R, disp: i32, src: R) {
        let i = op_rm(width(w64), &[0x0f, 0xc1], src.num(), base, disp, false);
        self.put(lock(i));
    }

    /// `xchg [base + disp], src` (implicitly locked).
    pub(crate) fn xchg_mr(&mut self, w64: bool, base: R, disp: i32, src: R) {
        self.put(op_rm(width(w64), &[0x87], src.num(), base, disp, false));
    }

    /// `lock cmpxchg [base + disp], src` (compares with rax/eax).
    pub(crate) fn lock_cmpxchg(&mut self, w64: bool, base: R, disp: i32, src: R) {
        let i = op_rm(width(w64), &[0x0f, 0xb1], src.num(), base, disp, false);
        self.put(lock(i));
    }

    /// Plain load `mov dst, [base + disp]` of 32 or 64 bits.
    pub(crate) fn mov_load(&mut self, w64: bool, dst: R, base: R, disp: i32) {
        self.put(op_rm(width(w64), &[0x8b], dst.num(), base, disp, false));
    }

    // ---- control flow ----

    /// Whether the next jump site is to be emitted as rel8 (decided after pass 1).
    fn next_is_short(&self) -> bool {
        self.short.get(self.sites.len()).copied().unwrap_or(false)
    }

    fn record(&mut self, l: Label, short: bool) {
        let end = self.pos();
        self.sites.push(Site {
            label: l,
            end,
            short,
        });
    }

    /// `jmp label`.
    pub(crate) fn jmp(&mut self, l: Label) {
        if self.next_is_short() {
            self.put(Ins::new().u8(0xeb).u8(0));
            self.record(l, true);
        } else {
            self.put(Ins::new().u8(0xe9).d32(0));
            self.record(l, false);
        }
    }

    /// `jcc label`.
    pub(crate) fn jcc(&mut self, c: Cond, l: Label) {
        if self.next_is_short() {
            self.put(Ins::new().u8(0x70 | c as u8).u8(0));
            self.record(l, true);
        } else {
            self.put(Ins::new().u8(0x0f).u8(0x80 | c as u8).d32(0));
            self.record(l, false);
        }
    }

    /// `call label` (always rel32: calls are rare and their targets far).
    pub(crate) fn call_label(&mut self, l: Label) {
        // Consume a site slot so that pass-1/pass-2 site numbering stays aligned, but always
        // emit the long form.
        self.put(Ins::new().u8(0xe8).d32(0));
        self.record(l, false);
    }

    /// Calls an absolute address: `call rel32` (fixed up at link time) or
    /// `mov rax, imm64; call rax` (clobbers rax, which holds the result anyway).
    pub(crate) fn call_abs(&mut self, target: u64) {
        if self.rel_calls {
            let pos = self.pos() + 1;
            self.put(Ins::new().u8(0xe8).d32(0));
            self.calls.push(AbsCallSite { pos, target });
        } else {
            let mut i = Ins::new().u8(0x48).u8(0xb8);
            for x in target.to_le_bytes() {
                i = i.u8(x);
            }
            self.put(i);
            self.put(Ins::new().u8(0xff).u8(0xd0)); // call rax: FF /2, mod 11, rm 000
        }
    }

    /// `ret`.
    pub(crate) fn ret(&mut self) {
        self.put(Ins::new().u8(0xc3));
    }

    /// `push r`.
    pub(crate) fn push(&mut self, r: R) {
        let i = rex(Ins::new(), false, 0, 0, r.hi(), false);
        self.put(i.u8(0x50 + r.low()));
    }

    /// `pop r`.
    pub(crate) fn pop(&mut self, r: R) {
        let i = rex(Ins::new(), false, 0, 0, r.hi(), false);
        self.put(i.u8(0x58 + r.low()));
    }
}

/// One x86 instruction being encoded (at most 15 bytes).
#[derive(Clone, Copy)]
struct Ins {
    b: [u8; 16],
    n: u8,
}

impl Ins {
    #[inline(always)]
    fn new() -> Ins {
        Ins { b: [0; 16], n: 0 }
    }
    #[inline(always)]
    fn u8(mut self, x: u8) -> Ins {
        // `& 15`: no bounds-check panic path; no instruction is longer than 15 bytes.
        self.b[(self.n & 15) as usize] = x;
        self.n += 1;
        self
    }
    #[inline(always)]
    fn d32(self, x: i32) -> Ins {
        let [a, b, c, d] = x.to_le_bytes();
        self.u8(a).u8(b).u8(c).u8(d)
    }
}

/// Appends a REX prefix if any bit is set or `force` (spl/bpl/sil/dil as byte registers).
#[inline(always)]
fn rex(i: Ins, w: bool, r: u8, x: u8, b: u8, force: bool) -> Ins {
    let v = 0x40 | (u8::from(w) << 3) | ((r & 1) << 2) | ((x & 1) << 1) | (b & 1);
    if v != 0x40 || force {
        i.u8(v)
    } else {
        i
    }
}

/// Prefixes `i` with `lock` (0xF0 must precede REX).
fn lock(i: Ins) -> Ins {
    let mut out = Ins::new().u8(0xf0);
    for k in 0..i.n as usize {
        out = out.u8(i.b[k]);
    }
    out
}

/// `[0x66] REX opcode modrm` with a register `rm` (mod = 11). `reg` is a register number or
/// an opcode extension digit.
#[inline]
fn op_rr(w: W, opc: &[u8], reg: u8, rm: R, byte_regs: bool) -> Ins {
    let mut i = Ins::new();
    if w == W::B16 {
        i = i.u8(0x66);
    }
    let force = byte_regs && (rm.byte_needs_rex() || (4..8).contains(&reg));
    i = rex(i, w == W::B64, reg >> 3, 0, rm.hi(), force);
    for &o in opc {
        i = i.u8(o);
    }
    i.u8(0xc0 | ((reg & 7) << 3) | rm.low())
}

/// `[0x66] REX opcode modrm [sib] [disp]` with a memory operand `[base + disp]`.
#[inline]
fn op_rm(w: W, opc: &[u8], reg: u8, base: R, disp: i32, byte_reg: bool) -> Ins {
    let mut i = Ins::new();
    if w == W::B16 {
        i = i.u8(0x66);
    }
    let force = byte_reg && (4..8).contains(&reg);
    i = rex(i, w == W::B64, reg >> 3, 0, base.hi(), force);
    for &o in opc {
        i = i.u8(o);
    }
    let r = (reg & 7) << 3;
    // mod 00 with base rbp/r13 means rip-relative: those always take a displacement.
    let md = if disp == 0 && base.low() != 5 {
        0x00
    } else if i8::try_from(disp).is_ok() {
        0x40
    } else {
        0x80
    };
    i = i.u8(md | r | base.low());
    if base.low() == 4 {
        // rsp/r12 as base need a SIB byte: scale 1, no index, that base.
        i = i.u8(0x24);
    }
    match md {
        0x40 => i.u8(disp as i8 as u8),
        0x80 => i.d32(disp),
        _ => i,
    }
}

fn width(w64: bool) -> W {
    if w64 {
        W::B64
    } else {
        W::B32
    }
}
