//! The picture: one strip per pack, drawn with `plotters` as PNG or SVG.
//!
//! A strip wraps the pack's chunks into rows (1024 cells per row; one cell per chunk for
//! default packs, 32 rows of 2-pixel cells), colored by [`Kind`]. To its left a badge says
//! whether the kernel backs the pack with huge pages. PNG text is rasterised here with
//! `ab_glyph` from DejaVu Sans Mono embedded in the binary (the `dejavu` crate; Bitstream Vera
//! license, which allows embedding), so it renders the same on a machine without any system
//! fonts; SVG text names the `monospace` family and is rendered by the viewer.

use super::{bytes, cells, huge_label, Kind, MapError, Totals};
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::*;
use plotters::style::FontStyle;
use progpack::{PackSnapshot, Snapshot};
use std::path::Path;
use std::sync::OnceLock;

/// Options of the picture renderers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PictureOptions {
    /// A line under the heading (e.g. what workload made the snapshot).
    pub title: Option<String>,
    /// Packs drawn at most; the rest are counted in the totals line.
    pub max_packs: usize,
}

impl Default for PictureOptions {
    fn default() -> Self {
        PictureOptions {
            title: None,
            max_packs: 48,
        }
    }
}

/// An RGB picture in memory (for tests, or to encode yourself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbPicture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Rows top to bottom, 3 bytes (R, G, B) per pixel.
    pub pixels: Vec<u8>,
}

impl RgbPicture {
    /// Blends `color` over the pixel at `(x, y)` with opacity `alpha` (0 to 1); ignores pixels
    /// outside the picture.
    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        let i = 3 * (y as usize * self.width as usize + x as usize);
        for (dst, src) in self.pixels[i..i + 3].iter_mut().zip(color) {
            *dst = (f32::from(*dst) * (1.0 - a) + f32::from(src) * a).round() as u8;
        }
    }

    /// The color at `(x, y)`, or `None` outside the picture.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        Some([self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]])
    }
}

/// The color a [`Kind`] is drawn in.
pub(crate) fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Full => RGBColor(31, 78, 168),
        Kind::Mostly => RGBColor(84, 130, 214),
        Kind::Some => RGBColor(163, 190, 238),
        Kind::Hole => RGBColor(232, 115, 25),
        Kind::Tail => RGBColor(226, 226, 226),
    }
}

const HUGE_FULL: RGBColor = RGBColor(46, 160, 67);
const HUGE_PART: RGBColor = RGBColor(222, 180, 40);
const HUGE_NONE: RGBColor = RGBColor(150, 150, 150);
const HUGE_UNKNOWN: RGBColor = RGBColor(255, 255, 255);
const INK: RGBColor = RGBColor(30, 30, 30);

/// Cells per strip row.
const COLS: usize = 1024;
/// Strip width in pixels.
const STRIP_W: i32 = 1024;
/// Cells per strip at most (64 rows); larger packs group chunks into cells.
const MAX_CELLS: usize = COLS * 64;
const MARGIN: i32 = 16;
const BADGE_W: i32 = 64;
const STRIP_X: i32 = MARGIN + BADGE_W + 8;
const WIDTH: u32 = (STRIP_X + STRIP_W + MARGIN) as u32;
const LABEL_H: i32 = 18;
const GAP: i32 = 12;
const HEADER_H: i32 = 64;
const FOOTER_H: i32 = 80;
/// Advance of one character at 13 px (DejaVu Sans Mono: 0.6 em), for laying out the legend.
const CHAR_W: i32 = 8;

/// Geometry of one strip.
#[derive(Clone, Copy, Debug)]
struct Strip {
    group: usize,
    cols: usize,
    rows: usize,
    cell_w: i32,
    cell_h: i32,
}

impl Strip {
    fn for_chunks(chunks: usize) -> Strip {
        let group = chunks.div_ceil(MAX_CELLS).max(1);
        let n = chunks.div_ceil(group).max(1);
        let cols = n.min(COLS);
        let rows = n.div_ceil(cols);
        let cell_w = (STRIP_W / cols as i32).max(1);
        // Aim at strips about 64 pixels tall, at least 1 pixel per row.
        let cell_h = (64 / rows as i32).clamp(1, 16);
        Strip {
            group,
            cols,
            rows,
            cell_w,
            cell_h,
        }
    }

    fn height(&self) -> i32 {
        self.rows as i32 * self.cell_h
    }
}

