//! `progpack`: the command-line tool. Each subcommand lives in its own module of the
//! `progpack_cli` library or of this binary.
#![deny(unsafe_code)]

use clap::{Parser, Subcommand};

/// Packed, huge-page-backed, W^X executable memory for JIT compilers: tools.
#[derive(Debug, Parser)]
#[command(name = "progpack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workload and draw its packs: used, free and hole chunks, huge pages (PNG, SVG or
    /// a terminal map).
    Map(progpack_cli::map::MapArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Map(args) => progpack_cli::map::run(&args),
    }
}
