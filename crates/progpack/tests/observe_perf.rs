//! perf names JIT code placed by progpack: `perf record -e cpu-clock` of a program whose hot
//! loop runs in named JIT functions, then `perf report` with the perf map, and `perf inject
//! --jit` + `perf report` with the jitdump, attribute most samples to those names. A second
//! workload frees a function and places another at the same address: the jitdump, whose
//! records are timed, attributes each phase's samples to its own name. A third patches a
//! function live: `perf inject` then holds its code as loaded and as patched.
//!
//! Without `perf` (or where `perf record` is not permitted) the tests print SKIPPED.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod observe_support;

use observe_support::*;
use progpack::{Allocator, Config, Program};
use std::process::Command;
use std::time::{Duration, Instant};

/// Functions of the hot loop.
const HOT: usize = 4;
/// How long the workload keeps the CPU busy in JIT code.
const BUSY: Duration = Duration::from_millis(600);

/// Loads a named spinning function.
fn load_spin(alloc: &Allocator, name: &str, id: u32) -> Program {
    let code = spin(200_000, id);
    let mut d = alloc.draft(code.len(), 16).unwrap().named(name).unwrap();
    d.image_mut().copy_from_slice(&code);
    d.finalize().unwrap()
}

/// Calls each program in turn until `busy` has passed, checking it returns its value.
fn spin_for(programs: &[(&Program, u32)], busy: Duration) {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < busy {
        for &(p, value) in programs {
            // SAFETY: `spin` code of this signature, alive while `p` is.
            let f = unsafe { p.as_fn::<extern "C" fn() -> u32>() };
            assert_eq!(f(), value);
            calls += 1;
        }
    }
    assert!(calls > 0);
}

/// What `patched_spin` returns before and after its live patch.
const OLD_ID: u32 = 0x1111_1111;
const NEW_ID: u32 = 0x2222_2222;

/// The child workloads (run by the tests below; nothing without `PROGPACK_TEST_CHILD`).
#[test]
fn child_workload() {
    let Some(mode) = child_mode() else { return };
    println!("PID={}", std::process::id());
    match mode.as_str() {
        // Announcements come from the environment the parent set.
        "hot" => {
            let alloc = Allocator::new(Config::default()).unwrap();
            let programs: Vec<Program> = (0..HOT)
                .map(|i| load_spin(&alloc, &format!("hot_spin_{i}"), i as u32))
                .collect();
            spin_for(&programs.iter().zip(0..).collect::<Vec<_>>(), BUSY);
        }
        "reuse" => {
            // First fit, no randomization, one shard, the empty pack kept: the second function
            // lands where the first one was.
            let alloc = Allocator::new(
                Config::default()
                    .randomize(false)
                    .shards(1)
                    .reserve_packs(1),
            )
            .unwrap();
            let a = load_spin(&alloc, "phase_one", 0);
            spin_for(&[(&a, 0)], BUSY / 2);
            let at = a.addr();
            drop(a);
            alloc.trim();
            let b = load_spin(&alloc, "phase_two", 0);
            println!("ADDR_A={at:#x}\nADDR_B={:#x}", b.addr());
            assert_eq!(b.addr(), at, "the address was not reused");
            spin_for(&[(&b, 0)], BUSY / 2);
        }
        "patch" => {
            // Runs the old code, patches its `mov eax, imm32` (offset 9) live, runs the new.
            let alloc = Allocator::new(Config::default()).unwrap();
            let mut p = load_spin(&alloc, "patched_spin", OLD_ID);
            spin_for(&[(&p, OLD_ID)], BUSY / 2);
            let mut mov = vec![0xb8];
            mov.extend_from_slice(&NEW_ID.to_le_bytes());
            p.patch(9, &mov).unwrap();
            spin_for(&[(&p, NEW_ID)], BUSY / 2);
        }
        other => panic!("unknown workload {other}"),
    }
}

