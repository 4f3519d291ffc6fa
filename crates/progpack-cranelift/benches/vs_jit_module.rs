//! `ProgpackModule` against cranelift-jit's `JITModule`, in one binary, on the same machine
//! code: N tiny functions (`f_i(x) = x * k_i + i`), compiled once with Cranelift, then loaded
//! into each module with `define_function_bytes`, so that load time is the module's own work.
//! Compile time is reported on its own line.
//!
//! Two finalize modes: `batched` (one `finalize_definitions` at the end) and `one by one` (one
//! after each function, as REPL-style JITs and cranelift-jit-demo do).
//!
//! - Load, mappings, memory: each (module, mode) loads in a fresh child process of this binary,
//!   three times, alternating; medians. Mappings are lines of `/proc/self/maps`, memory is
//!   `VmRSS`, both added by the load.
//! - Churn (ProgpackModule only: `JITModule` cannot free): in the same child, free a random
//!   third of the functions, define them again in the same mode, and call everything.
//! - Random-order calls: one child loads every layout (both modules in both modes,
//!   ProgpackModule after churn, and ProgpackModule with progpack's general 64-byte chunks) and
//!   measures them in turns, 41 times; each measurement calls every
//!   function once per round, in a shuffled order, for 5 rounds. The median and the best turn
//!   of each layout are shown: all layouts see the same machine load, and the best turn is the
//!   least disturbed by other processes sharing the caches.
//! - The same calls with larger functions (`--body 8`: eight xor-rotate steps more, about
//!   190 bytes each, 2 MB of code), where the chunk rounding matters less and the huge page
//!   more.
//! - 100,000 functions finalized one by one into each module: `JITModule` runs into
//!   `vm.max_map_count`; the child reports how far it got.
//!
//! Run: `cargo bench -p progpack-cranelift --bench vs_jit_module [-- --functions N]` (about
//! 15 s on an idle 2-core machine).
// The Module API's error is Cranelift's `ModuleError` (136 bytes).
#![allow(clippy::result_large_err)]

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module, ModuleResult};
use progpack_cranelift::{ProgpackBuilder, ProgpackModule};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Repeats of each load child; the table shows the median.
const LOAD_REPEATS: usize = 3;
/// Turns of call measurements per layout.
const CALL_TURNS: usize = 41;
/// Rounds per call measurement (each calls every function once).
const CALL_ROUNDS: usize = 5;
/// Functions in the `vm.max_map_count` run.
const MANY: usize = 100_000;
/// Extra xor-rotate steps per function (`--body K`): 0 for the tiny functions of the main
/// table, more for the larger-function call row.
static BODY: AtomicUsize = AtomicUsize::new(0);
/// Body steps of the larger-function row: about 200 bytes of code per function.
const LARGER_BODY: usize = 8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let n: usize = arg("--functions").map_or(10_000, |v| v.parse().unwrap());
    BODY.store(
        arg("--body").map_or(0, |v| v.parse().unwrap()),
        Ordering::Relaxed,
    );
    match arg("--child").as_deref() {
        Some("load") => child_load(&arg("--engine").unwrap(), &arg("--mode").unwrap(), n),
        Some("calls") => child_calls(n),
        Some("many") => child_many(&arg("--engine").unwrap(), n),
        Some(other) => panic!("child {other}"),
        None => parent(n),
    }
}

// ---------------------------------------------------------------- the functions

fn isa() -> OwnedTargetIsa {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").unwrap();
    flags.set("is_pic", "false").unwrap();
    flags.set("use_colocated_libcalls", "false").unwrap();
    cranelift_native::builder()
        .unwrap()
        .finish(settings::Flags::new(flags))
        .unwrap()
}

