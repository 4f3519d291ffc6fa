//! progpack-bpf: a userspace eBPF (RFC 9669) VM whose x86-64 JIT loads programs into progpack.
//!
//! The pieces, in the order a program meets them:
//! - [`asm`]: text in the bpf_conformance syntax -> raw slots ([`insn::Insn`]), and back;
//! - [`decode`]: raw slots -> typed instructions ([`decode::Instr`]);
//! - [`check`]: the static checker; a program that passes may be run by any engine;
//! - [`interp`]: the interpreter, which also defines the execution model the JIT follows;
//! - [`conformance`]: the `.data` test format of bpf_conformance and a runner for it;
//! - [`gen`]: random valid programs for differential tests between engines.
//!
//! [`Vm`] ties them together: it owns the helper registry, and loads any number of programs,
//! each an independent value that can be run many times and dropped.
//!
//! ```
//! use progpack_bpf::{Helpers, Vm};
//!
//! let vm = Vm::new(Helpers::new());
//! let prog = vm.load_asm("ldxw %r0, [%r1+4]\nadd %r0, %r2\nexit").unwrap();
//! let mut mem = [0, 0, 0, 0, 40, 0, 0, 0];
//! assert_eq!(prog.run_interp(&mut mem).unwrap(), 40 + 8); // r2 = memory length
//! ```
#![deny(unsafe_code)]

/// The workspace README's examples (allocator and VM), compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README examples (the VM, the JIT, a clang object), compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

pub mod asm;
pub mod check;
pub mod conformance;
pub mod context;
pub mod decode;
pub mod elf;
pub mod error;
pub mod gen;
pub mod hardening;
pub mod helpers;
pub mod insn;
pub mod interp;
pub mod jit;
pub mod kernel_helpers;
pub mod maps;
pub mod memory;
pub mod pseudo;
pub mod vaddr;

use std::sync::{Arc, OnceLock};

pub use check::{CheckError, Checked};
pub use context::{HelperContext, ProgramEnv};
pub use elf::{ElfError, Object, ObjectProgram};
pub use error::{Error, Result, RunError};
pub use hardening::Hardening;
pub use helpers::{ContextHelperFn, Helper, HelperFn, Helpers};
pub use interp::RunOptions;
pub use jit::{JitOptions, JitProgram};
pub use maps::{Map, MapDef, MapError, MapKind, UpdateFlag};

use insn::Insn;
use jit::deferred::{Combiner, JitCell};

/// What a program keeps of the VM that loaded it: the helper registry and the environment.
/// One `Arc` of these per program (not one per field), so a load clones one reference.
#[derive(Clone, Debug)]
struct Shared {
    helpers: Arc<Helpers>,
    env: Arc<ProgramEnv>,
}

/// A VM: a helper registry and run settings shared by the programs it loads.
#[derive(Clone, Debug)]
pub struct Vm {
    shared: Arc<Shared>,
    options: RunOptions,
    jit: Option<(progpack::Allocator, JitOptions)>,
    /// Where programs loaded one by one wait to be written together (see
    /// [`enable_jit`](Self::enable_jit)); `None`: each load writes its own.
    combiner: Option<Arc<Combiner>>,
    hardening: Hardening,
}

impl Vm {
    /// A VM whose programs may call `helpers`.
    pub fn new(helpers: Helpers) -> Self {
        Vm {
            shared: Arc::new(Shared {
                helpers: Arc::new(helpers),
                env: Arc::new(ProgramEnv::new()),
            }),
            options: RunOptions::default(),
            jit: None,
            combiner: None,
            hardening: Hardening::NONE,
        }
    }

    /// A VM for programs whose author you do not trust: [`Hardening::UNTRUSTED`] (constant
    /// blinding in the JIT, host addresses hidden from programs; see [`hardening`]).
    pub fn untrusted(helpers: Helpers) -> Self {
        let mut vm = Vm::new(helpers);
        vm.set_hardening(Hardening::UNTRUSTED);
        vm
    }

