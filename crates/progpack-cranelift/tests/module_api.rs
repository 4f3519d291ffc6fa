//! `ProgpackModule`'s own API: bad input is a `ModuleError` (never a panic) and leaves the
//! module usable; functions are freed one by one, refused while still called; data goes into
//! packs or onto the heap as configured; dropping the module frees its code, `leak` keeps it.

use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{
    default_libcall_names, DataDescription, DataId, FuncId, Linkage, Module, ModuleError,
    ModuleReloc, ModuleRelocTarget,
};
use progpack::{Allocator, CodeRange, Config};
use progpack_cranelift::{Error, ProgpackBuilder, ProgpackModule};

/// Frees functions. SAFETY for every call in this file: no JIT code runs concurrently, and no
/// freed function's pointer is called again.
#[allow(clippy::result_large_err)]
fn free(m: &mut ProgpackModule, ids: &[FuncId]) -> Result<(), ModuleError> {
    // SAFETY: see above.
    unsafe { m.free_functions(ids) }
}

/// Frees a data object (same promise as [`free`]).
#[allow(clippy::result_large_err)]
fn free_data(m: &mut ProgpackModule, id: DataId) -> Result<(), ModuleError> {
    // SAFETY: see `free`.
    unsafe { m.free_data(id) }
}

/// A function returning 0.
#[cfg(target_arch = "x86_64")]
const RET0: &[u8] = &[0x31, 0xc0, 0xc3]; // xor eax, eax; ret
#[cfg(target_arch = "aarch64")]
const RET0: &[u8] = &[0x00, 0x00, 0x80, 0xd2, 0xc0, 0x03, 0x5f, 0xd6]; // mov x0, #0; ret

fn module() -> ProgpackModule {
    ProgpackModule::new(ProgpackBuilder::new(default_libcall_names()).unwrap()).unwrap()
}

fn sig_i64(module: &ProgpackModule, params: usize) -> Signature {
    let mut sig = module.make_signature();
    sig.params
        .extend((0..params).map(|_| AbiParam::new(types::I64)));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Defines `name() -> i64` returning `value` plus the results of calling each of `callees`
/// (declared in the module, called with no arguments).
#[allow(clippy::result_large_err)] // ModuleError is Cranelift's
fn define_sum(
    module: &mut ProgpackModule,
    name: &str,
    value: i64,
    callees: &[FuncId],
) -> Result<FuncId, ModuleError> {
    let sig = sig_i64(module, 0);
    let id = module.declare_function(name, Linkage::Export, &sig)?;
    let mut ctx = Context::for_function(Function::with_name_signature(
        UserFuncName::user(0, id.as_u32()),
        sig,
    ));
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        b.seal_block(block);
        let mut acc = b.ins().iconst(types::I64, value);
        for &c in callees {
            let r = module.declare_func_in_func(c, b.func);
            let call = b.ins().call(r, &[]);
            let v = b.inst_results(call)[0];
            acc = b.ins().iadd(acc, v);
        }
        b.ins().return_(&[acc]);
        b.finalize();
    }
    module.define_function(id, &mut ctx)?;
    Ok(id)
}

fn call0(module: &ProgpackModule, id: FuncId) -> i64 {
    // SAFETY: every function of these tests is `fn() -> i64` in the default convention.
    let f = unsafe {
        std::mem::transmute::<*const u8, extern "C" fn() -> i64>(module.get_finalized_function(id))
    };
    f()
}

fn backend_error(e: &ModuleError) -> &Error {
    Error::from_module_error(e).unwrap_or_else(|| panic!("not a progpack-cranelift error: {e}"))
}

