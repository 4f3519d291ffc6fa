//! The `progpack` command-line tool.
#![deny(unsafe_code)]

mod bench;

use clap::{Parser, Subcommand};

/// progpack: packed, huge-page-backed, W^X executable memory for JIT compilers.
#[derive(Debug, Parser)]
#[command(name = "progpack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks progpack side by side with the alternatives (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
    }
}
