//! What the tiered-memory runtime did, per tier and in total; serialised into the
//! `tiers` section of `--metrics-out`.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::TIER_COUNT;

/// Counters of one tier, live.
pub(crate) struct TierCounters {
    pub demand_faults: u64,
    pub latency_ns: Histogram<u64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub evictions: u64,
    pub prefetch_issued: u64,
    pub io_errors: u64,
}

impl TierCounters {
    fn new() -> Self {
        Self {
            demand_faults: 0,
            // 1 us .. 60 s at 3 significant digits.
            latency_ns: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            bytes_read: 0,
            bytes_written: 0,
            evictions: 0,
            prefetch_issued: 0,
            io_errors: 0,
        }
    }
}

/// Counters of the whole runtime, live (owned by the fault-handler thread).
pub(crate) struct Counters {
    pub tiers: Vec<TierCounters>,
    pub zero_fills: u64,
    pub minor_faults: u64,
    pub sampled_zaps: u64,
    pub sample_hits: u64,
    pub samples_evicted: u64,
    pub probe_zaps: u64,
    pub write_backs_skipped_clean: u64,
    pub write_backs_skipped_unchanged: u64,
    pub dirty_harvests: u64,
    pub evictions_cancelled: u64,
    pub evictions_refused: u64,
    pub events_traced: u64,
    pub handler_idle_ns: u64,
    /// Time the handler judged its CPU shared with other work (no spin on reads).
    pub cpu_shared_ns: u64,
    /// Probe rounds skipped while the CPU was judged shared.
    pub probe_rounds_skipped: u64,
    pub page_table_walks: u64,
    pub page_tables_unreadable: u64,
    pub zero_drops: u64,
    pub admission_waits: u64,
    pub prefetches_dropped: u64,
    pub prefetches_late: u64,
    pub resident_misses: u64,
    pub migrations: u64,
    pub pages_hashed: u64,
    pub shared_pages_peak: u64,
    pub share_peers_peak: u64,
}

impl Counters {
    pub fn new() -> Self {
        Self {
            tiers: (0..TIER_COUNT).map(|_| TierCounters::new()).collect(),
            zero_fills: 0,
            minor_faults: 0,
            sampled_zaps: 0,
            sample_hits: 0,
            samples_evicted: 0,
            probe_zaps: 0,
            write_backs_skipped_clean: 0,
            write_backs_skipped_unchanged: 0,
            dirty_harvests: 0,
            evictions_cancelled: 0,
            evictions_refused: 0,
            events_traced: 0,
            handler_idle_ns: 0,
            cpu_shared_ns: 0,
            probe_rounds_skipped: 0,
            page_table_walks: 0,
            page_tables_unreadable: 0,
            zero_drops: 0,
            admission_waits: 0,
            prefetches_dropped: 0,
            prefetches_late: 0,
            resident_misses: 0,
            migrations: 0,
            pages_hashed: 0,
            shared_pages_peak: 0,
            share_peers_peak: 0,
        }
    }

    pub fn record_fault(&mut self, tier: usize, latency_ns: u64) {
        let t = &mut self.tiers[tier];
        t.demand_faults += 1;
        let _ = t.latency_ns.record(latency_ns.max(1_000));
    }
}

/// One kind of advisor call: how often it was made and the time spent in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdvisorCallReport {
    pub call: &'static str,
    pub calls: u64,
    pub ms: f64,
}

impl AdvisorCallReport {
    /// The calls made at least once, from a timed advisor's totals.
    pub fn from_time(time: &crate::advisor::AdvisorTime) -> Vec<Self> {
        time.by_call()
            .into_iter()
            .map(|(call, calls, ns)| AdvisorCallReport {
                call,
                calls,
                ms: ns as f64 / 1e6,
            })
            .collect()
    }
}

/// One tier in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TierReport {
    pub tier: usize,
    /// Backend description (`ram`, `file:/path (nvme)`, `nbd:...`).
    pub backend: String,
    pub capacity_pages: u64,
    /// Pages held at the end (tier 1: resident guest pages).
    pub resident_pages: u64,
    /// Demand faults served from this tier (tier 1: first-touch zero fills).
    pub demand_faults: u64,
    pub fault_latency_p50_us: f64,
    pub fault_latency_p99_us: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Pages evicted from RAM into this tier.
    pub evictions: u64,
    pub prefetch_issued: u64,
    pub io_errors: u64,
    /// Page requests to the tier's backends (the fault handler's and the migrator's).
    pub io_requests: u64,
    /// Transfers those requests left in: fewer where requests for adjacent slots
    /// merged (`backend::MAX_RUN_PAGES`).
    pub io_transfers: u64,
}

