//! The paging decision core shared by the live VMM and the replay simulator.
//!
//! [`PagingPolicy`] keeps the resident set within the RAM budget, asks an
//! [`Advisor`] what to evict and what to prefetch, maps the advisor's probabilities
//! to storage tiers, and counts what happened. It performs no I/O: every decision
//! comes back as an [`Action`] that the caller carries out (the live tier manager
//! with userfaultfd and io_uring, the simulator by charging modelled latencies).
//! Because both drive this one type, a replay measures the decisions the live VMM
//! would take, not those of a second copy.
//!
//! Call protocol:
//! - every observed access: [`PagingPolicy::on_access`]; a `DemandFault` outcome
//!   means the access waits until the page is filled (the first action is its `Fill`);
//! - accesses to resident pages the monitor did not see (only a simulator knows
//!   them): [`PagingPolicy::note_unobserved_hit`], which keeps prefetch accounting
//!   exact without telling the advisor;
//! - pages a dirty-log harvest found written: [`PagingPolicy::note_dirty`], which
//!   also tells the advisor that a prefetched page among them was used (the only use
//!   of a prefetched page a live VMM learns of without a fault);
//! - periodically, even when no access arrives: [`PagingPolicy::tick`];
//! - when the mechanism cannot carry out an action: [`PagingPolicy::fill_failed`] or
//!   [`PagingPolicy::evict_failed`], which put the page back where it was;
//! - pages another component wants moved (the predictor, a vCPU scheduler):
//!   [`PagingPolicy::request_moves`].
//!
//! Tier 0 (the hot set, [`hot`]) is a subset of the resident pages that eviction
//! never takes; it is re-chosen at every window end.

mod evict;
mod hot;
mod refault;
mod tiers;

pub use hot::HOT_MIN_HEAT;
pub use refault::{bucket_top, RefaultDistances, DISTANCE_BUCKETS};
pub use tiers::*;

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::access::{Access, PageNumber};
use crate::advisor::Advisor;

/// Settings of a [`PagingPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Most pages resident in RAM (tiers 0 and 1) at once.
    pub ram_budget_pages: usize,
    /// A window ends when this much time passed since it started (0: never by time).
    pub window_ns: u64,
    /// A window ends after this many observed accesses (0: never by count).
    pub window_accesses: u64,
    /// Prefetches asked of the advisor at the end of each window.
    pub prefetch_per_window: usize,
    /// Prefetches asked of the advisor right after each demand fault and each first
    /// use of a prefetched page (0: none), so fault-driven prefetchers (stride, Leap)
    /// act while the pattern is fresh.
    pub max_prefetch_per_fault: usize,
    /// Probability -> tier mapping for pages that leave RAM.
    pub thresholds: TierThresholds,
    /// Where pages the policy never saw live: `None` means they do not exist yet
    /// (first touch is zero-filled, as in a freshly booted VM); `Some(t)` means the
    /// whole memory starts in tier `t` (a VM restored from a snapshot).
    pub initial_tier: Option<TierId>,
    /// Non-resident pages re-scored per window and moved when their tier changes.
    pub retier_per_window: usize,
    /// Capacity of each tier in pages; a full tier spills to the next slower one.
    /// Entries 0 and 1 are ignored (RAM is bounded by `ram_budget_pages`).
    pub tier_capacity_pages: [u64; TIER_COUNT],
    /// Which storage tier is faster than which: probability bands and spills follow it.
    pub storage_order: StorageOrder,
    /// Most pages in tier 0, the hot set (0: none). At most half the RAM budget is
    /// used, so tier 1 keeps room for faults and prefetches.
    pub hot_capacity_pages: usize,
    /// Hot-set heats halve every this many windows: long enough for the monitor to
    /// see a hot page more than once (the live runtime observes resident pages only
    /// through sampled minor faults).
    pub hot_decay_windows: u32,
}

/// Re-tiering budget in pages re-scored per second of guest time, whatever the window:
/// the live engine's 32 per 10 ms policy window. Re-tiering moves cost a read and a
/// write each, so they stay a trickle. The replay, whose windows are 1 ms, re-tiers
/// at the same rate. At ten times that rate, live runs over six tiers slowed down by
/// up to 46% (docs/replay.md, "What this leaves out").
pub const RETIER_PAGES_PER_SECOND: u64 = 3_200;

