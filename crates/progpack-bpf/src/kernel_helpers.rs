//! The standard helpers: the kernel's helper ids, names and semantics for maps, time, tracing,
//! random numbers, tail calls and ring buffers ([`Helpers::standard`]).
//!
//! Pointers a program passes are checked through the [`HelperContext`]: a key, value or format
//! string the program could not read itself makes the helper fail (`map_lookup_elem` returns
//! NULL, the others `-EFAULT`), never a stray access. Map handles resolve only among the
//! running program's maps (`-EINVAL` otherwise). Errors are returned as negated kernel errno
//! values, as the kernel's helpers do.
//!
//! Differences from the kernel, by design of a userspace runtime: "CPU" is the host thread
//! ([`crate::maps::cpu`]); `ktime_get_ns` reads `CLOCK_MONOTONIC`; `trace_printk` writes one
//! line to the environment's trace sink (see [`crate::ProgramEnv::set_trace_sink`]) and
//! supports `%d %i %u %x %X %c %p %%` with `l`/`ll` length modifiers (`%s` prints `(str)`).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fmt::Write;

use crate::context::HelperContext;
use crate::helpers::Helpers;
use crate::maps::{cpu, UpdateFlag};

/// `bpf_map_lookup_elem`.
pub const MAP_LOOKUP_ELEM: u32 = 1;
/// `bpf_map_update_elem`.
pub const MAP_UPDATE_ELEM: u32 = 2;
/// `bpf_map_delete_elem`.
pub const MAP_DELETE_ELEM: u32 = 3;
/// `bpf_ktime_get_ns`.
pub const KTIME_GET_NS: u32 = 5;
/// `bpf_trace_printk`.
pub const TRACE_PRINTK: u32 = 6;
/// `bpf_get_prandom_u32`.
pub const GET_PRANDOM_U32: u32 = 7;
/// `bpf_get_smp_processor_id`.
pub const GET_SMP_PROCESSOR_ID: u32 = 8;
/// `bpf_tail_call`.
pub const TAIL_CALL: u32 = 12;
/// `bpf_ringbuf_output`.
pub const RINGBUF_OUTPUT: u32 = 130;
/// `bpf_ringbuf_reserve`.
pub const RINGBUF_RESERVE: u32 = 131;
/// `bpf_ringbuf_submit`.
pub const RINGBUF_SUBMIT: u32 = 132;
/// `bpf_ringbuf_discard`.
pub const RINGBUF_DISCARD: u32 = 133;

const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const ENOENT: i64 = 2;
const EAGAIN: i64 = 11;

fn err(e: i64) -> u64 {
    (-e) as u64
}

/// Most bytes a helper copies from program memory at once (keys, values, format strings).
const MAX_COPY: u64 = 1 << 16;

fn read_vec(cx: &HelperContext, addr: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_COPY {
        return None;
    }
    let mut v = vec![0; len as usize];
    cx.read(addr, &mut v).then_some(v)
}

/// Calls `f` with the `len` bytes of program memory at `addr`, or returns `None` if the
/// program could not read them. Bytes of the run's own input or stack are lent in place; bytes
/// of shared memory (map values, which other threads may write) are copied atomically first
/// (on the stack when short).
#[inline]
fn with_bytes<R>(cx: &HelperContext, addr: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if len > MAX_COPY {
        return None;
    }
    let (p, shared) = cx.translate(addr, len, false)?;
    if !shared {
        // SAFETY: `translate` found `[p, p + len)` in the run's input memory or live stack
        // frames: initialised, exclusive to this run and alive for the whole helper call, and
        // nothing writes them while the program is suspended in the call (`f` writes only map
        // arenas, never program input or stack).
        return Some(f(unsafe { std::slice::from_raw_parts(p, len as usize) }));
    }
    copy_bytes(cx, addr, len, f)
}

