//! A seccomp filter that makes W^X a property the kernel enforces for the whole process:
//! any `mmap`, `mprotect` or `pkey_mprotect` asking for `PROT_WRITE | PROT_EXEC` together
//! gets `SIGSYS` (the process dies, so no such call can go unnoticed). Installed with
//! `SECCOMP_FILTER_FLAG_TSYNC`, it covers every thread, now and later; it cannot be removed.
//!
//! Stock sljit maps its code pools read+write+execute; with progpack's hooks no such
//! mapping is ever asked for.

use std::io;

// Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in struct seccomp_data: nr, arch, then args[6] as u64 (little endian: low word
// first). The protection is argument 2 of all three calls.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG2_LOW: u32 = 16 + 2 * 8;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program.
fn program() -> Vec<libc::sock_filter> {
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JEQ_K, libc::SYS_mmap as u32, 3, 0),
        jump(BPF_JEQ_K, libc::SYS_mprotect as u32, 2, 0),
        jump(BPF_JEQ_K, libc::SYS_pkey_mprotect as u32, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        stmt(BPF_LD_W_ABS, ARG2_LOW),
        stmt(BPF_AND_K, wx),
        jump(BPF_JEQ_K, wx, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_TRAP),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
}

/// Installs the filter on every thread of the process. Irreversible.
///
/// # Errors
/// If the kernel refuses (`prctl` or `seccomp` fail), or on an architecture other than
/// x86-64 (the filter checks x86-64 system call numbers).
pub fn forbid_writable_executable() -> io::Result<()> {
    if !cfg!(target_arch = "x86_64") {
        return Err(io::Error::other("the W^X filter is written for x86-64"));
    }
    let filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points to `filter`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Proves the filter is in force: a child process asks for a read+write+execute mapping and
/// must die of `SIGSYS`. Returns how the child ended if it did not.
pub fn check_filter_kills_wx() -> Result<(), String> {
    // SAFETY: the child only calls mmap and _exit (async-signal-safe) before ending.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: an anonymous mapping request; the filter should kill us here.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", io::Error::last_os_error()));
    }
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
        Ok(())
    } else {
        Err(format!(
            "the child asked for a writable+executable mapping and was not killed by SIGSYS \
             (wait status {status:#x})"
        ))
    }
}
