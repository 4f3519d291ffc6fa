//! Maps of packs: where the chunks of each pack are used, free, or holes (free chunks below the
//! last used one, i.e. fragmentation), and whether the pack is backed by huge pages.
//!
//! Every renderer is a function of a [`Snapshot`], so any program can draw its own allocator:
//!
//! ```no_run
//! use progpack_cli::map;
//!
//! let alloc = progpack::Allocator::new(progpack::Config::default())?;
//! // ... load programs ...
//! let snap = alloc.snapshot();
//! print!("{}", map::render_text(&snap, &map::TextOptions::default()));
//! map::write_png(&snap, "packs.png".as_ref(), &map::PictureOptions::default())?;
//! map::write_svg(&snap, "packs.svg".as_ref(), &map::PictureOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `progpack map` runs a workload (load programs of chosen sizes, free some) in its own
//! allocator and renders that.
//!
//! Both renderers group chunks into [`Cell`]s and classify each with [`Kind`]: the picture
//! draws one cell per chunk for default packs (2 MiB of 64-byte chunks), the text map one
//! character per group of chunks.

mod picture;
mod text;

mod tooltips;
pub use picture::{render_rgb, render_svg, write_png, write_svg, PictureOptions, RgbPicture};
pub use text::{render_text, TextOptions};

use anyhow::Context;
use progpack::{Allocator, Config, PackSnapshot, Program, Snapshot};
use std::path::PathBuf;
use std::str::FromStr;

/// What a group of consecutive chunks of one pack holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Chunks in use.
    pub used: usize,
    /// Free chunks below the pack's last used chunk (fragmentation).
    pub hole: usize,
    /// Free chunks above the pack's last used chunk (room to grow).
    pub tail: usize,
}

/// How a [`Cell`] is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Every chunk in use.
    Full,
    /// At least half of the chunks in use.
    Mostly,
    /// Some, but fewer than half, of the chunks in use.
    Some,
    /// No chunk in use, below the last used chunk: a hole.
    Hole,
    /// No chunk in use, above the last used chunk: free tail.
    Tail,
}

impl Kind {
    /// Every kind, in legend order.
    pub const ALL: [Kind; 5] = [Kind::Full, Kind::Mostly, Kind::Some, Kind::Hole, Kind::Tail];

    /// Character of the text map for this kind (partly used cells print their density
    /// instead: see [`Cell::symbol`]).
    pub fn symbol(self) -> char {
        match self {
            Kind::Full => '#',
            Kind::Mostly => '+',
            Kind::Some => ':',
            Kind::Hole => '_',
            Kind::Tail => '.',
        }
    }

    /// Legend text.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Full => "all used",
            Kind::Mostly => ">= 1/2 used",
            Kind::Some => "< 1/2 used",
            Kind::Hole => "hole (free, below the last used chunk)",
            Kind::Tail => "free tail",
        }
    }
}

impl Cell {
    /// Chunks in the cell.
    pub fn chunks(&self) -> usize {
        self.used + self.hole + self.tail
    }

    /// Character of the text map: `#` all used, `1` to `9` tenths used (rounded down, at least
    /// 1), `_` hole, `.` free tail.
    pub fn symbol(&self) -> char {
        match self.kind() {
            Kind::Mostly | Kind::Some => {
                let tenths = (10 * self.used / self.chunks()).clamp(1, 9);
                char::from(b'0' + tenths as u8)
            }
            k => k.symbol(),
        }
    }

    /// How the cell is drawn. An empty cell (no chunks) counts as free tail.
    pub fn kind(&self) -> Kind {
        let n = self.chunks();
        if self.used == 0 {
            if self.hole > 0 {
                Kind::Hole
            } else {
                Kind::Tail
            }
        } else if self.used == n {
            Kind::Full
        } else if 2 * self.used >= n {
            Kind::Mostly
        } else {
            Kind::Some
        }
    }
}

