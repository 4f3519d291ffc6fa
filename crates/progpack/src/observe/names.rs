//! Program names: what a name may be, how it is written where a line or a NUL would end it,
//! and the fixed-size copy that a signal handler can read.
//!
//! A name is any non-empty byte string of at most [`MAX_NAME`] bytes (JIT front ends name
//! functions after user input, which need not be UTF-8). Where it is written out — the perf
//! map, jitdump records, ELF symbols — it is [`escape`]d: printable ASCII and valid UTF-8 pass
//! through, a backslash becomes `\\`, and every other byte (control characters such as `\n`,
//! NUL, DEL, bytes that are not UTF-8) becomes `\xNN`. An escaped name never contains a
//! newline or a NUL, so it can never break a line of the perf map or end a C string early.
//!
//! Programs without a name are called `jit_<address in hex>` ([`write_default`], which
//! formats without allocating so that it can run in a signal handler).

use crate::error::{Error, Result};

/// The longest name accepted, in bytes.
pub const MAX_NAME: usize = 4096;

/// Bytes of a name kept where a signal handler can read it (longer names are cut there).
pub const INLINE_NAME: usize = 120;

/// Checks that `name` can be a program's name: 1 to [`MAX_NAME`] bytes.
pub(crate) fn check(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::BadName {
            len: name.len(),
            max: MAX_NAME,
        });
    }
    Ok(())
}

/// Appends `name` to `out`, escaped (see the module docs).
pub(crate) fn escape(name: &[u8], out: &mut Vec<u8>) {
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                c if c.is_control() => {
                    // Every control character (C0, DEL, C1) is one or two UTF-8 bytes.
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        hex_escape(b, out);
                    }
                }
                c => {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for &b in chunk.invalid() {
            hex_escape(b, out);
        }
    }
}

fn hex_escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// `name` escaped, as a string (it is valid UTF-8 by construction).
#[cfg_attr(not(any(test, feature = "gdb-jit")), allow(dead_code))]
pub(crate) fn escaped(name: &[u8]) -> String {
    let mut out = Vec::with_capacity(name.len());
    escape(name, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the default name of the program at `addr`, `jit_<hex>`, into `buf` and returns its
/// length. No allocation, no formatting machinery: safe in a signal handler.
pub(crate) fn write_default(addr: usize, buf: &mut [u8; INLINE_NAME]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..4].copy_from_slice(b"jit_");
    let digits = (usize::BITS - addr.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        let nibble = (addr >> (4 * (digits - 1 - i))) & 15;
        buf[4 + i] = HEX[nibble];
    }
    4 + digits
}

/// Appends `v` in lowercase hex without leading zeros (no formatting machinery: this is on
/// every announced finalize).
pub(crate) fn push_hex(out: &mut Vec<u8>, v: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - v.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in (0..digits).rev() {
        out.push(HEX[(v >> (4 * i)) & 15]);
    }
}

/// Appends the default name of the program at `addr`, `jit_<hex>`.
pub(crate) fn push_default(out: &mut Vec<u8>, addr: usize) {
    out.extend_from_slice(b"jit_");
    push_hex(out, addr);
}

/// The default name of the program at `addr`, as a string.
pub(crate) fn default_name(addr: usize) -> String {
    format!("jit_{addr:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_through() {
        assert_eq!(escaped(b"sum_squares"), "sum_squares");
        assert_eq!(escaped(b"a b::<T>"), "a b::<T>");
        assert_eq!(escaped("λ→ü".as_bytes()), "λ→ü");
    }

    #[test]
    fn line_breaks_nul_and_bad_utf8_are_escaped() {
        assert_eq!(escaped(b"a\nb"), "a\\x0ab");
        assert_eq!(escaped(b"a\r\n\0\x7f"), "a\\x0d\\x0a\\x00\\x7f");
        assert_eq!(escaped(b"\xff\xfe ok"), "\\xff\\xfe ok");
        assert_eq!(escaped(b"back\\slash"), "back\\\\slash");
        // C1 control characters (U+0085 NEL is a line break to some readers).
        assert_eq!(escaped("x\u{85}y".as_bytes()), "x\\xc2\\x85y");
        // A truncated multi-byte sequence.
        assert_eq!(escaped(&"é".as_bytes()[..1]), "\\xc3");
    }

    #[test]
    fn escaped_names_never_hold_newlines_or_nul() {
        let all: Vec<u8> = (0..=255).collect();
        let e = escaped(&all);
        assert!(!e.contains('\n') && !e.contains('\0') && !e.contains('\r'));
        // Every input byte is accounted for: printable ASCII once, others as 4-byte escapes.
        assert!(e.len() > all.len());
    }

    #[test]
    fn names_are_checked() {
        assert!(check(b"f").is_ok());
        assert!(check(&[b'x'; MAX_NAME]).is_ok());
        assert!(matches!(check(b""), Err(Error::BadName { len: 0, .. })));
        assert!(matches!(
            check(&[b'x'; MAX_NAME + 1]),
            Err(Error::BadName { .. })
        ));
    }

    #[test]
    fn hex_matches_format() {
        for v in [0usize, 9, 0xa, 0x1c, 0x7f00_0000_0040, usize::MAX] {
            let mut out = Vec::new();
            push_hex(&mut out, v);
            assert_eq!(out, format!("{v:x}").into_bytes());
        }
    }

    #[test]
    fn default_names_match_format() {
        for addr in [0usize, 1, 0xf, 0x10, 0x7f12_a400_0040, usize::MAX] {
            let mut buf = [0; INLINE_NAME];
            let n = write_default(addr, &mut buf);
            assert_eq!(&buf[..n], default_name(addr).as_bytes());
        }
    }
}
