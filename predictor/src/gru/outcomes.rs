//! Records of the prefetch sources: how many of their candidates were used, from the
//! prefetches issued and from "shadow" outcomes of the candidates that were not.
//!
//! A source is followed only once its record says its candidates are used. Learning
//! that by prefetching costs a wasted read and an eviction per wrong candidate, and
//! exploring untried links that way made nearly half of the wasted prefetches
//! (docs/predictor.md, "Advisor"). A candidate that is not prefetched can still be judged: the
//! advisor sees every demand fault, so if the candidate faults soon after it was
//! named, a prefetch would have been used. Its record then grows without the cost.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

/// Used and wasted candidates of one source (a link, a region, the fault trend).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcomes {
    pub used: u32,
    pub wasted: u32,
}

impl Outcomes {
    /// Share used, with one used prefetch as prior: a new source is tried, and one
    /// that wastes more than it serves is dropped.
    pub fn score(self) -> f32 {
        (self.used + 1) as f32 / (self.used + self.wasted + 1) as f32
    }

    /// Good enough to follow: a score of at least `threshold` after at least
    /// `min_uses` used candidates.
    pub fn trusted(self, threshold: f32, min_uses: u32) -> bool {
        self.score() >= threshold && self.used >= min_uses
    }

    pub fn record(&mut self, used: bool) {
        if used {
            self.used += 1;
        } else {
            self.wasted += 1;
        }
    }
}

/// Whose record a shadow outcome goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ShadowKey {
    /// The successor link from this page.
    Link(PageNumber),
    /// First-touch candidates in this region (page number >> [`REGION_SHIFT`]).
    FirstTouch(u64),
    /// A readahead window's pages.
    Readahead,
    /// The window's pages of a stream the resident pages before a fault started.
    ContextReadahead,
}

/// First-touch candidates are judged per 2 MiB region (512 pages): a heap grows
/// densely, other mappings are touched sparsely.
pub(super) const REGION_SHIFT: u32 = 9;

impl ShadowKey {
    /// Which source: each source judges a page on its own, so one source naming a
    /// page does not take the judgement another needs to earn its record.
    fn source(self) -> u8 {
        match self {
            ShadowKey::Link(_) => 0,
            ShadowKey::FirstTouch(_) => 1,
            ShadowKey::Readahead | ShadowKey::ContextReadahead => 2,
        }
    }
}

/// Candidates not prefetched, waiting for their outcome: used if the page
/// demand-faults before its deadline (counted in demand faults), wasted otherwise.
#[derive(Debug, Default)]
pub(super) struct Shadows {
    /// By page, then by source ([`ShadowKey::source`]), with the deadline: one lookup
    /// per demand fault for all sources.
    pending: FxHashMap<PageNumber, [Option<(ShadowKey, u64)>; SOURCES as usize]>,
    /// The pending pages by deadline, oldest first; entries whose page was forgotten
    /// or renamed since are skipped when they come up.
    deadlines: VecDeque<(u64, PageNumber, u8)>,
    demand_faults: u64,
}

/// Sources a page can be pending for at once.
const SOURCES: u8 = 3;

impl Shadows {
    /// A demand fault on `page`: its pending candidates (if any) were used in time,
    /// and those past their deadline now were not. `record` gets every outcome.
    /// `maybe_pending` false is the caller's word that `page` has none pending (it
    /// keeps a flag per page), which spares a look in the table.
    pub fn on_demand_fault(
        &mut self,
        page: PageNumber,
        maybe_pending: bool,
        mut record: impl FnMut(ShadowKey, bool),
    ) {
        self.demand_faults += 1;
        if let Some(judged) = maybe_pending.then(|| self.pending.remove(&page)).flatten() {
            for (key, _) in judged.into_iter().flatten() {
                record(key, true);
            }
        }
        while let Some(&(deadline, page, source)) = self.deadlines.front() {
            if deadline > self.demand_faults {
                break;
            }
            self.deadlines.pop_front();
            let Some(judged) = self.pending.get_mut(&page) else {
                continue;
            };
            let slot = &mut judged[source as usize];
            if slot.is_some_and(|(_, d)| d == deadline) {
                let (key, _) = slot.take().expect("just looked at");
                if judged.iter().all(Option::is_none) {
                    self.pending.remove(&page);
                }
                record(key, false);
            }
        }
    }

