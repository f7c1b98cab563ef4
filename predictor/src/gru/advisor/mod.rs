//! `GruAdvisor`: per-block GRU hidden states stepped once per model window, around
//! Linux's working-set eviction order and prefetch sources judged by their record.
//!
//! `on_access` counts (the feature extractor), keeps the working-set lists and the
//! fault stream's successor table; `end_window` steps the hidden states of the active
//! blocks through [`GruCell`], learns online and watches for pattern changes;
//! `prefetch` follows successor chains and first-touch runs while their candidates are
//! used (`sources.rs`; the records in `gru::outcomes`). The block probabilities give
//! `probability()` (tier placement); as gates on the decisions they are optional
//! (docs/predictor.md). Tunables: `options.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use rustc_hash::FxHashMap;
use tiering::access::{Access, AccessSource, PageNumber};
use tiering::advisor::Advisor;

use crate::baselines::{LeapAdvisor, Readahead, WorkingSet};
use crate::pagetable::PageTable;
use crate::saved_model::{fine_tuned_description, ModelSaver, SavedModel};

use super::anomaly::{AnomalyDetector, AnomalyEvent};
use super::cell::GruCell;
use super::features::{FeatureExtractor, Sample, WindowBatch};
use super::model::{AccessModel, ModelFileError, ModelMeta};
use super::online::{OnlineLearner, OnlineMode};
use super::outcomes::{Outcomes, ShadowKey, Shadows};
use super::prior::{FirstTouchPrior, PriorCursor};
use super::scorer::CandidateScorer;

mod facts;
mod options;
mod sources;

use facts::PageFacts;

pub use options::GruOptions;

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
    /// The first-touch prior's zero fills that were used, and evicted unused.
    pub prior_used: u64,
    pub prior_wasted: u64,
}

/// Most successor links kept, and most fault pairs in the two-fault table: 1 M each,
/// so the pair table stays in the tens of MB however much memory the VM touches. (The
/// links live in the pages' records, which every touched page has anyway; they start
/// over with the pair table, as they did when they had a table of their own.)
const MAX_LINKS: usize = 1 << 20;
/// The context record's least score for the marker (`readahead_context_marker`): a
/// margin over the 0.9 it needs to be followed at all, so that the marker's windows
/// read past a sweep's end cannot take the record under that threshold.
const CONTEXT_MARKER_MIN_SCORE: f32 = 0.95;

/// The key of the fault pair (`before`, `page`) in the two-fault successor table: a
/// hash, since a 64-bit collision only costs a wrong confirmation now and then.
fn pair_key(before: PageNumber, page: PageNumber) -> u64 {
    before.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ page
}

/// Where a prefetch candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The page faulted after this page last time; `untried`: the link had no
    /// outcome yet when it was followed.
    Successor {
        from: PageNumber,
        untried: bool,
    },
    Trend,
    /// A page never touched, next to a run of first touches.
    FirstTouch,
    /// The window of a confirmed fault stream (kernel-style readahead); `context`: of
    /// a stream the resident pages before a fault started.
    Readahead {
        context: bool,
    },
    /// A page the first-touch prior expects to be touched next.
    Prior,
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
    /// Resident pages per block (bit i = page i of the block), by block number: a
    /// dense table, as every fill and eviction looks its block up.
    resident: PageTable<u64>,
    resident_pages: usize,
    /// Eviction order: Linux's active/inactive lists with refault activation. Its
    /// page records hold the advisor's facts about each page too ([`PageFacts`]: the
    /// page that faulted next, that link's record, the source that prefetched it).
    lists: WorkingSet<PageFacts>,
    /// Pages with a successor in their facts.
    links: usize,
    /// For each pair of successive faults ([`pair_key`]), the page that faulted next:
    /// the two-fault context that confirms a link (`GruOptions::link_context`).
    pair_successor: FxHashMap<u64, PageNumber>,
    last_fault: Option<PageNumber>,
    /// The fault before `last_fault` (or the page before it on a followed chain).
    fault_before_last: Option<PageNumber>,
    candidates: Vec<PageNumber>,
    /// The fault-trend prefetcher whose candidates are scored too.
    trend: LeapAdvisor,
    trend_outcomes: Outcomes,
    /// Readahead of fault streams, and the record of its candidates.
    readahead: Readahead,
    readahead_outcomes: Outcomes,
    /// A second readahead that follows the streams [`Readahead::on_fault_in_context`]
    /// starts (`GruOptions::readahead_context`), apart from the first, so that it
    /// changes nothing of what the first follows and records.
    context_readahead: Readahead,
    /// The record of the windows of streams started by context
    /// (`GruOptions::readahead_context`).
    context_outcomes: Outcomes,
    /// Outcomes of prefetches through links that had none yet.
    untried_link_outcomes: Outcomes,
    untried_seen: u64,
    /// Candidates not prefetched, waiting for their outcome.
    shadows: Shadows,
    /// Outcomes of first-touch candidates per 2 MiB region.
    first_touch_regions: FxHashMap<u64, Outcomes>,
    scorer: CandidateScorer,
    /// Every page ever observed (first touches are not predicted by the other sources).
    seen: super::pageset::PageSet,
    /// The last first-touch faults, most recent last.
    recent_first_touches: std::collections::VecDeque<PageNumber>,
    /// Never-touched pages that continue a run of first touches, for the next prefetch.
    first_touch_candidates: Vec<PageNumber>,
    /// The first-touch prior (`GruOptions::first_touch_prior`), where this VM is in
    /// it, and the pages it named at the last first-touch fault.
    prior: Option<Arc<FirstTouchPrior>>,
    prior_cursor: PriorCursor,
    prior_candidates: Vec<PageNumber>,
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
    /// The last demand fault continued the readahead's stream.
    fault_in_stream: bool,
    /// The pages the last followed chain prefetched, in order, until the next demand
    /// fault (`GruOptions::chain_inference` only; the chain ended on `last_fault`).
    last_chain: Vec<PageNumber>,
    pub stats: GruStats,
    /// Where to write the model when the advisor ends (the per-VM model).
    saver: Option<ModelSaver>,
}

