//! `progpack demo` end to end, small: every step runs (it checks each function's result itself
//! and fails otherwise), every program is freed before the eBPF step, and bad options are an
//! error message and a failing status.

use std::process::Command;

fn progpack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_progpack"))
}

#[test]
fn every_step_runs_and_checks_its_results() {
    let out = progpack()
        .args([
            "demo",
            "--programs",
            "5000",
            "--batch",
            "100",
            "--filters",
            "200",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "checked    all 5000 return the right value",
        "freed      all programs: 1 pack(s) left (the reserve), 0 chunks used",
        "one by one 5000 functions with draft + finalize",
        "every call returned the old or the new value",
        "names      3 named functions: 3 perf map line(s)",
        "program_at(address inside demo::filter_tcp) = demo::filter_tcp",
        "eBPF       200 packet filters decoded, checked, JIT-compiled and placed",
        "both accept",
        "with 134 filters loaded and every third one unloaded",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // 5000 functions in batches of 100: one write per batch at least, not one per function.
    let writes: usize = stdout
        .split("backend writes")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("the load line says how many backend writes");
    assert!(
        (50..=100).contains(&writes),
        "{writes} writes for 50 batches"
    );
}

#[test]
fn bad_options_fail_cleanly() {
    for args in [["--programs", "0"], ["--batch", "0"], ["--programs", "x"]] {
        let out = progpack().arg("demo").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}: no message");
    }
}
