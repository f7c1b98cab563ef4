//! `GruAdvisor`: per-block GRU hidden states stepped once per model window, around
//! Linux's working-set eviction order and feedback-gated prefetch sources.
//!
//! `on_access` counts (the feature extractor), keeps the working-set lists and the
//! fault stream's successor table; `end_window` steps the hidden states of the active
//! blocks through [`GruCell`], learns online and watches for pattern changes;
//! `prefetch` follows successor chains and first-touch runs while their candidates are
//! used (`on_prefetch_outcome`, and shadow outcomes of those not prefetched: `outcomes`). The block probabilities give `probability()` (tier
//! placement); as gates on the decisions they are optional (docs/predictor.md).

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use crate::baselines::{LeapAdvisor, WorkingSet};

use super::anomaly::{AnomalyConfig, AnomalyDetector, AnomalyEvent};
use super::cell::GruCell;
use super::features::{BlockMap, FeatureConfig, FeatureExtractor, Sample, WindowBatch};
use super::model::{AccessModel, ModelFileError, ModelMeta};
use super::online::{OnlineConfig, OnlineLearner, OnlineMode};
use super::outcomes::{Outcomes, ShadowKey, Shadows, REGION_SHIFT};
use super::scorer::{CandidateFacts, CandidateScorer};

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
    /// Prefetch candidates are issued only if the online candidate scorer (block hidden
    /// state + facts, learned from prefetch outcomes) gives at least this (0: all).
    pub scorer_threshold: f32,
    /// Without shadow outcomes (`shadow_horizon` 0), links never tried are followed
    /// while this share of the untried links followed so far in this VM were used
    /// (same prior as `source_threshold`), and one in 8 anyway.
    pub untried_threshold: f32,
    /// Also take candidates from the fault stream's trend (Leap's majority delta).
    pub trend_candidates: bool,
    /// Candidates not prefetched are judged too (shadow outcomes): one counts as used
    /// if it demand-faults within this x the resident pages' worth of demand faults
    /// (about the time a prefetched page stays on the inactive list), wasted
    /// otherwise. A link or region then earns its record without prefetching, and
    /// links never tried are not followed. 0: off.
    pub shadow_horizon: f32,
    /// A link (or first-touch region) is followed only after this many used
    /// candidates (prefetched or shadow).
    pub min_uses: u32,
    /// First-touch candidates are judged per 2 MiB region of guest memory, not by
    /// one record for the whole VM. A region's first record comes from shadow
    /// outcomes, so this needs `shadow_horizon` > 0.
    pub first_touch_by_region: bool,
    /// After a first touch next to a recent first touch, prefetch (zero-fill) this many
    /// never-touched pages further along the run (0: off). Heaps and stacks grow so.
    pub first_touch_run: u64,
    pub online: OnlineConfig,
    pub anomaly: AnomalyConfig,
    pub max_stepped: usize,
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
            source_threshold: 0.9,
            untried_threshold: 0.5,
            scorer_threshold: 0.0,
            protect_chain: true,
            probe_reprieve: true,
            probes_always: false,
            trend_candidates: false,
            shadow_horizon: 0.25,
            min_uses: 1,
            first_touch_by_region: true,
            first_touch_run: 3,
            online: OnlineConfig::default(),
            anomaly: AnomalyConfig::default(),
            max_stepped: FeatureConfig::default().max_stepped,
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
        set(&mut o.scorer_threshold, "TIERVISOR_GRU_SCORER_THRESHOLD");
        set(&mut o.untried_threshold, "TIERVISOR_GRU_UNTRIED_THRESHOLD");
        set(&mut o.shadow_horizon, "TIERVISOR_GRU_SHADOW_HORIZON");
        set(&mut o.min_uses, "TIERVISOR_GRU_MIN_USES");
        flag(
            &mut o.first_touch_by_region,
            "TIERVISOR_GRU_FIRST_TOUCH_BY_REGION",
        );
        set(&mut o.online.train_every, "TIERVISOR_GRU_TRAIN_EVERY");
        set(
            &mut o.min_window_events,
            "TIERVISOR_GRU_MODEL_WINDOW_EVENTS",
        );
        flag(&mut o.window_prefetch, "TIERVISOR_GRU_WINDOW_PREFETCH");
        flag(&mut o.protect_chain, "TIERVISOR_GRU_PROTECT_CHAIN");
        flag(&mut o.probe_reprieve, "TIERVISOR_GRU_PROBE_REPRIEVE");
        flag(&mut o.probes_always, "TIERVISOR_GRU_PROBES_ALWAYS");
        flag(&mut o.trend_candidates, "TIERVISOR_GRU_TREND");
        match std::env::var("TIERVISOR_GRU_ONLINE").as_deref() {
            Ok("off") => o.online.mode = super::online::OnlineMode::Off,
            Ok("inline") => o.online.mode = super::online::OnlineMode::Inline,
            _ => {}
        }
        o
    }
}