/// True if `perf record` works here (installed, and permitted by perf_event_paranoid).
fn perf_works(test: &str) -> bool {
    if !have("perf") {
        skipped(test, "perf is not installed");
        return false;
    }
    let dir = TempDir::new("perf-probe");
    let ok = Command::new("perf")
        .arg("--buildid-dir")
        .arg(dir.path())
        .args(["record", "-q", "-e", "cpu-clock", "-o"])
        .arg(dir.path().join("probe.data"))
        .args(["--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skipped(test, "`perf record -e cpu-clock` does not work here");
    }
    ok
}

/// perf's build-id cache for the data file `data`: next to it, in the test's directory (not
/// in `~/.debug`, which perf fills by default with copies of every binary it sees).
fn buildid_dir(data: &std::path::Path) -> std::path::PathBuf {
    data.parent().expect("a directory").join("buildid")
}

/// `perf record ARGS -o DATA -- <this binary's child workload MODE>`, with the child's
/// environment (no announcement unless the caller adds one).
fn perf_record(args: &[&str], data: &std::path::Path, mode: &str) -> Command {
    let template = child("child_workload", mode);
    let mut c = Command::new("perf");
    c.arg("--buildid-dir")
        .arg(buildid_dir(data))
        .args(["record", "-q"])
        .args(args)
        .arg("-o")
        .arg(data)
        .arg("--")
        .arg(template.get_program())
        .args(template.get_args())
        .env_remove("PROGPACK_PERF_MAP")
        .env_remove("PROGPACK_JITDUMP")
        .env_remove("PROGPACK_GDB_JIT")
        .env(CHILD, mode);
    c
}

fn report(data: &std::path::Path) -> String {
    let out = run_ok(
        Command::new("perf")
            .arg("--buildid-dir")
            .arg(buildid_dir(data))
            .args(["report", "--stdio", "--sort", "sym", "-i"])
            .arg(data),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn perf_report_names_samples_through_the_perf_map() {
    if !perf_works("perf_report_names_samples_through_the_perf_map") {
        return;
    }
    let _one = one_at_a_time();
    let dir = TempDir::new("perf-map");
    let data = dir.path().join("perf.data");
    let out = run_ok(perf_record(&["-e", "cpu-clock"], &data, "hot").env("PROGPACK_PERF_MAP", "1"));
    let pid = field(&out.stdout, "PID").expect("the child's pid");
    let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let text = std::fs::read_to_string(&map).expect("the child's perf map");
    let report = report(&data);
    let _ = std::fs::remove_file(&map);
    for i in 0..HOT {
        assert!(text.contains(&format!(" hot_spin_{i}\n")), "{text}");
    }
    let share = perf_share(&report, |n| n.starts_with("hot_spin_"));
    assert!(
        share > 50.0,
        "only {share:.1}% of samples named hot_spin_*:\n{report}"
    );
    eprintln!("perf map: {share:.1}% of samples in hot_spin_*");
}

/// `perf record -k mono` of a child workload with a jitdump in `dir`, then `perf inject --jit`;
/// returns the report of the injected data and the child's output.
fn record_with_jitdump(mode: &str, dir: &TempDir) -> (String, Vec<u8>) {
    let data = dir.path().join("perf.data");
    let injected = dir.path().join("perf.jit.data");
    let out = run_ok(
        perf_record(&["-k", "mono", "-e", "cpu-clock"], &data, mode)
            .env("PROGPACK_JITDUMP", dir.path()),
    );
    let pid = field(&out.stdout, "PID").expect("the child's pid");
    assert!(
        dir.path().join(format!("jit-{pid}.dump")).exists(),
        "no jitdump written"
    );
    run_ok(
        Command::new("perf")
            .arg("--buildid-dir")
            .arg(buildid_dir(&data))
            .args(["inject", "--jit", "-i"])
            .arg(&data)
            .arg("-o")
            .arg(&injected),
    );
    (report(&injected), out.stdout)
}

#[test]
fn perf_inject_names_samples_through_the_jitdump() {
    if !perf_works("perf_inject_names_samples_through_the_jitdump") {
        return;
    }
    let _one = one_at_a_time();
    let dir = TempDir::new("jitdump");
    let (report, _) = record_with_jitdump("hot", &dir);
    let share = perf_share(&report, |n| n.starts_with("hot_spin_"));
    assert!(
        share > 50.0,
        "only {share:.1}% of samples named hot_spin_*:\n{report}"
    );
    eprintln!("jitdump: {share:.1}% of samples in hot_spin_*");
}

#[test]
fn a_reused_address_gets_each_name_in_its_time() {
    if !perf_works("a_reused_address_gets_each_name_in_its_time") {
        return;
    }
    let _one = one_at_a_time();
    let dir = TempDir::new("jitdump-reuse");
    let (report, stdout) = record_with_jitdump("reuse", &dir);
    assert_eq!(field(&stdout, "ADDR_A"), field(&stdout, "ADDR_B"));
    let one = perf_share(&report, |n| n == "phase_one");
    let two = perf_share(&report, |n| n == "phase_two");
    // Each phase is half of the busy time.
    assert!(
        one > 20.0 && two > 20.0,
        "phase_one {one:.1}%, phase_two {two:.1}%:\n{report}"
    );
    eprintln!("one address, two names: phase_one {one:.1}%, phase_two {two:.1}%");
}

/// The `.text` of every ELF file `perf inject --jit` wrote for the jitdump in `dir`
/// (`jitted-<pid>-<index>.so`), in index order.
fn jitted_texts(dir: &std::path::Path) -> Vec<Vec<u8>> {
    use object::{Object, ObjectSection};
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .expect("the jitdump directory")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            let index = name
                .strip_prefix("jitted-")?
                .strip_suffix(".so")?
                .rsplit_once('-')?
                .1
                .parse()
                .ok()?;
            Some((index, path))
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|(_, path)| {
            let data = std::fs::read(path).expect("a jitted ELF file");
            let elf = object::File::parse(&*data).expect("perf writes ELF");
            let text = elf.section_by_name(".text").expect("a .text section");
            text.data().expect(".text is in the file").to_vec()
        })
        .collect()
}

#[test]
fn a_live_patch_gives_perf_the_new_code() {
    if !perf_works("a_live_patch_gives_perf_the_new_code") {
        return;
    }
    let _one = one_at_a_time();
    let dir = TempDir::new("jitdump-patch");
    let (report, _) = record_with_jitdump("patch", &dir);
    assert!(
        perf_share(&report, |n| n == "patched_spin") > 50.0,
        "samples not named patched_spin:\n{report}"
    );
    // perf wrote one ELF file per load record: the program as loaded, then as patched.
    let texts = jitted_texts(dir.path());
    // The patch turned `spin(.., OLD_ID)` into exactly `spin(.., NEW_ID)`.
    let (old, new) = (spin(200_000, OLD_ID), spin(200_000, NEW_ID));
    assert_eq!(texts.len(), 2, "{} jitted files, not 2", texts.len());
    assert!(
        texts[0].starts_with(&old),
        "the first record is not the loaded code"
    );
    assert!(
        texts[1].starts_with(&new),
        "the second record is not the patched code"
    );
}
