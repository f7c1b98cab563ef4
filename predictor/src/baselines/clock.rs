//! `none`: demand paging with CLOCK (second-chance) eviction, the B0 baseline.

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::NO_OPINION;

const EMPTY: PageNumber = PageNumber::MAX;

/// Resident pages sit in a ring of slots with a referenced bit; the hand clears set
/// bits and names the first page whose bit is already clear, as the kernel's
/// active/inactive aging approximates. No prefetch.
#[derive(Debug, Default)]
pub struct ClockAdvisor {
    slots: Vec<(PageNumber, bool)>,
    index: FxHashMap<PageNumber, usize>,
    free: Vec<usize>,
    hand: usize,
}

impl ClockAdvisor {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Advisor for ClockAdvisor {
    fn name(&self) -> &str {
        "none"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if resident {
            if let Some(&i) = self.index.get(&access.page) {
                self.slots[i].1 = true;
            }
        }
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        if self.index.contains_key(&page) {
            return;
        }
        // A demand-filled page was just used; a prefetched one not yet.
        let entry = (page, !prefetched);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = entry;
                i
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        self.index.insert(page, i);
    }
    fn on_evict(&mut self, page: PageNumber) {
        if let Some(i) = self.index.remove(&page) {
            self.slots[i] = (EMPTY, false);
            self.free.push(i);
        }
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let len = self.slots.len();
        if len == 0 {
            return;
        }
        // Two sweeps clear every bit, so the loop always ends; a page is named once
        // per call because the hand passes it once per sweep and its bit is clear
        // only in the second.
        let start = out.len();
        for _ in 0..2 * len {
            if out.len() - start >= n {
                break;
            }
            let (page, referenced) = self.slots[self.hand];
            if page != EMPTY {
                if referenced {
                    self.slots[self.hand].1 = false;
                } else if !out[start..].contains(&page) {
                    out.push(page);
                }
            }
            self.hand = (self.hand + 1) % len;
        }
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