/// Counters for reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct GruStats {
    pub windows: u64,
    pub stepped_blocks: u64,
    /// Time in `end_window` model inference only.
    pub inference_ns: u64,
    /// Time in `end_window` altogether (inference, training inline, bookkeeping).
    pub end_window_ns: u64,
    pub max_step_ns: u64,
    pub weight_updates: u64,
}

/// Most successor links kept (a link is two page numbers and a record): 1 M, so the
/// tables stay in the tens of MB however much memory the VM touches.
const MAX_LINKS: usize = 1 << 20;

/// Where a prefetch candidate came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The page faulted after this page last time.
    /// The page faulted after this page last time; `untried`: the link had no
    /// outcome yet when it was followed.
    Successor {
        from: PageNumber,
        untried: bool,
    },
    Trend,
    /// A page never touched, next to a run of first touches.
    FirstTouch,
}

/// The GRU advisor.
pub struct GruAdvisor {
    fx: FeatureExtractor,
    model: AccessModel,
    /// The model's weights for inference without burn (its per-call overhead was
    /// most of the advisor's CPU time at these batch sizes).
    cell: GruCell,
    meta: ModelMeta,
    opts: GruOptions,
    hidden: HiddenStates,
    /// Buffers `step_model` reuses, so a model step allocates nothing in steady state.
    step_buffers: StepBuffers,
    /// Resident pages per block (bit i = page i of the block).
    resident: BlockMap<u64>,
    resident_pages: usize,
    /// Eviction order: Linux's active/inactive lists with refault activation.
    lists: WorkingSet,
    /// For each faulting page, the page that faulted next (temporal correlation).
    successor: FxHashMap<PageNumber, PageNumber>,
    last_fault: Option<PageNumber>,
    candidates: Vec<PageNumber>,
    /// The fault-trend prefetcher whose candidates are scored too.
    trend: LeapAdvisor,
    /// Which source proposed each prefetched page not yet used or evicted.
    origin: FxHashMap<PageNumber, Source>,
    /// Outcomes (used, wasted) of the prefetches of each successor link, by its first page.
    link_outcomes: FxHashMap<PageNumber, Outcomes>,
    trend_outcomes: Outcomes,
    /// Outcomes of prefetches through links that had none yet.
    untried_link_outcomes: Outcomes,
    untried_seen: u64,
    /// Candidates not prefetched, waiting for their outcome.
    shadows: Shadows,
    /// Outcomes of first-touch candidates per 2 MiB region.
    first_touch_regions: FxHashMap<u64, Outcomes>,
    scorer: CandidateScorer,
    /// Every page ever observed (first touches are not predicted by the other sources).
    /// A compressed bitmap: a 4 GiB VM's million pages take about 128 KiB, where a
    /// hash set of them needs 9-19 MiB (a 9-byte bucket each, 2^20-2^21 buckets).
    seen: roaring::RoaringTreemap,
    /// The last first-touch faults, most recent last.
    recent_first_touches: std::collections::VecDeque<PageNumber>,
    /// Never-touched pages that continue a run of first touches, for the next prefetch.
    first_touch_candidates: Vec<PageNumber>,
    first_touch_outcomes: Outcomes,
    prefetch_queue: Vec<PageNumber>,
    prefetch_cursor: usize,
    batch: WindowBatch,
    learner: OnlineLearner,
    detector: AnomalyDetector,
    sink: Option<super::collect::SampleSink>,
    /// Driver windows since the model last stepped.
    ticks: u64,
    /// Page of the most recent demand fault not yet followed by a prefetch call.
    fault_page: Option<PageNumber>,
    pub stats: GruStats,
}

