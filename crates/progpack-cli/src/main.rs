//! `progpack`: the command-line front door of progpack.
//!
//! - `progpack demo`: load 100,000 JIT functions into packs and compare with `mmap` + `mprotect`.

use clap::{Parser, Subcommand};

mod baseline;
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
    }
}