/// [`with_bytes`] of shared memory: a copy.
#[cold]
fn copy_bytes<R>(cx: &HelperContext, addr: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let mut small = [0u8; 64];
    if len <= small.len() as u64 {
        let b = &mut small[..len as usize];
        return cx.read(addr, b).then(|| f(b));
    }
    read_vec(cx, addr, len).map(|v| f(&v))
}

extern "C" fn map_lookup_elem(
    m: u64,
    key: u64,
    _: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(map) = cx.map(m) else { return 0 };
    with_bytes(cx, key, map.def().key_size as u64, |k| map.lookup_addr(k))
        .flatten()
        .map_or(0, |a| cx.expose(a))
}

extern "C" fn map_update_elem(
    m: u64,
    key: u64,
    value: u64,
    flags: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(map) = cx.map(m) else {
        return err(EINVAL);
    };
    let def = map.def();
    let r = with_bytes(cx, key, def.key_size as u64, |k| {
        with_bytes(cx, value, def.value_size as u64, |v| {
            UpdateFlag::from_u64(flags).and_then(|f| map.update(k, v, f))
        })
    });
    status(r.flatten())
}

extern "C" fn map_delete_elem(
    m: u64,
    key: u64,
    _: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(map) = cx.map(m) else {
        return err(EINVAL);
    };
    status(with_bytes(cx, key, map.def().key_size as u64, |k| {
        map.delete(k)
    }))
}

/// What a map helper returns: 0, the map's error as a negated errno, or `-EFAULT` if a
/// pointer it was given was not the program's memory (`None`).
fn status(r: Option<Result<(), crate::maps::MapError>>) -> u64 {
    match r {
        None => err(EFAULT),
        Some(Ok(())) => 0,
        Some(Err(e)) => err(e.errno()),
    }
}

