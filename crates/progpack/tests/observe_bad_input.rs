//! Bad input to names and announcements: names that would break a line or a string, a perf
//! map on a full disk or in an unwritable directory (including `/tmp` itself, in a mount
//! namespace, where the system allows one), unwind information that does not fit. Each is
//! a typed error or one warning, never a failed finalize, a panic or a broken file.
#![cfg(target_os = "linux")]

mod observe_support;

use observe_support::*;
use progpack::{Allocator, Config, Error, Observe, Program};
use std::path::Path;
use std::process::Command;

fn quiet_alloc(observe: Observe) -> Allocator {
    Allocator::new(Config::default().observe(observe.ignore_env())).unwrap()
}

fn load(alloc: &Allocator, name: &[u8]) -> progpack::Result<Program> {
    let mut d = alloc.draft(16, 1)?.named(name)?;
    d.image_mut()[0] = 0xc3;
    d.finalize()
}

#[test]
fn names_never_break_a_line_of_the_perf_map() {
    let dir = TempDir::new("bad-names");
    let alloc = quiet_alloc(Observe::default().perf_map_in(dir.path()));
    let nasty: Vec<Vec<u8>> = vec![
        b"plain".to_vec(),
        b"new\nline".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"nul\0inside".to_vec(),
        b"\xff\xfe not utf-8 \xc3".to_vec(),
        "line\u{2028}separator \u{85} next-line".as_bytes().to_vec(),
        b"tab\tand space".to_vec(),
        b"\\x0a already escaped".to_vec(),
        vec![b'\n'; progpack::MAX_NAME],
    ];
    let programs: Vec<Program> = nasty.iter().map(|n| load(&alloc, n).unwrap()).collect();
    let path = alloc.observe_outputs().perf_map.unwrap();
    let text = std::fs::read(&path).unwrap();
    let text = String::from_utf8(text).expect("the map is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), programs.len(), "one line per program:\n{text}");
    for (line, p) in lines.iter().zip(&programs) {
        let mut parts = line.splitn(3, ' ');
        let start = usize::from_str_radix(parts.next().unwrap(), 16).unwrap();
        let size = usize::from_str_radix(parts.next().unwrap(), 16).unwrap();
        let name = parts.next().unwrap();
        assert_eq!((start, size), (p.addr(), p.len()));
        assert!(
            !name.chars().any(|c| c.is_control()),
            "a control character in {name:?}"
        );
    }
    assert_eq!(lines[1].split(' ').nth(2), Some("new\\x0aline"));
    assert!(lines[4].ends_with("\\xff\\xfe not utf-8 \\xc3"));
    // The name itself is kept as given.
    assert_eq!(programs[1].name(), "new\nline");
    assert_eq!(
        alloc.program_at(programs[3].addr()).unwrap().name_bytes(),
        b"nul\0inside"
    );
    let long = alloc.program_at(programs[8].addr()).unwrap();
    assert!(long.is_truncated() && long.name_bytes().len() == 120);
}

#[test]
fn bad_names_and_unwind_information_are_typed_errors() {
    let alloc = quiet_alloc(Observe::default());
    let mut d = alloc.draft(64, 1).unwrap();
    assert!(matches!(
        d.set_name(b""),
        Err(Error::BadName { len: 0, .. })
    ));
    assert!(matches!(
        d.set_eh_frame(&[1, 2, 3]),
        Err(Error::BadUnwindInfo { .. })
    ));
    assert!(matches!(
        d.set_eh_frame(&[8, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]),
        Err(Error::BadUnwindInfo { .. })
    ));
    drop(d);
    assert_eq!(alloc.stats().allocations, 0);
    alloc.check_invariants().unwrap();
}

/// The child side of the tests below: finalizes programs with the perf map and jitdump where
/// the environment says (the test set them to places that cannot be written).
#[test]
fn child_workload() {
    let Some(mode) = child_mode() else { return };
    if mode == "full" {
        // `<dir>/perf-<pid>.map` is `/dev/full`: every write fails with ENOSPC.
        let dir = Path::new(&std::env::var("PROGPACK_PERF_MAP").unwrap()).to_path_buf();
        std::os::unix::fs::symlink(
            "/dev/full",
            dir.join(format!("perf-{}.map", std::process::id())),
        )
        .unwrap();
    }
    let alloc = Allocator::new(Config::default()).unwrap();
    let programs: Vec<Program> = (0..20)
        .map(|i| load(&alloc, format!("f{i}").as_bytes()).unwrap())
        .collect();
    let mut b = alloc.batch();
    b.push_named(8, 1, "in_a_batch").unwrap().image[0] = 0xc3;
    let batch = b.finalize().unwrap();
    // SAFETY: `ret`.
    let f = unsafe { programs[0].as_fn::<extern "C" fn()>() };
    if cfg!(target_arch = "x86_64") {
        f();
    }
    println!(
        "\nFINALIZED={} DISABLED={}",
        programs.len() + batch.len(),
        alloc.observe_outputs().disabled
    );
}

/// Runs the child with `env`, expects it to finalize everything, and returns its stderr.
fn run_child(cmd: &mut Command) -> String {
    let out = run_ok(cmd);
    assert_eq!(field(&out.stdout, "FINALIZED").as_deref(), Some("21"));
    assert_eq!(field(&out.stdout, "DISABLED").as_deref(), Some("true"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn warnings(stderr: &str, what: &str) -> usize {
    stderr.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_full_disk_disables_the_perf_map_with_one_warning() {
    let dir = TempDir::new("full-disk");
    let stderr = run_child(child("child_workload", "full").env("PROGPACK_PERF_MAP", dir.path()));
    assert_eq!(warnings(&stderr, "perf map disabled"), 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

#[test]
fn unwritable_directories_disable_the_announcements_with_one_warning_each() {
    let stderr = run_child(
        child("child_workload", "unwritable")
            .env("PROGPACK_PERF_MAP", "/proc/progpack-no-such-dir")
            .env("PROGPACK_JITDUMP", "/proc/progpack-no-such-dir"),
    );
    assert_eq!(warnings(&stderr, "perf map disabled"), 1, "{stderr}");
    assert_eq!(warnings(&stderr, "jitdump disabled"), 1, "{stderr}");
}

/// Runs the child in a mount namespace whose `/tmp` is a tmpfs mounted with `options`, after
/// `prepare` (a shell command) ran there. `None` if the system does not allow it. The test
/// binary is opened before the mount and run through `/proc/self/fd`, so a checkout under
/// `/tmp` (which the new tmpfs hides) works too.
fn in_own_tmp(options: &str, prepare: &str) -> Option<Command> {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /tmp"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let template = child("child_workload", "tmp");
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        &format!(
            "exec 3<\"$1\" && shift && mount -t tmpfs -o {options} tmpfs /tmp && {prepare} \
             && exec /proc/self/fd/3 \"$@\""
        ),
        "sh",
    ])
    .arg(template.get_program())
    .args(template.get_args())
    .env(CHILD, "tmp")
    .env("PROGPACK_PERF_MAP", "1")
    .env_remove("PROGPACK_JITDUMP")
    .env_remove("PROGPACK_GDB_JIT");
    Some(c)
}

#[test]
fn a_full_or_read_only_tmp_disables_the_perf_map_with_one_warning() {
    let test = "a_full_or_read_only_tmp_disables_the_perf_map_with_one_warning";
    // A full /tmp: the map is created, its first write fails.
    let Some(mut full) = in_own_tmp(
        "size=8k",
        "(dd if=/dev/zero of=/tmp/fill bs=4096 count=4 2>/dev/null || true)",
    ) else {
        return skipped(
            test,
            "no mount namespace with a tmpfs of our own here (unshare -m)",
        );
    };
    let stderr = run_child(&mut full);
    assert_eq!(warnings(&stderr, "perf map disabled"), 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // A read-only /tmp: the map cannot be created.
    let mut ro = in_own_tmp("ro", "true").expect("as above");
    let stderr = run_child(&mut ro);
    assert_eq!(warnings(&stderr, "perf map disabled"), 1, "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}
