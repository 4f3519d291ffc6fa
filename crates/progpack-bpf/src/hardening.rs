//! Protections for programs whose author you do not trust, on top of what every program gets
//! (the checker, bounds-checked memory, the instruction limit).
//!
//! # Constant blinding (JIT)
//!
//! A JIT copies the program's immediates into executable memory. An attacker who can load
//! programs chooses those bytes: a string of `mov r0, 0x3c909090`-style constants is x86 code
//! when entered at an offset ("JIT spraying"), and with progpack's packs that code would sit
//! next to everyone else's programs. With blinding, every immediate the program supplies (ALU,
//! jump and store immediates, `lddw` constants, divisors) is emitted as `value ^ key` and
//! XORed back at run time, with a fresh key per constant derived from a random key per compile:
//! no byte sequence the program chooses appears verbatim. Cost: two or three instructions
//! (and a scratch register) per immediate, a few percent on ALU-heavy code.
//!
//! Linux does the same (`bpf_jit_blind_constants`, `net.core.bpf_jit_harden`): 0 = off,
//! 1 = on for unprivileged programs, 2 = on for all; distributions ship 0 or 1, and
//! unprivileged BPF itself is off by default nowadays. Here it is off by default, because
//! the programs a host loads are usually its own, and on in [`Vm::untrusted`](crate::Vm::untrusted)
//! ([`Hardening::UNTRUSTED`]). Like the kernel, blinding leaves alone shift counts (one byte
//! below 64), load and store offsets (16 bits) and the values the JIT derives itself (block
//! charges, fault words): none of them gives a program four chosen bytes.
//!
//! # Hidden host addresses (both engines)
//!
//! A program's registers start with host addresses (r1 = the input, r10 = the stack) and
//! helpers hand it more (map values). Any of them returned in r0, or stored into the input or
//! a map the host reads, tells the author where the host's memory is, which defeats address
//! space randomization for whoever can also write memory. The kernel prevents it with its
//! verifier's pointer types ("pointer leaks" are refused for unprivileged programs); our
//! checker tracks no types, so instead programs in a hiding environment never see a host
//! address at all: the input, the stack and each map's values have fixed virtual addresses
//! ([`crate::vaddr`]), translated on every access by both engines and by
//! [`HelperContext`](crate::HelperContext) for helpers (which return map values as virtual
//! addresses too). Whatever a program computes is a function of those constants and of the
//! data it reads. Covered: r1, r10, stack addresses, `lddw` map values, pointers from the
//! standard helpers. Not covered: host addresses a host helper returns on purpose (a helper
//! should use [`HelperContext::expose`](crate::HelperContext::expose)), and timing. Cost in
//! the JIT: nothing for the input's fast paths; reading r10 as a value and stack accesses
//! through other registers take two more instructions.
#![deny(missing_docs)]

/// Protections a [`Vm`](crate::Vm) applies to the programs it loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hardening {
    /// JIT: blind every immediate of the program (see the module documentation). Adds to
    /// [`JitOptions::blind_constants`](crate::JitOptions::blind_constants).
    pub blind_constants: bool,
    /// Both engines: programs see fixed virtual addresses, never host ones (see the module
    /// documentation and [`crate::vaddr`]).
    pub hide_addresses: bool,
}

impl Hardening {
    /// No protection beyond the defaults (the default).
    pub const NONE: Hardening = Hardening {
        blind_constants: false,
        hide_addresses: false,
    };

    /// Everything on: for programs from authors you do not trust.
    pub const UNTRUSTED: Hardening = Hardening {
        blind_constants: true,
        hide_addresses: true,
    };
}
