//! Result rows and their three text forms: the terminal table (with a ratio column against
//! progpack), the JSON list of rows, and the Markdown table used by BENCHMARKS.md.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The system every ratio is taken against: progpack's default backend, one `draft` +
/// `finalize` per program.
pub const REFERENCE: &str = "progpack-procmem";
/// The reference of the eBPF workloads: progpack-bpf's JIT.
pub const REFERENCE_BPF: &str = "progpack-bpf-jit";

/// The system `bench`'s ratios are taken against.
pub fn reference_for(bench: &str) -> &'static str {
    if bench.starts_with("ebpf") {
        REFERENCE_BPF
    } else {
        REFERENCE
    }
}

/// One measurement. The JSON output is a list of these, exactly these six keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Workload: `load`, `dispatch`, `footprint`, `churn`, `threads`, `ebpf-load`, `ebpf-filter`.
    pub bench: String,
    /// Which implementation was measured (e.g. `progpack-procmem`, `mmap+mprotect`).
    pub system: String,
    /// Number of programs (or packets) in the workload.
    pub n: u64,
    /// Program size in bytes, or `mix` for the kernel's size mix, or `-`.
    pub size: String,
    /// The measured number.
    pub value: f64,
    /// What `value` counts, e.g. `ns/program`, `ns/call`, `mapped/requested`.
    pub unit: String,
}

/// A sentence attached to a workload and system (an error hit, a limit reached).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Workload the note belongs to.
    pub bench: String,
    /// System the note is about.
    pub system: String,
    /// What happened.
    pub text: String,
}

/// Everything one `progpack bench` run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Measurements in the order they were taken.
    pub rows: Vec<Row>,
    /// Things worth saying next to the numbers.
    pub notes: Vec<Note>,
}

impl Report {
    /// Records one measurement and echoes it to stderr so long runs show progress.
    pub fn push(
        &mut self,
        bench: &str,
        system: &str,
        n: usize,
        size: &str,
        value: f64,
        unit: &str,
    ) {
        eprintln!("  {bench:<10} {system:<24} n={n:<8} size={size:<5} {value:>12.2} {unit}");
        self.rows.push(Row {
            bench: bench.to_string(),
            system: system.to_string(),
            n: n as u64,
            size: size.to_string(),
            value,
            unit: unit.to_string(),
        });
    }

    /// Records a note.
    pub fn note(&mut self, bench: &str, system: &str, text: impl Into<String>) {
        let text = text.into();
        eprintln!("  note: {bench} {system}: {text}");
        self.notes.push(Note {
            bench: bench.to_string(),
            system: system.to_string(),
            text,
        });
    }

    /// The row of `system` in the same group (bench, n, size, unit) as `row`, if measured.
    pub fn find(&self, row: &Row, system: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| same_group(r, row) && r.system == system)
    }

    /// `row.value / reference.value` in the same group, if the reference was measured.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        let reference = self.find(row, reference_for(&row.bench))?;
        (reference.value != 0.0).then(|| row.value / reference.value)
    }

    /// Groups (bench, n, size, unit) in first-seen order, each with its rows.
    pub fn groups(&self) -> Vec<Vec<&Row>> {
        let mut groups: Vec<Vec<&Row>> = Vec::new();
        for row in &self.rows {
            match groups.iter_mut().find(|g| same_group(g[0], row)) {
                Some(g) => g.push(row),
                None => groups.push(vec![row]),
            }
        }
        groups
    }

    /// The rows as a JSON array of `{bench, system, n, size, value, unit}` objects.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.rows).expect("rows are plain data")
    }

    /// The terminal table.
    pub fn to_table(&self) -> String {
        let header = [
            "bench",
            "n",
            "size",
            "unit",
            "system",
            "value",
            "÷ progpack",
        ];
        let mut lines: Vec<[String; 7]> = Vec::new();
        for group in self.groups() {
            for row in group {
                lines.push(self.cells(row));
            }
        }
        let mut widths = header.map(|h| h.chars().count());
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let fmt_line = |out: &mut String, cells: &[String]| {
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                // Numbers right-aligned (n, value, ratio), text left-aligned.
                if matches!(i, 1 | 5 | 6) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
                out.push_str(if i + 1 < cells.len() { "  " } else { "\n" });
            }
        };
        fmt_line(&mut out, &header.map(String::from));
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        let mut last_group: Option<(String, u64, String, String)> = None;
        for (line, row) in lines.iter().zip(self.groups().into_iter().flatten()) {
            let key = (row.bench.clone(), row.n, row.size.clone(), row.unit.clone());
            if last_group.as_ref().is_some_and(|k| *k != key) {
                out.push('\n');
            }
            last_group = Some(key);
            fmt_line(&mut out, line);
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {} / {}: {}", note.bench, note.system, note.text);
        }
        out
    }

    /// A GitHub Markdown table of all rows, then the notes as a list.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| bench | n | size | unit | system | value | ÷ progpack |\n\
             |---|---:|---|---|---|---:|---:|\n",
        );
        for group in self.groups() {
            for row in group {
                let c = self.cells(row);
                let system = if row.system == reference_for(&row.bench) {
                    format!("**{}**", c[4])
                } else {
                    c[4].clone()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    c[0], c[1], c[2], c[3], system, c[5], c[6]
                );
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {} / {}: {}", note.bench, note.system, note.text);
            }
        }
        out
    }

    fn cells(&self, row: &Row) -> [String; 7] {
        [
            row.bench.clone(),
            row.n.to_string(),
            row.size.clone(),
            row.unit.clone(),
            row.system.clone(),
            fmt_value(row.value),
            self.ratio(row).map_or_else(|| "-".to_string(), fmt_ratio),
        ]
    }
}

