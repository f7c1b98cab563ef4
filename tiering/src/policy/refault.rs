//! Refault distances (as Linux's mm/workingset.c measures them): for every demand fault
//! on a page that was evicted, how many evictions there have been since, its own
//! included. A page whose distance is at most N would still have been in RAM with a
//! budget N pages larger (exactly so for LRU; about so for the CLOCK-like orders the
//! advisors keep), so the histogram is the VM's miss curve above its budget: how many
//! of its refaults more RAM would have saved.

/// Log2 buckets of refault distances: bucket 0 holds distance 0, bucket k (k >= 1)
/// distances 2^(k-1) to 2^k - 1; the last bucket also holds everything larger.
pub const DISTANCE_BUCKETS: usize = 32;

/// Counts of refaults by distance (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefaultDistances {
    buckets: [u64; DISTANCE_BUCKETS],
}

impl RefaultDistances {
    /// Counts one refault `distance` evictions after the page's own.
    pub fn record(&mut self, distance: u64) {
        let bucket = (u64::BITS - distance.leading_zeros()) as usize;
        self.buckets[bucket.min(DISTANCE_BUCKETS - 1)] += 1;
    }

    /// The counts, bucket by bucket, without the empty buckets at the end.
    pub fn buckets(&self) -> &[u64] {
        let used = self
            .buckets
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |i| i + 1);
        &self.buckets[..used]
    }

    /// Refaults whose distance was at most `pages` for certain (the buckets wholly at
    /// or below it): about the refaults a budget `pages` larger would have saved, low by
    /// at most the bucket `pages` falls in.
    pub fn within(&self, pages: u64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .take_while(|&(k, _)| k < DISTANCE_BUCKETS - 1 && bucket_top(k) <= pages)
            .map(|(_, &n)| n)
            .sum()
    }

    /// All refaults counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The largest distance bucket `k` holds (below the last bucket).
pub fn bucket_top(k: usize) -> u64 {
    if k == 0 {
        0
    } else {
        (1u64 << k) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_land_in_their_log2_bucket_and_add_up() {
        let mut d = RefaultDistances::default();
        for distance in [0, 1, 2, 3, 4, 7, 8, 1000, u64::MAX] {
            d.record(distance);
        }
        // 0 | 1 | 2-3 | 4-7 | 8-15 | ... 512-1023 (bucket 10) | ... | the last.
        assert_eq!(&d.buckets()[..5], &[1, 1, 2, 2, 1]);
        assert_eq!(d.buckets()[10], 1);
        assert_eq!(d.buckets().len(), DISTANCE_BUCKETS);
        assert_eq!(d.total(), 9);
        assert_eq!(d.within(0), 1);
        assert_eq!(d.within(7), 6);
        assert_eq!(d.within(14), 6, "8-15 is not wholly within 14");
        assert_eq!(d.within(1023), 8);
        assert_eq!(d.within(u64::MAX), 8, "the last bucket is open-ended");
        assert!(RefaultDistances::default().buckets().is_empty());
    }
}