    /// The protections applied to programs loaded from now on.
    pub fn hardening(&self) -> Hardening {
        self.hardening
    }

    /// Changes the protections applied to programs loaded from now on.
    pub fn set_hardening(&mut self, hardening: Hardening) -> &mut Self {
        self.hardening = hardening;
        if self.shared.env.hidden != hardening.hide_addresses {
            self.env_mut().hidden = hardening.hide_addresses;
        }
        self
    }

    /// The JIT options loads use: the VM's, with its hardening added.
    fn jit_options(&self, o: JitOptions) -> JitOptions {
        JitOptions {
            blind_constants: o.blind_constants || self.hardening.blind_constants,
            ..o
        }
    }

    /// JIT-compiles programs loaded from now on into `alloc` (see [`BpfProgram::run_jit`]).
    ///
    /// Where `alloc` pays a system call per write (its backend's
    /// [`syscall_per_write`](progpack::Caps::syscall_per_write), as with the default
    /// `procmem`), programs loaded one by one ([`load`](Self::load) and the other single
    /// loads) are compiled at once but written to executable memory together, with one write
    /// for up to 256 programs: when that many wait, when one of them first runs or its code
    /// is asked for ([`BpfProgram::jit`]), or at [`flush`](Self::flush). Nothing runs before
    /// it is written. A load's errors (the checker's, the compiler's, running out of memory)
    /// still come from the load; if the write itself fails, those programs run in the
    /// interpreter (same results). [`load_many`](Self::load_many) writes its batch at once.
    pub fn enable_jit(&mut self, alloc: progpack::Allocator, options: JitOptions) -> &mut Self {
        self.combiner = alloc
            .backend_caps()
            .syscall_per_write
            .then(|| Combiner::new(alloc.clone()));
        self.jit = Some((alloc, options));
        self
    }

    /// Writes every program this VM loaded that is still waiting to be written (see
    /// [`enable_jit`](Self::enable_jit)) to executable memory now, so that their first runs
    /// do not. Nothing to do without the JIT or when nothing waits.
    pub fn flush(&self) {
        if let Some(c) = &self.combiner {
            c.flush();
        }
    }

    /// The helper registry.
    pub fn helpers(&self) -> &Helpers {
        &self.shared.helpers
    }

    /// The environment given to programs loaded from now on (host data, trace sink; the
    /// maps a program references are added to it per program).
    pub fn env(&self) -> &ProgramEnv {
        &self.shared.env
    }

