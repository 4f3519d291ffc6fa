//! `progpack bench`: progpack side by side with the alternatives, in one process, on the same
//! inputs.
//!
//! Layout: [`gen`] makes the inputs (sizes, call orders, machine code), [`systems`] holds one
//! file per compared system behind the [`sys::System`] trait, one file per workload
//! ([`load`], [`dispatch`], [`footprint`], [`churn`], [`threads`], [`patch`], [`ebpf`], [`ebpf_loop`],
//! [`ebpf_maps`]), and
//! [`report`], [`goals`] and [`chart`] turn rows into a table, JSON, Markdown and a PNG.
//!
//! Times are from one run on a shared machine: compare ratios within a run, not across runs.

pub mod chart;
pub mod churn;
pub mod count;
pub mod dispatch;
pub mod ebpf;
pub mod ebpf_loop;
pub mod ebpf_maps;
pub mod footprint;
pub mod gen;
pub mod goals;
pub mod load;
pub mod patch;
pub mod procfs;
pub mod report;
pub mod sys;
pub mod systems;
pub mod threads;

use anyhow::Context as _;
use gen::{emit_function, ret_value};
use report::Report;
use std::path::PathBuf;
use sys::{call, Id, SysError, System};
use systems::Kind;

/// Options of `progpack bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Smaller N everywhere (every system and workload still runs); under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Write the rows as JSON (a list of {bench, system, n, size, value, unit}).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the results table (and goals) as Markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write a chart of the main results as PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Run only these workloads (count, load, dispatch, footprint, churn, threads, patch, ebpf).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Run only these systems or eBPF engines (e.g. progpack-procmem,mmap+mprotect,rbpf-jit).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub systems: Vec<String>,
    /// Override N of the load workload (e.g. a small N under callgrind).
    #[arg(long, value_name = "N")]
    pub load_n: Option<usize>,
    /// Run nothing: read rows from this JSON file (written by `--json`) and only write the
    /// table, `--markdown` and `--png` from them (notes are not in the JSON).
    #[arg(long, value_name = "FILE")]
    pub from_json: Option<PathBuf>,
    /// Only this size in the load workload: `64` or `mix` (e.g. under callgrind).
    #[arg(long, value_name = "SIZE")]
    pub load_size: Option<String>,
    /// Internal: the process the `count` workload runs under callgrind (`SYSTEM:N`).
    #[arg(long, value_name = "SYSTEM:N", hide = true)]
    pub count_child: Option<String>,
}

/// The sizes of one run.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Programs per load run.
    pub load_n: Vec<usize>,
    /// Size labels of the load workload (`64`, `mix`).
    pub load_sizes: Vec<String>,
    /// Programs per dispatch run.
    pub dispatch_n: Vec<usize>,
    /// Calls per timed dispatch pass.
    pub dispatch_calls: usize,
    /// Programs in the footprint run.
    pub footprint_n: usize,
    /// Live programs during churn.
    pub churn_live: usize,
    /// Replacements during churn.
    pub churn_replaces: usize,
    /// Programs loaded by the threads workload (split between threads).
    pub threads_n: usize,
    /// eBPF programs loaded.
    pub ebpf_n: usize,
    /// Packets filtered.
    pub ebpf_packets: usize,
    /// Live patches per patch run.
    pub patch_n: usize,
}

impl Scale {
    /// The full run (the numbers in BENCHMARKS.md).
    pub fn full() -> Self {
        Self {
            load_n: vec![10_000, 100_000],
            load_sizes: vec!["64".into(), "mix".into()],
            dispatch_n: vec![1_000, 10_000, 100_000],
            dispatch_calls: 2_000_000,
            footprint_n: 1_000_000,
            churn_live: 10_000,
            churn_replaces: 200_000,
            threads_n: 100_000,
            ebpf_n: 10_000,
            ebpf_packets: 1_000_000,
            patch_n: 20_000,
        }
    }

    /// `--quick`: every system and workload, smaller N.
    pub fn quick() -> Self {
        Self {
            load_n: vec![2_000, 10_000],
            load_sizes: vec!["64".into(), "mix".into()],
            dispatch_n: vec![1_000, 10_000],
            dispatch_calls: 200_000,
            footprint_n: 80_000,
            churn_live: 10_000,
            churn_replaces: 20_000,
            threads_n: 20_000,
            ebpf_n: 2_000,
            ebpf_packets: 200_000,
            patch_n: 2_000,
        }
    }
}

