//! The interpreter: runs a checked program over the decoded [`Instr`] form.
//!
//! # Execution model (shared with the JIT: both engines must agree on all of it)
//!
//! - Registers start at zero, except r1 = host address of the memory region, r2 = its length
//!   in bytes, r10 = the top of frame 0. With no memory at all (length 0), r1 = 0 and r2 = 0
//!   (as the bpf_conformance plugins pass a null pointer).
//! - The stack is [`MAX_CALL_DEPTH`] frames of [`STACK_FRAME_SIZE`] bytes, contiguous, frame 0
//!   at the highest addresses. Frame *d* (call depth *d*, the entry being 0) spans
//!   `[top - (d+1)*512, top - d*512)`, and r10 in it is `top - d*512`. A frame is zeroed when
//!   it is entered (frame 0 at start, a callee's frame at each `call local`).
//! - A load, store or atomic of *n* bytes at address *a* is allowed iff `[a, a+n)` lies inside
//!   the memory region, inside the live frames `[r10 - 512, top)` (the current frame and its
//!   callers'), or inside one of the environment's extra regions ([`crate::memory`]: map
//!   values, ring buffers; a store or atomic needs a writable one). Anything else is
//!   [`RunError::OutOfBounds`]; nothing outside those ranges is ever read or written.
//!   Unaligned accesses are allowed. Extra regions are shared between threads: they are
//!   accessed with atomic operations, and the eBPF atomics on them are atomic.
//! - `call local` saves r6..r9 and the return slot, enters a new frame (r10 -= 512), and fails
//!   with [`RunError::CallDepthExceeded`] if that would make more than [`MAX_CALL_DEPTH`]
//!   frames. `exit` in a callee restores r6..r9 and r10; r0..r5 are not restored.
//! - Helper calls (`call`, `callx`) pass r1..r5 and set r0; r1..r5 keep their values.
//!   `callx` calls the helper whose id is the low 32 bits of its register. If the registry
//!   has an unwind helper ([`Helpers::set_unwind`]) and a call to it returns 0, the program
//!   ends at once with r0 = 0. A context helper that calls [`HelperContext::stop`] ends the
//!   program when it returns, with r0 = 0 (a pending tail call is the caller's to run).
//! - Division by zero gives 0 and modulo by zero leaves the dividend (truncated to 32 bits
//!   for 32-bit operations); signed `MIN / -1` is `MIN` and `MIN % -1` is 0 (RFC 9669).
//! - Every executed instruction counts against the instruction limit
//!   ([`RunError::InstructionLimit`]).
//!
//! Addresses handed to the program (r1, r10 and anything derived from them) are real host
//! addresses whose provenance is exposed, so helpers may turn them back into pointers.
#![allow(unsafe_code)]

use crate::check::Checked;
use crate::context::{HelperContext, ProgramEnv};
use crate::decode::{AluOp, AtomicOp, Cond, EndOp, Instr, Src, Width};
use crate::error::RunError;
use crate::helpers::Helpers;
use crate::insn::{MAX_CALL_DEPTH, STACK_FRAME_SIZE};
use crate::memory::{self, Region};

/// Size of the whole stack (all frames).
pub const STACK_SIZE: usize = MAX_CALL_DEPTH * STACK_FRAME_SIZE;

/// Default instruction limit of a run.
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 1 << 24;

/// Per-run settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Most instructions one run may execute.
    pub instruction_limit: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            instruction_limit: DEFAULT_INSTRUCTION_LIMIT,
        }
    }
}

/// The regions a program may touch, as raw pointers with exposed provenance: memory and stack
/// (exclusive to the run), and the environment's extra regions (shared).
struct Regions<'e> {
    mem_ptr: *mut u8,
    mem_addr: u64,
    mem_len: u64,
    stack_ptr: *mut u8,
    stack_addr: u64,
    extra: &'e [Region],
    /// Program addresses are virtual ([`crate::vaddr`]): `mem_addr` and `stack_addr` are then
    /// the virtual bases, and extra regions are found by their virtual base.
    hidden: bool,
}

