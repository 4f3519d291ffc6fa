//! W^X, deterministically: a child process installs a seccomp filter that kills it on any
//! `mmap`, `mprotect` or `pkey_mprotect` asking for writable+executable memory
//! ([`support::seccomp`]), then runs every kind of load and free on every backend, with and
//! without a code range, and forks; it must exit cleanly. Sampling `/proc/self/maps`
//! (`wx_scan.rs`) can miss a brief window; this cannot: the request itself is fatal.
//!
//! `dualmap-per-write` is also run under a filter that refuses every shared writable `mmap`:
//! it writes its `memfd` with `pwrite` and never maps a writable view, not even for a moment.
//!
//! The filter is proven first: the same child asking once for a read+write+execute page with
//! each of the three calls dies of SIGSYS, while read+write and read+execute requests pass.
//! (The eBPF JIT runs under the same filter in progpack-bpf's tests.)

mod support;

use progpack::{Allocator, BackendChoice, CodeRange, Config, Error, Program};
use support::seccomp::{install_kill_on_wx, install_refuse_shared_writable_mmap, request_wx};
use support::{call_u64, ret_imm64, ret_imm64_len, run_in_child, ChildExit};

const PACK: usize = 64 << 10;

#[test]
fn the_filter_kills_wx_requests_and_nothing_else() {
    for call in ["mmap", "mprotect", "pkey_mprotect"] {
        let out = run_in_child(|| {
            install_kill_on_wx()?;
            Err(request_wx(call))
        });
        assert_eq!(
            out.exit,
            ChildExit::Signaled(libc::SIGSYS),
            "{call}: {}",
            out.message
        );
    }
    // Without the filter the same request is granted (so it does ask for W+X).
    let out = run_in_child(|| Err(request_wx("mprotect")));
    assert_eq!(out.exit, ChildExit::Exited(1));
    assert!(out.message.contains("returned 0"), "{}", out.message);
    // With the filter, read+write and read+execute requests pass.
    let out = run_in_child(|| {
        install_kill_on_wx()?;
        // SAFETY: a fresh private anonymous page, never executed.
        let ok = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            p != libc::MAP_FAILED && libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) == 0
        };
        if ok {
            Ok(())
        } else {
            Err("read+write or read+execute refused".into())
        }
    });
    out.assert_ok();
}

fn load(alloc: &Allocator, v: u64, len: usize) -> Result<Program, Error> {
    let mut d = alloc.draft(len, progpack::arch::TRAP.len())?;
    d.image_mut()[..ret_imm64_len()].copy_from_slice(&ret_imm64(v));
    d.finalize()
}

fn check(progs: &[(Program, u64)]) -> Result<usize, String> {
    for (p, v) in progs {
        if call_u64(p) != *v {
            return Err(format!("program {v} returned the wrong value"));
        }
    }
    Ok(progs.len())
}

/// Every way in and out of a pack, several rounds, so packs are mapped and released.
fn workload(alloc: &Allocator, seed: u64) -> Result<usize, String> {
    let e = |e: Error| e.to_string();
    let mut calls = 0;
    for round in 0..4u64 {
        let base = seed + round * 10_000;
        let mut progs: Vec<(Program, u64)> = Vec::new();
        for i in 0..300 {
            let v = base + i;
            progs.push((
                load(alloc, v, ret_imm64_len() + (i as usize % 200)).map_err(e)?,
                v,
            ));
        }
        let mut batch = alloc.batch();
        for i in 0..300 {
            let slot = batch.push(ret_imm64_len() + 8, 1).map_err(e)?;
            slot.image[..ret_imm64_len()].copy_from_slice(&ret_imm64(base + 1000 + i));
        }
        progs.extend(batch.finalize().map_err(e)?.into_iter().zip(base + 1000..));
        let drafts: Vec<_> = (0..50)
            .map(|i| {
                let mut d = alloc.draft(ret_imm64_len(), 1)?;
                d.image_mut().copy_from_slice(&ret_imm64(base + 2000 + i));
                Ok(d)
            })
            .collect::<Result<_, Error>>()
            .map_err(e)?;
        progs.extend(
            alloc
                .finalize_all(drafts)
                .map_err(e)?
                .into_iter()
                .zip(base + 2000..),
        );
        // A program larger than a pack gets a mapping of its own.
        progs.push((load(alloc, base + 3000, 2 * PACK).map_err(e)?, base + 3000));
        drop(alloc.draft(100, 1).map_err(e)?); // an unfinalized draft
        calls += check(&progs)?;
        // Free one by one, then the rest at once.
        let rest = progs.split_off(progs.len() / 2);
        drop(progs);
        calls += check(&rest)?;
        alloc.free_all(rest.into_iter().map(|(p, _)| p).collect());
    }
    alloc.check_invariants()?;
    Ok(calls)
}

