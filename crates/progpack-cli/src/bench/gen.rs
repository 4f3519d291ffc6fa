//! Deterministic inputs shared by every system: a seeded PRNG, the kernel's program size mix,
//! random call orders, and the x86-64 machine code of the generated functions.
//!
//! Every system in a workload sees exactly the same sizes, order and bytes (same seed).

/// Seed used by every workload unless it derives its own from it.
pub const SEED: u64 = 0x05ee_db0f_2026;

/// SplitMix64: tiny, fast, and good enough to draw sizes and call orders reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`); the multiply-shift bias is below 2^-32 for our bounds.
    pub fn below(&mut self, bound: usize) -> usize {
        (((self.next_u64() >> 32) * bound as u64) >> 32) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Smallest program the mix produces: a JIT prologue + epilogue is never shorter.
pub const MIX_MIN: usize = 32;
/// Largest program of the mix (the tail of the kernel's distribution).
pub const MIX_MAX: usize = 16 * 1024;

/// One program size drawn from the kernel's measured mix of BPF JIT image sizes:
/// half under 500 B, three quarters under 2 KiB, a tail up to 16 KiB.
///
/// Each quantile band is log-uniform inside itself: 50% in `[32, 500)`, 25% in `[500, 2048)`,
/// 25% in `[2048, 16384]`.
pub fn mix_size(rng: &mut Rng) -> usize {
    let band = rng.unit();
    let (lo, hi) = if band < 0.50 {
        (MIX_MIN as f64, 500.0)
    } else if band < 0.75 {
        (500.0, 2048.0)
    } else {
        (2048.0, MIX_MAX as f64 + 1.0)
    };
    let x = (lo.ln() + rng.unit() * (hi.ln() - lo.ln())).exp();
    (x as usize).clamp(MIX_MIN, MIX_MAX)
}

/// The sizes of one workload's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    /// Every program has this many bytes.
    Fixed(usize),
    /// Drawn from [`mix_size`].
    Mix,
}

impl Sizes {
    /// Label used in the `size` column.
    pub fn label(self) -> String {
        match self {
            Sizes::Fixed(n) => n.to_string(),
            Sizes::Mix => "mix".to_string(),
        }
    }

    /// `n` sizes, deterministic for a given `seed`.
    pub fn generate(self, n: usize, seed: u64) -> Vec<usize> {
        match self {
            Sizes::Fixed(len) => vec![len; n],
            Sizes::Mix => {
                let mut rng = Rng::new(seed);
                (0..n).map(|_| mix_size(&mut rng)).collect()
            }
        }
    }
}

/// `calls` indexes in `0..n`, uniformly random, deterministic for a given `seed`.
pub fn call_order(n: usize, calls: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..calls).map(|_| rng.below(n) as u32).collect()
}

/// Smallest function [`emit_function`] can write (`mov eax, imm32; ret`).
pub const MIN_FUNCTION: usize = 6;

/// Writes an x86-64 `extern "C" fn() -> u32` returning `ret` that fills all of `buf`.
///
/// Layout: every 64-byte line of the function starts with `jmp rel8` to the start of the next
/// line (`EB 3E`), as long as that next line still has room for the final
/// `mov eax, imm32; ret` (`B8 imm32 C3`); everything else is `int3` (0xCC).
///
/// Why a jump chain: a 512-byte function then really occupies 8 instruction-cache lines and
/// its pages in the iTLB on each call — which is what packing and huge pages are meant to help
/// — while executing only ~9 instructions, so the dispatch workload measures where code lives,
/// not how fast the core decodes 512 bytes of `nop`. A 64-byte function is just
/// `mov eax, imm32; ret` and padding. Stray execution of padding traps.
///
/// # Panics
/// If `buf` is shorter than [`MIN_FUNCTION`] (the workloads never ask for that).
pub fn emit_function(buf: &mut [u8], ret: u32) {
    assert!(buf.len() >= MIN_FUNCTION, "function too short");
    buf.fill(0xCC);
    let mut at = 0;
    while at + 64 + MIN_FUNCTION <= buf.len() {
        buf[at] = 0xEB; // jmp rel8
        buf[at + 1] = 62; // from at+2 to at+64
        at += 64;
    }
    buf[at] = 0xB8; // mov eax, imm32
    buf[at + 1..at + 5].copy_from_slice(&ret.to_le_bytes());
    buf[at + 5] = 0xC3; // ret
}

/// The value program `i` of a workload returns (distinct per program, checked after calls).
pub fn ret_value(i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761) ^ 0x5a5a_5a5a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_matches_the_kernel_quantiles() {
        let sizes = Sizes::Mix.generate(100_000, SEED);
        let frac =
            |limit: usize| sizes.iter().filter(|&&s| s < limit).count() as f64 / sizes.len() as f64;
        assert!((frac(500) - 0.50).abs() < 0.01, "under 500: {}", frac(500));
        assert!((frac(2048) - 0.75).abs() < 0.01, "under 2K: {}", frac(2048));
        assert!(sizes.iter().all(|&s| (MIX_MIN..=MIX_MAX).contains(&s)));
        assert!(
            sizes.iter().any(|&s| s > 12 * 1024),
            "tail reaches toward 16 KiB"
        );
    }

    #[test]
    fn generators_are_deterministic() {
        assert_eq!(Sizes::Mix.generate(1000, 7), Sizes::Mix.generate(1000, 7));
        assert_ne!(Sizes::Mix.generate(1000, 7), Sizes::Mix.generate(1000, 8));
        assert_eq!(call_order(100, 1000, 3), call_order(100, 1000, 3));
        assert!(call_order(100, 10_000, 3).iter().all(|&i| i < 100));
    }

    #[test]
    fn call_order_covers_all_programs() {
        let order = call_order(1000, 100_000, 9);
        let mut seen = vec![false; 1000];
        for i in order {
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn small_function_is_mov_ret_and_traps() {
        let mut buf = [0u8; 64];
        emit_function(&mut buf, 0x1234_5678);
        assert_eq!(&buf[..6], &[0xB8, 0x78, 0x56, 0x34, 0x12, 0xC3]);
        assert!(buf[6..].iter().all(|&b| b == 0xCC));
    }

    #[test]
    fn large_function_jumps_through_every_line() {
        let mut buf = [0u8; 512];
        emit_function(&mut buf, 1);
        for line in 0..7 {
            assert_eq!(&buf[line * 64..line * 64 + 2], &[0xEB, 62], "line {line}");
        }
        assert_eq!(buf[448], 0xB8);
        assert_eq!(buf[453], 0xC3);
        // Walk it like the CPU does: the jumps must land on the final mov.
        let mut pc = 0;
        while buf[pc] == 0xEB {
            pc = pc + 2 + buf[pc + 1] as usize;
        }
        assert_eq!(pc, 448);
    }

    #[test]
    fn odd_sizes_keep_the_return_inside() {
        for len in [6, 7, 69, 70, 71, 500, 16384] {
            let mut buf = vec![0u8; len];
            emit_function(&mut buf, 5);
            let mut pc = 0;
            while buf[pc] == 0xEB {
                pc = pc + 2 + buf[pc + 1] as usize;
            }
            assert_eq!(buf[pc], 0xB8, "len {len}");
            assert!(pc + 6 <= len);
        }
    }
}
