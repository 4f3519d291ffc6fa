//! The terminal map: one line per pack, one character per group of chunks, then a legend and
//! totals. Plain ASCII, so it survives any terminal, log file or CI output.
//!
//! ```text
//! progpack map: backend procmem, 2 pack(s) of 2 MiB, chunks of 64 B; 1 char = 512 chunks = 32 KiB
//! pack base            map                                                                 used  holes  huge
//!    0 0x7f2a34200000 |##99#87_6##9#######88##9#9#7.....................................|  52.1%   4.3%  2 MiB huge
//! ```

use super::{bytes, cells, huge_label, Kind, Totals};
use progpack::Snapshot;
use std::fmt::Write;

/// Options of [`render_text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// Characters per pack (at least 1; the group of chunks per character is derived from it).
    pub width: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions { width: 64 }
    }
}

/// Renders `snap` as text: a header, one line per pack, a legend and totals. Every line ends
/// with a newline.
pub fn render_text(snap: &Snapshot, opts: &TextOptions) -> String {
    let width = opts.width.max(1);
    let chunks_per_pack = snap.pack_size / snap.chunk_size.max(1);
    let group = chunks_per_pack.div_ceil(width).max(1);
    let map_width = chunks_per_pack.div_ceil(group);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "progpack map: backend {}, {} pack(s) of {}, chunks of {}; 1 char = {group} chunk{} = {}",
        snap.backend,
        snap.packs.len(),
        bytes(snap.pack_size),
        bytes(snap.chunk_size),
        if group == 1 { "" } else { "s" },
        bytes(group * snap.chunk_size)
    );
    let _ = writeln!(
        out,
        "pack base            {:<map_width$}    used  holes  huge",
        "map"
    );
    for (i, p) in snap.packs.iter().enumerate() {
        let line: String = cells(p, group).iter().map(|c| c.symbol()).collect();
        let n = p.used.len().max(1) as f64;
        let _ = writeln!(
            out,
            "{i:>4} {:#014x} |{line:<map_width$}| {:>5.1}% {:>5.1}%  {}",
            p.base,
            100.0 * p.used_chunks() as f64 / n,
            100.0 * p.hole_chunks() as f64 / n,
            huge_label(p)
        );
    }
    if snap.packs.is_empty() {
        let _ = writeln!(out, "   (no packs)");
    }
    let _ = writeln!(
        out,
        "legend: {} {}  1-9 tenths used  {} {}  {} {}",
        Kind::Full.symbol(),
        Kind::Full.describe(),
        Kind::Hole.symbol(),
        Kind::Hole.describe(),
        Kind::Tail.symbol(),
        Kind::Tail.describe()
    );
    let t = Totals::of(snap);
    let huge = match t.huge_bytes {
        Some(h) => format!("{} of {} huge-page backed", bytes(h), bytes(t.pack_bytes)),
        None => "huge pages unknown".into(),
    };
    let _ = writeln!(
        out,
        "total: {} pack(s), {}/{} chunks used ({:.1}%), {} hole chunks ({:.1}%), {}, {} dedicated mapping(s)",
        t.packs,
        t.used,
        t.chunks,
        100.0 * t.used_ratio(),
        t.holes,
        100.0 * t.hole_ratio(),
        huge,
        t.dedicated_mappings
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::pack;
    use super::*;

    fn snap(packs: Vec<progpack::PackSnapshot>, chunks: usize) -> Snapshot {
        Snapshot {
            backend: "test",
            pack_size: chunks * 64,
            chunk_size: 64,
            packs,
            dedicated_mappings: 1,
        }
    }

    /// The map part (between the bars) of each pack line.
    fn maps(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| {
                let a = l.find('|')?;
                let b = l.rfind('|')?;
                (b > a).then(|| &l[a + 1..b])
            })
            .collect()
    }

    #[test]
    fn one_char_per_chunk_when_wide_enough() {
        let s = snap(
            vec![
                pack("1100101000", Some(640)),
                pack("0000000000", Some(0)),
                pack("1111111111", None),
            ],
            10,
        );
        let t = render_text(&s, &TextOptions { width: 10 });
        assert_eq!(maps(&t), ["##__#_#...", "..........", "##########"]);
        assert!(t.contains("1 char = 1 chunk = 64 B"), "{t}");
        // per-pack used/holes percentages and huge-page labels
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[2].contains(" 40.0%  30.0%  640 B huge"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("no huge pages"), "{}", lines[3]);
        assert!(lines[4].contains("100.0%   0.0%  huge ?"), "{}", lines[4]);
        assert!(t.contains("total: 3 pack(s), 14/30 chunks used (46.7%), 3 hole chunks (10.0%), huge pages unknown, 1 dedicated mapping(s)"), "{t}");
        for k in [Kind::Full, Kind::Hole, Kind::Tail] {
            assert!(t.contains(&format!("{} {}", k.symbol(), k.describe())));
        }
        assert!(t.contains("1-9 tenths used"));
        assert!(t.ends_with('\n'));
    }

    #[test]
    fn groups_chunks_when_narrow() {
        // 12 chunks in 4 characters: 3 chunks per character.
        let s = snap(vec![pack("111110100000", Some(768))], 12);
        let t = render_text(&s, &TextOptions { width: 4 });
        assert_eq!(maps(&t), ["#63."]);
        assert!(t.contains("1 char = 3 chunks = 192 B"), "{t}");
        assert!(t.contains("768 B of 768 B huge-page backed"), "{t}");
    }

    #[test]
    fn lines_align_and_width_is_respected() {
        let bits: String = (0..1000)
            .map(|i| if i % 7 == 0 { '1' } else { '0' })
            .collect();
        let s = snap(vec![pack(&bits, None), pack(&bits[..1000], None)], 1000);
        for width in [1, 13, 64, 200] {
            let t = render_text(&s, &TextOptions { width });
            let m = maps(&t);
            assert_eq!(m.len(), 2);
            let group = 1000usize.div_ceil(width);
            assert_eq!(m[0].chars().count(), 1000usize.div_ceil(group));
            assert!(m[0].chars().count() <= width);
            assert!(m[0].chars().all(|c| "#123456789_.".contains(c)), "{}", m[0]);
            // both pack lines have the same layout
            let l: Vec<&str> = t.lines().filter(|l| l.contains('|')).collect();
            assert_eq!(l[0].find('|'), l[1].find('|'));
            assert_eq!(l[0].rfind('|'), l[1].rfind('|'));
        }
    }

    #[test]
    fn empty_snapshot_and_zero_width() {
        let s = snap(vec![], 10);
        let t = render_text(&s, &TextOptions { width: 0 });
        assert!(t.contains("(no packs)"));
        assert!(
            t.contains("total: 0 pack(s), 0/0 chunks used (0.0%)"),
            "{t}"
        );
    }
}
