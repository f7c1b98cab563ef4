//! The GRU advisor's tunables and their `TIERVISOR_GRU_*` overrides.

use super::super::anomaly::AnomalyConfig;
use super::super::features::FeatureConfig;
use super::super::online::{OnlineConfig, OnlineMode};

/// Tunables of the advisor (the model's own shape comes from its file).
#[derive(Debug, Clone, Copy)]
pub struct GruOptions {
    /// Prefetch only blocks whose probability is at least this.
    pub prefetch_threshold: f32,
    /// After a demand fault, prefetch the rest of the faulting block (pages touched
    /// before) when its probability is at least this.
    pub fault_block_threshold: f32,
    /// Lowest probability reported to the placement policy. The model is not calibrated
    /// for "never again": with 0, cold blocks went to the network tier and replay stall
    /// time was 8x LRU's at equal faults. 0.25 maps to tier 2 (NVMe), as the baselines do.
    pub probability_floor: f32,
    /// At most 1/this of the resident pages are prefetched per window.
    pub prefetch_ram_divisor: usize,
    /// At most this many pages are queued for prefetch per window.
    pub max_prefetch_per_window: usize,
    /// Training samples taken per window.
    pub samples_per_window: usize,
    /// Reset the hidden states when a pattern change is detected.
    pub reset_on_anomaly: bool,
    /// A page the eviction order names gets one more round on the active list when
    /// its block's probability is at least this (the model expects it soon).
    pub keep_threshold: f32,
    /// After a demand fault, follow the fault stream's successor links this deep.
    pub successor_depth: usize,
    /// Also prefetch at window ends: previously used pages of likely blocks.
    pub window_prefetch: bool,
    /// A prefetch source (a successor link, the fault trend) is used while the share of
    /// its prefetches that were used, with one used and one wasted as prior, is at least this.
    pub source_threshold: f32,
    /// Resident pages on a followed successor chain count as used (they are expected
    /// soon), so the eviction order keeps them.
    pub protect_chain: bool,
    /// A page a probe found in use skips its next probe (`WorkingSet::probes`).
    pub probe_reprieve: bool,
    /// Probe whenever the driver asks, not only while short refaults are frequent.
    pub probes_always: bool,
    /// When the demand fault after a followed successor chain continues the chain's
    /// recorded path, count the chain's prefetched pages whose use went unseen as used
    /// (the program walked them without faulting).
    pub chain_inference: bool,
    /// A prefetched page that left RAM less than this many resident pages' worth of
    /// evictions ago enters the active list (`WorkingSet::with_prefetch_activation`;
    /// 0: every prefetched page starts inactive).
    pub prefetch_activation: f32,
    /// The eviction order keeps at least this share of the resident pages (percent)
    /// on its inactive list (`WorkingSet::new`; the `workingset` baseline, like the
    /// kernel for small memories, keeps half). Probes watch that list's tail.
    pub inactive_percent: usize,
    /// Prefetch candidates are issued only if the online candidate scorer (block hidden
    /// state + facts, learned from prefetch outcomes) gives at least this (0: all).
    pub scorer_threshold: f32,
    /// Without shadow outcomes (`shadow_horizon` 0), links never tried are followed
    /// while this share of the untried links followed so far in this VM were used
    /// (same prior as `source_threshold`), and one in 8 anyway.
    pub untried_threshold: f32,
    /// Also take candidates from the fault stream's trend (Leap's majority delta).
    pub trend_candidates: bool,
    /// Also take candidates from kernel-style readahead of the fault stream
    /// (`baselines::Readahead`) while a stream's window is at least this many pages,
    /// i.e. the stream was confirmed (0: off; 8 since session 15, by a rule written
    /// before its holdout2 and live runs, docs/predictor.md). Followed on the source's
    /// record for the VM, which starts empty and is earned by shadow outcomes as
    /// links' are.
    pub readahead_min_window: usize,
    /// The readahead record needed to follow it (the other sources use
    /// `source_threshold`).
    pub readahead_threshold: f32,
    /// A fault that continues a stream counts the stream's prefetched pages behind it
    /// that are still in RAM as used (a live VMM does not see reads of mapped pages).
    pub readahead_walk_inference: bool,
    /// An observed use of the last window's first page (the marker) reads the next
    /// window at once, as the kernel's asynchronous readahead does; off, windows are
    /// read only on a fault where the last one ended (the default since session 17,
    /// by a rule written before its holdout and live runs). Live, the marker is mostly
    /// seen through a late prefetch, and the extra window is what overran a stream's
    /// end (docs/predictor-experiments.md, "Readahead without the marker").
    pub readahead_marker: bool,
    /// A fault up to one window past where the readahead ended continues the stream
    /// (`baselines::Readahead::lenient`): the other sources (links, first-touch runs)
    /// bring in pages of the stream, the guest walks them without a fault, and the
    /// strict readahead then lost the stream and started over. Off: a rule written
    /// before its holdout and live runs turned it down (live, 1.003 of gru's run time;
    /// docs/predictor-experiments.md, "Lenient readahead continuation").
    pub readahead_lenient: bool,
    /// A second readahead follows the streams a fault joins when the pages before it
    /// are resident (`baselines::Readahead::on_fault_in_context`, the kernel's context
    /// readahead): gru's eviction keeps scattered pages of a sweep, so its faults skip
    /// pages and the first readahead starts over. Its windows have their own record.
    /// On since session 23, by a rule written before its runs
    /// (docs/predictor-experiments.md, "Context readahead").
    pub readahead_context: bool,
    /// The context readahead's sequential streams (stride +-1) take the readahead
    /// marker while its record is well above its threshold: an observed use of a
    /// window's first page reads the next window at once, where a sweep otherwise
    /// faults at every window's end, once every 33 pages. The margin keeps the
    /// marker's own waste (the window read past where a sweep stops) from tipping the
    /// record under its threshold, which live took the context readahead from later
    /// phases of a program. On since session 35, by a rule written before its runs
    /// (docs/predictor-experiments.md, "The context marker while the record has a
    /// margin").
    pub readahead_context_marker: bool,
    /// Both readaheads leave out pages of 2 MiB regions the VM has never touched: they
    /// would be zero fills the guest may never use, which the first-touch sources judge
    /// on their own records. Live, phases' strided context streams ran past the end of
    /// the workload's memory, and that waste tipped the context record under its
    /// threshold. On since session 34, by a rule written before its runs
    /// (docs/predictor-experiments.md, "Readahead only where the VM has been").
    pub readahead_touched_regions: bool,
    /// A touch of a page still being prefetched (a late prefetch: the guest faults on
    /// a page in flight) moves it to the active list, as any seen use of a resident
    /// page does. Off, it stays on the inactive list, as a demand-faulted page does:
    /// it was used once. Live, the first page of every readahead window is such a
    /// touch, so gru held one page in 33 of each sweep on its active list (the replay
    /// shows these touches too since session 36). Off since
    /// session 34, by a rule written before its runs (docs/predictor-experiments.md,
    /// "Late prefetches stay inactive").
    pub activate_on_late_prefetch: bool,
    /// A touch of a readahead page still being read (a late prefetch, a fault the
    /// handler sees) shows the program walked the stream up to it, as a fault that
    /// continues the stream does: the stream's prefetched pages behind it still in
    /// RAM were used (`readahead_walk_inference`). Without it, the policy's prefetches
    /// on that touch make room first, and pages used unseen are evicted and counted
    /// wasted before the stream's next fault can vouch for them. Off: a rule written
    /// before its runs turned it down (the holdout set with little fast room lost
    /// 1.5% of its stall; docs/predictor-experiments.md, "Stream use inferred from
    /// late prefetches").
    pub readahead_late_inference: bool,
    /// No successor chain after a fault that continues a stream the readahead follows
    /// on a trusted record: the readahead covers the stream, and live the links cost
    /// gru on the stream workloads (docs/predictor-experiments.md, "What did not work",
    /// session 18).
    /// Off: a rule written before its holdout and live runs turned it down (live,
    /// 1.001 of gru's run time, phases 1.068; docs/predictor-experiments.md, "No
    /// successor chain on a stream the readahead covers").
    pub links_off_streams: bool,
    /// Let the policy keep its counter-based hot set (tier 0) over gru's eviction
    /// order (`tiering::advisor::Advisor::wants_hot_set`). Off since session 15: live,
    /// gru ran in 0.917 of its time without it (docs/benchmarks.md, "Session 15,
    /// without tier 0").
    pub hot_set: bool,
    /// Candidates not prefetched are judged too (shadow outcomes): one counts as used
    /// if it demand-faults within this x the resident pages' worth of demand faults,
    /// wasted otherwise. A link or region then earns its record without prefetching, and
    /// links never tried are not followed. 0: off.
    pub shadow_horizon: f32,
    /// A link (or first-touch region) is followed only after this many used
    /// candidates (prefetched or shadow).
    pub min_uses: u32,
    /// A successor link is followed only where the two-fault context agrees: the
    /// page that came after this page *and the one before it* last time is the
    /// link's target too (as Domino-style temporal prefetchers index by two misses).
    pub link_context: bool,
    /// First-touch candidates are judged per 2 MiB region of guest memory, not by
    /// one record for the whole VM. A region's first record comes from shadow
    /// outcomes, so this needs `shadow_horizon` > 0.
    pub first_touch_by_region: bool,
    /// After a first touch next to a recent first touch, prefetch (zero-fill) this many
    /// never-touched pages further along the run (0: off). Heaps and stacks grow so.
    pub first_touch_run: u64,
    /// Follow the first-touch prior learned from the training traces
    /// (`super::super::prior`, loaded beside the model by whoever builds the advisor):
    /// after a first-touch fault, zero-fill the pages it expects next. On since session
    /// 19, by a rule written before its holdout and live runs
    /// (docs/predictor-experiments.md, "The first-touch prior").
    pub first_touch_prior: bool,
    /// Most pages the prior names after one first-touch fault.
    pub prior_depth: usize,
    pub online: OnlineConfig,
    pub anomaly: AnomalyConfig,
    pub max_stepped: usize,
    /// Windows an idle block is still stepped after its last touch, in place of
    /// `FeatureConfig::idle_windows` (8, as in training): each touched block is stepped
    /// in about that many windows more, most of the model's cost on a VM that touches
    /// many blocks (docs/predictor-experiments.md, rule 22).
    pub idle_windows: Option<u64>,
    /// The model steps once it has seen this many accesses since its last step...
    pub min_window_events: u64,
    /// ...or after this many of the driver's windows, whichever comes first: stepping
    /// thousands of blocks every 1 ms driver window would cost a core.
    pub max_window_ticks: u64,
}

