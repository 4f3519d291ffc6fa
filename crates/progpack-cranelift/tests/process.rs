//! Process-level guarantees of `ProgpackModule`:
//! - a freed function's bytes are traps, and calling it kills the caller with `SIGTRAP`;
//! - no mapping is ever asked to be writable and executable: under a seccomp filter that fails
//!   any `mmap`/`mprotect`/`pkey_mprotect` asking for both, a whole define, finalize, free and
//!   redefine workload runs;
//! - 100,000 functions finalized one by one load and run, in a handful of mappings (where
//!   `JITModule` needs one or two mappings per function and stops at `vm.max_map_count`).
//!
//! The child-process parts are `#[ignore]`d tests that the parent test runs in a fresh process
//! of this same test binary (`--ignored --exact NAME`), so that a trap or a seccomp filter
//! never touches the harness's own process.

use cranelift_codegen::ir::{types, AbiParam, Function, InstBuilder, UserFuncName};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use progpack_cranelift::{ProgpackBuilder, ProgpackModule};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

/// Compiles `name() -> i64 { value }` into `module` (not finalized).
fn define_const(
    module: &mut ProgpackModule,
    fctx: &mut FunctionBuilderContext,
    ctx: &mut Context,
    name: &str,
    value: i64,
) -> FuncId {
    let mut sig = module.make_signature();
    sig.returns.push(AbiParam::new(types::I64));
    let id = module
        .declare_function(name, Linkage::Export, &sig)
        .unwrap();
    ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        b.seal_block(block);
        let v = b.ins().iconst(types::I64, value);
        b.ins().return_(&[v]);
        b.finalize();
    }
    module.define_function(id, ctx).unwrap();
    module.clear_context(ctx);
    id
}

fn call(module: &ProgpackModule, id: FuncId) -> i64 {
    // SAFETY: every function here is `fn() -> i64` in the default convention.
    let f = unsafe {
        std::mem::transmute::<*const u8, extern "C" fn() -> i64>(module.get_finalized_function(id))
    };
    f()
}

fn new_module() -> ProgpackModule {
    ProgpackModule::new(ProgpackBuilder::new(default_libcall_names()).unwrap()).unwrap()
}

/// Runs the ignored test `name` of this binary in a child process.
fn run_child(name: &str) -> ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--test-threads=1",
            "--nocapture",
        ])
        .status()
        .unwrap()
}

#[test]
fn freed_function_traps() {
    let status = run_child("child_calls_a_freed_function");
    assert_eq!(
        status.signal(),
        Some(libc::SIGTRAP),
        "the child calling freed code must die of SIGTRAP: {status:?}"
    );
}

#[test]
#[ignore = "run in a child process by `freed_function_traps`"]
fn child_calls_a_freed_function() {
    let mut m = new_module();
    let (mut fctx, mut ctx) = (FunctionBuilderContext::new(), m.make_context());
    let keep = define_const(&mut m, &mut fctx, &mut ctx, "keep", 1);
    let gone = define_const(&mut m, &mut fctx, &mut ctx, "gone", 2);
    m.finalize_definitions().unwrap();
    assert_eq!((call(&m, keep), call(&m, gone)), (1, 2));
    let f = m.finalized_function(gone).unwrap();
    let (addr, len) = (f.addr, f.len);
    // SAFETY: `gone` is not running, and its old pointer is only called below, to trap.
    unsafe { m.free_function(gone).unwrap() };
    // SAFETY: pack memory stays mapped readable while the allocator lives.
    let bytes = unsafe { std::slice::from_raw_parts(addr, len) };
    assert!(
        bytes.iter().all(|&b| b == 0xcc),
        "freed code is int3: {bytes:02x?}"
    );
    assert_eq!(call(&m, keep), 1, "the neighbour still runs");
    eprintln!("calling the freed function: this process must die of SIGTRAP");
    // SAFETY: deliberately calling freed code, which is all traps.
    let stale = unsafe { std::mem::transmute::<*const u8, extern "C" fn() -> i64>(addr) };
    let v = stale();
    eprintln!("freed code returned {v}");
    std::process::exit(3);
}

#[test]
fn never_writable_and_executable() {
    let status = run_child("child_under_wx_seccomp_filter");
    assert!(
        status.success(),
        "the workload under the W+X seccomp filter failed: {status:?}"
    );
}

