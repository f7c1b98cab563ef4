//! `workingset`: Linux's reclaim order - an active and an inactive LRU list, with
//! refault-distance activation (mm/workingset.c) - and no prefetch.
//!
//! Under sampled visibility an advisor sees almost only faults, so plain LRU degrades
//! to FIFO: a hot page is evicted as readily as a page scanned once. The refault
//! distance (evictions between a page's eviction and its refault) tells them apart
//! from faults alone: a page that comes back within a RAM's worth of evictions would
//! have stayed resident with a little more room, so it enters the active list; other
//! faults start on the inactive list and leave first. [`WorkingSet`] is that order on
//! its own, so the GRU advisor evicts by it too. Where the driver allows probes
//! ([`Advisor::probes`]), the pages next in line to leave are watched first and a
//! touch activates them: the referenced-bit check the kernel makes at the inactive
//! tail, paid for with a minor fault.

use std::collections::VecDeque;

use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::NO_OPINION;
use crate::pagetable::{PageTable, NO_PAGE};

/// Which list a page is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Off,
    Active,
    Inactive,
}

/// Everything the order keeps about one page, in one record: its list and place on
/// it, its shadow entry and its probe flags, and the caller's own facts about the page
/// (`data`). One cache line per page, not one per table (docs/predictor.md, "Live, on
/// a larger VM"); aligned so that a record of up to 64 bytes never spans two.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct PageRecord<P> {
    /// The next more recent and the next less recent page of its list.
    newer: PageNumber,
    older: PageNumber,
    /// Eviction number at which it left RAM (its shadow entry); 0: none.
    evicted_at: u64,
    data: P,
    list: List,
    /// Zapped by [`WorkingSet::probes`] and not touched since.
    probed: bool,
    /// A probe found it in use: its next trip to the inactive tail goes back to the
    /// active list without a probe (a probe costs the guest a minor fault).
    reprieved: bool,
}

impl<P: Default> Default for PageRecord<P> {
    fn default() -> Self {
        PageRecord {
            newer: NO_PAGE,
            older: NO_PAGE,
            evicted_at: 0,
            data: P::default(),
            list: List::Off,
            probed: false,
            reprieved: false,
        }
    }
}

/// The ends and length of one list, most recent at `head`.
#[derive(Debug, Clone, Copy)]
struct ListEnds {
    head: PageNumber,
    tail: PageNumber,
    len: usize,
}

impl Default for ListEnds {
    fn default() -> Self {
        ListEnds {
            head: NO_PAGE,
            tail: NO_PAGE,
            len: 0,
        }
    }
}

/// Active/inactive lists with refault-distance activation, and a `P` per page for the
/// caller ([`WorkingSet::data`]).
#[derive(Debug)]
pub struct WorkingSet<P = ()> {
    pages: PageTable<PageRecord<P>>,
    active: ListEnds,
    inactive: ListEnds,
    /// Pages with a shadow entry (`PageRecord::evicted_at` set).
    shadows: usize,
    /// Every eviction (page, eviction number) in order, so that dropping the shadow
    /// entries older than a RAM's worth of evictions visits those only, however many
    /// pages the table holds. An entry whose page was filled or evicted again since
    /// no longer matches its record and is skipped.
    shadow_order: VecDeque<(PageNumber, u64)>,
    /// Pages with `PageRecord::probed` set.
    probed: usize,
    evictions: u64,
    /// The page whose demand fault is being served, if its refault distance was short.
    activate_next: Option<PageNumber>,
    /// The inactive list is kept at least this share of the resident pages (percent).
    inactive_percent: usize,
    scratch: Vec<PageNumber>,
    reprieve: bool,
    /// Share of recent faults that were short refaults (evicted less than a RAM's
    /// worth of evictions ago), a moving average over about 128 faults.
    short_refaults: f32,
    /// Whether probes are asked for now (see [`WorkingSet::probes`]).
    probing: bool,
    /// `false`: probe whenever the driver asks ([`WorkingSet::with_probes_always`]).
    adaptive: bool,
    /// A prefetched page that left RAM less than this many resident pages' worth of
    /// evictions ago enters the active list (0: prefetched pages start inactive).
    prefetch_activation: f32,
}

