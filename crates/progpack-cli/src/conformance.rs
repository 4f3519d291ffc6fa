//! `progpack conformance`: runs bpf_conformance `.data` files on the VM's engines.
//!
//! Prints one line per failure (`FAIL [engine] path: why`), then `N passed, M failed` alone on
//! the last line. A file counts as passed when it passes on every selected engine. Exit status
//! 0 when all passed, 1 when any failed, 2 on usage errors (no files, engine not available).

use std::path::PathBuf;
use std::process::ExitCode;

use progpack_bpf::conformance::{
    collect_files, conformance_vm, interp_engine, jit_engine, run_file, Engine,
};

/// Which engine(s) to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// The interpreter.
    Interp,
    /// The x86-64 JIT.
    Jit,
    /// Both; a file must pass on each.
    Both,
}

/// Arguments of `progpack conformance`.
#[derive(Debug, clap::Args)]
pub struct ConformanceArgs {
    /// Engine(s) to run the tests on.
    #[arg(long, value_enum, default_value_t = EngineChoice::Interp)]
    pub engine: EngineChoice,
    /// `.data` files, or directories searched recursively for them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Runs the command.
pub fn run(args: &ConformanceArgs) -> ExitCode {
    let engines: Vec<(&str, Engine<'_>)> = match args.engine {
        EngineChoice::Interp => vec![("interp", &interp_engine)],
        EngineChoice::Jit => vec![("jit", &jit_engine)],
        EngineChoice::Both => vec![("interp", &interp_engine), ("jit", &jit_engine)],
    };
    let files = match collect_files(&args.paths) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("error: no .data files found");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let vm = conformance_vm();
    let (mut passed, mut failed) = (0usize, 0usize);
    for f in &files {
        let mut ok = true;
        for (name, engine) in &engines {
            if let Err(why) = run_file(&vm, f, *engine) {
                println!("FAIL [{name}] {}: {why}", f.display());
                ok = false;
            }
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
