//! procmem forbidden: when writing `/proc/self/mem` fails, `detect()` falls back to dualmap and
//! says why, and an explicit procmem request is a clear error. Three real ways to forbid it,
//! each in a forked child (they cannot be undone):
//!
//! - a private mount namespace with `/dev/null` bind-mounted over `/proc/<pid>/mem` and
//!   remounted `nodev`: opening it fails (`EACCES`), as in sandboxes that mask the file;
//! - the same without `nodev`: opening and writing succeed but nothing lands (writes go to
//!   `/dev/null`), which only the probe's read-back can catch;
//! - a seccomp filter that fails `pwrite64`/`pwritev`/`pwritev2` with `EPERM`, as sandboxes that
//!   filter system calls do.
//!
//! The mount variants need `CAP_SYS_ADMIN` (root here); without it they say so and pass
//! vacuously, and the seccomp variant, which needs no privilege, still runs.

mod support;

use progpack::{backend, Allocator, BackendChoice, Config};
use std::ffi::CString;
use support::{call_u64, ret_imm64, run_in_child, ChildExit};

/// What every variant checks once procmem is forbidden in this process.
fn falls_back() -> Result<String, String> {
    let d = backend::detect().map_err(|e| format!("detect failed: {e}"))?;
    if d.backend.name() != "dualmap" {
        return Err(format!("detect picked {} ({})", d.backend.name(), d.report));
    }
    if !d.report.contains("procmem:") || !d.report.contains("dualmap: ok") {
        return Err(format!("the report does not say why: {}", d.report));
    }
    let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
    if alloc.backend_name() != "dualmap" || !alloc.backend_report().contains("procmem:") {
        return Err(format!(
            "allocator: {} / {}",
            alloc.backend_name(),
            alloc.backend_report()
        ));
    }
    let mut progs = Vec::new();
    for v in 0..100u64 {
        let mut dr = alloc.draft(32, 16).map_err(|e| e.to_string())?;
        dr.image_mut()[..ret_imm64(v).len()].copy_from_slice(&ret_imm64(v));
        progs.push((dr.finalize().map_err(|e| e.to_string())?, v));
    }
    for (p, v) in &progs {
        if call_u64(p) != *v {
            return Err("wrong result on the fallback backend".into());
        }
    }
    alloc.check_invariants()?;
    let explicit = Allocator::new(Config::default().backend(BackendChoice::ProcMem));
    let err = match explicit {
        Ok(a) => return Err(format!("explicit procmem accepted: {}", a.backend_report())),
        Err(e) => e.to_string(),
    };
    if !(err.contains("/proc/self/mem") || err.contains("procmem")) {
        return Err(format!(
            "explicit procmem error does not say what failed: {err}"
        ));
    }
    // dualmap-per-write writes with pwrite where it can; here it must map a view per write.
    let per_write = Allocator::new(Config::default().backend(BackendChoice::DualMapPerWrite))
        .map_err(|e| e.to_string())?;
    let mut progs = Vec::new();
    for v in 0..100u64 {
        let mut dr = per_write.draft(32, 16).map_err(|e| e.to_string())?;
        dr.image_mut()[..ret_imm64(v).len()].copy_from_slice(&ret_imm64(v));
        progs.push((dr.finalize().map_err(|e| e.to_string())?, v));
    }
    for (p, v) in &progs {
        if call_u64(p) != *v {
            return Err("wrong result on dualmap-per-write without pwrite".into());
        }
    }
    progs.truncate(50); // frees trap-fill through a view too
    per_write.check_invariants()?;
    Ok(format!("report: {}; explicit: {err}", d.report))
}

fn check_os(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Enters a private mount namespace and bind-mounts `/dev/null` over this process's `mem`
/// file; with `nodev`, opening it then fails. `Ok(false)` if namespaces are not permitted.
fn mask_proc_mem(nodev: bool) -> Result<bool, String> {
    // SAFETY: unshare and mount take no pointers we do not own; the strings outlive the calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Ok(false);
            }
            return Err(format!("unshare: {e}"));
        }
        let root = CString::new("/").expect("no NUL");
        check_os(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make / private",
        )?;
        let target = CString::new(format!("/proc/{}/mem", libc::getpid())).expect("no NUL");
        let null = CString::new("/dev/null").expect("no NUL");
        check_os(
            libc::mount(
                null.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            "bind /dev/null over /proc/<pid>/mem",
        )?;
        if nodev {
            check_os(
                libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV | libc::MS_RDONLY,
                    std::ptr::null(),
                ),
                "remount nodev",
            )?;
        }
    }
    Ok(true)
}

fn run_masked(nodev: bool, must_contain: &str) {
    let out = run_in_child(|| {
        if !mask_proc_mem(nodev)? {
            return Err("skipped: no permission for a mount namespace".into());
        }
        // The mask is real: /proc/self/mem cannot be used to write any more.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/mem");
        if nodev && f.is_ok() {
            return Err("the masked /proc/self/mem still opens".into());
        }
        falls_back().and_then(Err)
    });
    assert_eq!(out.exit, ChildExit::Exited(1), "{}", out.message);
    if out.message.starts_with("skipped") {
        eprintln!("{}", out.message);
        return;
    }
    assert!(out.message.starts_with("report:"), "{}", out.message);
    assert!(out.message.contains(must_contain), "{}", out.message);
    eprintln!("{}", out.message);
}

#[test]
fn proc_mem_cannot_be_opened() {
    run_masked(true, "open /proc/self/mem");
}

#[test]
fn proc_mem_writes_vanish() {
    run_masked(false, "did not land");
}

#[test]
fn pwrite_filtered_by_seccomp() {
    let out = run_in_child(|| {
        support::seccomp::install_refuse_pwrite()?;
        // The filter is real: a pwrite to a pipe fails with EPERM.
        let mut fds = [0; 2];
        // SAFETY: pipe fills two ints; pwrite on a pipe would fail with ESPIPE if not filtered.
        let rc = unsafe {
            libc::pipe(fds.as_mut_ptr());
            libc::pwrite(fds[1], b"x".as_ptr().cast(), 1, 0)
        };
        let e = std::io::Error::last_os_error();
        if rc != -1 || e.raw_os_error() != Some(libc::EPERM) {
            return Err(format!("the filter did not apply: {rc} {e}"));
        }
        falls_back().and_then(Err)
    });
    assert_eq!(out.exit, ChildExit::Exited(1), "{}", out.message);
    assert!(out.message.starts_with("report:"), "{}", out.message);
    assert!(
        out.message.contains("Operation not permitted"),
        "{}",
        out.message
    );
    eprintln!("{}", out.message);
}