/// The `tiers` section of `--metrics-out`.
#[derive(Debug, Clone, Serialize)]
pub struct TieringReport {
    pub advisor: String,
    pub ram_budget_pages: u64,
    pub guest_pages: u64,
    pub demand_faults: u64,
    pub evictions: u64,
    pub prefetch_issued: u64,
    pub prefetch_useful: u64,
    pub zero_fills: u64,
    pub minor_faults: u64,
    pub sampled_zaps: u64,
    /// Windows the policy ended (the advisor's models step at window ends).
    pub windows: u64,
    /// Randomly sampled pages touched again while still in RAM: over `sampled_zaps`,
    /// about the share of resident pages in use.
    pub sample_hits: u64,
    /// Randomly sampled pages that left RAM before they were touched again: the
    /// eviction policy judged them (a zapped page looks unused to it), not their use,
    /// so a pool leaves them out of the share in use.
    pub samples_evicted: u64,
    /// Pages zapped because the advisor asked to watch them (`Advisor::probes`).
    pub probe_zaps: u64,
    /// Probe rounds (one per `probe_interval`) skipped because the fault handler
    /// judged its CPU shared with another VM (docs/tiering.md).
    pub probe_rounds_skipped: u64,
    /// Evictions of zero-filled pages never written: dropped, no I/O, zero-filled again.
    pub zero_drops: u64,
    /// Evictions that needed no write-back (a clean copy was already in the tier).
    pub write_backs_skipped_clean: u64,
    /// Evictions of pages logged as written (or with no dirty log) whose content
    /// still matched their copy in the tier: no write-back either.
    pub write_backs_skipped_unchanged: u64,
    pub dirty_log: bool,
    pub dirty_harvests: u64,
    pub evictions_cancelled: u64,
    /// Evictions the policy asked for that found no free slot in any tier.
    pub evictions_refused: u64,
    /// Waits of a demand fault for write-backs, RAM being at budget + slack.
    pub admission_waits: u64,
    /// Prefetches dropped because RAM was at budget + slack.
    pub prefetches_dropped: u64,
    /// Faults on a page whose prefetch read was still in flight: they wait for that
    /// read and are not counted in `demand_faults` (the replay's `prefetch_late`).
    pub prefetches_late: u64,
    /// Demand faults on pages the policy counted as in RAM: a prefetch it decided was
    /// not carried out, so the advisor heard of a hit (and the policy of a useful
    /// prefetch) where the guest waited for a read. Zero in a healthy run.
    pub resident_misses: u64,
    /// Prefetches and moves executed by the migrator thread.
    pub migrations: u64,
    /// `--share-dir`: pages whose content was hashed, the most of this VM's pages
    /// found at once in another live VM (kind Shared), and the most live peer VMs.
    pub pages_hashed: u64,
    pub shared_pages: u64,
    pub share_peers: u64,
    pub moves: u64,
    pub trace_events: u64,
    /// Walks of the guest page tables, tables skipped because they were not in RAM,
    /// and the pages of each kind the last walk found.
    pub page_table_walks: u64,
    pub page_tables_unreadable: u64,
    pub pages_code: u64,
    pub pages_data: u64,
    pub pages_shared: u64,
    /// Victims the policy picked itself because the advisor named none it could use
    /// (an arbitrary non-hot resident page: a healthy run has few).
    pub fallback_victims: u64,
    /// Victims the advisor named that the policy skipped as hot (tier 0).
    pub hot_victims_skipped: u64,
    /// Time the fault handler slept waiting for work, in ms.
    pub handler_idle_ms: f64,
    /// Time the fault handler judged its CPU shared with other work, in ms: it slept on
    /// demand reads instead of spinning on them, and did not probe (docs/tiering.md).
    pub cpu_shared_ms: f64,
    /// Time the fault handler spent inside the advisor's calls, in ms (a learner's
    /// background thread is reported by the advisor itself, not here).
    pub advisor_cpu_ms: f64,
    /// `advisor_cpu_ms` by call.
    pub advisor_calls: Vec<AdvisorCallReport>,
    /// Demand-fault latency over all tiers (event read to page installed).
    pub fault_latency_p50_us: f64,
    pub fault_latency_p99_us: f64,
    /// Refaults by refault distance, in log2 buckets: element 0 counts distance 0,
    /// element k distances 2^(k-1) to 2^k - 1. A budget N pages larger would have
    /// saved about the refaults of distance at most N (docs/tiering.md, "Refault
    /// distances").
    pub refault_distance_log2: Vec<u64>,
    pub per_tier: Vec<TierReport>,
    /// The storage tiers from fastest to slowest, as the tier file ordered them.
    pub storage_order: [u8; 4],
}

