//! What differs per CPU architecture: the trap instruction, and instruction-cache maintenance.
//!
//! Invariant: [`TRAP`] repeated from any offset that is a multiple of its length decodes as
//! trap instructions only; every free byte of every pack holds this pattern.

/// The trap instruction pattern: x86 `int3` (0xCC).
#[cfg(target_arch = "x86_64")]
pub const TRAP: &[u8] = &[0xcc];

/// The trap instruction pattern: aarch64 `brk #0` (0xd4200000, little endian).
#[cfg(target_arch = "aarch64")]
pub const TRAP: &[u8] = &[0x00, 0x00, 0x20, 0xd4];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("progpack supports x86_64 and aarch64 only");

/// Fills `buf` with the trap pattern. `buf` must start at an instruction boundary (offsets into
/// packs are multiples of the chunk size, which is a multiple of the pattern length).
pub fn fill_traps(buf: &mut [u8]) {
    if let [b] = TRAP {
        buf.fill(*b);
    } else {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = TRAP[i % TRAP.len()];
        }
    }
}

/// Appends `n` bytes of the trap pattern to `buf` (whose length is a multiple of the pattern).
pub(crate) fn extend_traps(buf: &mut Vec<u8>, n: usize) {
    if let [b] = TRAP {
        buf.resize(buf.len() + n, *b);
    } else {
        let start = buf.len();
        buf.resize(start + n, 0);
        fill_traps(&mut buf[start..]);
    }
}

/// True if `bytes` (starting at an instruction boundary) holds only the trap pattern.
pub fn is_all_traps(bytes: &[u8]) -> bool {
    if let [b] = TRAP {
        bytes.iter().all(|x| x == b)
    } else {
        bytes
            .iter()
            .enumerate()
            .all(|(i, x)| *x == TRAP[i % TRAP.len()])
    }
}

/// Makes freshly written code at `addr..addr + len` visible to instruction fetch on every core.
///
/// Order matters: first clean the data cache and invalidate the instruction cache for the range
/// (`clear_cache`), then make every other core discard prefetched instructions
/// (`pipeline_flush_mt`). On x86-64 both are no-ops: the caches are coherent and the write
/// itself serialises. On aarch64 the `/proc/self/mem` path is already flushed by the kernel,
/// but the dual-mapping path is not, so this is always called.
pub fn sync_icache(addr: usize, len: usize) -> crate::Result<()> {
    let os = |op, e: std::io::Error| crate::Error::Os {
        op,
        errno: crate::error::Errno(e.raw_os_error().unwrap_or(0)),
    };
    // SAFETY: `clear_cache` only issues cache maintenance instructions for the range; the range
    // is a live mapping owned by the caller (a pack or dedicated mapping that outlives the call).
    #[allow(unsafe_code)]
    unsafe { wasmtime_jit_icache_coherence::clear_cache(addr as *const _, len) }
        .map_err(|e| os("instruction cache clear", e))?;
    wasmtime_jit_icache_coherence::pipeline_flush_mt()
        .map_err(|e| os("membarrier pipeline flush", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_fill_round_trips() {
        let mut buf = vec![0u8; 64];
        assert!(!is_all_traps(&buf));
        fill_traps(&mut buf);
        assert!(is_all_traps(&buf));
        buf[17] = 0x90;
        assert!(!is_all_traps(&buf));
    }
}
