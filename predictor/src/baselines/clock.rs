//! `none`: demand paging with CLOCK (second-chance) eviction, the B0 baseline.

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::NO_OPINION;

const EMPTY: PageNumber = PageNumber::MAX;

/// Resident pages sit in a ring of slots with a referenced bit; the hand clears set
/// bits and names the first page whose bit is already clear, as the kernel's
/// active/inactive aging approximates. No prefetch.
///
/// The policy may evict fewer pages than it was offered (it skips hot-set pages, asks
/// for more to get past them, and stops once within budget), so the hand stops after
/// the last named page that was evicted: named pages the policy kept are named again
/// first. A hand that moved past them gave them a whole revolution more in RAM and
/// aged the rest of the ring the faster; live, at 75% RAM, `none` then took 40% more
/// demand faults than `lru` on the scan and stride workloads (docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct ClockAdvisor {
    slots: Vec<Slot>,
    index: FxHashMap<PageNumber, usize>,
    free: Vec<usize>,
    hand: usize,
    /// The slots the last `victims` call named, in the order named.
    named: Vec<usize>,
    /// How many of `named` lead up to the last one evicted since (0: none was).
    evicted_through: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    page: PageNumber,
    referenced: bool,
    /// Position + 1 in `named` if the last `victims` call named this page, else 0.
    named: u32,
}

const EMPTY_SLOT: Slot = Slot {
    page: EMPTY,
    referenced: false,
    named: 0,
};

impl ClockAdvisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts the hand just past the last page the previous call named that was
    /// evicted since, or back on the first it named if none was.
    fn rewind(&mut self) {
        let Some(&first) = self.named.first() else {
            return;
        };
        self.hand = match self.evicted_through {
            0 => first,
            k => (self.named[k as usize - 1] + 1) % self.slots.len(),
        };
        for &i in &self.named {
            self.slots[i].named = 0;
        }
        self.named.clear();
        self.evicted_through = 0;
    }
}

impl Advisor for ClockAdvisor {
    fn name(&self) -> &str {
        "none"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if resident {
            if let Some(&i) = self.index.get(&access.page) {
                self.slots[i].referenced = true;
            }
        }
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        if self.index.contains_key(&page) {
            return;
        }
        // A demand-filled page was just used; a prefetched one not yet.
        let entry = Slot {
            page,
            referenced: !prefetched,
            named: 0,
        };
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
            self.evicted_through = self.evicted_through.max(self.slots[i].named);
            self.slots[i] = EMPTY_SLOT;
            self.free.push(i);
        }
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let len = self.slots.len();
        if len == 0 {
            return;
        }
        self.rewind();
        // Two sweeps clear every bit, so the loop always ends; a page is named once
        // per call (its slot says so).
        let start = out.len();
        for _ in 0..2 * len {
            if out.len() - start >= n {
                break;
            }
            let slot = &mut self.slots[self.hand];
            if slot.page != EMPTY {
                if slot.referenced {
                    slot.referenced = false;
                } else if slot.named == 0 {
                    self.named.push(self.hand);
                    slot.named = self.named.len() as u32;
                    out.push(slot.page);
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
