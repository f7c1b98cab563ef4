//! Zipf-distributed ranks with theta = 0.99 (the YCSB default), by the method of Gray
//! et al., "Quickly generating billion-record synthetic databases" (SIGMOD'94), as
//! YCSB's ZipfianGenerator does it: one uniform draw and a few multiplications per
//! sample, no table. Rank 0 is the most popular.

use crate::rng::Rng;

/// The skew; 0.99 is YCSB's default and what DESIGN.md's figures use.
pub const THETA: f64 = 0.99;

/// Terms of the zeta sum added one by one; beyond this, its integral stands in for them.
const ZETA_EXACT_TERMS: u64 = 4096;

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta. The first terms are summed
/// exactly, the tail by the midpoint-rule integral, which is accurate to ~1e-9 here and
/// keeps set-up O(1) for millions of pages (the guest has no FPU: floats are software).
pub fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(ZETA_EXACT_TERMS);
    let mut sum = 0.0;
    for i in 1..=exact {
        sum += 1.0 / libm::pow(i as f64, theta);
    }
    if n > exact {
        let one_minus = 1.0 - theta;
        let upper = libm::pow(n as f64 + 0.5, one_minus);
        let lower = libm::pow(exact as f64 + 0.5, one_minus);
        sum += (upper - lower) / one_minus;
    }
    sum
}

/// x^100 by repeated squaring: 1 / (1 - THETA) is exactly 100 for THETA = 0.99.
fn pow100(x: f64) -> f64 {
    let x2 = x * x;
    let x4 = x2 * x2;
    let x8 = x4 * x4;
    let x16 = x8 * x8;
    let x32 = x16 * x16;
    let x64 = x32 * x32;
    x64 * x32 * x4
}

/// A Zipf(0.99) generator over ranks `0..n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    items: u64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipf {
    /// A generator over `items` ranks (`items` >= 1).
    pub fn new(items: u64) -> Zipf {
        let items = items.max(1);
        let zetan = zeta(items, THETA);
        let zeta2 = zeta(2, THETA);
        let eta = if items > 2 {
            (1.0 - libm::pow(2.0 / items as f64, 1.0 - THETA)) / (1.0 - zeta2 / zetan)
        } else {
            0.0
        };
        Zipf {
            items,
            zetan,
            eta,
            half_pow_theta: libm::pow(0.5, THETA),
        }
    }

    /// Number of ranks.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Draws one rank.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit_f64();
        let uz = u * self.zetan;
        if uz < 1.0 || self.items == 1 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta || self.items == 2 {
            return 1;
        }
        let rank = (self.items as f64 * pow100(self.eta * u - self.eta + 1.0)) as u64;
        rank.min(self.items - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeta_tail_approximation_matches_the_exact_sum() {
        for n in [10u64, 5000, 100_000] {
            let exact: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(THETA)).sum();
            let approx = zeta(n, THETA);
            assert!(
                ((approx - exact) / exact).abs() < 1e-7,
                "n={n}: {approx} vs {exact}"
            );
        }
    }

    #[test]
    fn pow100_is_x_to_the_100() {
        for x in [0.0, 0.5, 0.9, 0.99, 1.0] {
            let want = f64::powi(x, 100);
            assert!((pow100(x) - want).abs() <= want * 1e-12, "{x}");
        }
    }

    #[test]
    fn ranks_are_skewed_like_zipf_099() {
        let items = 10_000u64;
        let zipf = Zipf::new(items);
        let mut rng = Rng::new(42, 0);
        let draws = 400_000u64;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..draws {
            let rank = zipf.sample(&mut rng);
            assert!(rank < items);
            counts[rank as usize] += 1;
        }
        let share = |rank: usize| counts[rank] as f64 / draws as f64;
        let zetan = zeta(items, THETA);
        // Rank 0 gets 1/zeta(n) of the draws, rank 1 half as much (2^-0.99).
        assert!(
            (share(0) - 1.0 / zetan).abs() < 0.01,
            "rank 0: {}",
            share(0)
        );
        let ratio = share(0) / share(1);
        assert!((1.8..2.2).contains(&ratio), "rank0/rank1 = {ratio}");
        // The hottest 1% of ranks take about 50% of the accesses (zeta(100)/zeta(10000)).
        let top: u64 = counts[..100].iter().sum();
        let want = zeta(100, THETA) / zetan;
        let got = top as f64 / draws as f64;
        assert!((got - want).abs() < 0.03, "top 1%: {got} want {want}");
        // And the tail is reached.
        assert!(counts[items as usize / 2..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn tiny_ranges_work() {
        let mut rng = Rng::new(1, 0);
        let one = Zipf::new(1);
        let two = Zipf::new(2);
        for _ in 0..1000 {
            assert_eq!(one.sample(&mut rng), 0);
            assert!(two.sample(&mut rng) < 2);
        }
    }

    #[test]
    fn same_seed_same_ranks() {
        let zipf = Zipf::new(1 << 20);
        let mut a = Rng::new(9, 1);
        let mut b = Rng::new(9, 1);
        for _ in 0..1000 {
            assert_eq!(zipf.sample(&mut a), zipf.sample(&mut b));
        }
    }
}
