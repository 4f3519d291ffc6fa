//! What a helper sees of the running program: [`HelperContext`], and the per-program
//! environment it points to ([`ProgramEnv`]).
//!
//! # The helper ABI (both engines)
//!
//! A helper registered with [`Helpers::register_context`](crate::Helpers::register_context) is
//! an `extern "C" fn(r1, r2, r3, r4, r5, &mut HelperContext) -> r0`
//! ([`ContextHelperFn`](crate::helpers::ContextHelperFn)): with the System V calling
//! convention the context pointer is the sixth argument, in `r9`, so JIT code calls it exactly
//! like a plain five-argument helper after one `mov r9, [ctx + hctx]` (a plain helper ignores
//! `r9`). Before the call the JIT stores the program's r10 at offset 0 of the context
//! (`HelperContext::frame`); after a call to a context helper it reads the word at offset 8
//! (`HelperContext::stop`) and, if non-zero, ends the program at once (as the unwind helper
//! does), which is how `tail_call` leaves the current program.
//!
//! # Invariants
//! - A `HelperContext` lives on the host stack of the run that created it, for the whole run;
//!   it is only handed to helpers during that run.
//! - The regions it describes (input memory, stack, the environment's extra regions) are
//!   exactly those the engines allow, so a pointer a helper accepts through
//!   [`HelperContext::translate`] is one the program itself could have dereferenced.
#![allow(unsafe_code)]

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::insn::STACK_FRAME_SIZE;
use crate::maps::Map;
use crate::memory::{self, Region};

/// Most tail calls one run may make (the kernel's `MAX_TAIL_CALL_CNT`).
pub const MAX_TAIL_CALLS: u32 = 33;

/// Where `bpf_trace_printk` output goes.
pub type TraceSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Data shared by every run of a program: the maps it references (by index, see
/// [`crate::maps`]), the extra memory regions they contribute, and the host's data.
#[derive(Clone, Default)]
pub struct ProgramEnv {
    /// Extra regions the program may access (map value arenas, ring buffer data areas).
    pub(crate) regions: Vec<Region>,
    /// The maps helpers may resolve by handle.
    pub(crate) maps: Vec<Arc<Map>>,
    /// Host data helpers may read ([`HelperContext::host`]).
    pub(crate) host: Option<Arc<dyn Any + Send + Sync>>,
    /// Sink of `bpf_trace_printk` ([`HelperContext::trace`]).
    pub(crate) trace: Option<TraceSink>,
    /// Programs see virtual addresses, never host ones ([`crate::vaddr`]).
    pub(crate) hidden: bool,
}

impl fmt::Debug for ProgramEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramEnv")
            .field("regions", &self.regions)
            .field("maps", &self.maps)
            .field("host", &self.host.is_some())
            .field("trace", &self.trace.is_some())
            .field("hidden", &self.hidden)
            .finish()
    }
}

impl ProgramEnv {
    /// An environment without maps, host data or trace sink.
    pub const EMPTY: ProgramEnv = ProgramEnv {
        regions: Vec::new(),
        maps: Vec::new(),
        host: None,
        trace: None,
        hidden: false,
    };

    /// [`EMPTY`](Self::EMPTY), hiding host addresses.
    pub(crate) const EMPTY_HIDDEN: ProgramEnv = ProgramEnv {
        regions: Vec::new(),
        maps: Vec::new(),
        host: None,
        trace: None,
        hidden: true,
    };

    /// An environment without maps, host data or trace sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether programs see virtual addresses instead of host ones ([`crate::vaddr`]).
    pub fn hides_addresses(&self) -> bool {
        self.hidden
    }

    /// The extra regions (besides input memory and stack) runs may access.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Adds an extra region. The caller keeps its memory alive and initialised for as long as
    /// programs using this environment may run.
    ///
    /// # Safety
    /// `[region.start, region.start + region.len)` must be valid, initialised memory (writable
    /// if `region.writable`) that outlives every run with this environment, and may only be
    /// accessed concurrently through [`crate::memory`]'s shared accessors or by programs.
    pub unsafe fn add_region(&mut self, region: Region) {
        self.regions.push(region);
    }

    /// Makes `map` reachable by the programs loaded with this environment: helpers resolve
    /// its handle, and its values are a region both engines allow.
    pub fn add_map(&mut self, map: Arc<Map>) {
        if self.maps.iter().any(|m| Arc::ptr_eq(m, &map)) {
            return;
        }
        if let Some(r) = map.region() {
            // The arena belongs to `map`, which this environment now keeps alive.
            self.regions.push(r);
        }
        self.maps.push(map);
    }