fn signature(isa: &OwnedTargetIsa) -> Signature {
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Machine code of one function, ready for `define_function_bytes`.
struct Code {
    bytes: Vec<u8>,
    align: u64,
}

fn constant(i: usize) -> i64 {
    (i as i64).wrapping_mul(2_654_435_761) | 1
}

/// What `f_i(3)` returns.
fn expected(i: usize) -> i64 {
    let mut y = constant(i).wrapping_mul(3).wrapping_add(i as i64);
    for j in 0..BODY.load(Ordering::Relaxed) {
        y = (y ^ constant(i).wrapping_add(j as i64)).rotate_left(j as u32 % 63 + 1);
    }
    y
}

/// `f_i(x) = x * k_i + i`, then `--body` xor-rotate steps, compiled.
fn compile(isa: &OwnedTargetIsa, i: usize, fctx: &mut FunctionBuilderContext) -> Code {
    let mut func = Function::with_name_signature(UserFuncName::user(0, i as u32), signature(isa));
    {
        let mut b = FunctionBuilder::new(&mut func, fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let x = b.block_params(block)[0];
        let k = b.ins().iconst(types::I64, constant(i));
        let y = b.ins().imul(x, k);
        let mut y = b.ins().iadd_imm(y, i as i64);
        for j in 0..BODY.load(Ordering::Relaxed) {
            let c = constant(i).wrapping_add(j as i64);
            let t = b.ins().bxor_imm(y, c);
            y = b.ins().rotl_imm(t, i64::from(j as u32 % 63 + 1));
        }
        b.ins().return_(&[y]);
        b.finalize();
    }
    let mut ctx = Context::for_function(func);
    let compiled = ctx.compile(&**isa, &mut ControlPlane::default()).unwrap();
    assert!(compiled.buffer.relocs().is_empty(), "leaf functions");
    Code {
        bytes: compiled.code_buffer().to_vec(),
        align: u64::from(compiled.buffer.alignment),
    }
}

fn compile_all(isa: &OwnedTargetIsa, n: usize) -> Vec<Code> {
    let mut fctx = FunctionBuilderContext::new();
    (0..n).map(|i| compile(isa, i, &mut fctx)).collect()
}

// ---------------------------------------------------------------- the two modules

/// The two modules behind one face (their finalize and lookup methods are inherent).
enum Engine {
    Jit(JITModule),
    Progpack(ProgpackModule),
}

impl Engine {
    fn new(name: &str, isa: OwnedTargetIsa) -> Engine {
        match name {
            "jit" => Engine::Jit(JITModule::new(JITBuilder::with_isa(
                isa,
                default_libcall_names(),
            ))),
            "progpack" => Engine::Progpack(
                ProgpackModule::new(ProgpackBuilder::with_isa(isa, default_libcall_names()))
                    .unwrap(),
            ),
            // progpack's general chunk size (the module's default is 32 bytes): looser
            // packing of tiny functions.
            "progpack-64" => {
                let mut b = ProgpackBuilder::with_isa(isa, default_libcall_names());
                b.allocator_config(
                    progpack::Config::default()
                        .code_range(progpack::CodeRange::near_this_binary())
                        .chunk_size(64),
                );
                Engine::Progpack(ProgpackModule::new(b).unwrap())
            }
            _ => panic!("engine {name}"),
        }
    }

    fn module(&mut self) -> &mut dyn Module {
        match self {
            Engine::Jit(m) => m,
            Engine::Progpack(m) => m,
        }
    }

    fn declare(&mut self, i: usize, sig: &Signature) -> FuncId {
        self.module()
            .declare_function(&format!("f{i}"), Linkage::Export, sig)
            .unwrap()
    }

    fn define(&mut self, id: FuncId, code: &Code) -> ModuleResult<()> {
        self.module()
            .define_function_bytes(id, code.align, &code.bytes, &[])
    }

    fn finalize(&mut self) -> ModuleResult<()> {
        match self {
            Engine::Jit(m) => m.finalize_definitions(),
            Engine::Progpack(m) => m.finalize_definitions(),
        }
    }

    fn addr(&self, id: FuncId) -> *const u8 {
        match self {
            Engine::Jit(m) => m.get_finalized_function(id),
            Engine::Progpack(m) => m.get_finalized_function(id),
        }
    }
}

/// Loads `codes` (declared as `f0..`), finalizing once at the end or after each.
fn load(engine: &mut Engine, sig: &Signature, codes: &[Code], one_by_one: bool) -> Vec<FuncId> {
    let mut ids = Vec::with_capacity(codes.len());
    for (i, code) in codes.iter().enumerate() {
        let id = engine.declare(i, sig);
        engine.define(id, code).unwrap();
        if one_by_one {
            engine.finalize().unwrap();
        }
        ids.push(id);
    }
    engine.finalize().unwrap();
    ids
}

/// Frees a random third of the functions and defines them again (finalizing after each, or
/// once). Returns (free time, redefine time).
fn churn(
    m: &mut ProgpackModule,
    ids: &[FuncId],
    codes: &[Code],
    one_by_one: bool,
) -> (Duration, Duration) {
    let third: Vec<FuncId> = shuffled(ids.len(), 7)[..ids.len() / 3]
        .iter()
        .map(|&i| ids[i])
        .collect();
    let t = Instant::now();
    // SAFETY: nothing runs; the freed functions are defined again before any call.
    unsafe { m.free_functions(&third).unwrap() };
    let freed = t.elapsed();
    let t = Instant::now();
    for &id in &third {
        let code = &codes[id.as_u32() as usize];
        m.define_function_bytes(id, code.align, &code.bytes, &[])
            .unwrap();
        if one_by_one {
            m.finalize_definitions().unwrap();
        }
    }
    m.finalize_definitions().unwrap();
    (freed, t.elapsed())
}

// ---------------------------------------------------------------- measuring

fn vmas() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A fixed pseudo-random permutation of `0..n`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    v
}

/// The functions of a loaded module as callable pointers, in a shuffled order; each checked.
fn callables(engine: &Engine, ids: &[FuncId]) -> Vec<extern "C" fn(i64) -> i64> {
    shuffled(ids.len(), 0x9e37_79b9_7f4a_7c15)
        .into_iter()
        .map(|i| {
            // SAFETY: every function was compiled as `fn(i64) -> i64` in the default
            // convention, and stays loaded while `engine` lives.
            let f = unsafe {
                std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(engine.addr(ids[i]))
            };
            assert_eq!(f(3), expected(i), "f{i}");
            f
        })
        .collect()
}

/// Nanoseconds per call, calling every function once per round.
fn time_calls(fns: &[extern "C" fn(i64) -> i64]) -> f64 {
    let start = Instant::now();
    let mut acc = 0i64;
    for _ in 0..CALL_ROUNDS {
        for &f in fns {
            acc = acc.wrapping_add(black_box(f)(black_box(3)));
        }
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / (CALL_ROUNDS * fns.len()) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------- the children

/// Loads N functions into one module in one mode; prints `key=value` lines.
fn child_load(engine_name: &str, mode: &str, n: usize) {
    let isa = isa();
    let sig = signature(&isa);
    let t = Instant::now();
    let codes = compile_all(&isa, n);
    println!("compile_ms={}", ms(t.elapsed()));
    let one_by_one = mode == "one-by-one";
    let mut engine = Engine::new(engine_name, isa);
    let (vmas0, rss0) = (vmas(), rss_kib());
    let t = Instant::now();
    let ids = load(&mut engine, &sig, &codes, one_by_one);
    println!("load_ms={}", ms(t.elapsed()));
    println!("vmas_added={}", vmas() - vmas0);
    println!("rss_added_kib={}", rss_kib().saturating_sub(rss0));
    let _ = callables(&engine, &ids);
    if let Engine::Progpack(m) = &mut engine {
        println!("packs={}", m.allocator().stats().packs);
        let (freed, redefined) = churn(m, &ids, &codes, one_by_one);
        println!("churn_free_ms={}", ms(freed));
        println!("churn_redefine_ms={}", ms(redefined));
        println!("churn_vmas={}", vmas() - vmas0);
        println!("churn_rss_kib={}", rss_kib().saturating_sub(rss0));
        let _ = callables(&engine, &ids);
    }
}

/// Loads every layout into this one process and times random-order calls on each in turns.
fn child_calls(n: usize) {
    let isa = isa();
    let sig = signature(&isa);
    let codes = compile_all(&isa, n);
    println!(
        "code_bytes={}",
        codes.iter().map(|c| c.bytes.len()).sum::<usize>() / n.max(1)
    );
    let layouts = [
        ("jit", "batched", false),
        ("jit", "one-by-one", false),
        ("progpack", "batched", false),
        ("progpack", "one-by-one", false),
        ("progpack", "one-by-one", true),
        ("progpack-64", "batched", false),
        ("progpack-64", "one-by-one", false),
    ];
    let mut loaded = Vec::new();
    for &(e, mode, churned) in &layouts {
        let mut engine = Engine::new(e, isa.clone());
        let ids = load(&mut engine, &sig, &codes, mode == "one-by-one");
        if let (true, Engine::Progpack(m)) = (churned, &mut engine) {
            churn(m, &ids, &codes, true);
        }
        let fns = callables(&engine, &ids);
        if let Engine::Progpack(m) = &engine {
            let key = if churned { "churned" } else { mode };
            let h = m.allocator().huge_pages().map_or(f64::NAN, |h| h.ratio());
            println!("huge.{e}.{key}={h}");
        }
        loaded.push((engine, fns));
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); layouts.len()];
    for _ in 0..CALL_TURNS {
        for (i, (_, fns)) in loaded.iter().enumerate() {
            ns[i].push(time_calls(fns));
        }
    }
    for ((e, mode, churned), v) in layouts.iter().zip(ns) {
        let key = if *churned { "churned" } else { mode };
        let best = v.iter().copied().fold(f64::INFINITY, f64::min);
        println!("call_ns.{e}.{key}={}", median(v));
        println!("call_best_ns.{e}.{key}={best}");
    }
}

/// Loads up to `n` functions one by one, printing progress, until done or an error.
fn child_many(engine_name: &str, n: usize) {
    let isa = isa();
    let sig = signature(&isa);
    let codes = compile_all(&isa, 1000);
    let mut engine = Engine::new(engine_name, isa);
    let vmas0 = vmas();
    let t = Instant::now();
    let mut stdout = std::io::stdout();
    for i in 0..n {
        let id = engine.declare(i, &sig);
        let done = engine
            .define(id, &codes[i % codes.len()])
            .and_then(|()| engine.finalize());
        if let Err(e) = done {
            let _ = writeln!(stdout, "loaded={i}\nerror={e}");
            return;
        }
        if i % 1000 == 999 {
            let _ = writeln!(stdout, "loaded={}", i + 1);
            let _ = stdout.flush();
        }
    }
    println!("loaded={n}");
    println!("load_ms={}", ms(t.elapsed()));
    println!("vmas_added={}", vmas() - vmas0);
}

// ---------------------------------------------------------------- the parent

/// Runs a child of this binary; returns its `key=value` lines (the last value of a key wins).
fn run_child(args: &[&str]) -> BTreeMap<String, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .output()
        .unwrap();
    let mut kv = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once('=') {
            kv.insert(k.to_string(), v.to_string());
        }
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty());
        kv.entry("error".into())
            .or_insert(format!("{} ({})", last.unwrap_or(""), out.status));
    }
    kv
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The load averages (1, 5, 15 minutes), for the record.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn parent(n: usize) {
    let ns = n.to_string();
    let started = Instant::now();
    let load_at_start = loadavg();
    println!("# ProgpackModule vs JITModule, {n} functions\n");
    let configs = [
        ("jit", "batched"),
        ("progpack", "batched"),
        ("jit", "one-by-one"),
        ("progpack", "one-by-one"),
    ];
    let mut runs: BTreeMap<(&str, &str), Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for _ in 0..LOAD_REPEATS {
        for &(e, m) in &configs {
            let r = run_child(&[
                "--child",
                "load",
                "--engine",
                e,
                "--mode",
                m,
                "--functions",
                &ns,
            ]);
            if let Some(err) = r.get("error") {
                panic!("{e} {m}: {err}");
            }
            runs.entry((e, m)).or_default().push(r);
        }
    }
    let calls = run_child(&["--child", "calls", "--functions", &ns]);
    if let Some(err) = calls.get("error") {
        panic!("calls: {err}");
    }
    let body = LARGER_BODY.to_string();
    let larger = run_child(&["--child", "calls", "--functions", &ns, "--body", &body]);
    if let Some(err) = larger.get("error") {
        panic!("calls, larger functions: {err}");
    }
    let get = |e: &str, m: &str, key: &str| -> f64 {
        median(
            runs[&(e, m)]
                .iter()
                .map(|r| r.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let call_stat = |stat: &str, e: &str, key: &str| -> f64 {
        calls
            .get(&format!("{stat}.{e}.{key}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let call = |e: &str, key: &str| call_stat("call_ns", e, key);
    let larger_call = |stat: &str, e: &str, key: &str| -> f64 {
        larger
            .get(&format!("{stat}.{e}.{key}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let best = |e: &str, key: &str| call_stat("call_best_ns", e, key);
    println!(
        "Compile (Cranelift, the same code for both modules, not in the load times): {:.0} ms.\n",
        get("jit", "batched", "compile_ms")
    );
    println!("| module | finalize | load ms | VMAs added | RSS added | random call ns (median / best) | churn: free a third ms | churn: define it again ms | after churn: VMAs, RSS, random call ns |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(e, m) in &configs {
        let (name, packs, churned) = if e == "jit" {
            (
                "JITModule",
                String::new(),
                "cannot free | – | –".to_string(),
            )
        } else {
            let after_call = if m == "one-by-one" {
                format!("{:.1} / {:.1}", call(e, "churned"), best(e, "churned"))
            } else {
                "–".into()
            };
            (
                "ProgpackModule",
                format!(" ({:.0} pack)", get(e, m, "packs")),
                format!(
                    "{:.1} | {:.1} | {:.0}, {:.1} MiB, {after_call}",
                    get(e, m, "churn_free_ms"),
                    get(e, m, "churn_redefine_ms"),
                    get(e, m, "churn_vmas"),
                    get(e, m, "churn_rss_kib") / 1024.0,
                ),
            )
        };
        println!(
            "| {name} | {m} | {:.1} | {:.0}{packs} | {:.1} MiB | {:.1} / {:.1} | {churned} |",
            get(e, m, "load_ms"),
            get(e, m, "vmas_added"),
            get(e, m, "rss_added_kib") / 1024.0,
            call(e, m),
            best(e, m),
        );
    }
    for m in ["batched", "one-by-one"] {
        println!(
            "| ProgpackModule, 64-byte chunks | {m} | | | | {:.1} / {:.1} | | | |",
            call("progpack-64", m),
            best("progpack-64", m),
        );
    }

    println!(
        "\nRandom-order calls of larger functions ({LARGER_BODY} more xor-rotate steps, about {} bytes each), ns (median / best):\n",
        larger.get("code_bytes").map_or("?", |s| s.as_str())
    );
    println!("| JITModule batched | JITModule one by one | ProgpackModule batched | ProgpackModule one by one | ProgpackModule, 64-byte chunks, batched |");
    println!("|---|---|---|---|---|");
    let cell = |e: &str, m: &str| {
        format!(
            "{:.1} / {:.1}",
            larger_call("call_ns", e, m),
            larger_call("call_best_ns", e, m)
        )
    };
    println!(
        "| {} | {} | {} | {} | {} |",
        cell("jit", "batched"),
        cell("jit", "one-by-one"),
        cell("progpack", "batched"),
        cell("progpack", "one-by-one"),
        cell("progpack-64", "batched"),
    );

    println!("\n{MANY} functions finalized one by one:\n");
    let mut many = BTreeMap::new();
    for e in ["jit", "progpack"] {
        let r = run_child(&[
            "--child",
            "many",
            "--engine",
            e,
            "--functions",
            &MANY.to_string(),
        ]);
        let name = if e == "jit" {
            "JITModule"
        } else {
            "ProgpackModule"
        };
        let loaded = r.get("loaded").cloned().unwrap_or_else(|| "0".into());
        let outcome = match r.get("error") {
            Some(err) => format!("stopped: {err}"),
            None => format!(
                "loaded in {:.0} ms, {} VMAs added",
                r.get("load_ms")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN),
                r.get("vmas_added").map_or("?", |s| s.as_str())
            ),
        };
        println!("- {name}: {loaded} functions; {outcome}");
        many.insert(e, loaded.parse::<usize>().unwrap_or(0));
    }

    println!("\n| goal | measured | |\n|---|---|---|");
    let goal = |text: &str, ok: bool, detail: String| {
        println!(
            "| {text} | {detail} | {} |",
            if ok { "met" } else { "MISSED" }
        );
    };
    let (pv, pp) = (
        get("progpack", "one-by-one", "vmas_added"),
        get("progpack", "one-by-one", "packs"),
    );
    goal(
        "one by one: VMAs added <= packs + 16",
        pv <= pp + 16.0,
        format!("{pv:.0} VMAs, {pp:.0} pack"),
    );
    let (pr, jr) = (
        get("progpack", "one-by-one", "rss_added_kib"),
        get("jit", "one-by-one", "rss_added_kib"),
    );
    goal(
        "one by one: RSS added <= 1/10 of JITModule's",
        pr * 10.0 <= jr,
        format!(
            "{:.1} MiB vs {:.1} MiB ({:.1}x less)",
            pr / 1024.0,
            jr / 1024.0,
            jr / pr
        ),
    );
    for stat in ["median", "best"] {
        let pick = |e: &str, m: &str| {
            if stat == "median" {
                call(e, m)
            } else {
                best(e, m)
            }
        };
        let jc = pick("jit", "batched");
        for m in ["batched", "one-by-one"] {
            let pc = pick("progpack", m);
            goal(
                &format!(
                    "random calls ({stat}), ProgpackModule {m}, at least as fast as JITModule batched"
                ),
                pc <= jc,
                format!("{pc:.1} ns vs {jc:.1} ns"),
            );
        }
    }
    goal(
        &format!("{MANY} functions one by one (JITModule stops at vm.max_map_count)"),
        many["progpack"] == MANY,
        format!(
            "ProgpackModule {}, JITModule {}",
            many["progpack"], many["jit"]
        ),
    );
    println!(
        "\nMachine: load average {load_at_start} at start, {} at end; {:.0} s.",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
}
