//! The C API tested from C: each `tests/c/*.c` program is compiled with the system C compiler
//! (`$CC`, else `cc`) against `include/progpack.h` and this crate's static library, run, and
//! must exit 0 after printing its count of passed checks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built for this test run: `target/<profile>/deps/`, beside this
/// test's executable (cargo copies it up to `target/<profile>/` only for `cargo build`).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let lib = deps.join("libprogpack_capi.a");
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

/// Compiles `tests/c/<name>.c` and returns the executable's path.
pub fn compile(name: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c-{name}"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compiled = Command::new(&cc)
        .args([
            "-std=gnu11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c").join(format!("{name}.c")))
        .arg(static_lib())
        .args(["-ldl", "-lm", "-o"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        compiled.status.success(),
        "compiling {name}.c failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    out
}

fn run(name: &str) {
    let exe = compile(name);
    let output = Command::new(&exe).output().expect("run the C test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("{name}: ")) && stdout.contains(" passed, 0 failed"),
        "{name} printed no result line:\n{stdout}"
    );
    print!("{stdout}");
}

#[test]
fn handle_misuse_is_a_status_code() {
    run("handles");
}

#[test]
fn threads_share_an_allocator() {
    run("threads");
}