/// Splits a pack's chunks into cells of `group` chunks each (the last may be smaller).
/// A `group` of 0 is treated as 1.
pub fn cells(pack: &PackSnapshot, group: usize) -> Vec<Cell> {
    let group = group.max(1);
    let end_of_used = pack.used.iter().rposition(|u| *u).map_or(0, |i| i + 1);
    pack.used
        .chunks(group)
        .enumerate()
        .map(|(g, bits)| {
            let mut c = Cell::default();
            for (k, &u) in bits.iter().enumerate() {
                if u {
                    c.used += 1;
                } else if g * group + k < end_of_used {
                    c.hole += 1;
                } else {
                    c.tail += 1;
                }
            }
            c
        })
        .collect()
}

/// Totals over a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Packs.
    pub packs: usize,
    /// Chunks in all packs.
    pub chunks: usize,
    /// Chunks in use.
    pub used: usize,
    /// Free chunks below each pack's last used chunk.
    pub holes: usize,
    /// Bytes of packs backed by huge pages, if known for every pack.
    pub huge_bytes: Option<usize>,
    /// Bytes of packs.
    pub pack_bytes: usize,
    /// Dedicated mappings (programs larger than a pack; not drawn).
    pub dedicated_mappings: usize,
}

impl Totals {
    /// Adds up `snap`.
    pub fn of(snap: &Snapshot) -> Totals {
        Totals {
            packs: snap.packs.len(),
            chunks: snap.packs.iter().map(|p| p.used.len()).sum(),
            used: snap.packs.iter().map(|p| p.used_chunks()).sum(),
            holes: snap.packs.iter().map(|p| p.hole_chunks()).sum(),
            huge_bytes: snap.packs.iter().map(|p| p.huge_bytes).sum(),
            pack_bytes: snap.packs.len() * snap.pack_size,
            dedicated_mappings: snap.dedicated_mappings,
        }
    }

    /// Share of chunks in use, 0.0 to 1.0 (0.0 without packs).
    pub fn used_ratio(&self) -> f64 {
        ratio(self.used, self.chunks)
    }

    /// Share of chunks that are holes, 0.0 to 1.0 (0.0 without packs).
    pub fn hole_ratio(&self) -> f64 {
        ratio(self.holes, self.chunks)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Formats a byte count compactly: `512 B`, `64 KiB`, `2 MiB`, `1.5 MiB`.
pub(crate) fn bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Huge-page backing of one pack, for labels: `2 MiB huge`, `no huge pages`, `huge ?`.
pub(crate) fn huge_label(pack: &PackSnapshot) -> String {
    match pack.huge_bytes {
        Some(0) => "no huge pages".into(),
        Some(b) => format!("{} huge", bytes(b)),
        None => "huge ?".into(),
    }
}

/// Errors of the renderers.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Plotters failed to draw.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// Encoding the PNG failed.
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded font could not be loaded (a build problem, not an input one).
    #[error("embedded font unusable")]
    Font,
}

/// Program sizes for the `map` workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// A JIT-like mix: mostly tiny functions, some medium, a few large.
    Mix,
    /// Every program this many bytes.
    Fixed(usize),
}

impl FromStr for Sizes {
    type Err = String;

    fn from_str(s: &str) -> Result<Sizes, String> {
        if s == "mix" {
            return Ok(Sizes::Mix);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("size must be at least 1 byte".into()),
            Ok(n) => Ok(Sizes::Fixed(n)),
            Err(_) => Err(format!("expected `mix` or a size in bytes, got `{s}`")),
        }
    }
}

/// Arguments of `progpack map`.
#[derive(Clone, Debug, clap::Args)]
pub struct MapArgs {
    /// Programs to load.
    #[arg(long, default_value_t = 20_000)]
    pub programs: usize,
    /// Program sizes: `mix` (JIT-like: mostly tiny, some medium, few large) or bytes, e.g. `64`.
    #[arg(long, default_value = "mix")]
    pub sizes: Sizes,
    /// Free every K-th program after loading (0: none).
    #[arg(long, conflicts_with = "free_fraction")]
    pub free_every: Option<usize>,
    /// Free this fraction of the programs, chosen at random (default 0.3 unless --free-every).
    #[arg(long)]
    pub free_fraction: Option<f64>,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 64)]
    pub chunk_size: usize,
    /// Pack size in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub pack_size: usize,
    /// Start images on chunk boundaries (no random offset, no slack): denser packing.
    #[arg(long)]
    pub no_randomize: bool,
    /// Write a PNG picture here.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Write an SVG picture here (each program's name in a tooltip over its chunks).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print the terminal map (the default when neither --png nor --svg is given).
    #[arg(long)]
    pub text: bool,
    /// Characters per pack line of the terminal map.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Packs drawn in a picture at most (the totals count all).
    #[arg(long, default_value_t = 48)]
    pub max_packs: usize,
}

