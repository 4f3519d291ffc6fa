//! Helpers shared by progpack's process-level tests: reading `/proc/self/maps` and
//! `/proc/self/status`, running a closure in a `fork()`ed child and learning how it ended, and
//! generating the smallest useful machine code (a function returning a constant).
//!
//! Include it from a test file with `mod support;`. Every item is generic; each test file uses
//! some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod seccomp;
pub mod trap;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// The four permission characters, e.g. `r-xp`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[anon:progpack:3]`, `/memfd:progpack (deleted)`), or "".
    pub path: String,
}

impl MapEntry {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// True if the mapping is writable.
    pub fn writable(&self) -> bool {
        self.perms.as_bytes().get(1) == Some(&b'w')
    }
    /// True if the mapping is executable.
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
    /// True if the mapping is writable and executable at once.
    pub fn is_wx(&self) -> bool {
        self.writable() && self.executable()
    }
    /// True if the mapping looks like one of progpack's: a memfd view (`/memfd:progpack`), a
    /// named anonymous pack (`[anon:progpack:N]`), or any anonymous executable mapping (packs
    /// are unnamed where the kernel lacks `CONFIG_ANON_VMA_NAME`, and then neighbouring packs
    /// merge into one VMA). Code-range reservations (anonymous `PROT_NONE`) are not recognised.
    pub fn is_progpack(&self) -> bool {
        self.path.contains("progpack")
            || (self.executable() && self.inode == 0 && self.path.is_empty())
    }
}

/// Parses `/proc/self/maps`.
pub fn maps_snapshot() -> Vec<MapEntry> {
    let text = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    parse_maps(&text)
}

/// Parses the text of a `maps` file.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let inode = f.next()?.parse().ok()?;
            let path = f.next().unwrap_or("").trim_start().to_string();
            Some(MapEntry {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
                perms,
                offset,
                inode,
                path,
            })
        })
        .collect()
}

/// Every mapping of this process that is writable and executable at once.
pub fn wx_mappings() -> Vec<MapEntry> {
    maps_snapshot()
        .into_iter()
        .filter(MapEntry::is_wx)
        .collect()
}

