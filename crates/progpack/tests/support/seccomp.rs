//! A seccomp filter that kills the process on any request for memory that is writable and
//! executable at once: `mmap`, `mprotect` or `pkey_mprotect` whose protection argument has
//! both `PROT_WRITE` and `PROT_EXEC`. Everything else is allowed. Unlike sampling
//! `/proc/self/maps`, it cannot miss a brief window: the request itself is fatal.
//!
//! `mremap` takes no protection argument (it moves or resizes a mapping and keeps its
//! protection), so it can only carry a writable+executable mapping that one of the three calls
//! above already made. System calls of another ABI (x86 `int 0x80`, x32) are killed outright:
//! they would bypass the checks by number.
//!
//! Used by progpack's `wx_seccomp` and `reliability_forbidden` tests and, through `#[path]`, by
//! progpack-bpf's.
#![allow(dead_code)]

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// System call numbers at or above this belong to the x32 ABI (x86-64); none elsewhere.
#[cfg(target_arch = "x86_64")]
const FOREIGN_NR: u32 = 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const FOREIGN_NR: u32 = u32::MAX;

/// Offset of the low 32 bits of `seccomp_data.args[2]` (the protection of all three calls):
/// `nr` (4 bytes), `arch` (4), `instruction_pointer` (8), then `args[0..6]` of 8 bytes each.
const ARG2: u32 = 16 + 2 * 8;

/// The classic-BPF instructions the filters use (`k` is the operand, `jt`/`jf` the jumps).
const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

/// One filter instruction.
fn op(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program, for inspection and for [`install_kill_on_wx`].
pub fn kill_on_wx_filter() -> Vec<libc::sock_filter> {
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    vec![
        /* 0 */ op(LD, 4, 0, 0), // seccomp_data.arch
        /* 1 */ op(JEQ, ARCH, 1, 0), // this ABI: go to 3
        /* 2 */ op(RET, KILL, 0, 0),
        /* 3 */ op(LD, 0, 0, 0), // seccomp_data.nr
        /* 4 */ op(JGE, FOREIGN_NR, 0, 1), // x32: kill; else go to 6
        /* 5 */ op(RET, KILL, 0, 0),
        /* 6 */ op(JEQ, libc::SYS_mmap as u32, 2, 0), // to 9
        /* 7 */ op(JEQ, libc::SYS_mprotect as u32, 1, 0), // to 9
        /* 8 */ op(JEQ, libc::SYS_pkey_mprotect as u32, 0, 4), // to 9, else allow (13)
        /* 9 */ op(LD, ARG2, 0, 0), // the protection
        /* 10 */ op(AND, wx, 0, 0),
        /* 11 */ op(JEQ, wx, 0, 1), // both bits: kill (12); else allow (13)
        /* 12 */ op(RET, KILL, 0, 0),
        /* 13 */ op(RET, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

/// A filter that makes every `mmap` asking for a shared writable view fail with `EPERM` (a
/// writable alias of a `memfd`, say); everything else is allowed. Not a security boundary
/// (other ABIs and `mremap` are not looked at): a probe for tests that a backend never maps
/// such a view.
pub fn refuse_shared_writable_mmap_filter() -> Vec<libc::sock_filter> {
    vec![
        /* 0 */ op(LD, 4, 0, 0), // seccomp_data.arch
        /* 1 */ op(JEQ, ARCH, 1, 0), // this ABI: go to 3
        /* 2 */ op(RET, KILL, 0, 0),
        /* 3 */ op(LD, 0, 0, 0), // seccomp_data.nr
        /* 4 */ op(JEQ, libc::SYS_mmap as u32, 0, 5), // mmap: go on; else allow (10)
        /* 5 */ op(LD, ARG2, 0, 0), // the protection
        /* 6 */ op(JSET, libc::PROT_WRITE as u32, 0, 3), // writable: go on; else allow
        /* 7 */ op(LD, ARG2 + 8, 0, 0), // the flags (args[3])
        /* 8 */ op(JSET, libc::MAP_SHARED as u32, 0, 1), // shared: refuse; else allow
        /* 9 */ op(RET, EPERM, 0, 0),
        /* 10 */ op(RET, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

/// A filter that makes `pwrite64`, `pwritev` and `pwritev2` fail with `EPERM`, as sandboxes
/// that filter system calls do; everything else is allowed (on another ABI too: a probe for
/// tests, not a security boundary).
pub fn refuse_pwrite_filter() -> Vec<libc::sock_filter> {
    vec![
        /* 0 */ op(LD, 4, 0, 0), // seccomp_data.arch
        /* 1 */ op(JEQ, ARCH, 0, 5), // this ABI: go on; else allow (7)
        /* 2 */ op(LD, 0, 0, 0), // seccomp_data.nr
        /* 3 */ op(JEQ, libc::SYS_pwrite64 as u32, 3, 0), // to 7
        /* 4 */ op(JEQ, libc::SYS_pwritev as u32, 2, 0), // to 7
        /* 5 */ op(JEQ, libc::SYS_pwritev2 as u32, 1, 0), // to 7
        /* 6 */ op(RET, libc::SECCOMP_RET_ALLOW, 0, 0),
        /* 7 */ op(RET, EPERM, 0, 0),
    ]
}

/// Installs [`kill_on_wx_filter`] for this process and every child it makes from now on. For
/// a test child only: it cannot be undone.
pub fn install_kill_on_wx() -> Result<(), String> {
    install(&kill_on_wx_filter())
}

/// Installs [`refuse_pwrite_filter`], like [`install_kill_on_wx`].
pub fn install_refuse_pwrite() -> Result<(), String> {
    install(&refuse_pwrite_filter())
}

/// Installs [`refuse_shared_writable_mmap_filter`], like [`install_kill_on_wx`].
pub fn install_refuse_shared_writable_mmap() -> Result<(), String> {
    install(&refuse_shared_writable_mmap_filter())
}

/// Installs `filter` for this process and its future children.
fn install(filter: &[libc::sock_filter]) -> Result<(), String> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with a filter program that outlives the call; affects only this process
    // (and its future children).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "PR_SET_NO_NEW_PRIVS: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(format!(
                "PR_SET_SECCOMP: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Asks for one writable+executable page with `call` ("mmap", "mprotect", "pkey_mprotect"):
/// under the filter the process dies of SIGSYS inside the call. Returns what happened if it
/// did not die.
pub fn request_wx(call: &str) -> String {
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    // SAFETY: a fresh private anonymous page nothing else refers to; made read+write+execute
    // on purpose (the filter's target) and never executed.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return "setup mmap failed".into();
        }
        let rc = match call {
            "mmap" => {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    rwx,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    -1
                } else {
                    0
                }
            }
            "mprotect" => libc::mprotect(page, 4096, rwx),
            "pkey_mprotect" => libc::syscall(libc::SYS_pkey_mprotect, page, 4096, rwx, -1) as i32,
            other => return format!("unknown call {other}"),
        };
        format!(
            "{call}(RWX) returned {rc} ({})",
            std::io::Error::last_os_error()
        )
    }
}
