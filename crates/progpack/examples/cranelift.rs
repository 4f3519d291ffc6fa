//! Cranelift with progpack: compile functions with `cranelift-codegen` and
//! `cranelift-frontend`, apply their relocations against `exec_addr()`, finalize, call.
//!
//! **This is what `cranelift-jit` users would replace their per-module `mmap`/`mprotect`
//! with.** `cranelift-jit` bump-allocates code in page-rounded mappings, makes them read+execute
//! when a module is finalized, and can never free a single function. Here each function gets a
//! [`Draft`] in a shared 2 MiB huge-page pack; its relocations are resolved against
//! [`Draft::exec_addr`] (where it will run, known before any byte is placed); all drafts of the
//! "module" are placed with [`Allocator::finalize_all`] (adjacent drafts coalesce into one
//! write); and each function can be dropped on its own, which trap-fills its chunks.
//!
//! The relocations Cranelift's x86-64 backend emits for these functions:
//! - `X86CallPCRel4`: `call rel32` to a *colocated* function. Used for calls to JIT code and to
//!   the host, which the allocator's [`CodeRange`] keeps within ±2 GiB of this binary;
//! - `Abs8`: `movabs reg, imm64; call reg` to a non-colocated function (reaches anywhere);
//! - `X86PCRel4`: a rip-relative reference (handled the same way as `X86CallPCRel4`).
//!
//! Anything else (libcalls, GOT-relative forms) is reported as an error rather than guessed.
//!
//! Each function also carries its name and the unwind information Cranelift emits (an
//! `.eh_frame` with one CIE and the function's FDE, written at offset 0): progpack relocates it
//! to `exec_addr()` and registers it at finalize, so that a host function called from JIT code
//! captures a [`std::backtrace::Backtrace`] that reaches `main`, and a panic in it unwinds
//! through the JIT frame to a `catch_unwind` above. A copy of the caller placed *without* its
//! unwind information shows what that buys: the backtrace stops at the JIT frame.
//!
//! For the whole `cranelift_module::Module` (declarations, data objects, library calls,
//! freeing single functions), as a drop-in for `cranelift-jit`'s `JITModule`, see the
//! `progpack-cranelift` crate.
//!
//! Run: `cargo run --release -p progpack --example cranelift`
//!
//! [`Draft`]: progpack::Draft
//! [`Draft::exec_addr`]: progpack::Draft::exec_addr
//! [`Allocator::finalize_all`]: progpack::Allocator::finalize_all
//! [`CodeRange`]: progpack::CodeRange

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::gimli::write::{Address, EhFrame, EndianVec, FrameTable};
use cranelift_codegen::gimli::RunTimeEndian;
use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, Function, InstBuilder, Signature, UserExternalName,
    UserFuncName,
};
use cranelift_codegen::isa::unwind::UnwindInfo;
use cranelift_codegen::isa::TargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{binemit::Reloc, Context, FinalizedMachReloc, FinalizedRelocTarget};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use progpack::{Allocator, CodeRange, Config, Draft};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Namespace of host functions in `UserExternalName`s.
const HOST: u32 = 0;
/// Namespace of functions compiled here.
const JIT: u32 = 1;

static SQUARE_CALLS: AtomicU64 = AtomicU64::new(0);

/// Host function 0, called colocated (`call rel32`).
extern "C" fn host_square(x: i64) -> i64 {
    SQUARE_CALLS.fetch_add(1, Ordering::Relaxed);
    x.wrapping_mul(x)
}

/// Host function 1, called non-colocated (`movabs` + `call reg`, `Abs8`).
extern "C" fn host_finish(acc: i64, n: i64) -> i64 {
    acc.wrapping_mul(10).wrapping_add(n)
}

/// The backtrace `host_probe` captured last, as text.
static LAST_TRACE: Mutex<String> = Mutex::new(String::new());
/// Whether `host_probe` panics when called.
static PROBE_PANICS: AtomicBool = AtomicBool::new(false);