/// What the workload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Programs loaded.
    pub loaded: usize,
    /// Programs freed again.
    pub freed: usize,
    /// Bytes of code loaded.
    pub bytes: usize,
}

/// xorshift64*: small, deterministic, good enough to pick sizes and victims.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Sizes {
    fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Sizes::Fixed(n) => n,
            // Roughly what a JIT for small programs sees: 70% under 128 B, 25% up to 1 KiB,
            // 5% up to 8 KiB.
            Sizes::Mix => {
                let r = rng.below(100);
                let (lo, hi): (u64, u64) = match r {
                    0..70 => (16, 128),
                    70..95 => (128, 1024),
                    _ => (1024, 8192),
                };
                (lo + rng.below(hi - lo)) as usize
            }
        }
    }
}

/// Loads `args.programs` programs into `alloc` and frees some of them as `args` says.
/// Returns the live programs (keep them alive while rendering) and what was done.
pub fn run_workload(
    alloc: &Allocator,
    args: &MapArgs,
) -> progpack::Result<(Vec<Program>, WorkloadReport)> {
    let mut rng = Rng::new(args.seed);
    let mut programs = Vec::with_capacity(args.programs);
    let mut report = WorkloadReport {
        loaded: 0,
        freed: 0,
        bytes: 0,
    };
    for i in 0..args.programs {
        let len = args.sizes.pick(&mut rng);
        // Named, so that the SVG map shows which program each stretch of chunks is.
        let mut d = alloc.draft(len, 1)?.named(format!("program {i}"))?;
        // A `ret` at the entry; the rest stays traps. Nothing runs it: only the layout matters.
        d.image_mut()[0] = 0xc3;
        programs.push(Some(d.finalize()?));
        report.loaded += 1;
        report.bytes += len;
    }
    let fraction = match (args.free_every, args.free_fraction) {
        (Some(_), _) => None,
        (None, f) => Some(f.unwrap_or(0.3).clamp(0.0, 1.0)),
    };
    for (i, slot) in programs.iter_mut().enumerate() {
        let free = match (args.free_every, fraction) {
            (Some(0), _) => false,
            (Some(k), _) => i % k == k - 1,
            (None, Some(f)) => rng.unit() < f,
            (None, None) => false,
        };
        if free {
            *slot = None;
            report.freed += 1;
        }
    }
    Ok((programs.into_iter().flatten().collect(), report))
}