/// `dualmap-per-write` maps no writable view at any time: every load, batch, free, growth and
/// new pack of the workload runs while a filter refuses each shared writable `mmap` (proven to
/// refuse one first).
#[test]
fn dualmap_per_write_never_maps_a_writable_view() {
    let out = run_in_child(|| {
        install_refuse_shared_writable_mmap()?;
        // The probe: a writable shared view of a memfd is refused with EPERM.
        // SAFETY: a fresh memfd of one page, mapped (if at all) only to be unmapped again.
        unsafe {
            let fd = libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 || libc::ftruncate(fd, 4096) != 0 {
                return Err("memfd setup failed".into());
            }
            let view = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            let errno = std::io::Error::last_os_error().raw_os_error();
            if view != libc::MAP_FAILED {
                libc::munmap(view, 4096);
                return Err("the filter let a shared writable view through".into());
            }
            if errno != Some(libc::EPERM) {
                return Err(format!("the probe failed with {errno:?}, not EPERM"));
            }
            libc::close(fd);
        }
        let cfg = Config::default()
            .backend(BackendChoice::DualMapPerWrite)
            .pack_size(PACK)
            .reserve_packs(0);
        let alloc = Allocator::new(cfg).map_err(|e| e.to_string())?;
        let calls = workload(&alloc, 1)?;
        if calls == 0 {
            return Err("no program was called".into());
        }
        Ok(())
    });
    out.assert_ok();
}

fn under_filter(backend: BackendChoice, code_range: bool) -> Result<String, String> {
    install_kill_on_wx()?;
    let mut cfg = Config::default()
        .backend(backend.clone())
        .pack_size(PACK)
        .reserve_packs(0);
    if code_range {
        cfg = cfg.code_range(CodeRange::near_this_binary().size(64 * PACK));
    }
    let alloc = Allocator::new(cfg.clone()).map_err(|e| e.to_string())?;
    let mut calls = workload(&alloc, 1)?;
    let mut kept: Vec<(Program, u64)> = (0..100)
        .map(|v| load(&alloc, 50_000 + v, 40).map(|p| (p, 50_000 + v)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // fork: the child (under the same filter) frees its inherited programs, loads through the
    // inherited allocator (refused in inherited dualmap packs) and through a fresh one.
    let child = run_in_child(|| {
        drop(std::mem::take(&mut kept));
        let mut loaded = 0;
        for v in 0..3000 {
            match load(&alloc, 60_000 + v, 40) {
                Ok(p) if call_u64(&p) == 60_000 + v => loaded += 1,
                Ok(_) => return Err("wrong value in the child".into()),
                Err(Error::Forked { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if loaded == 0 {
            return Err("the child loaded nothing".into());
        }
        let fresh = Allocator::new(cfg).map_err(|e| e.to_string())?;
        workload(&fresh, 70_000).map(drop)
    });
    if child.exit != ChildExit::Exited(0) {
        return Err(format!("forked child: {:?} {}", child.exit, child.message));
    }
    calls += check(&kept)?;
    drop(kept);
    calls += workload(&alloc, 90_000)?;
    Ok(format!("{calls} calls"))
}

#[test]
fn progpack_never_asks_for_writable_and_executable_memory() {
    for backend in [
        BackendChoice::ProcMem,
        BackendChoice::ProcMemPerWrite,
        BackendChoice::DualMap,
        BackendChoice::DualMapPerWrite,
    ] {
        for code_range in [false, true] {
            let out = run_in_child(|| under_filter(backend.clone(), code_range).and_then(Err));
            assert_eq!(
                out.exit,
                ChildExit::Exited(1),
                "{backend:?}, code range {code_range}: {}",
                out.message
            );
            assert!(
                out.message.ends_with(" calls"),
                "{backend:?}, code range {code_range}: {}",
                out.message
            );
            eprintln!("{backend:?}, code range {code_range}: {}", out.message);
        }
    }
}
