//! The scenarios of cranelift-jit-demo's toy language (`tests/toy`, vendored) on
//! `ProgpackModule`: each function compiled and finalized on its own, as the demo (and any
//! REPL-style JIT) does; recursion; host functions found by a `dlsym`-style lookup; writable
//! global data; library calls; and what the demo cannot do on `JITModule`: free a function and
//! compile it again.

mod toy;

use cranelift_codegen::ir::{types, AbiParam, InstBuilder, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, Linkage, Module};
use progpack_cranelift::ProgpackBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use toy::jit::{isa, JIT};

/// The demo's own programs (src/bin/toy.rs), verbatim.
const FOO_CODE: &str = r#"
    fn foo(a, b) -> (c) {
        c = if a {
            if b {
                30
            } else {
                40
            }
        } else {
            50
        }
        c = c + 2
    }
"#;

const RECURSIVE_FIB_CODE: &str = r#"
    fn recursive_fib(n) -> (r) {
        r = if n == 0 {
                    0
            } else {
                if n == 1 {
                    1
                } else {
                    recursive_fib(n - 1) + recursive_fib(n - 2)
                }
            }
    }
"#;

const ITERATIVE_FIB_CODE: &str = r#"
    fn iterative_fib(n) -> (r) {
        if n == 0 {
            r = 0
        } else {
            n = n - 1
            a = 0
            r = 1
            while n != 0 {
                t = r
                r = r + a
                a = t
                n = n - 1
            }
        }
    }
"#;

const HELLO_CODE: &str = r#"
fn hello() -> (r) {
    puts(&hello_string)
}
"#;

/// How many times the host function `bump` ran.
static BUMPS: AtomicUsize = AtomicUsize::new(0);

/// A host function the JIT code finds by name through the builder's lookup function: adds 1
/// to the 64-bit counter at `p` (a JIT data object) and returns the new value.
extern "C" fn bump(p: *mut i64) -> i64 {
    BUMPS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the toy programs pass the address of an 8-byte writable data object.
    unsafe {
        *p += 1;
        *p
    }
}

/// A JIT whose module finds `bump` through a lookup function, and everything else (`puts`,
/// `strlen`) through the default `dlsym` lookup.
fn jit() -> JIT {
    let mut b = ProgpackBuilder::with_isa(isa(), default_libcall_names());
    b.symbol_lookup_fn(Box::new(|name| {
        (name == "bump").then_some(bump as extern "C" fn(*mut i64) -> i64 as *const u8)
    }));
    JIT::new(b).unwrap()
}

fn compile0(jit: &mut JIT, code: &str) -> extern "C" fn() -> i64 {
    let p = jit.compile(code).unwrap();
    // SAFETY: toy functions take and return i64s in the default (System V) convention.
    unsafe { std::mem::transmute::<*const u8, extern "C" fn() -> i64>(p) }
}

fn compile1(jit: &mut JIT, code: &str) -> extern "C" fn(i64) -> i64 {
    let p = jit.compile(code).unwrap();
    // SAFETY: as above.
    unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(p) }
}

fn compile2(jit: &mut JIT, code: &str) -> extern "C" fn(i64, i64) -> i64 {
    let p = jit.compile(code).unwrap();
    // SAFETY: as above.
    unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64, i64) -> i64>(p) }
}

