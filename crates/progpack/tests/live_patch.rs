//! x86-64 live patching: `Program::patch` while other threads run the program.
//!
//! - the stress: threads call a function whose `call rel32` another thread retargets between
//!   two host functions 100,000 times, on `procmem` and `dualmap`; every call returns one of
//!   the two values, no thread dies, and the SIGTRAP handler did resume threads;
//! - the handler never swallows a trap that is not a patch's (a real `int3`, a patched-in
//!   `int3`, freed patched code, `raise(SIGTRAP)`): checked in child processes, where the
//!   default action must still kill, and a handler installed before progpack's still runs;
//! - `nop5` <-> `call rel32` and `jmp rel32` retargeting, decoded with iced-x86 after each
//!   patch;
//! - bad patches are typed errors and write nothing.
#![cfg(target_arch = "x86_64")]

mod support;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use progpack::patch::{threads_resumed, MAX_PATCH};
use progpack::{Allocator, BackendChoice, CodeRange, Config, Error, Program};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use support::{run_in_child, ChildExit};

type Fn0 = extern "C" fn() -> u32;

extern "C" fn host_one() -> u32 {
    0x1111
}

extern "C" fn host_two() -> u32 {
    0x2222
}

fn addr_of(f: Fn0) -> usize {
    f as usize
}

/// An allocator with packs within `rel32` reach of this binary's functions.
fn near_host(backend: BackendChoice) -> Allocator {
    Allocator::new(
        Config::default()
            .backend(backend)
            .code_range(CodeRange::near_this_binary()),
    )
    .expect("allocator near this binary")
}

/// The 5 bytes of `call rel32` (or `jmp rel32` with `op = 0xe9`) at `at` to `target`.
fn rel32(op: u8, at: usize, target: usize) -> [u8; 5] {
    let rel = i32::try_from(target as i64 - (at as i64 + 5)).expect("target within rel32 reach");
    let r = rel.to_le_bytes();
    [op, r[0], r[1], r[2], r[3]]
}

/// Offset of the call site in [`caller`].
const SITE: usize = 4;

/// `sub rsp, 8; call rel32 target; add rsp, 8; ret`: returns what `target` returns.
fn caller(alloc: &Allocator, target: usize) -> Program {
    let mut d = alloc.draft(14, 16).unwrap();
    let at = d.exec_addr();
    let mut code = vec![0x48, 0x83, 0xec, 0x08];
    code.extend_from_slice(&rel32(0xe8, at + SITE, target));
    code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xc3]);
    d.image_mut().copy_from_slice(&code);
    d.finalize().unwrap()
}

/// The first instruction at `offset` of `p`, decoded at its real address.
fn decode_at(p: &Program, offset: usize) -> iced_x86::Instruction {
    let mut dec = Decoder::with_ip(
        64,
        &p.bytes()[offset..],
        (p.addr() + offset) as u64,
        DecoderOptions::NONE,
    );
    dec.decode()
}

