//! The PNG chart: one small horizontal bar panel per measured group, one bar per system,
//! value and ratio against progpack written next to each bar.
//!
//! Text uses DejaVu Sans compiled into the binary (the `dejavu` crate, through plotters'
//! `ab_glyph` backend), so the chart renders the same on a machine without any fonts.

use super::report::{fmt_ratio, fmt_value, reference_for, Report, Row};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// Units charted (the headline number of each workload).
const CHARTED: &[&str] = &[
    "ns/program",
    "ns/call",
    "mapped/requested",
    "mappings added",
    "ns/replace",
    "speedup 2 vs 1 thread",
    "ns/packet",
];

const FONT: &str = "sans-serif";
const COLUMNS: usize = 3;
const PANEL_W: u32 = 640;
const ROW_H: u32 = 26;
const TITLE_H: u32 = 34;
const LABEL_W: i32 = 200;

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "bundled DejaVu Sans did not parse".to_string())
            .and_then(|()| {
                plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
                    .map_err(|_| "bundled DejaVu Sans Bold did not parse".to_string())
            });
    });
    result
}

fn color(system: &str) -> RGBColor {
    match system {
        "progpack-procmem" => RGBColor(31, 119, 180),
        "progpack-procmem-batch" => RGBColor(23, 190, 207),
        "progpack-dualmap" => RGBColor(106, 61, 154),
        "progpack-bpf-jit" => RGBColor(31, 119, 180),
        "progpack-bpf-interp" => RGBColor(106, 61, 154),
        "mmap+mprotect" => RGBColor(214, 39, 40),
        "jit-allocator-rwx" => RGBColor(255, 127, 14),
        "jit-allocator-dualmap" => RGBColor(188, 128, 45),
        "rbpf-jit" => RGBColor(214, 39, 40),
        _ => RGBColor(127, 127, 127),
    }
}

/// The groups that go into the chart, in report order.
pub fn charted_groups(report: &Report) -> Vec<Vec<&Row>> {
    report
        .groups()
        .into_iter()
        .filter(|g| CHARTED.contains(&g[0].unit.as_str()))
        .collect()
}

/// Draws the chart of `report` into a PNG at `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    register_font().map_err(anyhow::Error::msg)?;
    let groups = charted_groups(report);
    if groups.is_empty() {
        anyhow::bail!("nothing to chart");
    }
    let max_rows = groups.iter().map(|g| g.len()).max().unwrap_or(1) as u32;
    let panel_h = TITLE_H + max_rows * ROW_H + 12;
    let rows = groups.len().div_ceil(COLUMNS) as u32;
    let header_h = 60;
    let size = (PANEL_W * COLUMNS as u32, header_h + rows * panel_h);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(header_h);
    header.draw(&Text::new(
        "progpack bench: lower is better except \"speedup\"; ratio = value ÷ progpack (procmem, or progpack-bpf-jit)",
        (12, 12),
        (FONT, 20).into_font().style(FontStyle::Bold),
    ))?;
    header.draw(&Text::new(
        "One run, one process, same inputs; times are noisy, compare bars within a panel.",
        (12, 38),
        (FONT, 16),
    ))?;
    let panels = body.split_evenly((rows as usize, COLUMNS));
    for (panel, group) in panels.iter().zip(&groups) {
        draw_panel(panel, report, group)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
    group: &[&Row],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let first = group[0];
    let size = match first.size.as_str() {
        "mix" => "kernel size mix".to_string(),
        s if s.chars().all(|c| c.is_ascii_digit()) => format!("{s} B"),
        s => s.to_string(),
    };
    let title = format!(
        "{} · n={} · {} · {}",
        first.bench, first.n, size, first.unit
    );
    area.draw(&Text::new(
        title,
        (10, 8),
        (FONT, 17).into_font().style(FontStyle::Bold),
    ))?;
    let (w, _) = area.dim_in_pixel();
    let bar_max = w as i32 - LABEL_W - 150;
    let max = group.iter().map(|r| r.value).fold(0.0f64, f64::max);
    // Negative values (a count that went down) get no bar, only their number.
    let reference = reference_for(&first.bench);
    for (i, row) in group.iter().enumerate() {
        let y = TITLE_H as i32 + i as i32 * ROW_H as i32;
        let style = if row.system == reference {
            (FONT, 15).into_font().style(FontStyle::Bold)
        } else {
            (FONT, 15).into_font()
        };
        area.draw(&Text::new(row.system.clone(), (10, y + 4), style))?;
        let len = if max > 0.0 {
            ((row.value.max(0.0) / max) * bar_max as f64).round() as i32
        } else {
            0
        };
        let x0 = LABEL_W;
        area.draw(&Rectangle::new(
            [(x0, y + 3), (x0 + len.max(1), y + ROW_H as i32 - 5)],
            color(&row.system).filled(),
        ))?;
        let label = match report.ratio(row) {
            Some(r) if row.system != reference => {
                format!("{}  ({})", fmt_value(row.value), fmt_ratio(r))
            }
            _ => fmt_value(row.value),
        };
        area.draw(&Text::new(label, (x0 + len.max(1) + 6, y + 4), (FONT, 14)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_text() {
        let mut r = Report::default();
        r.push("load", "progpack-procmem", 100, "64", 250.0, "ns/program");
        r.push("load", "mmap+mprotect", 100, "64", 5000.0, "ns/program");
        r.push(
            "footprint",
            "mmap+mprotect",
            100,
            "64",
            100.0,
            "programs loaded",
        );
        assert_eq!(
            charted_groups(&r).len(),
            1,
            "only headline units are charted"
        );
        let dir = std::env::temp_dir().join(format!("progpack-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.png");
        draw(&r, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
