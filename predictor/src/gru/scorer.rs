//! Online scorer of prefetch candidates: the GRU hidden state of the candidate's block
//! and a few facts about the candidate -> the probability that the prefetch is used
//! before it is evicted. A logistic layer learned online from prefetch outcomes
//! ([`tiering::advisor::Advisor::on_prefetch_outcome`]), so the label is the decision's
//! own result rather than the block model's "touched within the horizon".

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

/// Facts about a candidate besides its block's hidden state.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandidateFacts {
    /// 0: successor link, 1: fault trend, 2: first-touch run.
    pub source: u8,
    /// Links followed to reach it (successor chains), else 0.
    pub depth: u32,
    /// The proposing source's record so far.
    pub used: u32,
    pub wasted: u32,
    /// The block model's probability for the candidate's block.
    pub block_probability: f32,
    /// Evictions since the candidate left RAM, over the resident pages (None: never in RAM).
    pub refault_ratio: Option<f32>,
    /// Share of the candidate's block resident now.
    pub block_resident: f32,
}

/// Features besides the hidden state.
const FACTS: usize = 10;

/// Every this many candidates the scorer would refuse, one is admitted anyway, so
/// refused kinds of candidates still produce labels.
const EXPLORE_EVERY: u64 = 8;

/// Logistic regression over `[hidden state, facts]`, trained by SGD on outcomes.
#[derive(Debug)]
pub struct CandidateScorer {
    hidden: usize,
    weights: Vec<f32>,
    bias: f32,
    lr: f32,
    /// Features of each admitted candidate whose outcome is not known yet.
    pending: FxHashMap<PageNumber, Vec<f32>>,
    refused: u64,
    pub updates: u64,
}

impl CandidateScorer {
    pub fn new(hidden: usize) -> Self {
        CandidateScorer {
            hidden,
            weights: vec![0.0; hidden + FACTS],
            bias: 0.0,
            lr: 0.05,
            pending: FxHashMap::default(),
            refused: 0,
            updates: 0,
        }
    }

    fn features(&self, hidden: Option<&[f32]>, f: &CandidateFacts) -> Vec<f32> {
        let mut x = Vec::with_capacity(self.hidden + FACTS);
        match hidden {
            Some(h) if h.len() == self.hidden => x.extend_from_slice(h),
            _ => x.resize(self.hidden, 0.0),
        }
        let ln = |v: u32| (1.0 + v as f32).ln() / 4.0;
        x.extend_from_slice(&[
            f32::from(f.source == 0),
            f32::from(f.source == 1),
            f32::from(f.source == 2),
            f.depth as f32 / 8.0,
            ln(f.used),
            ln(f.wasted),
            f.block_probability,
            f.refault_ratio.map_or(0.0, |r| r.min(4.0) / 4.0),
            f32::from(f.refault_ratio.is_none()),
            f.block_resident,
        ]);
        x
    }

    fn score_features(&self, x: &[f32]) -> f32 {
        let z: f32 = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }

    /// Whether to issue the candidate `page`: its score is at least `threshold` (or it
    /// is an exploration pick). Admitted candidates wait for their outcome.
    pub fn admit(
        &mut self,
        page: PageNumber,
        hidden: Option<&[f32]>,
        facts: &CandidateFacts,
        threshold: f32,
    ) -> bool {
        if threshold <= 0.0 {
            return true; // off: no features, no learning, no cost
        }
        let x = self.features(hidden, facts);
        let ok = self.score_features(&x) >= threshold || {
            self.refused += 1;
            self.refused.is_multiple_of(EXPLORE_EVERY)
        };
        if ok {
            self.pending.insert(page, x);
        }
        ok
    }

    /// The outcome of an admitted candidate: one SGD step on the logistic loss.
    pub fn outcome(&mut self, page: PageNumber, used: bool) {
        let Some(x) = self.pending.remove(&page) else {
            return;
        };
        let err = f32::from(used) - self.score_features(&x);
        for (w, v) in self.weights.iter_mut().zip(&x) {
            *w += self.lr * err * v;
        }
        self.bias += self.lr * err;
        self.updates += 1;
    }

    /// `page` left RAM without an outcome (e.g. a fill that failed).
    pub fn forget(&mut self, page: PageNumber) {
        self.pending.remove(&page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_which_source_pays_off() {
        let mut s = CandidateScorer::new(4);
        let good = CandidateFacts {
            source: 0,
            ..Default::default()
        };
        let bad = CandidateFacts {
            source: 1,
            ..Default::default()
        };
        // A threshold just above 0 admits nearly everything, so both kinds are learned.
        for i in 0..2000u64 {
            if s.admit(2 * i, None, &good, 1e-6) {
                s.outcome(2 * i, true);
            }
            if s.admit(2 * i + 1, None, &bad, 1e-6) {
                s.outcome(2 * i + 1, false);
            }
        }
        assert!(s.admit(10_000, None, &good, 0.5));
        // Refused, bar one exploration pick in EXPLORE_EVERY.
        let admitted = (0..80u64)
            .filter(|&i| s.admit(20_000 + i, None, &bad, 0.5))
            .count();
        assert_eq!(admitted, 80 / EXPLORE_EVERY as usize);
    }
}