impl Default for GruOptions {
    fn default() -> Self {
        GruOptions {
            prefetch_threshold: 0.9,
            fault_block_threshold: 0.0,
            max_prefetch_per_window: 512,
            prefetch_ram_divisor: 16,
            probability_floor: 0.0,
            // Inline training takes 128 samples every 64 model windows: 8 per window
            // keeps its buffer fresh at a quarter of the cost of 32.
            samples_per_window: 8,
            reset_on_anomaly: false,
            keep_threshold: 1.01,
            successor_depth: 8,
            window_prefetch: false,
            source_threshold: 0.7,
            untried_threshold: 0.5,
            scorer_threshold: 0.0,
            protect_chain: true,
            probe_reprieve: true,
            probes_always: false,
            chain_inference: false,
            prefetch_activation: 2.0,
            inactive_percent: 30,
            trend_candidates: false,
            readahead_min_window: 8,
            readahead_threshold: 0.9,
            readahead_walk_inference: true,
            readahead_marker: false,
            readahead_lenient: false,
            readahead_context: true,
            readahead_context_marker: true,
            readahead_touched_regions: true,
            activate_on_late_prefetch: false,
            readahead_late_inference: false,
            links_off_streams: false,
            hot_set: false,
            shadow_horizon: 0.75,
            min_uses: 1,
            link_context: true,
            first_touch_by_region: true,
            first_touch_run: 1,
            first_touch_prior: true,
            prior_depth: 4,
            online: OnlineConfig::default(),
            anomaly: AnomalyConfig::default(),
            max_stepped: FeatureConfig::default().max_stepped,
            idle_windows: None,
            min_window_events: 64,
            max_window_ticks: 10,
        }
    }
}