impl PolicyConfig {
    /// `retier_per_window` for windows of `window_ns` at [`RETIER_PAGES_PER_SECOND`]
    /// (at least 1).
    pub fn retier_for_window(window_ns: u64) -> usize {
        let pages =
            (RETIER_PAGES_PER_SECOND as u128 * window_ns as u128 + 500_000_000) / 1_000_000_000;
        pages.max(1) as usize
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            ram_budget_pages: 1024,
            window_ns: 1_000_000,
            window_accesses: 0,
            prefetch_per_window: 64,
            max_prefetch_per_fault: 8,
            thresholds: TierThresholds::default(),
            initial_tier: None,
            retier_per_window: Self::retier_for_window(1_000_000),
            tier_capacity_pages: [u64::MAX; TIER_COUNT],
            storage_order: StorageOrder::default(),
            hot_capacity_pages: 0,
            hot_decay_windows: 1,
        }
    }
}

/// Why a [`PolicyConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("RAM budget must be at least one page")]
    ZeroBudget,
    #[error("tier thresholds must lie in [0, 1] and not increase from RAM to HDD (got {0:?})")]
    BadThresholds(TierThresholds),
    #[error("initial tier {0} is not a storage tier (2-5)")]
    BadInitialTier(TierId),
}

/// Why [`PagingPolicy::request_moves`] refused a request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MoveRequestError {
    #[error("target tier {0} does not exist: tiers are 0 (hot set) to 5 (networked)")]
    NoSuchTier(TierId),
}

/// What an observed access found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessOutcome {
    /// The page was resident.
    Hit,
    /// The page was resident because of a prefetch and this is its first use.
    PrefetchHit,
    /// The page was not resident; the access waits for its fill from `from`
    /// (`None`: never seen before, zero-filled).
    DemandFault { from: Option<TierId> },
}

/// A decision for the mechanism to carry out, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bring `page` into RAM now: a demand fault waits on it.
    Fill {
        page: PageNumber,
        from: Option<TierId>,
    },
    /// Bring `page` into RAM ahead of need, asynchronously, at low priority.
    Prefetch {
        page: PageNumber,
        from: Option<TierId>,
    },
    /// Drop `page` from RAM, writing it to tier `to` (only if dirty or not yet there).
    Evict { page: PageNumber, to: TierId },
    /// Move a non-resident page between storage tiers (a demotion when `to` is slower
    /// than `from` in the storage order).
    Move {
        page: PageNumber,
        from: TierId,
        to: TierId,
    },
}

/// Counters of a [`PagingPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Accesses passed to `on_access` (all seen by the advisor).
    pub observed_accesses: u64,
    /// Accesses to resident pages passed to `note_unobserved_hit`.
    pub unobserved_hits: u64,
    /// Observed accesses that found their page resident.
    pub hits: u64,
    /// Accesses that found their page not resident.
    pub demand_faults: u64,
    /// Demand faults on pages never seen before (compulsory).
    pub cold_faults: u64,
    pub prefetch_issued: u64,
    /// Prefetched pages accessed before they were evicted.
    pub prefetch_useful: u64,
    /// Prefetched pages evicted without having been accessed.
    pub prefetch_wasted: u64,
    pub evictions: u64,
    /// Storage-tier moves of non-resident pages.
    pub moves: u64,
    pub windows: u64,
    /// Victims the policy had to pick itself because the advisor named none it could use.
    pub fallback_victims: u64,
    /// Fills and prefetches the mechanism reported as failed.
    pub fill_failures: u64,
    /// Victims the advisor named that were skipped because they are in the hot set.
    pub hot_victims_skipped: u64,
    /// Pages that entered the hot set while not resident and were prefetched.
    pub hot_prefetches: u64,
    /// Pages named to [`PagingPolicy::request_moves`].
    pub requested_moves: u64,
    /// Demand faults on evicted pages by refault distance: the miss curve above the
    /// budget ([`refault`]).
    pub refault_distances: RefaultDistances,
}

#[derive(Debug, Clone, Copy)]
struct Located {
    tier: TierId,
    eviction: u64,
}

