//! Helpers shared by the integration tests: code generators, `/proc/self/maps` readers, and
//! running a closure in a forked child.
#![allow(dead_code, unsafe_code)]

use std::collections::BTreeSet;

/// x86-64 `mov eax, v; ret`.
pub fn ret_imm(v: u32) -> [u8; 6] {
    let b = v.to_le_bytes();
    [0xb8, b[0], b[1], b[2], b[3], 0xc3]
}

/// One line of `/proc/self/maps`: range, permissions, path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vma {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    pub path: String,
}

/// Parses `/proc/self/maps`.
pub fn maps() -> Vec<Vma> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (a, b) = it.next()?.split_once('-')?;
            let perms = it.next()?.to_string();
            let path = it.nth(3).unwrap_or("").to_string();
            Some(Vma {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

/// Mappings that are writable and executable at once.
pub fn wx_mappings() -> Vec<Vma> {
    maps()
        .into_iter()
        .filter(|m| m.perms.contains('w') && m.perms.contains('x'))
        .collect()
}

/// Executable or progpack-named mappings (what progpack could have made), as a set.
pub fn code_mappings() -> BTreeSet<Vma> {
    maps()
        .into_iter()
        .filter(|m| m.perms.contains('x') || m.path.contains("progpack"))
        .collect()
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child and returns how it ended. The child exits with `f`'s code.
/// Only for short single-threaded work in the child (a forked multi-threaded process may only
/// use what it is sure is not locked by another thread: no allocation-heavy code).
pub fn in_child(f: impl FnOnce() -> i32) -> ChildEnd {
    // SAFETY: the child only runs `f` and then `_exit`s; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: terminating the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    if libc::WIFSIGNALED(status) {
        ChildEnd::Signaled(libc::WTERMSIG(status))
    } else {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    }
}
