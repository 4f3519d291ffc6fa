//! progpack-bpf: a userspace eBPF (RFC 9669) VM whose x86-64 JIT loads programs into progpack.
#![deny(unsafe_code)]

pub mod helpers;
pub mod insn;
pub mod jit;
