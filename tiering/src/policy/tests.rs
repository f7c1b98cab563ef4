use std::collections::VecDeque;

use super::*;
use crate::access::{AccessOp, AccessSource, PageKind};

/// FIFO eviction, prefetches a fixed list, a fixed probability for every page.
struct Fifo {
    order: VecDeque<PageNumber>,
    to_prefetch: Vec<PageNumber>,
    p: f32,
    bogus_victims: bool,
}

impl Fifo {
    fn new(p: f32) -> Self {
        Self {
            order: VecDeque::new(),
            to_prefetch: Vec::new(),
            p,
            bogus_victims: false,
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

#[test]
fn low_probability_pages_go_to_slow_tiers_and_full_tiers_spill() {
    let mut cfg = config(1);
    cfg.tier_capacity_pages[TIER_HDD as usize] = 1;
    let mut policy = PagingPolicy::new(cfg, Box::new(Fifo::new(0.02))).unwrap();
    let mut out = Vec::new();
    for page in 1..=3 {
        policy.on_access(&access(page, page), &mut out);
    }
    assert_eq!(policy.tier_of(1), Some(TIER_HDD));
    assert_eq!(policy.tier_of(2), Some(TIER_NET));
    assert_eq!(policy.tier_pages()[TIER_HDD as usize], 1);
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
fn cooled_pages_are_moved_down_by_retiering() {
    struct Cooling(Fifo, f32);
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
            self.1 /= 10.0;
        }
    }
    let cfg = PolicyConfig {
        window_accesses: 1,
        ..config(1)
    };
    let mut policy = PagingPolicy::new(cfg, Box::new(Cooling(Fifo::new(0.0), 0.3))).unwrap();
    let mut out = Vec::new();
    policy.on_access(&access(0, 1), &mut out);
    // Each access ends a window: 0.3 -> 0.03 (HDD) at eviction -> 0.003 (network).
    policy.on_access(&access(1, 2), &mut out);
    assert!(out.contains(&Action::Evict {
        page: 1,
        to: TIER_HDD
    }));
    assert!(out.contains(&Action::Move {
        page: 1,
        from: TIER_HDD,
        to: TIER_NET
    }));
    assert_eq!(policy.tier_of(1), Some(TIER_NET));
}