    /// Judges `page`, named by `key` but not prefetched, over the next `horizon`
    /// demand faults. A page already pending for the same source keeps its first
    /// judge.
    pub fn add(&mut self, key: ShadowKey, page: PageNumber, horizon: u64) {
        let source = key.source();
        let slot = &mut self.pending.entry(page).or_default()[source as usize];
        if slot.is_some() {
            return;
        }
        let deadline = self.demand_faults + horizon.max(1);
        *slot = Some((key, deadline));
        self.deadlines.push_back((deadline, page, source));
    }

    /// `page` came in by a prefetch: whether it would have faulted is unknown now.
    pub fn forget(&mut self, page: PageNumber) {
        if !self.pending.is_empty() {
            self.pending.remove(&page);
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.values().flatten().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_that_faults_in_time_counts_as_used_and_one_that_does_not_as_wasted() {
        let mut s = Shadows::default();
        let mut seen = Vec::new();
        s.add(ShadowKey::Link(1), 10, 2);
        s.add(ShadowKey::Link(2), 20, 2);
        s.add(ShadowKey::Link(3), 20, 5); // already pending: the source's first judge stays
        s.on_demand_fault(10, true, |k, u| seen.push((k, u)));
        assert_eq!(seen, vec![(ShadowKey::Link(1), true)]);
        s.on_demand_fault(99, true, |k, u| seen.push((k, u)));
        assert_eq!(
            seen[1],
            (ShadowKey::Link(2), false),
            "20 missed its deadline"
        );
        s.on_demand_fault(20, true, |k, u| seen.push((k, u)));
        assert_eq!(seen.len(), 2, "an expired candidate is not judged twice");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn each_source_judges_a_page_on_its_own() {
        // A stream's readahead and a link naming the same page: both learn the page
        // was used, so neither source's record starves the other.
        let mut s = Shadows::default();
        let mut seen = Vec::new();
        s.add(ShadowKey::Readahead, 5, 1);
        s.add(ShadowKey::Link(4), 5, 1);
        s.add(ShadowKey::Readahead, 6, 1);
        s.add(ShadowKey::Link(5), 6, 1);
        s.on_demand_fault(5, true, |k, u| seen.push((k, u)));
        assert_eq!(
            seen,
            vec![
                (ShadowKey::Link(4), true),
                (ShadowKey::Readahead, true),
                (ShadowKey::Readahead, false),
                (ShadowKey::Link(5), false),
            ]
        );
        s.add(ShadowKey::Readahead, 7, 3);
        s.add(ShadowKey::FirstTouch(0), 7, 3);
        s.forget(7);
        assert_eq!(s.pending(), 0, "a prefetch ends every source's judgement");
    }

    #[test]
    fn a_prefetched_candidate_is_not_judged() {
        let mut s = Shadows::default();
        let mut seen = Vec::new();
        s.add(ShadowKey::FirstTouch(0), 7, 1);
        s.forget(7);
        s.on_demand_fault(7, true, |k, u| seen.push((k, u)));
        s.on_demand_fault(8, true, |k, u| seen.push((k, u)));
        assert!(seen.is_empty());
        // Added again later, it gets a fresh deadline.
        s.add(ShadowKey::FirstTouch(0), 7, 3);
        s.on_demand_fault(1, true, |k, u| seen.push((k, u)));
        s.on_demand_fault(7, true, |k, u| seen.push((k, u)));
        assert_eq!(seen, vec![(ShadowKey::FirstTouch(0), true)]);
    }

    #[test]
    fn a_fault_with_nothing_pending_still_judges_the_expired_candidates() {
        let mut s = Shadows::default();
        let mut seen = Vec::new();
        s.add(ShadowKey::Readahead, 5, 1);
        s.on_demand_fault(9, false, |k, u| seen.push((k, u)));
        assert_eq!(seen, vec![(ShadowKey::Readahead, false)]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn trust_needs_the_score_and_enough_uses() {
        let mut o = Outcomes::default();
        assert!(!o.trusted(0.9, 1), "no use yet");
        o.record(true);
        assert!(o.trusted(0.9, 1));
        o.record(false);
        assert!(!o.trusted(0.9, 1), "2 of 3 with the prior");
        assert!(o.trusted(0.6, 1));
    }
}