#[test]
fn unresolved_symbol_is_an_error_and_the_module_stays_usable() {
    let mut m = module();
    let sig = sig_i64(&m, 0);
    // Declared, never defined, in no symbol table: `Local` makes the call colocated (rel32).
    let later = m
        .declare_function("defined_later", Linkage::Local, &sig)
        .unwrap();
    let caller = define_sum(&mut m, "caller", 1, &[later]).unwrap();
    let e = m.finalize_definitions().unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::UnresolvedSymbol(n) if n == "defined_later"),
        "{e}"
    );
    assert!(m.finalized_function(caller).is_none(), "still pending");
    assert_eq!(m.allocator().stats().programs, 0, "nothing was placed");

    // Define what was missing, finalize again: both work.
    let sig2 = sig.clone();
    let mut ctx = Context::for_function(Function::with_name_signature(
        UserFuncName::user(0, later.as_u32()),
        sig2,
    ));
    {
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        b.seal_block(block);
        let v = b.ins().iconst(types::I64, 41);
        b.ins().return_(&[v]);
        b.finalize();
    }
    m.define_function(later, &mut ctx).unwrap();
    m.finalize_definitions().unwrap();
    assert_eq!(call0(&m, caller), 42);
}

#[test]
fn a_colocated_target_out_of_rel32_reach_is_an_error() {
    let far = 0x7fff_0000_0000usize as *const u8;
    let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
    b.symbol("far_away", far);
    let mut m = ProgpackModule::new(b).unwrap();
    let sig = sig_i64(&m, 0);
    // Local + undefined: resolved by the symbol table, but called colocated (call rel32).
    let target = m
        .declare_function("far_away", Linkage::Local, &sig)
        .unwrap();
    define_sum(&mut m, "reaches_far", 0, &[target]).unwrap();
    let e = m.finalize_definitions().unwrap_err();
    match backend_error(&e) {
        Error::OutOfRange {
            item,
            target: t,
            kind,
            ..
        } => {
            assert_eq!(item, "reaches_far");
            #[cfg(target_arch = "x86_64")]
            {
                assert_eq!(*kind, cranelift_codegen::binemit::Reloc::X86CallPCRel4);
                assert_eq!(*t, far as usize - 4, "symbol plus the rel32 addend");
            }
            #[cfg(target_arch = "aarch64")]
            {
                assert_eq!(*kind, cranelift_codegen::binemit::Reloc::Arm64Call);
                assert_eq!(*t, far as usize);
            }
        }
        other => panic!("{other}"),
    }
    assert!(m.finalized_functions().next().is_none(), "nothing placed");
}

#[test]
fn bad_definitions_are_errors_not_panics() {
    let mut m = module();
    let sig = sig_i64(&m, 0);
    let id = m.declare_function("f", Linkage::Export, &sig).unwrap();
    let ret = RET0;

    // A GOT relocation (is_pic code) is refused when defined.
    let got = ModuleReloc {
        offset: 0,
        kind: cranelift_codegen::binemit::Reloc::X86GOTPCRel4,
        name: ModuleRelocTarget::user(0, id.as_u32()),
        addend: -4,
    };
    let e = m.define_function_bytes(id, 1, ret, &[got]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::UnsupportedReloc { .. }),
        "{e}"
    );
    // A relocation past the end of the code.
    let past = ModuleReloc {
        offset: 1,
        kind: cranelift_codegen::binemit::Reloc::Abs8,
        name: ModuleRelocTarget::user(0, id.as_u32()),
        addend: 0,
    };
    let e = m.define_function_bytes(id, 1, ret, &[past]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::RelocOutOfBounds { .. }),
        "{e}"
    );
    // An alignment that is not a power of two.
    let e = m.define_function_bytes(id, 3, ret, &[]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::BadAlignment { .. }),
        "{e}"
    );
    // A reference to a function id that was never declared: an error at finalize.
    let g = m.declare_function("g", Linkage::Export, &sig).unwrap();
    let stray = ModuleReloc {
        offset: 0,
        kind: cranelift_codegen::binemit::Reloc::Abs4,
        name: ModuleRelocTarget::user(0, 1000),
        addend: 0,
    };
    m.define_function_bytes(g, 1, &[0; 8], &[stray]).unwrap();
    let e = m.finalize_definitions().unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::UnsupportedTarget { .. }),
        "{e}"
    );

    // None of that stopped `f` from being defined properly.
    let mut m = module();
    let id = m.declare_function("f", Linkage::Export, &sig).unwrap();
    m.define_function_bytes(id, 1, ret, &[]).unwrap();
    let e = m.define_function_bytes(id, 1, ret, &[]).unwrap_err();
    assert!(matches!(e, ModuleError::DuplicateDefinition(_)), "{e}");
    let imported = m.declare_function("imp", Linkage::Import, &sig).unwrap();
    let e = m.define_function_bytes(imported, 1, ret, &[]).unwrap_err();
    assert!(matches!(e, ModuleError::InvalidImportDefinition(_)), "{e}");
    m.finalize_definitions().unwrap();
    assert_eq!(call0(&m, id), 0);

    // Thread-local data and data without contents.
    let e = m
        .declare_data("tls", Linkage::Export, true, true)
        .unwrap_err();
    assert!(matches!(backend_error(&e), Error::ThreadLocal(_)), "{e}");
    let e = m.declare_anonymous_data(false, true).unwrap_err();
    assert!(matches!(backend_error(&e), Error::ThreadLocal(_)), "{e}");
    let d = m
        .declare_data("empty", Linkage::Export, true, false)
        .unwrap();
    let e = m.define_data(d, &DataDescription::new()).unwrap_err();
    assert!(matches!(backend_error(&e), Error::Uninitialized(_)), "{e}");
}