/// Host function 2, called colocated from `probe_caller`: captures a backtrace through the JIT
/// frame below it, and panics when asked to (`C-unwind`: a panic may leave through it).
extern "C-unwind" fn host_probe(x: i64) -> i64 {
    let trace = std::backtrace::Backtrace::force_capture();
    *LAST_TRACE.lock().unwrap() = trace.to_string();
    if PROBE_PANICS.load(Ordering::Relaxed) {
        panic!("host_probe({x}) panics through JIT code");
    }
    x * 2
}

fn host_addr(index: u32) -> Option<usize> {
    match index {
        0 => Some(host_square as extern "C" fn(i64) -> i64 as usize),
        1 => Some(host_finish as extern "C" fn(i64, i64) -> i64 as usize),
        2 => Some(host_probe as extern "C-unwind" fn(i64) -> i64 as usize),
        _ => None,
    }
}

/// What a relocation points at, resolved out of the function's name table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// `UserExternalName { namespace, index }`.
    User(u32, u32),
    /// An offset inside the function itself.
    SelfOffset(u32),
}

/// One compiled function: bytes, required alignment, relocations with resolved names, and its
/// unwind information as an `.eh_frame` for code at offset 0.
struct Compiled {
    name: &'static str,
    code: Vec<u8>,
    align: usize,
    relocs: Vec<(FinalizedMachReloc, Target)>,
    eh_frame: Vec<u8>,
}

fn isa() -> Res<Arc<dyn TargetIsa>> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed")?;
    // Non-PIC: non-colocated calls become `movabs` + `call reg` (Abs8) instead of GOT loads.
    flags.set("is_pic", "false")?;
    let builder = cranelift_native::builder().map_err(|e| format!("cranelift-native: {e}"))?;
    Ok(builder.finish(settings::Flags::new(flags))?)
}

fn sig(isa: &dyn TargetIsa, params: usize) -> Signature {
    let mut s = Signature::new(isa.default_call_conv());
    s.params
        .extend((0..params).map(|_| AbiParam::new(types::I64)));
    s.returns.push(AbiParam::new(types::I64));
    s
}

/// Compiles `func` and copies out its code and relocations.
fn compile(isa: &dyn TargetIsa, name: &'static str, func: Function) -> Res<Compiled> {
    let mut ctx = Context::for_function(func);
    let compiled = ctx
        .compile(isa, &mut ControlPlane::default())
        .map_err(|e| format!("compiling {name}: {:?}", e.inner))?;
    let code = compiled.code_buffer().to_vec();
    // The ISA's preferred function alignment (x86-64: cache-line friendly), and at least what
    // the constant pool in the buffer needs.
    let align = compiled
        .buffer
        .alignment
        .max(isa.function_alignment().preferred) as usize;
    let raw: Vec<FinalizedMachReloc> = compiled.buffer.relocs().to_vec();
    let eh_frame = eh_frame(isa, compiled)?;
    let names = ctx.func.params.user_named_funcs();
    let mut relocs = Vec::new();
    for r in raw {
        let target = match &r.target {
            FinalizedRelocTarget::Func(off) => Target::SelfOffset(*off),
            FinalizedRelocTarget::ExternalName(ExternalName::User(u)) => {
                let n = &names[*u];
                Target::User(n.namespace, n.index)
            }
            FinalizedRelocTarget::ExternalName(other) => {
                return Err(format!("{name}: unsupported relocation target {other:?}").into())
            }
        };
        relocs.push((r, target));
    }
    Ok(Compiled {
        name,
        code,
        align,
        relocs,
        eh_frame,
    })
}

/// The function's unwind information as an `.eh_frame` section (the ISA's CIE and the
/// function's FDE), for code at address 0: progpack relocates it to where the code runs.
fn eh_frame(isa: &dyn TargetIsa, compiled: &cranelift_codegen::CompiledCode) -> Res<Vec<u8>> {
    let Some(UnwindInfo::SystemV(info)) = compiled.create_unwind_info(isa)? else {
        return Err("no System V unwind information".into());
    };
    let mut table = FrameTable::default();
    let cie = isa.create_systemv_cie().ok_or("the ISA has no CIE")?;
    let cie = table.add_cie(cie);
    table.add_fde(cie, info.to_fde(Address::Constant(0)));
    let mut out = EhFrame(EndianVec::new(RunTimeEndian::Little));
    table.write_eh_frame(&mut out)?;
    Ok(out.0.into_vec())
}

