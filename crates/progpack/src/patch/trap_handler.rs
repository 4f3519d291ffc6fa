//! The SIGTRAP handler that lets a thread survive the temporary `int3` of a live patch.
//!
//! Installed once per process, the first time a patch needs the protocol. It chains: the
//! disposition it replaced (another handler, or the default action) gets every trap that is
//! not ours, so a program that executes a real `int3` still dumps core and terminates, or
//! reaches its debugger's handler.
//!
//! A trap is ours when it is an `int3` (`si_code == SI_KERNEL`, the program counter one past
//! the trap byte) at an address `a` where
//! - a patch is in progress right now ([`State::begin`] .. [`State::end`]): the handler waits
//!   until that patch ends (spinning for a few microseconds, about a patch's length, then
//!   sleeping on a futex), then resumes the thread at `a`, where it runs the new instruction;
//!   or
//! - a patch has been in progress (`a` is in [`super::sites`]) and the byte at `a` is no longer
//!   `int3`: the trap was a temporary `int3` whose handler ran late (the thread was
//!   descheduled between the trap and the handler). It resumes at `a` too.
//!
//! Everything else, including an `int3` at a patch site that still holds `int3` (a real
//! breakpoint a patch put there, or freed code), goes to the previous disposition.
//!
//! Async-signal-safety: the handler reads atomics and the lock-free site table, makes raw
//! system calls (`futex`, `process_vm_readv`, `gettid`; `clock_gettime` through the vDSO),
//! saves and restores `errno`, and never allocates or locks. A sequence number (`seq`, bumped when a patch begins and ends)
//! makes its reads consistent: if a patch began or ended while it was deciding, it decides
//! again.
#![allow(unsafe_code)] // installs a signal handler and reads its machine context

use super::sites::Sites;
use crate::backend::sys::{self, SigAction};
use crate::error::{Errno, Error, Result};
use parking_lot::Mutex;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The x86 trap byte (`int3`).
const INT3: u8 = 0xcc;