impl Regions<'_> {
    /// Pointer to `[addr, addr + n)` if it lies in memory or in the live frames (those at or
    /// above `r10 - 512`), else the address if it lies in an extra region (allowing a store
    /// if `write`), as `Err`.
    #[inline]
    fn translate(
        &self,
        addr: u64,
        n: usize,
        r10: u64,
        write: bool,
    ) -> Option<Result<*mut u8, u64>> {
        let end = addr.checked_add(n as u64)?;
        if addr >= self.mem_addr && end <= self.mem_addr + self.mem_len {
            // In bounds of the memory slice, by the check above.
            return Some(Ok(self
                .mem_ptr
                .wrapping_add((addr - self.mem_addr) as usize)));
        }
        let live_lo = r10 - STACK_FRAME_SIZE as u64;
        let top = self.stack_addr + STACK_SIZE as u64;
        if addr >= live_lo && end <= top {
            return Some(Ok(self
                .stack_ptr
                .wrapping_add((addr - self.stack_addr) as usize)));
        }
        if self.hidden {
            return crate::vaddr::extra_to_host(self.extra, addr, n as u64, write)
                .map(|(h, _)| Err(h));
        }
        memory::find(self.extra, addr, n as u64, write).map(|_| Err(addr))
    }

    #[inline]
    fn load(&self, addr: u64, n: usize, r10: u64, pc: usize) -> Result<u64, RunError> {
        match self.translate(addr, n, r10, false) {
            Some(Ok(p)) => {
                let mut b = [0u8; 8];
                // SAFETY: `translate` returned a pointer to `n <= 8` bytes inside the memory
                // slice or the live frames of the stack buffer, both exclusively ours for the
                // whole run; live frames were zeroed on entry, so the bytes are initialised;
                // `b` has 8 bytes.
                unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n) };
                Ok(u64::from_le_bytes(b))
            }
            // SAFETY: the bytes lie in an extra region, valid and initialised for the run
            // (`ProgramEnv::add_region`'s contract) and shared: read atomically.
            Some(Err(a)) => Ok(unsafe { memory::load_shared(shared_ptr(a), n) }),
            None => Err(RunError::OutOfBounds { addr, len: n, pc }),
        }
    }

    #[inline]
    fn store(&self, addr: u64, n: usize, v: u64, r10: u64, pc: usize) -> Result<(), RunError> {
        match self.translate(addr, n, r10, true) {
            Some(Ok(p)) => {
                let b = v.to_le_bytes();
                // SAFETY: as in `load`: `p` points to `n <= 8` writable bytes of our own
                // buffers.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p, n) };
                Ok(())
            }
            // SAFETY: as in `load`, for a writable extra region.
            Some(Err(a)) => unsafe {
                memory::store_shared(shared_ptr(a), n, v);
                Ok(())
            },
            None => Err(RunError::OutOfBounds { addr, len: n, pc }),
        }
    }

    /// Atomically replaces the `n`-byte value at `addr` by `f(old)` (when `Some`); returns
    /// the old value. Memory and stack are exclusive to the run: a plain read and write.
    fn atomic(
        &self,
        addr: u64,
        n: usize,
        r10: u64,
        pc: usize,
        f: impl Fn(u64) -> Option<u64>,
    ) -> Result<u64, RunError> {
        match self.translate(addr, n, r10, true) {
            Some(Ok(_)) => {
                let old = self.load(addr, n, r10, pc)?;
                if let Some(new) = f(old) {
                    self.store(addr, n, new, r10, pc)?;
                }
                Ok(old)
            }
            // SAFETY: as in `store`.
            Some(Err(a)) => Ok(unsafe { memory::atomic_update(shared_ptr(a), n, f) }),
            None => Err(RunError::OutOfBounds { addr, len: n, pc }),
        }
    }

    /// Zeroes the frame whose r10 is `r10`.
    fn zero_frame(&self, r10: u64) {
        let off = (r10 - self.stack_addr) as usize - STACK_FRAME_SIZE;
        debug_assert!(off + STACK_FRAME_SIZE <= STACK_SIZE);
        // SAFETY: `r10` is the top of a frame inside the stack buffer (the caller keeps
        // `1 <= depth+1 <= MAX_CALL_DEPTH`), so `[off, off + 512)` is inside it; writing to
        // uninitialised bytes through a raw pointer is allowed.
        unsafe { std::ptr::write_bytes(self.stack_ptr.add(off), 0, STACK_FRAME_SIZE) };
    }
}

