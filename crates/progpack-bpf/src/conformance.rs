//! The bpf_conformance `.data` test format, and a runner that checks an engine against it.
//!
//! A file is a sequence of sections, each opened by a line `-- NAME`; lines starting with `#`
//! outside `-- asm`/`-- c` are comments, blank lines are skipped. Sections:
//!
//! | section | meaning |
//! |---|---|
//! | `asm` | the program in [`crate::asm`] syntax |
//! | `raw` | the program as 64-bit slot values (`0x...` or decimal, little-endian slots); used instead of `asm` when both are present |
//! | `mem` | the memory region, hex bytes |
//! | `result` | the expected r0 (hex `0x...` or decimal) |
//! | `error`, `error pattern` | the program must fail (at load or run time); the text is another runtime's message and is not compared. An *empty* `error` section accepts either a failure or the `result` |
//! | `c` | the C source of the program: ignored |
//! | `no register offset`, `test_jit` | notes for other runners: ignored (`no register offset` is recorded) |
//! | `map` | maps for `lddw` map loads: not supported, reported as an error |
//!
//! Any other section, text outside a section, a duplicated section, or a file with no
//! program or no expectation is a [`DataError`]: nothing is silently skipped.

use std::path::{Path, PathBuf};

use crate::insn::Insn;
use crate::{BpfProgram, Helpers, Vm};

/// Why a `.data` file could not be parsed. `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A `-- NAME` section this runner does not know.
    #[error("line {line}: unknown section `-- {name}`")]
    UnknownSection {
        /// Line number.
        line: usize,
        /// Section name.
        name: String,
    },
    /// A section this runner knows but cannot honour (`-- map`).
    #[error("line {line}: unsupported section `-- {name}`")]
    UnsupportedSection {
        /// Line number.
        line: usize,
        /// Section name.
        name: String,
    },
    /// A section appears twice.
    #[error("line {line}: duplicate section `-- {name}`")]
    DuplicateSection {
        /// Line number.
        line: usize,
        /// Section name.
        name: String,
    },
    /// Text before the first section that is not a comment.
    #[error("line {line}: text outside any section")]
    OutsideSection {
        /// Line number.
        line: usize,
    },
    /// A token of `-- mem` or `-- raw`, or the `-- result` value, is malformed.
    #[error("line {line}: bad value `{token}`")]
    BadValue {
        /// Line number.
        line: usize,
        /// The token.
        token: String,
    },
    /// `-- result` has no value, or more than one.
    #[error("`-- result` must hold exactly one value")]
    BadResult,
    /// Neither `-- asm` nor `-- raw`.
    #[error("no program (`-- asm` or `-- raw`)")]
    NoProgram,
    /// Neither `-- result` nor `-- error`.
    #[error("no expectation (`-- result` or `-- error`)")]
    NoExpectation,
}

/// One parsed `.data` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestCase {
    /// The `-- asm` text, if any.
    pub asm: Option<String>,
    /// The `-- raw` slots, if any.
    pub raw: Option<Vec<u64>>,
    /// Initial memory.
    pub mem: Vec<u8>,
    /// Expected r0.
    pub result: Option<u64>,
    /// Expected failure: the section's text (possibly empty).
    pub error: Option<String>,
    /// Whether a `-- no register offset` section was present.
    pub no_register_offset: bool,
}