/// Timed repetitions of load, dispatch and threads runs; the fastest is reported (the
/// machine is shared, and the minimum is the least disturbed run).
pub const REPEAT: usize = 3;

/// Programs per `load_many` call: systems with a batch API make this many programs
/// executable at once; the others load them one by one. The first call of each program
/// follows its batch.
pub const BATCH: usize = 1024;

/// Loads `lens.len()` generated programs into `sys` (program `i` returns `ret_value(i)`),
/// calling each once after its batch is loaded and checking the result. Ids go to `ids`.
///
/// Never inlined: it is exactly the timed region of the load workload, so
/// `valgrind --tool=callgrind --toggle-collect='*load_and_call*'` counts just that.
#[allow(unsafe_code)]
#[inline(never)]
pub fn load_and_call(
    sys: &mut dyn System,
    lens: &[usize],
    ids: &mut Vec<Id>,
) -> Result<(), SysError> {
    for (c, chunk) in lens.chunks(BATCH).enumerate() {
        let base = c * BATCH;
        let first = ids.len();
        sys.load_many(
            chunk,
            &mut |i, buf| emit_function(buf, ret_value(base + i)),
            ids,
        )?;
        for (k, &id) in ids[first..].iter().enumerate() {
            // SAFETY: `id` was just loaded by `sys` and is alive; it is a generated
            // `extern "C" fn() -> u32`.
            let got = unsafe { call(sys.addr(id)) };
            assert_eq!(
                got,
                ret_value(base + k),
                "{}: program {} returned the wrong value",
                sys.name(),
                base + k
            );
        }
    }
    Ok(())
}

/// Checks that the programs `(addr, len)` do not overlap (a correctness check on the peers,
/// done outside timed regions). Returns a description of the first overlap.
pub fn find_overlap(ranges: &[(usize, usize)]) -> Option<String> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .find(|w| w[0].0 + w[0].1 > w[1].0)
        .map(|w| {
            format!(
                "program at {:#x} (+{} B) overlaps the program at {:#x} (+{} B)",
                w[0].0, w[0].1, w[1].0, w[1].1
            )
        })
}

/// The first three fields of `/proc/loadavg` (other processes competing for the cores).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the suite.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.count_child {
        return count::child(spec);
    }
    let scale = if args.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    if let Some(path) = &args.from_json {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let rows: Vec<report::Row> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        return write_outputs(
            &args,
            &Report {
                rows,
                notes: Vec::new(),
            },
        );
    }
    let mut scale = scale;
    if let Some(n) = args.load_n {
        scale.load_n = vec![n];
    }
    if let Some(size) = &args.load_size {
        scale.load_sizes = vec![size.clone()];
    }
    let kinds: Vec<Kind> = Kind::all()
        .into_iter()
        .filter(|k| args.systems.is_empty() || args.systems.iter().any(|s| s == k.name()))
        .collect();
    let wants = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut report = Report::default();
    let started = std::time::Instant::now();
    let load_before = loadavg();
    type Workload = fn(&Scale, &[Kind], &mut Report);
    let workloads: [(&str, Workload); 6] = [
        ("load", load::run),
        ("dispatch", dispatch::run),
        ("footprint", footprint::run),
        ("churn", churn::run),
        ("threads", threads::run),
        ("patch", patch::run),
    ];
    if wants("count") {
        eprintln!("== count (callgrind)");
        count::run(&args.systems, &mut report);
    }
    for (name, workload) in workloads {
        if wants(name) {
            eprintln!("== {name}");
            workload(&scale, &kinds, &mut report);
        }
    }
    if wants("ebpf") {
        eprintln!("== ebpf");
        ebpf::run(&scale, &args.systems, &mut report);
    }
    eprintln!("== done in {:.1} s", started.elapsed().as_secs_f64());
    report.note(
        "all",
        "machine",
        format!(
            "{} cores; load average (1/5/15 min) {} at start, {} at end; run took {:.0} s",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_before,
            loadavg(),
            started.elapsed().as_secs_f64()
        ),
    );

    write_outputs(&args, &report)
}

/// Prints the table and goals, and writes the files asked for.
fn write_outputs(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let goals = goals::evaluate(report);
    println!("{}", report.to_table());
    println!("{}", goals::to_text(&goals));
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        let md = format!("{}\n{}", report.to_markdown(), goals::to_markdown(&goals));
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.png {
        chart::draw(report, path).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}