/// `sum_squares(n) = host_finish(host_square(0) + ... + host_square(n - 1), n)`: a loop with a
/// colocated call to the host, then a non-colocated one.
fn build_sum_squares(isa: &dyn TargetIsa) -> Function {
    let mut func = Function::with_name_signature(UserFuncName::user(JIT, 0), sig(isa, 1));
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);

    let square_sig = b.import_signature(sig(isa, 1));
    let square_name = b
        .func
        .declare_imported_user_function(UserExternalName::new(HOST, 0));
    let square = b.import_function(ExtFuncData {
        name: ExternalName::user(square_name),
        signature: square_sig,
        colocated: true, // within the code range: call rel32
    });
    let finish_sig = b.import_signature(sig(isa, 2));
    let finish_name = b
        .func
        .declare_imported_user_function(UserExternalName::new(HOST, 1));
    let finish = b.import_function(ExtFuncData {
        name: ExternalName::user(finish_name),
        signature: finish_sig,
        colocated: false, // anywhere: movabs + call reg
    });

    let entry = b.create_block();
    let header = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.append_block_params_for_function_params(entry);
    let i = b.append_block_param(header, types::I64);
    let acc = b.append_block_param(header, types::I64);

    b.switch_to_block(entry);
    let n = b.block_params(entry)[0];
    let zero = b.ins().iconst(types::I64, 0);
    b.ins().jump(header, &[zero.into(), zero.into()]);

    b.switch_to_block(header);
    let more = b.ins().icmp(
        cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
        i,
        n,
    );
    b.ins().brif(more, body, &[], exit, &[]);

    b.switch_to_block(body);
    let call = b.ins().call(square, &[i]);
    let sq = b.inst_results(call)[0];
    let acc2 = b.ins().iadd(acc, sq);
    let i2 = b.ins().iadd_imm(i, 1);
    b.ins().jump(header, &[i2.into(), acc2.into()]);

    b.switch_to_block(exit);
    let call = b.ins().call(finish, &[acc, n]);
    let r = b.inst_results(call)[0];
    b.ins().return_(&[r]);

    b.seal_all_blocks();
    b.finalize();
    func
}

/// `pair(n) = sum_squares(n) + sum_squares(n + 1)`: JIT code calling JIT code (colocated).
fn build_pair(isa: &dyn TargetIsa) -> Function {
    let mut func = Function::with_name_signature(UserFuncName::user(JIT, 1), sig(isa, 1));
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let callee_sig = b.import_signature(sig(isa, 1));
    let callee_name = b
        .func
        .declare_imported_user_function(UserExternalName::new(JIT, 0));
    let callee = b.import_function(ExtFuncData {
        name: ExternalName::user(callee_name),
        signature: callee_sig,
        colocated: true,
    });
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let n = b.block_params(entry)[0];
    let c1 = b.ins().call(callee, &[n]);
    let a = b.inst_results(c1)[0];
    let n1 = b.ins().iadd_imm(n, 1);
    let c2 = b.ins().call(callee, &[n1]);
    let c = b.inst_results(c2)[0];
    let r = b.ins().iadd(a, c);
    b.ins().return_(&[r]);
    b.seal_all_blocks();
    b.finalize();
    func
}

/// `probe_caller(n) = host_probe(n) + 1`: JIT code with a frame between the host's caller and
/// `host_probe`.
fn build_probe_caller(isa: &dyn TargetIsa, index: u32) -> Function {
    let mut func = Function::with_name_signature(UserFuncName::user(JIT, index), sig(isa, 1));
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let probe_sig = b.import_signature(sig(isa, 1));
    let probe_name = b
        .func
        .declare_imported_user_function(UserExternalName::new(HOST, 2));
    let probe = b.import_function(ExtFuncData {
        name: ExternalName::user(probe_name),
        signature: probe_sig,
        colocated: true,
    });
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let n = b.block_params(entry)[0];
    let call = b.ins().call(probe, &[n]);
    let r = b.inst_results(call)[0];
    let r = b.ins().iadd_imm(r, 1);
    b.ins().return_(&[r]);
    b.seal_all_blocks();
    b.finalize();
    func
}