extern "C" fn ktime_get_ns(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

extern "C" fn trace_printk(
    fmt: u64,
    size: u64,
    a: u64,
    b: u64,
    c: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(bytes) = read_vec(cx, fmt, size) else {
        return err(EFAULT);
    };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let line = format_printk(&bytes[..end], [a, b, c]);
    let n = line.len() as u64;
    cx.trace(line.trim_end_matches('\n'));
    n
}

/// Formats a `bpf_trace_printk` format string with up to three arguments.
pub fn format_printk(fmt: &[u8], args: [u64; 3]) -> String {
    let fmt = String::from_utf8_lossy(fmt);
    let mut out = String::new();
    let mut args = args.into_iter();
    let mut chars = fmt.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let mut longs = 0;
        while chars.peek() == Some(&'l') {
            chars.next();
            longs += 1;
        }
        let conv = chars.next();
        if conv == Some('%') {
            out.push('%');
            continue;
        }
        let v = args.next().unwrap_or(0);
        let v32 = longs == 0;
        let _ = match conv {
            Some('d') | Some('i') if v32 => write!(out, "{}", v as i32),
            Some('d') | Some('i') => write!(out, "{}", v as i64),
            Some('u') if v32 => write!(out, "{}", v as u32),
            Some('u') => write!(out, "{v}"),
            Some('x') if v32 => write!(out, "{:x}", v as u32),
            Some('x') => write!(out, "{v:x}"),
            Some('X') if v32 => write!(out, "{:X}", v as u32),
            Some('X') => write!(out, "{v:X}"),
            Some('c') => write!(out, "{}", v as u8 as char),
            Some('p') => write!(out, "{v:#x}"),
            Some('s') => write!(out, "(str)"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

thread_local! {
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn get_prandom_u32(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    RANDOM.with(|s| {
        let mut x = s.get();
        if x == 0 {
            // Seed from the clock and this thread's stack address.
            x = ktime_get_ns(0, 0, 0, 0, 0) ^ (s as *const Cell<u64> as u64).rotate_left(32) | 1;
        }
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32 as u64
    })
}

extern "C" fn get_smp_processor_id(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    cpu::current_cpu() as u64
}

extern "C" fn tail_call(
    _ctx: u64,
    m: u64,
    index: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(map) = cx.map(m) else {
        return err(EINVAL);
    };
    let Some(prog) = u32::try_from(index).ok().and_then(|i| map.program(i)) else {
        return err(ENOENT);
    };
    if cx.tail_call(prog) {
        0
    } else {
        err(ENOENT)
    }
}

extern "C" fn ringbuf_output(
    m: u64,
    data: u64,
    size: u64,
    _flags: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    let Some(map) = cx.map(m) else {
        return err(EINVAL);
    };
    let Some(bytes) = read_vec(cx, data, size) else {
        return err(EFAULT);
    };
    if map.ring_output(&bytes) {
        0
    } else {
        err(EAGAIN)
    }
}

extern "C" fn ringbuf_reserve(
    m: u64,
    size: u64,
    _flags: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    cx.map(m)
        .and_then(|map| map.ring_reserve(size))
        .map_or(0, |a| cx.expose(a))
}

fn ringbuf_commit(cx: &HelperContext, data: u64, submit: bool) {
    let data = cx.host_of(data);
    if let Some(m) = cx.env().maps().iter().find(|m| m.ring_contains(data)) {
        m.ring_commit(data, submit);
    }
}

extern "C" fn ringbuf_submit(
    data: u64,
    _flags: u64,
    _: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    ringbuf_commit(cx, data, true);
    0
}

extern "C" fn ringbuf_discard(
    data: u64,
    _flags: u64,
    _: u64,
    _: u64,
    _: u64,
    cx: &mut HelperContext,
) -> u64 {
    ringbuf_commit(cx, data, false);
    0
}

impl Helpers {
    /// The standard helpers, with the kernel's ids and names (`bpf_map_lookup_elem`, ...):
    /// map lookup/update/delete (1, 2, 3), `ktime_get_ns` (5), `trace_printk` (6),
    /// `get_prandom_u32` (7), `get_smp_processor_id` (8), `tail_call` (12) and the ring
    /// buffer's output/reserve/submit/discard (130-133). (The conformance suite's registry,
    /// [`Helpers::conformance`], is a different one: its id 5 is "unwind".)
    pub fn standard() -> Helpers {
        let mut h = Helpers::new();
        let ctx: [(u32, &str, crate::helpers::ContextHelperFn); 9] = [
            (MAP_LOOKUP_ELEM, "bpf_map_lookup_elem", map_lookup_elem),
            (MAP_UPDATE_ELEM, "bpf_map_update_elem", map_update_elem),
            (MAP_DELETE_ELEM, "bpf_map_delete_elem", map_delete_elem),
            (TRACE_PRINTK, "bpf_trace_printk", trace_printk),
            (TAIL_CALL, "bpf_tail_call", tail_call),
            (RINGBUF_OUTPUT, "bpf_ringbuf_output", ringbuf_output),
            (RINGBUF_RESERVE, "bpf_ringbuf_reserve", ringbuf_reserve),
            (RINGBUF_SUBMIT, "bpf_ringbuf_submit", ringbuf_submit),
            (RINGBUF_DISCARD, "bpf_ringbuf_discard", ringbuf_discard),
        ];
        for (id, name, f) in ctx {
            h.register_context(id, f).set_name(id, name);
        }
        let plain: [(u32, &str, crate::helpers::HelperFn); 3] = [
            (KTIME_GET_NS, "bpf_ktime_get_ns", ktime_get_ns),
            (GET_PRANDOM_U32, "bpf_get_prandom_u32", get_prandom_u32),
            (
                GET_SMP_PROCESSOR_ID,
                "bpf_get_smp_processor_id",
                get_smp_processor_id,
            ),
        ];
        for (id, name, f) in plain {
            h.register(id, f).set_name(id, name);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printk_formats_like_the_kernel() {
        assert_eq!(
            format_printk(b"proto %d count %llu hex %x %%", [u64::MAX, 7, 255]),
            "proto -1 count 7 hex ff %"
        );
    }
}