#[test]
fn the_demo_programs_each_finalized_on_its_own() {
    let mut jit = jit();
    let foo = compile2(&mut jit, FOO_CODE);
    assert_eq!(foo(1, 0), 42, "the demo's 'the answer is'");
    assert_eq!(foo(1, 1), 32);
    assert_eq!(foo(0, 1), 52);

    let recursive_fib = compile1(&mut jit, RECURSIVE_FIB_CODE);
    let iterative_fib = compile1(&mut jit, ITERATIVE_FIB_CODE);
    let fib = |n: i64| (0..n).fold((0i64, 1i64), |(a, b), _| (b, a + b)).0;
    for n in [0, 1, 2, 10, 20] {
        assert_eq!(recursive_fib(n), fib(n), "recursive_fib({n})");
        assert_eq!(iterative_fib(n), fib(n), "iterative_fib({n})");
    }

    // hello: `puts` found by dlsym, the string a data object defined (and finalized) first.
    jit.create_data("hello_string", b"hello world!\0".to_vec())
        .unwrap();
    let hello = compile0(&mut jit, HELLO_CODE);
    assert!(hello() >= 0, "puts succeeded");

    // Each compile was its own finalize; all four functions share one pack.
    let stats = jit.module().allocator().stats();
    assert_eq!(
        stats.programs, 4,
        "four functions (the string is on the heap)"
    );
    assert_eq!(stats.packs, 1, "{stats:?}");
}

#[test]
fn host_functions_by_lookup_and_writable_global_data() {
    let mut jit = jit();
    let greeting = jit
        .create_data("greeting", b"packed code\0".to_vec())
        .unwrap();
    assert_eq!(greeting, b"packed code\0");
    let counter = jit.create_data("counter", vec![0; 8]).unwrap().as_ptr();
    let count = compile1(
        &mut jit,
        r#"
        fn count(n) -> (r) {
            while n != 0 {
                bump(&counter)
                n = n - 1
            }
            r = strlen(&greeting)
        }
        "#,
    );
    let before = BUMPS.load(Ordering::Relaxed);
    assert_eq!(count(5), 11, "strlen, found by dlsym, of the data object");
    assert_eq!(count(2), 11);
    assert!(BUMPS.load(Ordering::Relaxed) - before >= 7);
    // SAFETY: `counter` is the 8-byte data object, alive as long as the module.
    let value = unsafe { counter.cast::<i64>().read_unaligned() };
    assert_eq!(value, 7, "the JIT code wrote the global through the host");

    // Writable data is on the heap, anywhere: the code holds its absolute address (`Abs8`).
    let id = jit.func_id("count").unwrap();
    let f = jit.module().finalized_function(id).unwrap();
    // SAFETY: the function's code is mapped readable while the module lives.
    let code = unsafe { std::slice::from_raw_parts(f.addr, f.len) };
    let addr = (counter as u64).to_le_bytes();
    assert!(
        code.windows(8).any(|w| w == addr),
        "the code embeds the heap address of `counter`"
    );
}

#[test]
fn recursion_calls_between_functions_and_freeing() {
    let mut jit = jit();
    let answer = compile0(&mut jit, "fn answer() -> (r) {\n r = 1\n}\n");
    assert_eq!(answer(), 1);
    let twice = compile0(&mut jit, "fn twice() -> (r) {\n r = answer() * 2\n}\n");
    assert_eq!(twice(), 2);

    // `twice` calls `answer`: freeing `answer` alone is refused, naming the caller.
    // SAFETY: nothing runs; if the free went through, `answer` would not be called again.
    let refused = unsafe { jit.free("answer") }.unwrap_err();
    assert!(
        refused.contains("still referenced") && refused.contains("twice"),
        "{refused}"
    );
    assert_eq!(twice(), 2, "still callable after the refusal");

    // Callers first, then the callee; both can be compiled again (JITModule cannot).
    // SAFETY: neither is running, and the old pointers are not called again.
    unsafe {
        jit.free("twice").unwrap();
        jit.free("answer").unwrap();
    }
    assert_eq!(jit.module().allocator().stats().programs, 0);
    let answer = compile0(&mut jit, "fn answer() -> (r) {\n r = 21\n}\n");
    let twice = compile0(&mut jit, "fn twice() -> (r) {\n r = answer() * 2\n}\n");
    assert_eq!((answer(), twice()), (21, 42));

    // Recursion refers to itself only: a recursive function can be freed on its own.
    let fib = compile1(&mut jit, RECURSIVE_FIB_CODE);
    assert_eq!(fib(15), 610);
    // SAFETY: not running, not called again.
    unsafe { jit.free("recursive_fib").unwrap() };
}

