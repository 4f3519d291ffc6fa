//! A fixed-size bitmap of chunks, searched a 64-bit word at a time.
//!
//! Invariants: bit `i` is set iff chunk `i` is in use (by a draft, a batch slot or a program);
//! the bits past `len` in the last word are permanently set, so a search never runs past the
//! end; `ones` is the number of set bits below `len`.

const WORD: usize = 64;

/// A bitmap of `len` bits, all clear at creation.
#[derive(Clone, Debug)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
    ones: usize,
    /// Every word before this index is full: searches start here.
    first_maybe_free: usize,
}

impl Bitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: usize) -> Self {
        let nwords = len.div_ceil(WORD);
        let mut words = vec![0u64; nwords];
        let tail = len % WORD;
        if tail != 0 {
            words[nwords - 1] = !0u64 << tail;
        }
        Bitmap {
            words,
            len,
            ones: 0,
            first_maybe_free: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.ones
    }

    /// Number of clear bits.
    pub fn count_zeros(&self) -> usize {
        self.len - self.ones
    }

    /// Value of bit `i` (`i < len`).
    pub fn get(&self, i: usize) -> bool {
        self.words[i / WORD] >> (i % WORD) & 1 == 1
    }

    /// Index of the first run of `n` clear bits, first fit; `None` if there is none or `n == 0`.
    pub fn find_clear_run(&self, n: usize) -> Option<usize> {
        if n == 0 || n > self.count_zeros() {
            return None;
        }
        let mut run_start = 0;
        let mut run_len = 0;
        for (wi, &w) in self.words.iter().enumerate().skip(self.first_maybe_free) {
            if w == 0 {
                if run_len == 0 {
                    run_start = wi * WORD;
                }
                run_len += WORD;
                if run_len >= n {
                    return Some(run_start);
                }
                continue;
            }
            if w == !0 {
                run_len = 0;
                continue;
            }
            let mut bit = 0;
            while bit < WORD {
                let rest = w >> bit;
                // Clear bits from `bit` up to the next set bit (or the end of the word).
                let zeros = if rest == 0 {
                    WORD - bit
                } else {
                    rest.trailing_zeros() as usize
                };
                if zeros > 0 {
                    if run_len == 0 {
                        run_start = wi * WORD + bit;
                    }
                    run_len += zeros;
                    if run_len >= n {
                        return Some(run_start);
                    }
                    bit += zeros;
                    if bit == WORD {
                        break;
                    }
                }
                // A set bit ends the run; skip the whole block of set bits.
                run_len = 0;
                bit += (!(w >> bit)).trailing_zeros() as usize;
            }
        }
        None
    }

    /// True if bits `start..start + n` are all clear and inside the bitmap.
    pub fn is_clear(&self, start: usize, n: usize) -> bool {
        let Some(end) = start.checked_add(n) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        word_masks(start, n).all(|(i, m)| self.words[i] & m == 0)
    }

    /// Sets bits `start..start + n`, which must all be clear (checked in debug builds).
    pub fn set_range(&mut self, start: usize, n: usize) {
        debug_assert!(self.is_clear(start, n), "set_range over used bits");
        for (i, m) in word_masks(start, n) {
            self.words[i] |= m;
        }
        self.ones += n;
        if self.words[self.first_maybe_free] == !0 {
            while self.first_maybe_free + 1 < self.words.len()
                && self.words[self.first_maybe_free] == !0
            {
                self.first_maybe_free += 1;
            }
        }
    }

    /// Clears bits `start..start + n`, which must all be set (checked in debug builds).
    pub fn clear_range(&mut self, start: usize, n: usize) {
        debug_assert!(self.is_set(start, n), "clear_range over free bits");
        for (i, m) in word_masks(start, n) {
            self.words[i] &= !m;
        }
        self.ones -= n;
        self.first_maybe_free = self.first_maybe_free.min(start / WORD);
    }

    /// True if bits `start..start + n` are all set.
    pub fn is_set(&self, start: usize, n: usize) -> bool {
        if start.checked_add(n).is_none_or(|end| end > self.len) {
            return false;
        }
        word_masks(start, n).all(|(i, m)| self.words[i] & m == m)
    }