#[derive(Debug, Clone, Copy)]
struct ResidentPage {
    /// Tier the page came from, to put it back if its fill fails.
    from: Option<TierId>,
    /// Filled by a prefetch and not accessed since.
    prefetched_unused: bool,
    /// Filled by a prefetch, and the advisor has not been told whether it was used:
    /// it learns of a use only through an observed access or the dirty log, as a live
    /// VMM does (a read of a mapped page tells the host nothing), and of a waste at
    /// eviction, where a page used unseen counts as wasted to it too.
    outcome_unseen: bool,
}

/// The paging decision core; see the module documentation.
pub struct PagingPolicy {
    config: PolicyConfig,
    advisor: Box<dyn Advisor>,
    resident: FxHashMap<PageNumber, ResidentPage>,
    /// Storage tier of every non-resident page the policy has seen, with the number
    /// of the eviction that put it there (to tell stale re-tiering entries apart).
    location: FxHashMap<PageNumber, Located>,
    tier_pages: [u64; TIER_COUNT],
    /// Non-resident pages in the order they are re-scored, with their eviction number.
    retier_queue: VecDeque<(PageNumber, u64)>,
    hot: hot::HotSet,
    /// Hot pages among the victims the advisor named in the last round: the next call
    /// asks for that many more.
    hot_at_tail: usize,
    /// Free storage slots known since the engine refused an eviction for want of one
    /// (`None`: not known to be short). Each page back from storage frees one, and no
    /// more evictions are tried than that: RAM stays over budget rather than zapping
    /// pages and taking them back at every fault (each fault then cost as many zaps as
    /// RAM was over budget, and a guest touching more than the tiers hold crawled).
    storage_room: Option<u64>,
    window_start_ns: Option<u64>,
    window_accesses: u64,
    stats: PolicyStats,
    scratch: Vec<PageNumber>,
}

