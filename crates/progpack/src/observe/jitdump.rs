//! The jitdump: `<dir>/jit-<pid>.dump` in the format `perf inject --jit` reads (Linux
//! `tools/perf/util/jitdump.h`): a header, then one `JIT_CODE_LOAD` record per program with
//! its name, address and code bytes (and another after each live patch of it, with the new
//! bytes), each timestamped with the clock `perf record` samples with. The file's first page is mapped read+execute once ([`super::os::map_marker`]): that
//! mapping, seen by `perf record`, is how `perf inject` finds the file.
//!
//! Use: `perf record -k mono -e cpu-clock ./app` (with `PROGPACK_JITDUMP=DIR`), then
//! `perf inject --jit -i perf.data -o perf.jit.data` and `perf report -i perf.jit.data`.
//! Because every record is timed, an address reused by a later program is attributed to the
//! right one on each side of the reuse.
//!
//! Invariants: one file per process and directory, shared by every allocator (a forked child
//! starts its own file); records are appended whole, in one write per finalize, under a lock;
//! code indices count up from 0 in the file. A failure to create or write disables the dump
//! with one warning on standard error and never fails a finalize.

use super::names;
use super::os::{self, JitdumpClock};
use super::pid_file::{shared_in, PidFile};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// "JiTD".
const MAGIC: u32 = 0x4A69_5444;
const VERSION: u32 = 1;
/// `struct jitheader`.
const HEADER_SIZE: u32 = 40;
/// `JIT_CODE_LOAD`.
const CODE_LOAD: u32 = 0;
/// `struct jr_code_load` without the name and code.
const LOAD_SIZE: usize = 56;

#[cfg(target_arch = "x86_64")]
const ELF_MACH: u32 = 62; // EM_X86_64
#[cfg(target_arch = "aarch64")]
const ELF_MACH: u32 = 183; // EM_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ELF_MACH: u32 = 0; // EM_NONE

/// One process's jitdump in one directory.
#[derive(Debug)]
pub(crate) struct Jitdump {
    file: PidFile<NextIndex>,
    clock: JitdumpClock,
}

/// The `code_index` of the next record in the file (they count up from 0 in each file).
#[derive(Debug, Default)]
struct NextIndex(u64);

/// Records being prepared for one write, with the clock to stamp them.
pub(crate) struct Records {
    pub(crate) bytes: Vec<u8>,
    clock: JitdumpClock,
    tid: u32,
    count: u64,
}

impl Jitdump {
    /// The jitdump of this process in `dir`, shared by every allocator that uses it (the
    /// first one's clock is used).
    pub(crate) fn shared(dir: &Path, clock: JitdumpClock) -> Arc<Jitdump> {
        static DUMPS: Mutex<Vec<Arc<Jitdump>>> = Mutex::new(Vec::new());
        shared_in(
            &DUMPS,
            dir,
            |d| &d.file,
            || Jitdump {
                file: PidFile::new(dir, |pid| format!("jit-{pid}.dump"), "jitdump"),
                clock,
            },
        )
    }

    /// The file this process writes.
    pub(crate) fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// An empty set of records.
    pub(crate) fn records(&self) -> Records {
        Records {
            bytes: Vec::new(),
            clock: self.clock,
            tid: os::thread_id(),
            count: 0,
        }
    }

    /// Writes `records`, numbering their code indices. Never fails: a failure disables the
    /// dump with one warning.
    pub(crate) fn append(&self, mut records: Records) {
        if records.count == 0 {
            return;
        }
        self.file.write(
            |path, pid| self.create(path, pid),
            |file, next| {
                // Number the records in file order (`code_index` is at offset 48 of each).
                let mut at = 0;
                while at < records.bytes.len() {
                    let size =
                        u32::from_le_bytes(records.bytes[at + 4..at + 8].try_into().unwrap());
                    records.bytes[at + 48..at + 56].copy_from_slice(&next.0.to_le_bytes());
                    next.0 += 1;
                    at += size as usize;
                }
                file.write_all(&records.bytes)
            },
        );
    }

    /// Creates the file, writes the header and maps the marker page.
    fn create(&self, path: &Path, pid: u32) -> std::io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut h = Vec::with_capacity(HEADER_SIZE as usize);
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&HEADER_SIZE.to_le_bytes());
        h.extend_from_slice(&ELF_MACH.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // pad1
        h.extend_from_slice(&pid.to_le_bytes());
        h.extend_from_slice(&self.clock.now().to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // flags: timestamps from `clock`
        f.write_all(&h)?;
        os::map_marker(&f)?;
        Ok(f)
    }

    /// True once a failure disabled the dump.
    pub(crate) fn is_disabled(&self) -> bool {
        self.file.is_disabled()
    }
}

impl Records {
    /// Adds a `JIT_CODE_LOAD` record for the program at `addr` (whose bytes are `code`), named
    /// `name` (escaped) or `jit_<addr>`, stamped now. Its code index is set when written.
    pub(crate) fn load(&mut self, addr: usize, code: &[u8], name: Option<&[u8]>) {
        let mut n = Vec::new();
        match name {
            Some(name) => names::escape(name, &mut n),
            None => names::push_default(&mut n, addr),
        }
        n.push(0);
        let Ok(total) = u32::try_from(LOAD_SIZE + n.len() + code.len()) else {
            return; // larger than a record can say (4 GiB): not announced
        };
        let b = &mut self.bytes;
        b.reserve(total as usize);
        b.extend_from_slice(&CODE_LOAD.to_le_bytes());
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(&self.clock.now().to_le_bytes());
        b.extend_from_slice(&std::process::id().to_le_bytes());
        b.extend_from_slice(&self.tid.to_le_bytes());
        b.extend_from_slice(&(addr as u64).to_le_bytes()); // vma
        b.extend_from_slice(&(addr as u64).to_le_bytes()); // code_addr
        b.extend_from_slice(&(code.len() as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // code_index, set by `append`
        b.extend_from_slice(&n);
        b.extend_from_slice(code);
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_record_has_the_kernel_layout() {
        let d = Jitdump::shared(
            Path::new("/nonexistent-progpack-test"),
            JitdumpClock::Monotonic,
        );
        let mut r = d.records();
        r.load(0x1000, &[0xc3], Some(b"f\n"));
        let b = &r.bytes;
        let total = 56 + "f\\x0a".len() + 1 + 1;
        assert_eq!(b.len(), total);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), CODE_LOAD);
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize,
            total
        );
        assert!(
            u64::from_le_bytes(b[8..16].try_into().unwrap()) > 0,
            "timestamp"
        );
        assert_eq!(
            u32::from_le_bytes(b[16..20].try_into().unwrap()),
            std::process::id()
        );
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0x1000);
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 0x1000);
        assert_eq!(u64::from_le_bytes(b[40..48].try_into().unwrap()), 1);
        assert_eq!(&b[56..62], b"f\\x0a\0");
        assert_eq!(b[62], 0xc3);
    }
}
