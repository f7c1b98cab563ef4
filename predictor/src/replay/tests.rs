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
        assert!(r.prefetch_useful <= r.prefetch_issued);
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
