//! `arc`: Adaptive Replacement Cache (Megiddo & Modha, FAST'03).

use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::{LruList, NO_OPINION};

/// Two LRU lists of resident pages, `t1` (seen once since entering RAM) and `t2`
/// (seen again), and two ghost lists of pages recently evicted from each (`b1`,
/// `b2`). A refault found in `b1` means `t1` was too small, one in `b2` that `t2` was,
/// and the target size of `t1` (`p`) moves accordingly, so the cache adapts between
/// recency and frequency and a scan cannot flush the pages seen twice. Every call is
/// O(1).
#[derive(Debug)]
pub struct ArcAdvisor {
    t1: LruList,
    t2: LruList,
    b1: LruList,
    b2: LruList,
    /// Target size of `t1`, in pages, in `0..=capacity`.
    p: f64,
    capacity: usize,
}

impl ArcAdvisor {
    /// `capacity`: the RAM budget in pages, which sizes the ghost lists.
    pub fn new(capacity: usize) -> Self {
        Self {
            t1: LruList::default(),
            t2: LruList::default(),
            b1: LruList::default(),
            b2: LruList::default(),
            p: 0.0,
            capacity: capacity.max(1),
        }
    }

    /// Ghosts are bounded as in the paper: `|t1| + |b1| <= c`, all four `<= 2c`.
    fn trim_ghosts(&mut self) {
        while self.t1.len() + self.b1.len() > self.capacity {
            let Some(oldest) = self.b1.oldest() else {
                break;
            };
            self.b1.remove(oldest);
        }
        while self.t1.len() + self.t2.len() + self.b1.len() + self.b2.len() > 2 * self.capacity {
            let Some(oldest) = self.b2.oldest() else {
                break;
            };
            self.b2.remove(oldest);
        }
    }
}

impl Advisor for ArcAdvisor {
    fn set_ram_budget(&mut self, pages: usize) {
        self.capacity = pages.max(1);
        self.p = self.p.min(self.capacity as f64);
        self.trim_ghosts();
    }
    fn name(&self) -> &str {
        "arc"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if !resident {
            return;
        }
        let page = access.page;
        if self.t1.contains(page) {
            self.t1.remove(page);
            self.t2.touch(page);
        } else if self.t2.contains(page) {
            self.t2.touch(page);
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        let (b1, b2) = (self.b1.len() as f64, self.b2.len() as f64);
        if self.b1.contains(page) {
            self.p = (self.p + (b2 / b1).max(1.0)).min(self.capacity as f64);
            self.b1.remove(page);
            self.t2.touch(page);
        } else if self.b2.contains(page) {
            self.p = (self.p - (b1 / b2).max(1.0)).max(0.0);
            self.b2.remove(page);
            self.t2.touch(page);
        } else {
            self.t1.touch(page);
        }
        self.trim_ghosts();
    }
    fn on_evict(&mut self, page: PageNumber) {
        if self.t1.contains(page) {
            self.t1.remove(page);
            self.b1.touch(page);
        } else if self.t2.contains(page) {
            self.t2.remove(page);
            self.b2.touch(page);
        }
        self.trim_ghosts();
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        // REPLACE: from t1 while it is above its target, else from t2. The paper's tie
        // rule looks at the page being faulted in, which this call does not know.
        let (first, then) = if !self.t1.is_empty() && self.t1.len() as f64 > self.p {
            (&self.t1, &self.t2)
        } else {
            (&self.t2, &self.t1)
        };
        let before = out.len();
        first.least_recent(n, out);
        let named = out.len() - before;
        then.least_recent(n - named, out);
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