/// Patches `image` (which will run at `base`) for every relocation of `c`. `jit` gives the
/// exec address of each function compiled here. Returns how many of each kind were applied.
fn relocate(
    c: &Compiled,
    image: &mut [u8],
    base: usize,
    jit: &[usize],
    applied: &mut BTreeMap<String, usize>,
) -> Res<()> {
    for (r, target) in &c.relocs {
        let sym = match *target {
            Target::User(HOST, i) => host_addr(i),
            Target::User(JIT, i) => jit.get(i as usize).copied(),
            Target::User(..) => None,
            Target::SelfOffset(off) => Some(base + off as usize),
        }
        .ok_or_else(|| format!("{}: unresolved {target:?}", c.name))?;
        let what = (sym as i64).wrapping_add(r.addend);
        let at = r.offset as usize;
        match r.kind {
            Reloc::Abs8 => image[at..at + 8].copy_from_slice(&what.to_le_bytes()),
            Reloc::X86PCRel4 | Reloc::X86CallPCRel4 => {
                let pc = (base + at) as i64;
                let rel = i32::try_from(what - pc).map_err(|_| {
                    format!(
                        "{}: {:?} to {sym:#x} does not reach from {pc:#x}: configure a CodeRange",
                        c.name, r.kind
                    )
                })?;
                image[at..at + 4].copy_from_slice(&rel.to_le_bytes());
            }
            other => return Err(format!("{}: unsupported relocation {other:?}", c.name).into()),
        }
        *applied.entry(format!("{:?}", r.kind)).or_default() += 1;
    }
    Ok(())
}

#[inline(never)]
fn main() -> Res<()> {
    let isa = isa()?;
    let module = [
        compile(&*isa, "sum_squares", build_sum_squares(&*isa))?,
        compile(&*isa, "pair", build_pair(&*isa))?,
        compile(&*isa, "probe_caller", build_probe_caller(&*isa, 2))?,
        compile(
            &*isa,
            "probe_caller_without_unwind_info",
            build_probe_caller(&*isa, 3),
        )?,
    ];
    for c in &module {
        println!(
            "compiled {}: {} bytes, align {}, relocations {:?}",
            c.name,
            c.code.len(),
            c.align,
            c.relocs
                .iter()
                .map(|(r, t)| (r.kind, *t))
                .collect::<Vec<_>>()
        );
    }

    // Code must be within ±2 GiB of this binary for the colocated host call.
    let alloc = Allocator::new(Config::default().code_range(CodeRange::near_this_binary()))?;

    let chunk = alloc.config().get_chunk_size();
    // 1. Reserve: every function's exec address is known before any byte is placed.
    let mut drafts: Vec<Draft> = module
        .iter()
        .map(|c| alloc.draft(c.code.len(), c.align.min(chunk)))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<usize> = drafts.iter().map(Draft::exec_addr).collect();
    // 2. Copy and relocate into the writable images (never executable); name each function
    //    and give it its unwind information (but one, for the comparison below).
    let mut applied = BTreeMap::new();
    for (c, d) in module.iter().zip(&mut drafts) {
        let base = d.exec_addr();
        let image = d.image_mut();
        image.copy_from_slice(&c.code);
        relocate(c, image, base, &addrs, &mut applied)?;
        d.set_name(c.name)?;
        if c.name != "probe_caller_without_unwind_info" {
            d.set_eh_frame(&c.eh_frame)?;
        }
    }
    // 3. Place the whole module (adjacent drafts share one backend write).
    let programs = alloc.finalize_all(drafts)?;
    for (c, p) in module.iter().zip(&programs) {
        assert_eq!(p.addr() % c.align.min(chunk), 0, "alignment honoured");
    }
    println!("relocations applied: {applied:?}");
    assert!(
        applied.contains_key("X86CallPCRel4") && applied.contains_key("Abs8"),
        "expected both a rel32 call and an absolute call"
    );

    // SAFETY: both were compiled from the System V signatures used here; the host functions
    // and `programs` outlive every call.
    let (sum_squares, pair) = unsafe {
        (
            programs[0].as_fn::<extern "C" fn(i64) -> i64>(),
            programs[1].as_fn::<extern "C" fn(i64) -> i64>(),
        )
    };
    let oracle = |n: i64| (0..n).map(|i| i * i).sum::<i64>() * 10 + n;
    for n in [0, 1, 5, 100] {
        assert_eq!(sum_squares(n), oracle(n), "sum_squares({n})");
    }
    assert_eq!(SQUARE_CALLS.load(Ordering::Relaxed), 106);
    println!("ok  sum_squares(n) for n in 0|1|5|100 matches Rust; host_square called 106 times via rel32");
    for n in [0, 7, 50] {
        assert_eq!(pair(n), oracle(n) + oracle(n + 1), "pair({n})");
    }
    println!(
        "ok  pair(n) = sum_squares(n) + sum_squares(n + 1) through JIT -> JIT rel32 calls, at {:#x} -> {:#x}",
        programs[1].addr(),
        programs[0].addr()
    );

    unwind_through_jit_code(&alloc, &programs[2], &programs[3])?;

    let s = alloc.stats();
    println!(
        "ok  {} functions, {} bytes of code in {} pack(s) of {} KiB ({}), {} chunks used",
        s.programs,
        module.iter().map(|c| c.code.len()).sum::<usize>(),
        s.packs,
        s.pack_size >> 10,
        s.backend,
        s.chunks_used
    );
    // Unlike cranelift-jit, single functions can go: all but `sum_squares` are dropped.
    let mut programs = programs;
    drop(programs.split_off(1));
    assert_eq!(sum_squares(3), oracle(3));
    assert_eq!(alloc.stats().programs, 1);
    alloc
        .check_invariants()
        .map_err(|e| format!("invariant: {e}"))?;
    println!(
        "ok  dropped all but `sum_squares`: their chunks are traps again, sum_squares still runs"
    );
    Ok(())
}

