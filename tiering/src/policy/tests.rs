use std::collections::VecDeque;

use super::*;
use crate::access::{AccessOp, AccessSource, PageKind};

/// FIFO eviction, prefetches a fixed list, a fixed probability for every page.
struct Fifo {
    order: VecDeque<PageNumber>,
    to_prefetch: Vec<PageNumber>,
    p: f32,
    bogus_victims: bool,
    /// Declines the hot set ([`Advisor::wants_hot_set`]).
    no_hot_set: bool,
    /// Prefetch outcomes the advisor was told, in order.
    outcomes: std::sync::Arc<std::sync::Mutex<Vec<(PageNumber, bool)>>>,
}

impl Fifo {
    fn new(p: f32) -> Self {
        Self {
            order: VecDeque::new(),
            to_prefetch: Vec::new(),
            p,
            bogus_victims: false,
            no_hot_set: false,
            outcomes: Default::default(),
        }
    }
}

impl Advisor for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }
    fn on_access(&mut self, _: &Access, _: bool) {}
    fn on_fill(&mut self, page: PageNumber, _: bool) {
        self.order.push_back(page);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.order.retain(|&p| p != page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        if self.bogus_victims {
            out.push(u64::MAX);
            return;
        }
        out.extend(self.order.iter().take(n));
    }
    fn prefetch(&mut self, _: u64, max: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.to_prefetch.drain(..).take(max));
    }
    fn probability(&self, _: PageNumber) -> f32 {
        self.p
    }
    fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
        self.outcomes.lock().unwrap().push((page, used));
    }
    fn wants_hot_set(&self) -> bool {
        !self.no_hot_set
    }
}

fn access(t: u64, page: PageNumber) -> Access {
    Access {
        time_ns: t,
        page,
        vcpu: 0,
        op: AccessOp::Read,
        kind: PageKind::Data,
        source: AccessSource::Full,
    }
}

fn config(budget: usize) -> PolicyConfig {
    PolicyConfig {
        ram_budget_pages: budget,
        window_ns: 0,
        window_accesses: 0,
        prefetch_per_window: 0,
        max_prefetch_per_fault: 0,
        ..PolicyConfig::default()
    }
}