impl GruAdvisor {
    /// An advisor around `model` (e.g. the shipped base model).
    pub fn new(model: AccessModel, meta: ModelMeta, opts: GruOptions) -> Self {
        let mut cfg = meta.feature_config();
        cfg.max_stepped = opts.max_stepped;
        let learner = OnlineLearner::new(&model, opts.online);
        let hidden = model.hidden();
        let lists = WorkingSet::default()
            .with_probe_reprieve(opts.probe_reprieve)
            .with_probes_always(opts.probes_always);
        GruAdvisor {
            fx: FeatureExtractor::new(cfg),
            cell: GruCell::from_model(&model),
            model,
            meta,
            opts,
            hidden: HiddenStates::default(),
            step_buffers: StepBuffers::default(),
            resident: BlockMap::default(),
            resident_pages: 0,
            lists,
            successor: FxHashMap::default(),
            last_fault: None,
            candidates: Vec::new(),
            trend: LeapAdvisor::trend_only(),
            origin: FxHashMap::default(),
            link_outcomes: FxHashMap::default(),
            trend_outcomes: Outcomes::default(),
            untried_link_outcomes: Outcomes::default(),
            untried_seen: 0,
            shadows: Shadows::default(),
            first_touch_regions: FxHashMap::default(),
            scorer: CandidateScorer::new(hidden),
            seen: Default::default(),
            recent_first_touches: Default::default(),
            first_touch_candidates: Vec::new(),
            first_touch_outcomes: Outcomes::default(),
            prefetch_queue: Vec::new(),
            prefetch_cursor: 0,
            batch: WindowBatch::default(),
            learner,
            detector: AnomalyDetector::new(opts.anomaly),
            sink: None,
            ticks: 0,
            fault_page: None,
            stats: GruStats::default(),
        }
    }

    /// Load a model file and build an advisor around it.
    pub fn from_file(path: &Path, opts: GruOptions) -> Result<Self, ModelFileError> {
        let (model, meta) = AccessModel::load(path, &Device::flex())?;
        Ok(Self::new(model, meta, opts))
    }

    /// Also hand every window's training samples to `sink` (offline collection).
    pub fn set_sample_sink(&mut self, sink: super::collect::SampleSink) {
        self.sink = Some(sink);
    }

    /// The model's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Pattern changes detected so far.
    pub fn anomalies(&self) -> &[AnomalyEvent] {
        &self.detector.events
    }

    /// The detector (for its signal trace).
    pub fn detector_mut(&mut self) -> &mut AnomalyDetector {
        &mut self.detector
    }

    /// The online learner (for its counters).
    pub fn learner(&self) -> &OnlineLearner {
        &self.learner
    }

    /// The current inference weights (after online learning).
    pub fn model(&self) -> &AccessModel {
        &self.model
    }

    fn block_pages(&self) -> u64 {
        self.fx.cfg.block_pages()
    }

