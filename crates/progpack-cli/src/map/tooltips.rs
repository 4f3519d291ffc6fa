//! Program names in the SVG map: one transparent rectangle per program (per strip row it
//! covers) carrying a `<title>`, which SVG viewers and browsers show as a tooltip on hover.
//!
//! Programs come from [`PackSnapshot::programs`]: the named ones, or all of them when the
//! allocator announces its code. Names are user bytes: they are written as XML text with
//! markup characters as entities and control characters as `\xNN` (XML cannot carry most of
//! them at all).

use progpack::{PackSnapshot, ProgramInfo};
use std::fmt::Write;

/// Where a pack's strip is drawn, and how chunks map to cells.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StripAt {
    /// Top-left corner of the strip.
    pub x: i32,
    pub y: i32,
    /// Chunks per cell, cells per row, and a cell's size in pixels.
    pub group: usize,
    pub cols: usize,
    pub cell_w: i32,
    pub cell_h: i32,
}

/// The tooltip rectangles of `pack`'s programs, drawn at `at` (chunks of `chunk_size` bytes).
pub(crate) fn for_pack(pack: &PackSnapshot, chunk_size: usize, at: StripAt, out: &mut String) {
    for p in &pack.programs {
        let first = (p.addr() - pack.base) / chunk_size / at.group;
        let last = (p.addr() + p.len() - 1 - pack.base) / chunk_size / at.group;
        let title = title(p);
        let mut cell = first;
        while cell <= last {
            let row = cell / at.cols;
            let end = last.min((row + 1) * at.cols - 1);
            let _ = writeln!(
                out,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"transparent\"><title>{title}</title></rect>",
                at.x + (cell % at.cols) as i32 * at.cell_w,
                at.y + row as i32 * at.cell_h,
                (end - cell + 1) as i32 * at.cell_w,
                at.cell_h,
            );
            cell = end + 1;
        }
    }
}

/// `name — 0xADDR, N B`, as XML text.
fn title(p: &ProgramInfo) -> String {
    let mut t = xml_text(&p.name());
    if p.is_truncated() {
        t.push('…');
    }
    let _ = write!(t, " — {:#x}, {} B", p.addr(), p.len());
    t
}

/// `s` as XML character data: `& < > "` as entities, control characters as `\xNN`.
pub(crate) fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(
            xml_text("a<b>&\"c\"\n\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&quot;\\x0a\\x01"
        );
        assert_eq!(xml_text("λ ok"), "λ ok");
    }
}