impl GruOptions {
    /// Defaults, overridden by the `TIERVISOR_GRU_*` variables docs/predictor.md lists
    /// (for experiments with replay and run).
    pub fn from_env() -> Self {
        /// Sets `field` from variable `k` when it is set and parses.
        fn set<T: std::str::FromStr>(field: &mut T, k: &str) {
            if let Some(v) = std::env::var(k).ok().and_then(|v| v.parse().ok()) {
                *field = v;
            }
        }
        /// Sets a flag from `k` = 1 (on) or anything else (off) when it is set.
        fn flag(field: &mut bool, k: &str) {
            if let Ok(v) = std::env::var(k) {
                *field = v == "1";
            }
        }
        let mut o = GruOptions::default();
        // One variable sets both model gates on prefetch (window plan and candidates).
        set(
            &mut o.prefetch_threshold,
            "TIERVISOR_GRU_PREFETCH_THRESHOLD",
        );
        set(
            &mut o.fault_block_threshold,
            "TIERVISOR_GRU_PREFETCH_THRESHOLD",
        );
        set(
            &mut o.prefetch_ram_divisor,
            "TIERVISOR_GRU_PREFETCH_DIVISOR",
        );
        set(&mut o.probability_floor, "TIERVISOR_GRU_PROBABILITY_FLOOR");
        set(&mut o.keep_threshold, "TIERVISOR_GRU_KEEP_THRESHOLD");
        set(&mut o.successor_depth, "TIERVISOR_GRU_SUCCESSOR_DEPTH");
        set(&mut o.source_threshold, "TIERVISOR_GRU_SOURCE_THRESHOLD");
        set(&mut o.first_touch_run, "TIERVISOR_GRU_FIRST_TOUCH_RUN");
        set(&mut o.anomaly.settle, "TIERVISOR_ANOMALY_SETTLE");
        set(
            &mut o.anomaly.confirm_span,
            "TIERVISOR_ANOMALY_CONFIRM_SPAN",
        );
        flag(&mut o.anomaly.two_sided_loss, "TIERVISOR_ANOMALY_TWO_SIDED");
        flag(&mut o.anomaly.spread_test, "TIERVISOR_ANOMALY_SPREAD");
        set(&mut o.anomaly.spread.1, "TIERVISOR_ANOMALY_SPREAD_LAMBDA");
        set(&mut o.anomaly.warmup, "TIERVISOR_ANOMALY_WARMUP");
        set(&mut o.anomaly.cooldown, "TIERVISOR_ANOMALY_COOLDOWN");
        set(
            &mut o.anomaly.spread_confirm_z,
            "TIERVISOR_ANOMALY_SPREAD_CONFIRM_Z",
        );
        set(&mut o.scorer_threshold, "TIERVISOR_GRU_SCORER_THRESHOLD");
        set(&mut o.untried_threshold, "TIERVISOR_GRU_UNTRIED_THRESHOLD");
        set(&mut o.shadow_horizon, "TIERVISOR_GRU_SHADOW_HORIZON");
        set(&mut o.min_uses, "TIERVISOR_GRU_MIN_USES");
        set(&mut o.inactive_percent, "TIERVISOR_GRU_INACTIVE_PERCENT");
        flag(&mut o.link_context, "TIERVISOR_GRU_LINK_CONTEXT");
        flag(
            &mut o.first_touch_by_region,
            "TIERVISOR_GRU_FIRST_TOUCH_BY_REGION",
        );
        set(&mut o.online.train_every, "TIERVISOR_GRU_TRAIN_EVERY");
        set(
            &mut o.online.boost_train_every,
            "TIERVISOR_GRU_BOOST_TRAIN_EVERY",
        );
        set(&mut o.online.boost_lr, "TIERVISOR_GRU_BOOST_LR");
        set(&mut o.online.boost_windows, "TIERVISOR_GRU_BOOST_WINDOWS");
        set(
            &mut o.min_window_events,
            "TIERVISOR_GRU_MODEL_WINDOW_EVENTS",
        );
        if let Some(v) = std::env::var("TIERVISOR_GRU_IDLE_WINDOWS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.idle_windows = Some(v);
        }
        flag(&mut o.window_prefetch, "TIERVISOR_GRU_WINDOW_PREFETCH");
        flag(&mut o.protect_chain, "TIERVISOR_GRU_PROTECT_CHAIN");
        flag(&mut o.probe_reprieve, "TIERVISOR_GRU_PROBE_REPRIEVE");
        flag(&mut o.probes_always, "TIERVISOR_GRU_PROBES_ALWAYS");
        flag(&mut o.chain_inference, "TIERVISOR_GRU_CHAIN_INFERENCE");
        set(
            &mut o.prefetch_activation,
            "TIERVISOR_GRU_PREFETCH_ACTIVATION",
        );
        flag(&mut o.trend_candidates, "TIERVISOR_GRU_TREND");
        set(
            &mut o.readahead_min_window,
            "TIERVISOR_GRU_READAHEAD_MIN_WINDOW",
        );
        set(
            &mut o.readahead_threshold,
            "TIERVISOR_GRU_READAHEAD_THRESHOLD",
        );
        flag(
            &mut o.readahead_walk_inference,
            "TIERVISOR_GRU_READAHEAD_WALK_INFERENCE",
        );
        flag(&mut o.readahead_marker, "TIERVISOR_GRU_READAHEAD_MARKER");
        flag(&mut o.readahead_lenient, "TIERVISOR_GRU_READAHEAD_LENIENT");
        flag(&mut o.readahead_context, "TIERVISOR_GRU_READAHEAD_CONTEXT");
        flag(
            &mut o.readahead_context_marker,
            "TIERVISOR_GRU_READAHEAD_CONTEXT_MARKER",
        );
        flag(
            &mut o.readahead_touched_regions,
            "TIERVISOR_GRU_READAHEAD_TOUCHED_REGIONS",
        );
        flag(
            &mut o.activate_on_late_prefetch,
            "TIERVISOR_GRU_ACTIVATE_ON_LATE_PREFETCH",
        );
        flag(
            &mut o.readahead_late_inference,
            "TIERVISOR_GRU_READAHEAD_LATE_INFERENCE",
        );
        flag(&mut o.links_off_streams, "TIERVISOR_GRU_LINKS_OFF_STREAMS");
        flag(&mut o.hot_set, "TIERVISOR_GRU_HOT_SET");
        flag(&mut o.first_touch_prior, "TIERVISOR_GRU_FIRST_TOUCH_PRIOR");
        set(&mut o.prior_depth, "TIERVISOR_GRU_PRIOR_DEPTH");
        match std::env::var("TIERVISOR_GRU_ONLINE").as_deref() {
            Ok("off") => o.online.mode = OnlineMode::Off,
            Ok("inline") => o.online.mode = OnlineMode::Inline,
            _ => {}
        }
        o
    }
}
