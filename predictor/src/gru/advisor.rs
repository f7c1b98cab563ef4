//! `GruAdvisor`: per-block GRU hidden states stepped once per window.
//!
//! `on_access` only counts (the feature extractor); `end_window` steps the hidden
//! states of the blocks that are active or candidates in one batched forward pass,
//! learns online, watches for pattern changes, and prepares the victim order and the
//! prefetch list that `victims` and `prefetch` then hand out.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::anomaly::{AnomalyConfig, AnomalyDetector, AnomalyEvent};
use super::features::{
    BlockMap, FeatureConfig, FeatureExtractor, Sample, WindowBatch, NUM_FEATURES,
};
use super::model::{tensor2, to_vec, AccessModel, ModelFileError, ModelMeta};
use super::online::{OnlineConfig, OnlineLearner};

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
    /// Victim order: probability buckets (0 = order by recency only).
    pub prob_buckets: u32,
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
            fault_block_threshold: 0.9,
            max_prefetch_per_window: 512,
            prefetch_ram_divisor: 16,
            probability_floor: 0.25,
            samples_per_window: 32,
            reset_on_anomaly: false,
            prob_buckets: 10,
            online: OnlineConfig::default(),
            anomaly: AnomalyConfig::default(),
            max_stepped: FeatureConfig::default().max_stepped,
            min_window_events: 64,
            max_window_ticks: 10,
        }
    }
}

