//! The goals `progpack bench` checks, against one run's rows: what the fast path must beat
//! (jit-allocator, mmap+mprotect), what packing may cost in memory and mappings, and the eBPF
//! VM against rbpf.

use super::report::{fmt_ratio, fmt_value, Report, Row};
use std::fmt::Write as _;

/// Outcome of one goal.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The measured ratio meets the goal.
    Met,
    /// It does not.
    Missed,
    /// A row it needs was not measured (the reason says which).
    NotMeasured,
}

/// One goal with what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// The goal as the issue states it.
    pub text: String,
    /// The measured ratio (or value) and what it compares.
    pub measured: String,
    /// Met or not.
    pub verdict: Verdict,
}

fn value(r: &Report, bench: &str, system: &str, n: u64, size: &str, unit: &str) -> Option<f64> {
    r.rows
        .iter()
        .find(|row: &&Row| {
            row.bench == bench
                && row.system == system
                && row.n == n
                && row.size == size
                && row.unit == unit
        })
        .map(|row| row.value)
}

/// A goal "`num / den >= target`" (both times, so this is "den is target times faster").
fn ratio_goal(text: &str, num: Option<(f64, &str)>, den: Option<(f64, &str)>, target: f64) -> Goal {
    match (num, den) {
        (Some((a, an)), Some((b, bn))) if b > 0.0 => {
            let ratio = a / b;
            Goal {
                text: text.to_string(),
                measured: format!(
                    "{an} {} / {bn} {} = {}",
                    fmt_value(a),
                    fmt_value(b),
                    fmt_ratio(ratio)
                ),
                verdict: if ratio >= target {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            }
        }
        _ => Goal {
            text: text.to_string(),
            measured: format!(
                "not measured ({} missing)",
                [(num.is_none(), "numerator"), (den.is_none(), "denominator")]
                    .iter()
                    .filter(|(m, _)| *m)
                    .map(|(_, w)| *w)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            verdict: Verdict::NotMeasured,
        },
    }
}

/// A goal "`value <= limit`" on one row.
fn at_most_goal(text: &str, v: Option<f64>, limit: f64, what: &str) -> Goal {
    one_row_goal(
        text,
        v,
        |v| v <= limit,
        |v| format!("{what} {}", fmt_value(v)),
    )
}

/// A goal "`value >= floor`" on one row.
fn at_least_goal(text: &str, v: Option<f64>, floor: f64, what: &str) -> Goal {
    one_row_goal(
        text,
        v,
        |v| v >= floor,
        |v| format!("{what} {}", fmt_ratio(v)),
    )
}

/// A goal on one row's value `v`: met if `met(v)`, shown as `shown(v)`.
fn one_row_goal(
    text: &str,
    v: Option<f64>,
    met: impl Fn(f64) -> bool,
    shown: impl Fn(f64) -> String,
) -> Goal {
    match v {
        Some(v) => Goal {
            text: text.to_string(),
            measured: shown(v),
            verdict: if met(v) {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
        None => Goal {
            text: text.to_string(),
            measured: "not measured".into(),
            verdict: Verdict::NotMeasured,
        },
    }
}

/// The largest N a workload has rows for.
fn largest_n(r: &Report, bench: &str, default: u64) -> u64 {
    r.rows
        .iter()
        .filter(|row| row.bench == bench)
        .map(|row| row.n)
        .max()
        .unwrap_or(default)
}

/// Of two systems' rows, the faster (smaller) one.
fn faster(
    a: Option<(f64, &'static str)>,
    b: Option<(f64, &'static str)>,
) -> Option<(f64, &'static str)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
        (x, y) => x.or(y),
    }
}

/// Checks every goal that this run has rows for: the fast path's (per-program instructions,
/// load, dispatch, threads and churn against jit-allocator and mmap+mprotect), the footprint's,
/// and the eBPF VM's.
pub fn evaluate(r: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    allocator_goals(r, &mut goals);
    footprint_goals(r, &mut goals);
    goals.extend(ebpf_goals(r));
    goals
}

/// The fast path: a load costs a copy and a few bit operations, so progpack is ahead of
/// jit-allocator on every load and dispatch row, and scales with threads.
fn allocator_goals(r: &Report, goals: &mut Vec<Goal>) {
    let count = |system: &str, unit: &str| value(r, "count", system, 4000, "64", unit);
    for (op, unit) in [("load", "instructions/load"), ("free", "instructions/free")] {
        goals.push(at_most_goal(
            &format!("callgrind, 64 B, dualmap, one by one: <= 200 instructions per {op}"),
            count("progpack-dualmap", unit),
            200.0,
            "progpack-dualmap",
        ));
    }
    let load_n = 10_000;
    let load = |system: &'static str| {
        value(r, "load", system, load_n, "64", "ns/program").map(|v| (v, system))
    };
    goals.push(ratio_goal(
        &format!("load 64 B x {load_n}: progpack batched >= 20x faster than mmap+mprotect"),
        load("mmap+mprotect"),
        load("progpack-procmem-batch"),
        20.0,
    ));
    goals.push(ratio_goal(
        &format!("load 64 B x {load_n}: progpack-procmem-batch >= 1.5x faster than jit-allocator-dualmap"),
        load("jit-allocator-dualmap"),
        load("progpack-procmem-batch"),
        1.5,
    ));
    goals.push(ratio_goal(
        &format!("load 64 B x {load_n}: progpack-dualmap one by one at least as fast as jit-allocator-dualmap"),
        load("jit-allocator-dualmap"),
        load("progpack-dualmap"),
        1.0,
    ));
    let full = largest_n(r, "dispatch", 10_000) >= 100_000;
    for n in [10_000u64, 100_000] {
        if n == 100_000 && !full {
            continue;
        }
        for size in ["64", "512"] {
            let d = |system: &'static str| {
                value(r, "dispatch", system, n, size, "ns/call").map(|v| (v, system))
            };
            goals.push(ratio_goal(
                &format!("dispatch {n} programs of {size} B: default Config at least as fast as jit-allocator (its faster mode)"),
                faster(d("jit-allocator-rwx"), d("jit-allocator-dualmap")),
                d("progpack-procmem"),
                1.0,
            ));
        }
    }
    let th_n = largest_n(r, "threads", 0);
    for system in [
        "progpack-procmem",
        "progpack-procmem-batch",
        "progpack-dualmap",
    ] {
        goals.push(at_least_goal(
            &format!("threads: 2 threads load >= 1.6x as fast as one ({system})"),
            value(r, "threads", system, th_n, "64", "speedup 2 vs 1 thread"),
            1.6,
            system,
        ));
    }
    let ch_n = largest_n(r, "churn", 10_000);
    let churn = |system: &'static str| {
        value(r, "churn", system, ch_n, "mix", "ns/replace").map(|v| (v, system))
    };
    for (system, target) in [("progpack-procmem", 5.0), ("progpack-dualmap", 10.0)] {
        goals.push(ratio_goal(
            &format!("churn: {system} >= {target}x faster than mmap+mprotect per replace"),
            churn("mmap+mprotect"),
            churn(system),
            target,
        ));
    }
}

/// Footprint: packing costs almost nothing in memory and adds almost no mappings.
fn footprint_goals(r: &Report, goals: &mut Vec<Goal>) {
    let fp_n = largest_n(r, "footprint", 1_000_000);
    let fp = |size: &str, unit: &str| value(r, "footprint", "progpack-procmem", fp_n, size, unit);
    goals.push(at_most_goal(
        "footprint, kernel size mix: mapped / requested <= 1.10",
        fp("mix", "mapped/requested"),
        1.10,
        &format!("progpack-procmem ({fp_n} programs)"),
    ));
    for size in ["64", "mix"] {
        let text =
            format!("footprint, {fp_n} programs of size {size}: at most packs + 16 mappings");
        goals.push(match (fp(size, "mappings added"), fp(size, "packs")) {
            (Some(maps), Some(packs)) => Goal {
                text,
                measured: format!(
                    "{} mappings added, {} packs",
                    fmt_value(maps),
                    fmt_value(packs)
                ),
                verdict: if maps <= packs + 16.0 {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            },
            _ => Goal {
                text,
                measured: "not measured".into(),
                verdict: Verdict::NotMeasured,
            },
        });
    }
}

/// A goal "`num / den <= limit`" (both times: "num is at most limit times den").
fn max_ratio_goal(
    text: &str,
    num: Option<(f64, &str)>,
    den: Option<(f64, &str)>,
    limit: f64,
) -> Goal {
    let mut g = ratio_goal(text, num, den, 0.0);
    if let (Some((a, _)), Some((b, _))) = (num, den) {
        if b > 0.0 {
            g.verdict = if a / b <= limit {
                Verdict::Met
            } else {
                Verdict::Missed
            };
        }
    }
    g
}

/// The eBPF goals: compile and load times against rbpf's JIT, the packet filter with packets
/// in cache, and the byte-sum loop against JIT code without checks.
fn ebpf_goals(r: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    let eb_n = largest_n(r, "ebpf-load", 10_000);
    let eb = |system: &'static str| {
        value(r, "ebpf-load", system, eb_n, "10 insns", "ns/program").map(|v| (v, system))
    };
    let text = "eBPF: compile of a 10-instruction program <= 300 ns (progpack-bpf-jit-compile)";
    goals.push(match eb("progpack-bpf-jit-compile") {
        Some((v, _)) => Goal {
            text: text.into(),
            measured: format!("{} ns", fmt_value(v)),
            verdict: if v <= 300.0 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
        None => Goal {
            text: text.into(),
            measured: "not measured".into(),
            verdict: Verdict::NotMeasured,
        },
    });
    for (system, target, how) in [
        ("progpack-bpf-jit", 10.0, "one by one"),
        ("progpack-bpf-jit-batch", 20.0, "batched"),
    ] {
        goals.push(ratio_goal(
            &format!(
                "eBPF: load {eb_n} programs {how} with JIT >= {target}x faster than rbpf's JIT ({system})"
            ),
            eb("rbpf-jit"),
            eb(system),
            target,
        ));
    }
    let hot_n = largest_n(r, "ebpf-filter-hot", 1_000_000);
    let hot = |system: &'static str| {
        value(r, "ebpf-filter-hot", system, hot_n, "64-128", "ns/packet").map(|v| (v, system))
    };
    goals.push(ratio_goal(
        "eBPF: packet filter, packets in cache, checks and instruction limit on: >= 1.5x faster than rbpf's JIT",
        hot("rbpf-jit"),
        hot("progpack-bpf-jit"),
        1.5,
    ));
    let sum_n = largest_n(r, "ebpf-sum", 0);
    let sum = |system: &'static str| {
        value(r, "ebpf-sum", system, sum_n, "4 KiB", "ns/run").map(|v| (v, system))
    };
    goals.push(max_ratio_goal(
        "eBPF: 4 KiB byte-sum loop, checks and instruction limit on: within 1.2x of JIT code without checks",
        sum("progpack-bpf-jit"),
        sum("progpack-bpf-jit-unchecked"),
        1.2,
    ));
    goals
}

fn verdict_word(v: &Verdict) -> &'static str {
    match v {
        Verdict::Met => "met",
        Verdict::Missed => "MISSED",
        Verdict::NotMeasured => "not measured",
    }
}