#[test]
#[ignore = "run in a child process by `never_writable_and_executable`"]
fn child_under_wx_seccomp_filter() {
    wx_filter::install();
    // The filter works: a writable+executable mapping is refused.
    // SAFETY: an anonymous mapping request; nothing is touched if it (unexpectedly) succeeds
    // except unmapping it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_eq!(p, libc::MAP_FAILED, "the filter must refuse W+X");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EXDEV)
    );

    // Batched and one-by-one finalizes, frees, redefinitions, calls, drop.
    let mut m = new_module();
    let (mut fctx, mut ctx) = (FunctionBuilderContext::new(), m.make_context());
    let mut ids: Vec<FuncId> = (0..1000)
        .map(|i| define_const(&mut m, &mut fctx, &mut ctx, &format!("b{i}"), i))
        .collect();
    m.finalize_definitions().unwrap();
    for i in 1000..1500 {
        ids.push(define_const(
            &mut m,
            &mut fctx,
            &mut ctx,
            &format!("b{i}"),
            i,
        ));
        m.finalize_definitions().unwrap();
    }
    let third: Vec<FuncId> = ids.iter().copied().step_by(3).collect();
    // SAFETY: none of these is running or called until redefined.
    unsafe { m.free_functions(&third).unwrap() };
    for &id in &third {
        let name = m.declarations().get_function_decl(id).name.clone().unwrap();
        let v = id.as_u32() as i64 + 1_000_000;
        assert_eq!(define_const(&mut m, &mut fctx, &mut ctx, &name, v), id);
    }
    m.finalize_definitions().unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let expected = if i % 3 == 0 {
            id.as_u32() as i64 + 1_000_000
        } else {
            i as i64
        };
        assert_eq!(call(&m, id), expected);
    }
    drop(m);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let wx: Vec<&str> = maps
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.contains("wx"))
        })
        .collect();
    assert!(wx.is_empty(), "W+X mappings: {wx:?}");
}

/// Number of mappings of this process.
fn vmas() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_hundred_thousand_functions_finalized_one_by_one() {
    const N: usize = 100_000;
    let mut m = new_module();
    let (mut fctx, mut ctx) = (FunctionBuilderContext::new(), m.make_context());
    let before = vmas();
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(define_const(
            &mut m,
            &mut fctx,
            &mut ctx,
            &format!("f{i}"),
            i as i64 * 3,
        ));
        m.finalize_definitions().unwrap();
    }
    let added = vmas().saturating_sub(before);
    let packs = m.allocator().stats().packs;
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(call(&m, id), i as i64 * 3, "f{i}");
    }
    println!("{N} functions, {packs} packs, {added} mappings added");
    assert!(
        added <= packs + 16,
        "{added} mappings added for {packs} packs"
    );
}

/// A seccomp filter that fails `mmap`, `mprotect` and `pkey_mprotect` with `EXDEV` when the
/// requested protection has both `PROT_WRITE` and `PROT_EXEC`.
mod wx_filter {
    use libc::{sock_filter, sock_fprog};

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
    /// Offset of `args[2]` (the protection) in `struct seccomp_data` (low 32 bits on a
    /// little-endian machine).
    const ARG2: u32 = 16 + 2 * 8;

    fn stmt(code: u32, k: u32) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }

    pub fn install() {
        let arch = if cfg!(target_arch = "x86_64") {
            AUDIT_ARCH_X86_64
        } else {
            AUDIT_ARCH_AARCH64
        };
        let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
        let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
        let ret = libc::BPF_RET | libc::BPF_K;
        let mut prog = [
            stmt(ld, 4),                                             // 0: arch
            jump(jeq, arch, 0, 8),                                   // 1: other arch -> allow
            stmt(ld, 0),                                             // 2: syscall number
            jump(jeq, libc::SYS_mmap as u32, 2, 0),                  // 3: -> 6
            jump(jeq, libc::SYS_mprotect as u32, 1, 0),              // 4: -> 6
            jump(jeq, libc::SYS_pkey_mprotect as u32, 0, 4),         // 5: else -> allow
            stmt(ld, ARG2),                                          // 6: prot
            stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, wx),   // 7
            jump(jeq, wx, 0, 1),                                     // 8: both -> deny
            stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EXDEV as u32), // 9: deny
            stmt(ret, libc::SECCOMP_RET_ALLOW),                      // 10: allow
        ];
        let fprog = sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(r, 0, "no_new_privs: {}", std::io::Error::last_os_error());
        // SAFETY: `fprog` points at `prog`, a valid filter, for the duration of the call (the
        // kernel copies it).
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const sock_fprog,
            )
        };
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
