//! `lfu`: least-frequently-used eviction, ties broken by least recent use.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::Recency;

/// Counts observed accesses per page over the whole run ("perfect" LFU: counts
/// survive eviction, so a page that was hot before keeps its rank when it returns).
/// Resident pages are ordered by (count, last use) in a B-tree: O(log n) per call.
#[derive(Debug, Default)]
pub struct LfuAdvisor {
    counts: FxHashMap<PageNumber, (u64, u64)>,
    resident: BTreeSet<(u64, u64, PageNumber)>,
    clock: u64,
    recency: Recency,
}

impl LfuAdvisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&self, page: PageNumber) -> (u64, u64, PageNumber) {
        let (count, last) = self.counts.get(&page).copied().unwrap_or((0, 0));
        (count, last, page)
    }
}

impl Advisor for LfuAdvisor {
    fn name(&self) -> &str {
        "lfu"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        let page = access.page;
        self.recency.touch(page);
        self.clock += 1;
        let old = self.key(page);
        let was_indexed = resident && self.resident.remove(&old);
        let entry = self.counts.entry(page).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = self.clock;
        if was_indexed {
            let new = self.key(page);
            self.resident.insert(new);
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        let key = self.key(page);
        self.resident.insert(key);
    }
    fn on_evict(&mut self, page: PageNumber) {
        let key = self.key(page);
        self.resident.remove(&key);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.resident.iter().take(n).map(|&(_, _, p)| p));
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, page: PageNumber) -> f32 {
        self.recency.probability(page)
    }
    fn end_window(&mut self, _now_ns: u64) {
        self.recency.end_window();
    }
}