/// Demand faults a tier must have served before its median latency is trusted.
const ORDER_HINT_MIN_FAULTS: u64 = 32;

impl TieringReport {
    /// When the run's demand faults say the tier order is wrong (a tier ranked faster
    /// than another served faults at more than twice its median latency), a line
    /// that names both and the order their medians suggest. The order decides where
    /// pages go, so a wrong one sends them to the slow tier while a fast one has room.
    pub fn order_hint(&self) -> Option<String> {
        let faults: Vec<(u64, f64)> = self
            .per_tier
            .iter()
            .map(|r| (r.demand_faults, r.fault_latency_p50_us))
            .collect();
        order_hint(self.storage_order, &faults)
    }
}

/// [`TieringReport::order_hint`] over each tier's demand faults and median latency.
fn order_hint(order: [u8; 4], faults: &[(u64, f64)]) -> Option<String> {
    let median = |t: u8| {
        let &(n, p50) = faults.get(t as usize)?;
        (n >= ORDER_HINT_MIN_FAULTS).then_some(p50)
    };
    let (slow, fast) = order.iter().enumerate().find_map(|(i, &a)| {
        let ma = median(a)?;
        order[i + 1..]
            .iter()
            .find(|&&b| median(b).is_some_and(|mb| ma > 2.0 * mb))
            .map(|&b| (a, b))
    })?;
    // The measured tiers in the places they hold in the order, each moved ahead of
    // those more than twice as slow (tiers within twice each other keep their order).
    let mut measured: Vec<(u8, f64)> = order
        .iter()
        .filter_map(|&t| Some((t, median(t)?)))
        .collect();
    for i in 1..measured.len() {
        let mut j = i;
        while j > 0 && measured[j - 1].1 > 2.0 * measured[j].1 {
            measured.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut next = measured.into_iter().map(|(t, _)| t);
    let suggested: Vec<u8> = order
        .iter()
        .map(|&t| match median(t) {
            Some(_) => next.next().unwrap_or(t),
            None => t,
        })
        .collect();
    Some(format!(
        "tier {slow} served demand faults in {:.0} us at the median and tier {fast} in {:.0} us, \
         but the tier order {order:?} ranks tier {slow} faster: put `order = {suggested:?}` \
         at the top of the tier file (docs/tiering.md, \"Tier order\")",
        median(slow).unwrap_or_default(),
        median(fast).unwrap_or_default(),
    ))
}

pub(crate) fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::order_hint;

    #[test]
    fn a_tier_order_the_fault_latencies_contradict_gets_a_hint() {
        // Tiers 2-5: 150 us, 250 us, 2 ms, 190 us; tier 4 ranked before tier 5.
        let mut faults = vec![
            (0, 0.0),
            (500, 1.0),
            (40, 150.0),
            (40, 250.0),
            (300, 2_000.0),
            (900, 190.0),
        ];
        let hint = order_hint([2, 3, 4, 5], &faults).unwrap();
        assert!(
            hint.starts_with("tier 4 served demand faults in 2000 us"),
            "{hint}"
        );
        assert!(hint.contains("`order = [2, 3, 5, 4]`"), "{hint}");
        faults[5].1 = 100.0;
        let hint = order_hint([2, 3, 4, 5], &faults).unwrap();
        assert!(hint.contains("`order = [2, 5, 3, 4]`"), "{hint}");
        faults[5].1 = 190.0;
        // Within twice each other, or too few faults to judge: no hint.
        assert_eq!(order_hint([2, 3, 5, 4], &faults), None);
        faults[4].0 = 31;
        assert_eq!(order_hint([2, 3, 4, 5], &faults), None);
        faults[4].0 = 300;
        faults[3].0 = 0;
        let hint = order_hint([2, 3, 4, 5], &faults).unwrap();
        assert!(hint.contains("`order = [2, 3, 5, 4]`"), "{hint}");
    }
}
