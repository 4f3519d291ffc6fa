//! A SIGTRAP handler that turns a trap at the first instruction a call executes into a return
//! of [`SENTINEL`], recording where the trap instruction was. With it, one process can call
//! thousands of freed or hole addresses and check each traps exactly there, without a child
//! per address (and without needing the code to be inherited by a child: `dualmap` packs are
//! not).
//!
//! Install it only in a child process ([`install`]): it changes how the process reacts to
//! SIGTRAP. x86-64 (`int3`, RIP past it; the return address is at RSP) and aarch64 (`brk`, PC
//! at it; the return address is in LR) are handled.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What a call that trapped returns.
pub const SENTINEL: u64 = 0x7a4b_7a4b_7a4b_7a4b;
/// Address of the last trap instruction hit.
pub static LAST_TRAP: AtomicU64 = AtomicU64::new(0);
/// Number of traps handled.
pub static TRAPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_trap(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext for SA_SIGINFO handlers. The trapping code
    // was entered by a call and executed one trap instruction and nothing else, so the return
    // address is where the ABI put it; reading it and adjusting the saved registers is all we
    // do (atomics and register edits: async-signal-safe).
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        #[cfg(target_arch = "x86_64")]
        {
            let g = &mut (*uc).uc_mcontext.gregs;
            let rip = g[libc::REG_RIP as usize] as u64;
            LAST_TRAP.store(rip - 1, Ordering::SeqCst); // int3 is one byte; RIP is past it
            let rsp = g[libc::REG_RSP as usize] as u64;
            let ret = *(rsp as *const u64);
            g[libc::REG_RIP as usize] = ret as i64;
            g[libc::REG_RSP as usize] = (rsp + 8) as i64;
            g[libc::REG_RAX as usize] = SENTINEL as i64;
        }
        #[cfg(target_arch = "aarch64")]
        {
            let m = &mut (*uc).uc_mcontext;
            LAST_TRAP.store(m.pc, Ordering::SeqCst); // brk: PC is the instruction itself
            m.pc = m.regs[30];
            m.regs[0] = SENTINEL;
        }
        TRAPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Installs the handler (in a child only).
pub fn install() {
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO; the handler is
    // async-signal-safe (atomics and register edits only).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_trap as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

/// Calls `addr` (after [`install`]); `Ok(())` if it trapped exactly there, else what happened.
/// `what` names the address in the error.
///
/// # Safety
/// `addr` must be mapped executable and hold trap instructions or a complete function of type
/// `extern "C" fn() -> u64` (e.g. stale `ret_imm64` code, which is what a wrong allocator would
/// leave there).
pub unsafe fn expect_trap_at(addr: usize, what: &str) -> Result<(), String> {
    let before = TRAPS.load(Ordering::SeqCst);
    // SAFETY: guaranteed by the caller.
    let got = unsafe { super::call_addr(addr) };
    if got != SENTINEL || TRAPS.load(Ordering::SeqCst) != before + 1 {
        return Err(format!(
            "calling {what} {addr:#x} returned {got:#x} without trapping"
        ));
    }
    let at = LAST_TRAP.load(Ordering::SeqCst) as usize;
    if at != addr {
        return Err(format!("calling {what} {addr:#x} trapped at {at:#x}"));
    }
    Ok(())
}