#[test]
fn pic_isa_is_refused() {
    let mut flags = settings::builder();
    flags.set("is_pic", "true").unwrap();
    let isa = cranelift_native::builder()
        .unwrap()
        .finish(settings::Flags::new(flags))
        .unwrap();
    let e =
        ProgpackModule::new(ProgpackBuilder::with_isa(isa, default_libcall_names())).unwrap_err();
    assert!(matches!(backend_error(&e), Error::PicNotSupported), "{e}");
}

#[test]
fn free_is_refused_while_called_and_redefining_works() {
    let mut m = module();
    let leaf = define_sum(&mut m, "leaf", 1, &[]).unwrap();
    let mid = define_sum(&mut m, "mid", 10, &[leaf, leaf]).unwrap();
    let top = define_sum(&mut m, "top", 100, &[mid]).unwrap();
    m.finalize_definitions().unwrap();
    assert_eq!(call0(&m, top), 112);

    let e = free(&mut m, &[leaf]).unwrap_err();
    match backend_error(&e) {
        Error::StillReferenced { name, count, by } => {
            assert_eq!(name, "leaf");
            assert_eq!(*count, 2, "two calls in `mid`");
            assert_eq!(by, "mid");
        }
        other => panic!("{other}"),
    }
    let e = free(&mut m, &[leaf, mid]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::StillReferenced { name, by, .. } if name == "mid" && by == "top"),
        "{e}"
    );
    assert_eq!(call0(&m, top), 112, "refusals change nothing");

    // A group that only calls itself goes at once; then one by one from the top works too.
    free(&mut m, &[top, mid, leaf, mid]).unwrap();
    assert_eq!(m.allocator().stats().programs, 0);
    assert!(m.finalized_function(top).is_none());
    let e = free(&mut m, &[top]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::NotDefined(n) if n == "top"),
        "{e}"
    );

    // Same ids, new bodies.
    for (id, v) in [(leaf, 2), (mid, 20), (top, 200)] {
        let name = m.declarations().get_function_decl(id).name.clone().unwrap();
        let callees: &[FuncId] = match name.as_str() {
            "mid" => &[leaf, leaf],
            "top" => &[mid],
            _ => &[],
        };
        assert_eq!(define_sum(&mut m, &name, v, callees).unwrap(), id);
    }
    let e = free(&mut m, &[leaf]).unwrap_err();
    assert!(
        matches!(backend_error(&e), Error::NotFinalized(_)),
        "pending: {e}"
    );
    m.finalize_definitions().unwrap();
    assert_eq!(call0(&m, top), 224);
    free(&mut m, &[top]).unwrap();
    free(&mut m, &[mid]).unwrap();
    free(&mut m, &[leaf]).unwrap();
    assert_eq!(m.allocator().stats().programs, 0);
}

/// Defines a data object `name` with `bytes`; returns its id.
fn define_data(m: &mut ProgpackModule, name: &str, writable: bool, bytes: &[u8]) -> DataId {
    let id = m
        .declare_data(name, Linkage::Export, writable, false)
        .unwrap();
    let mut d = DataDescription::new();
    d.define(bytes.into());
    m.define_data(id, &d).unwrap();
    id
}

