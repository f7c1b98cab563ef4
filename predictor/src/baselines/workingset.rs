//! `workingset`: Linux's reclaim order - an active and an inactive LRU list, with
//! refault-distance activation (mm/workingset.c) - and no prefetch.
//!
//! Under sampled visibility an advisor sees almost only faults, so plain LRU degrades
//! to FIFO: a hot page is evicted as readily as a page scanned once. The refault
//! distance (evictions between a page's eviction and its refault) tells them apart
//! from faults alone: a page that comes back within a RAM's worth of evictions would
//! have stayed resident with a little more room, so it enters the active list; other
//! faults start on the inactive list and leave first. [`WorkingSet`] is that order on
//! its own, so the GRU advisor evicts by it too.

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::{LruList, NO_OPINION};

/// Active/inactive lists with refault-distance activation.
#[derive(Debug)]
pub struct WorkingSet {
    active: LruList,
    inactive: LruList,
    /// Eviction number at which each non-resident page left (its shadow entry).
    evicted_at: FxHashMap<PageNumber, u64>,
    evictions: u64,
    /// The page whose demand fault is being served, if its refault distance was short.
    activate_next: Option<PageNumber>,
    /// The inactive list is kept at least this share of the resident pages (percent).
    inactive_percent: usize,
    scratch: Vec<PageNumber>,
}

impl Default for WorkingSet {
    fn default() -> Self {
        Self::new(50)
    }
}

impl WorkingSet {
    /// `inactive_percent`: the least share of resident pages on the inactive list
    /// (the kernel aims at about half for small memories).
    pub fn new(inactive_percent: usize) -> Self {
        WorkingSet {
            active: LruList::default(),
            inactive: LruList::default(),
            evicted_at: FxHashMap::default(),
            evictions: 0,
            activate_next: None,
            inactive_percent: inactive_percent.min(100),
            scratch: Vec::new(),
        }
    }

    pub fn resident(&self) -> usize {
        self.active.len() + self.inactive.len()
    }

    pub fn contains(&self, page: PageNumber) -> bool {
        self.active.contains(page) || self.inactive.contains(page)
    }

    /// Evictions so far (the clock refault distances are measured in).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Refault distance of `page` if it is out of RAM now: evictions since it left.
    pub fn refault_distance(&self, page: PageNumber) -> Option<u64> {
        self.evicted_at.get(&page).map(|&e| self.evictions - e)
    }

    /// An observed access: a resident page moves up (inactive -> active); a fault on
    /// a page evicted less than a RAM's worth of evictions ago will enter the active list.
    pub fn on_access(&mut self, page: PageNumber, resident: bool) {
        if resident {
            if self.inactive.contains(page) {
                self.inactive.remove(page);
                self.active.touch(page);
            } else if self.active.contains(page) {
                self.active.touch(page);
            }
        } else if self
            .refault_distance(page)
            .is_some_and(|d| d as usize <= self.resident())
        {
            self.activate_next = Some(page);
        }
    }

    /// `page` entered RAM. A prefetched page starts inactive: it has not been used yet.
    pub fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        self.evicted_at.remove(&page);
        if !prefetched && self.activate_next == Some(page) {
            self.activate_next = None;
            self.active.touch(page);
        } else if !self.active.contains(page) {
            self.inactive.touch(page);
        }
    }

    pub fn on_evict(&mut self, page: PageNumber) {
        self.active.remove(page);
        self.inactive.remove(page);
        self.evictions += 1;
        self.evicted_at.insert(page, self.evictions);
        // A shadow entry older than a RAM's worth of evictions can no longer activate
        // its page, so it is dropped (amortised: only when they outnumber the resident
        // pages twice over), as the kernel bounds its shadow entries.
        let resident = self.resident() as u64;
        if self.evicted_at.len() as u64 > 2 * resident + 1024 {
            let now = self.evictions;
            self.evicted_at.retain(|_, e| now - *e <= resident);
        }
    }

    /// Shadow entries held (pages evicted recently enough to activate on refault).
    pub fn shadow_entries(&self) -> usize {
        self.evicted_at.len()
    }

    /// Gives `page` another round on the active list (a predictor expects it soon).
    pub fn activate(&mut self, page: PageNumber) {
        if self.inactive.contains(page) {
            self.inactive.remove(page);
            self.active.touch(page);
        }
    }

    /// Deactivates the least recent active pages until the inactive list has its share.
    fn balance(&mut self) {
        let want = self.resident() * self.inactive_percent / 100;
        while self.inactive.len() < want && !self.active.is_empty() {
            self.scratch.clear();
            self.active.least_recent(1, &mut self.scratch);
            let p = self.scratch[0];
            self.active.remove(p);
            self.inactive.touch(p);
        }
    }

    /// Up to `n` victims, least wanted first: the inactive tail, then the active tail.
    pub fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.balance();
        let start = out.len();
        self.inactive.least_recent(n, out);
        let got = out.len() - start;
        if got < n {
            self.active.least_recent(n - got, out);
        }
    }
}

/// `workingset`: [`WorkingSet`] eviction, no prefetch.
#[derive(Debug, Default)]
pub struct WorkingSetAdvisor {
    lists: WorkingSet,
}

impl WorkingSetAdvisor {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Advisor for WorkingSetAdvisor {
    fn name(&self) -> &str {
        "workingset"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        self.lists.on_access(access.page, resident);
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        self.lists.on_fill(page, prefetched);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.lists.on_evict(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.lists.victims(n, out);
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_entries_stay_bounded_and_recent_refaults_still_activate() {
        let mut ws = WorkingSet::default();
        // 64 resident pages; a scan evicts 100,000 others through them.
        for p in 0..64 {
            ws.on_fill(p, false);
        }
        let mut victims = Vec::new();
        for p in 64..100_064u64 {
            victims.clear();
            ws.victims(1, &mut victims);
            ws.on_evict(victims[0]);
            ws.on_fill(p, false);
        }
        assert!(
            ws.shadow_entries() <= 2 * 64 + 1024 + 1,
            "{}",
            ws.shadow_entries()
        );
        // The page evicted last refaults within a RAM's worth: it is activated.
        let last = victims[0];
        assert_eq!(ws.refault_distance(last), Some(0));
        ws.on_access(last, false);
        victims.clear();
        ws.victims(1, &mut victims);
        ws.on_evict(victims[0]);
        ws.on_fill(last, false);
        assert!(ws.active.contains(last));
    }
}
