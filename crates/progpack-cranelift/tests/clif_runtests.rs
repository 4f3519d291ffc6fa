//! Cranelift's own run tests (`cranelift/filetests/filetests/runtests/*.clif`), compiled
//! through `ProgpackModule` and called through a trampoline of our own; every `; run:` line of
//! every file must pass.
//!
//! The files are vendored in `tests/clif/` (Apache-2.0 WITH LLVM-exception, see the README
//! there). Like Cranelift's `test run`, each file is parsed with `cranelift-reader`; every
//! `target` this host can run (same architecture, every requested ISA feature present) gets a
//! module of its own with the file's settings; all functions of the file are declared
//! `Local` and defined, with one trampoline per signature, then finalized together. A run
//! line calls its function through the trampoline, which loads the arguments from a buffer
//! of 16-byte slots, calls, and stores the results back into the slots.
//!
//! Set `PROGPACK_CLIF_DIR` to run another directory of `.clif` files (for example Cranelift's
//! whole `runtests` directory).

use cranelift_codegen::data_value::DataValue;
use cranelift_codegen::ir::{
    self, AbiParam, ExternalName, Function, InstBuilder, MemFlags, Signature, UserExternalName,
    UserFuncName,
};
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use cranelift_reader::{parse_run_command, parse_test, IsaSpec, ParseOptions, TestFile};
use progpack_cranelift::{ProgpackBuilder, ProgpackModule};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bytes per argument/result slot in the trampoline's buffer (the largest value: 128 bits).
const SLOT: usize = 16;

/// One file's functions, compiled into one module for one target.
struct CompiledFile {
    module: ProgpackModule,
    /// Each function of the file by its name in the file.
    ids: HashMap<UserFuncName, FuncId>,
    /// The trampoline for each signature.
    trampolines: HashMap<Signature, FuncId>,
}

/// What one file did.
#[derive(Default, Debug)]
struct FileReport {
    /// Targets compiled and run.
    targets_run: usize,
    /// Targets skipped: other architecture, or an ISA feature this host lacks.
    targets_skipped: Vec<String>,
    /// Run lines that passed (counted once per target).
    lines_passed: usize,
    /// What failed.
    failures: Vec<String>,
}