/// Defines `name() -> i64` that loads the first 8 bytes of data object `data`.
fn define_load(m: &mut ProgpackModule, name: &str, data: DataId) -> FuncId {
    let sig = sig_i64(m, 0);
    let id = m.declare_function(name, Linkage::Export, &sig).unwrap();
    let mut ctx = Context::for_function(Function::with_name_signature(
        UserFuncName::user(0, id.as_u32()),
        sig,
    ));
    let gv = m.declare_data_in_func(data, &mut ctx.func);
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        b.seal_block(block);
        let p = b.ins().symbol_value(types::I64, gv);
        let v = b
            .ins()
            .load(types::I64, cranelift_codegen::ir::MemFlags::trusted(), p, 0);
        b.ins().return_(&[v]);
        b.finalize();
    }
    m.define_function(id, &mut ctx).unwrap();
    id
}

#[test]
fn read_only_data_in_packs_writable_data_on_the_heap() {
    let shared =
        Allocator::new(Config::default().code_range(CodeRange::near_this_binary())).unwrap();
    let (base, size) = shared.code_range().unwrap();
    let in_packs = |p: *const u8| (base..base + size).contains(&(p as usize));

    for rodata_in_packs in [true, false] {
        let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
        b.allocator(shared.clone())
            .read_only_data_in_packs(rodata_in_packs);
        let mut m = ProgpackModule::new(b).unwrap();
        let ro = define_data(&mut m, "ro", false, &7i64.to_le_bytes());
        let rw = define_data(&mut m, "rw", true, &9i64.to_le_bytes());
        let load_ro = define_load(&mut m, "load_ro", ro);
        let load_rw = define_load(&mut m, "load_rw", rw);
        m.finalize_definitions().unwrap();
        assert_eq!((call0(&m, load_ro), call0(&m, load_rw)), (7, 9));

        let (ro_ptr, ro_len) = m.get_finalized_data(ro);
        let (rw_ptr, _) = m.get_finalized_data(rw);
        assert_eq!(ro_len, 8);
        assert_eq!(
            in_packs(ro_ptr),
            rodata_in_packs,
            "read-only data placement"
        );
        assert!(!in_packs(rw_ptr), "writable data is on the heap");
        // Writable data is written by the host and seen by JIT code.
        // SAFETY: `rw` is an 8-byte writable object alive while `m` lives.
        unsafe { rw_ptr.cast_mut().cast::<i64>().write_unaligned(-5) };
        assert_eq!(call0(&m, load_rw), -5);

        // Data still read by code cannot be freed; after the reader, it can.
        let e = free_data(&mut m, rw).unwrap_err();
        assert!(
            matches!(backend_error(&e), Error::StillReferenced { .. }),
            "{e}"
        );
        free(&mut m, &[load_rw]).unwrap();
        free_data(&mut m, rw).unwrap();
        free(&mut m, &[load_ro]).unwrap();
        free_data(&mut m, ro).unwrap();
        assert!(m.finalized_data(rw).is_none());
    }
    assert_eq!(shared.stats().programs, 0);
}

#[test]
fn dropping_the_module_frees_its_code_and_leak_keeps_it() {
    let shared =
        Allocator::new(Config::default().code_range(CodeRange::near_this_binary())).unwrap();
    let with_shared = || {
        let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
        b.allocator(shared.clone());
        ProgpackModule::new(b).unwrap()
    };
    let mut m = with_shared();
    for i in 0..50 {
        define_sum(&mut m, &format!("f{i}"), i, &[]).unwrap();
    }
    m.finalize_definitions().unwrap();
    assert_eq!(shared.stats().programs, 50);
    drop(m);
    assert_eq!(shared.stats().programs, 0, "drop freed every function");
    shared.check_invariants().unwrap();

    let mut m = with_shared();
    let id = define_sum(&mut m, "kept", 77, &[]).unwrap();
    m.finalize_definitions().unwrap();
    let p = m.get_finalized_function(id);
    m.leak();
    assert_eq!(shared.stats().programs, 1, "leaked code stays placed");
    // SAFETY: leaked code stays valid forever.
    let f = unsafe { std::mem::transmute::<*const u8, extern "C" fn() -> i64>(p) };
    assert_eq!(f(), 77);
}