    /// Model loss on the window that just ended: last window's predictions (probability
    /// of a touch within the horizon) against whether the block was touched now.
    fn window_loss(&self, touched: &[u64]) -> f64 {
        let mut sum = 0.0f64;
        let mut n = 0usize;
        let bce = |p: f32, y: bool| -> f64 {
            let p = f64::from(p).clamp(1e-3, 1.0 - 1e-3);
            if y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        };
        // The current states are the last step's, row i for block i of its batch.
        for (&b, &p) in self.batch.blocks.iter().zip(&self.hidden.probs) {
            sum += bce(p, touched.binary_search(&b).is_ok());
            n += 1;
        }
        // The hidden states are indexed by exactly the blocks of the last step.
        for &b in touched {
            if !self.hidden.index.contains_key(&b) {
                sum += bce(0.0, true); // a block nobody expected
                n += 1;
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// Step the hidden states of this window's blocks in one forward pass.
    fn step_model(&mut self) {
        let n = self.batch.blocks.len();
        if n == 0 {
            return;
        }
        let h = self.model.hidden();
        let buf = &mut self.step_buffers;
        buf.xs.clear();
        buf.hs.clear();
        for (&b, f) in self.batch.blocks.iter().zip(&self.batch.features) {
            buf.xs.extend_from_slice(f);
            match self.hidden.get(b, h) {
                Some(v) => buf.hs.extend_from_slice(v),
                None => buf.hs.resize(buf.hs.len() + h, 0.0),
            }
        }
        buf.p.clear();
        buf.p.resize(n, 0.0);
        let start = Instant::now();
        self.cell.step(&buf.xs, &mut buf.hs, &mut buf.p);
        let ns = start.elapsed().as_nanos() as u64;
        self.stats.inference_ns += ns;
        self.stats.max_step_ns = self.stats.max_step_ns.max(ns);
        self.stats.stepped_blocks += n as u64;
        buf.index.clear();
        for (i, &b) in self.batch.blocks.iter().enumerate() {
            buf.index.insert(b, i as u32);
        }
        // The stepped states become current (blocks no longer stepped lose their state
        // and their probability: they count as cold); the old buffers are reused.
        std::mem::swap(&mut self.hidden.index, &mut buf.index);
        std::mem::swap(&mut self.hidden.data, &mut buf.hs);
        std::mem::swap(&mut self.hidden.probs, &mut buf.p);
    }

    /// Non-resident pages of high-probability blocks, most likely first.
    fn plan_prefetch(&mut self) {
        self.prefetch_queue.clear();
        self.prefetch_cursor = 0;
        let mut cands: Vec<(f32, u64)> = self
            .batch
            .blocks
            .iter()
            .filter_map(|&b| self.hidden.prob(b).map(|p| (p, b)))
            .filter(|(p, _)| *p >= self.opts.prefetch_threshold)
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let bp = self.block_pages();
        let full = if bp == 64 { u64::MAX } else { (1u64 << bp) - 1 };
        for (_, b) in cands {
            let track = self.fx.blocks.get(&b);
            let mut mask = track.map_or(0, |t| t.ever_mask);
            if mask == 0 {
                // Never touched: assume the layout of the neighbour that leads into it.
                let nb = |n: u64| self.fx.blocks.get(&n).map_or(0, |t| t.ever_mask);
                mask = nb(b.wrapping_sub(1)) | nb(b.wrapping_add(1));
                if mask != full {
                    continue; // only dense neighbours predict a dense new block
                }
            }
            let missing = mask & !self.resident.get(&b).copied().unwrap_or(0);
            for bit in 0..bp {
                if missing >> bit & 1 == 1 {
                    self.prefetch_queue.push(b * bp + bit);
                }
            }
            let cap = self.prefetch_cap();
            if self.prefetch_queue.len() >= cap {
                self.prefetch_queue.truncate(cap);
                break;
            }
        }
    }

    /// Pages to prefetch per window: bounded by a fraction of the resident set, since
    /// every prefetch into a full RAM evicts something (measured: with a fixed 512 a
    /// 150-page budget thrashed, accuracy 0.02-0.19 on the evaluation traces).
    fn prefetch_cap(&self) -> usize {
        let by_ram = (self.resident_pages / self.opts.prefetch_ram_divisor.max(1)).max(2);
        self.opts.max_prefetch_per_window.min(by_ram)
    }

    /// A first touch of `page`: if it continues a recent first touch at `page -+ 1`,
    /// the next never-touched pages in that direction become candidates.
    fn note_first_touch(&mut self, page: PageNumber) {
        self.first_touch_candidates.clear();
        let run = self.opts.first_touch_run;
        if run > 0 {
            let up = self.recent_first_touches.contains(&page.wrapping_sub(1));
            let down = self.recent_first_touches.contains(&page.wrapping_add(1));
            for k in 1..=run {
                let next = match (up, down) {
                    (true, _) => page.wrapping_add(k),
                    (false, true) => page.wrapping_sub(k),
                    _ => break,
                };
                if self.seen.contains(next) {
                    break;
                }
                self.first_touch_candidates.push(next);
            }
        }
        self.push_first_touch(page);
    }

    fn push_first_touch(&mut self, page: PageNumber) {
        const RECENT: usize = 8;
        if self.recent_first_touches.len() == RECENT {
            self.recent_first_touches.pop_front();
        }
        self.recent_first_touches.push_back(page);
    }

    /// Asks the candidate scorer about `page`, proposed by `source` (0 successor,
    /// 1 trend, 2 first touch) at chain `depth` with the source's record `outcomes`.
    fn admit(&mut self, page: PageNumber, source: u8, depth: u32, outcomes: Outcomes) -> bool {
        if self.opts.scorer_threshold <= 0.0 {
            return true; // scorer off: no facts to gather
        }
        let block = self.fx.cfg.block_of(page);
        let bp = self.block_pages() as f32;
        let facts = CandidateFacts {
            source,
            depth,
            used: outcomes.used,
            wasted: outcomes.wasted,
            block_probability: self.block_probability(page),
            refault_ratio: self
                .lists
                .refault_distance(page)
                .map(|d| d as f32 / self.lists.resident().max(1) as f32),
            block_resident: self
                .resident
                .get(&block)
                .map_or(0.0, |m| m.count_ones() as f32 / bp),
        };
        let hidden = self.hidden.get(block, self.model.hidden());
        self.scorer
            .admit(page, hidden, &facts, self.opts.scorer_threshold)
    }

    /// The successor table and the link records start over once they hold more
    /// entries than [`MAX_LINKS`]: chains are relearned from the next faults.
    fn bound_successor_tables(&mut self) {
        if self.successor.len() > MAX_LINKS {
            self.successor.clear();
            self.link_outcomes.clear();
        }
    }

    /// Judges `page`, named by `key` but not prefetched, by whether it faults soon.
    fn add_shadow(&mut self, key: ShadowKey, page: PageNumber) {
        if self.opts.shadow_horizon > 0.0 {
            let horizon = self.opts.shadow_horizon * self.lists.resident() as f32;
            self.shadows.add(key, page, horizon.max(4.0) as u64);
        }
    }

    fn block_probability(&self, page: PageNumber) -> f32 {
        self.hidden.prob(self.fx.cfg.block_of(page)).unwrap_or(0.0)
    }
}

/// The blocks of the last model step: block `b`'s hidden state is row `index[b]` of
/// `data` (`hidden` floats each) and its probability `probs[index[b]]`; rows are in the
/// order of that step's batch.
#[derive(Debug, Default)]
struct HiddenStates {
    index: BlockMap<u32>,
    data: Vec<f32>,
    probs: Vec<f32>,
}

impl HiddenStates {
    fn get(&self, block: u64, hidden: usize) -> Option<&[f32]> {
        let i = *self.index.get(&block)? as usize;
        self.data.get(i * hidden..(i + 1) * hidden)
    }

    fn prob(&self, block: u64) -> Option<f32> {
        let i = *self.index.get(&block)? as usize;
        self.probs.get(i).copied()
    }

    /// Forgets every state (a pattern change); the model step that follows starts the
    /// blocks it steps from zero.
    fn clear(&mut self) {
        self.index.clear();
        self.data.clear();
        self.probs.clear();
    }
}

#[derive(Debug, Default)]
struct StepBuffers {
    xs: Vec<f32>,
    hs: Vec<f32>,
    p: Vec<f32>,
    index: BlockMap<u32>,
}

impl Advisor for GruAdvisor {
    fn name(&self) -> &str {
        "gru"
    }

    fn on_access(&mut self, access: &Access, resident: bool) {
        self.fx.on_access(access);
        self.lists.on_access(access.page, resident);
        if self.opts.trend_candidates {
            self.trend.on_access(access, resident);
        }
        if !resident {
            let page = access.page;
            let (links, regions) = (&mut self.link_outcomes, &mut self.first_touch_regions);
            self.shadows.on_demand_fault(page, |key, used| match key {
                ShadowKey::Link(from) => links.entry(from).or_default().record(used),
                ShadowKey::FirstTouch(r) => regions.entry(r).or_default().record(used),
            });
            if let Some(prev) = self.last_fault.filter(|&p| p != page) {
                self.successor.insert(prev, page);
                self.bound_successor_tables();
            }
            self.last_fault = Some(page);
            self.fault_page = Some(page);
            // The set of pages ever seen serves the first-touch source only.
            if self.opts.first_touch_run > 0 && self.seen.insert(page) {
                self.note_first_touch(page);
            }
        } else if self.opts.first_touch_run > 0 {
            self.seen.insert(access.page);
        }
    }

    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        if prefetched {
            self.shadows.forget(page);
        }
        self.lists.on_fill(page, prefetched);
        if self.opts.trend_candidates {
            self.trend.on_fill(page, prefetched);
        }
        let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
        let m = self.resident.entry(b).or_insert(0);
        if *m >> bit & 1 == 0 {
            self.resident_pages += 1;
        }
        *m |= 1 << bit;
    }

    fn on_evict(&mut self, page: PageNumber) {
        self.lists.on_evict(page);
        self.origin.remove(&page);
        if self.opts.scorer_threshold > 0.0 {
            self.scorer.forget(page);
        }
        if self.opts.trend_candidates {
            self.trend.on_evict(page);
        }
        let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
        if let Some(m) = self.resident.get_mut(&b) {
            if *m >> bit & 1 == 1 {
                self.resident_pages -= 1;
            }
            *m &= !(1 << bit);
            if *m == 0 {
                self.resident.remove(&b);
            }
        }
    }

    fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        // The working-set order's own tail probes (the model is not asked).
        self.lists.probes(max, out);
    }

    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        // The working-set order names candidates; pages of blocks the model expects
        // soon get one more round on the active list (at most n per call, so the
        // loop ends), the rest are the victims.
        if self.opts.keep_threshold > 1.0 {
            // The keep gate is off (the default): the working-set order decides alone.
            self.lists.victims(n, out);
            return;
        }
        let mut cands = std::mem::take(&mut self.candidates);
        cands.clear();
        // Candidates stay on the lists until evicted, so one call names enough of them.
        self.lists.victims(2 * n + 8, &mut cands);
        let start = out.len();
        let mut kept = 0;
        for &page in &cands {
            if out.len() - start >= n {
                break;
            }
            if kept < n && self.block_probability(page) >= self.opts.keep_threshold {
                self.lists.activate(page);
                kept += 1;
            } else {
                out.push(page);
            }
        }
        // Everything named is expected soon: evict the least recent anyway.
        for &page in &cands {
            if out.len() - start >= n {
                break;
            }
            if !out[start..].contains(&page) {
                out.push(page);
            }
        }
        self.candidates = cands;
    }

    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        let start = out.len();
        let cap = self.prefetch_cap().min(max);
        // Right after a demand fault: the pages that faulted after it last time.
        if let Some(mut page) = self.fault_page.take() {
            for depth in 0..self.opts.successor_depth as u32 {
                let Some(&next) = self.successor.get(&page) else {
                    break;
                };
                let record = self.link_outcomes.get(&page).copied();
                // A link is followed on its own record. With shadow outcomes a link
                // earns its first record without a prefetch; without them, a link
                // never tried is followed while untried links have been paying off in
                // this VM, and one in 8 anyway, so the estimate can recover.
                let link_ok = match record {
                    Some(r) => r.trusted(self.opts.source_threshold, self.opts.min_uses),
                    None if self.opts.shadow_horizon > 0.0 => false,
                    None => {
                        self.untried_seen += 1;
                        self.untried_link_outcomes.score() >= self.opts.untried_threshold
                            || self.untried_seen.is_multiple_of(8)
                    }
                };
                if !link_ok || out.len() - start >= cap {
                    if !self.lists.contains(next) {
                        self.add_shadow(ShadowKey::Link(page), next);
                    }
                    break;
                }
                if self.opts.protect_chain && self.lists.contains(next) {
                    // Resident and expected soon: keep it from the eviction order's tail.
                    self.lists.on_access(next, true);
                }
                if !self.lists.contains(next)
                    && !out[start..].contains(&next)
                    && self.block_probability(next) >= self.opts.fault_block_threshold
                    && self.admit(next, 0, depth, record.unwrap_or_default())
                {
                    out.push(next);
                    self.origin.insert(
                        next,
                        Source::Successor {
                            from: page,
                            untried: record.is_none(),
                        },
                    );
                }
                page = next;
            }
            // The chain is expected to be used without faulting, so the next demand
            // fault follows its last page, not the fault that started it: links then
            // extend the chain instead of replacing its first link.
            self.last_fault = Some(page);
        }
        if self.opts.first_touch_by_region {
            for i in 0..self.first_touch_candidates.len() {
                let page = self.first_touch_candidates[i];
                let region = page >> REGION_SHIFT;
                let record = self.first_touch_regions.get(&region).copied();
                if record.is_some_and(|r| r.trusted(self.opts.source_threshold, self.opts.min_uses))
                    && out.len() - start < cap
                    && !self.lists.contains(page)
                    && !out[start..].contains(&page)
                {
                    out.push(page);
                    self.origin.insert(page, Source::FirstTouch);
                    self.push_first_touch(page);
                } else if !self.lists.contains(page) {
                    self.add_shadow(ShadowKey::FirstTouch(region), page);
                }
            }
        } else if self.first_touch_outcomes.score() >= self.opts.source_threshold {
            for i in 0..self.first_touch_candidates.len() {
                let page = self.first_touch_candidates[i];
                if out.len() - start >= cap {
                    break;
                }
                if !self.lists.contains(page)
                    && !out[start..].contains(&page)
                    && self.admit(page, 2, 0, self.first_touch_outcomes)
                {
                    out.push(page);
                    self.origin.insert(page, Source::FirstTouch);
                    // Expected to be first-touched without a fault: the run goes on
                    // from here, as successor chains do.
                    self.push_first_touch(page);
                }
            }
        }
        self.first_touch_candidates.clear();
        if self.opts.trend_candidates {
            let mut trend = std::mem::take(&mut self.candidates);
            trend.clear();
            let lists = &self.lists;
            self.trend
                .drain_pending(cap, |p| lists.contains(p), &mut trend);
            if self.trend_outcomes.score() >= self.opts.source_threshold {
                for &page in &trend {
                    if out.len() - start >= cap {
                        break;
                    }
                    if !self.lists.contains(page)
                        && !out[start..].contains(&page)
                        && self.block_probability(page) >= self.opts.fault_block_threshold
                        && self.admit(page, 1, 0, self.trend_outcomes)
                    {
                        out.push(page);
                        self.origin.entry(page).or_insert(Source::Trend);
                    }
                }
            }
            self.candidates = trend;
        }
        while out.len() - start < max && self.prefetch_cursor < self.prefetch_queue.len() {
            let page = self.prefetch_queue[self.prefetch_cursor];
            self.prefetch_cursor += 1;
            if !self.lists.contains(page) && !out[start..].contains(&page) {
                out.push(page);
            }
        }
    }

    fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
        self.scorer.outcome(page, used);
        match self.origin.remove(&page) {
            Some(Source::Successor { from, untried }) => {
                self.link_outcomes.entry(from).or_default().record(used);
                if untried {
                    self.untried_link_outcomes.record(used);
                }
            }
            Some(Source::Trend) => self.trend_outcomes.record(used),
            Some(Source::FirstTouch) => {
                self.first_touch_outcomes.record(used);
                self.first_touch_regions
                    .entry(page >> REGION_SHIFT)
                    .or_default()
                    .record(used);
            }
            None => {}
        }
    }

    fn probability(&self, page: PageNumber) -> f32 {
        self.block_probability(page)
            .max(self.opts.probability_floor)
    }

    fn end_window(&mut self, now_ns: u64) {
        self.ticks += 1;
        if self.fx.window_accesses() < self.opts.min_window_events
            && self.ticks < self.opts.max_window_ticks
        {
            return;
        }
        self.ticks = 0;
        let start = Instant::now();
        let window = self.fx.window();
        // Blocks touched in the window that just ended, for the loss and drift signals.
        let mut touched: Vec<u64> = self.fx.active_blocks().to_vec();
        touched.sort_unstable();
        let loss = self.window_loss(&touched);
        let event = self.detector.observe(window, now_ns, loss, &touched);
        let mut samples: Vec<Sample> = Vec::new();
        // Nobody learns from samples with online learning off and no sink.
        let wanted = if self.learner.mode() == OnlineMode::Off && self.sink.is_none() {
            0
        } else {
            self.opts.samples_per_window
        };
        self.fx.end_window(&mut self.batch, &mut samples, wanted);
        if event.is_some() {
            self.learner.boost();
            if self.opts.reset_on_anomaly {
                self.hidden.clear();
            }
        }
        self.step_model();
        if let Some(sink) = &self.sink {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(samples.iter().cloned());
        }
        if let Some(m) = self.learner.end_window(samples) {
            self.cell = GruCell::from_model(&m);
            self.model = m;
            self.stats.weight_updates += 1;
        }
        if self.opts.window_prefetch {
            self.plan_prefetch();
        }
        if window % 64 == 63 {
            let resident = &self.resident;
            self.fx.prune(|b| resident.contains_key(&b));
        }
        self.stats.windows += 1;
        self.stats.end_window_ns += start.elapsed().as_nanos() as u64;
    }
}
