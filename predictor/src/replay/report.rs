//! Per-advisor results of a replay, as a table or JSON.

use serde::Serialize;

/// What one advisor's replay cost. Field names are the JSON keys.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdvisorReport {
    pub advisor: String,
    /// What the advisor was shown (`full` or `sampled:N`).
    pub visibility: String,
    pub accesses: u64,
    pub distinct_pages: u64,
    pub ram_budget_pages: u64,
    pub demand_faults: u64,
    /// Demand faults on pages touched for the first time.
    pub cold_faults: u64,
    pub prefetch_issued: u64,
    /// Prefetched pages accessed before their eviction.
    pub prefetch_useful: u64,
    /// Useful prefetches whose data was not there yet when accessed.
    pub prefetch_late: u64,
    /// Prefetched pages evicted before any access. The rest of `prefetch_issued`
    /// (issued - useful - wasted) were still in RAM, unused, when the trace ended.
    pub prefetch_wasted: u64,
    /// prefetch_useful / prefetch_issued (0 when nothing was issued).
    pub accuracy: f64,
    /// (faults of `none` - faults of this advisor) / faults of `none`, same trace,
    /// same budget; `null` if `none` had no faults.
    pub coverage: Option<f64>,
    /// Modelled time the VM waits on memory: hits, faults, late prefetches, samples.
    pub stall_ns: u64,
    /// Part of `stall_ns` spent on sampled minor faults (the price of visibility).
    pub sample_stall_ns: u64,
    /// Sampled minor faults observed: random zaps and probes touched again.
    pub samples: u64,
    /// Pages zapped because the advisor asked to watch them (`Advisor::probes`).
    pub probes: u64,
    /// Wall time spent inside advisor calls (single-threaded replay, so CPU time).
    pub advisor_cpu_ns: u64,
    /// `advisor_cpu_ns` by call (in ms, as the live report gives it).
    pub advisor_calls: Vec<tiering::metrics::AdvisorCallReport>,
    pub evictions: u64,
    pub moves: u64,
    pub windows: u64,
    pub replay_wall_ms: u64,
}

impl AdvisorReport {
    pub(crate) fn set_coverage(&mut self, none_faults: Option<u64>) {
        self.coverage = match none_faults {
            Some(n) if n > 0 => Some((n as f64 - self.demand_faults as f64) / n as f64),
            _ => None,
        };
    }
}

/// A plain-text table, one row per advisor.
pub fn format_table(reports: &[AdvisorReport]) -> String {
    let mut s = String::new();
    if let Some(r) = reports.first() {
        s += &format!(
            "accesses {}  distinct pages {}  RAM budget {} pages  visibility {}\n",
            r.accesses, r.distinct_pages, r.ram_budget_pages, r.visibility
        );
    }
    s += &format!(
        "{:<8} {:>12} {:>10} {:>10} {:>8} {:>8} {:>14} {:>14}\n",
        "advisor",
        "demand_faults",
        "pf_issued",
        "pf_useful",
        "accuracy",
        "coverage",
        "stall_ms",
        "advisor_cpu_ms"
    );
    for r in reports {
        let coverage = r.coverage.map_or("-".to_string(), |c| format!("{c:.3}"));
        s += &format!(
            "{:<8} {:>12} {:>10} {:>10} {:>8.3} {:>8} {:>14.3} {:>14.3}\n",
            r.advisor,
            r.demand_faults,
            r.prefetch_issued,
            r.prefetch_useful,
            r.accuracy,
            coverage,
            r.stall_ns as f64 / 1e6,
            r.advisor_cpu_ns as f64 / 1e6
        );
    }
    s
}