/// Mappings made by progpack's backends (see [`MapEntry::is_progpack`]).
pub fn progpack_mappings() -> Vec<MapEntry> {
    maps_snapshot()
        .into_iter()
        .filter(MapEntry::is_progpack)
        .collect()
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmSize`, `RssAnon`, ...).
pub fn status_kib(field: &str) -> usize {
    let text = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Still running after the deadline; it was killed with `SIGKILL`.
    TimedOut,
}

/// What [`run_in_child`] learned: how the child ended and what it reported.
#[derive(Clone, Debug)]
pub struct ChildOutcome {
    /// How it ended.
    pub exit: ChildExit,
    /// The `Err` text the closure returned, or the panic message.
    pub message: String,
}

impl ChildOutcome {
    /// Panics with the child's message unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!(
            self.exit,
            ChildExit::Exited(0),
            "child failed: {}",
            self.message
        );
    }
}

/// Exit code of a child whose closure panicked.
pub const PANIC_EXIT: i32 = 101;

/// Deadline for [`run_in_child`].
pub const CHILD_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `f` in a `fork()`ed child and waits for it. The child exits 0 if `f` returns `Ok`,
/// 1 with the text sent back if it returns `Err`, [`PANIC_EXIT`] with the panic message if it
/// panics; a signal that kills it (SIGTRAP from running a trap, SIGSEGV, ...) is reported as
/// such. Core dumps are disabled in the child. A child still running after
/// [`CHILD_DEADLINE`] is killed and reported as [`ChildExit::TimedOut`].
///
/// The test harness runs tests on several threads; the child has only the thread that forked.
/// `f` must not wait for locks another test might hold (the allocator's own locks are per
/// allocator, and `malloc` is fork-safe in glibc), and should not print: it reports through its
/// return value.
pub fn run_in_child(f: impl FnOnce() -> Result<(), String>) -> ChildOutcome {
    // SAFETY: fork has no memory-safety preconditions; see `run_forked`.
    run_forked(|| unsafe { libc::fork() }, f)
}

/// Like [`run_in_child`], but the child is made by a raw `clone(SIGCHLD)` system call, as some
/// sandboxes and runtimes do: the C library's `fork()` wrapper and its `pthread_atfork`
/// handlers do not run.
pub fn run_in_raw_clone_child(f: impl FnOnce() -> Result<(), String>) -> ChildOutcome {
    run_forked(raw_clone, f)
}

fn run_forked(
    fork: impl FnOnce() -> libc::pid_t,
    f: impl FnOnce() -> Result<(), String>,
) -> ChildOutcome {
    spawn_forked(fork, f).wait()
}

/// A child made by [`spawn_in_child`], still running.
#[derive(Debug)]
pub struct RunningChild {
    pid: libc::pid_t,
    /// Read end of the pipe the child reports through.
    report: OwnedFd,
}

impl RunningChild {
    /// Waits for the child (at most [`CHILD_DEADLINE`]) and returns how it ended.
    pub fn wait(self) -> ChildOutcome {
        let exit = wait_with_deadline(self.pid, CHILD_DEADLINE);
        let mut message = String::new();
        let _ = std::fs::File::from(self.report).read_to_string(&mut message);
        ChildOutcome { exit, message }
    }
}

/// A one-shot signal from the parent to a child: the child blocks in [`Gate::wait`] until the
/// parent calls [`Gate::open`] (or exits). Make it before forking.
#[derive(Debug)]
pub struct Gate {
    read: OwnedFd,
    write: OwnedFd,
}

impl Gate {
    /// A new, closed gate (a pipe).
    pub fn new() -> Gate {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned here only.
        unsafe {
            Gate {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        }
    }

    /// In the child: blocks until the parent opens the gate. False if the parent did not
    /// within [`CHILD_DEADLINE`] (the child holds the write end too, so a parent that died
    /// would otherwise leave it waiting forever).
    pub fn wait(&self) -> bool {
        use std::os::fd::AsRawFd;
        let start = Instant::now();
        while start.elapsed() < CHILD_DEADLINE {
            let mut pfd = libc::pollfd {
                fd: self.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor this value owns, through a valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {
                continue; // timeout or EINTR: look at the clock again
            }
            let mut b = 0u8;
            // SAFETY: reads one byte into a local from a descriptor this value owns.
            let n = unsafe { libc::read(self.read.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
            return n == 1;
        }
        false
    }

    /// In the parent: lets the child go on.
    pub fn open(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: writes one byte from a local to a descriptor this value owns.
        let n = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        assert_eq!(n, 1, "gate write: {}", std::io::Error::last_os_error());
    }
}

/// Like [`run_in_child`], but returns at once: the parent can act while the child runs (and,
/// with a [`Gate`], while it waits), then [`RunningChild::wait`]s for it.
pub fn spawn_in_child(f: impl FnOnce() -> Result<(), String>) -> RunningChild {
    // SAFETY: fork has no memory-safety preconditions; see `spawn_forked`.
    spawn_forked(|| unsafe { libc::fork() }, f)
}

/// Like [`spawn_in_child`], with the child made by a raw `clone(SIGCHLD)` system call (see
/// [`run_in_raw_clone_child`]).
pub fn spawn_in_raw_clone_child(f: impl FnOnce() -> Result<(), String>) -> RunningChild {
    spawn_forked(raw_clone, f)
}

/// `clone(SIGCHLD)` as a raw system call: a `fork()` without the C library's bookkeeping.
fn raw_clone() -> libc::pid_t {
    // SAFETY: clone with only SIGCHLD and no new stack is fork() without the C library's
    // bookkeeping; the child only runs the caller's closure and leaves with `_exit`.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    pid as libc::pid_t
}

fn spawn_forked(
    fork: impl FnOnce() -> libc::pid_t,
    f: impl FnOnce() -> Result<(), String>,
) -> RunningChild {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // The child below only runs `f` and leaves with `_exit`, never returning into the harness.
    let pid = fork();
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // Child.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on values we own.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::close(fds[0]);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let (code, msg) = match result {
            Ok(Ok(())) => (0, String::new()),
            Ok(Err(m)) => (1, m),
            Err(p) => (
                PANIC_EXIT,
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            ),
        };
        let bytes = msg.as_bytes();
        let bytes = &bytes[..bytes.len().min(16 << 10)];
        // SAFETY: writes from a live buffer to our pipe end, then leaves the process without
        // running the parent's atexit handlers or destructors.
        unsafe {
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(code);
        }
    }
    // Parent.
    // SAFETY: fds[1] is ours and open; fds[0] is ours and is moved into an OwnedFd exactly once.
    let report = unsafe {
        libc::close(fds[1]);
        OwnedFd::from_raw_fd(fds[0])
    };
    RunningChild { pid, report }
}

/// Waits for `pid`, killing it after `deadline`.
pub fn wait_with_deadline(pid: libc::pid_t, deadline: Duration) -> ChildExit {
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            panic!("waitpid: {e}");
        }
        if start.elapsed() > deadline {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return ChildExit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if libc::WIFEXITED(status) {
        ChildExit::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ChildExit::Signaled(libc::WTERMSIG(status))
    } else {
        panic!("unexpected wait status {status:#x}")
    }
}

/// Machine code for a function `extern "C" fn() -> u64` that returns `v`.
///
/// x86-64: `movabs rax, v; ret` (11 bytes). aarch64: `movz`/`movk` x0 four times, `ret`
/// (20 bytes).
pub fn ret_imm64(v: u64) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut code = vec![0x48, 0xb8];
        code.extend_from_slice(&v.to_le_bytes());
        code.push(0xc3);
        code
    }
    #[cfg(target_arch = "aarch64")]
    {
        let mut code = Vec::with_capacity(20);
        for hw in 0..4u32 {
            let imm = ((v >> (16 * hw)) & 0xffff) as u32;
            let base: u32 = if hw == 0 { 0xd280_0000 } else { 0xf280_0000 };
            code.extend_from_slice(&(base | (hw << 21) | (imm << 5)).to_le_bytes());
        }
        code.extend_from_slice(&0xd65f_03c0u32.to_le_bytes());
        code
    }
}

/// Length of [`ret_imm64`]'s code.
pub fn ret_imm64_len() -> usize {
    ret_imm64(0).len()
}

/// Calls a program made from [`ret_imm64`] code.
pub fn call_u64(p: &progpack::Program) -> u64 {
    // SAFETY: callers pass programs whose image starts with `ret_imm64` code: a complete function
    // of this signature; the program is alive for the call.
    let f = unsafe { p.as_fn::<extern "C" fn() -> u64>() };
    f()
}

/// Calls the code at `addr` as `extern "C" fn() -> u64`.
///
/// # Safety
/// `addr` must be mapped executable and hold such a function or trap instructions.
pub unsafe fn call_addr(addr: usize) -> u64 {
    // SAFETY: guaranteed by the caller; function pointers are address-sized.
    let f: extern "C" fn() -> u64 = unsafe { std::mem::transmute::<usize, _>(addr) };
    f()
}

/// A small, fast, seeded generator (splitmix64) so fixed-seed tests replay exactly.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

/// x86-64 `mov eax, v; ret` (6 bytes): the smallest function `extern "C" fn() -> u32`.
#[cfg(target_arch = "x86_64")]
pub fn ret_imm32(v: u32) -> [u8; 6] {
    let b = v.to_le_bytes();
    [0xb8, b[0], b[1], b[2], b[3], 0xc3]
}

/// The process's executable or progpack-named mappings, as a sorted list to compare before and
/// after (what a leak of code memory would change).
pub fn code_mappings() -> Vec<MapEntry> {
    let mut v: Vec<MapEntry> = maps_snapshot()
        .into_iter()
        .filter(|m| m.executable() || m.path.contains("progpack"))
        .collect();
    v.sort_by_key(|m| (m.start, m.end));
    v
}