fn layout(snap: &Snapshot, opts: &PictureOptions) -> (Strip, usize, u32) {
    let chunks = snap.pack_size / snap.chunk_size.max(1);
    let strip = Strip::for_chunks(chunks);
    let drawn = snap.packs.len().min(opts.max_packs);
    let per_pack = LABEL_H + strip.height().max(BADGE_W / 2) + GAP;
    let height = HEADER_H + per_pack * drawn.max(1) as i32 + FOOTER_H;
    (strip, drawn, height as u32)
}

/// A piece of text to place: plotters writes it as `<text>` into SVG; for bitmaps it is
/// rasterised by [`rasterise`] (plotters' own `ab_glyph` text drawing ignores glyph side
/// bearings, which spreads letters unevenly).
#[derive(Clone, Debug)]
struct Label {
    /// Left edge.
    x: i32,
    /// Top of the line box.
    y: i32,
    /// Font size (em) in pixels.
    size: f32,
    bold: bool,
    text: String,
}

/// Where a renderer's text goes.
type Labels = Vec<Label>;

fn label(labels: &mut Labels, (x, y): (i32, i32), size: f32, bold: bool, text: impl Into<String>) {
    labels.push(Label {
        x,
        y,
        size,
        bold,
        text: text.into(),
    });
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> MapError {
    MapError::Draw(e.to_string())
}

/// Draws every shape of the picture on `root` and returns the text to place.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    snap: &Snapshot,
    opts: &PictureOptions,
    strip: Strip,
    drawn: usize,
) -> Result<Labels, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut labels = Labels::new();
    root.fill(&WHITE)?;
    let t = Totals::of(snap);
    label(
        &mut labels,
        (MARGIN, 10),
        17.0,
        true,
        format!(
            "progpack map: {} pack(s) of {}, {}-byte chunks, backend {}",
            t.packs,
            bytes(snap.pack_size),
            snap.chunk_size,
            snap.backend
        ),
    );
    if let Some(title) = &opts.title {
        label(&mut labels, (MARGIN, 34), 14.0, false, title.clone());
    }

    let per_pack = LABEL_H + strip.height().max(BADGE_W / 2) + GAP;
    for (i, pack) in snap.packs.iter().take(drawn).enumerate() {
        let y = HEADER_H + i as i32 * per_pack;
        let n = pack.used.len().max(1) as f64;
        label(
            &mut labels,
            (STRIP_X, y),
            13.0,
            false,
            format!(
                "pack {i}  {:#x}   used {:.1}%  holes {:.1}%  {}",
                pack.base,
                100.0 * pack.used_chunks() as f64 / n,
                100.0 * pack.hole_chunks() as f64 / n,
                huge_label(pack)
            ),
        );
        draw_badge(
            root,
            pack,
            snap.pack_size,
            (MARGIN, y + LABEL_H),
            &mut labels,
        )?;
        draw_strip(root, pack, strip, (STRIP_X, y + LABEL_H))?;
    }
    if snap.packs.is_empty() {
        label(&mut labels, (STRIP_X, HEADER_H), 14.0, false, "(no packs)");
    }

    // Legend and totals.
    let y = HEADER_H + per_pack * drawn.max(1) as i32 + 4;
    let mut x = MARGIN;
    let swatches = Kind::ALL
        .iter()
        .map(|&k| {
            let text = k.describe().split(" (").next().unwrap_or("");
            (color(k), text)
        })
        .chain([
            (HUGE_FULL, "huge pages"),
            (HUGE_PART, "partly huge"),
            (HUGE_NONE, "4 KiB pages"),
        ]);
    for (c, text) in swatches {
        root.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], c.filled()))?;
        label(&mut labels, (x + 19, y), 13.0, false, text);
        x += 19 + CHAR_W * text.len() as i32 + 18;
    }
    let huge = match t.huge_bytes {
        Some(h) => format!("{} of {} on huge pages", bytes(h), bytes(t.pack_bytes)),
        None => "huge pages unknown".into(),
    };
    let more = snap.packs.len().saturating_sub(drawn);
    label(
        &mut labels,
        (MARGIN, y + 24),
        13.0,
        false,
        format!(
            "total: {}/{} chunks used ({:.1}%), {} hole chunks ({:.1}%), {}, {} dedicated mapping(s){}",
            t.used,
            t.chunks,
            100.0 * t.used_ratio(),
            t.holes,
            100.0 * t.hole_ratio(),
            huge,
            t.dedicated_mappings,
            if more > 0 {
                format!("; {more} more pack(s) not drawn")
            } else {
                String::new()
            }
        ),
    );
    let cell = if strip.group == 1 {
        "1 cell = 1 chunk".to_string()
    } else {
        format!("1 cell = {} chunks", strip.group)
    };
    label(
        &mut labels,
        (MARGIN, y + 44),
        12.0,
        false,
        format!(
            "{cell}; rows of {} cells, left to right, top to bottom; orange: free space stranded between programs",
            strip.cols
        ),
    );
    Ok(labels)
}

