//! Runs every vendored bpf_conformance file (tests/conformance/*.data, MIT, see LICENSE there)
//! through each engine; all must pass.

use std::path::{Path, PathBuf};

use progpack_bpf::asm::{assemble, disassemble};
use progpack_bpf::conformance::{
    collect_files, conformance_vm, interp_engine, jit_engine, run_file, Engine, TestCase,
};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn files() -> Vec<PathBuf> {
    let files = collect_files(&[data_dir()]).expect("conformance directory");
    assert_eq!(files.len(), 225, "vendored conformance files");
    files
}

/// Runs all files on `engine` and asserts that every one passes.
fn run_all(name: &str, engine: Engine<'_>) {
    let vm = conformance_vm();
    let mut failures = Vec::new();
    let files = files();
    for f in &files {
        if let Err(why) = run_file(&vm, f, engine) {
            failures.push(format!("{}: {why}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn all_files_pass_in_the_interpreter() {
    run_all("interp", &interp_engine);
}

#[test]
fn all_files_pass_in_the_jit() {
    run_all("jit", &jit_engine);
}

#[test]
fn asm_and_raw_sections_agree() {
    let mut both = 0;
    for f in files() {
        let case = TestCase::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        if let (Some(text), Some(_)) = (&case.asm, &case.raw) {
            both += 1;
            let asm = assemble(text).unwrap();
            assert_eq!(asm, case.slots().unwrap(), "{}", f.display());
        }
    }
    assert!(both >= 1);
}

#[test]
fn every_program_disassembles_and_reassembles() {
    for f in files() {
        let case = TestCase::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let slots = case.slots().unwrap();
        let text = disassemble(&slots);
        assert_eq!(assemble(&text).unwrap(), slots, "{}:\n{text}", f.display());
    }
}

/// Our own negative tests (tests/errors/*.data): every one passes through the runner, and the
/// error we report contains the text of its `-- error` section.
#[test]
fn error_files_fail_with_the_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/errors");
    let files = collect_files(&[dir]).unwrap();
    assert_eq!(files.len(), 25);
    let vm = conformance_vm();
    for f in files {
        run_file(&vm, &f, &interp_engine).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let case = TestCase::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let want = case.error.clone().expect("error section");
        if want.is_empty() {
            continue;
        }
        let got = case
            .slots()
            .map_err(progpack_bpf::Error::from)
            .and_then(|s| vm.load_slots(&s))
            .and_then(|p| interp_engine(&p, &mut case.mem.clone()));
        let msg = got.expect_err(&f.display().to_string()).to_string();
        assert!(
            msg.contains(&want),
            "{}: `{msg}` lacks `{want}`",
            f.display()
        );
    }
}