/// Backtraces and panics through JIT frames: `with` has its unwind information registered,
/// `without` is the same code without it.
fn unwind_through_jit_code(
    alloc: &Allocator,
    with: &progpack::Program,
    without: &progpack::Program,
) -> Res<()> {
    // SAFETY: both are `probe_caller`, System V `fn(i64) -> i64`; `C-unwind` because a panic
    // may pass through them; the programs outlive the calls.
    let (with_fn, without_fn) = unsafe {
        (
            with.as_fn::<extern "C-unwind" fn(i64) -> i64>(),
            without.as_fn::<extern "C-unwind" fn(i64) -> i64>(),
        )
    };
    assert_eq!(with.name(), "probe_caller");
    let found = alloc.program_at(with.addr() + 3).ok_or("program_at")?;
    assert_eq!(&*found.name(), "probe_caller");

    assert_eq!(with_fn(20), 41);
    let trace = LAST_TRACE.lock().unwrap().clone();
    let reaches_main = |t: &str| t.contains("cranelift::main");
    assert!(
        reaches_main(&trace),
        "the backtrace stopped in JIT code:\n{trace}"
    );
    println!("ok  a backtrace from host_probe, called by JIT code, walks through it to main");

    assert_eq!(without_fn(20), 41);
    let trace = LAST_TRACE.lock().unwrap().clone();
    assert!(
        !reaches_main(&trace),
        "without unwind information the walk should stop at the JIT frame:\n{trace}"
    );
    println!("ok  without its unwind information, the same walk stops at the JIT frame");

    PROBE_PANICS.store(true, Ordering::Relaxed);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panic is expected: keep the output clean
    let caught = std::panic::catch_unwind(|| with_fn(7));
    std::panic::set_hook(default_hook);
    PROBE_PANICS.store(false, Ordering::Relaxed);
    let payload = caught.expect_err("host_probe panics");
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or("");
    assert_eq!(message, "host_probe(7) panics through JIT code");
    assert_eq!(with_fn(1), 3, "the JIT function still runs after the panic");
    println!("ok  a panic in host_probe unwinds through the JIT frame to catch_unwind above it");
    Ok(())
}