/// `progpack map`: run the workload, then print and/or write the map.
pub fn run(args: &MapArgs) -> anyhow::Result<()> {
    let config = Config::default()
        .chunk_size(args.chunk_size)
        .pack_size(args.pack_size)
        .randomize(!args.no_randomize)
        .reserve_packs(0)
        // One shard: a map of one pack list reads like the kernel's.
        .shards(1);
    let alloc = Allocator::new(config).context("creating the allocator")?;
    let (programs, report) = run_workload(&alloc, args).context("running the workload")?;
    let snap = alloc.snapshot();
    let totals = Totals::of(&snap);
    let title = format!(
        "{} programs loaded ({}), {} freed, {} live",
        report.loaded,
        match args.sizes {
            Sizes::Mix => "mixed sizes".to_string(),
            Sizes::Fixed(n) => format!("{n} B each"),
        },
        report.freed,
        programs.len()
    );
    let picture = PictureOptions {
        title: Some(title.clone()),
        max_packs: args.max_packs,
    };
    let mut out = String::new();
    if let Some(path) = &args.png {
        write_png(&snap, path, &picture)?;
        out += &format!("wrote {}\n", path.display());
    }
    if let Some(path) = &args.svg {
        write_svg(&snap, path, &picture)?;
        out += &format!("wrote {}\n", path.display());
    }
    if args.text || (args.png.is_none() && args.svg.is_none()) {
        out += &format!("{title}\n");
        out += &render_text(
            &snap,
            &TextOptions {
                width: args.width.max(1),
            },
        );
    } else {
        out += &format!(
            "{title}: {} packs, {:.1}% of chunks used, {:.1}% holes\n",
            totals.packs,
            100.0 * totals.used_ratio(),
            100.0 * totals.hole_ratio()
        );
    }
    // A closed pipe (`progpack map | head`) is not an error worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing to stdout")
        }
        _ => {}
    }
    drop(programs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pack(bits: &str, huge: Option<usize>) -> PackSnapshot {
        PackSnapshot {
            base: 0x7f00_0000_0000,
            used: bits.chars().map(|c| c == '1').collect(),
            huge_bytes: huge,
            programs: Vec::new(),
        }
    }

    #[test]
    fn cells_split_holes_from_tail() {
        let p = pack("1100101000", None);
        let c = cells(&p, 2);
        assert_eq!(
            c,
            vec![
                Cell {
                    used: 2,
                    hole: 0,
                    tail: 0
                },
                Cell {
                    used: 0,
                    hole: 2,
                    tail: 0
                },
                Cell {
                    used: 1,
                    hole: 1,
                    tail: 0
                },
                Cell {
                    used: 1,
                    hole: 0,
                    tail: 1
                },
                Cell {
                    used: 0,
                    hole: 0,
                    tail: 2
                },
            ]
        );
        let kinds: Vec<Kind> = c.iter().map(Cell::kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Full,
                Kind::Hole,
                Kind::Mostly,
                Kind::Mostly,
                Kind::Tail
            ]
        );
        assert_eq!(cells(&p, 0).len(), 10, "group 0 means one chunk per cell");
        assert_eq!(cells(&p, 4).len(), 3, "last cell is smaller");
    }

    #[test]
    fn kind_thresholds() {
        let k = |used, hole, tail| Cell { used, hole, tail }.kind();
        assert_eq!(k(1, 2, 0), Kind::Some);
        assert_eq!(k(2, 2, 0), Kind::Mostly);
        assert_eq!(k(0, 0, 0), Kind::Tail);
        let sym = |used, hole, tail| Cell { used, hole, tail }.symbol();
        assert_eq!(sym(1, 999, 0), '1', "any use shows");
        assert_eq!(sym(999, 1, 0), '9', "not full never shows as full");
        assert_eq!(sym(5, 5, 0), '5');
        assert_eq!(sym(3, 0, 0), '#');
        assert_eq!(sym(0, 3, 0), '_');
        assert_eq!(sym(0, 0, 3), '.');
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("mix".parse::<Sizes>(), Ok(Sizes::Mix));
        assert_eq!("64".parse::<Sizes>(), Ok(Sizes::Fixed(64)));
        assert!("0".parse::<Sizes>().is_err());
        assert!("big".parse::<Sizes>().is_err());
    }

    #[test]
    fn byte_formatting() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2 << 20), "2 MiB");
        assert_eq!(bytes(1536 << 10), "1.5 MiB");
    }

    #[test]
    fn workload_frees_what_it_says() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: MapArgs,
        }
        let args = T::parse_from([
            "t",
            "--programs",
            "300",
            "--sizes",
            "64",
            "--free-every",
            "3",
        ])
        .a;
        let alloc = Allocator::new(Config::default().shards(1)).unwrap();
        let (live, r) = run_workload(&alloc, &args).unwrap();
        assert_eq!((r.loaded, r.freed, live.len()), (300, 100, 200));
        let t = Totals::of(&alloc.snapshot());
        // The picture shows what threads' runs reserve as used too.
        let st = alloc.stats();
        assert_eq!(t.used, st.chunks_used + st.chunks_cached);
        assert!(
            t.holes >= 90,
            "every third program freed leaves holes: {t:?}"
        );
    }
}
