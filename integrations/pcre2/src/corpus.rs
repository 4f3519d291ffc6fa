//! Patterns and subjects for the differential test and the benchmark: a list of realistic
//! patterns plus patterns drawn from a small grammar that covers PCRE2's constructs
//! (classes, groups, alternation, back-references, lookaround, atomic groups, possessive and
//! lazy quantifiers, anchors, inline options), and subjects built from the same alphabet so
//! that patterns match, fail and partially match. Deterministic for a given seed.

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Patterns people write: validation, log scraping, tokenizing, with the features that make
/// a regex engine work (back-references, lookaround, recursion, conditionals, Unicode).
pub const REALISTIC: &[&str] = &[
    r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
    r"\b\d{4}-\d{2}-\d{2}\b",
    r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})",
    r"^(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?$",
    r"https?://[^\s/$.?#].[^\s]*",
    r"\b(\w+)\s+\1\b",
    r"(?i)\berror\b.*?(\d+)",
    r"(?<=\$)\d+(?:\.\d\d)?",
    r"\b(?!un)\w+able\b",
    r"^\s*#\s*include\s*[<\x22]([^>\x22]+)[>\x22]",
    r"(?<year>\d{4})-(?<month>\d\d)-(?<day>\d\d)",
    r"\((?:[^()]++|(?R))*\)",
    r"^(?:(a)|b)(?(1)c|d)$",
    r"(?>a+)b",
    r"a++b",
    r"x*+y",
    r"(a|ab)(c|bcd)(d*)",
    r"(?m)^\w+:",
    r"(?s)begin.*?end",
    r"[[:alpha:]]+[[:digit:]]*",
    r"[^\x00-\x7f]+",
    r"\p{L}+",
    r"\p{Lu}\p{Ll}+",
    r"(?i)straße|STRASSE",
    r"\bfoo(?=bar)",
    r"(?<!\d)\d{3}(?!\d)",
    r"(\w)(\w)?(?(2)\2|x)",
    r"(?|(a)|(b))\1",
    r"(a(b(c(d)?)?)?)?e",
    r"[aeiou]{2,}",
    r"(?:ab){2,4}?c",
    r"\G\d",
    r"^$",
    r"",
    r"\Aabc\z",
    r"abc\Z",
    r"(?x) a \s+ b  # comment",
    r"\x{41}\x{e9}?",
    r"[\w&&[^\d]]",
    r"(?U)a+",
    r"(.)\1{2}",
    r"(?:(?:(?:a*)*)*)*b",
    r"(a*)*b",
    r"^(a+)+$",
    r"\d+(?:,\d{3})*(?:\.\d+)?",
    r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?",
    r"(?i:hello) world",
    r"\bthe\b|\ba\b",
    r"[\t ]+$",
    r"(?<q>['\x22]).*?\k<q>",
];

const LITERALS: &[&str] = &[
    "a", "b", "c", "x", "y", "z", "0", "1", "9", " ", "-", ".", "é", "β",
];
const CLASSES: &[&str] = &[
    r"\d",
    r"\w",
    r"\s",
    r"\D",
    r"\W",
    r"\S",
    ".",
    "[a-c]",
    "[^ab0-9]",
    "[xyz]",
    r"[\d.-]",
    r"\p{L}",
    r"\h",
    r"\R",
    r"[[:space:]]",
];
const QUANTIFIERS: &[&str] = &[
    "", "", "", "*", "+", "?", "*?", "+?", "??", "*+", "++", "{2}", "{1,3}", "{0,2}?", "{2,}",
];
const ANCHORS: &[&str] = &["^", "$", r"\b", r"\B", r"\A", r"\z"];

