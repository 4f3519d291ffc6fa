//! `Regex` and `RegexBuilder` as in `pcre2::bytes`, except that every pattern is
//! JIT-compiled (the published defaults interpret). Running the pcre2 crate's own tests
//! through these makes its whole suite a test of code placed by progpack.
//!
//! Both dereference to the real types, so every method of the real API is available;
//! `RegexBuilder::new` starts from `jit(true)`, and a test may still change that.

use std::ops::{Deref, DerefMut};

/// A builder whose patterns are JIT-compiled unless told otherwise.
#[derive(Clone, Debug)]
pub struct RegexBuilder(pcre2::bytes::RegexBuilder);

impl RegexBuilder {
    /// `pcre2::bytes::RegexBuilder::new()` with `jit(true)`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> RegexBuilder {
        let mut b = pcre2::bytes::RegexBuilder::new();
        b.jit(true);
        RegexBuilder(b)
    }
}

impl Deref for RegexBuilder {
    type Target = pcre2::bytes::RegexBuilder;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for RegexBuilder {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A JIT-compiled regex.
#[derive(Clone, Debug)]
pub struct Regex(pcre2::bytes::Regex);

impl Regex {
    /// Compiles and JIT-compiles `pattern` with default options.
    pub fn new(pattern: &str) -> Result<Regex, pcre2::Error> {
        RegexBuilder::new().build(pattern).map(Regex)
    }
}

impl Deref for Regex {
    type Target = pcre2::bytes::Regex;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