    /// Changes the environment given to programs loaded from now on.
    pub fn env_mut(&mut self) -> &mut ProgramEnv {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shared).env)
    }

    /// Run settings given to programs loaded from now on.
    pub fn set_run_options(&mut self, options: RunOptions) -> &mut Self {
        self.options = options;
        self
    }

    /// Current run settings.
    pub fn run_options(&self) -> RunOptions {
        self.options
    }

    /// Loads a program from its bytecode (8-byte little-endian slots): decode and check.
    pub fn load(&self, code: &[u8]) -> Result<BpfProgram> {
        let slots = insn::decode_slots(code).ok_or(CheckError::PartialSlot { len: code.len() })?;
        self.load_vec_in(slots, Arc::clone(&self.shared))
    }

    /// Loads a program from raw slots.
    pub fn load_slots(&self, slots: &[Insn]) -> Result<BpfProgram> {
        self.load_vec_in(slots.to_vec(), Arc::clone(&self.shared))
    }

    /// Loads a program (bytecode) that references `maps`: an `lddw` with `src = 1` and
    /// `imm = i` loads the handle of `maps[i]`, one with `src = 2` the address of a byte of
    /// array `maps[i]`'s first value ([`pseudo`]). The program's environment is the VM's
    /// plus these maps.
    pub fn load_with_maps(&self, code: &[u8], maps: &[Arc<Map>]) -> Result<BpfProgram> {
        let mut slots =
            insn::decode_slots(code).ok_or(CheckError::PartialSlot { len: code.len() })?;
        let mut env = self.env().clone();
        for m in maps {
            env.add_map(Arc::clone(m));
        }
        vaddr::resolve(&mut slots, maps, &env)?;
        self.load_slots_in(&slots, Arc::new(env))
    }

    /// Loads `slots` to run in `env`.
    pub(crate) fn load_slots_in(&self, slots: &[Insn], env: Arc<ProgramEnv>) -> Result<BpfProgram> {
        let shared = Shared {
            helpers: Arc::clone(&self.shared.helpers),
            env,
        };
        self.load_vec_in(slots.to_vec(), Arc::new(shared))
    }

    /// Loads slots handed over, to run with `shared` (this VM's helpers, an environment).
    fn load_vec_in(&self, slots: Vec<Insn>, shared: Arc<Shared>) -> Result<BpfProgram> {
        let helpers = &self.shared.helpers;
        let Some((alloc, o)) = &self.jit else {
            let checked = check::check_vec(slots, helpers)?;
            return Ok(self.program(Code::Checked(checked), shared, None));
        };
        // The JIT runs the program: keep only its slots (see `BpfProgram::checked`).
        check::validate(&slots, helpers)?;
        let (options, extra) = (self.jit_options(*o), jit::EnvShape::of(&shared.env));
        let cell = match &self.combiner {
            Some(c) => JitProgram::new_deferred(c, &slots, helpers, options, extra, true)?,
            None => Arc::new(JitCell::placed(JitProgram::new_with(
                alloc, &slots, helpers, options, extra, true,
            )?)),
        };
        Ok(self.program(Code::slots(slots), shared, Some(cell)))
    }

    /// A program of this VM.
    fn program(&self, code: Code, shared: Arc<Shared>, jit: Option<Arc<JitCell>>) -> BpfProgram {
        BpfProgram {
            code,
            shared,
            options: self.options,
            jit,
        }
    }

    /// Loads many programs (bytecode, as [`load`](Self::load)). With the JIT enabled they are
    /// compiled and placed as one batch: one backend write per run of chunks instead of one
    /// per program. All or nothing: the first program that fails fails the call.
    pub fn load_many(&self, codes: &[&[u8]]) -> Result<Vec<BpfProgram>> {
        let Some((alloc, o)) = &self.jit else {
            let mut checked = Vec::with_capacity(codes.len());
            for code in codes {
                let slots =
                    insn::decode_slots(code).ok_or(CheckError::PartialSlot { len: code.len() })?;
                checked.push(check::check_vec(slots, self.helpers())?);
            }
            return Ok(checked
                .into_iter()
                .map(|c| self.program(Code::Checked(c), Arc::clone(&self.shared), None))
                .collect());
        };
        // Each program is made (without its code) where the caller will keep it, then its
        // code is set once the batch is placed.
        let mut progs = Vec::with_capacity(codes.len());
        // The last program, if the checker's quick pass took it: then it takes the next one
        // too if that has the same shape (programs made from one template), unchecked.
        let mut quick: Option<&[u8]> = None;
        for &code in codes {
            let slots =
                insn::decode_slots(code).ok_or(CheckError::PartialSlot { len: code.len() })?;
            if !quick.is_some_and(|q| check::same_quick_shape(q, code)) {
                let took = check::validate_quick(&slots, self.helpers())?;
                quick = took.then_some(code);
            }
            progs.push(self.program(Code::slots(slots), Arc::clone(&self.shared), None));
        }
        let extra = jit::EnvShape::of(self.env());
        let options = self.jit_options(*o);
        let placed = JitProgram::place_batch(
            alloc,
            progs.iter().map(BpfProgram::slots),
            self.helpers(),
            options,
            extra,
            true,
        )
        .map_err(|(_, e)| e)?;
        for (p, j) in progs.iter_mut().zip(placed) {
            p.jit = Some(Arc::new(JitCell::placed(j)));
        }
        Ok(progs)
    }

    /// Assembles and loads a program ([`asm`] syntax).
    pub fn load_asm(&self, text: &str) -> Result<BpfProgram> {
        self.load_slots(&asm::assemble(text)?)
    }
}