fn same_group(a: &Row, b: &Row) -> bool {
    a.bench == b.bench && a.n == b.n && a.size == b.size && a.unit == b.unit
}

/// A value with as many digits as are meaningful for a one-run measurement.
pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio like `23.4x`.
pub fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.push("load", REFERENCE, 100, "64", 250.0, "ns/program");
        r.push("load", "mmap+mprotect", 100, "64", 5000.0, "ns/program");
        r.push("load", REFERENCE, 100, "mix", 400.0, "ns/program");
        r.push("dispatch", "mmap+mprotect", 10, "64", 3.3, "ns/call");
        r.note("footprint", "mmap+mprotect", "mmap failed: ENOMEM");
        r
    }

    #[test]
    fn json_is_a_list_of_six_key_rows() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let rows = json.as_array().unwrap();
        assert_eq!(rows.len(), 4);
        let mut keys: Vec<_> = rows[1].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["bench", "n", "size", "system", "unit", "value"]);
        assert_eq!(rows[1]["system"], "mmap+mprotect");
        assert_eq!(rows[1]["n"], 100);
        assert_eq!(rows[1]["size"], "64");
        assert_eq!(rows[1]["value"], 5000.0);
        let back: Vec<Row> = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(back, sample().rows);
    }

    #[test]
    fn ratio_is_against_progpack_in_the_same_group_only() {
        let r = sample();
        assert_eq!(r.ratio(&r.rows[1]), Some(20.0));
        assert_eq!(r.ratio(&r.rows[0]), Some(1.0));
        assert_eq!(r.ratio(&r.rows[3]), None, "no reference in that group");
    }

    #[test]
    fn table_has_ratio_column_and_notes() {
        let t = sample().to_table();
        let line = t
            .lines()
            .find(|l| l.contains("mmap+mprotect") && l.contains("load"))
            .unwrap();
        assert!(line.trim_end().ends_with("20.0x"), "{line}");
        assert!(line.contains("5000"));
        let dispatch = t.lines().find(|l| l.starts_with("dispatch")).unwrap();
        assert!(dispatch.trim_end().ends_with('-'), "{dispatch}");
        assert!(t.contains("note: footprint / mmap+mprotect: mmap failed: ENOMEM"));
        // All data lines are equally wide up to the last column (aligned).
        let header = t.lines().next().unwrap();
        assert!(header.starts_with("bench"));
        assert!(header.contains("÷ progpack"));
    }

    #[test]
    fn markdown_table_is_well_formed() {
        let md = sample().to_markdown();
        let table: Vec<&str> = md.lines().take_while(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 2 + 4);
        for line in &table {
            assert_eq!(line.matches('|').count(), 8, "{line}");
        }
        assert!(md.contains("**progpack-procmem**"));
        assert!(md.contains("- footprint / mmap+mprotect: mmap failed: ENOMEM"));
    }

    #[test]
    fn values_are_formatted_by_magnitude() {
        assert_eq!(fmt_value(1234.56), "1235");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(1.2345), "1.23");
        assert_eq!(fmt_ratio(0.5), "0.50x");
        assert_eq!(fmt_ratio(123.4), "123x");
    }
}