/// One stress at a time: [`threads_resumed`] counts for the whole process, and only the
/// stresses have threads running the code they patch.
static STRESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Threads call `caller` while this thread retargets its call `patches` times; returns the
/// calls made per value. Panics if a call returns anything else.
fn retarget_under_calls(backend: BackendChoice, patches: usize) -> (u64, u64) {
    let _one_stress_at_a_time = STRESS.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("{backend:?}");
    let alloc = near_host(backend);
    // Taken once: the compiler may emit a function in more than one codegen unit, so two
    // `host_one as usize` in different places can differ.
    let (one, two) = (addr_of(host_one), addr_of(host_two));
    let mut p = caller(&alloc, one);
    // SAFETY: `caller` emits a complete `extern "C" fn() -> u32`, before and after each patch.
    let f = unsafe { p.as_fn::<Fn0>() };
    let stop = AtomicBool::new(false);
    let (ones, twos, others) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let resumed_before = threads_resumed();
    let wx_seen = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match f() {
                        0x1111 => ones.fetch_add(1, Ordering::Relaxed),
                        0x2222 => twos.fetch_add(1, Ordering::Relaxed),
                        _ => others.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let targets = [two, one];
        for i in 0..patches {
            let at = p.addr() + SITE;
            p.patch(SITE, &rel32(0xe8, at, targets[i % 2])).unwrap();
            if i % 20_000 == 0 {
                wx_seen.fetch_add(support::wx_mappings().len(), Ordering::Relaxed);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        others.load(Ordering::Relaxed),
        0,
        "a call returned neither value"
    );
    assert_eq!(
        wx_seen.load(Ordering::Relaxed),
        0,
        "a writable+executable mapping appeared"
    );
    // `patches` is even: the last patch put host_one back.
    assert_eq!(decode_at(&p, SITE).near_branch_target(), one as u64);
    assert_eq!(f(), 0x1111);
    alloc.check_invariants().unwrap();
    let resumed = threads_resumed() - resumed_before;
    eprintln!(
        "{name}: {patches} patches; calls {} + {}; threads resumed from a temporary int3: {resumed}",
        ones.load(Ordering::Relaxed),
        twos.load(Ordering::Relaxed)
    );
    assert!(
        resumed > 0,
        "{name}: no thread ever met a temporary int3: the protocol was not exercised"
    );
    (ones.load(Ordering::Relaxed), twos.load(Ordering::Relaxed))
}

#[test]
fn retargeting_a_call_100000_times_under_running_threads_procmem() {
    let (ones, twos) = retarget_under_calls(BackendChoice::ProcMem, 100_000);
    assert!(ones > 0 && twos > 0, "ones {ones}, twos {twos}");
}

#[test]
fn retargeting_a_call_100000_times_under_running_threads_dualmap() {
    let (ones, twos) = retarget_under_calls(BackendChoice::DualMap, 100_000);
    assert!(ones > 0 && twos > 0, "ones {ones}, twos {twos}");
}

#[test]
fn retargeting_a_call_100000_times_under_running_threads_dualmap_per_write() {
    let (ones, twos) = retarget_under_calls(BackendChoice::DualMapPerWrite, 100_000);
    assert!(ones > 0 && twos > 0, "ones {ones}, twos {twos}");
}

/// A 5-byte NOP (`nop dword [rax + rax*1 + 0]`).
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

static BUMPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn bump() -> u32 {
    BUMPS.fetch_add(1, Ordering::Relaxed);
    0
}

#[test]
fn nop5_and_call_swap_and_decode() {
    for backend in [BackendChoice::ProcMem, BackendChoice::DualMap] {
        let alloc = near_host(backend);
        // sub rsp, 8; nop5; add rsp, 8; mov eax, 7; ret
        let mut d = alloc.draft(19, 16).unwrap();
        let mut code = vec![0x48, 0x83, 0xec, 0x08];
        code.extend_from_slice(&NOP5);
        code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xb8, 7, 0, 0, 0, 0xc3]);
        d.image_mut().copy_from_slice(&code);
        let mut p = d.finalize().unwrap();
        // SAFETY: a complete `extern "C" fn() -> u32` whatever the slot holds.
        let f = unsafe { p.as_fn::<Fn0>() };
        let bump_at = bump as Fn0 as usize;
        let call = rel32(0xe8, p.addr() + SITE, bump_at);
        for round in 0..200u64 {
            let before = BUMPS.load(Ordering::Relaxed);
            p.patch(SITE, &call).unwrap();
            let i = decode_at(&p, SITE);
            assert_eq!(
                (i.mnemonic(), i.len()),
                (Mnemonic::Call, 5),
                "round {round}"
            );
            assert_eq!(i.near_branch_target(), bump_at as u64);
            assert_eq!(f(), 7);
            assert_eq!(BUMPS.load(Ordering::Relaxed), before + 1);

            p.patch(SITE, &NOP5).unwrap();
            let i = decode_at(&p, SITE);
            assert_eq!((i.mnemonic(), i.len()), (Mnemonic::Nop, 5), "round {round}");
            assert_eq!(f(), 7);
            assert_eq!(BUMPS.load(Ordering::Relaxed), before + 1);
            // The rest of the function is untouched.
            assert_eq!(&p.bytes()[..SITE], &code[..SITE]);
            assert_eq!(&p.bytes()[SITE + 5..], &code[SITE + 5..]);
        }
        alloc.check_invariants().unwrap();
    }
}

/// `mov eax, v; ret` as its own program.
fn ret_program(alloc: &Allocator, v: u32) -> Program {
    let mut d = alloc.draft(6, 16).unwrap();
    let b = v.to_le_bytes();
    d.image_mut()
        .copy_from_slice(&[0xb8, b[0], b[1], b[2], b[3], 0xc3]);
    d.finalize().unwrap()
}

