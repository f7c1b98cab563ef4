//! `lirs`: Low Inter-reference Recency Set replacement (Jiang & Zhang, SIGMETRICS'02).

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::{LruList, NO_OPINION};

/// Share of RAM, in percent, for resident HIR pages when
/// `TIERVISOR_LIRS_HIR_PERCENT` is not set: the paper's 1%. On the real-program
/// traces (58-911 pages of RAM at `--ram-fraction 0.25`) larger shares fault less,
/// approaching LRU from above (docs/predictor.md, "What online eviction can do").
pub const DEFAULT_HIR_PERCENT: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Low inter-reference recency: kept resident.
    Lir,
    /// High inter-reference recency, resident: in the queue, evicted first.
    Hir,
    /// High inter-reference recency, evicted, still in the stack: a refault while
    /// it is there shows a reuse distance short enough to make it LIR.
    Ghost,
}

/// The `stack` orders pages by recency down to the least recent LIR page; the
/// `queue` holds the resident HIR pages, oldest first, and victims come from it.
/// A HIR page touched again while still in the stack came back sooner than the
/// oldest LIR page did, so the two swap roles. On a loop over more pages than RAM, LRU evicts
/// every page before its reuse; LIRS keeps a fixed LIR set resident, as MIN would.
/// Ghosts (evicted HIR pages still in the stack) are bounded to the RAM budget, oldest
/// dropped first. Every call is O(1) amortised.
#[derive(Debug)]
pub struct LirsAdvisor {
    stack: LruList,
    queue: LruList,
    ghosts: LruList,
    state: FxHashMap<PageNumber, State>,
    lir_pages: usize,
    max_lir: usize,
    max_ghosts: usize,
    hir_percent: f64,
}

impl LirsAdvisor {
    /// `capacity`: the RAM budget in pages; `hir_percent` of it is left to HIR pages
    /// (at least one page).
    pub fn new(capacity: usize, hir_percent: f64) -> Self {
        let (max_lir, max_ghosts) = Self::limits(capacity, hir_percent);
        Self {
            stack: LruList::default(),
            queue: LruList::default(),
            ghosts: LruList::default(),
            state: FxHashMap::default(),
            lir_pages: 0,
            max_lir,
            max_ghosts,
            hir_percent,
        }
    }

    /// Most LIR pages and most ghosts for a budget of `capacity` pages.
    fn limits(capacity: usize, hir_percent: f64) -> (usize, usize) {
        let capacity = capacity.max(2);
        let hir = ((capacity as f64 * hir_percent / 100.0) as usize).clamp(1, capacity - 1);
        (capacity - hir, capacity)
    }

    /// [`LirsAdvisor::new`] with `TIERVISOR_LIRS_HIR_PERCENT` (0-100) or
    /// `DEFAULT_HIR_PERCENT`.
    pub fn from_env(capacity: usize) -> Self {
        let percent = std::env::var("TIERVISOR_LIRS_HIR_PERCENT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p))
            .unwrap_or(DEFAULT_HIR_PERCENT);
        Self::new(capacity, percent)
    }

    /// Removes HIR and ghost entries from the stack's bottom until a LIR page is there.
    fn prune(&mut self) {
        while let Some(bottom) = self.stack.oldest() {
            match self.state.get(&bottom) {
                Some(State::Lir) => break,
                Some(State::Ghost) => self.forget(bottom),
                _ => self.stack.remove(bottom),
            }
        }
    }

    fn forget(&mut self, page: PageNumber) {
        self.stack.remove(page);
        self.ghosts.remove(page);
        self.state.remove(&page);
    }

    /// `page` (resident) becomes LIR at the stack's top; if that makes one LIR page
    /// too many, the one at the bottom becomes HIR.
    fn make_lir(&mut self, page: PageNumber) {
        self.state.insert(page, State::Lir);
        self.queue.remove(page);
        self.ghosts.remove(page);
        self.stack.touch(page);
        self.lir_pages += 1;
        if self.lir_pages > self.max_lir {
            if let Some(bottom) = self.stack.oldest() {
                self.stack.remove(bottom);
                self.state.insert(bottom, State::Hir);
                self.queue.touch(bottom);
                self.lir_pages -= 1;
            }
        }
        self.prune();
    }
}

impl Advisor for LirsAdvisor {
    fn set_ram_budget(&mut self, pages: usize) {
        (self.max_lir, self.max_ghosts) = Self::limits(pages, self.hir_percent);
        // LIR pages beyond the new limit become HIR, from the stack's bottom.
        while self.lir_pages > self.max_lir {
            let Some(bottom) = self.stack.oldest() else {
                break;
            };
            self.stack.remove(bottom);
            self.state.insert(bottom, State::Hir);
            self.queue.touch(bottom);
            self.lir_pages -= 1;
            self.prune();
        }
        while self.ghosts.len() > self.max_ghosts {
            let Some(oldest) = self.ghosts.oldest() else {
                break;
            };
            self.forget(oldest);
        }
    }
    fn name(&self) -> &str {
        "lirs"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if !resident {
            return;
        }
        let page = access.page;
        match self.state.get(&page) {
            Some(State::Lir) => {
                self.stack.touch(page);
                self.prune();
            }
            Some(State::Hir) if self.stack.contains(page) => self.make_lir(page),
            Some(State::Hir) => {
                self.stack.touch(page);
                self.queue.touch(page);
            }
            _ => {}
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        let ghost_in_stack = self.state.get(&page) == Some(&State::Ghost);
        if ghost_in_stack || self.lir_pages < self.max_lir {
            self.make_lir(page);
        } else {
            self.state.insert(page, State::Hir);
            self.stack.touch(page);
            self.queue.touch(page);
        }
    }
    fn on_evict(&mut self, page: PageNumber) {
        match self.state.get(&page) {
            Some(State::Hir) => {
                self.queue.remove(page);
                if self.stack.contains(page) {
                    self.state.insert(page, State::Ghost);
                    self.ghosts.touch(page);
                    if self.ghosts.len() > self.max_ghosts {
                        if let Some(oldest) = self.ghosts.oldest() {
                            self.forget(oldest);
                        }
                    }
                } else {
                    self.state.remove(&page);
                }
            }
            Some(State::Lir) => {
                self.lir_pages -= 1;
                self.forget(page);
                self.prune();
            }
            _ => {}
        }
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let before = out.len();
        self.queue.least_recent(n, out);
        let named = out.len() - before;
        // Only when no HIR page is resident: the least recent LIR pages.
        out.extend(
            self.stack
                .iter_least_recent()
                .filter(|p| self.state.get(p) == Some(&State::Lir))
                .take(n - named),
        );
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
