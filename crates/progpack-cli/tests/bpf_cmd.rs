//! `progpack bpf run` and `progpack bpf maps` end to end on the clang-built test objects.

use std::path::PathBuf;
use std::process::Command;

fn object(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../progpack-bpf/tests/elf")
        .join(format!("{name}.o"))
        .to_string_lossy()
        .into_owned()
}

fn progpack(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_progpack"))
        .args(args)
        .output()
        .expect("run progpack");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn run_prints_r0_last_and_maps_persist_across_repeats() {
    let globals = object("globals");
    for engine in ["interp", "jit"] {
        // Three runs over 3 bytes: total = 1000 + 3 * 3 * 3, runs = 3.
        let (code, out, err) = progpack(&[
            "bpf", "run", &globals, "--mem", "00 01 02", "--engine", engine, "--repeat", "3",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().last(), Some("0x406"), "{engine}: {out}");
    }
    // A packet of protocol 6 counted twice.
    let mut pkt = "00".repeat(34);
    pkt.replace_range(46..48, "06");
    let (code, out, _) = progpack(&[
        "bpf",
        "run",
        &object("counter"),
        "--mem",
        &pkt,
        "--repeat",
        "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().last(), Some("0x2"));
    // No memory: r1 = r2 = 0, the call chain returns 1.
    let (code, out, _) = progpack(&["bpf", "run", &object("calls"), "--section", "socket"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "0x1");
}

#[test]
fn run_prints_ring_buffer_records() {
    let (code, out, err) = progpack(&["bpf", "run", &object("ringbuf"), "--mem", "01020304"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "ringbuf events: 0400000001020304",
            "ringbuf events: 72656b72616d0000",
            "0x2"
        ]
    );
}

#[test]
fn maps_lists_the_definitions() {
    let (code, out, _) = progpack(&["bpf", "maps", &object("tailcall")]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "name type key_size value_size max_entries flags",
            "handlers prog_array 4 4 4 0x0"
        ]
    );
    let (_, out, _) = progpack(&["bpf", "maps", &object("percpu")]);
    assert!(
        out.contains("bytes_per_cpu percpu_array 4 8 1 0x0"),
        "{out}"
    );
}

#[test]
fn errors_are_reported() {
    let (code, _, err) = progpack(&["bpf", "run", &object("counter"), "--section", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no program named nope"), "{err}");
    let (code, _, err) = progpack(&["bpf", "run", &object("counter"), "--mem", "0g"]);
    assert_eq!(code, 1);
    assert!(err.contains("not hex"), "{err}");
    let not_elf = std::env::temp_dir().join(format!("progpack-bpf-cmd-{}.o", std::process::id()));
    std::fs::write(&not_elf, b"not an object").unwrap();
    let (code, _, err) = progpack(&["bpf", "maps", not_elf.to_str().unwrap()]);
    std::fs::remove_file(&not_elf).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("not a valid ELF object"), "{err}");
}
