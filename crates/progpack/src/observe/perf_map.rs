//! The perf map: `/tmp/perf-<pid>.map` (or `<dir>/perf-<pid>.map`), one line per program,
//! `START SIZE name` in hex, appended when programs are finalized. `perf report` and `perf
//! top` read it to name samples in JIT code (the convention of V8's `--perf-basic-prof`,
//! Python's `-X perf` and cranelift-jit).
//!
//! Invariants: one file per process and directory, shared by every allocator (opened on the
//! first line, reopened under the new pid in a forked child); each finalize appends its lines
//! with one `write(2)` on an `O_APPEND` descriptor, so lines of concurrent finalizes never
//! interleave; names are escaped (see [`super::names`]) so a line never breaks. A failure to
//! open or write (an unwritable `/tmp`, a full disk) disables the map for the process with one
//! warning on standard error; it never fails a finalize.
//!
//! The map has no timestamps: when an address is reused by a later program, perf shows one of
//! the names for both. The jitdump (see [`super::jitdump`]) is timed and has no such problem.

use super::names;
use super::pid_file::{shared_in, PidFile};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default directory: where perf looks.
pub const DEFAULT_DIR: &str = "/tmp";

/// One process's perf map in one directory.
#[derive(Debug)]
pub(crate) struct PerfMap {
    file: PidFile<()>,
}

impl PerfMap {
    /// The perf map of this process in `dir`, shared by every allocator that uses it.
    pub(crate) fn shared(dir: &Path) -> Arc<PerfMap> {
        static MAPS: Mutex<Vec<Arc<PerfMap>>> = Mutex::new(Vec::new());
        shared_in(
            &MAPS,
            dir,
            |m| &m.file,
            || PerfMap {
                file: PidFile::new(dir, |pid| format!("perf-{pid}.map"), "perf map"),
            },
        )
    }

    /// The file this process writes (`<dir>/perf-<pid>.map`).
    pub(crate) fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Appends one program's line to `out`: `START SIZE name\n`, the name escaped, or
    /// `jit_<addr>` if it has none.
    pub(crate) fn line(out: &mut Vec<u8>, addr: usize, len: usize, name: Option<&[u8]>) {
        out.reserve(48 + name.map_or(0, <[u8]>::len));
        names::push_hex(out, addr);
        out.push(b' ');
        names::push_hex(out, len);
        out.push(b' ');
        match name {
            Some(n) => names::escape(n, out),
            None => names::push_default(out, addr),
        }
        out.push(b'\n');
    }

    /// Appends `lines` (whole lines) with one write. Never fails: a failure disables the map
    /// with one warning.
    pub(crate) fn append(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        self.file.write(
            |path, _| {
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
            },
            |file, ()| file.write_all(lines),
        );
    }

    /// True once a failure disabled the map.
    pub(crate) fn is_disabled(&self) -> bool {
        self.file.is_disabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_hex_and_escaped() {
        let mut out = Vec::new();
        PerfMap::line(&mut out, 0x7f00_0000_0040, 0x1c, Some(b"two\nlines"));
        PerfMap::line(&mut out, 0x10, 1, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7f0000000040 1c two\\x0alines\n10 1 jit_10\n"
        );
    }
}