#[test]
fn every_run_line_passes() {
    let dir = std::env::var_os("PROGPACK_CLIF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clif"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "clif"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .clif files in {}", dir.display());

    let host = host_isa_flags();
    let (mut files_run, mut lines, mut targets) = (0, 0, 0);
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let report = run_file(&text, &host);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if report.targets_run > 0 {
            files_run += 1;
        } else {
            skipped.push(format!("{name}: {:?}", report.targets_skipped));
        }
        targets += report.targets_run;
        lines += report.lines_passed;
        failures.extend(report.failures.into_iter().map(|f| format!("{name}: {f}")));
    }
    println!(
        "{files_run} of {} files run ({targets} file/target pairs), {lines} run lines passed, {} failures",
        files.len(),
        failures.len()
    );
    for s in &skipped {
        println!("skipped (no target this host runs): {s}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(lines > 0, "no run line was run");
}

/// This host: its ISA, with every feature it has turned on.
struct Host {
    isa: OwnedTargetIsa,
    features: HashMap<&'static str, bool>,
}

fn host_isa_flags() -> Host {
    let isa = cranelift_native::builder_with_options(true)
        .expect("host ISA")
        .finish(settings::Flags::new(settings::builder()))
        .expect("host ISA");
    let features = isa
        .isa_flags()
        .into_iter()
        .filter_map(|v| Some((v.name, v.as_bool()?)))
        .collect();
    Host { isa, features }
}

/// Compiles and runs one file for every target this host can run.
fn run_file(text: &str, host: &Host) -> FileReport {
    let mut report = FileReport::default();
    let text = host_targets_only(text, &host.isa.triple().architecture.to_string());
    let test = match parse_test(&text, ParseOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            report.failures.push(format!("parse: {e}"));
            return report;
        }
    };
    if !test.commands.iter().any(|c| c.command == "run") {
        report.failures.push("no `test run` command".into());
        return report;
    }
    let IsaSpec::Some(isas) = &test.isa_spec else {
        report
            .targets_skipped
            .push("no target for this architecture".into());
        return report;
    };
    for requested in isas {
        if let Err(why) = runnable_here(&**requested, host) {
            report.targets_skipped.push(why);
            continue;
        }
        let isa = match host_isa_like(&**requested) {
            Ok(isa) => isa,
            Err(e) => {
                report.failures.push(format!("{}: {e}", requested.name()));
                continue;
            }
        };
        let target = describe(&**requested);
        let compiled = match compile_file(&test, isa) {
            Ok(c) => c,
            Err(e) => {
                report.failures.push(format!("[{target}] compile: {e}"));
                continue;
            }
        };
        report.targets_run += 1;
        run_lines(&test, &compiled, &target, &mut report);
    }
    report
}

/// The file with `target` lines for other architectures blanked out (this build of Cranelift
/// has only the host's backend, and its parser refuses a `set` line that no later target
/// uses), and with `set` lines after the last host target blanked out too: settings apply to
/// the targets that follow them, so those applied only to other architectures. Line numbers
/// are kept.
fn host_targets_only(text: &str, arch: &str) -> String {
    let is_target = |l: &str| l.trim_start().starts_with("target ");
    let is_host_target = |l: &str| is_target(l) && l.split_whitespace().nth(1) == Some(arch);
    let lines: Vec<&str> = text.lines().collect();
    let last_host_target = lines.iter().rposition(|l| is_host_target(l));
    lines
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let other_target = is_target(l) && !is_host_target(l);
            let late_set =
                l.trim_start().starts_with("set ") && last_host_target.is_some_and(|t| i > t);
            if other_target || late_set {
                "; (for another architecture)"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A target name with its ISA features, for messages.
fn describe(isa: &dyn TargetIsa) -> String {
    let on: Vec<&str> = isa
        .isa_flags()
        .iter()
        .filter(|v| v.as_bool() == Some(true))
        .map(|v| v.name)
        .collect();
    format!("{} {}", isa.triple().architecture, on.join(" "))
}

/// Ok if this host can run code for `requested`: same architecture, and every feature it
/// turns on is present here.
fn runnable_here(requested: &dyn TargetIsa, host: &Host) -> Result<(), String> {
    if requested.triple().architecture != host.isa.triple().architecture {
        return Err(format!(
            "{} (not this architecture)",
            requested.triple().architecture
        ));
    }
    if requested.flags().enable_pinned_reg() {
        return Err("pinned register (Cranelift's runner refuses it too)".into());
    }
    for v in requested.isa_flags() {
        if v.as_bool() == Some(true) && host.features.get(v.name) != Some(&true) {
            return Err(format!("{} (host lacks {})", describe(requested), v.name));
        }
    }
    Ok(())
}

/// A host ISA with the requested target's settings and ISA features (the parsed ISA has no
/// operating system, so its calling conventions are not the host's).
fn host_isa_like(requested: &dyn TargetIsa) -> Result<OwnedTargetIsa, String> {
    let mut builder = cranelift_native::builder_with_options(false)?;
    for v in requested.isa_flags() {
        builder
            .set(v.name, &v.value_string())
            .map_err(|e| e.to_string())?;
    }
    builder
        .finish(requested.flags().clone())
        .map_err(|e| e.to_string())
}

/// Declares every function of the file, defines it (with references to other functions of the
/// file renamed to module ids), adds one trampoline per signature, and finalizes.
fn compile_file(test: &TestFile, isa: OwnedTargetIsa) -> Result<CompiledFile, String> {
    #[allow(unused_mut)] // x86-64 adds a symbol
    let mut builder = ProgpackBuilder::with_isa(isa, default_libcall_names());
    #[cfg(target_arch = "x86_64")]
    builder.symbol("__cranelift_x86_pshufb", x86::pshufb as *const u8);
    let mut module = ProgpackModule::new(builder).map_err(|e| e.to_string())?;
    let mut ids = HashMap::new();
    for (func, _) in &test.functions {
        let id = module
            .declare_function(&func.name.to_string(), Linkage::Local, &func.signature)
            .map_err(|e| e.to_string())?;
        if ids.insert(func.name.clone(), id).is_some() {
            return Err(format!("{} defined twice", func.name));
        }
    }
    let mut ctx = module.make_context();
    for (func, _) in &test.functions {
        ctx.func = renamed(func, &ids)?;
        module
            .define_function(ids[&func.name], &mut ctx)
            .map_err(|e| format!("defining {}: {e:?}", func.name))?;
        module.clear_context(&mut ctx);
    }
    let mut trampolines = HashMap::new();
    for (func, _) in &test.functions {
        if trampolines.contains_key(&func.signature) {
            continue;
        }
        let id = define_trampoline(&mut module, &func.signature, &mut ctx)?;
        trampolines.insert(func.signature.clone(), id);
    }
    module
        .finalize_definitions()
        .map_err(|e| format!("finalize: {e}"))?;
    Ok(CompiledFile {
        module,
        ids,
        trampolines,
    })
}

/// `func` with its own name and every reference to a function of the file turned into the
/// module's `UserExternalName` for it (namespace 0, index = `FuncId`), which is how a
/// `Module` links functions.
fn renamed(func: &Function, ids: &HashMap<UserFuncName, FuncId>) -> Result<Function, String> {
    let mut func = func.clone();
    let module_name = |id: FuncId| UserExternalName::new(0, id.as_u32());
    func.name = UserFuncName::User(module_name(ids[&func.name]));
    let mut renames = Vec::new();
    for (ext_ref, ext) in func.dfg.ext_funcs.iter() {
        let old = match &ext.name {
            ExternalName::TestCase(tc) => UserFuncName::Testcase(tc.clone()),
            ExternalName::User(r) => UserFuncName::User(func.params.user_named_funcs()[*r].clone()),
            _ => continue, // libcalls and known symbols keep their names
        };
        let id = ids
            .get(&old)
            .ok_or_else(|| format!("{} calls {old}, which the file does not define", func.name))?;
        renames.push((ext_ref, module_name(*id)));
    }
    for (ext_ref, name) in renames {
        let r = func.params.ensure_user_func_name(name);
        func.dfg.ext_funcs[ext_ref].name = ExternalName::User(r);
    }
    Ok(func)
}

/// Defines `fn(callee: *const u8, slots: *mut u8)`: loads the arguments of `sig` from the
/// slots, calls `callee` with them, stores the results into the slots.
fn define_trampoline(
    module: &mut ProgpackModule,
    sig: &Signature,
    ctx: &mut Context,
) -> Result<FuncId, String> {
    let ptr = module.isa().pointer_type();
    let mut tsig = module.make_signature();
    tsig.params.push(AbiParam::new(ptr));
    tsig.params.push(AbiParam::new(ptr));
    let id = module
        .declare_anonymous_function(&tsig)
        .map_err(|e| e.to_string())?;
    ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), tsig);
    {
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let (callee, slots) = (b.block_params(block)[0], b.block_params(block)[1]);
        let flags = |ty: ir::Type| {
            let mut f = MemFlags::trusted();
            if ty.is_vector() {
                // DataValue keeps vectors little-endian in memory.
                f.set_endianness(ir::Endianness::Little);
            }
            f
        };
        let args: Vec<_> = sig
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                b.ins()
                    .load(p.value_type, flags(p.value_type), slots, (i * SLOT) as i32)
            })
            .collect();
        let callee_sig = b.import_signature(sig.clone());
        let call = b.ins().call_indirect(callee_sig, callee, &args);
        let results = b.inst_results(call).to_vec();
        for (i, (v, r)) in results.iter().zip(&sig.returns).enumerate() {
            b.ins()
                .store(flags(r.value_type), *v, slots, (i * SLOT) as i32);
        }
        b.ins().return_(&[]);
        b.finalize();
    }
    module
        .define_function(id, ctx)
        .map_err(|e| format!("trampoline: {e:?}"))?;
    module.clear_context(ctx);
    Ok(id)
}

