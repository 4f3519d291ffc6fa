//! `progpack`: the command-line tool of the progpack workspace.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod conformance;

/// progpack: packed, W^X executable memory for JIT compilers, and an eBPF VM on it.
#[derive(Debug, Parser)]
#[command(name = "progpack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run bpf_conformance `.data` files (or directories of them) on the eBPF VM.
    Conformance(conformance::ConformanceArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Conformance(args) => conformance::run(&args),
    }
}
