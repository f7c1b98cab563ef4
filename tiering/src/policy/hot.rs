//! Tier 0, the hot set: the resident pages with the most observed accesses over
//! recent windows, which eviction never takes while they stay hot.
//!
//! Each observed access adds one to its page's heat; at every window end the set is
//! re-chosen from the hottest pages (at least [`HOT_MIN_HEAT`]), and every
//! `hot_decay_windows` windows every heat halves, so a page that stops being
//! accessed cools out of the set within a few decay periods. A per-page counter keeps this independent of the advisor: a policy
//! without a predictor still has a hot set.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::access::PageNumber;

/// Heat a page needs to enter the hot set: two observed accesses in the current
/// window, or one a window over a few windows. A page touched once is not hot.
pub const HOT_MIN_HEAT: u32 = 2;

/// Orders (heat, page) pairs hottest first; ties by page number, so the choice does
/// not depend on hashing.
fn hottest_first(a: &(u32, PageNumber), b: &(u32, PageNumber)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

#[derive(Debug, Default)]
pub(super) struct HotSet {
    capacity: usize,
    /// Heats halve every this many windows (at least 1).
    decay_every: u32,
    windows_since_decay: u32,
    heat: FxHashMap<PageNumber, u32>,
    members: FxHashSet<PageNumber>,
    scratch: Vec<(u32, PageNumber)>,
}

impl HotSet {
    pub fn new(capacity: usize, decay_every: u32) -> Self {
        Self {
            capacity,
            decay_every: decay_every.max(1),
            ..Self::default()
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// A new capacity (the RAM budget changed). A smaller one drops the coolest
    /// members at once; they stay resident, only no longer protected from eviction.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        if self.members.len() <= capacity {
            return;
        }
        let mut ranked: Vec<(u32, PageNumber)> = self
            .members
            .iter()
            .map(|&p| (self.heat.get(&p).copied().unwrap_or(0), p))
            .collect();
        ranked.sort_unstable_by(hottest_first);
        for &(_, p) in &ranked[capacity..] {
            self.members.remove(&p);
        }
        if capacity == 0 {
            self.heat.clear();
        }
    }

    pub fn contains(&self, page: PageNumber) -> bool {
        self.members.contains(&page)
    }

    pub fn note_access(&mut self, page: PageNumber) {
        if self.capacity > 0 {
            let h = self.heat.entry(page).or_insert(0);
            *h = h.saturating_add(1);
        }
    }

    /// The page left RAM against the policy's wish (its fill failed): it is no
    /// longer in the set, which only holds resident pages.
    pub fn remove(&mut self, page: PageNumber) {
        self.members.remove(&page);
    }

    /// Re-chooses the set from the current heats, appends the pages that entered it
    /// to `entered`, then decays every heat if a decay period ended.
    pub fn end_window(&mut self, entered: &mut Vec<PageNumber>) {
        if self.capacity == 0 {
            return;
        }
        let mut ranked = std::mem::take(&mut self.scratch);
        ranked.clear();
        ranked.extend(
            self.heat
                .iter()
                .filter(|&(_, &h)| h >= HOT_MIN_HEAT)
                .map(|(&p, &h)| (h, p)),
        );
        if ranked.len() > self.capacity {
            ranked.select_nth_unstable_by(self.capacity, hottest_first);
            ranked.truncate(self.capacity);
        }
        ranked.sort_unstable_by(hottest_first);
        let previous = std::mem::take(&mut self.members);
        for &(_, p) in &ranked {
            self.members.insert(p);
            if !previous.contains(&p) {
                entered.push(p);
            }
        }
        self.scratch = ranked;
        self.windows_since_decay += 1;
        if self.windows_since_decay >= self.decay_every {
            self.windows_since_decay = 0;
            self.heat.retain(|_, h| {
                *h /= 2;
                *h > 0
            });
        }
    }
}
