//! `progpack`: the command-line front door of progpack.
//!
//! - `progpack demo`: load 100,000 JIT functions into packs and compare with `mmap` + `mprotect`.
//! - `progpack conformance`: run bpf_conformance `.data` files on the eBPF VM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod baseline;
mod conformance;
mod demo;

/// Packed, huge-page-backed, W^X executable memory for JIT compilers.
#[derive(Parser)]
#[command(name = "progpack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load many generated functions into packs, run them all, and compare with mmap+mprotect.
    Demo(demo::Args),
    /// Run bpf_conformance `.data` files (or directories of them) on the eBPF VM.
    Conformance(conformance::ConformanceArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
        Command::Conformance(args) => Ok(conformance::run(&args)),
    }
}
