//! Drives the `progpack-bpf-plugin` binary the way the upstream bpf_conformance runner does:
//! program hex on stdin, memory hex (bytes separated by two spaces) as the first argument,
//! plugin options (here empty) as the second, r0 read back in hex from stdout.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use progpack_bpf::conformance::{collect_files, TestCase};
use progpack_bpf::insn::encode_slots;

fn upstream_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}  ")).collect()
}

fn plugin(program: &[u8], mem: &[u8]) -> (i32, String) {
    plugin_text(&upstream_hex(program), &upstream_hex(mem))
}

fn plugin_text(program: &str, mem: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_progpack-bpf-plugin"))
        .arg(mem)
        .arg("")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    writeln!(child.stdin.take().unwrap(), "{program}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

#[test]
fn plugin_passes_every_vendored_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let files = collect_files(&[dir]).unwrap();
    assert_eq!(files.len(), 225);
    for f in files {
        let case = TestCase::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let program = encode_slots(&case.slots().unwrap());
        let (code, out) = plugin(&program, &case.mem);
        assert_eq!(code, 0, "{}: {out}", f.display());
        let r0 = u64::from_str_radix(&out, 16).unwrap();
        assert_eq!(Some(r0), case.result, "{}", f.display());
    }
}

#[test]
fn plugin_reports_errors_with_a_failing_status() {
    // ldxdw %r0, [%r1]; exit -- with no memory, the load is out of bounds.
    let program = progpack_bpf::asm::assemble("ldxdw %r0, [%r1]\nexit").unwrap();
    let (code, out) = plugin(&encode_slots(&program), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("out of bounds"), "{out}");
    // A program the checker rejects (falls off the end).
    let (code, out) = plugin(&[0xb7, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("falls off"), "{out}");
    // An empty program is rejected by the checker.
    let (code, out) = plugin(b"", b"");
    assert_eq!((code, out.as_str()), (1, "empty program"));
    // Malformed hex is a usage error.
    let (code, out) = plugin_text("95 00 00 00 00 00 00 0g", "");
    assert_eq!(code, 2, "{out}");
    let (code, out) = plugin_text("950000000000000000", "0");
    assert_eq!(code, 2, "{out}");
}

#[test]
fn plugin_runs_the_jit_with_the_jit_option() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    for f in collect_files(&[dir]).unwrap() {
        let case = TestCase::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let program = encode_slots(&case.slots().unwrap());
        let mut child = Command::new(env!("CARGO_BIN_EXE_progpack-bpf-plugin"))
            .arg(upstream_hex(&case.mem))
            .arg("--jit")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        writeln!(child.stdin.take().unwrap(), "{}", upstream_hex(&program)).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{}: {text}", f.display());
        let r0 = u64::from_str_radix(text.trim(), 16).unwrap();
        assert_eq!(Some(r0), case.result, "{}", f.display());
    }
}
