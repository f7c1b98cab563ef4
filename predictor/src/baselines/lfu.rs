//! `lfu`: least-frequently-used eviction with dynamic aging (LFU-DA, Arlitt et al.
//! 2000), ties broken by least recent use.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::NO_OPINION;

/// Each resident page has a key `K = C + L`: `C` counts its observed accesses
/// since it entered RAM, `L` is the key of the last page evicted when the page was
/// last touched. The page with the smallest key goes first. Plain LFU lets pages
/// that were hot once stay forever while every new page is evicted on arrival;
/// the `L` term ages them out. Resident pages sit in a B-tree: O(log n) per call.
#[derive(Debug, Default)]
pub struct LfuAdvisor {
    /// page -> (C, K, last use)
    pages: FxHashMap<PageNumber, (u64, u64, u64)>,
    resident: BTreeSet<(u64, u64, PageNumber)>,
    inflation: u64,
    clock: u64,
}

impl LfuAdvisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn bump(&mut self, page: PageNumber) {
        self.clock += 1;
        let e = self.pages.entry(page).or_insert((0, 0, 0));
        let was = self.resident.remove(&(e.1, e.2, page));
        e.0 += 1;
        e.1 = e.0 + self.inflation;
        e.2 = self.clock;
        if was {
            self.resident.insert((e.1, e.2, page));
        }
    }
}

impl Advisor for LfuAdvisor {
    fn name(&self) -> &str {
        "lfu"
    }
    fn on_access(&mut self, access: &Access, _resident: bool) {
        self.bump(access.page);
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        let e = *self
            .pages
            .entry(page)
            .or_insert((0, self.inflation, self.clock));
        self.resident.insert((e.1, e.2, page));
    }
    fn on_evict(&mut self, page: PageNumber) {
        if let Some((_, key, last)) = self.pages.remove(&page) {
            self.resident.remove(&(key, last, page));
            self.inflation = self.inflation.max(key);
        }
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.resident.iter().take(n).map(|&(_, _, p)| p));
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