#[test]
fn jmp_rel32_retargets_between_programs_and_decodes() {
    for backend in [BackendChoice::ProcMem, BackendChoice::DualMap] {
        let alloc = Allocator::new(Config::default().backend(backend)).unwrap();
        let targets: Vec<Program> = (0..8).map(|v| ret_program(&alloc, 100 + v)).collect();
        let mut d = alloc.draft(5, 16).unwrap();
        let at = d.exec_addr();
        d.image_mut()
            .copy_from_slice(&rel32(0xe9, at, targets[0].addr()));
        let mut jump = d.finalize().unwrap();
        // SAFETY: a tail jump to an `extern "C" fn() -> u32`, before and after each patch.
        let f = unsafe { jump.as_fn::<Fn0>() };
        assert_eq!(f(), 100);
        for k in 0..400usize {
            let t = &targets[(k * 5 + 3) % targets.len()];
            jump.patch(0, &rel32(0xe9, jump.addr(), t.addr())).unwrap();
            let i = decode_at(&jump, 0);
            assert_eq!((i.mnemonic(), i.len()), (Mnemonic::Jmp, 5));
            assert_eq!(i.near_branch_target(), t.addr() as u64);
            // SAFETY: `t` is a live `extern "C" fn() -> u32`.
            assert_eq!(f(), unsafe { t.as_fn::<Fn0>() }());
        }
        alloc.check_invariants().unwrap();
    }
}

#[test]
fn one_byte_and_first_byte_only_patches() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = ret_program(&alloc, 5);
    // SAFETY: `mov eax, imm32; ret` before and after.
    let f = unsafe { p.as_fn::<Fn0>() };
    p.patch(1, &[9]).unwrap(); // the immediate's low byte
    assert_eq!(f(), 9);
    assert_eq!(p.bytes(), &[0xb8, 9, 0, 0, 0, 0xc3]);
    // Same bytes: nothing to do.
    p.patch(0, &[0xb8, 9, 0, 0, 0]).unwrap();
    assert_eq!(f(), 9);
    // Only the first byte differs: `mov eax, 9` -> `mov ecx, 9` (eax then holds whatever).
    p.patch(0, &[0xb9, 9, 0, 0, 0]).unwrap();
    assert_eq!(p.bytes()[0], 0xb9);
    p.patch(0, &[0xb8, 0x34, 0x12, 0, 0]).unwrap();
    assert_eq!(f(), 0x1234);
}

#[test]
fn bad_patches_are_typed_errors_and_write_nothing() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = ret_program(&alloc, 5);
    let before = p.bytes().to_vec();
    assert!(matches!(p.patch(0, &[]), Err(Error::EmptyPatch)));
    assert!(matches!(
        p.patch(6, &[0x90]),
        Err(Error::PatchOutOfRange {
            offset: 6,
            len: 1,
            program_len: 6
        })
    ));
    assert!(matches!(
        p.patch(usize::MAX, &[0x90]),
        Err(Error::PatchOutOfRange { .. })
    ));
    assert!(matches!(
        p.patch(4, &[0x90, 0x90, 0x90]),
        Err(Error::PatchOutOfRange {
            offset: 4,
            len: 3,
            ..
        })
    ));
    let long = ret_program_of_len(&alloc, 64);
    let mut long = long;
    let long_before = long.bytes().to_vec();
    assert!(matches!(
        long.patch(0, &[0x90; MAX_PATCH + 1]),
        Err(Error::PatchTooLong { len: 17, max: 16 })
    ));
    assert_eq!(long.bytes(), long_before.as_slice());
    assert_eq!(p.bytes(), before.as_slice());
    // SAFETY: no thread runs `p`.
    unsafe {
        assert!(matches!(p.patch_quiescent(0, &[]), Err(Error::EmptyPatch)));
        assert!(matches!(
            p.patch_quiescent(1, &[0x90; 6]),
            Err(Error::PatchOutOfRange { .. })
        ));
    }
    assert_eq!(p.bytes(), before.as_slice());
    alloc.check_invariants().unwrap();
}

/// A program of `len` bytes: `mov eax, 1; ret` then NOPs.
fn ret_program_of_len(alloc: &Allocator, len: usize) -> Program {
    let mut d = alloc.draft(len, 16).unwrap();
    d.image_mut().fill(0x90);
    d.image_mut()[..6].copy_from_slice(&[0xb8, 1, 0, 0, 0, 0xc3]);
    d.finalize().unwrap()
}

#[test]
fn quiescent_patches_rewrite_many_instructions() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = ret_program_of_len(&alloc, 64);
    // xor eax, eax; add eax, 20; add eax, 22; ret
    let body = [0x31, 0xc0, 0x83, 0xc0, 20, 0x83, 0xc0, 22, 0xc3];
    // SAFETY: no other thread runs `p`; the new bytes are a complete function.
    unsafe { p.patch_quiescent(0, &body) }.unwrap();
    assert_eq!(&p.bytes()[..body.len()], &body);
    // SAFETY: as above.
    assert_eq!(unsafe { p.as_fn::<Fn0>() }(), 42);
    alloc.check_invariants().unwrap();
}

