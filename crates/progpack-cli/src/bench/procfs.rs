//! What the kernel says about this process's memory: mappings (VMAs), executable bytes,
//! huge-page-backed executable bytes, resident set.
//!
//! Reading never grows the heap by a new mapping: the footprint workload reads while a
//! page-per-program peer may sit at `vm.max_map_count`, where any new mapping (a large `Vec`
//! growing) would fail. The caller keeps one [`ProcReader`] with a large reserved buffer.

use std::io::Read;

/// Process memory at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemSnapshot {
    /// Lines in `/proc/self/smaps` headers: every VMA of the process.
    pub vmas: u64,
    /// VMAs with execute permission.
    pub exec_vmas: u64,
    /// Total size of executable VMAs.
    pub exec_bytes: u64,
    /// Bytes of executable VMAs backed by PMD-sized pages (AnonHugePages + ShmemPmdMapped +
    /// FilePmdMapped).
    pub exec_huge_bytes: u64,
    /// Resident set size (`/proc/self/statm`).
    pub rss_bytes: u64,
}

/// Reads `/proc/self/smaps` into a buffer reserved once.
#[derive(Debug)]
pub struct ProcReader {
    buf: Vec<u8>,
}

impl ProcReader {
    /// A reader whose buffer can hold `capacity` bytes of smaps (about 1.2 KiB per VMA) without
    /// reallocating. The reservation is virtual memory only until read into.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Takes a snapshot.
    pub fn snapshot(&mut self) -> std::io::Result<MemSnapshot> {
        self.buf.clear();
        std::fs::File::open("/proc/self/smaps")?.read_to_end(&mut self.buf)?;
        let mut snap = parse_smaps(&self.buf);
        let mut statm = [0u8; 128];
        let n = std::fs::File::open("/proc/self/statm")?.read(&mut statm)?;
        let resident = std::str::from_utf8(&statm[..n])
            .ok()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        snap.rss_bytes = resident * rustix::param::page_size() as u64;
        Ok(snap)
    }
}

/// Parses the text of `/proc/<pid>/smaps` (everything except `rss_bytes`).
pub fn parse_smaps(text: &[u8]) -> MemSnapshot {
    let mut snap = MemSnapshot::default();
    let mut in_exec = false;
    for line in text.split(|&b| b == b'\n') {
        let Some(first) = line.split(|&b| b == b' ').next() else {
            continue;
        };
        if first.is_empty() {
            continue;
        }
        if first.ends_with(b":") {
            if in_exec
                && matches!(
                    first,
                    b"AnonHugePages:" | b"ShmemPmdMapped:" | b"FilePmdMapped:"
                )
            {
                snap.exec_huge_bytes += kib_field(line) * 1024;
            }
            continue;
        }
        // A VMA header: "start-end perms offset dev inode [path]".
        let Some(dash) = first.iter().position(|&b| b == b'-') else {
            continue;
        };
        let (Some(start), Some(end)) = (hex(&first[..dash]), hex(&first[dash + 1..])) else {
            continue;
        };
        snap.vmas += 1;
        let perms = line.split(|&b| b == b' ').nth(1).unwrap_or(b"");
        in_exec = perms.get(2) == Some(&b'x');
        if in_exec {
            snap.exec_vmas += 1;
            snap.exec_bytes += end - start;
        }
    }
    snap
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn kib_field(line: &[u8]) -> u64 {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/x
Size:                  4 kB
AnonHugePages:         0 kB
7f0000000000-7f0000200000 r-xp 00000000 00:00 0 
Size:               2048 kB
AnonHugePages:      2048 kB
7f0000200000-7f0000201000 r-xp 00000000 00:00 0 
AnonHugePages:         0 kB
7f1000000000-7f1000200000 r-xs 00000000 00:01 7 /memfd:progpack (deleted)
ShmemPmdMapped:     2048 kB
7f2000000000-7f2000200000 rw-p 00000000 00:00 0 
AnonHugePages:      2048 kB
";

    #[test]
    fn counts_vmas_exec_bytes_and_huge_pages() {
        let s = parse_smaps(SAMPLE.as_bytes());
        assert_eq!(s.vmas, 5);
        assert_eq!(s.exec_vmas, 3);
        assert_eq!(s.exec_bytes, 2 * 2048 * 1024 + 4096);
        assert_eq!(
            s.exec_huge_bytes,
            2 * 2048 * 1024,
            "rw- huge page not counted"
        );
    }

    #[test]
    fn reads_this_process() {
        let s = ProcReader::with_capacity(1 << 20).snapshot().unwrap();
        assert!(s.vmas > 3);
        assert!(s.exec_vmas >= 1, "our own text is executable");
        assert!(s.rss_bytes > 0);
    }
}