impl PagingPolicy {
    /// A policy over an empty RAM that asks `advisor`.
    pub fn new(config: PolicyConfig, advisor: Box<dyn Advisor>) -> Result<Self, PolicyError> {
        if config.ram_budget_pages == 0 {
            return Err(PolicyError::ZeroBudget);
        }
        if !config.thresholds.is_valid() {
            return Err(PolicyError::BadThresholds(config.thresholds));
        }
        if let Some(t) = config.initial_tier {
            if !(TIER_NVME..=TIER_NET).contains(&t) {
                return Err(PolicyError::BadInitialTier(t));
            }
        }
        let hot_capacity = if advisor.wants_hot_set() {
            config.hot_capacity_pages.min(config.ram_budget_pages / 2)
        } else {
            0
        };
        Ok(Self {
            hot: hot::HotSet::new(hot_capacity, config.hot_decay_windows),
            hot_at_tail: 0,
            storage_room: None,
            config,
            advisor,
            resident: FxHashMap::default(),
            location: FxHashMap::default(),
            tier_pages: [0; TIER_COUNT],
            retier_queue: VecDeque::new(),
            window_start_ns: None,
            window_accesses: 0,
            stats: PolicyStats::default(),
            scratch: Vec::new(),
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Changes the RAM budget while running (a memory manager sharing one budget
    /// among VMs moved this VM's share). A smaller budget evicts down to it at once,
    /// into `out`, and shrinks the hot set to at most half of it; a larger one lets
    /// the next faults and prefetches fill RAM.
    pub fn set_ram_budget(
        &mut self,
        pages: usize,
        out: &mut Vec<Action>,
    ) -> Result<(), PolicyError> {
        if pages == 0 {
            return Err(PolicyError::ZeroBudget);
        }
        self.config.ram_budget_pages = pages;
        self.advisor.set_ram_budget(pages);
        if self.advisor.wants_hot_set() {
            self.hot
                .set_capacity(self.config.hot_capacity_pages.min(pages / 2));
        }
        if self.resident.len() > pages {
            self.make_room(None, out);
        }
        Ok(())
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    pub fn advisor(&self) -> &dyn Advisor {
        self.advisor.as_ref()
    }

    pub fn advisor_mut(&mut self) -> &mut dyn Advisor {
        self.advisor.as_mut()
    }

    pub fn is_resident(&self, page: PageNumber) -> bool {
        self.resident.contains_key(&page)
    }

    /// Resident pages the advisor wants watched ([`Advisor::probes`]), at most `max`;
    /// hot-set pages (tier 0 stays mapped) and pages not resident are left out.
    pub fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        let start = out.len();
        self.advisor.probes(max, out);
        out.truncate(start + max);
        let mut i = start;
        while i < out.len() {
            if self.resident.contains_key(&out[i]) && !self.hot.contains(out[i]) {
                i += 1;
            } else {
                out.swap_remove(i);
            }
        }
    }

    pub fn resident_pages(&self) -> usize {
        self.resident.len()
    }

    /// Pages in tier 0, the hot set (all resident).
    pub fn hot_pages(&self) -> usize {
        self.hot.len()
    }

    /// Most pages the hot set holds (the configured capacity, at most half the budget).
    pub fn hot_capacity(&self) -> usize {
        self.hot.capacity()
    }

    pub fn is_hot(&self, page: PageNumber) -> bool {
        self.hot.contains(page)
    }

    /// Where `page` is: `Some(TIER_RAM)` if resident, its storage tier if evicted,
    /// `config.initial_tier` if never seen.
    pub fn tier_of(&self, page: PageNumber) -> Option<TierId> {
        if self.resident.contains_key(&page) {
            Some(TIER_RAM)
        } else {
            self.location
                .get(&page)
                .map(|l| l.tier)
                .or(self.config.initial_tier)
        }
    }

    /// Pages currently held by each tier: 0 the hot set, 1 the other resident pages,
    /// 2-5 the storage tiers.
    pub fn tier_pages(&self) -> [u64; TIER_COUNT] {
        let mut t = self.tier_pages;
        t[TIER_HOT as usize] = self.hot.len() as u64;
        t[TIER_RAM as usize] = (self.resident.len() - self.hot.len()) as u64;
        t
    }

    /// An access the monitor observed. Appends the actions it causes to `out`.
    pub fn on_access(&mut self, access: &Access, out: &mut Vec<Action>) -> AccessOutcome {
        self.stats.observed_accesses += 1;
        let page = access.page;
        self.hot.note_access(page);
        let outcome = if let Some(entry) = self.resident.get_mut(&page) {
            self.stats.hits += 1;
            let first_use = std::mem::take(&mut entry.prefetched_unused);
            if first_use {
                self.stats.prefetch_useful += 1;
            }
            // The first use the advisor sees (a live VMM: the first it can know of).
            let first_seen_use = std::mem::take(&mut entry.outcome_unseen);
            self.advisor.on_access(access, true);
            if first_seen_use {
                self.advisor.on_prefetch_outcome(page, true);
                // A prefetch proved useful: the stream goes on, as the kernel's async
                // readahead does when a PG_readahead page is hit.
                if self.config.max_prefetch_per_fault > 0 {
                    self.issue_prefetches(access.time_ns, self.config.max_prefetch_per_fault, out);
                    self.make_room(Some(page), out);
                }
            }
            if first_use {
                AccessOutcome::PrefetchHit
            } else {
                AccessOutcome::Hit
            }
        } else {
            // Every page that left RAM has a location: one without was never seen.
            match self.location.get(&page) {
                Some(l) => {
                    // Its own eviction counts: with one page more it stays.
                    let distance = self.stats.evictions.saturating_sub(l.eviction) + 1;
                    self.stats.refault_distances.record(distance);
                }
                None => self.stats.cold_faults += 1,
            }
            self.stats.demand_faults += 1;
            self.advisor.on_access(access, false);
            let from = self.make_resident(page, false);
            out.push(Action::Fill { page, from });
            if self.config.max_prefetch_per_fault > 0 {
                self.issue_prefetches(access.time_ns, self.config.max_prefetch_per_fault, out);
            }
            self.make_room(Some(page), out);
            AccessOutcome::DemandFault { from }
        };
        self.window_accesses += 1;
        self.tick(access.time_ns, out);
        outcome
    }

    /// `page` was in RAM before paging started (a live VMM's kernel image and boot data):
    /// it is resident, the advisor hears of it as a fill, and the budget is kept. Not an
    /// access: no fault is counted and nothing is prefetched.
    pub fn adopt_resident(&mut self, page: PageNumber, out: &mut Vec<Action>) {
        if self.resident.contains_key(&page) {
            return;
        }
        self.make_resident(page, false);
        self.make_room(Some(page), out);
    }

    /// An access to a resident page that the advisor did not see (a simulator knows
    /// every access; a live VMM does not). It counts in the prefetch statistics, but
    /// the advisor is not told: a live VMM would not know of it. Returns `None` (and
    /// changes nothing) if `page` is not resident: such an access is a fault and must
    /// go through [`PagingPolicy::on_access`].
    pub fn note_unobserved_hit(&mut self, page: PageNumber) -> Option<AccessOutcome> {
        let entry = self.resident.get_mut(&page)?;
        self.stats.unobserved_hits += 1;
        if std::mem::take(&mut entry.prefetched_unused) {
            self.stats.prefetch_useful += 1;
            Some(AccessOutcome::PrefetchHit)
        } else {
            Some(AccessOutcome::Hit)
        }
    }

    /// A resident page written since the last dirty-log harvest: an access the
    /// advisor did not see, as [`PagingPolicy::note_unobserved_hit`], except that a
    /// prefetched page's use is now known, so the advisor is told.
    pub fn note_dirty(&mut self, page: PageNumber) -> Option<AccessOutcome> {
        let outcome = self.note_unobserved_hit(page)?;
        self.note_use_revealed(page);
        Some(outcome)
    }

    /// Whether `page` is a prefetched page used unseen: the advisor still waits for
    /// its outcome, which a dirty-log harvest would reveal if the use was a write.
    pub fn use_unseen(&self, page: PageNumber) -> bool {
        self.resident
            .get(&page)
            .is_some_and(|e| e.outcome_unseen && !e.prefetched_unused)
    }

    /// A use of resident `page` that went unseen (and was counted then, by
    /// [`PagingPolicy::note_unobserved_hit`]) has come to light: if it was a prefetched
    /// page whose outcome the advisor waits for, it is told the page was used.
    pub fn note_use_revealed(&mut self, page: PageNumber) {
        if let Some(entry) = self.resident.get_mut(&page) {
            if std::mem::take(&mut entry.outcome_unseen) {
                self.advisor.on_prefetch_outcome(page, true);
            }
        }
    }

    /// Ends the current window if it is due at `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let start = *self.window_start_ns.get_or_insert(now_ns);
        let by_time =
            self.config.window_ns > 0 && now_ns.saturating_sub(start) >= self.config.window_ns;
        let by_count =
            self.config.window_accesses > 0 && self.window_accesses >= self.config.window_accesses;
        if by_time || by_count {
            self.end_window(now_ns, out);
        }
    }

    /// Ends the current window now: the advisor updates its model, then prefetches
    /// and re-tiering are decided.
    pub fn end_window(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.stats.windows += 1;
        self.window_start_ns = Some(now_ns);
        self.window_accesses = 0;
        self.advisor.end_window(now_ns);
        let mut entered = std::mem::take(&mut self.scratch);
        entered.clear();
        self.hot.end_window(&mut entered);
        // "Prefaulted": a page that became hot while out of RAM comes back now.
        let mut prefetched = false;
        for &page in &entered {
            if !self.resident.contains_key(&page) {
                let from = self.make_resident(page, true);
                self.stats.prefetch_issued += 1;
                self.stats.hot_prefetches += 1;
                out.push(Action::Prefetch { page, from });
                prefetched = true;
            }
        }
        self.scratch = entered;
        if self.config.prefetch_per_window > 0 {
            self.issue_prefetches(now_ns, self.config.prefetch_per_window, out);
        }
        if prefetched || self.config.prefetch_per_window > 0 {
            self.make_room(None, out);
        }
        self.retier(out);
    }

    /// Pages another component wants in tier `target`: into RAM (`target` 0 or 1:
    /// a `Prefetch` for each non-resident page; the hot set itself is still chosen
    /// from observed accesses), or, for a non-resident page, into storage tier
    /// `target` (a `Move`, if that tier has room). Resident pages are not demoted on
    /// request (eviction stays the policy's decision), and pages already in place
    /// are skipped. Returns the number of actions appended to `out`, evictions that
    /// make room for prefetched pages included.
    pub fn request_moves(
        &mut self,
        pages: &[PageNumber],
        target: TierId,
        out: &mut Vec<Action>,
    ) -> Result<usize, MoveRequestError> {
        if target as usize >= TIER_COUNT {
            return Err(MoveRequestError::NoSuchTier(target));
        }
        let before = out.len();
        self.stats.requested_moves += pages.len() as u64;
        for &page in pages {
            if self.resident.contains_key(&page) {
                continue;
            }
            if target <= TIER_RAM {
                let from = self.make_resident(page, true);
                self.stats.prefetch_issued += 1;
                out.push(Action::Prefetch { page, from });
                continue;
            }
            let Some(&Located {
                tier: from,
                eviction,
            }) = self.location.get(&page)
            else {
                // Never stored: nothing to move (it is zero-filled or in the initial tier).
                continue;
            };
            if from == target
                || self.tier_pages[target as usize]
                    >= self.config.tier_capacity_pages[target as usize]
            {
                continue;
            }
            self.tier_pages[from as usize] -= 1;
            self.tier_pages[target as usize] += 1;
            // The same eviction number keeps its re-tiering entry valid.
            self.location.insert(
                page,
                Located {
                    tier: target,
                    eviction,
                },
            );
            self.stats.moves += 1;
            out.push(Action::Move {
                page,
                from,
                to: target,
            });
        }
        if target <= TIER_RAM {
            self.make_room(None, out);
        }
        Ok(out.len() - before)
    }

    /// The fill or prefetch of `page` could not be carried out: it stays in its tier.
    pub fn fill_failed(&mut self, page: PageNumber) {
        if let Some(entry) = self.resident.remove(&page) {
            self.hot.remove(page);
            self.stats.fill_failures += 1;
            if let Some(t) = entry.from {
                self.put_location(page, t);
            }
            self.advisor.on_evict(page);
        }
    }

    /// The eviction of `page` was refused because no storage tier had a free slot: it
    /// stays in RAM, and no eviction is tried until a page comes back from storage.
    pub fn evict_refused_storage_full(&mut self, page: PageNumber) {
        self.evict_failed(page);
        self.storage_room = Some(0);
    }

    /// Whether evictions wait for room in the storage tiers
    /// ([`PagingPolicy::evict_refused_storage_full`]).
    pub fn storage_full(&self) -> bool {
        self.storage_room == Some(0)
    }

    /// The eviction of `page` could not be carried out: it stays in RAM (the budget
    /// is enforced again at the next fault or window).
    pub fn evict_failed(&mut self, page: PageNumber) {
        if self.resident.contains_key(&page) {
            return;
        }
        self.make_resident(page, false);
    }

    /// Counts `page` as resident again, brought in from its storage tier (returned;
    /// the initial tier for a page never stored), and tells the advisor of the fill.
    fn make_resident(&mut self, page: PageNumber, prefetched: bool) -> Option<TierId> {
        let from = self.take_location(page);
        if let (Some(_), Some(room)) = (from, self.storage_room.as_mut()) {
            // Its slot can take an evicted page now.
            *room += 1;
        }
        self.resident.insert(
            page,
            ResidentPage {
                from,
                prefetched_unused: prefetched,
                outcome_unseen: prefetched,
            },
        );
        self.advisor.on_fill(page, prefetched);
        from
    }

    fn take_location(&mut self, page: PageNumber) -> Option<TierId> {
        match self.location.remove(&page) {
            Some(l) => {
                self.tier_pages[l.tier as usize] -= 1;
                Some(l.tier)
            }
            None => self.config.initial_tier,
        }
    }

    fn put_location(&mut self, page: PageNumber, tier: TierId) {
        let eviction = self.stats.evictions;
        self.location.insert(page, Located { tier, eviction });
        self.tier_pages[tier as usize] += 1;
    }

    fn issue_prefetches(&mut self, now_ns: u64, max: usize, out: &mut Vec<Action>) {
        let mut wanted = std::mem::take(&mut self.scratch);
        wanted.clear();
        self.advisor.prefetch(now_ns, max, &mut wanted);
        for &page in wanted.iter().take(max) {
            if self.resident.contains_key(&page) {
                continue;
            }
            let from = self.make_resident(page, true);
            self.stats.prefetch_issued += 1;
            out.push(Action::Prefetch { page, from });
        }
        self.scratch = wanted;
    }
}

#[cfg(test)]
mod tests;
