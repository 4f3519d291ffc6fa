//! `progpack bpf`: loads eBPF ELF objects (as `clang -O2 -target bpf -c` writes them).
//!
//! - `progpack bpf run FILE.o [--section NAME] [--mem HEX] [--engine interp|jit] [--repeat N]`
//!   loads the object with the standard helpers, runs one program N times over the same maps
//!   and memory, prints the records its ring buffers received (`ringbuf NAME: HEX`, one line
//!   each), and prints r0 of the last run in hex on the last line. `bpf_trace_printk` lines
//!   go to standard error.
//! - `progpack bpf maps FILE.o` lists the maps the object defines, one per line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use progpack_bpf::jit::shared_allocator;
use progpack_bpf::{Helpers, JitOptions, Vm};

/// Arguments of `progpack bpf`.
#[derive(Debug, clap::Args)]
pub struct BpfArgs {
    #[command(subcommand)]
    command: BpfCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BpfCommand {
    /// Load an object and run one of its programs; prints r0 in hex on the last line.
    Run(RunArgs),
    /// List the maps an object defines.
    Maps(MapsArgs),
}

/// Engine to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EngineChoice {
    /// The interpreter.
    Interp,
    /// The x86-64 JIT.
    Jit,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The object file.
    file: PathBuf,
    /// Program to run: its section or function name (default: the first program).
    #[arg(long)]
    section: Option<String>,
    /// The memory the program runs over, in hex (spaces allowed); none by default.
    #[arg(long, default_value = "")]
    mem: String,
    /// Engine.
    #[arg(long, value_enum, default_value_t = EngineChoice::Interp)]
    engine: EngineChoice,
    /// Runs (over the same maps and memory).
    #[arg(long, default_value_t = 1)]
    repeat: u64,
}

#[derive(Debug, clap::Args)]
struct MapsArgs {
    /// The object file.
    file: PathBuf,
}

/// Runs the command.
pub fn run(args: BpfArgs) -> Result<()> {
    match args.command {
        BpfCommand::Run(a) => run_program(a),
        BpfCommand::Maps(a) => list_maps(a),
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        bail!("--mem has an odd number of hex digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| anyhow!("--mem is not hex: {:?}", &digits[i..i + 2]))
        })
        .collect()
}

fn read_object(vm: &Vm, file: &PathBuf) -> Result<progpack_bpf::Object> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    vm.load_elf(&bytes)
        .with_context(|| format!("loading {}", file.display()))
}

fn run_program(a: RunArgs) -> Result<()> {
    let mut mem = parse_hex(&a.mem)?;
    let mut vm = Vm::new(Helpers::standard());
    vm.env_mut()
        .set_trace_sink(Arc::new(|line: &str| eprintln!("trace: {line}")));
    if a.engine == EngineChoice::Jit {
        vm.enable_jit(shared_allocator()?, JitOptions::default());
    }
    let obj = read_object(&vm, &a.file)?;
    let prog = match &a.section {
        Some(name) => obj.program(name).ok_or_else(|| {
            let names: Vec<String> = obj
                .programs()
                .iter()
                .map(|p| format!("{} ({})", p.name, p.section))
                .collect();
            anyhow!(
                "no program named {name}; the object has: {}",
                names.join(", ")
            )
        })?,
        None => &obj.programs()[0].program,
    };
    let mut r0 = 0;
    for _ in 0..a.repeat.max(1) {
        r0 = match a.engine {
            EngineChoice::Interp => prog.run_interp(&mut mem)?,
            EngineChoice::Jit => prog.run_jit(&mut mem)?,
        };
    }
    for m in obj.maps() {
        m.consume(|rec| {
            let hex: String = rec.iter().map(|b| format!("{b:02x}")).collect();
            println!("ringbuf {}: {hex}", m.name());
        });
    }
    println!("{r0:#x}");
    Ok(())
}

fn list_maps(a: MapsArgs) -> Result<()> {
    let vm = Vm::new(Helpers::standard());
    let obj = read_object(&vm, &a.file)?;
    println!("name type key_size value_size max_entries flags");
    for m in obj.maps() {
        let d = m.def();
        println!(
            "{} {} {} {} {} {:#x}",
            m.name(),
            d.kind.name(),
            d.key_size,
            d.value_size,
            d.max_entries,
            d.flags
        );
    }
    Ok(())
}