impl GruAdvisor {
    /// An advisor around `model` (e.g. the shipped base model).
    pub fn new(model: AccessModel, meta: ModelMeta, opts: GruOptions) -> Self {
        let mut cfg = meta.feature_config();
        cfg.max_stepped = opts.max_stepped;
        if let Some(idle) = opts.idle_windows {
            cfg.idle_windows = idle;
        }
        let learner = OnlineLearner::new(&model, opts.online);
        let hidden = model.hidden();
        let lists = WorkingSet::new(opts.inactive_percent)
            .with_probe_reprieve(opts.probe_reprieve)
            .with_probes_always(opts.probes_always)
            .with_prefetch_activation(opts.prefetch_activation);
        GruAdvisor {
            fx: FeatureExtractor::new(cfg),
            cell: GruCell::from_model(&model),
            model,
            meta,
            opts,
            hidden: HiddenStates::default(),
            step_buffers: StepBuffers::default(),
            resident: PageTable::default(),
            resident_pages: 0,
            lists,
            links: 0,
            pair_successor: FxHashMap::default(),
            last_fault: None,
            fault_before_last: None,
            candidates: Vec::new(),
            trend: LeapAdvisor::trend_only(),
            trend_outcomes: Outcomes::default(),
            readahead: if opts.readahead_lenient {
                Readahead::lenient()
            } else {
                Readahead::default()
            },
            readahead_outcomes: Outcomes::default(),
            context_readahead: Readahead::default(),
            context_outcomes: Outcomes::default(),
            untried_link_outcomes: Outcomes::default(),
            untried_seen: 0,
            shadows: Shadows::default(),
            first_touch_regions: FxHashMap::default(),
            scorer: CandidateScorer::new(hidden),
            seen: Default::default(),
            recent_first_touches: Default::default(),
            first_touch_candidates: Vec::new(),
            prior: None,
            prior_cursor: PriorCursor::default(),
            prior_candidates: Vec::new(),
            first_touch_outcomes: Outcomes::default(),
            prefetch_queue: Vec::new(),
            prefetch_cursor: 0,
            batch: WindowBatch::default(),
            learner,
            detector: AnomalyDetector::new(opts.anomaly),
            sink: None,
            ticks: 0,
            last_chain: Vec::new(),
            fault_page: None,
            fault_in_stream: false,
            stats: GruStats::default(),
            saver: None,
        }
    }

    /// Load a model file and build an advisor around it.
    pub fn from_file(path: &Path, opts: GruOptions) -> Result<Self, ModelFileError> {
        let (model, meta) = AccessModel::load(path, &Device::flex())?;
        Ok(Self::new(model, meta, opts))
    }