    /// The maps of the environment.
    pub fn maps(&self) -> &[Arc<Map>] {
        &self.maps
    }

    /// The map whose handle is `handle`, among this environment's.
    pub fn map_by_handle(&self, handle: u64) -> Option<&Arc<Map>> {
        self.maps.iter().find(|m| m.handle() == handle)
    }

    /// Sets the host data helpers can reach with [`HelperContext::host`].
    pub fn set_host_data(&mut self, data: Arc<dyn Any + Send + Sync>) {
        self.host = Some(data);
    }

    /// Sets where `bpf_trace_printk` writes.
    pub fn set_trace_sink(&mut self, sink: TraceSink) {
        self.trace = Some(sink);
    }
}

/// The running program as a helper sees it. `#[repr(C)]`: JIT code writes
/// `frame` (offset 0) and reads `stop` (offset 8).
#[repr(C)]
pub struct HelperContext<'r> {
    /// The program's r10 at the current helper call: the live frames are
    /// `[frame - 512, stack_top)`. Written by the engine before each call.
    pub(crate) frame: u64,
    /// Non-zero: end the program as soon as the helper returns (set by [`Self::stop`]).
    pub(crate) stop: u64,
    /// The input memory (its real address, also when r1 is 0 because it is empty).
    pub(crate) mem: Region,
    /// Start of the stack region (empty region: `stack_start == stack_top`).
    pub(crate) stack_start: u64,
    /// End of the stack region (r10 of frame 0).
    pub(crate) stack_top: u64,
    /// The program's environment.
    pub(crate) env: &'r ProgramEnv,
    /// A program to continue with after this one stops (`tail_call`).
    pub(crate) tail_call: Option<Arc<crate::BpfProgram>>,
    /// Tail calls made so far in this run (this program is the `tail_calls`-th).
    pub(crate) tail_calls: u32,
}

