use std::sync::Arc;

use tiering::access::{Access, AccessOp, AccessSource, PageKind, PageNumber};
use tiering::trace::Clock;

use super::*;

fn trace(pages: impl IntoIterator<Item = PageNumber>, step_ns: u64) -> TraceInput {
    let accesses: Vec<Access> = pages
        .into_iter()
        .enumerate()
        .map(|(i, page)| Access {
            time_ns: i as u64 * step_ns,
            page,
            vcpu: 0,
            op: if i % 3 == 0 {
                AccessOp::Write
            } else {
                AccessOp::Read
            },
            kind: PageKind::Data,
            source: AccessSource::Full,
        })
        .collect();
    TraceInput::Memory {
        accesses: accesses.into(),
        clock: Clock::Nanoseconds,
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn by_name<'a>(reports: &'a [AdvisorReport], name: &str) -> &'a AdvisorReport {
    reports.iter().find(|r| r.advisor == name).unwrap()
}

#[test]
fn accuracy_and_coverage_arithmetic() {
    // A scan repeated three times over 4x the RAM budget.
    let t = trace((0..3).flat_map(|_| 0..400u64), 1000);
    let cfg = ReplayConfig {
        ram_fraction: 0.25,
        visibility: Visibility::Full,
        ..ReplayConfig::default()
    };
    let reports = replay_all(&t, &names(&["stride", "lru", "none"]), &cfg, None).unwrap();
    let none = by_name(&reports, "none");
    assert_eq!(
        none.demand_faults, 1200,
        "a looping scan larger than RAM always faults"
    );
    assert_eq!(none.coverage, Some(0.0));
    assert_eq!(none.ram_budget_pages, 100);
    for r in &reports {
        let expect_acc = if r.prefetch_issued == 0 {
            0.0
        } else {
            r.prefetch_useful as f64 / r.prefetch_issued as f64
        };
        assert_eq!(r.accuracy, expect_acc);
        let expect_cov = (1200.0 - r.demand_faults as f64) / 1200.0;
        assert_eq!(r.coverage, Some(expect_cov));
        assert!(r.prefetch_useful + r.prefetch_wasted <= r.prefetch_issued);
    }
    let stride = by_name(&reports, "stride");
    assert!(
        stride.coverage.unwrap() > 0.8,
        "stride covered {:?}",
        stride.coverage
    );
}

#[test]
fn coverage_reference_is_run_even_when_not_requested() {
    let t = trace((0..2).flat_map(|_| 0..200u64), 1000);
    let cfg = ReplayConfig {
        visibility: Visibility::Full,
        ..ReplayConfig::default()
    };
    let reports = replay_all(&t, &names(&["oracle"]), &cfg, None).unwrap();
    assert_eq!(reports.len(), 1);
    let oracle = &reports[0];
    assert!(oracle.coverage.unwrap() > 0.0);
    assert!(oracle.accuracy > 0.9, "oracle accuracy {}", oracle.accuracy);
}

#[test]
fn late_prefetches_cost_their_remainder() {
    // Accesses 1 ns apart: no prefetch can complete in time, so stride's stall
    // includes waiting on reads it issued, and is counted as late.
    let t = trace(0..2000u64, 1);
    let cfg = ReplayConfig {
        visibility: Visibility::Full,
        policy: tiering::policy::PolicyConfig {
            initial_tier: Some(2),
            ..Default::default()
        },
        ..ReplayConfig::default()
    };
    let reports = replay_all(&t, &names(&["stride"]), &cfg, None).unwrap();
    let s = &reports[0];
    assert!(s.prefetch_late > 0);
    assert!(s.stall_ns >= s.prefetch_late * 1000);
}

/// Prefetches the page after each demand fault and records what it is shown.
struct NextPage {
    seen: Arc<std::sync::Mutex<Vec<(PageNumber, bool, AccessSource)>>>,
    want: Option<PageNumber>,
}

impl tiering::advisor::Advisor for NextPage {
    fn name(&self) -> &str {
        "next-page"
    }
    fn on_access(&mut self, a: &Access, resident: bool) {
        self.seen.lock().unwrap().push((a.page, resident, a.source));
        if !resident {
            self.want = Some(a.page + 1);
        }
    }
    fn on_fill(&mut self, _page: PageNumber, _prefetched: bool) {}
    fn on_evict(&mut self, _page: PageNumber) {}
    fn victims(&mut self, _n: usize, _out: &mut Vec<PageNumber>) {}
    fn prefetch(&mut self, _now_ns: u64, _max: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.want.take());
    }
    fn probability(&self, _page: PageNumber) -> f32 {
        0.5
    }
}