/// Probing starts when this share of recent faults are short refaults, and stops below
/// [`PROBE_OFF_SHARE`] (hysteresis: probes themselves lower the share). Probes pay
/// when evicted pages come back soon (the working set nearly fits, and keeping a page
/// a probe saw in use saves a refault); when most faults are first touches or long
/// refaults (random access over far more than RAM), keeping one page only evicts
/// another as likely to return, and every touched probe is a minor fault for nothing.
/// Chosen on the training traces (docs/predictor.md, "Probes").
const PROBE_ON_SHARE: f32 = 0.5;
const PROBE_OFF_SHARE: f32 = 0.35;

impl<P: Default + Copy> Default for WorkingSet<P> {
    fn default() -> Self {
        Self::new(50)
    }
}

impl<P: Default + Copy> WorkingSet<P> {
    /// `inactive_percent`: the least share of resident pages on the inactive list
    /// (the kernel aims at about half for small memories).
    pub fn new(inactive_percent: usize) -> Self {
        WorkingSet {
            pages: PageTable::default(),
            active: ListEnds::default(),
            inactive: ListEnds::default(),
            shadows: 0,
            shadow_order: VecDeque::new(),
            probed: 0,
            evictions: 0,
            activate_next: None,
            inactive_percent: inactive_percent.min(100),
            scratch: Vec::new(),
            reprieve: true,
            short_refaults: 0.0,
            probing: false,
            adaptive: true,
            prefetch_activation: 0.0,
        }
    }

    /// Prefetched pages with a refault distance under `ram_multiple` x the resident
    /// pages enter the active list, as the kernel's `workingset_refault` activates a
    /// readahead page whose shadow entry says it was evicted recently. Default 0: a
    /// prefetched page starts inactive.
    pub fn with_prefetch_activation(mut self, ram_multiple: f32) -> Self {
        self.prefetch_activation = ram_multiple.max(0.0);
        self
    }

    /// Probe whenever asked (no short-refault gate), for comparisons.
    pub fn with_probes_always(mut self, always: bool) -> Self {
        self.adaptive = !always;
        self
    }

    /// Whether a page a probe found in use skips its next probe (default: yes).
    pub fn with_probe_reprieve(mut self, on: bool) -> Self {
        self.reprieve = on;
        self
    }

    pub fn resident(&self) -> usize {
        self.active.len + self.inactive.len
    }

    pub fn contains(&self, page: PageNumber) -> bool {
        self.pages.get(page).list != List::Off
    }

    /// Whether `page` is on the active list.
    pub fn is_active(&self, page: PageNumber) -> bool {
        self.pages.get(page).list == List::Active
    }

    /// The caller's facts about `page` (`P::default()` if it never wrote them), kept
    /// in the page's record whether or not the page is resident.
    pub fn data(&self, page: PageNumber) -> &P {
        &self.pages.get(page).data
    }

    /// The caller's facts about `page`, for writing.
    pub fn data_mut(&mut self, page: PageNumber) -> &mut P {
        &mut self.pages.get_mut(page).data
    }

    /// Every page's facts that may have been written (pages of allocated records).
    pub fn for_each_data_mut(&mut self, mut f: impl FnMut(&mut P)) {
        self.pages.for_each_mut(|_, r| f(&mut r.data));
    }

    /// Evictions so far (the clock refault distances are measured in).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Refault distance of `page` if it is out of RAM now: evictions since it left.
    pub fn refault_distance(&self, page: PageNumber) -> Option<u64> {
        let e = self.pages.get(page).evicted_at;
        (e != 0).then(|| self.evictions - e)
    }

    fn ends(&mut self, list: List) -> &mut ListEnds {
        match list {
            List::Active => &mut self.active,
            List::Inactive => &mut self.inactive,
            List::Off => unreachable!("no list"),
        }
    }

    /// Takes `page` off its list, if it is on one.
    fn unlink(&mut self, page: PageNumber) {
        let r = *self.pages.get(page);
        if r.list == List::Off {
            return;
        }
        if r.newer != NO_PAGE {
            self.pages.get_mut(r.newer).older = r.older;
        } else {
            self.ends(r.list).head = r.older;
        }
        if r.older != NO_PAGE {
            self.pages.get_mut(r.older).newer = r.newer;
        } else {
            self.ends(r.list).tail = r.newer;
        }
        self.ends(r.list).len -= 1;
        let m = self.pages.get_mut(page);
        m.list = List::Off;
        m.newer = NO_PAGE;
        m.older = NO_PAGE;
    }