/// Offset of [`HelperContext::frame`], written by JIT code.
pub(crate) const HCTX_FRAME: i32 = 0;
/// Offset of [`HelperContext::stop`], read by JIT code.
pub(crate) const HCTX_STOP: i32 = 8;
const _: () = {
    assert!(std::mem::offset_of!(HelperContext<'static>, frame) == HCTX_FRAME as usize);
    assert!(std::mem::offset_of!(HelperContext<'static>, stop) == HCTX_STOP as usize);
};

impl<'r> HelperContext<'r> {
    /// A context for a run over `mem` (`[mem_start, mem_start + mem_len)`) with the stack region
    /// `[stack_start, stack_top)`.
    pub(crate) fn new(
        mem_start: u64,
        mem_len: u64,
        stack_start: u64,
        stack_top: u64,
        env: &'r ProgramEnv,
    ) -> Self {
        HelperContext {
            frame: stack_top,
            stop: 0,
            mem: Region {
                start: mem_start,
                len: mem_len,
                writable: true,
            },
            stack_start,
            stack_top,
            env,
            tail_call: None,
            tail_calls: 0,
        }
    }

    /// The program's environment (its maps' regions, host data).
    pub fn env(&self) -> &'r ProgramEnv {
        self.env
    }

    /// Whether `[addr, addr + len)` is memory the program may access (for a store if `write`):
    /// the input memory, the live stack frames, or an extra region.
    pub fn check(&self, addr: u64, len: u64, write: bool) -> bool {
        self.translate(addr, len, write).is_some()
    }

    /// The host pointer for `[addr, addr + len)` if the program may access it (see
    /// [`check`](Self::check)), and whether it is shared memory (an extra region: access it
    /// with [`crate::memory`]'s shared accessors) rather than memory exclusive to this run.
    /// A zero-length range is never valid.
    pub fn translate(&self, addr: u64, len: u64, write: bool) -> Option<(*mut u8, bool)> {
        if len == 0 {
            return None;
        }
        let ptr = |a: u64| std::ptr::with_exposed_provenance_mut(a as usize);
        // Program addresses of the input and the stack: the host's, or fixed virtual ones.
        let (mem_base, stack_top) = if self.env.hidden {
            (crate::vaddr::INPUT, crate::vaddr::STACK_TOP)
        } else {
            (self.mem.start, self.stack_top)
        };
        let mem = Region {
            start: mem_base,
            ..self.mem
        };
        if mem.contains(addr, len) {
            return Some((ptr(self.mem.start + (addr - mem_base)), false));
        }
        let live = Region {
            start: self.frame.wrapping_sub(STACK_FRAME_SIZE as u64),
            len: stack_top.wrapping_sub(self.frame) + STACK_FRAME_SIZE as u64,
            writable: true,
        };
        let frames = stack_top.wrapping_sub(self.frame) + STACK_FRAME_SIZE as u64;
        if self.stack_top > self.stack_start
            && frames <= self.stack_top - self.stack_start
            && live.contains(addr, len)
        {
            return Some((ptr(self.stack_top - (stack_top - addr)), false));
        }
        if self.env.hidden {
            return crate::vaddr::extra_to_host(&self.env.regions, addr, len, write)
                .map(|(h, _)| (ptr(h), true));
        }
        memory::find(&self.env.regions, addr, len, write).map(|_| (ptr(addr), true))
    }

    /// The host address of program address `addr` of an extra region: `addr` itself, or its
    /// translation when the environment hides host addresses (0 if it lies in none). The
    /// inverse of [`expose`](Self::expose) for extra regions.
    pub fn host_of(&self, addr: u64) -> u64 {
        if !self.env.hidden {
            return addr;
        }
        crate::vaddr::extra_to_host(&self.env.regions, addr, 1, false).map_or(0, |(h, _)| h)
    }

    /// The address the program sees for host address `host` of its input, stack or extra
    /// regions: `host` itself, or its virtual address when the environment hides host
    /// addresses (0 if it lies in none of them). For helpers that return pointers.
    pub fn expose(&self, host: u64) -> u64 {
        if !self.env.hidden {
            return host;
        }
        if let Some(off) = host
            .checked_sub(self.mem.start)
            .filter(|&o| o < self.mem.len)
        {
            return crate::vaddr::INPUT + off;
        }
        if (self.stack_start..self.stack_top).contains(&host) {
            return crate::vaddr::STACK_TOP - (self.stack_top - host);
        }
        crate::vaddr::extra_to_virtual(&self.env.regions, host).unwrap_or(0)
    }

    /// Copies `dst.len()` bytes of program memory at `addr` into `dst`; false (and nothing
    /// copied) if the program could not read them.
    pub fn read(&self, addr: u64, dst: &mut [u8]) -> bool {
        let Some((p, shared)) = self.translate(addr, dst.len() as u64, false) else {
            return false;
        };
        if shared {
            // SAFETY: `translate` found the range inside an extra region, which stays valid for
            // the run (`add_region`'s contract) and is shared: read atomically.
            unsafe { memory::read_shared(p, dst) };
        } else {
            // SAFETY: the range lies in the run's input memory or live (initialised) stack
            // frames, both exclusive to this run and alive during the helper call; the
            // program is suspended in the call, so nothing else touches them.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        }
        true
    }

    /// Copies `src` into program memory at `addr`; false (and nothing written) if the program
    /// could not write there.
    pub fn write(&self, addr: u64, src: &[u8]) -> bool {
        let Some((p, shared)) = self.translate(addr, src.len() as u64, true) else {
            return false;
        };
        if shared {
            // SAFETY: as in `read`, for a writable extra region.
            unsafe { memory::write_shared(p, src) };
        } else {
            // SAFETY: as in `read`; both regions are writable.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        }
        true
    }

    /// The map named by `handle` (what `lddw` with `src = 1` loaded), if the program's
    /// environment has it.
    pub fn map(&self, handle: u64) -> Option<&'r Arc<Map>> {
        self.env.map_by_handle(handle)
    }

    /// The host data of the environment, if it has some of type `T`.
    pub fn host<T: Any>(&self) -> Option<&'r T> {
        self.env.host.as_deref()?.downcast_ref()
    }

    /// Writes a line to the environment's trace sink (discarded without one).
    pub fn trace(&self, line: &str) {
        if let Some(t) = &self.env.trace {
            t(line)
        }
    }

    /// Ends the program as soon as the current helper returns (r0 = 0, or the result of the
    /// tail-called program if one was set with [`tail_call`](Self::tail_call)).
    pub fn stop(&mut self) {
        self.stop = 1;
    }

    /// Ends the program when the helper returns and continues with `prog` over the same
    /// memory (its result becomes the run's result). Fails (returns false, nothing changes)
    /// once the run has made [`MAX_TAIL_CALLS`] tail calls, as in the kernel.
    pub fn tail_call(&mut self, prog: Arc<crate::BpfProgram>) -> bool {
        if self.tail_calls >= MAX_TAIL_CALLS {
            return false;
        }
        self.tail_call = Some(prog);
        self.stop = 1;
        true
    }

    /// Tail calls made so far in this run.
    pub fn tail_calls(&self) -> u32 {
        self.tail_calls
    }
}