/// Goals as plain text lines.
pub fn to_text(goals: &[Goal]) -> String {
    let mut out = String::from("Goals:\n");
    for g in goals {
        let _ = writeln!(
            out,
            "  [{}] {} — {}",
            verdict_word(&g.verdict),
            g.text,
            g.measured
        );
    }
    out
}

/// Goals as a Markdown table.
pub fn to_markdown(goals: &[Goal]) -> String {
    let mut out = String::from("| goal | measured | verdict |\n|---|---|---|\n");
    for g in goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            g.text,
            g.measured,
            verdict_word(&g.verdict)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_goals_met_and_missed() {
        let mut r = Report::default();
        r.push("load", "mmap+mprotect", 10_000, "64", 5000.0, "ns/program");
        r.push(
            "load",
            "progpack-procmem-batch",
            10_000,
            "64",
            200.0,
            "ns/program",
        );
        r.push(
            "load",
            "jit-allocator-dualmap",
            10_000,
            "64",
            150.0,
            "ns/program",
        );
        r.push(
            "count",
            "progpack-dualmap",
            4000,
            "64",
            190.0,
            "instructions/load",
        );
        r.push(
            "count",
            "progpack-dualmap",
            4000,
            "64",
            210.0,
            "instructions/free",
        );
        let g = evaluate(&r);
        let find = |t: &str| g.iter().find(|g| g.text.contains(t)).expect(t).clone();
        assert_eq!(find("per load").verdict, Verdict::Met);
        assert_eq!(find("per free").verdict, Verdict::Missed);
        let vs_mmap = find("20x faster than mmap");
        assert_eq!(vs_mmap.verdict, Verdict::Met, "{vs_mmap:?}");
        assert!(vs_mmap.measured.ends_with("25.0x"), "{}", vs_mmap.measured);
        assert_eq!(
            find("1.5x faster than jit-allocator").verdict,
            Verdict::Missed
        );
        assert_eq!(
            find("one by one at least as fast").verdict,
            Verdict::NotMeasured
        );
    }

    #[test]
    fn ebpf_goals_met_and_missed() {
        let mut r = Report::default();
        let load = |r: &mut Report, s: &str, v: f64| {
            r.push("ebpf-load", s, 2000, "10 insns", v, "ns/program")
        };
        load(&mut r, "progpack-bpf-jit-compile", 250.0);
        load(&mut r, "rbpf-jit", 6000.0);
        load(&mut r, "progpack-bpf-jit", 1000.0);
        load(&mut r, "progpack-bpf-jit-batch", 250.0);
        r.push(
            "ebpf-sum",
            "progpack-bpf-jit",
            100,
            "4 KiB",
            1300.0,
            "ns/run",
        );
        r.push(
            "ebpf-sum",
            "progpack-bpf-jit-unchecked",
            100,
            "4 KiB",
            1000.0,
            "ns/run",
        );
        let g = ebpf_goals(&r);
        let verdicts: Vec<&Verdict> = g.iter().map(|g| &g.verdict).collect();
        assert_eq!(
            verdicts,
            [
                &Verdict::Met,         // 250 ns <= 300
                &Verdict::Missed,      // 6x < 10x
                &Verdict::Met,         // 24x >= 20x
                &Verdict::NotMeasured, // no filter rows
                &Verdict::Missed,      // 1.3x > 1.2x
            ],
            "{g:?}"
        );
    }

    #[test]
    fn markdown_has_one_line_per_goal() {
        let g = evaluate(&Report::default());
        let md = to_markdown(&g);
        assert_eq!(md.lines().count(), 2 + g.len());
    }
}
