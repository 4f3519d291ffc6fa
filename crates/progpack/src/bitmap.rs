//! A fixed-size bitmap of chunks, searched a 64-bit word at a time, with a summary of which
//! words are entirely free.
//!
//! Invariants:
//! - bit `i` is set iff chunk `i` is owned (by a live span, a thread's run or a batch's run);
//! - the bits past `len` are set (up to the end of the last word, and up to the capacity when
//!   the bitmap can still grow), so a search never runs past the end and a partial word is
//!   never "free"; [`Bitmap::grow`] clears them as `len` grows;
//! - `ones` is the number of set bits below `len`;
//! - summary bit `w` is set iff word `w` is zero, and `free_words` counts them;
//! - bounds from failed searches: no clean word (`dirty` bit clear) holds a run of more than
//!   `word_cap` clear bits inside it, and no run of clear bits that touches only clean words is
//!   longer than `run_cap`. A failed search lowers its bound; clearing bits marks their words
//!   dirty (one `or`, and only while a bound is kept), so a later search that a bound would
//!   refuse first measures the runs at the dirty words alone ("folds" them into the bounds),
//!   never the whole bitmap. Frees stay a few word operations; searches in a fragmented bitmap
//!   are not repeated in full after every free.
//!
//! The longest run of clear bits is bounded without a scan: a run of `L` clear bits contains at
//! least `(L - 126) / 64` whole free words, so `L <= 64 * free_words + 126` (and `L <= zeros`).

const WORD: usize = 64;

/// Bit `i` of the result is set iff bits `i..i + n` of `x` are all set (`1 <= n <= 64`):
/// shift-and by doubling distances, O(log n).
#[inline]
fn run_starts(x: u64, n: usize) -> u64 {
    let mut starts = x;
    let mut have = 1;
    while have < n {
        let step = have.min(n - have);
        starts &= starts >> step;
        have += step;
    }
    starts
}

/// A bitmap of `len` bits, all clear at creation.
#[derive(Clone, Debug)]
pub struct Bitmap {
    words: Vec<u64>,
    /// Bit `w` set iff `words[w] == 0`.
    summary: Vec<u64>,
    len: usize,
    ones: usize,
    free_words: usize,
    /// Every word before this index is full: first-fit searches start here.
    first_maybe_free: usize,
    /// Where the last search for a run inside a word ended (next fit: a fragmented bitmap is
    /// not rescanned from its start every time).
    cursor: usize,
    /// No clean word holds a run of clear bits longer than this inside it (`WORD`: unknown).
    word_cap: usize,
    /// No run of clear bits touching only clean words is longer than this (`usize::MAX`:
    /// unknown).
    run_cap: usize,
    /// Bit `w` set iff word `w` had bits cleared since the bounds were last folded.
    dirty: Vec<u64>,
    /// Some bit of `dirty` is set.
    dirty_any: bool,
    /// A bound is kept (`word_cap < WORD` or `run_cap < usize::MAX`): frees mark words dirty.
    bounded: bool,
    /// What the bounds say for the whole bitmap: `word_cap` and `run_cap` while no word is
    /// dirty, else `WORD` and `usize::MAX` (kept so that reading them is two loads).
    word_bound: usize,
    run_bound: usize,
}