#[test]
fn names_are_kept_for_listings() {
    let mut m = module();
    let a = define_sum(&mut m, "alpha", 1, &[]).unwrap();
    let sig = sig_i64(&m, 0);
    let anon = m.declare_anonymous_function(&sig).unwrap();
    m.define_function_bytes(anon, 16, RET0, &[]).unwrap();
    m.finalize_definitions().unwrap();
    let listed: Vec<(FuncId, String, usize)> = m
        .finalized_functions()
        .map(|(id, f)| (id, f.name.into_owned(), f.len))
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].0, listed[0].1.as_str()), (a, "alpha"));
    assert_eq!(listed[1].1, format!(".Lfn{:x}", anon.as_u32()));
    assert_eq!(listed[1].2, RET0.len());
    assert_eq!(
        m.get_finalized_function(anon) as usize % 16,
        0,
        "alignment kept"
    );
}

#[test]
fn announced_functions_carry_their_symbol_names() {
    let dir = std::env::temp_dir().join(format!("progpack-cranelift-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
    b.observe(progpack::Observe::default().perf_map_in(&dir).ignore_env());
    let mut m = ProgpackModule::new(b).unwrap();
    assert!(m.allocator().announces());
    // The first function of a finalize goes into a draft, the others into a batch.
    let a = define_sum(&mut m, "alpha", 1, &[]).unwrap();
    let c = define_sum(&mut m, "gamma", 3, &[a]).unwrap();
    let sig = sig_i64(&m, 0);
    let anon = m.declare_anonymous_function(&sig).unwrap();
    m.define_function_bytes(anon, 16, RET0, &[]).unwrap();
    m.finalize_definitions().unwrap();
    assert_eq!(call0(&m, c), 4);
    let map =
        std::fs::read_to_string(dir.join(format!("perf-{}.map", std::process::id()))).unwrap();
    for (id, name) in [
        (a, "alpha".to_string()),
        (c, "gamma".into()),
        (anon, format!(".Lfn{:x}", anon.as_u32())),
    ] {
        let addr = m.get_finalized_function(id) as usize;
        let found = m.allocator().program_at(addr).unwrap();
        assert_eq!(found.name(), name);
        assert!(
            map.lines()
                .any(|l| l.starts_with(&format!("{:x} ", found.addr()))
                    && l.ends_with(&format!(" {name}"))),
            "{name} not in the perf map:\n{map}"
        );
    }
    // Redefining after a free: the new code gets the name, the old one is gone.
    free(&mut m, &[c]).unwrap();
    let c2 = define_sum(&mut m, "gamma2", 5, &[a]).unwrap();
    m.finalize_definitions().unwrap();
    let at = m.get_finalized_function(c2) as usize;
    assert_eq!(m.allocator().program_at(at).unwrap().name(), "gamma2");
    drop(m);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_is_named_when_nothing_is_announced() {
    let mut m = ProgpackModule::new({
        let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
        b.observe(progpack::Observe::default().ignore_env());
        b
    })
    .unwrap();
    let a = define_sum(&mut m, "alpha", 1, &[]).unwrap();
    m.finalize_definitions().unwrap();
    assert!(!m.allocator().announces());
    assert!(m
        .allocator()
        .program_at(m.get_finalized_function(a) as usize)
        .is_none());
}

/// Calls into the host, checked on the x86-64 encoding.
#[cfg(target_arch = "x86_64")]
mod host_calls {
    use super::*;

    /// A host function of this binary.
    extern "C" fn host_add(a: i64, b: i64) -> i64 {
        a + b
    }

    /// Compiles `caller(a) = callee(a, 2)` where `callee` is imported; returns the module and the
    /// caller's code.
    fn call_import(
        name: &str,
        addr: Option<*const u8>,
        colocate: bool,
    ) -> (ProgpackModule, FuncId) {
        let mut b = ProgpackBuilder::new(default_libcall_names()).unwrap();
        if let Some(addr) = addr {
            b.symbol(name, addr);
        }
        b.colocate_host_symbols(colocate);
        let mut m = ProgpackModule::new(b).unwrap();
        let callee = m
            .declare_function(name, Linkage::Import, &sig_i64(&m, 2))
            .unwrap();
        let sig = sig_i64(&m, 1);
        let id = m.declare_function("caller", Linkage::Export, &sig).unwrap();
        let mut ctx = Context::for_function(Function::with_name_signature(
            UserFuncName::user(0, id.as_u32()),
            sig,
        ));
        let r = m.declare_func_in_func(callee, &mut ctx.func);
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = b.create_block();
            b.append_block_params_for_function_params(block);
            b.switch_to_block(block);
            b.seal_block(block);
            let a = b.block_params(block)[0];
            let two = b.ins().iconst(types::I64, 2);
            let call = b.ins().call(r, &[a, two]);
            let v = b.inst_results(call)[0];
            b.ins().return_(&[v]);
            b.finalize();
        }
        m.define_function(id, &mut ctx).unwrap();
        m.finalize_definitions().unwrap();
        (m, id)
    }

    /// The code of a finalized function.
    fn code_of(m: &ProgpackModule, id: FuncId) -> Vec<u8> {
        let f = m.finalized_function(id).unwrap();
        // SAFETY: finalized code is mapped readable while the module lives.
        unsafe { std::slice::from_raw_parts(f.addr, f.len) }.to_vec()
    }

    #[test]
    fn host_functions_within_reach_are_called_with_rel32() {
        let host = host_add as extern "C" fn(i64, i64) -> i64 as *const u8;
        let has_abs = |code: &[u8], addr: usize| code.windows(8).any(|w| w == addr.to_le_bytes());
        let calls_rel32 = |code: &[u8], start: *const u8, target: usize| {
            (0..code.len().saturating_sub(4)).any(|i| {
                let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().unwrap());
                code[i] == 0xe8
                    && (start as usize + i + 5).wrapping_add(rel as isize as usize) == target
            })
        };
        // In this binary, given to `symbol()`: `call rel32` straight to it.
        let (m, id) = call_import("host_add", Some(host), true);
        let code = code_of(&m, id);
        let start = m.get_finalized_function(id);
        // SAFETY: compiled as `fn(i64) -> i64`.
        let f = unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(start) };
        assert_eq!(f(40), 42);
        assert!(calls_rel32(&code, start, host as usize), "{code:02x?}");
        assert!(!has_abs(&code, host as usize));

        // Opted out: `movabs` of its address, as JITModule does.
        let (m, id) = call_import("host_add", Some(host), false);
        let code = code_of(&m, id);
        assert!(has_abs(&code, host as usize), "{code:02x?}");

        // In a shared library (found by dlsym): absolute unless the library happens to lie within
        // rel32 reach of the whole code range (not called: its arguments would be garbage).
        let strncmp = libc::strncmp as *const () as usize;
        let (m, id) = call_import("strncmp", None, true);
        let code = code_of(&m, id);
        let (base, size) = m.allocator().code_range().unwrap();
        let reach = (1 << 31) - (1 << 20);
        if strncmp.abs_diff(base) < reach && strncmp.abs_diff(base + size) < reach {
            assert!(calls_rel32(&code, m.get_finalized_function(id), strncmp));
        } else {
            assert!(has_abs(&code, strncmp), "{code:02x?}");
        }
    }
}

#[test]
fn large_alignments_are_honoured() {
    let mut m = module();
    let sig = sig_i64(&m, 0);
    let aligns = [64u64, 1024, 4096, 8192, 65536];
    let ids: Vec<FuncId> = aligns
        .iter()
        .map(|a| {
            let id = m
                .declare_function(&format!("aligned{a}"), Linkage::Export, &sig)
                .unwrap();
            m.define_function_bytes(id, *a, RET0, &[]).unwrap();
            id
        })
        .collect();
    m.finalize_definitions().unwrap();
    for (&id, &a) in ids.iter().zip(&aligns) {
        assert_eq!(m.get_finalized_function(id) as u64 % a, 0, "aligned to {a}");
        assert_eq!(call0(&m, id), 0);
    }
}