/// A random pattern of nesting depth at most `depth`. `groups` counts capturing groups opened
/// so far, so back-references only name groups that exist.
pub fn random_pattern(rng: &mut Rng, depth: usize, groups: &mut usize) -> String {
    let mut out = String::new();
    for _ in 0..1 + rng.below(4) {
        let atom = match rng.below(if depth == 0 { 4 } else { 12 }) {
            0 | 1 => rng.pick(LITERALS).to_string(),
            2 => rng.pick(CLASSES).to_string(),
            3 => rng.pick(ANCHORS).to_string(),
            4 => {
                *groups += 1;
                format!("({})", random_pattern(rng, depth - 1, groups))
            }
            5 => format!("(?:{})", random_pattern(rng, depth - 1, groups)),
            6 => format!(
                "(?:{}|{})",
                random_pattern(rng, depth - 1, groups),
                random_pattern(rng, depth - 1, groups)
            ),
            7 if *groups > 0 => format!("\\{}", 1 + rng.below(*groups)),
            8 => format!(
                "(?{}{})",
                rng.pick(&["=", "!"]),
                random_pattern(rng, depth - 1, groups)
            ),
            9 => format!("(?{}{})", rng.pick(&["<=", "<!"]), rng.pick(LITERALS)),
            10 => format!("(?>{})", random_pattern(rng, depth - 1, groups)),
            _ => format!(
                "(?{}:{})",
                rng.pick(&["i", "s", "m", "x", "-i"]),
                random_pattern(rng, depth - 1, groups)
            ),
        };
        out.push_str(&atom);
        if !ANCHORS.contains(&atom.as_str()) {
            out.push_str(rng.pick(QUANTIFIERS));
        }
    }
    out
}

/// `n` subjects for a pattern: random text over the patterns' alphabet (with newlines,
/// non-ASCII letters and now and then an invalid UTF-8 byte), pieces of the pattern itself,
/// and the empty string.
pub fn subjects(rng: &mut Rng, pattern: &str, n: usize) -> Vec<Vec<u8>> {
    const ALPHABET: &[&str] = &[
        "a",
        "b",
        "c",
        "x",
        "y",
        "z",
        "0",
        "1",
        "9",
        " ",
        "-",
        ".",
        "\n",
        "é",
        "β",
        "A",
        "ab",
        "abc",
        "foo",
        "bar",
        "2024-01-31",
        "@",
        "(",
        ")",
        "'",
        "\"",
        "\t",
        "STRASSE",
    ];
    let mut out = vec![Vec::new()];
    while out.len() < n {
        let mut s = Vec::new();
        for _ in 0..rng.below(24) {
            match rng.below(10) {
                0 if !pattern.is_empty() => {
                    let bytes = pattern.as_bytes();
                    let start = rng.below(bytes.len());
                    let end = (start + 1 + rng.below(6)).min(bytes.len());
                    s.extend_from_slice(&bytes[start..end]);
                }
                1 if rng.below(20) == 0 => s.push(0xff),
                _ => s.extend_from_slice(rng.pick(ALPHABET).as_bytes()),
            }
        }
        out.push(s);
    }
    out
}

/// The compile options a pattern is tried with.
#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    /// No options.
    Plain,
    /// `caseless`.
    Caseless,
    /// `multi_line` and `dotall`.
    MultiLineDotAll,
    /// `utf` and `ucp`: invalid UTF-8 subjects are errors, in both engines.
    Unicode,
}

impl Flavor {
    /// Every flavor.
    pub const ALL: [Flavor; 4] = [
        Flavor::Plain,
        Flavor::Caseless,
        Flavor::MultiLineDotAll,
        Flavor::Unicode,
    ];

    /// A builder with these options, JIT on or off.
    pub fn builder(self, jit: bool) -> pcre2::bytes::RegexBuilder {
        let mut b = pcre2::bytes::RegexBuilder::new();
        b.jit(jit);
        match self {
            Flavor::Plain => {}
            Flavor::Caseless => {
                b.caseless(true);
            }
            Flavor::MultiLineDotAll => {
                b.multi_line(true).dotall(true);
            }
            Flavor::Unicode => {
                b.utf(true).ucp(true);
            }
        }
        b
    }
}
