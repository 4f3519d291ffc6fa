//! PCRE2's JIT (its code placed by progpack) against PCRE2's interpreter: thousands of
//! patterns, each with a set of subjects, must give the same matches and captures, or the
//! same error. Under a seccomp filter that kills the process on any writable+executable
//! mapping request, and with progpack's counters showing that every JIT-compiled pattern put
//! exactly one program in progpack's packs and that all of them were freed.
//!
//! One test in this file on purpose: the filter is process-wide and irreversible, and the
//! counters are exact only while nothing else in the process compiles patterns.

use pcre2::bytes::Regex;
use progpack_pcre2::corpus::{random_pattern, subjects, Flavor, Rng};
use progpack_pcre2::{shared_stats, wx};

const RANDOM_PATTERNS: usize = 3000;
const SUBJECTS: usize = 12;
const MAX_MATCHES: usize = 64;

/// Every match of `re` in `subject` (at most MAX_MATCHES), each as the spans of all groups.
type Outcome = Result<Vec<Vec<Option<(usize, usize)>>>, String>;

/// Iterates matches the way PCRE2's own demo program does: after an empty match, the next
/// search starts one character later (in UTF mode, past the whole UTF-8 sequence: a start
/// offset inside a character is outside PCRE2's contract, and the two engines are not
/// required to agree there).
fn all_captures(re: &Regex, subject: &[u8], utf: bool) -> Outcome {
    let mut out = Vec::new();
    let mut locs = re.capture_locations();
    let mut start = 0;
    while start <= subject.len() && out.len() < MAX_MATCHES {
        let Some(m) = re
            .captures_read_at(&mut locs, subject, start)
            .map_err(|e| e.to_string())?
        else {
            break;
        };
        out.push((0..locs.len()).map(|i| locs.get(i)).collect());
        start = if m.end() > m.start() {
            m.end()
        } else {
            let mut next = m.end() + 1;
            while utf && next < subject.len() && subject[next] & 0xc0 == 0x80 {
                next += 1;
            }
            next
        };
    }
    Ok(out)
}

#[derive(Default, Debug)]
struct Tally {
    patterns: usize,
    compile_errors: usize,
    jit_programs: usize,
    subjects: usize,
    matched: usize,
    match_errors: usize,
    limits: usize,
}

/// Compiles `pattern` both ways, compares every subject, checks the counters.
fn compare(pattern: &str, flavor: Flavor, rng: &mut Rng, tally: &mut Tally) {
    tally.patterns += 1;
    let interp = flavor.builder(false).build(pattern);
    let before = shared_stats().programs;
    let jit = flavor.builder(true).build(pattern);
    let (interp, jit) = match (interp, jit) {
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "{pattern:?} {flavor:?}");
            tally.compile_errors += 1;
            return;
        }
        (Ok(i), Ok(j)) => (i, j),
        (i, j) => panic!(
            "{pattern:?} {flavor:?}: interpreter compile {:?}, JIT compile {:?}",
            i.err(),
            j.err()
        ),
    };
    assert_eq!(
        shared_stats().programs,
        before + 1,
        "{pattern:?}: JIT-compiling one pattern must place exactly one program with progpack"
    );
    tally.jit_programs += 1;
    let utf = matches!(flavor, Flavor::Unicode);
    for mut subject in subjects(rng, pattern, SUBJECTS) {
        if utf {
            // Valid UTF-8 only. With PCRE2_MATCH_INVALID_UTF (which the pcre2 crate sets with
            // `ucp`) PCRE2 10.46's JIT and interpreter disagree about empty matches next to an
            // invalid byte; stock PCRE2, with sljit's own allocator, does the same, so that is
            // not a property of where the code lives.
            subject = String::from_utf8_lossy(&subject).into_owned().into_bytes();
        }
        let want = all_captures(&interp, &subject, utf);
        let got = all_captures(&jit, &subject, utf);
        // The engines have different resource limits (the interpreter's match and heap
        // limits, the JIT's stack): a limit hit on one side is not a disagreement.
        let limit = |o: &Outcome| o.as_ref().is_err_and(|e| e.contains("limit"));
        if limit(&want) || limit(&got) {
            tally.limits += 1;
            continue;
        }
        assert_eq!(
            got,
            want,
            "{pattern:?} {flavor:?} on {:?}: JIT (left) vs interpreter (right)",
            subject.escape_ascii().to_string()
        );
        tally.subjects += 1;
        match want {
            Ok(m) if !m.is_empty() => tally.matched += 1,
            Err(_) => tally.match_errors += 1,
            _ => {}
        }
    }
    drop(jit);
    assert_eq!(
        shared_stats().programs,
        before,
        "{pattern:?}: freeing the regex frees its program"
    );
}

#[test]
fn jit_matches_interpreter_under_wx_filter() {
    assert!(
        progpack_pcre2::hooks_active(),
        "PCRE2 was built without progpack's sljit hooks"
    );
    wx::forbid_writable_executable().expect("install the seccomp filter");
    wx::check_filter_kills_wx().expect("the filter is in force");
    let start = shared_stats();

    let mut rng = Rng::new(0x5eed_9c4e);
    let mut tally = Tally::default();
    for pattern in progpack_pcre2::corpus::REALISTIC {
        for flavor in Flavor::ALL {
            compare(pattern, flavor, &mut rng, &mut tally);
        }
    }
    for _ in 0..RANDOM_PATTERNS {
        let pattern = random_pattern(&mut rng, 3, &mut 0);
        let flavor = rng.pick(&Flavor::ALL);
        compare(&pattern, flavor, &mut rng, &mut tally);
    }

    let end = shared_stats();
    println!("{tally:?}");
    println!(
        "progpack placed and freed {} JIT programs; packs mapped in the process so far: {}; \
         backend {}",
        tally.jit_programs,
        end.packs_mapped_total,
        // SAFETY: `backend` is a static NUL-terminated string from the C API.
        unsafe { std::ffi::CStr::from_ptr(end.backend) }.to_string_lossy()
    );
    assert_eq!(end.programs, start.programs, "every JIT program was freed");
    assert_eq!(
        end.allocations, start.allocations,
        "no draft was left behind"
    );
    assert!(
        tally.patterns >= 3000 && tally.subjects >= 30_000,
        "{tally:?}"
    );
    assert!(
        tally.jit_programs * 10 >= tally.patterns * 7,
        "most patterns compile: {tally:?}"
    );
    assert!(
        tally.matched * 10 >= tally.subjects,
        "enough subjects match: {tally:?}"
    );
    assert!(
        tally.limits * 100 <= tally.subjects,
        "few resource-limit skips: {tally:?}"
    );
}