fn parse_u64(tok: &str) -> Option<u64> {
    let t = tok.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        t.parse().ok()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sec {
    None,
    Asm,
    Raw,
    Mem,
    Result,
    Error,
    Ignored,
}

impl TestCase {
    /// Parses the text of a `.data` file.
    pub fn parse(text: &str) -> Result<TestCase, DataError> {
        let mut case = TestCase::default();
        let mut sec = Sec::None;
        let mut seen: Vec<String> = Vec::new();
        let mut asm = String::new();
        let mut results: Vec<u64> = Vec::new();
        let mut error = String::new();
        let (mut has_asm, mut has_raw, mut has_result, mut has_error) =
            (false, false, false, false);
        let mut raw = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let no = idx + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(name) = line.strip_prefix("--") {
                let name = name.trim().to_string();
                if seen.contains(&name) {
                    return Err(DataError::DuplicateSection { line: no, name });
                }
                sec = match name.as_str() {
                    "asm" => {
                        has_asm = true;
                        Sec::Asm
                    }
                    "raw" => {
                        has_raw = true;
                        Sec::Raw
                    }
                    "mem" => Sec::Mem,
                    "result" => {
                        has_result = true;
                        Sec::Result
                    }
                    "error" | "error pattern" => {
                        has_error = true;
                        Sec::Error
                    }
                    "c" | "test_jit" => Sec::Ignored,
                    "no register offset" => {
                        case.no_register_offset = true;
                        Sec::Ignored
                    }
                    "map" => return Err(DataError::UnsupportedSection { line: no, name }),
                    _ => return Err(DataError::UnknownSection { line: no, name }),
                };
                seen.push(name);
                continue;
            }
            match sec {
                Sec::Asm => {
                    asm.push_str(line);
                    asm.push('\n');
                    continue;
                }
                Sec::Ignored => continue,
                _ => {}
            }
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let bad = |tok: &str| DataError::BadValue {
                line: no,
                token: tok.to_string(),
            };
            match sec {
                Sec::None => return Err(DataError::OutsideSection { line: no }),
                Sec::Raw => {
                    for tok in body.split_whitespace() {
                        raw.push(parse_u64(tok).ok_or_else(|| bad(tok))?);
                    }
                }
                Sec::Mem => {
                    for tok in body.split_whitespace() {
                        let h = tok.strip_prefix("0x").unwrap_or(tok);
                        let b = (h.len() <= 2)
                            .then(|| u8::from_str_radix(h, 16).ok())
                            .flatten()
                            .ok_or_else(|| bad(tok))?;
                        case.mem.push(b);
                    }
                }
                Sec::Result => results.push(parse_u64(body).ok_or_else(|| bad(body))?),
                Sec::Error => {
                    if !error.is_empty() {
                        error.push('\n');
                    }
                    error.push_str(body);
                }
                Sec::Asm | Sec::Ignored => unreachable!("handled above"),
            }
        }
        if has_asm {
            case.asm = Some(asm);
        }
        if has_raw {
            case.raw = Some(raw);
        }
        if has_result {
            match results[..] {
                [v] => case.result = Some(v),
                _ => return Err(DataError::BadResult),
            }
        }
        if has_error {
            case.error = Some(error);
        }
        if case.asm.is_none() && case.raw.is_none() {
            return Err(DataError::NoProgram);
        }
        if case.result.is_none() && case.error.is_none() {
            return Err(DataError::NoExpectation);
        }
        Ok(case)
    }

    /// The program's slots: `-- raw` if present, else the assembled `-- asm`.
    pub fn slots(&self) -> Result<Vec<Insn>, crate::asm::AsmError> {
        match (&self.raw, &self.asm) {
            (Some(raw), _) => Ok(raw
                .iter()
                .map(|v| Insn::from_bytes(v.to_le_bytes()))
                .collect()),
            (None, Some(text)) => crate::asm::assemble(text),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// An engine under test: runs a loaded program over memory.
pub type Engine<'a> = &'a dyn Fn(&BpfProgram, &mut [u8]) -> crate::Result<u64>;

/// The interpreter as an [`Engine`].
pub fn interp_engine(prog: &BpfProgram, mem: &mut [u8]) -> crate::Result<u64> {
    Ok(prog.run_interp(mem)?)
}

/// The JIT as an [`Engine`]: compiles the program into the process-wide
/// [`shared_allocator`](crate::jit::shared_allocator), then runs it.
pub fn jit_engine(prog: &BpfProgram, mem: &mut [u8]) -> crate::Result<u64> {
    let alloc = crate::jit::shared_allocator()?;
    let jit = crate::JitProgram::new(&alloc, prog.slots(), prog.helpers(), Default::default())?;
    Ok(jit.run_limited(mem, prog.run_options().instruction_limit)?)
}

/// The VM conformance files expect: helper 5 is the unwind helper.
pub fn conformance_vm() -> Vm {
    Vm::new(Helpers::conformance())
}

/// Runs one test case on `engine`; `Err` says why it failed.
///
/// A load failure (checker) and a run failure both count as "the program failed". The
/// expected r0 is compared on all 64 bits.
pub fn run_case(vm: &Vm, case: &TestCase, engine: Engine<'_>) -> Result<(), String> {
    let slots = case.slots().map_err(|e| format!("assembler: {e}"))?;
    let outcome = vm
        .load_slots(&slots)
        .and_then(|p| engine(&p, &mut case.mem.clone()));
    match (&case.error, case.result, outcome) {
        (Some(_), _, Err(_)) => Ok(()),
        (Some(msg), Some(want), Ok(got)) if msg.is_empty() && got == want => Ok(()),
        (Some(msg), _, Ok(got)) => Err(format!("expected an error ({msg:?}), got {got:#x}")),
        (None, Some(want), Ok(got)) if got == want => Ok(()),
        (None, Some(want), Ok(got)) => Err(format!("expected {want:#x}, got {got:#x}")),
        (None, Some(want), Err(e)) => Err(format!("expected {want:#x}, got error: {e}")),
        (None, None, _) => Err("no expectation".into()),
    }
}

/// Reads, parses and runs one file.
pub fn run_file(vm: &Vm, path: &Path, engine: Engine<'_>) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read: {e}"))?;
    let case = TestCase::parse(&text).map_err(|e| format!("parse: {e}"))?;
    run_case(vm, &case, engine)
}

/// Expands files and directories (recursively) into the sorted list of `.data` files.
/// A path that is a file is taken whatever its extension.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "data") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v = Vec::new();
            walk(p, &mut v)?;
            v.sort();
            out.extend(v);
        } else {
            std::fs::metadata(p)?;
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section_kind() {
        let t =
            "# header\n-- asm\nmov %r0, 1 # c\nexit\n-- mem\n00 ff 0x10\n-- no register offset\n\
                 anything\n-- result\n0x1\n-- c\n#include <x.h>\n";
        let c = TestCase::parse(t).unwrap();
        assert_eq!(c.mem, vec![0, 0xff, 0x10]);
        assert_eq!(c.result, Some(1));
        assert!(c.no_register_offset);
        assert_eq!(c.slots().unwrap().len(), 2);
        let e = TestCase::parse("-- raw\n0x95\n-- error pattern\nsome message\n").unwrap();
        assert_eq!(e.error.as_deref(), Some("some message"));
        assert_eq!(e.slots().unwrap()[0].opc, 0x95);
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        assert!(matches!(
            TestCase::parse("-- asm\nexit\n-- bogus\n-- result\n0\n"),
            Err(DataError::UnknownSection { line: 3, .. })
        ));
        assert!(matches!(
            TestCase::parse("-- map\nm 2 4 4 10\n-- asm\nexit\n-- result\n0"),
            Err(DataError::UnsupportedSection { .. })
        ));
        assert!(matches!(
            TestCase::parse("-- asm\nexit\n"),
            Err(DataError::NoExpectation)
        ));
        assert!(matches!(
            TestCase::parse("-- result\n1\n"),
            Err(DataError::NoProgram)
        ));
        assert!(matches!(
            TestCase::parse("-- asm\nexit\n-- mem\nzz\n-- result\n0"),
            Err(DataError::BadValue { line: 4, .. })
        ));
        assert!(matches!(
            TestCase::parse("hello\n-- asm\nexit\n-- result\n0"),
            Err(DataError::OutsideSection { line: 1 })
        ));
    }

    #[test]
    fn runner_compares_results_and_errors() {
        let vm = conformance_vm();
        let ok = TestCase::parse("-- asm\nmov %r0, 7\nexit\n-- result\n7").unwrap();
        assert_eq!(run_case(&vm, &ok, &interp_engine), Ok(()));
        let wrong = TestCase::parse("-- asm\nmov %r0, 7\nexit\n-- result\n8").unwrap();
        assert!(run_case(&vm, &wrong, &interp_engine).is_err());
        let oob =
            TestCase::parse("-- asm\nldxdw %r0, [%r1]\nexit\n-- error\nout of bounds").unwrap();
        assert_eq!(run_case(&vm, &oob, &interp_engine), Ok(()));
        let load_err = TestCase::parse("-- raw\n0x07\n-- error\nfalls off").unwrap();
        assert_eq!(run_case(&vm, &load_err, &interp_engine), Ok(()));
        let should_fail = TestCase::parse("-- asm\nexit\n-- error\nboom").unwrap();
        assert!(run_case(&vm, &should_fail, &interp_engine).is_err());
    }
}