impl GruOptions {
    /// Defaults, with `TIERVISOR_GRU_PREFETCH_THRESHOLD` and `TIERVISOR_GRU_PREFETCH_DIVISOR`
    /// overriding the prefetch threshold and RAM divisor (for experiments with replay).
    pub fn from_env() -> Self {
        let mut o = GruOptions::default();
        let var = |k: &str| std::env::var(k).ok();
        if let Some(t) = var("TIERVISOR_GRU_PREFETCH_THRESHOLD").and_then(|v| v.parse().ok()) {
            o.prefetch_threshold = t;
            o.fault_block_threshold = t;
        }
        if let Some(d) = var("TIERVISOR_GRU_PREFETCH_DIVISOR").and_then(|v| v.parse().ok()) {
            o.prefetch_ram_divisor = d;
        }
        if let Some(f) = var("TIERVISOR_GRU_PROBABILITY_FLOOR").and_then(|v| v.parse().ok()) {
            o.probability_floor = f;
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

/// The GRU advisor.
pub struct GruAdvisor {
    fx: FeatureExtractor,
    model: AccessModel,
    meta: ModelMeta,
    device: Device,
    opts: GruOptions,
    hidden: BlockMap<Vec<f32>>,
    prob: BlockMap<f32>,
    /// Resident pages per block (bit i = page i of the block).
    resident: BlockMap<u64>,
    resident_pages: usize,
    victim_order: Vec<u64>,
    victim_cursor: usize,
    victim_fresh: bool,
    prefetch_queue: Vec<PageNumber>,
    prefetch_cursor: usize,
    batch: WindowBatch,
    learner: OnlineLearner,
    detector: AnomalyDetector,
    sink: Option<super::collect::SampleSink>,
    /// Driver windows since the model last stepped.
    ticks: u64,
    /// Block of the most recent demand fault, for fault-driven prefetch.
    last_fault_block: Option<u64>,
    pub stats: GruStats,
}

impl GruAdvisor {
    /// An advisor around `model` (e.g. the shipped base model).
    pub fn new(model: AccessModel, meta: ModelMeta, opts: GruOptions) -> Self {
        let mut cfg = meta.feature_config();
        cfg.max_stepped = opts.max_stepped;
        let learner = OnlineLearner::new(&model, opts.online);
        GruAdvisor {
            fx: FeatureExtractor::new(cfg),
            model,
            meta,
            device: Device::flex(),
            opts,
            hidden: BlockMap::default(),
            prob: BlockMap::default(),
            resident: BlockMap::default(),
            resident_pages: 0,
            victim_order: Vec::new(),
            victim_cursor: 0,
            victim_fresh: false,
            prefetch_queue: Vec::new(),
            prefetch_cursor: 0,
            batch: WindowBatch::default(),
            learner,
            detector: AnomalyDetector::new(opts.anomaly),
            sink: None,
            ticks: 0,
            last_fault_block: None,
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
        for &b in &self.batch.blocks {
            let p = self.prob.get(&b).copied().unwrap_or(0.0);
            sum += bce(p, touched.binary_search(&b).is_ok());
            n += 1;
        }
        let stepped: BlockMap<()> = self.batch.blocks.iter().map(|&b| (b, ())).collect();
        for &b in touched {
            if !stepped.contains_key(&b) {
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
        let mut xs = Vec::with_capacity(n * NUM_FEATURES);
        let mut hs = Vec::with_capacity(n * h);
        for (b, f) in self.batch.blocks.iter().zip(&self.batch.features) {
            xs.extend_from_slice(f);
            match self.hidden.get(b) {
                Some(v) => hs.extend_from_slice(v),
                None => hs.resize(hs.len() + h, 0.0),
            }
        }
        let start = Instant::now();
        let (new_h, p) = self.model.step(
            tensor2(xs, n, NUM_FEATURES, &self.device),
            tensor2(hs, n, h, &self.device),
        );
        let (new_h, p) = (to_vec(new_h), to_vec(p));
        let ns = start.elapsed().as_nanos() as u64;
        self.stats.inference_ns += ns;
        self.stats.max_step_ns = self.stats.max_step_ns.max(ns);
        self.stats.stepped_blocks += n as u64;
        let mut next_hidden = BlockMap::default();
        next_hidden.reserve(n);
        for (i, &b) in self.batch.blocks.iter().enumerate() {
            next_hidden.insert(b, new_h[i * h..(i + 1) * h].to_vec());
            self.prob.insert(b, p[i]);
        }
        // Blocks no longer stepped lose their state; their probability decays to "cold".
        for b in self.hidden.keys() {
            if !next_hidden.contains_key(b) {
                self.prob.remove(b);
            }
        }
        self.hidden = next_hidden;
    }

    /// Non-resident pages of high-probability blocks, most likely first.
    fn plan_prefetch(&mut self) {
        self.prefetch_queue.clear();
        self.prefetch_cursor = 0;
        let mut cands: Vec<(f32, u64)> = self
            .batch
            .blocks
            .iter()
            .filter_map(|b| self.prob.get(b).map(|&p| (p, *b)))
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

    /// Resident blocks ordered least wanted first: blocks no longer stepped (cold, by
    /// last touch), then stepped blocks by probability bucket, then by last touch.
    fn rebuild_victims(&mut self) {
        let buckets = self.opts.prob_buckets as f32;
        let fx = &self.fx;
        let prob = &self.prob;
        let mut keyed: Vec<(u32, u64, u64)> = self
            .resident
            .iter()
            .filter(|(_, m)| **m != 0)
            .map(|(&b, _)| {
                let last = fx
                    .blocks
                    .get(&b)
                    .map_or(0, |t| t.last_touch.wrapping_add(1));
                let bucket = prob.get(&b).map_or(0, |p| 1 + (p * buckets) as u32);
                (bucket, last, b)
            })
            .collect();
        keyed.sort_unstable();
        self.victim_order = keyed.into_iter().map(|k| k.2).collect();
        self.victim_cursor = 0;
        self.victim_fresh = true;
    }

    fn emit_victims(&mut self, n: usize, out: &mut Vec<PageNumber>, skip_hot: bool) {
        let bp = self.block_pages();
        let start = out.len();
        while out.len() - start < n && self.victim_cursor < self.victim_order.len() {
            let b = self.victim_order[self.victim_cursor];
            let mask = self.resident.get(&b).copied().unwrap_or(0);
            if mask == 0 || (skip_hot && self.fx.touched_now(b * bp)) {
                self.victim_cursor += 1;
                continue;
            }
            for bit in 0..bp {
                if mask >> bit & 1 == 1 && out.len() - start < n {
                    out.push(b * bp + bit);
                }
            }
            self.victim_cursor += 1;
        }
    }
}

impl Advisor for GruAdvisor {
    fn name(&self) -> &str {
        "gru"
    }

    fn on_access(&mut self, access: &Access, resident: bool) {
        self.fx.on_access(access);
        if !resident {
            self.last_fault_block = Some(self.fx.cfg.block_of(access.page));
        }
    }

    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
        let m = self.resident.entry(b).or_insert(0);
        if *m >> bit & 1 == 0 {
            self.resident_pages += 1;
        }
        *m |= 1 << bit;
    }

    fn on_evict(&mut self, page: PageNumber) {
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

    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let start = out.len();
        if !self.victim_fresh || self.victim_cursor >= self.victim_order.len() {
            self.rebuild_victims();
        }
        self.emit_victims(n, out, true);
        if out.len() - start < n {
            // Everything left was touched in this window: fall back to any resident page.
            self.rebuild_victims();
            let got = out.len() - start;
            self.emit_victims(n - got, out, false);
        }
    }

    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        let mut given = 0;
        // Right after a fault: the rest of the faulting block, if the model expects it.
        let cap = self.prefetch_cap();
        if let Some(b) = self.last_fault_block.take() {
            if self
                .prob
                .get(&b)
                .is_some_and(|&p| p >= self.opts.fault_block_threshold)
            {
                let bp = self.block_pages();
                let ever = self.fx.blocks.get(&b).map_or(0, |t| t.ever_mask);
                let missing = ever & !self.resident.get(&b).copied().unwrap_or(0);
                for bit in 0..bp {
                    if given < max.min(cap) && missing >> bit & 1 == 1 {
                        out.push(b * bp + bit);
                        given += 1;
                    }
                }
            }
        }
        while given < max && self.prefetch_cursor < self.prefetch_queue.len() {
            let page = self.prefetch_queue[self.prefetch_cursor];
            self.prefetch_cursor += 1;
            let (b, bit) = (self.fx.cfg.block_of(page), self.fx.cfg.bit_of(page));
            if self.resident.get(&b).is_some_and(|m| m >> bit & 1 == 1) {
                continue;
            }
            out.push(page);
            given += 1;
        }
    }

    fn probability(&self, page: PageNumber) -> f32 {
        let p = self
            .prob
            .get(&self.fx.cfg.block_of(page))
            .copied()
            .unwrap_or(0.0);
        p.max(self.opts.probability_floor)
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
        self.fx
            .end_window(&mut self.batch, &mut samples, self.opts.samples_per_window);
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
            self.model = m;
            self.stats.weight_updates += 1;
        }
        self.plan_prefetch();
        self.victim_fresh = false;
        if window % 64 == 63 {
            let resident = &self.resident;
            self.fx.prune(|b| resident.contains_key(&b));
        }
        self.stats.windows += 1;
        self.stats.end_window_ns += start.elapsed().as_nanos() as u64;
    }
}
