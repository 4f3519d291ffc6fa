//! PCRE2 JIT compile + match + free time, with whichever executable allocator this build of
//! PCRE2 has: progpack's sljit hooks (the default here), or sljit's own (a build whose
//! CFLAGS leave the hooks out). Run both and compare:
//!
//! ```sh
//! cd integrations/pcre2
//! cargo run --release --bin pcre2-bench
//! CARGO_TARGET_DIR=../../target/pcre2-stock \
//!   cargo --config 'env.CFLAGS.value="-O2"' --config env.CFLAGS.force=true \
//!     run --release --bin pcre2-bench
//! ```
//!
//! Workload: the realistic patterns in every flavor plus random patterns, keeping only those
//! that compile and match every subject without hitting a resource limit (the same set in
//! both builds: it depends only on the seed), compiled with JIT, each matched against every
//! subject, then dropped. Each phase is timed over several rounds; the median is printed.

use pcre2::bytes::Regex;
use progpack_pcre2::corpus::{random_pattern, subjects, Flavor, Rng, REALISTIC};
use std::time::{Duration, Instant};

const RANDOM: usize = 1600;
const SUBJECTS: usize = 32;
const ROUNDS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The patterns and flavors of the workload, and the subjects.
fn workload() -> (Vec<(String, Flavor)>, Vec<Vec<u8>>) {
    let mut rng = Rng::new(0x0be9_c4e2);
    let mut candidates: Vec<(String, Flavor)> = Vec::new();
    for p in REALISTIC {
        for f in Flavor::ALL {
            candidates.push((p.to_string(), f));
        }
    }
    for _ in 0..RANDOM {
        let p = random_pattern(&mut rng, 2, &mut 0);
        candidates.push((p, rng.pick(&Flavor::ALL)));
    }
    let subjects: Vec<Vec<u8>> = subjects(&mut rng, "2024-01-31 foo@bar.com (a(b)c)", SUBJECTS)
        .into_iter()
        .map(|s| String::from_utf8_lossy(&s).into_owned().into_bytes())
        .collect();
    let usable = candidates
        .into_iter()
        .filter(|(p, f)| {
            f.builder(true)
                .build(p)
                .is_ok_and(|re| subjects.iter().all(|s| re.is_match(s).is_ok()))
        })
        .collect();
    (usable, subjects)
}

fn main() {
    let hooked = progpack_pcre2::hooks_active();
    let (patterns, subjects) = workload();
    let (mut compile, mut matching, mut free) = (Vec::new(), Vec::new(), Vec::new());
    let mut matches = 0usize;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let regexes: Vec<Regex> = patterns
            .iter()
            .map(|(p, f)| f.builder(true).build(p).expect("checked in workload()"))
            .collect();
        compile.push(t.elapsed());
        if hooked {
            assert_eq!(progpack_pcre2::shared_stats().programs, regexes.len());
        }

        let t = Instant::now();
        matches = 0;
        for re in &regexes {
            for s in &subjects {
                matches += re.find(s).expect("checked in workload()").is_some() as usize;
            }
        }
        matching.push(t.elapsed());

        let t = Instant::now();
        drop(regexes);
        free.push(t.elapsed());
    }
    let n = patterns.len();
    let (c, m, f) = (median(compile), median(matching), median(free));
    println!(
        "allocator: {}",
        if hooked {
            "progpack (sljit hooks)"
        } else {
            "sljit's own"
        }
    );
    println!(
        "patterns: {n}, subjects: {}, matches: {matches}, rounds: {ROUNDS} (medians)",
        subjects.len()
    );
    println!(
        "compile (JIT) {:>8.2} ms  {:>6.2} us/pattern",
        c.as_secs_f64() * 1e3,
        c.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "match         {:>8.2} ms  {:>6.3} us/match call",
        m.as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e6 / (n * subjects.len()) as f64
    );
    println!(
        "free          {:>8.2} ms  {:>6.2} us/pattern",
        f.as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e6 / n as f64
    );
    let total = c + m + f;
    println!("total         {:>8.2} ms", total.as_secs_f64() * 1e3);
    if hooked {
        let s = progpack_pcre2::shared_stats();
        println!(
            "progpack: packs mapped over the run {}, live programs at the end {}",
            s.packs_mapped_total, s.programs
        );
    }
}