/// The huge-page badge: green if the whole pack is on huge pages, amber if part, grey if none.
fn draw_badge<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    pack: &PackSnapshot,
    pack_size: usize,
    (x, y): (i32, i32),
    labels: &mut Labels,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (fill, text) = match pack.huge_bytes {
        None => (HUGE_UNKNOWN, "?".to_string()),
        Some(0) => (HUGE_NONE, "4K".to_string()),
        Some(b) if b >= pack_size => (HUGE_FULL, "huge".to_string()),
        Some(b) => (HUGE_PART, format!("{}%", 100 * b / pack_size.max(1))),
    };
    let h = BADGE_W / 2;
    root.draw(&Rectangle::new(
        [(x, y), (x + BADGE_W, y + h)],
        fill.filled(),
    ))?;
    root.draw(&Rectangle::new([(x, y), (x + BADGE_W, y + h)], INK))?;
    label(labels, (x + 8, y + 8), 13.0, true, text);
    Ok(())
}

/// Draws one pack's cells, merging runs of equal kind within a row into one rectangle.
/// Rectangles are half-open: `[(x0, y0), (x1, y1)]` covers `x0..x1` by `y0..y1`, as both
/// plotters backends fill them.
fn draw_strip<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    pack: &PackSnapshot,
    strip: Strip,
    (x0, y0): (i32, i32),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let kinds: Vec<Kind> = cells(pack, strip.group).iter().map(|c| c.kind()).collect();
    // Background: free tail; then only runs of other kinds.
    let rows = kinds.len().div_ceil(strip.cols);
    let full_w = strip.cols as i32 * strip.cell_w;
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + full_w, y0 + rows as i32 * strip.cell_h)],
        color(Kind::Tail).filled(),
    ))?;
    for (r, row) in kinds.chunks(strip.cols).enumerate() {
        let y = y0 + r as i32 * strip.cell_h;
        let mut start = 0;
        while start < row.len() {
            let k = row[start];
            let mut end = start + 1;
            while end < row.len() && row[end] == k {
                end += 1;
            }
            if k != Kind::Tail {
                root.draw(&Rectangle::new(
                    [
                        (x0 + start as i32 * strip.cell_w, y),
                        (x0 + end as i32 * strip.cell_w, y + strip.cell_h),
                    ],
                    color(k).filled(),
                ))?;
            }
            start = end;
        }
    }
    Ok(())
}

/// The embedded fonts (regular, bold), parsed once.
fn fonts() -> Result<&'static (FontRef<'static>, FontRef<'static>), MapError> {
    static FONTS: OnceLock<Option<(FontRef<'static>, FontRef<'static>)>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let regular = FontRef::try_from_slice(dejavu::sans_mono::regular()).ok()?;
            let bold = FontRef::try_from_slice(dejavu::sans_mono::bold()).ok()?;
            Some((regular, bold))
        })
        .as_ref()
        .ok_or(MapError::Font)
}

/// Draws `labels` into an RGB picture: glyphs placed by advance, kerning and side bearing on a
/// common baseline, blended by coverage.
fn rasterise(pic: &mut RgbPicture, labels: &[Label]) -> Result<(), MapError> {
    let (regular, bold) = fonts()?;
    for l in labels {
        let font = if l.bold { bold } else { regular };
        // Scale so that one em is `size` pixels, as `font-size` means in SVG.
        let height = font.ascent_unscaled() - font.descent_unscaled();
        let em = font.units_per_em().unwrap_or(height);
        let scaled = font.as_scaled(PxScale::from(l.size * height / em));
        let baseline = l.y as f32 + scaled.ascent();
        let mut pen = l.x as f32;
        let mut prev = None;
        for c in l.text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                pen += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scaled.scale(), point(pen, baseline));
            if let Some(outline) = scaled.outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let x = b.min.x as i64 + i64::from(gx);
                    let y = b.min.y as i64 + i64::from(gy);
                    pic.blend(x, y, [INK.0, INK.1, INK.2], coverage);
                });
            }
            pen += scaled.h_advance(id);
            prev = Some(id);
        }
    }
    Ok(())
}