/// The patching state of one process. A `fork()` child starts its own (see [`state`]): the
/// parent's other threads do not exist there, so neither do the locks they held, the patch
/// they were making, or the traps they were in.
pub(crate) struct State {
    /// [`sys::process_epoch`] of the process this state belongs to.
    epoch: u64,
    /// Serializes every patch of the process.
    pub(crate) serial: Mutex<()>,
    /// The patch sites of live programs.
    pub(crate) sites: Sites,
    /// Address of the instruction being patched, 0 when none (patches are serialized).
    active: AtomicUsize,
    /// Bumped when a patch begins and when it ends; handlers sleep on it (a futex word).
    seq: AtomicU32,
    /// Thread id of the thread running the current patch (it must never wait for itself).
    patcher: AtomicI32,
    /// Threads waiting in the handler for a patch to end. The next patch of the same
    /// instruction lets them through first (see [`State::begin`]).
    waiting: AtomicUsize,
    /// Address of the last patch that ended.
    last: AtomicUsize,
    /// Whether registering for `membarrier` SYNC_CORE worked (a child registers again: the
    /// registration belongs to the address space).
    sync_core: OnceLock<std::result::Result<(), (&'static str, i32)>>,
}

/// How long a thread stopped by a patch spins before it sleeps, in nanoseconds.
const SPIN_NS: u64 = 5_000;

/// How long a patch waits at most for the threads the previous patch stopped to go on.
const LET_WAITERS_PASS: std::time::Duration = std::time::Duration::from_micros(200);

/// This process's [`State`] (null until the first patch; a child still sees its parent's).
static STATE: AtomicPtr<State> = AtomicPtr::new(std::ptr::null_mut());

/// The calling process's patching state, made on first use in each process. States are never
/// freed (a signal handler may hold one); a child leaks its parent's copy, once.
pub(crate) fn state() -> &'static State {
    let epoch = sys::process_epoch();
    loop {
        let now = STATE.load(Ordering::Acquire);
        // SAFETY: a published state is never freed.
        if let Some(st) = unsafe { now.as_ref() } {
            if st.epoch == epoch {
                return st;
            }
        }
        let fresh = Box::into_raw(Box::new(State {
            epoch,
            serial: Mutex::new(()),
            sites: Sites::new(),
            active: AtomicUsize::new(0),
            seq: AtomicU32::new(0),
            patcher: AtomicI32::new(0),
            waiting: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
            sync_core: OnceLock::new(),
        }));
        match STATE.compare_exchange(now, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published; never freed from now on.
            Ok(_) => return unsafe { &*fresh },
            // Another thread published one first: drop ours (never shared) and look again.
            // SAFETY: `fresh` came from `Box::into_raw` above and was not published.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// The state, from the signal handler: `None` if no patch was ever made in this process
/// (including a child whose parent's state is all there is). Async-signal-safe.
fn state_in_handler() -> Option<&'static State> {
    // SAFETY: a published state is never freed.
    let st = unsafe { STATE.load(Ordering::Acquire).as_ref() }?;
    sys::is_process_epoch_signal_safe(st.epoch).then_some(st)
}

/// Threads a temporary `int3` stopped and the handler resumed, since the process started.
pub(crate) static RESUMED: AtomicU64 = AtomicU64::new(0);
/// The disposition the handler replaced; unset only during installation.
static PREVIOUS: OnceLock<SigAction> = OnceLock::new();
/// Whether installing the handler worked (once: a child inherits the handler).
static INSTALLED: OnceLock<std::result::Result<(), (&'static str, i32)>> = OnceLock::new();

/// The parts of an [`Error::Os`] (which is not `Clone`), to remember a first answer.
fn as_parts(e: Error) -> (&'static str, i32) {
    match e {
        Error::Os { op, errno } => (op, errno.0),
        _ => ("live patch setup", 0),
    }
}

fn from_parts(&(op, errno): &(&'static str, i32)) -> Error {
    Error::Os {
        op,
        errno: Errno(errno),
    }
}

impl State {
    /// Registers the process for `membarrier` SYNC_CORE, once; later calls return the first
    /// call's answer.
    pub(crate) fn ensure_sync_core(&self) -> Result<()> {
        self.sync_core
            .get_or_init(|| sys::register_sync_core().map_err(as_parts))
            .as_ref()
            .map_err(from_parts)
            .copied()
    }

    /// Registers for `membarrier` SYNC_CORE and installs the handler, once per process;
    /// later calls return the first call's answer.
    pub(crate) fn ensure_installed(&self) -> Result<()> {
        self.ensure_sync_core()?;
        INSTALLED
            .get_or_init(|| {
                // SAFETY: `on_sigtrap` is async-signal-safe (see the module docs) and hands
                // every signal it does not handle to the disposition stored in PREVIOUS.
                let previous = unsafe { sys::install_signal_handler(libc::SIGTRAP, on_sigtrap) }
                    .map_err(as_parts)?;
                let _ = PREVIOUS.set(previous);
                Ok(())
            })
            .as_ref()
            .map_err(from_parts)
            .copied()
    }

    /// A patch of the instruction at `addr` begins: from now until [`State::end`], a thread
    /// that traps at `addr` waits. Call before writing the temporary `int3`, with `addr`
    /// already a site, holding `serial`.
    pub(crate) fn begin(&self, addr: usize) {
        // Threads the previous patch of this instruction stopped were woken when it ended,
        // but may not have run yet: give them the processor first (for a while at most), or
        // back-to-back patches of one instruction could trap them again before they ever pass
        // it. (Waiters of another instruction resume there: they need no wait.)
        // Spin first (a waiter that spins itself goes on within a microsecond), then yield
        // (a waiter on this core needs it).
        if self.last.load(Ordering::SeqCst) == addr {
            let start = std::time::Instant::now();
            while self.waiting.load(Ordering::SeqCst) > 0 {
                let waited = start.elapsed();
                if waited >= LET_WAITERS_PASS {
                    break;
                }
                if waited.as_nanos() < u128::from(SPIN_NS) {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        self.patcher.store(sys::thread_id(), Ordering::SeqCst);
        self.active.store(addr, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The patch is over (the instruction's first byte is final and every core has seen it):
    /// wakes the threads waiting in the handler, which resume at the instruction.
    pub(crate) fn end(&self) {
        self.last
            .store(self.active.load(Ordering::SeqCst), Ordering::SeqCst);
        self.active.store(0, Ordering::SeqCst);
        self.patcher.store(0, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&self.seq);
    }
}

/// What to do with a trap.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A temporary `int3` at this address: resume there.
    Resume(usize),
    /// Not ours: hand it to the previous disposition.
    Chain,
}

/// Decides about an `int3` trap whose trap byte was at `addr`.
fn judge(addr: usize) -> Verdict {
    let Some(st) = state_in_handler() else {
        return Verdict::Chain; // no patch was ever made in this process
    };
    loop {
        let seq = st.seq.load(Ordering::SeqCst);
        if st.active.load(Ordering::SeqCst) == addr {
            if st.patcher.load(Ordering::SeqCst) == sys::thread_id() {
                // The patching thread itself (from a handler of another signal): waiting for
                // its own patch would never end.
                return Verdict::Chain;
            }
            // A patch takes microseconds: spin for about that long, so the thread goes on the
            // moment it ends (waking from a futex can take longer than the patch), then sleep.
            st.waiting.fetch_add(1, Ordering::SeqCst);
            let spin_until = sys::monotonic_ns().saturating_add(SPIN_NS);
            while st.seq.load(Ordering::SeqCst) == seq && sys::monotonic_ns() < spin_until {
                std::hint::spin_loop();
            }
            sys::futex_wait(&st.seq, seq);
            st.waiting.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        if !st.sites.contains(addr) {
            // A patch that began after `seq` was read may have made `addr` a site: decide
            // again if so. Otherwise no patch ever put an `int3` here.
            if st.seq.load(Ordering::SeqCst) == seq {
                return Verdict::Chain;
            }
            continue;
        }
        let mut byte = [0u8];
        let readable = sys::read_own_memory(addr, &mut byte);
        if st.seq.load(Ordering::SeqCst) != seq {
            continue;
        }
        return if readable && byte[0] != INT3 {
            Verdict::Resume(addr)
        } else {
            Verdict::Chain
        };
    }
}

/// The SIGTRAP handler.
extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let _errno = sys::ErrnoGuard::save();
    // SAFETY: the kernel passes a valid siginfo to a SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // An `int3` (and only a trap the kernel raised: a signal sent with kill() is SI_USER).
    if code == libc::SI_KERNEL && !ctx.is_null() {
        // SAFETY: `ctx` is the kernel's ucontext for this signal.
        let pc = unsafe { sys::context_pc(ctx) };
        if let Verdict::Resume(at) = judge(pc.wrapping_sub(1)) {
            // SAFETY: `at` is the first byte of a whole instruction of a live program (the
            // patch site the thread was about to run).
            unsafe { sys::set_context_pc(ctx, at) };
            RESUMED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // SAFETY: we are the handler for `sig`, with the kernel's `info` and `ctx`. (PREVIOUS is
    // unset only while the handler is being installed: a trap then takes the default action,
    // as it would have without us.)
    unsafe { sys::chain_signal(PREVIOUS.get(), sig, info, ctx, code == libc::SI_KERNEL) }
}

/// Forgets the patch sites inside a program being dropped, before its bytes become traps and
/// its chunks can be reused: a trap there is no longer a patch's. (Called by the span's free,
/// which sits below the patching API: this file imports nothing above the packs.)
#[cold]
#[inline(never)]
pub(crate) fn forget_sites(addr: usize, len: usize) {
    state().sites.forget_range(addr, addr + len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn judge_resumes_only_at_sites_that_no_longer_hold_int3() {
        // Heap bytes stand in for code: `judge` only reads them.
        let code: Box<[u8; 4]> = Box::new([0x90, INT3, 0x90, 0x90]);
        let (nop, trap, other) = (
            &code[0] as *const u8 as usize,
            &code[1] as *const u8 as usize,
            &code[2] as *const u8 as usize,
        );
        let st = state();
        assert_eq!(judge(nop), Verdict::Chain, "not a site");
        st.sites.insert(nop);
        st.sites.insert(trap);
        // A late handler: the temporary int3 is gone, the instruction is whole again.
        assert_eq!(judge(nop), Verdict::Resume(nop));
        // A real int3 at a site stays a real trap.
        assert_eq!(judge(trap), Verdict::Chain);
        assert_eq!(judge(other), Verdict::Chain);
        st.sites.forget_range(nop, nop + 4);
        assert_eq!(judge(nop), Verdict::Chain, "forgotten with its program");
    }

    #[test]
    fn judge_waits_for_the_patch_in_progress() {
        // An atomic byte stands in for the instruction's first byte: `judge` reads it with
        // `process_vm_readv` while this thread "patches" it.
        static FIRST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(INT3);
        let at = FIRST.as_ptr() as usize;
        let st = state();
        st.sites.insert(at);
        let serial = st.serial.lock();
        st.begin(at);
        let judged = std::thread::spawn(move || judge(at));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !judged.is_finished(),
            "judge must wait while the patch is in progress"
        );
        FIRST.store(0xe8, Ordering::SeqCst); // the new first byte, last
        st.end();
        drop(serial);
        assert_eq!(judged.join().unwrap(), Verdict::Resume(at));
        // A patch that leaves a real int3 (a breakpoint): the waiter's trap is then real.
        FIRST.store(INT3, Ordering::SeqCst);
        assert_eq!(judge(at), Verdict::Chain);
        st.sites.forget_range(at, at + 1);
    }
}