#[test]
fn a_late_prefetch_is_a_fault_the_advisor_sees() {
    // Pages 0, 1, 2, ... read 10 us apart from tier 2 (NVMe, ~60 us): each page
    // prefetched on the fault before it is touched before its read completes. Live,
    // that touch is a missing fault the handler sees and tells the advisor of, even
    // though no page is ever sampled; it costs the fault's overhead besides the wait.
    let t = trace(0..40u64, 10_000);
    let cfg = ReplayConfig {
        ram_fraction: 1.0,
        visibility: Visibility::Sampled { pages: 0 },
        policy: tiering::policy::PolicyConfig {
            initial_tier: Some(2),
            ..Default::default()
        },
        ..ReplayConfig::default()
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let advisor = Box::new(NextPage {
        seen: seen.clone(),
        want: None,
    });
    let ctx = registry::ReplayContext {
        ram_budget_pages: 40,
        distinct_pages: 40,
        ..Default::default()
    };
    let r = replay_advisor(
        &t,
        advisor,
        "next-page",
        &cfg,
        &ctx,
        Clock::Nanoseconds,
        4096,
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    let late_seen = seen
        .iter()
        .filter(|&&(_, resident, source)| resident && source == AccessSource::MissingFault)
        .count() as u64;
    assert!(r.prefetch_late > 0, "{r:?}");
    assert_eq!(
        late_seen, r.prefetch_late,
        "every late prefetch is seen: {seen:?}"
    );
    assert_eq!(r.samples, 0);
    // Faults alternate with late prefetches, each seen once.
    assert_eq!(seen.len() as u64, r.demand_faults + r.prefetch_late);
    let m = LatencyModel::default();
    assert!(
        r.stall_ns >= (r.demand_faults + r.prefetch_late) * m.fault_overhead_ns,
        "{r:?}"
    );
}

#[test]
fn sampled_visibility_charges_minor_faults_and_limits_what_is_seen() {
    let t = trace((0..20).flat_map(|_| 0..100u64), 100_000);
    let cfg = ReplayConfig {
        ram_fraction: 1.0,
        visibility: Visibility::Sampled { pages: 8 },
        ..ReplayConfig::default()
    };
    let reports = replay_all(&t, &names(&["lru"]), &cfg, None).unwrap();
    let r = &reports[0];
    assert_eq!(r.demand_faults, 100, "everything fits: only cold faults");
    assert!(r.samples > 0 && r.samples < 1900, "samples {}", r.samples);
    assert_eq!(
        r.sample_stall_ns,
        r.samples * LatencyModel::default().sample_fault_ns
    );
}

#[test]
fn unknown_advisor_and_bad_fraction_are_refused() {
    let t = trace(0..10u64, 1);
    let cfg = ReplayConfig::default();
    let e = replay_all(&t, &names(&["lru", "magic"]), &cfg, None).unwrap_err();
    assert!(e.to_string().contains("unknown advisor \"magic\""), "{e}");
    let cfg = ReplayConfig {
        ram_fraction: 0.0,
        ..ReplayConfig::default()
    };
    assert!(matches!(
        replay_all(&t, &names(&["lru"]), &cfg, None),
        Err(ReplayError::BadRamFraction(_))
    ));
    let empty = TraceInput::Memory {
        accesses: Arc::from(Vec::new()),
        clock: Clock::Nanoseconds,
    };
    let cfg = ReplayConfig::default();
    assert!(matches!(
        replay_all(&empty, &names(&["lru"]), &cfg, None),
        Err(ReplayError::EmptyTrace)
    ));
}

#[test]
fn visibility_parses() {
    assert_eq!("full".parse::<Visibility>(), Ok(Visibility::Full));
    assert_eq!(
        "sampled:16".parse::<Visibility>(),
        Ok(Visibility::Sampled { pages: 16 })
    );
    assert!("sampled:0".parse::<Visibility>().is_err());
    assert!("some".parse::<Visibility>().is_err());
}

/// `workingset` replayed with `advisor` lists over `t` at 25% RAM, `probe_pages` probes.
fn replay_workingset(
    t: &TraceInput,
    lists: crate::baselines::WorkingSet,
    probe_pages: u32,
) -> AdvisorReport {
    let cfg = ReplayConfig {
        ram_fraction: 0.25,
        probe_pages,
        ..ReplayConfig::default()
    };
    let mut distinct = std::collections::HashSet::new();
    t.for_each(|a| {
        distinct.insert(a.page);
    })
    .unwrap();
    let ctx = registry::ReplayContext {
        ram_budget_pages: distinct.len() / 4,
        distinct_pages: distinct.len() as u64,
        ..Default::default()
    };
    let advisor = Box::new(crate::baselines::WorkingSetAdvisor::with_lists(lists));
    replay_advisor(
        t,
        advisor,
        "workingset",
        &cfg,
        &ctx,
        Clock::Nanoseconds,
        4096,
    )
    .unwrap()
}

#[test]
fn probes_of_the_pages_next_to_leave_keep_a_hot_set_under_sampled_visibility() {
    // 24 hot pages touched over and over between the pages of a scan that is never
    // reused. Under sampled visibility the hot pages are rarely seen, so the working-set
    // order lets them reach the tail and leave; probes see them touched and keep them.
    let hot = 24u64;
    let pages = (0..400u64).flat_map(|i| std::iter::once(1000 + i).chain(0..hot));
    let t = trace(pages, 2000);
    let always = || crate::baselines::WorkingSet::default().with_probes_always(true);
    let without = replay_workingset(&t, always(), 0);
    let with = replay_workingset(&t, always(), 16);
    assert_eq!(without.probes, 0);
    assert!(with.probes > 0, "{with:?}");
    assert!(
        with.demand_faults < without.demand_faults,
        "probes {} faults vs {} without",
        with.demand_faults,
        without.demand_faults
    );
    // Probes are paid for: their touches are sampled minor faults in the stall.
    assert!(with.samples > without.samples, "{with:?} {without:?}");
    // Almost every fault here is a first touch, so the default (adaptive) lists do
    // not ask for probes at all, and lru never does.
    let cfg = ReplayConfig {
        ram_fraction: 0.25,
        ..ReplayConfig::default()
    };
    let r = replay_all(&t, &names(&["workingset", "lru"]), &cfg, None).unwrap();
    assert_eq!(by_name(&r, "workingset").probes, 0);
    assert_eq!(by_name(&r, "lru").probes, 0);
}

#[test]
fn belady_is_min_eviction_without_prefetch_between_lru_and_oracle() {
    // A loop 1.5x the RAM budget: LRU faults on every access, MIN keeps most of it.
    let t = trace((0..6).flat_map(|_| 0..150u64), 1000);
    let cfg = ReplayConfig::default();
    let r = replay_all(&t, &names(&["belady", "oracle", "lru"]), &cfg, None).unwrap();
    let (belady, oracle, lru) = (
        by_name(&r, "belady"),
        by_name(&r, "oracle"),
        by_name(&r, "lru"),
    );
    assert_eq!(belady.prefetch_issued, 0);
    assert_eq!(belady.visibility, "full");
    assert!(
        belady.demand_faults < lru.demand_faults,
        "{belady:?} {lru:?}"
    );
    assert!(
        oracle.demand_faults <= belady.demand_faults,
        "{oracle:?} {belady:?}"
    );
}

#[test]
fn a_tier_file_sets_capacities_and_tiers_it_leaves_out_do_not_exist() {
    let text = "[tier1]\ncapacity = \"1G\"\nbackend = \"ram\"\n\
                [tier2]\ncapacity = \"128K\"\nfile = \"t2.img\"\nprofile = \"nvme\"\n\
                [tier3]\ncapacity = \"256K\"\nfile = \"t3.img\"\nprofile = \"ssd\"\n";
    let file =
        tiering::config::TierConfig::parse("t.toml", text, std::path::Path::new("/tmp")).unwrap();
    let (_, capacity) = LatencyModel::default().with_tier_file(&file, 4096);
    assert_eq!(capacity[2], 32);
    assert_eq!(capacity[3], 64);
    assert_eq!(capacity[4], 0, "no HDD in the file");
    assert_eq!(capacity[5], 0, "no network tier in the file");
}

#[test]
fn dirty_log_harvest_shows_written_pages_and_charges_write_protect_faults() {
    // 16 pages written every round, then 40 pages read once each: under sampled
    // visibility an LRU sees the written pages only through rare samples, so they age
    // out behind the reads and fault again; the dirty log shows them every harvest.
    let mut accesses = Vec::new();
    for round in 0..30u64 {
        let hot = (0..16u64).map(|p| (p, AccessOp::Write));
        let scan = (0..40u64).map(|i| (1000 + round * 40 + i, AccessOp::Read));
        for (page, op) in hot.chain(scan) {
            accesses.push(Access {
                time_ns: accesses.len() as u64 * 100_000,
                page,
                vcpu: 0,
                op,
                kind: PageKind::Data,
                source: AccessSource::Full,
            });
        }
    }
    let t = TraceInput::Memory {
        accesses: accesses.into(),
        clock: Clock::Nanoseconds,
    };
    let run = |dirty_harvest_windows| {
        let cfg = ReplayConfig {
            ram_fraction: 0.25,
            dirty_harvest_windows,
            ..ReplayConfig::default()
        };
        replay_all(&t, &names(&["lru"]), &cfg, None)
            .unwrap()
            .remove(0)
    };
    let (off, on) = (run(0), run(1));
    assert_eq!(
        on.demand_faults,
        16 + 30 * 40,
        "with the dirty log: first touches only"
    );
    assert!(
        off.demand_faults > on.demand_faults + 30,
        "without the dirty log the written pages fault again: {} faults",
        off.demand_faults
    );
    let m = LatencyModel::default();
    assert_eq!(off.sample_stall_ns, off.samples * m.sample_fault_ns);
    let write_protect = on.sample_stall_ns - on.samples * m.sample_fault_ns;
    assert!(write_protect > 0 && write_protect % m.write_protect_fault_ns == 0);
    // At most one write-protect fault per written page per 1 ms window.
    assert!(write_protect / m.write_protect_fault_ns <= 16 * (on.windows + 1));
}
