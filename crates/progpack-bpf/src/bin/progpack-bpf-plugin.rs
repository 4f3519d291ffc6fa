//! A bpf_conformance plugin: lets the upstream `bpf_conformance_runner` drive this VM.
//!
//! Convention (as in rbpf's `examples/rbpf_plugin.rs`): the program arrives as hex bytes on
//! standard input, the memory as hex bytes in the first argument (whitespace anywhere is
//! ignored; the argument may be missing or empty). On success r0 is printed in hex on standard
//! output and the exit status is 0; on failure the error is printed on standard output and the
//! status is 1 (2 for bad usage or input). Options after the memory: `--interp` (default),
//! `--jit`, `--program HEX` (program from the command line instead of stdin), `--help`.
//! Helper 5 is the conformance suite's unwind helper.
#![deny(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use progpack_bpf::conformance::{conformance_vm, interp_engine, jit_engine};

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks_exact(2)
        .map(|p| {
            let s = std::str::from_utf8(p).map_err(|_| "non-ASCII input".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("bad hex byte `{s}`"))
        })
        .collect()
}

const USAGE: &str =
    "usage: progpack-bpf-plugin [MEMORY_HEX] [--interp|--jit] [--program HEX] < PROGRAM_HEX";

fn usage_error(msg: &str) -> ExitCode {
    println!("{msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mem_text = args.next().unwrap_or_default();
    let mut program_text = None;
    let mut jit = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "" | "--interp" => {}
            "--jit" => jit = true,
            "--program" => match args.next() {
                Some(p) => program_text = Some(p),
                None => return usage_error("missing argument to --program"),
            },
            "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument `{other}`")),
        }
    }
    if mem_text == "--help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let program_text = match program_text {
        Some(p) => p,
        None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                return usage_error(&format!("reading stdin: {e}"));
            }
            s
        }
    };
    let (code, mut mem) = match (unhex(&program_text), unhex(&mem_text)) {
        (Ok(c), Ok(m)) => (c, m),
        (Err(e), _) => return usage_error(&format!("program: {e}")),
        (_, Err(e)) => return usage_error(&format!("memory: {e}")),
    };
    let vm = conformance_vm();
    let engine = if jit { jit_engine } else { interp_engine };
    match vm.load(&code).and_then(|p| engine(&p, &mut mem)) {
        Ok(r0) => {
            println!("{r0:x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(1)
        }
    }
}