/// Runs every `; run:` line of every function; counts passes, records failures.
fn run_lines(test: &TestFile, compiled: &CompiledFile, target: &str, report: &mut FileReport) {
    for (func, details) in &test.functions {
        for comment in &details.comments {
            let command = match parse_run_command(comment.text, &func.signature) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    report
                        .failures
                        .push(format!("[{target}] {}: {e}", comment.text));
                    continue;
                }
            };
            let outcome = command.run(|_, args| Ok(call(compiled, func, args)));
            match outcome {
                Ok(()) => report.lines_passed += 1,
                Err(e) => report
                    .failures
                    .push(format!("[{target}] {}: {e}", comment.text.trim())),
            }
        }
    }
}

/// Calls the compiled `func` with `args` through its signature's trampoline.
fn call(compiled: &CompiledFile, func: &Function, args: &[DataValue]) -> Vec<DataValue> {
    let sig = &func.signature;
    let mut slots = vec![0u128; sig.params.len().max(sig.returns.len()).max(1)];
    for ((arg, slot), param) in args.iter().zip(&mut slots).zip(&sig.params) {
        assert!(
            arg.ty() == param.value_type || arg.is_vector(),
            "argument type"
        );
        // SAFETY: each slot is 16 bytes, enough for any DataValue, and aligned for u128.
        unsafe { arg.write_value_to(slot) };
    }
    let m = &compiled.module;
    let target = m.get_finalized_function(compiled.ids[&func.name]);
    let trampoline = m.get_finalized_function(compiled.trampolines[sig]);
    // SAFETY: the trampoline was compiled with this signature (default call conv, two
    // pointers); it calls `target` with the signature it was compiled for, reading and writing
    // only `slots`, which is large enough for every argument and result.
    unsafe {
        let t: extern "C" fn(*const u8, *mut u128) = std::mem::transmute(trampoline);
        t(target, slots.as_mut_ptr());
    }
    slots
        .iter()
        .zip(&sig.returns)
        // SAFETY: the trampoline stored a value of each return type into its slot.
        .map(|(slot, r)| unsafe { DataValue::read_value_from(slot, r.value_type) })
        .collect()
}

