//! Per-operation latency: how long each operation took, in TSC cycles, kept in a
//! log-linear histogram (as HdrHistogram does, without an allocator) so that a run of
//! any length reports its median and tail in fixed memory. The result line prints the
//! quantiles in nanoseconds; a tail under memory contention is what DESIGN.md's "p99 of
//! a high-priority VM" reads.

/// Sub-buckets per power of two: each bucket is at most 1/16 (6.25%) of its values wide.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every u64: values below `SUB` exactly, then `SUB` per power of two.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Operation times of one CPU's share of a run (or of several, merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            max: 0,
        }
    }
}

/// The bucket a value falls in.
fn bucket(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let top = 63 - value.leading_zeros();
    let shift = top - SUB_BITS;
    let mantissa = (value >> shift) as usize & (SUB - 1);
    (shift as usize + 1) * SUB + mantissa
}

/// The largest value bucket `index` holds.
fn upper_bound(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index / SUB - 1) as u32;
    let low = ((SUB + index % SUB) as u64) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Counts one operation that took `value` cycles.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket(value)] += 1;
        self.max = self.max.max(value);
    }

    /// Adds another CPU's operations.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.max = self.max.max(other.max);
    }

    /// Operations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0 < q <= 1): the upper end of the bucket holding the
    /// ceil(q * count)-th smallest value, so at most 6.25% above it and never above the
    /// maximum. 0 for an empty histogram.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        // ceil without std: the rank is at least 1 and at most count.
        let scaled = q * count as f64;
        let mut rank = scaled as u64;
        if (rank as f64) < scaled {
            rank += 1;
        }
        let rank = rank.clamp(1, count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(index).min(self.max);
            }
        }
        self.max
    }

    /// The count in each bucket, for copying between CPUs through atomics.
    pub fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// A histogram from another CPU's bucket counts and maximum.
    pub fn from_counts(counts: impl Iterator<Item = u64>, max: u64) -> Histogram {
        let mut histogram = Histogram {
            max,
            ..Histogram::default()
        };
        for (slot, n) in histogram.counts.iter_mut().zip(counts) {
            *slot = n;
        }
        histogram
    }
}

/// `cycles` at `tsc_hz` in nanoseconds.
pub fn cycles_to_ns(cycles: u64, tsc_hz: u64) -> u64 {
    (u128::from(cycles) * 1_000_000_000 / u128::from(tsc_hz.max(1))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_that_holds_it() {
        let mut value = 0u64;
        let mut step = 1u64;
        while value < u64::MAX / 2 {
            let index = bucket(value);
            assert!(index < BUCKETS);
            assert!(value <= upper_bound(index), "value {value} bucket {index}");
            if index > 0 {
                assert!(
                    value > upper_bound(index - 1),
                    "value {value} bucket {index}"
                );
            }
            value += step;
            step = step * 5 / 4 + 1;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_exact_ones() {
        let mut histogram = Histogram::default();
        // 1..=10_000: the exact q-quantile is q * 10_000.
        for value in 1..=10_000u64 {
            histogram.record(value);
        }
        assert_eq!(histogram.count(), 10_000);
        for (q, exact) in [(0.5, 5_000u64), (0.99, 9_900), (0.999, 9_990)] {
            let got = histogram.quantile(q);
            assert!(got >= exact && got <= exact + exact / 16, "q {q}: {got}");
        }
        assert_eq!(histogram.quantile(1.0), 10_000);
        assert_eq!(histogram.max(), 10_000);
    }

    #[test]
    fn a_rare_slow_operation_shows_in_the_tail_only() {
        let mut histogram = Histogram::default();
        for _ in 0..999 {
            histogram.record(1_000);
        }
        histogram.record(1_000_000);
        assert!(histogram.quantile(0.5) < 1_100);
        assert!(histogram.quantile(0.99) < 1_100);
        assert_eq!(histogram.quantile(1.0), 1_000_000);
    }

    #[test]
    fn merged_equals_recorded_together_and_survives_the_copy() {
        let (mut a, mut b, mut both) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for value in 0..500u64 {
            a.record(value * 3);
            b.record(value * 7 + 1);
            both.record(value * 3);
            both.record(value * 7 + 1);
        }
        let copied = Histogram::from_counts(b.counts().iter().copied(), b.max());
        assert_eq!(copied, b);
        a.merge(&copied);
        assert_eq!(a, both);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn cycles_convert_to_nanoseconds() {
        assert_eq!(cycles_to_ns(2_600, 2_600_000_000), 1_000);
        assert_eq!(cycles_to_ns(u64::MAX, 1_000_000_000), u64::MAX);
    }
}