/// The pointer for an address inside an extra region (whose provenance its owner exposed).
#[inline]
fn shared_ptr(addr: u64) -> *mut u8 {
    std::ptr::with_exposed_provenance_mut(addr as usize)
}

#[derive(Clone, Copy, Default)]
struct Frame {
    ret: usize,
    saved: [u64; 4],
}

#[inline]
fn sx(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

#[inline]
fn alu64(op: AluOp, d: u64, s: u64) -> u64 {
    match op {
        AluOp::Add => d.wrapping_add(s),
        AluOp::Sub => d.wrapping_sub(s),
        AluOp::Mul => d.wrapping_mul(s),
        AluOp::Div => d.checked_div(s).unwrap_or(0),
        AluOp::SDiv => {
            if s == 0 {
                0
            } else {
                (d as i64).wrapping_div(s as i64) as u64
            }
        }
        AluOp::Or => d | s,
        AluOp::And => d & s,
        AluOp::Lsh => d << (s & 63),
        AluOp::Rsh => d >> (s & 63),
        AluOp::Mod => d.checked_rem(s).unwrap_or(d),
        AluOp::SMod => {
            if s == 0 {
                d
            } else {
                (d as i64).wrapping_rem(s as i64) as u64
            }
        }
        AluOp::Xor => d ^ s,
        AluOp::Mov => s,
        AluOp::MovSx(bits) => sx(s, bits as u32),
        AluOp::Arsh => ((d as i64) >> (s & 63)) as u64,
    }
}

#[inline]
fn alu32(op: AluOp, d: u32, s: u32) -> u32 {
    match op {
        AluOp::Add => d.wrapping_add(s),
        AluOp::Sub => d.wrapping_sub(s),
        AluOp::Mul => d.wrapping_mul(s),
        AluOp::Div => d.checked_div(s).unwrap_or(0),
        AluOp::SDiv => {
            if s == 0 {
                0
            } else {
                (d as i32).wrapping_div(s as i32) as u32
            }
        }
        AluOp::Or => d | s,
        AluOp::And => d & s,
        AluOp::Lsh => d << (s & 31),
        AluOp::Rsh => d >> (s & 31),
        AluOp::Mod => d.checked_rem(s).unwrap_or(d),
        AluOp::SMod => {
            if s == 0 {
                d
            } else {
                (d as i32).wrapping_rem(s as i32) as u32
            }
        }
        AluOp::Xor => d ^ s,
        AluOp::Mov => s,
        AluOp::MovSx(bits) => sx(s as u64, bits as u32) as u32,
        AluOp::Arsh => ((d as i32) >> (s & 31)) as u32,
    }
}

#[inline]
fn cond64(c: Cond, a: u64, b: u64) -> bool {
    match c {
        Cond::Eq => a == b,
        Cond::Gt => a > b,
        Cond::Ge => a >= b,
        Cond::Set => a & b != 0,
        Cond::Ne => a != b,
        Cond::Sgt => (a as i64) > (b as i64),
        Cond::Sge => (a as i64) >= (b as i64),
        Cond::Lt => a < b,
        Cond::Le => a <= b,
        Cond::Slt => (a as i64) < (b as i64),
        Cond::Sle => (a as i64) <= (b as i64),
    }
}

#[inline]
fn cond32(c: Cond, a: u32, b: u32) -> bool {
    match c {
        Cond::Eq => a == b,
        Cond::Gt => a > b,
        Cond::Ge => a >= b,
        Cond::Set => a & b != 0,
        Cond::Ne => a != b,
        Cond::Sgt => (a as i32) > (b as i32),
        Cond::Sge => (a as i32) >= (b as i32),
        Cond::Lt => a < b,
        Cond::Le => a <= b,
        Cond::Slt => (a as i32) < (b as i32),
        Cond::Sle => (a as i32) <= (b as i32),
    }
}

fn atomic_rmw(op: AtomicOp, old: u64, src: u64) -> u64 {
    match op {
        AtomicOp::Add => old.wrapping_add(src),
        AtomicOp::Or => old | src,
        AtomicOp::And => old & src,
        AtomicOp::Xor => old ^ src,
        AtomicOp::Xchg => src,
        AtomicOp::CmpXchg => unreachable!("cmpxchg is handled by the caller"),
    }
}

/// Runs `prog` over `mem` with the execution model of the module documentation, with no
/// maps or host data.
pub fn run(
    prog: &Checked,
    helpers: &Helpers,
    mem: &mut [u8],
    opts: &RunOptions,
) -> Result<u64, RunError> {
    run_env(prog, helpers, &ProgramEnv::default(), mem, opts, 0).map(|(r0, _)| r0)
}

/// Runs `prog` over `mem` in environment `env`, as the `tail_calls`-th tail call of its run;
/// returns r0 and the program a helper asked to tail-call, if any (the caller runs it).
pub fn run_env(
    prog: &Checked,
    helpers: &Helpers,
    env: &ProgramEnv,
    mem: &mut [u8],
    opts: &RunOptions,
    tail_calls: u32,
) -> Result<(u64, Option<std::sync::Arc<crate::BpfProgram>>), RunError> {
    if env.hidden && mem.len() as u64 > crate::vaddr::MAX_INPUT {
        return Err(RunError::InputTooLarge {
            len: mem.len() as u64,
            max: crate::vaddr::MAX_INPUT,
        });
    }
    // Frames are zeroed when entered and only live frames are reachable, so the rest of the
    // stack is never read before it is written: no need to initialise it all.
    let mut stack = std::mem::MaybeUninit::<[u8; STACK_SIZE]>::uninit();
    let mem_ptr = mem.as_mut_ptr();
    let stack_ptr = stack.as_mut_ptr().cast::<u8>();
    let (mem_host, stack_host) = (
        mem_ptr.expose_provenance() as u64,
        stack_ptr.expose_provenance() as u64,
    );
    // From here on `mem` and `stack` are only touched through these pointers.
    let regions = Regions {
        mem_ptr,
        mem_addr: if env.hidden {
            crate::vaddr::INPUT
        } else {
            mem_host
        },
        mem_len: mem.len() as u64,
        stack_ptr,
        stack_addr: if env.hidden {
            crate::vaddr::STACK_TOP - STACK_SIZE as u64
        } else {
            stack_host
        },
        extra: &env.regions,
        hidden: env.hidden,
    };
    let top = regions.stack_addr + STACK_SIZE as u64;
    regions.zero_frame(top);
    let mut hcx = HelperContext::new(
        mem_host,
        regions.mem_len,
        stack_host,
        stack_host + STACK_SIZE as u64,
        env,
    );
    hcx.tail_calls = tail_calls;

    let code = &prog.instrs[..];
    let unwind = helpers.unwind();
    let mut r = [0u64; 11];
    if regions.mem_len != 0 {
        r[1] = regions.mem_addr;
        r[2] = regions.mem_len;
    }
    r[10] = top;
    let mut frames = [Frame::default(); MAX_CALL_DEPTH];
    let mut depth = 0usize;
    let mut pc = 0usize;
    let mut budget = opts.instruction_limit;

    loop {
        if budget == 0 {
            return Err(RunError::InstructionLimit {
                limit: opts.instruction_limit,
            });
        }
        budget -= 1;
        let Some(&ins) = code.get(pc) else {
            return Err(RunError::InvalidInstruction { pc });
        };
        let mut next = pc + 1;
        match ins {
            Instr::Alu {
                width,
                op,
                dst,
                src,
            } => {
                let d = dst as usize;
                r[d] = match (width, src) {
                    (Width::W64, Src::Reg(s)) => alu64(op, r[d], r[s as usize]),
                    (Width::W64, Src::Imm(i)) => alu64(op, r[d], i as i64 as u64),
                    (Width::W32, Src::Reg(s)) => {
                        alu32(op, r[d] as u32, r[s as usize] as u32) as u64
                    }
                    (Width::W32, Src::Imm(i)) => alu32(op, r[d] as u32, i as u32) as u64,
                };
            }
            Instr::Neg { width, dst } => {
                let d = dst as usize;
                r[d] = match width {
                    Width::W64 => r[d].wrapping_neg(),
                    Width::W32 => (r[d] as u32).wrapping_neg() as u64,
                };
            }
            Instr::End { op, bits, dst } => {
                let d = dst as usize;
                let v = r[d];
                r[d] = match (op, bits) {
                    (EndOp::Le, 16) => v as u16 as u64,
                    (EndOp::Le, 32) => v as u32 as u64,
                    (EndOp::Le, _) => v,
                    (_, 16) => (v as u16).swap_bytes() as u64,
                    (_, 32) => (v as u32).swap_bytes() as u64,
                    (_, _) => v.swap_bytes(),
                };
            }
            Instr::Lddw { dst, imm } => {
                r[dst as usize] = imm;
                next = pc + 2;
            }
            Instr::LddwHi => return Err(RunError::InvalidInstruction { pc }),
            Instr::Load {
                size,
                signed,
                dst,
                base,
                off,
            } => {
                let addr = r[base as usize].wrapping_add(off as i64 as u64);
                let n = size.bytes();
                let v = regions.load(addr, n, r[10], pc)?;
                r[dst as usize] = if signed { sx(v, 8 * n as u32) } else { v };
            }
            Instr::StoreImm {
                size,
                base,
                off,
                imm,
            } => {
                let addr = r[base as usize].wrapping_add(off as i64 as u64);
                regions.store(addr, size.bytes(), imm as i64 as u64, r[10], pc)?;
            }
            Instr::StoreReg {
                size,
                base,
                off,
                src,
            } => {
                let addr = r[base as usize].wrapping_add(off as i64 as u64);
                regions.store(addr, size.bytes(), r[src as usize], r[10], pc)?;
            }
            Instr::Atomic {
                width,
                op,
                fetch,
                base,
                off,
                src,
            } => {
                let addr = r[base as usize].wrapping_add(off as i64 as u64);
                let (n, mask) = match width {
                    Width::W32 => (4, u32::MAX as u64),
                    Width::W64 => (8, u64::MAX),
                };
                let s = r[src as usize] & mask;
                if op == AtomicOp::CmpXchg {
                    let expected = r[0] & mask;
                    r[0] =
                        regions.atomic(addr, n, r[10], pc, |old| (old == expected).then_some(s))?;
                } else {
                    let old = regions.atomic(addr, n, r[10], pc, |old| {
                        Some(atomic_rmw(op, old, s) & mask)
                    })?;
                    if fetch {
                        r[src as usize] = old;
                    }
                }
            }
            Instr::Ja { off, .. } => next = (pc as i64 + 1 + off as i64) as usize,
            Instr::Jcc {
                width,
                cond,
                dst,
                src,
                off,
            } => {
                let a = r[dst as usize];
                let taken = match (width, src) {
                    (Width::W64, Src::Reg(s)) => cond64(cond, a, r[s as usize]),
                    (Width::W64, Src::Imm(i)) => cond64(cond, a, i as i64 as u64),
                    (Width::W32, Src::Reg(s)) => cond32(cond, a as u32, r[s as usize] as u32),
                    (Width::W32, Src::Imm(i)) => cond32(cond, a as u32, i as u32),
                };
                if taken {
                    next = (pc as i64 + 1 + off as i64) as usize;
                }
            }
            Instr::Call { id } => {
                if call_helper(helpers, unwind, id, &mut r, &mut hcx, pc)? {
                    return Ok((r[0], hcx.tail_call.take()));
                }
            }
            Instr::Callx { reg } => {
                let id = r[reg as usize] as u32;
                if call_helper(helpers, unwind, id, &mut r, &mut hcx, pc)? {
                    return Ok((r[0], hcx.tail_call.take()));
                }
            }
            Instr::CallLocal { off } => {
                if depth + 1 >= MAX_CALL_DEPTH {
                    return Err(RunError::CallDepthExceeded { pc });
                }
                frames[depth] = Frame {
                    ret: pc + 1,
                    saved: [r[6], r[7], r[8], r[9]],
                };
                depth += 1;
                r[10] -= STACK_FRAME_SIZE as u64;
                regions.zero_frame(r[10]);
                next = (pc as i64 + 1 + off as i64) as usize;
            }
            Instr::Exit => {
                if depth == 0 {
                    return Ok((r[0], None));
                }
                depth -= 1;
                let f = frames[depth];
                r[6..10].copy_from_slice(&f.saved);
                r[10] += STACK_FRAME_SIZE as u64;
                next = f.ret;
            }
        }
        pc = next;
    }
}

/// Calls helper `id`; returns whether the program must stop (the unwind helper returned 0,
/// or a context helper asked to stop).
#[inline]
fn call_helper(
    helpers: &Helpers,
    unwind: Option<u32>,
    id: u32,
    r: &mut [u64; 11],
    hcx: &mut HelperContext<'_>,
    pc: usize,
) -> Result<bool, RunError> {
    let f = helpers.get(id).ok_or(RunError::UnknownHelper { id, pc })?;
    hcx.frame = r[10];
    r[0] = f.call([r[1], r[2], r[3], r[4], r[5]], hcx);
    if hcx.stop != 0 {
        r[0] = 0;
        return Ok(true);
    }
    Ok(unwind == Some(id) && r[0] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;
    use crate::decode::Size;
    use crate::insn::Insn;

    fn run_instrs(prog: &[Instr], mem: &mut [u8]) -> Result<u64, RunError> {
        let slots: Vec<Insn> = prog.iter().flat_map(|i| i.encode()).collect();
        let c = check(&slots, &Helpers::new()).expect("valid program");
        run(&c, &Helpers::new(), mem, &RunOptions::default())
    }

    #[test]
    fn sign_extension_helper() {
        assert_eq!(sx(0x80, 8), 0xffff_ffff_ffff_ff80);
        assert_eq!(sx(0x7f, 8), 0x7f);
        assert_eq!(sx(0x8000_0000, 32), 0xffff_ffff_8000_0000);
    }

    #[test]
    fn division_semantics() {
        assert_eq!(alu64(AluOp::Div, 7, 0), 0);
        assert_eq!(alu64(AluOp::Mod, 7, 0), 7);
        assert_eq!(
            alu64(AluOp::SDiv, i64::MIN as u64, u64::MAX),
            i64::MIN as u64
        );
        assert_eq!(alu64(AluOp::SMod, i64::MIN as u64, u64::MAX), 0);
        assert_eq!(alu32(AluOp::SDiv, (-7i32) as u32, 2), (-3i32) as u32);
        assert_eq!(alu32(AluOp::SMod, (-7i32) as u32, 2), (-1i32) as u32);
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let mut mem = [1u8, 2, 3, 4];
        let load = |off| Instr::Load {
            size: Size::W,
            signed: false,
            dst: 0,
            base: 1,
            off,
        };
        assert_eq!(
            run_instrs(&[load(0), Instr::Exit], &mut mem),
            Ok(0x0403_0201)
        );
        let err = run_instrs(&[load(1), Instr::Exit], &mut mem).unwrap_err();
        assert!(matches!(err, RunError::OutOfBounds { len: 4, pc: 0, .. }));
        // Below the current frame.
        let below = Instr::Load {
            size: Size::B,
            signed: false,
            dst: 0,
            base: 10,
            off: -513,
        };
        assert!(matches!(
            run_instrs(&[below, Instr::Exit], &mut mem),
            Err(RunError::OutOfBounds { len: 1, .. })
        ));
        // At the top of the stack.
        let above = Instr::Load {
            size: Size::B,
            signed: false,
            dst: 0,
            base: 10,
            off: 0,
        };
        assert!(run_instrs(&[above, Instr::Exit], &mut mem).is_err());
    }

    #[test]
    fn infinite_loop_hits_the_limit() {
        let slots = Instr::Ja {
            off: -1,
            long: false,
        }
        .encode();
        let c = check(&slots, &Helpers::new()).unwrap();
        let opts = RunOptions {
            instruction_limit: 1000,
        };
        assert_eq!(
            run(&c, &Helpers::new(), &mut [], &opts),
            Err(RunError::InstructionLimit { limit: 1000 })
        );
    }

    #[test]
    fn recursion_hits_the_depth_limit() {
        let p = [Instr::CallLocal { off: -1 }, Instr::Exit];
        assert_eq!(
            run_instrs(&p, &mut []),
            Err(RunError::CallDepthExceeded { pc: 0 })
        );
    }
}