impl Bitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: usize) -> Self {
        Self::with_capacity(len, len)
    }

    /// A bitmap of `len` clear bits that can grow to `capacity` bits (`len <= capacity`).
    pub fn with_capacity(capacity: usize, len: usize) -> Self {
        debug_assert!(len <= capacity);
        let nwords = capacity.div_ceil(WORD).max(1);
        let mut words = vec![!0u64; nwords];
        for (w, word) in words.iter_mut().enumerate() {
            let lo = w * WORD;
            if lo + WORD <= len {
                *word = 0;
            } else if lo < len {
                *word = !0u64 << (len - lo);
            }
        }
        let mut summary = vec![0u64; nwords.div_ceil(WORD)];
        let mut free_words = 0;
        for (w, &word) in words.iter().enumerate() {
            if word == 0 {
                summary[w / WORD] |= 1 << (w % WORD);
                free_words += 1;
            }
        }
        let dirty = vec![0u64; summary.len()];
        Bitmap {
            words,
            summary,
            len,
            ones: 0,
            free_words,
            first_maybe_free: 0,
            cursor: 0,
            word_cap: WORD,
            run_cap: usize::MAX,
            dirty,
            dirty_any: false,
            bounded: false,
            word_bound: WORD,
            run_bound: usize::MAX,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of bits the bitmap can grow to.
    pub fn capacity(&self) -> usize {
        self.words.len() * WORD
    }

    /// Adds bits `len..new_len`, clear (`new_len` at most the capacity given at creation).
    pub fn grow(&mut self, new_len: usize) {
        debug_assert!(new_len <= self.capacity());
        if new_len <= self.len {
            return;
        }
        let (old, n) = (self.len, new_len - self.len);
        for (i, m) in word_masks(old, n) {
            self.words[i] &= !m;
            if self.words[i] == 0 {
                self.summary[i / WORD] |= 1 << (i % WORD);
                self.free_words += 1;
            }
        }
        self.len = new_len;
        self.first_maybe_free = self.first_maybe_free.min(old / WORD);
        self.forget_bounds();
    }

    /// Sets the bounds of failed searches, every word clean (`WORD` and `usize::MAX`: nothing
    /// known).
    fn set_bounds(&mut self, word_cap: usize, run_cap: usize) {
        if self.dirty_any {
            self.dirty.fill(0);
            self.dirty_any = false;
        }
        self.word_cap = word_cap;
        self.run_cap = run_cap;
        self.word_bound = word_cap;
        self.run_bound = run_cap;
        self.bounded = word_cap < WORD || run_cap < usize::MAX;
    }

    /// Drops the bounds of failed searches (nothing is known).
    fn forget_bounds(&mut self) {
        self.set_bounds(WORD, usize::MAX);
    }

    /// Marks word `w` dirty: it had bits cleared (only while a bound is kept).
    #[inline(always)]
    fn mark_dirty(&mut self, w: usize) {
        if self.bounded {
            self.dirty[w / WORD] |= 1 << (w % WORD);
            self.dirty_any = true;
            self.word_bound = WORD;
            self.run_bound = usize::MAX;
        }
    }

    /// Raises the bounds to cover the runs at the dirty words, measured, and cleans them.
    #[cold]
    fn fold_dirty(&mut self) {
        let (mut word_cap, mut run_cap) = (self.word_cap, self.run_cap);
        for d in 0..self.dirty.len() {
            let mut bits = std::mem::take(&mut self.dirty[d]);
            while bits != 0 {
                let w = d * WORD + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                word_cap = word_cap.max(longest_clear_in(self.words[w]));
                run_cap = run_cap.max(self.longest_run_touching(w));
            }
        }
        self.set_bounds(word_cap, run_cap);
    }

    /// The longest run of clear bits that has a bit in word `w`.
    fn longest_run_touching(&self, w: usize) -> usize {
        let word = self.words[w];
        // Clear bits just below the word (the top of the words before it), and just above.
        let below = || {
            let mut n = 0;
            for &x in self.words[..w].iter().rev() {
                n += x.leading_zeros() as usize;
                if x != 0 {
                    break;
                }
            }
            n
        };
        let above = || {
            let mut n = 0;
            for &x in &self.words[w + 1..] {
                n += x.trailing_zeros() as usize;
                if x != 0 {
                    break;
                }
            }
            n
        };
        if word == 0 {
            return below() + WORD + above();
        }
        let (low, high) = (
            word.trailing_zeros() as usize,
            word.leading_zeros() as usize,
        );
        let from_below = if low > 0 { below() + low } else { 0 };
        let to_above = if high > 0 { high + above() } else { 0 };
        longest_clear_in(word).max(from_below).max(to_above)
    }

    /// An upper bound on the longest run of clear bits inside one word, without a scan.
    #[inline(always)]
    pub fn word_run_bound(&self) -> usize {
        if self.free_words > 0 {
            WORD
        } else {
            self.word_bound
        }
    }

    /// An upper bound on the longest run of clear bits, without a scan: from the counts, and
    /// from the failed searches since the last free into a word.
    #[inline(always)]
    pub fn run_bound(&self) -> usize {
        self.longest_bound().min(self.run_bound)
    }

    /// True if the bound `cap` (`word_cap` or `run_cap`) refuses a run of `need` bits, once the
    /// dirty words are measured if they could change the answer: only a run at a word freed
    /// into since the last failed search can be longer than the bound.
    fn refuses(&mut self, need: usize, cap: fn(&Bitmap) -> usize) -> bool {
        if need <= cap(self) {
            return false;
        }
        if !self.dirty_any {
            return true;
        }
        self.fold_dirty();
        need > cap(self)
    }

    /// Takes the first run of `n` clear bits starting at a multiple of `step` (see
    /// [`Bitmap::find_clear_run_aligned`]), keeping the bound a failed search gives.
    pub fn take_first_fit(&mut self, n: usize, step: usize) -> Option<usize> {
        if self.refuses(n, |b| b.run_cap) {
            return None;
        }
        match self.find_clear_run_aligned(n, step) {
            Some(first) => {
                self.set_range(first, n);
                Some(first)
            }
            None => {
                if step == 1 && n > 0 {
                    // Every run was looked at: none is `n` long.
                    self.fold_dirty();
                    self.set_bounds(self.word_cap, self.run_cap.min(n - 1));
                }
                None
            }
        }
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.ones
    }

    /// Number of clear bits.
    pub fn count_zeros(&self) -> usize {
        self.len - self.ones
    }

    /// Number of words whose 64 bits are all clear.
    #[cfg(test)]
    pub fn free_words(&self) -> usize {
        self.free_words
    }

    /// An upper bound on the longest run of clear bits, from the counts alone (no scan).
    pub fn longest_bound(&self) -> usize {
        self.count_zeros()
            .min(WORD * self.free_words + 2 * (WORD - 1))
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
        if n >= 2 * WORD - 1 {
            return self.find_long_run(n);
        }
        // A constant number of word operations per word, however fragmented: the run that
        // reaches this word's low end from the words before, then the first run of `n` inside
        // the word (shift-and), then the clear bits at its high end carried into the next.
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
            let low = w.trailing_zeros() as usize;
            if run_len + low >= n {
                return Some(if run_len == 0 { wi * WORD } else { run_start });
            }
            if n <= WORD {
                let starts = run_starts(!w, n);
                if starts != 0 {
                    return Some(wi * WORD + starts.trailing_zeros() as usize);
                }
            }
            run_len = w.leading_zeros() as usize;
            run_start = (wi + 1) * WORD - run_len;
        }
        None
    }

    /// [`Bitmap::find_clear_run`] for `n >= 127`: such a run holds at least one whole free word,
    /// so only the stretches of free words the summary lists are looked at, each extended by
    /// the clear bits on either side.
    fn find_long_run(&self, n: usize) -> Option<usize> {
        let nwords = self.words.len();
        let mut w = self.first_maybe_free;
        while w < nwords {
            // The next free word at or after `w`.
            let (s0, bit) = (w / WORD, w % WORD);
            let mut found = None;
            let mut si = s0;
            let mut bits = self.summary[s0] >> bit << bit;
            loop {
                if bits != 0 {
                    found = Some(si * WORD + bits.trailing_zeros() as usize);
                    break;
                }
                si += 1;
                if si == self.summary.len() {
                    break;
                }
                bits = self.summary[si];
            }
            let f = found?;
            let mut g = f;
            while g < nwords && self.words[g] == 0 {
                g += 1;
            }
            // Clear bits at the top of the word before, and at the bottom of the word after.
            let left = if f > 0 {
                self.words[f - 1].leading_zeros() as usize
            } else {
                0
            };
            let right = if g < nwords {
                (self.words[g].trailing_zeros() as usize).min(WORD)
            } else {
                0
            };
            if left + WORD * (g - f) + right >= n {
                return Some(f * WORD - left);
            }
            w = g + 1;
        }
        None
    }

    /// Index of the first run of `n` clear bits that starts at a multiple of `step` (a power
    /// of two); `None` if there is none or `n == 0`.
    pub fn find_clear_run_aligned(&self, n: usize, step: usize) -> Option<usize> {
        debug_assert!(step.is_power_of_two());
        if step <= 1 {
            return self.find_clear_run(n);
        }
        if n == 0 || n > self.count_zeros() {
            return None;
        }
        let from = (self.first_maybe_free * WORD).next_multiple_of(step);
        (from..self.len)
            .step_by(step)
            .find(|&start| !self.get(start) && self.is_clear(start, n))
    }

    /// Takes a run of at least `min` and at most `max` clear bits (`1 <= min <= max <= 64`)
    /// lying inside one word, sets it and returns `(start, len)`.
    ///
    /// A whole free word is preferred: the first one, or with `from = Some(w)` the first one
    /// at or after word `w` (wrapping around; a random `w` is a random start against JIT
    /// spraying, see [`Bitmap::random_word`]). Otherwise the first word holding `min` clear
    /// bits in a row gives its first such run, extended as far as that word allows.
    pub fn take_word_run(
        &mut self,
        min: usize,
        max: usize,
        from: Option<usize>,
    ) -> Option<(usize, usize)> {
        debug_assert!(1 <= min && min <= max && max <= WORD);
        let (start, len) = if self.free_words > 0 {
            let from = from.map_or(self.first_maybe_free, |w| w % self.words.len());
            (self.free_word_from(from) * WORD, max)
        } else {
            self.first_in_word_run(min, max)?
        };
        self.set_range(start, len);
        Some((start, len))
    }

    /// A word drawn from the random number `r`, uniformly (multiply-shift: no division).
    pub fn random_word(&self, r: u64) -> usize {
        ((u128::from(r) * self.words.len() as u128) >> 64) as usize
    }

    /// The word holding bit `i`.
    pub fn word_of(i: usize) -> usize {
        i / WORD
    }

    /// The first free word at or after word `from`, wrapping around (there is one).
    fn free_word_from(&self, from: usize) -> usize {
        let n = self.summary.len();
        let (s0, bit) = (from / WORD, from % WORD);
        // The rest of the first summary word, then the others in turn, then its beginning.
        let first = self.summary[s0] >> bit << bit;
        if first != 0 {
            return s0 * WORD + first.trailing_zeros() as usize;
        }
        for k in 1..=n {
            let si = (s0 + k) % n;
            let s = self.summary[si];
            if s != 0 {
                return si * WORD + s.trailing_zeros() as usize;
            }
        }
        unreachable!("free_words > 0")
    }

    /// A run of at least `min` clear bits inside one word, as `(start, len)` with `len` the
    /// run's length in that word capped at `max`: next fit, from the word where the last such
    /// search ended, wrapping around.
    fn first_in_word_run(&mut self, min: usize, max: usize) -> Option<(usize, usize)> {
        if min > self.count_zeros() {
            return None;
        }
        if self.refuses(min, |b| b.word_cap) {
            return None;
        }
        let nwords = self.words.len();
        let from = self.cursor.clamp(self.first_maybe_free, nwords.max(1) - 1);
        let order = (from..nwords).chain(self.first_maybe_free..from);
        for wi in order {
            let w = self.words[wi];
            if w == !0 {
                continue;
            }
            let free = !w;
            let starts = run_starts(free, min);
            if starts != 0 {
                let bit = starts.trailing_zeros() as usize;
                let run = ((free >> bit).trailing_ones() as usize).min(max);
                self.cursor = wi;
                return Some((wi * WORD + bit, run));
            }
        }
        // Every word was looked at: none holds `min` clear bits in a row.
        self.fold_dirty();
        self.set_bounds(self.word_cap.min(min - 1), self.run_cap);
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

    /// True if bits `start..start + n` are all set.
    pub fn is_set(&self, start: usize, n: usize) -> bool {
        if start.checked_add(n).is_none_or(|end| end > self.len) {
            return false;
        }
        word_masks(start, n).all(|(i, m)| self.words[i] & m == m)
    }

    /// Sets bits `start..start + n`, which must all be clear (checked in debug builds).
    pub fn set_range(&mut self, start: usize, n: usize) {
        debug_assert!(self.is_clear(start, n), "set_range over used bits");
        for (i, m) in word_masks(start, n) {
            if self.words[i] == 0 {
                self.summary[i / WORD] &= !(1 << (i % WORD));
                self.free_words -= 1;
            }
            self.words[i] |= m;
        }
        self.ones += n;
        while self.first_maybe_free + 1 < self.words.len()
            && self.words[self.first_maybe_free] == !0
        {
            self.first_maybe_free += 1;
        }
    }

    /// Clears bits `start..start + n`, which must all be set (checked in debug builds).
    #[inline]
    pub fn clear_range(&mut self, start: usize, n: usize) {
        debug_assert!(self.is_set(start, n), "clear_range over free bits");
        let (w, bit) = (start / WORD, start % WORD);
        if n != 0 && bit + n <= WORD {
            // One word (every span of a thread's run): a mask, no loop.
            self.words[w] &= !(low_bits(n) << bit);
            if self.words[w] == 0 {
                self.summary[w / WORD] |= 1 << (w % WORD);
                self.free_words += 1;
            }
            self.mark_dirty(w);
        } else {
            for (i, m) in word_masks(start, n) {
                self.words[i] &= !m;
                if self.words[i] == 0 {
                    self.summary[i / WORD] |= 1 << (i % WORD);
                    self.free_words += 1;
                }
                self.mark_dirty(i);
            }
        }
        self.ones -= n;
        self.first_maybe_free = self.first_maybe_free.min(w);
    }

    /// The length of the longest run of clear bits, by a full scan (for checks and tests).
    pub fn longest_run(&self) -> usize {
        let mut best = 0;
        let mut run = 0;
        for i in 0..self.len {
            run = if self.get(i) { 0 } else { run + 1 };
            best = best.max(run);
        }
        best
    }

    /// Checks the summary against the words; returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let mut free = 0;
        let mut ones = 0;
        for (w, &word) in self.words.iter().enumerate() {
            let marked = self.summary[w / WORD] >> (w % WORD) & 1 == 1;
            if marked != (word == 0) {
                return Err(format!(
                    "summary bit of word {w} is {marked}, word is {word:#x}"
                ));
            }
            free += usize::from(word == 0);
            ones += word.count_ones() as usize;
        }
        let padding = self.words.len() * WORD - self.len;
        if (self.len..self.words.len() * WORD).any(|i| self.words[i / WORD] >> (i % WORD) & 1 == 0)
        {
            return Err("a bit past the length is clear".into());
        }
        if free != self.free_words || ones - padding != self.ones {
            return Err(format!(
                "counts: {} free words (counted {free}), {} ones (counted {})",
                self.free_words,
                self.ones,
                ones - padding
            ));
        }
        if self.words[..self.first_maybe_free].iter().any(|&w| w != !0) {
            return Err("a word before the search start is not full".into());
        }
        if self.dirty_any != self.dirty.iter().any(|&d| d != 0) {
            return Err(format!(
                "dirty_any is {} and the dirty bits disagree",
                self.dirty_any
            ));
        }
        if self.bounded != (self.word_cap < WORD || self.run_cap < usize::MAX) {
            return Err("`bounded` disagrees with the bounds".into());
        }
        let want = if self.dirty_any {
            (WORD, usize::MAX)
        } else {
            (self.word_cap, self.run_cap)
        };
        if (self.word_bound, self.run_bound) != want {
            return Err(format!(
                "bounds read {:?}, should be {want:?}",
                (self.word_bound, self.run_bound)
            ));
        }
        let dirty = |w: usize| self.dirty[w / WORD] >> (w % WORD) & 1 == 1;
        for (w, &word) in self.words.iter().enumerate() {
            let longest = longest_clear_in(word);
            if !dirty(w) && longest > self.word_cap {
                return Err(format!(
                    "clean word {w} ({word:#x}) has a run of {longest} clear bits, bound {}",
                    self.word_cap
                ));
            }
        }
        // Every maximal run of clear bits that touches no dirty word is within `run_cap`.
        let mut run = 0usize;
        let mut touches_dirty = false;
        for i in 0..=self.len {
            if i < self.len && !self.get(i) {
                run += 1;
                touches_dirty |= dirty(i / WORD);
                continue;
            }
            if run > self.run_cap && !touches_dirty {
                return Err(format!(
                    "a clean run of {run} clear bits ends at {i}, bound {}",
                    self.run_cap
                ));
            }
            run = 0;
            touches_dirty = false;
        }
        Ok(())
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

/// The longest run of clear bits in `word`.
fn longest_clear_in(word: u64) -> usize {
    let mut free = !word;
    let mut n = 0;
    while free != 0 {
        free &= free >> 1;
        n += 1;
    }
    n
}

/// The low `k` bits set (`1 <= k <= 64`).
#[inline]
fn low_bits(k: usize) -> u64 {
    u64::MAX >> (WORD - k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorshift64 generator from `seed`: deterministic test inputs.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

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
        assert_eq!(b.find_clear_run_aligned(0, 8), None);
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
            b.check().unwrap();
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
        assert_eq!(b.free_words(), 2, "words 2 and 3");
        b.check().unwrap();
    }

    #[test]
    fn growing_adds_clear_bits_and_free_words() {
        let mut b = Bitmap::with_capacity(512, 100);
        b.check().unwrap();
        assert_eq!((b.len(), b.count_zeros(), b.free_words()), (100, 100, 1));
        assert_eq!(b.find_clear_run(101), None, "nothing past the length");
        b.set_range(90, 10);
        b.grow(300);
        b.check().unwrap();
        assert_eq!((b.count_zeros(), b.free_words()), (290, 3));
        assert_eq!(b.find_clear_run(200), Some(100));
        b.grow(512);
        b.check().unwrap();
        assert_eq!(b.free_words(), 7);
        assert_eq!(b.longest_run(), 412);
    }

    #[test]
    fn aligned_runs_start_on_the_step() {
        let mut b = Bitmap::new(512);
        b.set_range(0, 3);
        assert_eq!(b.find_clear_run_aligned(10, 64), Some(64));
        assert_eq!(b.find_clear_run_aligned(10, 4), Some(4));
        b.set_range(64, 1);
        assert_eq!(b.find_clear_run_aligned(64, 64), Some(128));
        assert_eq!(b.find_clear_run_aligned(512, 64), None);
    }

    #[test]
    fn word_runs_prefer_whole_free_words_and_fall_back_inside_words() {
        let mut b = Bitmap::new(192);
        assert_eq!(b.take_word_run(4, 64, None), Some((0, 64)));
        assert_eq!(
            b.take_word_run(4, 64, Some(b.random_word(u64::MAX))),
            Some((128, 64)),
            "last free word"
        );
        assert_eq!(b.take_word_run(4, 16, None), Some((64, 16)));
        assert_eq!(b.free_words(), 0);
        b.clear_range(10, 3);
        b.clear_range(20, 7);
        // 10..13 is too short for 4; 20..27 fits and is extended to its end (cap 64).
        assert_eq!(b.take_word_run(4, 64, None), Some((20, 7)));
        assert_eq!(b.take_word_run(3, 3, None), Some((10, 3)));
        assert_eq!(b.take_word_run(1, 64, None), Some((80, 48)));
        assert_eq!(b.take_word_run(1, 64, None), None);
        b.check().unwrap();
    }

    #[test]
    fn longest_bound_is_never_below_the_truth() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..200 {
            let len = (next() % 700 + 1) as usize;
            let mut b = Bitmap::new(len);
            for _ in 0..(next() % 60) {
                let at = (next() as usize) % len;
                let n = ((next() % 90) as usize + 1).min(len - at);
                if b.is_clear(at, n) {
                    b.set_range(at, n);
                }
                if next().is_multiple_of(4) && b.is_set(at, 1) {
                    b.clear_range(at, 1);
                }
                assert!(b.longest_bound() >= b.longest_run(), "len {len}");
                b.check().unwrap();
            }
        }
    }

    #[test]
    fn long_runs_match_naive_search() {
        let mut next = xorshift(0x5eed_1234_5678_9abcu64);
        for _ in 0..200 {
            let len = (next() % 2000 + 64) as usize;
            let mut b = Bitmap::new(len);
            let mut model = vec![false; len];
            for _ in 0..(next() % 30) {
                let at = (next() as usize) % len;
                let n = ((next() % 200) as usize + 1).min(len - at);
                if b.is_clear(at, n) {
                    b.set_range(at, n);
                    model[at..at + n].fill(true);
                }
            }
            for n in [127, 128, 150, 191, 192, 300, 700, len] {
                assert_eq!(b.find_clear_run(n), naive(&model, n), "len {len} n {n}");
            }
        }
    }

    #[test]
    fn matches_naive_search_on_random_patterns() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
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
                if next().is_multiple_of(3) {
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
                    let step = 1 << (n % 5);
                    let aligned = (0..len)
                        .step_by(step)
                        .find(|&s| s + n <= len && model[s..s + n].iter().all(|x| !*x));
                    assert_eq!(
                        b.find_clear_run_aligned(n, step),
                        aligned,
                        "len {len} n {n}"
                    );
                }
                assert_eq!(b.count_ones(), model.iter().filter(|x| **x).count());
                b.check().unwrap();
            }
        }
    }

    /// A failed search for a run inside one word keeps its bound until a free; then only the
    /// words freed into are looked at, and a run there is found.
    #[test]
    fn a_failed_word_search_is_not_repeated_until_a_free() {
        let mut b = Bitmap::new(8 * WORD);
        b.set_range(0, 8 * WORD);
        for w in 0..8 {
            b.clear_range(w * WORD + 10, 3); // every word: one run of 3
        }
        assert_eq!(b.take_word_run(5, WORD, None), None);
        assert_eq!(b.word_run_bound(), 4);
        b.check().unwrap();
        // A free into word 5 next to its run: 3 + 4 = 7 clear bits in a row.
        b.clear_range(5 * WORD + 13, 4);
        assert_eq!(b.word_run_bound(), WORD, "a dirty word may hold anything");
        b.check().unwrap();
        assert_eq!(b.take_word_run(5, 5, None), Some((5 * WORD + 10, 5)));
        b.check().unwrap();
        // Nothing of 5 is left anywhere: refused again, and the bound says so without a scan.
        assert_eq!(b.take_word_run(5, WORD, None), None);
        assert_eq!(b.word_run_bound(), 4);
        b.check().unwrap();
    }

    /// Random takes and frees: `take_word_run` finds a run inside one word exactly when one
    /// exists, whatever bound and dirty words it keeps, and the invariants hold throughout.
    #[test]
    fn word_runs_are_found_iff_they_exist() {
        let mut rng = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut next = |bound: usize| (rng() % bound as u64) as usize;
        let mut b = Bitmap::new(16 * WORD);
        let mut taken: Vec<(usize, usize)> = Vec::new();
        for step in 0..20_000 {
            if next(3) == 0 && !taken.is_empty() {
                let (start, n) = taken.swap_remove(next(taken.len()));
                b.clear_range(start, n);
            } else {
                let min = 1 + next(WORD);
                let exists = (0..16).any(|w| longest_clear_in(b.words[w]) >= min);
                match b.take_word_run(min, min, None) {
                    Some((start, n)) => {
                        assert!(exists, "step {step}: took a run that did not exist");
                        assert_eq!(n, min);
                        assert_eq!(start / WORD, (start + n - 1) / WORD, "inside one word");
                        taken.push((start, n));
                    }
                    None => assert!(!exists, "step {step}: missed a run of {min}"),
                }
            }
            b.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    }

    /// Random takes (inside one word, and first fit of up to three words, aligned or not) and
    /// frees: a run is found exactly when one exists, whatever bounds and dirty words the
    /// bitmap keeps, and its invariants hold throughout.
    #[test]
    fn bounded_searches_find_runs_iff_they_exist() {
        let mut rng = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut next = |bound: usize| (rng() % bound as u64) as usize;
        let len = 16 * WORD - 5;
        let mut b = Bitmap::new(len);
        let mut taken: Vec<(usize, usize)> = Vec::new();
        for step in 0..30_000 {
            let bits: Vec<bool> = (0..len).map(|i| b.get(i)).collect();
            match next(4) {
                0 if !taken.is_empty() => {
                    let (start, n) = taken.swap_remove(next(taken.len()));
                    b.clear_range(start, n);
                }
                1 => {
                    let min = 1 + next(WORD);
                    let exists = (0..16).any(|w| longest_clear_in(b.words[w]) >= min);
                    let got = b.take_word_run(min, min, None);
                    assert_eq!(got.is_some(), exists, "step {step}: word run of {min}");
                    taken.extend(got);
                }
                _ => {
                    let n = 1 + next(3 * WORD);
                    let align = [1, 1, 1, 4][next(4)];
                    let want = (0..len)
                        .step_by(align)
                        .find(|&i| i + n <= len && bits[i..i + n].iter().all(|&x| !x));
                    let got = b.take_first_fit(n, align);
                    assert_eq!(got, want, "step {step}: first fit of {n}, step {align}");
                    taken.extend(got.map(|f| (f, n)));
                }
            }
            b.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    }
}
