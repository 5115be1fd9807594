//! A small deterministic random number generator and Zipf-distributed popularity.

/// SplitMix64: fast, seedable, good enough for picking offsets and titles.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 for n = 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            // Multiply-shift: unbiased enough for n far below 2^64.
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }
}

/// Zipf over ranks 0..n: P(rank k) ∝ 1 / (k + 1)^s. Rank 0 is the most popular title.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// cdf[k] = P(rank <= k); the last entry is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` ≥ 1 items, exponent `s` ≥ 0 (0 is uniform; video catalogues are near 0.8–1.2).
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        *cdf.last_mut().expect("n >= 1") = 1.0;
        Zipf { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// P(rank k).
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf[0],
            _ if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// The rank for a uniform `u` in [0, 1) (inverse CDF by binary search).
    pub fn rank_for(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        self.rank_for(rng.next_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_follow_the_power_law() {
        let z = Zipf::new(100, 1.0);
        let h100: f64 = (1..=100).map(|k| 1.0 / k as f64).sum();
        assert!((z.probability(0) - 1.0 / h100).abs() < 1e-12);
        assert!((z.probability(9) - 0.1 / h100).abs() < 1e-12);
        assert!((z.probability(0) / z.probability(1) - 2.0).abs() < 1e-9);
        let total: f64 = (0..100).map(|k| z.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(z.rank_for(0.0), 0);
        assert_eq!(z.rank_for(0.999_999_999), 99);
    }

    #[test]
    fn samples_match_the_distribution() {
        // Chi-square goodness of fit over 200k draws, 20 ranks (19 degrees of freedom: the
        // 99.9th percentile of chi-square(19) is 43.8).
        let z = Zipf::new(20, 1.1);
        let mut rng = Rng::new(7);
        let draws = 200_000;
        let mut counts = [0u64; 20];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let expected = z.probability(k) * draws as f64;
                (c as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 43.8, "chi-square {chi2}, counts {counts:?}");
        // Popular titles really are popular: rank 0 about twice rank 1 (s = 1.1: 2^1.1 = 2.14).
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((2.0..2.3).contains(&ratio), "{ratio}");
    }

    #[test]
    fn exponent_zero_is_uniform_and_rng_is_deterministic() {
        let z = Zipf::new(4, 0.0);
        for k in 0..4 {
            assert!((z.probability(k) - 0.25).abs() < 1e-12);
        }
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            assert!(a.below(7) < 7);
            assert!((0.0..1.0).contains(&a.next_f64()));
        }
        assert_eq!(a.below(0), 0);
    }
}
