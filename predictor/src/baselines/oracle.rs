//! `oracle`: Belady's MIN with perfect prefetching, built from the whole trace
//! before the replay starts. It is the limit, not something a live VM can run.
//!
//! What "oracle" means exactly:
//! - it sees every access of the trace (the replay gives it full visibility whatever
//!   the others see) and knows for each one when the same page is used next;
//! - eviction: the resident page whose next use is furthest away (MIN), never the
//!   page the current access faulted in;
//! - prefetch: when asked for up to `max` pages, it walks the trace ahead of the
//!   current access and names the next non-resident pages in the order they will be
//!   used, stopping at the first one that would be used later than the page it would
//!   push out ("do no harm", Cao et al. 1995), and looking at most the RAM budget
//!   (and at most [`ORACLE_LOOKAHEAD`]) accesses ahead of the current one;
//! - probability: `budget / distance to next use`, at least [`super::NO_OPINION`]
//!   (every page needed again stays in the fastest storage tier), 1 at most; a page
//!   never used again -> 0 (the coldest tier).
//!
//! `belady` is the same without prefetching, `prefetch-oracle` the same prefetch over
//! LRU eviction: together they split the oracle's lead into eviction and prefetch.
//!
//! Costs: O(log n) per access (a lazy max-heap of next uses), the prefetch walk is
//! amortised by a cursor that never moves back.

use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::LruList;

/// Index of the next access; `NEVER` for "not used again".
type Pos = u32;
const NEVER: Pos = Pos::MAX;

/// Most trace positions one prefetch call walks.
pub const ORACLE_LOOKAHEAD: usize = 4096;

/// The whole page sequence of a trace with, for every access, the index of the
/// next access to the same page.
#[derive(Debug)]
pub struct OracleFuture {
    pages: Vec<PageNumber>,
    next_use: Vec<Pos>,
}

impl OracleFuture {
    /// Builds the next-use table (one backward pass). Traces longer than 2^32 - 1
    /// accesses are refused.
    pub fn new(pages: Vec<PageNumber>) -> Option<Self> {
        if pages.len() >= NEVER as usize {
            return None;
        }
        let mut next_use = vec![NEVER; pages.len()];
        let mut seen: FxHashMap<PageNumber, Pos> = FxHashMap::default();
        for (i, &p) in pages.iter().enumerate().rev() {
            if let Some(n) = seen.insert(p, i as Pos) {
                next_use[i] = n;
            }
        }
        Some(Self { pages, next_use })
    }

    /// Distinct pages in the order of their first access (REAP's recording).
    pub fn first_touch_order(&self) -> Vec<PageNumber> {
        let mut seen = rustc_hash::FxHashSet::default();
        self.pages
            .iter()
            .copied()
            .filter(|p| seen.insert(*p))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

pub struct OracleAdvisor {
    future: Arc<OracleFuture>,
    budget: usize,
    /// Index of the next access the advisor expects to observe.
    pos: usize,
    /// Next use of every resident page (the keys are the resident set).
    resident: FxHashMap<PageNumber, Pos>,
    /// Next use of pages that left RAM, for `probability`.
    evicted: FxHashMap<PageNumber, Pos>,
    heap: BinaryHeap<(Pos, PageNumber)>,
    /// Next use of the page being demand-filled, from `on_access`.
    faulting: Option<(PageNumber, Pos)>,
    /// Next use of pages named by `prefetch`, until they are filled.
    prefetch_next: FxHashMap<PageNumber, Pos>,
    cursor: usize,
    desyncs: u64,
    /// `false` for `belady`: MIN eviction only, demand paging.
    prefetches: bool,
    /// `Some` for `prefetch-oracle`: resident pages in LRU order, evicted from the
    /// least recent end instead of by MIN.
    lru: Option<LruList>,
}

impl OracleAdvisor {
    pub fn new(future: Arc<OracleFuture>, ram_budget_pages: usize) -> Self {
        Self {
            future,
            budget: ram_budget_pages.max(1),
            pos: 0,
            resident: FxHashMap::default(),
            evicted: FxHashMap::default(),
            heap: BinaryHeap::new(),
            faulting: None,
            prefetch_next: FxHashMap::default(),
            cursor: 0,
            desyncs: 0,
            prefetches: true,
            lru: None,
        }
    }

    /// `belady`: the oracle's MIN eviction without its prefetching, so a replay can
    /// tell how much of the oracle's lead is eviction and how much prefetch.
    pub fn without_prefetch(future: Arc<OracleFuture>, ram_budget_pages: usize) -> Self {
        Self {
            prefetches: false,
            ..Self::new(future, ram_budget_pages)
        }
    }

    /// `prefetch-oracle`: the oracle's perfect prefetch over LRU eviction (the
    /// eviction `leap` uses, here with every access seen), so a replay can tell how
    /// far knowing what comes next goes without knowing what to evict.
    pub fn with_lru_eviction(future: Arc<OracleFuture>, ram_budget_pages: usize) -> Self {
        Self {
            lru: Some(LruList::default()),
            ..Self::new(future, ram_budget_pages)
        }
    }

    /// Next use of the resident page eviction would take for the prefetch after
    /// `named` others in this call, never `protect`. Under LRU that is the next page
    /// in LRU order after the ones those prefetches push out; under MIN it is the
    /// furthest page, the oracle's estimate as it always was.
    fn next_victim(&mut self, protect: Option<PageNumber>, named: usize) -> Option<Pos> {
        if self.lru.is_none() {
            return self.furthest_valid(protect);
        }
        let pushed_out = (self.resident.len() + named).saturating_sub(self.budget);
        self.lru_victims(protect)
            .nth(pushed_out)
            .and_then(|p| self.resident.get(&p).copied())
    }

    /// `prefetch-oracle`'s victims in eviction order: least recent first, never
    /// `protect` (nothing without the LRU list).
    fn lru_victims(&self, protect: Option<PageNumber>) -> impl Iterator<Item = PageNumber> + '_ {
        self.lru
            .iter()
            .flat_map(|lru| lru.iter_least_recent())
            .filter(move |&p| Some(p) != protect)
    }

    /// Accesses whose page did not match the trace it was built from (non-zero
    /// means it was not given every access, and its decisions are not MIN).
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    fn set_resident(&mut self, page: PageNumber, next: Pos) {
        self.resident.insert(page, next);
        match self.lru.as_mut() {
            Some(lru) => lru.touch(page),
            // Only MIN reads the heap (and pops its stale entries).
            None => self.heap.push((next, page)),
        }
    }

    /// Next use of the resident page that MIN would evict, skipping `protect`.
    fn furthest_valid(&mut self, protect: Option<PageNumber>) -> Option<Pos> {
        let mut held = None;
        let mut found = None;
        while let Some(&(next, page)) = self.heap.peek() {
            if self.resident.get(&page) != Some(&next) {
                self.heap.pop();
                continue;
            }
            if Some(page) == protect {
                held = self.heap.pop();
                continue;
            }
            found = Some(next);
            break;
        }
        if let Some(h) = held {
            self.heap.push(h);
        }
        found
    }

    fn current_page(&self) -> Option<PageNumber> {
        self.pos.checked_sub(1).map(|i| self.future.pages[i])
    }
}

impl Advisor for OracleAdvisor {
    fn name(&self) -> &str {
        match (self.prefetches, self.lru.is_some()) {
            (false, _) => "belady",
            (true, false) => "oracle",
            (true, true) => "prefetch-oracle",
        }
    }