#[test]
fn library_calls() {
    // memset and memcpy, which the frontend emits as library calls, resolved by name through
    // `default_libcall_names` and dlsym; then `ceil` on a baseline x86-64 (no SSE4.1), where
    // Cranelift calls libm's `ceil`.
    let mut jit = jit();
    let buf = jit.create_data("buf", vec![0; 64]).unwrap().as_ptr() as usize;
    let module = jit.module();
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    let id = module
        .declare_function("fill_and_copy", Linkage::Export, &sig)
        .unwrap();
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let p = b.block_params(block)[0];
        let byte = b.ins().iconst(types::I8, 0x5a);
        let len = b.ins().iconst(ptr, 32);
        let config = module.target_config();
        b.call_memset(config, p, byte, len); // buf[0..32] = 0x5a
        let dst = b.ins().iadd_imm(p, 32);
        b.call_memcpy(config, dst, p, len); // buf[32..64] = buf[0..32]
        b.ins().return_(&[]);
        b.finalize();
    }
    module.define_function(id, &mut ctx).unwrap();
    module.finalize_definitions().unwrap();
    let code = module.get_finalized_function(id);
    // SAFETY: compiled above as `fn(ptr)`; `buf` is the module's 64-byte writable object.
    unsafe {
        let f = std::mem::transmute::<*const u8, extern "C" fn(usize)>(code);
        f(buf);
        assert_eq!(std::slice::from_raw_parts(buf as *const u8, 64), [0x5a; 64]);
    }

    #[cfg(target_arch = "x86_64")]
    {
        use cranelift_codegen::settings::{self, Configurable};
        use progpack_cranelift::ProgpackModule;
        let baseline = cranelift_native::builder_with_options(false).unwrap();
        let mut flags = settings::builder();
        flags.set("is_pic", "false").unwrap();
        let isa = baseline.finish(settings::Flags::new(flags)).unwrap();
        let mut module =
            ProgpackModule::new(ProgpackBuilder::with_isa(isa, default_libcall_names())).unwrap();
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::F64));
        sig.returns.push(AbiParam::new(types::F64));
        let id = module
            .declare_function("ceil_it", Linkage::Export, &sig)
            .unwrap();
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = b.create_block();
            b.append_block_params_for_function_params(block);
            b.switch_to_block(block);
            b.seal_block(block);
            let x = b.block_params(block)[0];
            let r = b.ins().ceil(x);
            b.ins().return_(&[r]);
            b.finalize();
        }
        module.define_function(id, &mut ctx).unwrap();
        let compiled = ctx.compiled_code().unwrap();
        assert!(
            compiled.buffer.relocs().iter().any(|r| matches!(
                r.target,
                cranelift_codegen::FinalizedRelocTarget::ExternalName(
                    cranelift_codegen::ir::ExternalName::LibCall(_)
                )
            )),
            "without SSE4.1, ceil is a library call"
        );
        module.finalize_definitions().unwrap();
        // SAFETY: compiled above as `fn(f64) -> f64`.
        let f = unsafe {
            std::mem::transmute::<*const u8, extern "C" fn(f64) -> f64>(
                module.get_finalized_function(id),
            )
        };
        assert_eq!(f(1.25), 2.0);
        assert_eq!(f(-1.5), -1.0);
    }
}

/// Links libm into this test, so that `dlsym` finds `ceil` (a Rust program that never calls
/// a libm function does not load libm; Cranelift's own test runner does the same).
#[used]
static LIBM_CEIL: unsafe extern "C" fn(f64) -> f64 = libm::ceil;

mod libm {
    #[link(name = "m")]
    unsafe extern "C" {
        pub fn ceil(x: f64) -> f64;
    }
}
