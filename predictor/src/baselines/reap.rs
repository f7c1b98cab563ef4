//! `reap`: REAP-style record-and-replay of the working set (Ustiugov et al.,
//! ASPLOS'21), the B3 baseline.
//!
//! REAP records which pages a function's first invocation touched and, when the
//! next invocation restores the VM, fetches that working set in one go before
//! demand paging the rest. Here the recording is the trace's own first-touch order
//! (REAP's premise: the invocation repeats), so like the oracle it is built before
//! the replay; unlike the oracle it knows only *which* pages, in first-touch order,
//! not when they are used again. It prefetches them in that order, at most a RAM
//! budget's worth, as fast as the policy asks, and evicts LRU.

use std::collections::VecDeque;

use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::{LruList, NO_OPINION};

pub struct ReapAdvisor {
    /// The recorded working set not yet prefetched, first touch first, cut to the
    /// RAM budget.
    working_set: VecDeque<PageNumber>,
    list: LruList,
}

impl ReapAdvisor {
    /// `first_touch`: distinct pages in the order of their first access.
    pub fn new(first_touch: &[PageNumber], ram_budget_pages: usize) -> Self {
        let n = first_touch.len().min(ram_budget_pages);
        Self {
            working_set: first_touch[..n].iter().copied().collect(),
            list: LruList::default(),
        }
    }
}

impl Advisor for ReapAdvisor {
    fn name(&self) -> &str {
        "reap"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if resident {
            self.list.touch(access.page);
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        self.list.touch(page);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.list.remove(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.list.least_recent(n, out);
    }
    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        self.list.drain_absent(&mut self.working_set, max, out);
    }
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
