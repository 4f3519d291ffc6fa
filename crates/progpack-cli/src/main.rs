//! `progpack`: the command-line tool of the progpack workspace. Each subcommand lives in its
//! own module of this binary, or of the `progpack_cli` library when other programs can use it.
//!
//! - `progpack demo`: load 100,000 JIT functions into packs, run them, compare with `mmap` + `mprotect`.
//! - `progpack conformance`: run bpf_conformance `.data` files on the eBPF VM.
//! - `progpack bench`: progpack side by side with the alternatives.
//! - `progpack map`: a picture of the packs of a workload.
//! - `progpack bpf`: load eBPF ELF objects from clang, run their programs, list their maps.
//! - `progpack stress`: a mixed multi-threaded load with W^X watched, results and leaks checked.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bpf;
mod conformance;
mod demo;
mod stress;

/// progpack: packed, W^X executable memory for JIT compilers, and an eBPF VM on it.
#[derive(Debug, Parser)]
#[command(name = "progpack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load many generated functions into packs, run them all, and compare with mmap+mprotect.
    Demo(demo::Args),
    /// Run bpf_conformance `.data` files (or directories of them) on the eBPF VM.
    Conformance(conformance::ConformanceArgs),
    /// Benchmark progpack side by side with the alternatives (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Run a workload and draw its packs: used, free and hole chunks, huge pages (PNG, SVG or
    /// a terminal map).
    Map(progpack_cli::map::MapArgs),
    /// Mixed load from many threads while a watcher scans for W+X mappings; non-zero exit on
    /// any W^X violation, wrong result or leaked mapping (see RELIABILITY.md).
    Stress(stress::StressArgs),
    /// Load an eBPF ELF object (clang -target bpf): run a program, list its maps.
    Bpf(bpf::BpfArgs),
}

/// Prints an error with its causes and turns it into a failing exit status.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("progpack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => report(demo::run(args)),
        Command::Conformance(args) => conformance::run(&args),
        Command::Bench(args) => report(bench::run(args)),
        Command::Map(args) => report(progpack_cli::map::run(&args)),
        Command::Bpf(args) => report(bpf::run(args)),
        Command::Stress(args) => stress::run(args).unwrap_or_else(|e| {
            eprintln!("progpack: {e:#}");
            ExitCode::FAILURE
        }),
    }
}