    /// Makes `page` the most recent of `list`, taking it off the list it was on.
    fn touch(&mut self, page: PageNumber, list: List) {
        self.unlink(page);
        let head = self.ends(list).head;
        let m = self.pages.get_mut(page);
        m.list = list;
        m.newer = NO_PAGE;
        m.older = head;
        if head != NO_PAGE {
            self.pages.get_mut(head).newer = page;
        } else {
            self.ends(list).tail = page;
        }
        let ends = self.ends(list);
        ends.head = page;
        ends.len += 1;
    }

    /// The pages of `list` from its least recent end.
    fn least_recent(&self, list: List) -> impl Iterator<Item = PageNumber> + '_ {
        let mut cur = match list {
            List::Active => self.active.tail,
            List::Inactive => self.inactive.tail,
            List::Off => NO_PAGE,
        };
        std::iter::from_fn(move || {
            let page = cur;
            (page != NO_PAGE).then(|| {
                cur = self.pages.get(page).newer;
                page
            })
        })
    }

    /// An observed access: a resident page moves up (inactive -> active); a fault on
    /// a page evicted less than a RAM's worth of evictions ago will enter the active list.
    pub fn on_access(&mut self, page: PageNumber, resident: bool) {
        if resident {
            let Some(r) = self.pages.get_mut_if_present(page) else {
                return;
            };
            if r.probed {
                r.probed = false;
                r.reprieved |= self.reprieve;
                self.probed -= 1;
            }
            if r.list != List::Off {
                self.touch(page, List::Active);
            }
        } else {
            let short = self
                .refault_distance(page)
                .is_some_and(|d| d as usize <= self.resident());
            if short {
                self.activate_next = Some(page);
            }
            let x = if short { 1.0 } else { 0.0 };
            self.short_refaults += (x - self.short_refaults) / 128.0;
            if self.short_refaults >= PROBE_ON_SHARE {
                self.probing = true;
            } else if self.short_refaults < PROBE_OFF_SHARE {
                self.probing = false;
            }
        }
    }

    /// `page` entered RAM. A prefetched page starts inactive (it has not been used yet),
    /// unless it left RAM recently and prefetch activation is on
    /// ([`WorkingSet::with_prefetch_activation`]).
    pub fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        let recent = self.prefetch_activation > 0.0
            && self
                .refault_distance(page)
                .is_some_and(|d| d as f32 <= self.prefetch_activation * self.resident() as f32);
        let r = self.pages.get_mut(page);
        if r.evicted_at != 0 {
            r.evicted_at = 0;
            self.shadows -= 1;
        }
        if !prefetched && self.activate_next == Some(page) {
            self.activate_next = None;
            self.touch(page, List::Active);
        } else if prefetched && recent {
            self.touch(page, List::Active);
        } else if !self.is_active(page) {
            self.touch(page, List::Inactive);
        }
    }

    pub fn on_evict(&mut self, page: PageNumber) {
        self.unlink(page);
        self.evictions += 1;
        let r = self.pages.get_mut(page);
        if r.probed {
            self.probed -= 1;
        }
        r.probed = false;
        r.reprieved = false;
        if r.evicted_at == 0 {
            self.shadows += 1;
        }
        r.evicted_at = self.evictions;
        self.shadow_order.push_back((page, self.evictions));
        // Pages filled again leave their entries behind; when those outnumber the
        // shadow entries, they go (each shadow entry has one entry here, its last).
        if self.shadow_order.len() > 2 * self.shadows + 4096 {
            let pages = &self.pages;
            self.shadow_order
                .retain(|&(p, e)| pages.get(p).evicted_at == e);
        }
        // A shadow entry older than a RAM's worth of evictions can no longer activate
        // its page, so it is dropped (amortised: only when they outnumber the resident
        // pages twice over), as the kernel bounds its shadow entries.
        let resident = self.resident() as u64;
        if self.shadows as u64 > 2 * resident + 1024 {
            let now = self.evictions;
            while let Some(&(page, e)) = self.shadow_order.front() {
                if now - e <= resident {
                    break;
                }
                self.shadow_order.pop_front();
                if let Some(r) = self.pages.get_mut_if_present(page) {
                    if r.evicted_at == e {
                        r.evicted_at = 0;
                        self.shadows -= 1;
                    }
                }
            }
        }
    }

    /// Shadow entries held (pages evicted recently enough to activate on refault).
    pub fn shadow_entries(&self) -> usize {
        self.shadows
    }

    /// Gives `page` another round on the active list (a predictor expects it soon).
    pub fn activate(&mut self, page: PageNumber) {
        if self.pages.get(page).list == List::Inactive {
            self.touch(page, List::Active);
        }
    }

    /// Deactivates the least recent active pages until the inactive list has its share.
    fn balance(&mut self) {
        let want = self.resident() * self.inactive_percent / 100;
        while self.inactive.len < want && self.active.len > 0 {
            let p = self.active.tail;
            self.touch(p, List::Inactive);
        }
    }

    /// Whether probes are asked for now: always if built `with_probes_always`, else
    /// while short refaults are a large share of faults.
    pub fn probing(&self) -> bool {
        !self.adaptive || self.probing
    }

    /// The next inactive pages to leave that are not being watched already, up to
    /// `max`: a touch before they go (seen as a sampled minor fault) activates them,
    /// as the kernel's referenced-bit check at the inactive tail does. A page a probe
    /// found in use once is moved back to the active list on its next trip to the
    /// tail without a probe: hot pages would otherwise pay a minor fault per trip
    /// (one reprieve measured best on the training traces, docs/predictor.md).
    pub fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        if !self.probing() {
            return;
        }
        // Pages watched already sit at the tail (they are the next to leave): the walk
        // looks that many further.
        self.scratch.clear();
        let start = out.len();
        let mut cur = self.inactive.tail;
        for _ in 0..max + self.probed {
            if cur == NO_PAGE || out.len() - start >= max {
                break;
            }
            let page = cur;
            let r = self.pages.get_mut(page);
            cur = r.newer;
            if r.reprieved {
                self.scratch.push(page);
            } else if !r.probed {
                r.probed = true;
                self.probed += 1;
                out.push(page);
            }
        }
        for i in 0..self.scratch.len() {
            let page = self.scratch[i];
            self.pages.get_mut(page).reprieved = false;
            self.activate(page);
        }
    }

    /// Up to `n` victims, least wanted first: the inactive tail, then the active tail.
    pub fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.balance();
        let start = out.len();
        out.extend(self.least_recent(List::Inactive).take(n));
        let got = out.len() - start;
        if got < n {
            out.extend(self.least_recent(List::Active).take(n - got));
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

    /// The baseline over lists built otherwise (e.g. probing always).
    pub fn with_lists(lists: WorkingSet) -> Self {
        Self { lists }
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
    fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        self.lists.probes(max, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_entries_stay_bounded_and_recent_refaults_still_activate() {
        let mut ws: WorkingSet = WorkingSet::default();
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
        assert!(ws.shadow_order.len() <= 2 * ws.shadows + 4096 + 1);
        // The page evicted last refaults within a RAM's worth: it is activated.
        let last = victims[0];
        assert_eq!(ws.refault_distance(last), Some(0));
        ws.on_access(last, false);
        victims.clear();
        ws.victims(1, &mut victims);
        ws.on_evict(victims[0]);
        ws.on_fill(last, false);
        assert!(ws.is_active(last));
    }

    #[test]
    fn the_eviction_order_of_shadow_entries_stays_bounded_when_pages_come_back() {
        // 64 resident pages, a loop over 72: every evicted page is filled again soon,
        // so the shadow entries stay few and no sweep ever runs.
        let mut ws: WorkingSet = WorkingSet::default();
        let mut victims = Vec::new();
        for p in 0..64 {
            ws.on_fill(p, false);
        }
        for i in 0..100_000u64 {
            let p = i % 72;
            if ws.contains(p) {
                continue;
            }
            victims.clear();
            ws.victims(1, &mut victims);
            ws.on_evict(victims[0]);
            ws.on_fill(p, false);
        }
        assert!(ws.evictions() > 50_000, "{}", ws.evictions());
        assert!(ws.shadow_entries() <= 8, "{}", ws.shadow_entries());
        assert!(ws.shadow_order.len() <= 2 * ws.shadows + 4096 + 1);
    }

    #[test]
    fn a_prefetch_of_a_recently_evicted_page_enters_the_active_list_when_asked() {
        // The order in which pages 0 and 200 leave, evicting one page at a time.
        let order = |ws: WorkingSet| {
            let mut ws = ws;
            for p in 0..8 {
                ws.on_fill(p, false);
            }
            // Page 0 leaves and comes back by prefetch one eviction later (a refault
            // distance well under a RAM's worth); 200, never in RAM, by prefetch too.
            ws.on_evict(0);
            ws.on_fill(100, false);
            ws.on_evict(1);
            ws.on_fill(0, true);
            ws.on_fill(200, true);
            let mut left = Vec::new();
            while ws.resident() > 0 {
                let mut v = Vec::new();
                ws.victims(1, &mut v);
                ws.on_evict(v[0]);
                if v[0] == 0 || v[0] == 200 {
                    left.push(v[0]);
                }
            }
            left
        };
        // Default: both start inactive, 0 (prefetched first) leaves first.
        assert_eq!(order(WorkingSet::default()), [0, 200]);
        // Activated: 0 is on the active list; 200 has no shadow entry and is not.
        assert_eq!(
            order(WorkingSet::default().with_prefetch_activation(2.0)),
            [200, 0]
        );
    }

    #[test]
    fn probes_name_the_next_to_leave_and_a_probed_touch_keeps_the_page() {
        // Keep every page inactive after the first balance, so order is plain.
        let mut ws: WorkingSet = WorkingSet::new(100).with_probes_always(true);
        for p in 0..4 {
            ws.on_fill(p, false);
        }
        let mut probes = Vec::new();
        ws.probes(2, &mut probes);
        assert_eq!(probes, [0, 1]);
        // Already watched pages are not named again.
        probes.clear();
        ws.probes(1, &mut probes);
        assert_eq!(probes, [2]);
        // Page 0 is touched while watched: it is activated, 1 leaves first.
        ws.on_access(0, true);
        let mut victims = Vec::new();
        ws.victims(1, &mut victims);
        assert_eq!(victims, [1]);
        // Evict 1..3; page 0 (moved back to the inactive list by balance) is alone at
        // the tail. A page a probe found in use once goes back to the active list
        // without a second probe.
        for p in 1..4 {
            ws.on_evict(p);
        }
        probes.clear();
        ws.probes(4, &mut probes);
        assert!(probes.is_empty(), "{probes:?}");
        assert!(ws.is_active(0));
        // The next trip is probed again.
        victims.clear();
        ws.victims(1, &mut victims);
        assert_eq!(victims, [0]);
        probes.clear();
        ws.probes(4, &mut probes);
        assert_eq!(probes, [0]);
    }

    #[test]
    fn probes_start_when_short_refaults_are_frequent_and_stop_when_they_are_not() {
        let mut ws = WorkingSet::new(50);
        let mut victims = Vec::new();
        let mut fault = |ws: &mut WorkingSet, page: u64| {
            ws.on_access(page, false);
            victims.clear();
            ws.victims(1, &mut victims);
            ws.on_evict(victims[0]);
            ws.on_fill(page, false);
        };
        for p in 0..64 {
            ws.on_fill(p, false);
        }
        assert!(!ws.probing(), "no evidence yet");
        // A loop just larger than RAM: every fault is a short refault.
        for _ in 0..8 {
            for p in 0..72 {
                if !ws.contains(p) {
                    fault(&mut ws, p);
                }
            }
        }
        assert!(ws.probing(), "short refaults {}", ws.short_refaults);
        // First touches only (a scan of new pages): probing stops.
        for p in 1_000..1_400 {
            fault(&mut ws, p);
        }
        assert!(!ws.probing(), "short refaults {}", ws.short_refaults);
        let mut out = Vec::new();
        ws.probes(8, &mut out);
        assert!(out.is_empty());
    }
}
