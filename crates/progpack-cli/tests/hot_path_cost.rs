//! The per-program cost written beside the hot path (`crates/progpack/src/span.rs`) stays true:
//! `progpack bench --only count` runs the binary under callgrind and counts the user-space
//! instructions of one load (draft, 64-byte copy, finalize) and one free of a 64-byte program
//! on the persistent dualmap backend. Instruction counts are repeatable (they do not depend on
//! the machine's load), so this is a test, not a timing. Without valgrind it says SKIPPED.

use std::process::Command;

/// The budget the fast path was built to (jit-allocator needs about 260 and 190).
const BUDGET: f64 = 200.0;

#[test]
fn a_load_and_a_free_cost_at_most_200_instructions() {
    if cfg!(debug_assertions) {
        // The budget is for the optimized build (`cargo test --release`, as CI runs it).
        eprintln!("SKIPPED: instruction counts are for an optimized build");
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("SKIPPED: valgrind is not installed");
        return;
    }
    let json = std::env::temp_dir().join(format!("progpack-count-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_progpack"))
        .args([
            "bench",
            "--only",
            "count",
            "--systems",
            "progpack-dualmap",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("progpack runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("json written");
    let _ = std::fs::remove_file(&json);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json rows");
    let per = |unit: &str| {
        rows.iter()
            .find(|r| r["bench"] == "count" && r["unit"] == unit)
            .and_then(|r| r["value"].as_f64())
            .unwrap_or_else(|| panic!("no {unit} row in {text}"))
    };
    let (load, free) = (per("instructions/load"), per("instructions/free"));
    eprintln!("progpack-dualmap: {load:.0} instructions per load, {free:.0} per free");
    // Something was counted (not a run that collected nothing).
    assert!(load > 50.0 && free > 50.0, "{load} {free}");
    assert!(load <= BUDGET, "{load} instructions per load");
    assert!(free <= BUDGET, "{free} instructions per free");
}
