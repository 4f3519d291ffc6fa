//! `progpack conformance` end to end: output format and exit status.

use std::path::Path;
use std::process::Command;

fn progpack(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_progpack"))
        .args(args)
        .output()
        .expect("run progpack");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn vendored_suite_passes_on_the_interpreter() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../progpack-bpf/tests/conformance");
    let (code, out) = progpack(&["conformance", "--engine", "interp", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("225 passed, 0 failed"));
}

#[test]
fn vendored_suite_passes_on_the_jit_and_on_both() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../progpack-bpf/tests/conformance");
    for engine in ["jit", "both"] {
        let (code, out) = progpack(&["conformance", "--engine", engine, dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{engine}: {out}");
        assert_eq!(out.lines().last(), Some("225 passed, 0 failed"), "{engine}");
    }
}

#[test]
fn failures_are_listed_and_fail_the_command() {
    let tmp = std::env::temp_dir().join(format!("progpack-conf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let good = tmp.join("good.data");
    let wrong = tmp.join("wrong.data");
    let unknown = tmp.join("unknown.data");
    std::fs::write(&good, "-- asm\nmov %r0, 2\nexit\n-- result\n0x2\n").unwrap();
    std::fs::write(&wrong, "-- asm\nmov %r0, 1\nexit\n-- result\n0x2\n").unwrap();
    std::fs::write(&unknown, "-- asm\nexit\n-- result\n0\n-- frobnicate\n").unwrap();
    let (code, out) = progpack(&["conformance", tmp.to_str().unwrap()]);
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("FAIL [interp]") && lines[0].contains("unknown.data"));
    assert!(lines[0].contains("unknown section"));
    assert!(lines[1].contains("wrong.data") && lines[1].contains("expected 0x2, got 0x1"));
    assert_eq!(lines[2], "1 passed, 2 failed");
}

#[test]
fn missing_paths_are_usage_errors() {
    let (code, _) = progpack(&["conformance", "/nonexistent/x.data"]);
    assert_eq!(code, 2);
}