    /// Length of the run of clear bits containing `start..start + n` (which must be clear),
    /// found a word at a time in both directions.
    pub fn clear_run_around(&self, start: usize, n: usize) -> usize {
        let mut left = start;
        while left > 0 {
            let i = left - 1;
            let below = self.words[i / WORD] & low_bits(i % WORD + 1);
            if below == 0 {
                left -= i % WORD + 1;
            } else {
                left = i / WORD * WORD + (WORD - 1 - below.leading_zeros() as usize) + 1;
                break;
            }
        }
        let mut right = start + n;
        while right < self.len {
            let above = self.words[right / WORD] >> (right % WORD);
            if above == 0 {
                right += WORD - right % WORD;
            } else {
                right += above.trailing_zeros() as usize;
                break;
            }
        }
        right.min(self.len) - left
    }
}

/// For bits `start..start + n`: each word they touch, with the mask of those bits in it.
fn word_masks(start: usize, n: usize) -> impl Iterator<Item = (usize, u64)> {
    let end = start + n;
    let mut i = start;
    std::iter::from_fn(move || {
        (i < end).then(|| {
            let bit = i % WORD;
            let take = (WORD - bit).min(end - i);
            let item = (i / WORD, low_bits(take) << bit);
            i += take;
            item
        })
    })
}

/// The low `k` bits set (`1 <= k <= 64`).
fn low_bits(k: usize) -> u64 {
    if k == WORD {
        !0
    } else {
        (1u64 << k) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious bit-at-a-time search, as the oracle.
    fn naive(bits: &[bool], n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let mut run = 0;
        for (i, &b) in bits.iter().enumerate() {
            run = if b { 0 } else { run + 1 };
            if run == n {
                return Some(i + 1 - n);
            }
        }
        None
    }

    #[test]
    fn zero_length_request_finds_nothing() {
        let b = Bitmap::new(100);
        assert_eq!(b.find_clear_run(0), None);
    }

    #[test]
    fn whole_bitmap_and_one_more() {
        for len in [1, 63, 64, 65, 128, 130, 32768] {
            let mut b = Bitmap::new(len);
            assert_eq!(b.find_clear_run(len), Some(0), "len {len}");
            assert_eq!(b.find_clear_run(len + 1), None, "len {len}");
            b.set_range(0, len);
            assert_eq!(b.count_zeros(), 0);
            assert_eq!(b.find_clear_run(1), None);
            b.clear_range(len - 1, 1);
            assert_eq!(b.find_clear_run(1), Some(len - 1), "last bit of len {len}");
        }
    }

    #[test]
    fn runs_across_word_boundaries() {
        let mut b = Bitmap::new(256);
        b.set_range(0, 60);
        b.set_range(70, 50); // 60..70 free (crosses word 0/1), 120..256 free
        assert_eq!(b.find_clear_run(10), Some(60));
        assert_eq!(b.find_clear_run(11), Some(120));
        b.set_range(120, 8);
        assert_eq!(b.find_clear_run(100), Some(128));
        assert_eq!(b.find_clear_run(129), None);
        assert!(b.is_clear(60, 10));
        assert!(!b.is_clear(60, 11));
        assert!(!b.is_clear(250, 10), "past the end is never clear");
        assert!(b.is_set(70, 50));
    }

    #[test]
    fn matches_naive_search_on_random_patterns() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = (next() % 300 + 1) as usize;
            let mut b = Bitmap::new(len);
            let mut model = vec![false; len];
            for _ in 0..(next() % 40) {
                let n = (next() % 20 + 1) as usize;
                if let Some(at) = b.find_clear_run(n) {
                    assert_eq!(Some(at), naive(&model, n));
                    b.set_range(at, n);
                    model[at..at + n].fill(true);
                } else {
                    assert_eq!(naive(&model, n), None);
                }
                if next() % 3 == 0 {
                    // free a random used run of length 1..=4
                    let i = (next() as usize) % len;
                    let k = (1..=4)
                        .take_while(|k| i + k <= len && model[i..i + k].iter().all(|x| *x))
                        .last();
                    if let Some(k) = k {
                        b.clear_range(i, k);
                        model[i..i + k].fill(false);
                    }
                }
                for n in 1..=70 {
                    assert_eq!(b.find_clear_run(n), naive(&model, n), "len {len} n {n}");
                }
                for i in (0..len).filter(|&i| !model[i]) {
                    let (mut l, mut r) = (i, i + 1);
                    while l > 0 && !model[l - 1] {
                        l -= 1;
                    }
                    while r < len && !model[r] {
                        r += 1;
                    }
                    assert_eq!(b.clear_run_around(i, 1), r - l, "len {len} at {i}");
                }
                assert_eq!(b.count_ones(), model.iter().filter(|x| **x).count());
            }
        }
    }
}
