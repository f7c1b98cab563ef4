//! The guest's random numbers: SplitMix64 (Steele, Lea, Flood 2014).
//!
//! Written out here rather than taken from a crate so that the sequence - and with it
//! every run's checksum - can never change under a dependency update.

/// Mixes 64 bits into 64 well-distributed bits (the SplitMix64 finaliser); also used
/// as the hash behind page patterns, keys and checksums.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`; `stream` separates independent uses of one seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng {
            state: mix64(seed ^ mix64(stream.wrapping_add(0x5eed))),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A uniform integer in `0..bound` (`bound` > 0), by Lemire's multiply-shift; the
    /// bias is below 2^-32 for the bounds used here.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A uniform float in [0, 1) with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Shuffles `items` uniformly (Fisher-Yates).
pub fn shuffle(items: &mut [u32], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Makes `next` one random cycle through all indices (Sattolo's algorithm): following
/// `next` from any index visits every index exactly once before returning.
pub fn random_cycle(next: &mut [u32], rng: &mut Rng) {
    let n = next.len();
    for (i, slot) in next.iter_mut().enumerate() {
        *slot = i as u32;
    }
    // Sattolo: like Fisher-Yates but j < i strictly; read as the map i -> next[i], the
    // result is a single n-cycle, uniformly chosen among all of them.
    for i in (1..n).rev() {
        let j = rng.below(i as u64) as usize;
        next.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::new(7, 0), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::new(7, 0), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Rng::new(8, 0), |r, _| Some(r.next_u64()))
            .collect();
        let d: Vec<u64> = (0..8)
            .scan(Rng::new(7, 1), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1, 0);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[rng.below(10) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        let x = rng.unit_f64();
        assert!((0.0..1.0).contains(&x));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items: Vec<u32> = (0..1000).collect();
        shuffle(&mut items, &mut Rng::new(3, 0));
        assert_ne!(items, (0..1000).collect::<Vec<u32>>());
        items.sort_unstable();
        assert_eq!(items, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn random_cycle_visits_every_index_once_per_cycle() {
        for n in [1usize, 2, 3, 17, 1000] {
            let mut next = vec![0u32; n];
            random_cycle(&mut next, &mut Rng::new(n as u64, 0));
            let mut seen = vec![false; n];
            let mut at = 0usize;
            for _ in 0..n {
                assert!(!seen[at], "index {at} visited twice in a cycle of {n}");
                seen[at] = true;
                at = next[at] as usize;
            }
            assert_eq!(at, 0, "the walk returns to its start after n steps");
            assert!(seen.iter().all(|&s| s));
        }
    }
}