#[test]
fn budget_is_enforced_through_victims() {
    let mut policy = PagingPolicy::new(config(2), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    for (t, page) in [1, 2, 1, 3].into_iter().enumerate() {
        policy.on_access(&access(t as u64, page), &mut out);
    }
    assert_eq!(
        out,
        vec![
            Action::Fill {
                page: 1,
                from: None
            },
            Action::Fill {
                page: 2,
                from: None
            },
            Action::Fill {
                page: 3,
                from: None
            },
            Action::Evict {
                page: 1,
                to: TIER_NVME
            },
        ]
    );
    assert_eq!(policy.resident_pages(), 2);
    assert_eq!(policy.tier_of(1), Some(TIER_NVME));
    let outcome = policy.on_access(&access(9, 1), &mut out);
    assert_eq!(
        outcome,
        AccessOutcome::DemandFault {
            from: Some(TIER_NVME)
        }
    );
    let s = policy.stats();
    assert_eq!(
        (s.demand_faults, s.cold_faults, s.hits, s.evictions),
        (4, 3, 1, 2)
    );
}

#[test]
fn prefetched_page_counts_useful_only_if_used_before_eviction() {
    let mut advisor = Fifo::new(0.3);
    advisor.to_prefetch = vec![10, 11];
    let cfg = PolicyConfig {
        max_prefetch_per_fault: 2,
        ..config(3)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    policy.on_access(&access(0, 1), &mut out);
    assert!(out.contains(&Action::Prefetch {
        page: 10,
        from: None
    }));
    assert_eq!(
        policy.on_access(&access(1, 10), &mut out),
        AccessOutcome::PrefetchHit
    );
    assert_eq!(
        policy.on_access(&access(2, 10), &mut out),
        AccessOutcome::Hit
    );
    // Two faults push out 1 then 10 then 11 (FIFO): 11 was never used.
    policy.on_access(&access(3, 2), &mut out);
    policy.on_access(&access(4, 3), &mut out);
    policy.on_access(&access(5, 4), &mut out);
    let s = policy.stats();
    assert_eq!(
        (s.prefetch_issued, s.prefetch_useful, s.prefetch_wasted),
        (2, 1, 1)
    );
}

#[test]
fn unobserved_hits_keep_accounting_without_the_advisor() {
    let mut advisor = Fifo::new(0.3);
    advisor.to_prefetch = vec![5];
    let cfg = PolicyConfig {
        max_prefetch_per_fault: 1,
        ..config(4)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    policy.on_access(&access(0, 1), &mut out);
    assert_eq!(
        policy.note_unobserved_hit(5),
        Some(AccessOutcome::PrefetchHit)
    );
    assert_eq!(policy.note_unobserved_hit(99), None);
    assert_eq!(policy.stats().prefetch_useful, 1);
    assert_eq!(policy.stats().observed_accesses, 1);
}

/// What the advisor hears of its prefetches is what a live VMM can know: a use it did
/// not see reaches it only through the dirty log (a write) or a later observed access;
/// a page used unseen and evicted counts as wasted to the advisor, used in the stats.
#[test]
fn the_advisor_hears_only_of_uses_a_live_vmm_can_see() {
    let mut advisor = Fifo::new(0.3);
    advisor.to_prefetch = vec![5, 6, 7, 8];
    let told = advisor.outcomes.clone();
    let cfg = PolicyConfig {
        max_prefetch_per_fault: 4,
        ..config(5)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    policy.on_access(&access(0, 1), &mut out);
    // 5: read unseen; 6: read unseen, then written (the dirty log says so);
    // 7: read unseen, then seen by a sample; 8: never used.
    for page in [5, 6, 7] {
        assert_eq!(
            policy.note_unobserved_hit(page),
            Some(AccessOutcome::PrefetchHit)
        );
    }
    assert!(policy.use_unseen(5) && policy.use_unseen(6) && policy.use_unseen(7));
    assert!(!policy.use_unseen(8), "8 is not used yet");
    assert!(told.lock().unwrap().is_empty(), "no use was seen yet");
    assert_eq!(policy.note_dirty(6), Some(AccessOutcome::Hit));
    let sampled = Access {
        source: AccessSource::SampledMinor,
        ..access(1, 7)
    };
    assert_eq!(policy.on_access(&sampled, &mut out), AccessOutcome::Hit);
    assert_eq!(*told.lock().unwrap(), vec![(6, true), (7, true)]);
    // Five new pages push out 1 and the four prefetched pages (FIFO).
    for (t, page) in (10..15).enumerate() {
        policy.on_access(&access(2 + t as u64, page), &mut out);
    }
    assert_eq!(
        *told.lock().unwrap(),
        vec![(6, true), (7, true), (5, false), (8, false)]
    );
    let s = policy.stats();
    assert_eq!(
        (s.prefetch_issued, s.prefetch_useful, s.prefetch_wasted),
        (4, 3, 1)
    );
}

/// `config(budget)` with no room in NVMe and SSD, so probabilities decide.
fn fast_tiers_full(budget: usize) -> PolicyConfig {
    let mut cfg = config(budget);
    cfg.tier_capacity_pages[TIER_NVME as usize] = 0;
    cfg.tier_capacity_pages[TIER_SSD as usize] = 0;
    cfg
}

/// A policy over `cfg` whose advisor scores every page 0.02 ("very low"), after
/// pages 1, 2 and 3 were touched in turn: with a budget of one page, 1 and 2 left RAM.
fn very_low_pages_evicted(cfg: PolicyConfig) -> PagingPolicy {
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.02))).unwrap();
    let mut out = Vec::new();
    for page in 1..=3 {
        policy.on_access(&access(page, page), &mut out);
    }
    policy
}

#[test]
fn low_probability_pages_go_to_slow_tiers_and_full_tiers_spill() {
    let mut cfg = fast_tiers_full(1);
    cfg.tier_capacity_pages[TIER_HDD as usize] = 1;
    let policy = very_low_pages_evicted(cfg);
    assert_eq!(policy.tier_of(1), Some(TIER_HDD));
    assert_eq!(policy.tier_of(2), Some(TIER_NET));
    assert_eq!(policy.tier_pages()[TIER_HDD as usize], 1);
}

#[test]
fn bands_and_spills_follow_the_storage_order() {
    // Tier 5 faster than tier 4 here: "very low" now means tier 5, and a full tier 5
    // spills to tier 4, the slowest.
    let mut cfg = fast_tiers_full(1);
    cfg.storage_order = StorageOrder::new([2, 3, 5, 4]).unwrap();
    cfg.tier_capacity_pages[TIER_NET as usize] = 1;
    let policy = very_low_pages_evicted(cfg);
    assert_eq!(policy.tier_of(1), Some(TIER_NET));
    assert_eq!(policy.tier_of(2), Some(TIER_HDD));
    assert_eq!(policy.tier_pages()[TIER_NET as usize], 1);
}

#[test]
fn bad_victims_fall_back_and_keep_the_budget() {
    let mut advisor = Fifo::new(0.3);
    advisor.bogus_victims = true;
    let mut policy = PagingPolicy::new(config(2), Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    for page in 0..10 {
        policy.on_access(&access(page, page), &mut out);
        assert!(policy.resident_pages() <= 2);
        assert!(
            policy.is_resident(page),
            "the faulting page is never its own victim"
        );
    }
    assert_eq!(policy.stats().fallback_victims, 8);
}

#[test]
fn windows_end_by_count_and_prefetch() {
    let mut advisor = Fifo::new(0.3);
    advisor.to_prefetch = vec![7];
    let cfg = PolicyConfig {
        window_accesses: 2,
        prefetch_per_window: 4,
        ..config(8)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    policy.on_access(&access(0, 1), &mut out);
    assert_eq!(policy.stats().windows, 0);
    policy.on_access(&access(1, 1), &mut out);
    assert_eq!(policy.stats().windows, 1);
    assert!(policy.is_resident(7));
}

#[test]
fn failed_actions_put_pages_back() {
    let cfg = PolicyConfig {
        initial_tier: Some(TIER_SSD),
        ..config(1)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    let o = policy.on_access(&access(0, 1), &mut out);
    assert_eq!(
        o,
        AccessOutcome::DemandFault {
            from: Some(TIER_SSD)
        }
    );
    policy.fill_failed(1);
    assert_eq!(policy.tier_of(1), Some(TIER_SSD));
    policy.on_access(&access(1, 2), &mut out);
    policy.on_access(&access(2, 3), &mut out);
    assert_eq!(policy.tier_of(2), Some(TIER_NVME));
    policy.evict_failed(2);
    assert!(policy.is_resident(2));
}

/// Pages present before paging starts are resident without an access: no fault is
/// counted and the advisor is not asked to prefetch; the budget still holds.
#[test]
fn adopted_pages_are_resident_without_a_fault_or_a_prefetch() {
    let cfg = PolicyConfig {
        max_prefetch_per_fault: 8,
        ..config(2)
    };
    let mut fifo = Fifo::new(0.3);
    fifo.to_prefetch = vec![10, 11, 12];
    let mut policy = PagingPolicy::new(cfg, Box::new(fifo)).unwrap();
    let mut out = Vec::new();
    for page in [1, 2, 3] {
        policy.adopt_resident(page, &mut out);
    }
    assert_eq!(policy.stats().demand_faults, 0);
    assert_eq!(policy.stats().prefetch_issued, 0);
    assert!(!policy.is_resident(1) && policy.is_resident(2) && policy.is_resident(3));
    assert_eq!(
        out,
        [Action::Evict {
            page: 1,
            to: TIER_NVME
        }]
    );
}

/// Evictions refused for want of storage room are not retried at every fault: only
/// as many as pages came back from storage since (each frees a slot).
#[test]
fn evictions_wait_for_storage_room_after_a_refusal() {
    let mut policy = PagingPolicy::new(config(2), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    let mut fault = |policy: &mut PagingPolicy, t: u64, page: PageNumber| {
        out.clear();
        policy.on_access(&access(t, page), &mut out);
        out.iter()
            .filter_map(|a| match a {
                Action::Evict { page, .. } => Some(*page),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for page in [1, 2] {
        assert!(fault(&mut policy, page, page).is_empty());
    }
    assert_eq!(fault(&mut policy, 3, 3), [1], "1 goes to storage");
    assert_eq!(fault(&mut policy, 4, 4), [2]);
    // The engine found no slot for page 2: it stays, and RAM is over budget.
    policy.evict_refused_storage_full(2);
    assert!(policy.storage_full() && policy.is_resident(2));
    assert!(fault(&mut policy, 5, 5).is_empty());
    assert!(fault(&mut policy, 6, 6).is_empty());
    assert_eq!(policy.resident_pages(), 5);
    // Page 1 comes back from storage: its slot takes one page, no more.
    assert_eq!(fault(&mut policy, 7, 1), [3]);
    assert!(policy.storage_full());
    assert_eq!(policy.resident_pages(), 5);
}

#[test]
fn bad_configs_are_refused() {
    let fifo = || Box::new(Fifo::new(0.0));
    assert_eq!(
        PagingPolicy::new(config(0), fifo()).err(),
        Some(PolicyError::ZeroBudget)
    );
    let cfg = PolicyConfig {
        initial_tier: Some(1),
        ..config(1)
    };
    assert_eq!(
        PagingPolicy::new(cfg, fifo()).err(),
        Some(PolicyError::BadInitialTier(1))
    );
}

#[test]
fn cooled_pages_are_moved_down_by_retiering_when_their_tier_is_short_of_room() {
    /// Probability 0.03 (HDD) for the first windows, then 0.003 (network).
    struct Cooling(Fifo, f32, u32);
    impl Advisor for Cooling {
        fn name(&self) -> &str {
            "cooling"
        }
        fn on_access(&mut self, a: &Access, r: bool) {
            self.0.on_access(a, r)
        }
        fn on_fill(&mut self, p: PageNumber, f: bool) {
            self.0.on_fill(p, f)
        }
        fn on_evict(&mut self, p: PageNumber) {
            self.0.on_evict(p)
        }
        fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
            self.0.victims(n, out)
        }
        fn prefetch(&mut self, t: u64, m: usize, out: &mut Vec<PageNumber>) {
            self.0.prefetch(t, m, out)
        }
        fn probability(&self, _: PageNumber) -> f32 {
            self.1
        }
        fn end_window(&mut self, _: u64) {
            if self.2 == 0 {
                self.1 = 0.003;
            } else {
                self.2 -= 1;
            }
        }
    }
    let mut cfg = PolicyConfig {
        window_accesses: 1,
        ..fast_tiers_full(1)
    };
    cfg.tier_capacity_pages[TIER_HDD as usize] = 4;
    let mut policy = PagingPolicy::new(cfg, Box::new(Cooling(Fifo::new(0.0), 0.03, 5))).unwrap();
    let mut out = Vec::new();
    // Pages 1-4 are evicted to HDD (0.03), which is then full.
    for page in 1..=5 {
        policy.on_access(&access(page, page), &mut out);
    }
    assert_eq!(policy.tier_pages()[TIER_HDD as usize], 4);
    assert!(!out.iter().any(|a| matches!(a, Action::Move { .. })));
    // They cool down to 0.003: re-tiering sinks them to the network tier until HDD
    // has spare room again (more than a quarter free), and no further.
    out.clear();
    for page in 6..=9 {
        policy.on_access(&access(page % 2 + 100, page), &mut out);
    }
    let moved = out
        .iter()
        .filter(
            |a| matches!(a, Action::Move { from, to, .. } if *from == TIER_HDD && *to == TIER_NET),
        )
        .count();
    assert!(moved >= 1, "{out:?}");
    let hdd = policy.tier_pages()[TIER_HDD as usize];
    assert!((2..4).contains(&hdd), "{hdd} pages left in HDD");
}

#[test]
fn spare_room_in_a_faster_tier_takes_pages_whatever_their_probability() {
    // Unbounded NVMe: a page the advisor expects never again still goes there.
    let mut policy = PagingPolicy::new(config(1), Box::new(Fifo::new(0.001))).unwrap();
    let mut out = Vec::new();
    for page in 1..=3 {
        policy.on_access(&access(page, page), &mut out);
    }
    assert_eq!(policy.tier_of(1), Some(TIER_NVME));
    assert_eq!(policy.tier_of(2), Some(TIER_NVME));
    // NVMe of 8 pages: it takes pages while more than a quarter of it is free (6 of
    // 8), then only pages that want it; the rest go where their probability says.
    let mut cfg = config(1);
    cfg.tier_capacity_pages[TIER_NVME as usize] = 8;
    cfg.tier_capacity_pages[TIER_SSD as usize] = 0;
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.02))).unwrap();
    for page in 1..=10 {
        policy.on_access(&access(page, page), &mut out);
    }
    let t = policy.tier_pages();
    assert_eq!(t[TIER_NVME as usize], 6, "{t:?}");
    assert_eq!(t[TIER_HDD as usize], 3, "{t:?}");
}

fn hot_config(budget: usize, hot: usize) -> PolicyConfig {
    PolicyConfig {
        hot_capacity_pages: hot,
        ..config(budget)
    }
}

/// Accesses `page` `n` times.
fn touch(policy: &mut PagingPolicy, page: PageNumber, n: u64, out: &mut Vec<Action>) {
    for i in 0..n {
        policy.on_access(&access(i, page), out);
    }
}

/// A FIFO policy with a budget of 10 whose hot set is pages 1-4, and the actions so far.
fn fifo_with_hot_pages_1_to_4() -> (PagingPolicy, Vec<Action>) {
    let mut policy = PagingPolicy::new(hot_config(10, 4), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    for page in 1..=4 {
        touch(&mut policy, page, 3, &mut out);
    }
    policy.end_window(0, &mut out);
    assert_eq!(policy.hot_pages(), 4);
    (policy, out)
}

#[test]
fn victims_behind_hot_pages_come_in_the_advisor_s_order() {
    // FIFO names the hot pages 1-4 first on every call. The policy must ask past
    // them and evict the oldest other page each time, never an arbitrary one (until
    // session 15 it took the fallback's pick whenever the victims it asked for were
    // all hot: live, most evictions).
    let (mut policy, mut out) = fifo_with_hot_pages_1_to_4();
    out.clear();
    for (i, page) in (100..200).enumerate() {
        policy.on_access(&access(i as u64, page), &mut out);
    }
    let evicted = evicted_pages(&out);
    // Pages 100-105 fill the six other slots; from then on each fault evicts the
    // oldest of them.
    let want: Vec<PageNumber> = (100..194).collect();
    assert_eq!(evicted, want);
    assert_eq!(policy.stats().fallback_victims, 0);
}

#[test]
fn an_advisor_that_declines_the_hot_set_gets_none() {
    let mut advisor = Fifo::new(0.3);
    advisor.no_hot_set = true;
    let mut policy = PagingPolicy::new(hot_config(10, 4), Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    for page in 1..=4 {
        touch(&mut policy, page, 3, &mut out);
    }
    policy.end_window(0, &mut out);
    assert_eq!(policy.hot_capacity(), 0);
    assert_eq!(policy.hot_pages(), 0);
    // Every page is the advisor's to evict: FIFO's first victims are pages 1-4.
    for (i, page) in (100..110).enumerate() {
        policy.on_access(&access(i as u64, page), &mut out);
    }
    assert!((1..=4).all(|p| !policy.is_resident(p)));
}

#[test]
fn hot_pages_are_never_evicted_under_pressure() {
    let (mut policy, mut out) = fifo_with_hot_pages_1_to_4();
    // A stream of 200 cold pages through a budget of 10; FIFO names 1-4 first.
    for (i, page) in (100..300).enumerate() {
        policy.on_access(&access(i as u64, page), &mut out);
        if i % 50 == 49 {
            // The hot pages stay hot while they keep being accessed.
            for hot in 1..=4 {
                touch(&mut policy, hot, 2, &mut out);
            }
            policy.end_window(i as u64, &mut out);
        }
        assert!(policy.resident_pages() <= 10);
        for hot in 1..=4 {
            assert!(policy.is_resident(hot) && policy.is_hot(hot), "page {hot}");
        }
    }
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::Evict { page, .. } if *page <= 4)));
    assert!(policy.stats().hot_victims_skipped > 0);
    assert_eq!(policy.tier_pages()[TIER_HOT as usize], 4);
    assert_eq!(policy.tier_pages()[TIER_RAM as usize], 6);
}

#[test]
fn hot_set_respects_its_capacity_and_picks_the_hottest() {
    let mut policy = PagingPolicy::new(hot_config(100, 3), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    for page in 0..10 {
        touch(&mut policy, page, page + 2, &mut out);
    }
    policy.end_window(0, &mut out);
    assert_eq!(policy.hot_pages(), 3);
    assert!((7..10).all(|p| policy.is_hot(p)));
    // Capacity is capped at half the RAM budget so faults still find room.
    let policy = PagingPolicy::new(hot_config(4, 10), Box::new(Fifo::new(0.3))).unwrap();
    assert_eq!(policy.hot_capacity(), 2);
    // No tier 0: no hot set.
    let mut policy = PagingPolicy::new(config(10), Box::new(Fifo::new(0.3))).unwrap();
    touch(&mut policy, 1, 5, &mut out);
    policy.end_window(0, &mut out);
    assert_eq!(policy.hot_pages(), 0);
}

#[test]
fn cooled_pages_leave_the_hot_set_and_become_evictable() {
    let mut policy = PagingPolicy::new(hot_config(4, 2), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    touch(&mut policy, 1, 4, &mut out);
    policy.end_window(0, &mut out);
    assert!(policy.is_hot(1));
    // Heat halves each window without accesses: 4 -> 2 -> 1, below HOT_MIN_HEAT.
    let mut windows = 0;
    while policy.is_hot(1) {
        policy.end_window(windows, &mut out);
        windows += 1;
        assert!(windows <= 3, "page 1 never cooled");
    }
    assert_eq!(policy.hot_pages(), 0);
    for page in 10..20 {
        policy.on_access(&access(page, page), &mut out);
    }
    assert!(
        !policy.is_resident(1),
        "a cooled page is evicted like any other"
    );
}

#[test]
fn a_page_that_turns_hot_out_of_ram_is_prefetched() {
    let mut policy = PagingPolicy::new(hot_config(2, 1), Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    touch(&mut policy, 1, 3, &mut out);
    for page in 2..=4 {
        policy.on_access(&access(page, page), &mut out);
    }
    assert!(!policy.is_resident(1));
    out.clear();
    policy.end_window(10, &mut out);
    assert_eq!(
        out[0],
        Action::Prefetch {
            page: 1,
            from: Some(TIER_NVME)
        }
    );
    assert!(policy.is_resident(1) && policy.is_hot(1));
    assert!(policy.resident_pages() <= 2);
    assert_eq!(policy.stats().hot_prefetches, 1);
}

#[test]
fn requested_moves_prefetch_or_move_and_keep_the_books() {
    let mut cfg = config(2);
    cfg.tier_capacity_pages[TIER_SSD as usize] = 1;
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    for page in 1..=4 {
        policy.on_access(&access(page, page), &mut out);
    }
    // 1 and 2 were evicted to NVMe; 3 and 4 are resident.
    out.clear();
    let n = policy.request_moves(&[1, 3], TIER_RAM, &mut out).unwrap();
    assert_eq!(
        out[0],
        Action::Prefetch {
            page: 1,
            from: Some(TIER_NVME)
        }
    );
    assert_eq!(n, out.len());
    assert!(out
        .iter()
        .all(|a| !matches!(a, Action::Prefetch { page: 3, .. })));
    assert!(policy.is_resident(1) && policy.resident_pages() <= 2);
    // Storage targets move non-resident pages, within the target's capacity.
    out.clear();
    let evicted: Vec<_> = (2..=4).filter(|&p| !policy.is_resident(p)).collect();
    assert_eq!(evicted.len(), 2);
    let n = policy.request_moves(&evicted, TIER_SSD, &mut out).unwrap();
    assert_eq!(n, 1, "tier 3 holds one page: {out:?}");
    assert_eq!(policy.tier_of(evicted[0]), Some(TIER_SSD));
    assert_eq!(policy.tier_of(evicted[1]), Some(TIER_NVME));
    assert_eq!(policy.tier_pages()[TIER_SSD as usize], 1);
    // A page that then faults comes from where it was moved.
    assert_eq!(
        policy.on_access(&access(9, evicted[0]), &mut out),
        AccessOutcome::DemandFault {
            from: Some(TIER_SSD)
        }
    );
    assert_eq!(
        policy.request_moves(&[1], 6, &mut out),
        Err(MoveRequestError::NoSuchTier(6))
    );
}

#[test]
fn a_longer_decay_period_keeps_pages_hot_longer() {
    let cfg = PolicyConfig {
        hot_decay_windows: 3,
        ..hot_config(4, 2)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.3))).unwrap();
    let mut out = Vec::new();
    touch(&mut policy, 1, 2, &mut out);
    // Heat 2 lasts until the third window end halves it.
    for w in 0..3 {
        policy.end_window(w, &mut out);
        assert!(policy.is_hot(1), "window {w}");
    }
    policy.end_window(3, &mut out);
    assert!(!policy.is_hot(1));
}

#[test]
fn retiering_runs_at_one_rate_whatever_the_window() {
    // The live engine's 10 ms windows and the replay's 1 ms ones re-score pages at
    // the same rate per second of guest time.
    assert_eq!(PolicyConfig::retier_for_window(10_000_000), 32);
    assert_eq!(PolicyConfig::retier_for_window(1_000_000), 3);
    assert_eq!(PolicyConfig::default().retier_per_window, 3);
    assert_eq!(
        PolicyConfig::retier_for_window(1_000),
        1,
        "at least one page"
    );
}

#[test]
fn a_smaller_budget_evicts_at_once_and_shrinks_the_hot_set() {
    let (mut policy, mut out) = fifo_with_hot_pages_1_to_4();
    for page in 5..=10 {
        policy.on_access(&access(0, page), &mut out);
    }
    assert_eq!(policy.resident_pages(), 10);
    out.clear();
    assert_eq!(
        policy.set_ram_budget(0, &mut out),
        Err(PolicyError::ZeroBudget)
    );
    // A budget of 4: the hot set may hold 2 (half), so two hot pages become
    // ordinary; six pages leave RAM, none of them one of the two still hot.
    policy.set_ram_budget(4, &mut out).unwrap();
    assert_eq!(policy.hot_capacity(), 2);
    assert_eq!(policy.hot_pages(), 2);
    assert_eq!(policy.resident_pages(), 4);
    let evicted = evicted_pages(&out);
    assert_eq!(evicted.len(), 6, "{out:?}");
    assert!(evicted.iter().all(|&p| !policy.is_hot(p)), "{out:?}");
    // Growing back evicts nothing and restores the hot set's capacity.
    out.clear();
    policy.set_ram_budget(10, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(policy.hot_capacity(), 4);
    assert_eq!(policy.config().ram_budget_pages, 10);
}

/// The pages `out` evicts, in order.
fn evicted_pages(out: &[Action]) -> Vec<PageNumber> {
    out.iter()
        .filter_map(|a| match a {
            Action::Evict { page, .. } => Some(*page),
            _ => None,
        })
        .collect()
}

/// A loop over `n` pages with a budget of `b` under FIFO: every page is evicted `b`
/// fills after it came in, and next touched `n - b` evictions after its own, so every
/// refault has distance `n - b` (its own eviction counted), and a budget that much
/// larger would have held the loop.
#[test]
fn a_loop_refaults_at_the_distance_the_missing_pages_say() {
    let (n, b) = (100u64, 60usize);
    let mut advisor = Fifo::new(0.3);
    advisor.no_hot_set = true;
    let mut policy = PagingPolicy::new(config(b), Box::new(advisor)).unwrap();
    let mut out = Vec::new();
    for t in 0..5 * n {
        policy.on_access(&access(t, t % n), &mut out);
    }
    let s = policy.stats();
    assert_eq!(s.cold_faults, n);
    let refaults = s.demand_faults - s.cold_faults;
    assert_eq!(refaults, 4 * n, "a loop larger than RAM misses every time");
    assert_eq!(s.refault_distances.total(), refaults);
    // 40 falls in bucket 6 (32-63).
    let d = n - b as u64;
    assert_eq!(s.refault_distances.buckets()[6], refaults, "{d}");
    assert_eq!(s.refault_distances.within(63), refaults);
    assert_eq!(s.refault_distances.within(31), 0);
}