/// The C math functions Cranelift calls for float rounding and fused multiply-add when the ISA
/// lacks the instructions (the libcalls `ceilf`, `floor`, `fma`, ...). Naming them here links
/// libm into this test, so `dlsym` finds them (Cranelift's own runner does the same).
#[used]
static LIBM: [unsafe extern "C" fn(f64) -> f64; 4] =
    [libm::ceil, libm::floor, libm::trunc, libm::nearbyint];

mod libm {
    #[link(name = "m")]
    unsafe extern "C" {
        pub fn ceil(x: f64) -> f64;
        pub fn floor(x: f64) -> f64;
        pub fn trunc(x: f64) -> f64;
        pub fn nearbyint(x: f64) -> f64;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The helper Cranelift calls for `pshufb` when SSSE3 is off (as in its own runner).
    use std::arch::x86_64::__m128i;

    /// `pshufb a, b`: byte `i` of the result is `a[b[i] & 15]`, or 0 if bit 7 of `b[i]` is set.
    #[allow(improper_ctypes_definitions)] // called by Cranelift code with xmm arguments
    pub extern "C" fn pshufb(a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: __m128i and [u8; 16] have the same size, and every bit pattern is valid for
        // both.
        let to_bytes = |v| unsafe { std::mem::transmute::<__m128i, [u8; 16]>(v) };
        let (a, b) = (to_bytes(a), to_bytes(b));
        let r: [u8; 16] = std::array::from_fn(|i| {
            if b[i] & 0x80 != 0 {
                0
            } else {
                a[(b[i] & 15) as usize]
            }
        });
        // SAFETY: as above.
        unsafe { std::mem::transmute::<[u8; 16], __m128i>(r) }
    }
}