#[test]
fn a_program_larger_than_a_pack_can_be_patched() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let mut p = ret_program_of_len(&alloc, (2 << 20) + 100);
    assert!(p.is_dedicated());
    // SAFETY: `mov eax, imm32; ret` before and after.
    let f = unsafe { p.as_fn::<Fn0>() };
    p.patch(0, &[0xb8, 0x78, 0x56, 0x34, 0x12]).unwrap();
    assert_eq!(f(), 0x1234_5678);
}

/// `int3; mov eax, 7; ret`: a real breakpoint, then a function returning 7.
fn real_int3(alloc: &Allocator) -> Program {
    let mut d = alloc.draft(7, 16).unwrap();
    d.image_mut()
        .copy_from_slice(&[0xcc, 0xb8, 7, 0, 0, 0, 0xc3]);
    d.finalize().unwrap()
}

/// Makes the process's first live patch (which installs the SIGTRAP handler) on a program of
/// its own.
fn install_handler_by_patching(alloc: &Allocator) {
    let mut p = ret_program(alloc, 1);
    p.patch(0, &[0xb8, 2, 0, 0, 0]).unwrap();
    // SAFETY: `mov eax, 2; ret`.
    assert_eq!(unsafe { p.as_fn::<Fn0>() }(), 2);
}

/// Runs `body` in a child process, which must die of SIGTRAP (the default action) before
/// `body` returns.
fn dies_of_sigtrap(body: impl FnOnce() -> Result<(), String>) {
    let out = run_in_child(body);
    assert_eq!(
        out.exit,
        ChildExit::Signaled(libc::SIGTRAP),
        "{}",
        out.message
    );
}

#[test]
fn a_real_int3_still_takes_the_default_action() {
    dies_of_sigtrap(|| {
        let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
        install_handler_by_patching(&alloc);
        let p = real_int3(&alloc);
        // SAFETY: deliberately runs a breakpoint: the default action must kill the child.
        let _ = unsafe { p.as_fn::<Fn0>() }();
        Err("the int3 was swallowed".into())
    });
}

#[test]
fn an_int3_patched_in_is_a_real_breakpoint() {
    dies_of_sigtrap(|| {
        let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
        let mut p = ret_program(&alloc, 3);
        // The site goes through the trap protocol, and ends up holding a real int3.
        p.patch(0, &[0xcc, 0x90, 0x90, 0x90, 0x90])
            .map_err(|e| e.to_string())?;
        // SAFETY: deliberately runs a breakpoint: the default action must kill the child.
        let _ = unsafe { p.as_fn::<Fn0>() }();
        Err("the int3 was swallowed".into())
    });
}

#[test]
fn freed_patched_code_still_traps() {
    dies_of_sigtrap(|| {
        let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
        let mut p = ret_program(&alloc, 3);
        p.patch(0, &[0xb8, 4, 0, 0, 0]).map_err(|e| e.to_string())?;
        // SAFETY: `mov eax, 4; ret`, then deliberately called after it was freed.
        let f = unsafe { p.as_fn::<Fn0>() };
        if f() != 4 {
            return Err("patch did not land".into());
        }
        drop(p);
        f();
        Err("freed code ran".into())
    });
}

#[test]
fn a_sigtrap_sent_by_raise_takes_the_default_action() {
    dies_of_sigtrap(|| {
        let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
        install_handler_by_patching(&alloc);
        // SAFETY: raises a signal whose default action ends the child.
        unsafe { libc::raise(libc::SIGTRAP) };
        Err("SIGTRAP was swallowed".into())
    });
}

static EARLIER_HANDLER_RAN: AtomicU64 = AtomicU64::new(0);

extern "C" fn earlier_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    EARLIER_HANDLER_RAN.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_handler_installed_before_progpacks_still_gets_real_traps() {
    let out = run_in_child(|| {
        // SAFETY: a zeroed sigaction is valid; the handler only bumps an atomic. Returning
        // from it resumes after the int3.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = earlier_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            if libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()) != 0 {
                return Err("sigaction failed".into());
            }
        }
        let alloc = Allocator::new(Config::default()).map_err(|e| e.to_string())?;
        install_handler_by_patching(&alloc);
        let p = real_int3(&alloc);
        // SAFETY: the int3 goes to `earlier_handler`, which returns; then `mov eax, 7; ret`.
        let got = unsafe { p.as_fn::<Fn0>() }();
        let ran = EARLIER_HANDLER_RAN.load(Ordering::Relaxed);
        if (got, ran) != (7, 1) {
            return Err(format!("returned {got}, earlier handler ran {ran} times"));
        }
        Ok(())
    });
    out.assert_ok();
}