/// Renders `snap` into an RGB buffer.
pub fn render_rgb(snap: &Snapshot, opts: &PictureOptions) -> Result<RgbPicture, MapError> {
    let (strip, drawn, height) = layout(snap, opts);
    let mut pixels = vec![0u8; WIDTH as usize * height as usize * 3];
    let labels = {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, height)).into_drawing_area();
        let labels = draw(&root, snap, opts, strip, drawn).map_err(draw_err)?;
        root.present().map_err(draw_err)?;
        labels
    };
    let mut pic = RgbPicture {
        width: WIDTH,
        height,
        pixels,
    };
    rasterise(&mut pic, &labels)?;
    Ok(pic)
}

/// Renders `snap` and writes it as a PNG file.
pub fn write_png(snap: &Snapshot, path: &Path, opts: &PictureOptions) -> Result<(), MapError> {
    let pic = render_rgb(snap, opts)?;
    let io = |source| MapError::Io {
        path: path.to_path_buf(),
        source,
    };
    let encode = |e: png::EncodingError| match e {
        png::EncodingError::IoError(source) => io(source),
        other => MapError::Encode(other.to_string()),
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), pic.width, pic.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(encode)?;
    w.write_image_data(&pic.pixels).map_err(encode)?;
    w.finish().map_err(encode)
}