/// What a [`BpfProgram`] keeps of its bytecode.
#[derive(Clone, Debug)]
enum Code {
    /// The checked program (programs the interpreter runs).
    Checked(Checked),
    /// Slots that passed the checker, of a program the JIT runs: decoded into `decoded` when
    /// first needed (see [`BpfProgram::checked`]), so that many JIT programs keep no decoded
    /// copy each.
    Slots {
        slots: Vec<Insn>,
        decoded: OnceLock<Box<Checked>>,
    },
}

impl Code {
    fn slots(slots: Vec<Insn>) -> Code {
        Code::Slots {
            slots,
            decoded: OnceLock::new(),
        }
    }
}

/// A loaded, checked program. Independent of the [`Vm`] that loaded it (it keeps the helper
/// registry it was checked against); cheap to run many times, from any thread.
#[derive(Clone, Debug)]
pub struct BpfProgram {
    code: Code,
    shared: Arc<Shared>,
    options: RunOptions,
    /// The JIT code (written, or waiting to be: see [`Vm::enable_jit`]).
    jit: Option<Arc<JitCell>>,
}

impl BpfProgram {
    /// Runs the program in the interpreter over `mem` (r1 = its address, r2 = its length; both
    /// 0 when `mem` is empty). Tail calls run in the interpreter too.
    pub fn run_interp(&self, mem: &mut [u8]) -> Result<u64, RunError> {
        self.run_interp_with(mem, &self.options)
    }

    /// Like [`run_interp`](Self::run_interp) with other run settings (each tail-called program
    /// gets the whole instruction limit).
    pub fn run_interp_with(&self, mem: &mut [u8], options: &RunOptions) -> Result<u64, RunError> {
        let (mut r0, mut next) =
            interp::run_env(self.checked(), self.helpers(), self.env(), mem, options, 0)?;
        let mut n = 0;
        while let Some(p) = next {
            n += 1;
            (r0, next) = interp::run_env(p.checked(), p.helpers(), p.env(), mem, options, n)?;
        }
        Ok(r0)
    }

    /// Runs the JIT-compiled program over `mem` (r1 = its address, r2 = its length); the
    /// program must have been loaded by a VM with [`Vm::enable_jit`] or compiled with
    /// [`jit_compile`](Self::jit_compile). If its code still waits to be written (see
    /// [`Vm::enable_jit`]), this run writes it first, with the others waiting with it.
    #[inline]
    pub fn run_jit(&self, mem: &mut [u8]) -> Result<u64> {
        self.run_jit_with(mem, &self.options)
    }

    /// Like [`run_jit`](Self::run_jit) with other run settings (the instruction limit applies
    /// when the JIT code counts instructions, see [`JitOptions`]).
    #[inline]
    pub fn run_jit_with(&self, mem: &mut [u8], options: &RunOptions) -> Result<u64> {
        let limit = options.instruction_limit;
        match self.jit.as_deref() {
            // Written, no environment to build, no tail call possible, and a limit the code
            // honours: one call of the code.
            Some(j) if j.runs_directly(limit) => match j.run_direct(mem, limit) {
                Ok(v) => Ok(v),
                Err(e) => Err(Error::Run(e)),
            },
            _ => self.run_jit_other(mem, limit),
        }
    }

