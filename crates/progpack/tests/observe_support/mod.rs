//! Helpers of the tests that check names of JIT code with real tools (perf, gdb): running this
//! test binary again as a child workload, finding the tools, and small x86-64 functions.
//!
//! A test file includes it with `mod observe_support;`. A child is this same binary run with
//! `--exact <child test> --nocapture` and `PROGPACK_TEST_CHILD` set; the child test does nothing
//! when that variable is unset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The variable that makes a child test run its workload.
pub const CHILD: &str = "PROGPACK_TEST_CHILD";

/// The child's workload argument, if this process is a child.
pub fn child_mode() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// A command running `test` of this binary as a child with workload `mode`.
pub fn child(test: &str, mode: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("test binary"));
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        // The child decides its announcements; the parent's environment must not add any.
        .env_remove("PROGPACK_PERF_MAP")
        .env_remove("PROGPACK_JITDUMP")
        .env_remove("PROGPACK_GDB_JIT");
    c
}

/// True if `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Prints why a test did not run (the word the CI log is searched for).
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Runs `cmd`, returning its output; panics with both streams if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value printed by a child as `KEY=value` on its standard output (the test harness may
/// print its own text before it on the same line).
pub fn field(stdout: &[u8], key: &str) -> Option<String> {
    let key = format!("{key}=");
    String::from_utf8_lossy(stdout).lines().find_map(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&key))
            .map(str::to_owned)
    })
}

/// Serializes the tests of one binary that run tools over child processes (two cores: one
/// profiled workload at a time).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh directory under the system's temporary directory (removed by [`TempDir`]'s drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes `<tmp>/progpack-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "progpack-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// x86-64: a function that counts `iterations` down in a loop and returns `id`:
/// `mov ecx, iterations; 1: dec ecx; jnz 1b; mov eax, id; ret`.
pub fn spin(iterations: u32, id: u32) -> Vec<u8> {
    let mut c = vec![0xb9];
    c.extend_from_slice(&iterations.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xb8]);
    c.extend_from_slice(&id.to_le_bytes());
    c.push(0xc3);
    c
}

/// Sums the `Overhead` percentages `perf report --stdio --sort sym` gives symbols whose name
/// satisfies `wanted`; also returns the whole report for messages.
pub fn perf_share(report: &str, wanted: impl Fn(&str) -> bool) -> f64 {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let pct = parts.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let rest: Vec<&str> = parts.collect();
            // `[.] name` (user) or `[k] name` (kernel).
            let at = rest
                .iter()
                .position(|p| p.starts_with('[') && p.ends_with(']'))?;
            let name = rest[at + 1..].join(" ");
            wanted(&name).then_some(pct)
        })
        .sum()
}
