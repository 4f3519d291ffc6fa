//! gdb names JIT code placed by progpack through the GDB JIT interface: with a breakpoint in a
//! host function called from a named JIT function, `bt` shows the JIT function's name; after
//! the program is freed, gdb no longer knows the name.
//!
//! Without gdb the test prints SKIPPED.
#![cfg(all(target_os = "linux", target_arch = "x86_64", feature = "gdb-jit"))]

mod observe_support;

use observe_support::*;
use progpack::{Allocator, CodeRange, Config};
use std::process::Command;

/// Called from the JIT function with the JIT function's own address.
#[no_mangle]
#[inline(never)]
pub extern "C" fn progpack_test_host_probe(jit_addr: usize) -> usize {
    std::hint::black_box(jit_addr) + 1
}

/// Called after the JIT function was freed, with its old address.
#[no_mangle]
#[inline(never)]
pub extern "C" fn progpack_test_after_free(jit_addr: usize) -> usize {
    std::hint::black_box(jit_addr) + 2
}

/// x86-64: `push rbp; mov rbp, rsp; mov rdi, self; movabs rax, host; call rax; pop rbp; ret`.
fn caller(self_addr: usize, host: usize) -> Vec<u8> {
    let mut c = vec![0x55, 0x48, 0x89, 0xe5, 0x48, 0xbf];
    c.extend_from_slice(&(self_addr as u64).to_le_bytes());
    c.extend_from_slice(&[0x48, 0xb8]);
    c.extend_from_slice(&(host as u64).to_le_bytes());
    c.extend_from_slice(&[0xff, 0xd0, 0x5d, 0xc3]);
    c
}

/// The workload gdb runs (nothing without `PROGPACK_TEST_CHILD`): the GDB JIT interface is on
/// through `PROGPACK_GDB_JIT=1`, set by the test.
#[test]
fn child_workload() {
    if child_mode().is_none() {
        return;
    }
    let alloc =
        Allocator::new(Config::default().code_range(CodeRange::near_this_binary())).unwrap();
    assert!(
        alloc.observe().get_gdb(),
        "PROGPACK_GDB_JIT=1 turns the interface on"
    );
    let host = progpack_test_host_probe as extern "C" fn(usize) -> usize as usize;
    let len = caller(0, 0).len();
    let mut d = alloc
        .draft(len, 16)
        .unwrap()
        .named("jit_gdb_caller")
        .unwrap();
    let at = d.exec_addr();
    d.image_mut().copy_from_slice(&caller(at, host));
    let p = d.finalize().unwrap();
    // SAFETY: the code above, an `extern "C" fn() -> usize` returning the host's result.
    let f = unsafe { p.as_fn::<extern "C" fn() -> usize>() };
    assert_eq!(f(), at + 1);
    drop(p);
    assert_eq!(progpack_test_after_free(at), at + 2);
}

#[test]
fn gdb_backtrace_names_the_jit_frame_until_it_is_freed() {
    if !have("gdb") {
        skipped(
            "gdb_backtrace_names_the_jit_frame_until_it_is_freed",
            "gdb is not installed",
        );
        return;
    }
    let template = child("child_workload", "gdb");
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"])
        .args(["-ex", "set pagination off"])
        .args(["-ex", "set debuginfod enabled off"])
        .args(["-ex", "break progpack_test_host_probe"])
        .args(["-ex", "break progpack_test_after_free"])
        .args(["-ex", "run"])
        .args(["-ex", "echo ==BT==\\n"])
        .args(["-ex", "bt"])
        .args(["-ex", "echo ==LIVE==\\n"])
        .args(["-ex", "info symbol $rdi"])
        .args(["-ex", "continue"])
        .args(["-ex", "echo ==FREED==\\n"])
        .args(["-ex", "info symbol $rdi"])
        .args(["-ex", "kill"])
        .arg("--args")
        .arg(template.get_program())
        .args(template.get_args())
        .env(CHILD, "gdb")
        .env("PROGPACK_GDB_JIT", "1")
        .env_remove("PROGPACK_PERF_MAP")
        .env_remove("PROGPACK_JITDUMP");
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let section = |from: &str, to: &str| -> String {
        let start = text
            .find(from)
            .unwrap_or_else(|| panic!("no {from} in:\n{text}"));
        let rest = &text[start + from.len()..];
        rest[..rest.find(to).unwrap_or(rest.len())].to_string()
    };
    let bt = section("==BT==", "==LIVE==");
    // The frame that called the probe (frame #1 in an optimized build; a debug build shows
    // `black_box` as a frame of its own above the probe).
    let frames: Vec<&str> = bt.lines().filter(|l| l.starts_with('#')).collect();
    let probe = frames
        .iter()
        .position(|l| l.contains("progpack_test_host_probe"))
        .unwrap_or_else(|| panic!("no probe frame in:\n{bt}"));
    let caller = frames
        .get(probe + 1)
        .unwrap_or_else(|| panic!("no frame above the probe in:\n{bt}"));
    assert!(
        caller.contains("jit_gdb_caller"),
        "the probe's caller is not named:\n{bt}"
    );
    let live = section("==LIVE==", "==FREED==");
    assert!(
        live.contains("jit_gdb_caller"),
        "gdb does not know the live program:\n{live}"
    );
    let freed = section("==FREED==", "\n[Inferior");
    assert!(
        freed.contains("No symbol matches"),
        "gdb still knows the freed program:\n{freed}"
    );
    eprintln!("gdb bt:{bt}");
}