    /// The first-touch prior to follow when `GruOptions::first_touch_prior` is on.
    pub fn set_first_touch_prior(&mut self, prior: Arc<FirstTouchPrior>) {
        self.prior = Some(prior);
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

    /// Write the model to `saver`'s file when the advisor ends (is dropped), with
    /// the weights online learning has installed by then: the VM's own model.
    pub fn save_at_end(&mut self, saver: ModelSaver) {
        self.saver = Some(saver);
    }

    /// Writes the current model, its metadata saying it was fine-tuned online.
    pub fn save_model(&self, path: &Path) -> Result<SavedModel, ModelFileError> {
        let mut meta = self.meta.clone();
        meta.trained_on = fine_tuned_description(&meta.trained_on, self.stats.weight_updates);
        self.model.save(&meta, path)?;
        Ok(SavedModel {
            path: path.display().to_string(),
            weight_updates: self.stats.weight_updates,
            trained_on: meta.trained_on,
        })
    }

    pub(super) fn tracks_first_touches(&self) -> bool {
        self.opts.first_touch_run > 0 || self.prior.is_some()
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
        // The hidden states are exactly those of the blocks of the last step.
        for &b in touched {
            if self.hidden_row(b).is_none() {
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
        for (f, &last) in self.batch.features.iter().zip(&self.batch.last_steps) {
            buf.xs.extend_from_slice(f);
            match self.hidden.row(last, h) {
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
        // The stepped states become current (blocks no longer stepped lose their state
        // and their probability: they count as cold); the old buffers are reused.
        self.hidden.window = Some(self.batch.window);
        std::mem::swap(&mut self.hidden.data, &mut buf.hs);
        std::mem::swap(&mut self.hidden.probs, &mut buf.p);
    }

    fn block_probability(&self, page: PageNumber) -> f32 {
        self.block_prob(self.fx.cfg.block_of(page)).unwrap_or(0.0)
    }

    /// The row of `block`'s hidden state and probability, if the last step took it.
    fn hidden_row(&self, block: u64) -> Option<usize> {
        let last = self.fx.block(block)?.last_step();
        self.hidden.index(last)
    }

    /// `block`'s probability from the last step, if that step took it.
    pub(super) fn block_prob(&self, block: u64) -> Option<f32> {
        self.hidden.probs.get(self.hidden_row(block)?).copied()
    }
}

/// The states of the last model step, in the order of that step's batch: row i's
/// hidden state is `data[i * hidden..][..hidden]` and its probability `probs[i]`. A
/// block finds its row through the feature extractor ([`BlockTrack::last_step`]),
/// which records it as the step is built.
///
/// [`BlockTrack::last_step`]: super::features::BlockTrack::last_step
#[derive(Debug, Default)]
struct HiddenStates {
    /// The window of the step these states are from (`None`: none, or forgotten).
    window: Option<u64>,
    data: Vec<f32>,
    probs: Vec<f32>,
}

impl HiddenStates {
    /// The row a block stepped at `last` (window, row) has here, if that was this step.
    fn index(&self, last: Option<(u64, u32)>) -> Option<usize> {
        let (window, row) = last?;
        (Some(window) == self.window).then_some(row as usize)
    }

    fn row(&self, last: Option<(u64, u32)>, hidden: usize) -> Option<&[f32]> {
        self.state(self.index(last)?, hidden)
    }

    /// Row `i`'s hidden state (`hidden` floats).
    fn state(&self, i: usize, hidden: usize) -> Option<&[f32]> {
        self.data.get(i * hidden..(i + 1) * hidden)
    }

    /// Forgets every state (a pattern change); the model step that follows starts the
    /// blocks it steps from zero.
    fn clear(&mut self) {
        self.window = None;
        self.data.clear();
        self.probs.clear();
    }
}

#[derive(Debug, Default)]
struct StepBuffers {
    xs: Vec<f32>,
    hs: Vec<f32>,
    p: Vec<f32>,
}

impl Drop for GruAdvisor {
    /// Saves the model if asked to ([`GruAdvisor::save_at_end`]); the outcome goes to
    /// the saver, where the caller reads it.
    fn drop(&mut self) {
        if let Some(saver) = self.saver.take() {
            let outcome = self.save_model(saver.path()).map_err(|e| e.to_string());
            saver.record(outcome);
        }
    }
}

impl Advisor for GruAdvisor {
    fn name(&self) -> &str {
        "gru"
    }

    fn on_access(&mut self, access: &Access, resident: bool) {
        self.fx.on_access(access);
        let late_prefetch = resident && access.source == AccessSource::MissingFault;
        if !late_prefetch || self.opts.activate_on_late_prefetch {
            self.lists.on_access(access.page, resident);
        }
        if self.opts.trend_candidates {
            self.trend.on_access(access, resident);
        }
        if self.opts.readahead_min_window > 0 {
            if resident {
                if late_prefetch
                    && self.opts.readahead_late_inference
                    && self.opts.readahead_walk_inference
                {
                    self.infer_late_stream_use(access.page);
                }
                if self.opts.readahead_marker {
                    self.readahead.on_observed(access.page);
                }
                if self.opts.readahead_context_marker
                    && self.context_readahead.stride().abs() == 1
                    && self.context_outcomes.score() >= CONTEXT_MARKER_MIN_SCORE
                {
                    self.context_readahead.on_observed(access.page);
                }
            } else {
                self.fault_in_stream = self.readahead.on_fault(access.page);
                if self.fault_in_stream && self.opts.readahead_walk_inference {
                    self.infer_stream_use(access.page, self.readahead.stride());
                }
                if self.opts.readahead_context {
                    let lists = &self.lists;
                    let walked = self
                        .context_readahead
                        .on_fault_in_context(access.page, |p| lists.contains(p));
                    if walked
                        && self.context_readahead.by_context()
                        && self.opts.readahead_walk_inference
                    {
                        self.infer_stream_use(access.page, self.context_readahead.stride());
                    }
                }
            }
        }
        if !resident {
            let page = access.page;
            self.detector.on_fault(page, access.vcpu);
            self.infer_chain_use(page);
            let (lists, regions) = (&mut self.lists, &mut self.first_touch_regions);
            let (ahead, context) = (&mut self.readahead_outcomes, &mut self.context_outcomes);
            let maybe_pending = lists.data_mut(page).take_shadowed();
            self.shadows
                .on_demand_fault(page, maybe_pending, |key, used| match key {
                    ShadowKey::Link(from) => lists.data_mut(from).link_mut().record(used),
                    ShadowKey::FirstTouch(r) => regions.entry(r).or_default().record(used),
                    ShadowKey::Readahead => ahead.record(used),
                    ShadowKey::ContextReadahead => context.record(used),
                });
            if let Some(prev) = self.last_fault.filter(|&p| p != page) {
                if self.lists.data_mut(prev).set_successor(page) {
                    self.links += 1;
                }
                if let Some(before) = self.fault_before_last {
                    self.pair_successor.insert(pair_key(before, prev), page);
                }
                self.fault_before_last = Some(prev);
                self.bound_successor_tables();
            }
            self.last_fault = Some(page);
            self.fault_page = Some(page);
            // The set of pages ever seen serves the first-touch sources only.
            if self.tracks_first_touches() && self.note_seen(page) {
                self.note_first_touch(page);
            }
        } else if self.tracks_first_touches() {
            self.note_seen(access.page);
        }
    }

    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        if prefetched && self.lists.data_mut(page).take_shadowed() {
            self.shadows.forget(page);
        }
        self.lists.on_fill(page, prefetched);
        if self.opts.trend_candidates {
            self.trend.on_fill(page, prefetched);
        }
        let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
        let m = self.resident.get_mut(b);
        if *m >> bit & 1 == 0 {
            self.resident_pages += 1;
        }
        *m |= 1 << bit;
    }

    fn on_evict(&mut self, page: PageNumber) {
        self.lists.on_evict(page);
        self.lists.data_mut(page).set_origin(None);
        if self.opts.scorer_threshold > 0.0 {
            self.scorer.forget(page);
        }
        if self.opts.trend_candidates {
            self.trend.on_evict(page);
        }
        let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
        if let Some(m) = self.resident.get_mut_if_present(b).filter(|m| **m != 0) {
            if *m >> bit & 1 == 1 {
                self.resident_pages -= 1;
            }
            *m &= !(1 << bit);
            if *m == 0 {
                self.fx.release(b);
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
        self.prefetch_candidates(max, out);
    }

    fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
        self.record_outcome(page, used);
    }

    fn wants_hot_set(&self) -> bool {
        self.opts.hot_set
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
        let mut touched: Vec<u64> = self.fx.active_blocks().collect();
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
            self.fx.prune(|b| *resident.get(b) != 0);
        }
        self.stats.windows += 1;
        self.stats.end_window_ns += start.elapsed().as_nanos() as u64;
    }
}