    fn on_access(&mut self, access: &Access, resident: bool) {
        let pages = &self.future.pages;
        if pages.get(self.pos) != Some(&access.page) {
            self.desyncs += 1;
            // Resynchronise on the next occurrence nearby, if any.
            let end = (self.pos + ORACLE_LOOKAHEAD).min(pages.len());
            match (self.pos..end).find(|&i| pages[i] == access.page) {
                Some(i) => self.pos = i,
                None => return,
            }
        }
        let next = self.future.next_use[self.pos];
        self.pos += 1;
        self.cursor = self.cursor.max(self.pos);
        if resident {
            if self.resident.contains_key(&access.page) {
                self.set_resident(access.page, next);
            }
        } else {
            self.faulting = Some((access.page, next));
        }
    }

    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        self.evicted.remove(&page);
        let next = match self.faulting {
            Some((p, n)) if p == page => {
                self.faulting = None;
                n
            }
            _ => self.prefetch_next.remove(&page).unwrap_or(NEVER),
        };
        self.set_resident(page, next);
    }

    fn on_evict(&mut self, page: PageNumber) {
        if let Some(lru) = self.lru.as_mut() {
            lru.remove(page);
        }
        if let Some(next) = self.resident.remove(&page) {
            self.evicted.insert(page, next);
        }
    }

    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let protect = self.current_page();
        if self.lru.is_some() {
            out.extend(self.lru_victims(protect).take(n));
            return;
        }
        // Pop the n furthest valid entries, then push them back: the policy may
        // evict fewer than it was offered, and evicted ones go stale lazily.
        let mut taken = Vec::with_capacity(n + 1);
        while out.len() < n {
            let Some((next, page)) = self.heap.pop() else {
                break;
            };
            if self.resident.get(&page) != Some(&next) {
                continue;
            }
            taken.push((next, page));
            if Some(page) != protect {
                out.push(page);
            }
        }
        self.heap.extend(taken);
    }

    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        if !self.prefetches {
            return;
        }
        let future = Arc::clone(&self.future);
        let pages = &future.pages;
        // Look no further than a budget's worth of accesses: beyond that a prefetched
        // page would mostly push out pages needed before it.
        let horizon = self.pos + self.budget.min(ORACLE_LOOKAHEAD);
        let end = (self.cursor + ORACLE_LOOKAHEAD)
            .min(horizon)
            .min(pages.len());
        let protect = self.current_page();
        let mut named = 0;
        let mut i = self.cursor;
        while i < end && named < max {
            let page = pages[i];
            if !self.resident.contains_key(&page) && !self.prefetch_next.contains_key(&page) {
                let room = self.resident.len() + named < self.budget;
                if !room {
                    // Do no harm: only if it is needed before the page it would push out.
                    match self.next_victim(protect, named) {
                        Some(victim_next) if (i as Pos) < victim_next => {}
                        _ => break,
                    }
                }
                // A page that left RAM knows its next use; an unseen one is first used at i.
                let next = match self.evicted.get(&page) {
                    Some(&n) if n >= self.pos as Pos && n <= i as Pos => n,
                    _ => i as Pos,
                };
                self.prefetch_next.insert(page, next);
                out.push(page);
                named += 1;
            }
            i += 1;
        }
        self.cursor = i;
        // Names the policy did not take (it filters resident pages) must not linger.
        if self.prefetch_next.len() > 4 * ORACLE_LOOKAHEAD {
            self.prefetch_next.clear();
        }
    }

    fn probability(&self, page: PageNumber) -> f32 {
        let next = self.resident.get(&page).or_else(|| self.evicted.get(&page));
        match next {
            Some(&n) if n != NEVER => {
                // Needed again: at least the fastest storage tier (it knows it will be).
                let distance = (n as usize).saturating_sub(self.pos).max(1);
                (self.budget as f32 / distance as f32).clamp(super::NO_OPINION, 1.0)
            }
            _ => 0.0,
        }
    }
}
