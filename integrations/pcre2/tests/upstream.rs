//! The pcre2 crate's own test suite, twice: as published (most patterns interpreted, the
//! JIT tests through progpack's hooks) and with every pattern JIT-compiled, so each test also
//! runs code placed by progpack. See `upstream/bytes_tests.rs` for what was copied.

/// The crate's test-only `Match::as_pair` (private, `#[cfg(test)]` in pcre2), for the copied
/// tests that call it.
trait AsPair {
    fn as_pair(&self) -> (usize, usize);
}

impl AsPair for pcre2::bytes::Match<'_> {
    fn as_pair(&self) -> (usize, usize) {
        (self.start(), self.end())
    }
}

// The copied tests are kept as written, lints and all.
#[allow(clippy::useless_format)]
mod as_published {
    use super::AsPair;
    use pcre2::bytes::{Regex, RegexBuilder};
    use pcre2::is_jit_available;
    include!("upstream/bytes_tests.rs");
}

#[allow(clippy::useless_format)]
mod jit_forced {
    use super::AsPair;
    use pcre2::is_jit_available;
    use progpack_pcre2::jit_forced::{Regex, RegexBuilder};
    include!("upstream/bytes_tests.rs");
}

/// The suite above is only worth running here if the JIT is on and places its code with
/// progpack.
#[test]
fn jit_is_available_and_hooked() {
    assert!(pcre2::is_jit_available());
    assert!(
        progpack_pcre2::hooks_active(),
        "PCRE2 was built without progpack's sljit hooks"
    );
}