    /// [`run_jit_in_env`](Self::run_jit_in_env), marked cold so that the direct run above
    /// stays the straight path of callers' loops.
    #[cold]
    #[inline(never)]
    fn run_jit_other(&self, mem: &mut [u8], limit: u64) -> Result<u64> {
        self.run_jit_in_env(mem, limit)
    }

    /// A JIT run with the program's environment, and the tail calls it makes.
    #[inline(never)]
    fn run_jit_in_env(&self, mem: &mut [u8], limit: u64) -> Result<u64> {
        let (mut r0, mut next) = self.run_jit_once(mem, limit, 0)?;
        let mut n = 0;
        while let Some(p) = next {
            n += 1;
            (r0, next) = p.run_jit_once(mem, limit, n)?;
        }
        Ok(r0)
    }

    #[inline(always)]
    fn run_jit_once(&self, mem: &mut [u8], limit: u64, tail_calls: u32) -> Result<jit::Outcome> {
        let Some(jit) = self.jit() else {
            return match self.jit {
                // Its code could not be written: the interpreter gives the same results.
                Some(_) => self.run_below_floor(mem, limit, tail_calls),
                None => Err(jit::JitError::NotCompiled.into()),
            };
        };
        if limit < jit.floor() {
            return self.run_below_floor(mem, limit, tail_calls);
        }
        jit.run_env(mem, limit, self.env(), tail_calls)
            .map_err(|f| jit::fault_to_run_error(f, limit).into())
    }

    /// A JIT run whose limit the code cannot honour: code without loops counts nothing (it
    /// runs at most its floor of instructions), so a limit it could reach runs in the
    /// interpreter, which stops exactly there.
    #[cold]
    #[inline(never)]
    fn run_below_floor(&self, mem: &mut [u8], limit: u64, tail_calls: u32) -> Result<jit::Outcome> {
        let options = RunOptions {
            instruction_limit: limit,
        };
        let (r0, next) = interp::run_env(
            self.checked(),
            self.helpers(),
            self.env(),
            mem,
            &options,
            tail_calls,
        )?;
        Ok((r0, next))
    }

    /// The program's environment (maps' regions, host data).
    pub fn env(&self) -> &ProgramEnv {
        &self.shared.env
    }

    /// JIT-compiles the program into `alloc` (replacing earlier JIT code, if any).
    pub fn jit_compile(&mut self, alloc: &progpack::Allocator, options: JitOptions) -> Result<()> {
        let extra = jit::EnvShape::of(self.env());
        let j = JitProgram::new_with(alloc, self.slots(), self.helpers(), options, extra, true)?;
        self.jit = Some(Arc::new(JitCell::placed(j)));
        Ok(())
    }

    /// The JIT code, if compiled (written to executable memory first if it is still waiting,
    /// see [`Vm::enable_jit`]; `None` also if writing it failed).
    #[inline(always)]
    pub fn jit(&self) -> Option<&JitProgram> {
        self.jit.as_deref().and_then(JitCell::get)
    }

    /// The checked program: raw slots, decoded instructions, function entries. (A program
    /// loaded with the JIT decodes its instructions here on first use.)
    pub fn checked(&self) -> &Checked {
        match &self.code {
            Code::Checked(c) => c,
            Code::Slots { slots, decoded } => decoded.get_or_init(|| {
                // The slots passed this check, against these helpers, when they were loaded.
                let full = check::check_vec(slots.clone(), self.helpers())
                    .expect("a loaded program passes the checker again");
                Box::new(full)
            }),
        }
    }

    /// The raw slots.
    pub fn slots(&self) -> &[Insn] {
        match &self.code {
            Code::Checked(c) => &c.slots,
            Code::Slots { slots, .. } => slots,
        }
    }

    /// The helper registry the program was checked against.
    pub fn helpers(&self) -> &Helpers {
        &self.shared.helpers
    }

    /// Run settings.
    pub fn run_options(&self) -> RunOptions {
        self.options
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Vm>();
    assert_send_sync::<BpfProgram>();
};