/// Renders `snap` as an SVG document. Text is `<text>` in the `monospace` family.
pub fn render_svg(snap: &Snapshot, opts: &PictureOptions) -> Result<String, MapError> {
    let (strip, drawn, height) = layout(snap, opts);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let labels = draw(&root, snap, opts, strip, drawn).map_err(draw_err)?;
        for l in labels {
            // plotters writes font-size = size / 1.24 (its pixels-per-em rule); undo that.
            let font = (FontFamily::Monospace, f64::from(l.size) * 1.24).into_font();
            let font = if l.bold {
                font.style(FontStyle::Bold)
            } else {
                font
            };
            let style = font.color(&INK);
            root.draw(&Text::new(l.text, (l.x, l.y), style))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    // Program names as tooltips, over the strips (plotters has no element for them).
    let mut tips = String::new();
    let per_pack = LABEL_H + strip.height().max(BADGE_W / 2) + GAP;
    for (i, pack) in snap.packs.iter().take(drawn).enumerate() {
        let at = super::tooltips::StripAt {
            x: STRIP_X,
            y: HEADER_H + i as i32 * per_pack + LABEL_H,
            group: strip.group,
            cols: strip.cols,
            cell_w: strip.cell_w,
            cell_h: strip.cell_h,
        };
        super::tooltips::for_pack(pack, snap.chunk_size.max(1), at, &mut tips);
    }
    if !tips.is_empty() {
        let end = svg.rfind("</svg>").unwrap_or(svg.len());
        svg.insert_str(end, &format!("<g class=\"programs\">\n{tips}</g>\n"));
    }
    Ok(svg)
}

/// Renders `snap` and writes it as an SVG file.
pub fn write_svg(snap: &Snapshot, path: &Path, opts: &PictureOptions) -> Result<(), MapError> {
    let svg = render_svg(snap, opts)?;
    std::fs::write(path, svg).map_err(|source| MapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::pack;
    use super::*;

    fn snap() -> Snapshot {
        // 2048 chunks of 64 B: two rows of 1024 one-pixel-wide cells.
        let mut bits = String::new();
        bits.push_str(&"1".repeat(100)); // 0..100 used
        bits.push_str(&"0".repeat(50)); // 100..150 hole
        bits.push_str(&"1".repeat(10)); // 150..160 used
        bits.push_str(&"0".repeat(2048 - 160)); // tail
        Snapshot {
            backend: "test",
            pack_size: 2048 * 64,
            chunk_size: 64,
            packs: vec![
                pack(&bits, Some(2048 * 64)),
                pack(&"0".repeat(2048), Some(0)),
            ],
            dedicated_mappings: 0,
        }
    }

    fn rgb(c: RGBColor) -> [u8; 3] {
        [c.0, c.1, c.2]
    }

    #[test]
    fn cells_have_their_colors() {
        let s = snap();
        let pic = render_rgb(&s, &PictureOptions::default()).unwrap();
        assert_eq!(pic.width, WIDTH);
        let strip = Strip::for_chunks(2048);
        assert_eq!((strip.cols, strip.rows, strip.cell_w), (1024, 2, 1));
        let y = (HEADER_H + LABEL_H) as u32 + 1;
        let at = |chunk: u32| pic.pixel(STRIP_X as u32 + chunk, y).unwrap();
        assert_eq!(at(0), rgb(color(Kind::Full)));
        assert_eq!(at(99), rgb(color(Kind::Full)));
        assert_eq!(at(100), rgb(color(Kind::Hole)));
        assert_eq!(at(149), rgb(color(Kind::Hole)));
        assert_eq!(at(150), rgb(color(Kind::Full)));
        assert_eq!(at(160), rgb(color(Kind::Tail)));
        // second pack: all tail, badge grey (no huge pages); first pack's badge green
        let per_pack = LABEL_H + strip.height().max(BADGE_W / 2) + GAP;
        let y2 = y + per_pack as u32;
        assert_eq!(
            pic.pixel(STRIP_X as u32 + 5, y2).unwrap(),
            rgb(color(Kind::Tail))
        );
        assert_eq!(pic.pixel(MARGIN as u32 + 3, y).unwrap(), rgb(HUGE_FULL));
        assert_eq!(pic.pixel(MARGIN as u32 + 3, y2).unwrap(), rgb(HUGE_NONE));
    }

    #[test]
    fn text_is_drawn_without_system_fonts() {
        // The heading area holds only text: some pixels must be dark (glyphs were rasterised).
        let pic = render_rgb(&snap(), &PictureOptions::default()).unwrap();
        let dark = (0..pic.width)
            .flat_map(|x| (8..30).map(move |y| (x, y)))
            .filter(|&(x, y)| pic.pixel(x, y).unwrap().iter().all(|&c| c < 100))
            .count();
        assert!(dark > 200, "only {dark} dark pixels in the heading");
    }

    #[test]
    fn svg_has_labels_and_merged_runs() {
        let s = snap();
        let svg = render_svg(
            &s,
            &PictureOptions {
                title: Some("unit test".into()),
                max_packs: 1,
            },
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("unit test"));
        assert!(svg.contains("pack 0"));
        assert!(!svg.contains("pack 1 "), "max_packs limits the packs drawn");
        assert!(svg.contains("1 more pack(s) not drawn"));
        // runs, not one rectangle per chunk: well under 2048 rectangles
        assert!(
            svg.matches("<rect").count() < 40,
            "{}",
            svg.matches("<rect").count()
        );
    }

    #[test]
    fn svg_names_programs_in_tooltips() {
        use progpack::{Allocator, Config, Observe};
        let alloc = Allocator::new(
            Config::default()
                .pack_size(64 << 10)
                .observe(Observe::default().ignore_env()),
        )
        .unwrap();
        let mut live = Vec::new();
        for (i, name) in ["alpha", "b<&>\"eta\"", "gamma\nline"].iter().enumerate() {
            let mut d = alloc.draft(100 + 500 * i, 1).unwrap().named(name).unwrap();
            d.image_mut()[0] = 0xc3;
            live.push(d.finalize().unwrap());
        }
        let snap = alloc.snapshot();
        let svg = render_svg(&snap, &PictureOptions::default()).unwrap();
        let at = |p: &progpack::Program| format!("{:#x}, {} B</title>", p.addr(), p.len());
        assert!(
            svg.contains(&format!("<title>alpha — {}", at(&live[0]))),
            "{svg}"
        );
        assert!(svg.contains(&format!(
            "<title>b&lt;&amp;&gt;&quot;eta&quot; — {}",
            at(&live[1])
        )));
        assert!(svg.contains(&format!("<title>gamma\\x0aline — {}", at(&live[2]))));
        assert!(svg.trim_end().ends_with("</svg>"));
        // A program of 1100 bytes covers 18 chunks: one row of 1024 one-chunk cells here.
        let rects = svg.matches("fill=\"transparent\"").count();
        assert_eq!(rects, 3);
    }

    #[test]
    fn many_small_chunks_are_grouped() {
        let strip = Strip::for_chunks(1 << 20);
        assert_eq!(strip.group, 16);
        assert_eq!((strip.cols, strip.rows), (1024, 64));
        let strip = Strip::for_chunks(16);
        assert_eq!(
            (strip.group, strip.cols, strip.rows, strip.cell_w),
            (1, 16, 1, 64)
        );
    }

    #[test]
    fn png_round_trips() {
        let s = snap();
        let pic = render_rgb(&s, &PictureOptions::default()).unwrap();
        let path =
            std::env::temp_dir().join(format!("progpack-map-test-{}.png", std::process::id()));
        write_png(&s, &path, &PictureOptions::default()).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((info.width, info.height), (pic.width, pic.height));
        assert_eq!(&buf[..info.buffer_size()], &pic.pixels[..]);
    }

    #[test]
    fn write_png_reports_bad_paths() {
        let err = write_png(
            &snap(),
            Path::new("/nonexistent-dir/x.png"),
            &PictureOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, MapError::Io { .. }), "{err}");
    }
}
