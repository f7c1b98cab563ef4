//! Per-block features over windows: the input of the GRU and of its training.
//!
//! The extractor is fed every observed access (`on_access`, O(1): a table lookup and a
//! few counter updates) and closes a window with `end_window`, which turns each tracked
//! block's counters into one feature vector. It knows nothing about residency or the
//! model, so offline training on a trace and the live advisor see identical features.

use tiering::access::{Access, AccessOp, PageKind, PageNumber};

use crate::pagetable::PageTable;

/// Number of features per block per window (part of the model file's identity).
pub const NUM_FEATURES: usize = 16;

/// Name of the feature set stored in model files; bump when features change meaning.
pub const FEATURE_SET: &str = "blk16-v1";

/// Recency saturates here (windows); also the width of the touch history.
const MAX_GAP: u64 = 63;

/// How the extractor groups pages and which blocks it keeps stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureConfig {
    /// log2 of pages per block (at most 6: a block's pages fit a u64 mask).
    pub block_shift: u32,
    /// A block touched in none of the last `idle_windows` windows stops being stepped.
    pub idle_windows: u64,
    /// Windows of history in one training sample (truncated back-propagation).
    pub seq_len: usize,
    /// Target: the block is touched within the next `horizon` windows.
    pub horizon: usize,
    /// At most this many blocks are stepped per window (touched blocks first).
    pub max_stepped: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            block_shift: 4,
            idle_windows: 8,
            seq_len: 8,
            horizon: 2,
            max_stepped: 16384,
        }
    }
}

impl FeatureConfig {
    /// Pages per block.
    pub fn block_pages(&self) -> u64 {
        1 << self.block_shift
    }
    /// Block holding `page`.
    pub fn block_of(&self, page: PageNumber) -> u64 {
        page >> self.block_shift
    }
    /// Index of `page` within its block.
    pub fn bit_of(&self, page: PageNumber) -> u32 {
        (page & (self.block_pages() - 1)) as u32
    }
}

/// Counters of one block in the current window.
#[derive(Debug, Clone, Copy, Default)]
struct WindowCounts {
    count: u32,
    reads: u32,
    writes: u32,
    execs: u32,
    code: u32,
    shared: u32,
    sequential: u32,
    same_stride: u32,
    vcpus: u64,
    pages: u64,
}

/// No counters: the block is not touched in the current window.
const NO_COUNTS: u32 = u32::MAX;

/// Everything the extractor remembers about one block, in one cache line: a window
/// steps about ten blocks for each it touches, most of them idle, so each row of the
/// step should cost one miss. The counters of the current window are apart, for the
/// touched blocks only ([`FeatureExtractor::counts`]).
#[derive(Debug, Clone)]
#[repr(align(64))]
pub struct BlockTrack {
    /// The block's number.
    block: u64,
    /// Its counters' index in the current window (`NO_COUNTS`: not touched in it).
    counts: u32,
    /// Window of the most recent touch (`u64::MAX` if never).
    pub last_touch: u64,
    /// Pages of the block ever touched (bit i = page i of the block).
    pub ever_mask: u64,
    /// Bit i set: touched in window `hist_window - i`.
    touch_hist: u64,
    /// The last window whose step took it (`u64::MAX`: none yet).
    hist_window: u64,
    /// Whether the block is stepped every window.
    pub tracked: bool,
    /// `window + 1` of the last window whose step set took it (0: never), so building
    /// the set needs no map of its own.
    step_stamp: u64,
    /// Whether the blocks before (bit 0) and after (bit 1) it were touched in the window
    /// whose `step_stamp` it has, set while the step set is built.
    neighbours_touched: u8,
    /// Windows it was stepped in a row up to `hist_window` (at most the sample length):
    /// its features of those windows are in the extractor's history.
    run: u32,
    /// Its row in the batch of window `hist_window`.
    row: u32,
}

// One cache line, as its comment says.
const _: () = assert!(std::mem::size_of::<BlockTrack>() == 64);

impl BlockTrack {
    fn new(block: u64) -> Self {
        BlockTrack {
            block,
            counts: NO_COUNTS,
            last_touch: u64::MAX,
            ever_mask: 0,
            touch_hist: 0,
            hist_window: u64::MAX,
            tracked: false,
            step_stamp: 0,
            neighbours_touched: 0,
            run: 0,
            row: 0,
        }
    }
    /// The last window whose step took the block, and its row in that window's batch.
    pub fn last_step(&self) -> Option<(u64, u32)> {
        (self.hist_window != u64::MAX).then_some((self.hist_window, self.row))
    }
    /// Whether the block was touched in window `w` (only reliable for the last 63).
    pub fn touched_in(&self, w: u64) -> bool {
        w <= self.hist_window
            && self.hist_window - w <= MAX_GAP
            && self.touch_hist >> (self.hist_window - w) & 1 == 1
    }
}

/// One training example: a block's features over `seq_len` windows and, per window,
/// whether it was touched within the following `horizon` windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub features: Vec<[f32; NUM_FEATURES]>,
    pub labels: Vec<f32>,
}

/// The blocks stepped at the end of a window with their feature vectors.
#[derive(Debug, Default)]
pub struct WindowBatch {
    pub window: u64,
    pub blocks: Vec<u64>,
    pub features: Vec<[f32; NUM_FEATURES]>,
    /// For each block, the window and row of the step that took it before this one
    /// ([`BlockTrack::last_step`] before this window), so a caller that keeps state
    /// per stepped row finds the block's previous row without a map of its own.
    pub last_steps: Vec<Option<(u64, u32)>>,
}

/// Turns a stream of accesses into per-block feature vectors, one per window.
pub struct FeatureExtractor {
    pub cfg: FeatureConfig,
    /// Each block's slot in `tracks` plus one (0: none), in a dense table by block
    /// number: every access looks its block up, and neighbouring blocks' entries share
    /// cache lines. The per-window lists below hold slots, so closing a window looks a
    /// block up by number only to find the neighbours of touched blocks.
    slots: PageTable<u32>,
    tracks: Vec<BlockTrack>,
    /// Slots of pruned blocks, for reuse.
    free: Vec<u32>,
    /// Slots whose blocks may have become prunable since the last prune (they stopped
    /// being tracked, or the caller let go of them): `prune` looks at these only, not
    /// at every block (a walk of all of them cost a tenth of the advisor's time on a
    /// 4 GiB VM).
    prune_candidates: Vec<u32>,
    /// The block of the last access and its slot: runs of accesses to one block (a
    /// stream's pages) skip the lookup.
    last_slot: Option<(u64, u32)>,
    /// Blocks touched in the current window, in first-touch order.
    active: Vec<u32>,
    /// Their counters, in the same order ([`BlockTrack::counts`] is the index).
    counts: Vec<WindowCounts>,
    /// Blocks stepped in the previous window that are still tracked.
    tracked: Vec<u32>,
    prev_page: Vec<(u64, i64)>,
    window: u64,
    window_accesses: u64,
    /// The stepped blocks' features of the last `seq_len + horizon` windows, oldest
    /// first, for training samples. A block's row in one window links to its row in
    /// the window before, so the features are written once, in batch order, instead of
    /// into a ring per block (whose stores missed the cache on large VMs).
    history: std::collections::VecDeque<HistoryWindow>,
    /// Buffers `end_window` reuses (it runs every model window).
    spare_step: Vec<u32>,
}

/// The features of one window's stepped blocks, in batch order, and for each the row
/// of the same block in the window before (`NO_ROW` if it was not stepped then).
#[derive(Debug, Default)]
struct HistoryWindow {
    features: Vec<[f32; NUM_FEATURES]>,
    prev: Vec<u32>,
}

const NO_ROW: u32 = u32::MAX;

impl FeatureExtractor {
    pub fn new(cfg: FeatureConfig) -> Self {
        assert!(cfg.block_shift <= 6, "a block's pages must fit a u64 mask");
        FeatureExtractor {
            cfg,
            slots: PageTable::default(),
            tracks: Vec::new(),
            free: Vec::new(),
            prune_candidates: Vec::new(),
            last_slot: None,
            active: Vec::new(),
            counts: Vec::new(),
            tracked: Vec::new(),
            prev_page: Vec::new(),
            window: 0,
            window_accesses: 0,
            history: Default::default(),
            spare_step: Vec::new(),
        }
    }

    /// Index of the window being accumulated.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Blocks touched in the current window, in first-touch order.
    pub fn active_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.active.iter().map(|&s| self.tracks[s as usize].block)
    }

    /// What the extractor remembers about `block`, if anything.
    pub fn block(&self, block: u64) -> Option<&BlockTrack> {
        let slot = self.slots.get(block).checked_sub(1)?;
        Some(&self.tracks[slot as usize])
    }

    /// `block`'s slot, made if it has none.
    fn slot(&mut self, block: u64) -> u32 {
        let (tracks, free) = (&mut self.tracks, &mut self.free);
        let entry = self.slots.get_mut(block);
        if *entry == 0 {
            let s = match free.pop() {
                Some(s) => {
                    tracks[s as usize] = BlockTrack::new(block);
                    s
                }
                None => {
                    tracks.push(BlockTrack::new(block));
                    (tracks.len() - 1) as u32
                }
            };
            *entry = s + 1;
        }
        *entry - 1
    }

    /// Accesses seen in the current window.
    pub fn window_accesses(&self) -> u64 {
        self.window_accesses
    }

    /// Record one access: O(1), no allocation except the first time a block is seen.
    pub fn on_access(&mut self, a: &Access) {
        let block = self.cfg.block_of(a.page);
        let bit = self.cfg.bit_of(a.page);
        let vcpu = usize::from(a.vcpu);
        if self.prev_page.len() <= vcpu {
            self.prev_page.resize(vcpu + 1, (u64::MAX, 0));
        }
        let (prev, prev_delta) = self.prev_page[vcpu];
        let delta = a.page.wrapping_sub(prev) as i64;
        self.prev_page[vcpu] = (a.page, delta);
        let slot = match self.last_slot {
            Some((b, s)) if b == block => s,
            _ => {
                let s = self.slot(block);
                self.last_slot = Some((block, s));
                s
            }
        };
        let t = &mut self.tracks[slot as usize];
        if t.counts == NO_COUNTS {
            t.counts = self.counts.len() as u32;
            self.active.push(slot);
            self.counts.push(WindowCounts::default());
        }
        let c = &mut self.counts[t.counts as usize];
        c.count += 1;
        match a.op {
            AccessOp::Read => c.reads += 1,
            AccessOp::Write => c.writes += 1,
            AccessOp::Exec => c.execs += 1,
        }
        match a.kind {
            PageKind::Code => c.code += 1,
            PageKind::Shared => c.shared += 1,
            PageKind::Data | PageKind::Unknown => {}
        }
        if prev != u64::MAX && delta.unsigned_abs() <= 1 {
            c.sequential += 1;
        }
        if prev != u64::MAX && delta == prev_delta && delta != 0 {
            c.same_stride += 1;
        }
        c.vcpus |= 1 << (vcpu % 64);
        c.pages |= 1 << bit;
        t.ever_mask |= 1 << bit;
        self.window_accesses += 1;
    }

    /// Close the window: compute the features of every stepped block (touched blocks,
    /// recently touched blocks and the untouched neighbours of touched blocks), append
    /// them to `batch`, and push training samples whose outcome is now known to `samples`
    /// (at most `max_samples`, picked deterministically).
    pub fn end_window(
        &mut self,
        batch: &mut WindowBatch,
        samples: &mut Vec<Sample>,
        max_samples: usize,
    ) {
        let w = self.window;
        batch.window = w;
        batch.blocks.clear();
        batch.features.clear();
        batch.last_steps.clear();
        let mut active = std::mem::take(&mut self.active);
        let mean = if active.is_empty() {
            1.0
        } else {
            self.window_accesses as f32 / active.len() as f32
        };
        // Touched blocks first, then untouched neighbours (scan candidates), then
        // recently touched idle ones; each block once.
        let mut step = std::mem::take(&mut self.spare_step);
        step.clear();
        let stamp = w + 1;
        for &s in &active {
            let t = &mut self.tracks[s as usize];
            t.step_stamp = stamp;
            t.neighbours_touched = 0;
            step.push(s);
        }
        for &s in &active {
            let b = self.tracks[s as usize].block;
            for n in [b.wrapping_add(1), b.wrapping_sub(1)] {
                if n == u64::MAX {
                    continue;
                }
                let ns = self.slot(n);
                let t = &mut self.tracks[ns as usize];
                if t.step_stamp != stamp {
                    t.step_stamp = stamp;
                    t.neighbours_touched = 0;
                    step.push(ns);
                }
                // `b` is the block before `n` or the one after it.
                t.neighbours_touched |= if n == b.wrapping_add(1) { 1 } else { 2 };
            }
        }
        // Tracked blocks idle too long stop being tracked here, in the same pass (one
        // lookup each); those the cap below cuts stop there.
        for &s in &self.tracked {
            let t = &mut self.tracks[s as usize];
            if t.step_stamp == stamp {
                continue;
            }
            if t.last_touch != u64::MAX && w.saturating_sub(t.last_touch) <= self.cfg.idle_windows {
                t.step_stamp = stamp;
                t.neighbours_touched = 0;
                step.push(s);
            } else {
                t.tracked = false;
                t.run = 0;
                self.prune_candidates.push(s);
            }
        }
        if step.len() > self.cfg.max_stepped {
            for &s in &step[self.cfg.max_stepped..] {
                let t = &mut self.tracks[s as usize];
                t.step_stamp = 0;
                if t.tracked {
                    t.tracked = false;
                    t.run = 0;
                }
                self.prune_candidates.push(s);
            }
            step.truncate(self.cfg.max_stepped);
        }
        let need = self.cfg.seq_len + self.cfg.horizon;
        let mut window_rows = if self.history.len() >= need {
            self.history.pop_front().unwrap_or_default()
        } else {
            HistoryWindow::default()
        };
        window_rows.prev.clear();
        for (row, &s) in step.iter().enumerate() {
            let bp = self.cfg.block_pages() as f32;
            let t = &mut self.tracks[s as usize];
            // Whether the blocks before and after it were touched this window.
            let touched = t.neighbours_touched;
            t.tracked = true;
            batch.last_steps.push(t.last_step());
            let counts = match self.counts.get(t.counts as usize) {
                Some(c) => c,
                None => &WindowCounts::default(),
            };
            let f = block_features(t, counts, w, mean, bp, touched & 1 != 0, touched & 2 != 0);
            // Advance the touch history to this window; a window not stepped ends the run.
            let shift = w.saturating_sub(t.hist_window);
            if shift <= 1 && t.run > 0 {
                window_rows.prev.push(t.row);
                t.run = (t.run + 1).min(need as u32);
            } else {
                window_rows.prev.push(NO_ROW);
                t.run = 1;
            }
            t.row = row as u32;
            t.touch_hist = if shift >= 64 {
                0
            } else {
                t.touch_hist << shift
            };
            t.hist_window = w;
            if t.counts != NO_COUNTS {
                t.touch_hist |= 1;
                t.last_touch = w;
            }
            batch.blocks.push(t.block);
            batch.features.push(f);
        }
        window_rows.features.clear();
        window_rows.features.extend_from_slice(&batch.features);
        self.history.push_back(window_rows);
        // Samples whose horizon has passed: features up to window w - horizon.
        let mut emitted = 0;
        if let Some(per) = step.len().checked_div(max_samples) {
            let stride = per.max(1);
            let offset = (w as usize).wrapping_mul(7919) % stride;
            for (row, &s) in step.iter().enumerate().skip(offset).step_by(stride) {
                if emitted == max_samples {
                    break;
                }
                let t = &self.tracks[s as usize];
                if (t.run as usize) < need {
                    continue;
                }
                let features = self.features_before(row, need);
                let labels = (0..self.cfg.seq_len)
                    .map(|j| {
                        let win = w - (need - 1 - j) as u64;
                        let hit = (1..=self.cfg.horizon as u64).any(|d| t.touched_in(win + d));
                        if hit {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                samples.push(Sample { features, labels });
                emitted += 1;
            }
        }
        for &s in &active {
            self.tracks[s as usize].counts = NO_COUNTS;
        }
        active.clear();
        self.counts.clear();
        self.active = active;
        self.spare_step = std::mem::replace(&mut self.tracked, step);
        self.window += 1;
        self.window_accesses = 0;
    }

    /// The features of the block in `row` of the newest history window over the
    /// `seq_len` oldest of its last `need` windows (it was stepped in all of them).
    fn features_before(&self, row: usize, need: usize) -> Vec<[f32; NUM_FEATURES]> {
        let newest = self.history.len() - 1;
        let mut rows = vec![NO_ROW; need];
        let mut r = row as u32;
        for back in 0..need {
            rows[need - 1 - back] = r;
            if back + 1 < need {
                r = self.history[newest - back].prev[r as usize];
            }
        }
        (0..self.cfg.seq_len)
            .map(|j| self.history[newest + 1 - need + j].features[rows[j] as usize])
            .collect()
    }

    /// The caller no longer references `block` (its `keep` in [`Self::prune`] turned
    /// false): the next prune looks at it.
    pub fn release(&mut self, block: u64) {
        if let Some(s) = self.slots.get(block).checked_sub(1) {
            self.prune_candidates.push(s);
        }
    }

    /// Forget blocks that are neither tracked nor referenced by the caller (`keep`).
    /// (No list of the extractor holds their slots: those it keeps are touched in this
    /// window or tracked.) A block can only become prunable by ceasing to be tracked,
    /// by its window ending (its step tracks it unless the cap cuts it) or by the
    /// caller's [`Self::release`], and each of those makes it a candidate; so looking
    /// at the candidates forgets exactly the blocks a walk of all of them would.
    pub fn prune(&mut self, keep: impl Fn(u64) -> bool) {
        self.last_slot = None;
        for s in std::mem::take(&mut self.prune_candidates) {
            let t = &self.tracks[s as usize];
            // A slot named twice, or freed and not reused, is not its block's any more.
            if *self.slots.get(t.block) != s + 1 {
                continue;
            }
            if !(t.tracked || t.counts != NO_COUNTS || keep(t.block)) {
                *self.slots.get_mut(t.block) = 0;
                self.free.push(s);
            }
        }
    }
}

fn block_features(
    t: &BlockTrack,
    c: &WindowCounts,
    w: u64,
    mean: f32,
    block_pages: f32,
    prev: bool,
    next: bool,
) -> [f32; NUM_FEATURES] {
    let n = c.count as f32;
    let frac = |x: u32| if c.count == 0 { 0.0 } else { x as f32 / n };
    let gap = if t.last_touch == u64::MAX {
        MAX_GAP
    } else {
        w.saturating_sub(t.last_touch).min(MAX_GAP)
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let tables = log_tables();
    [
        match tables.count.get(c.count as usize) {
            Some(&v) => v,
            None => count_feature(c.count),
        },
        flag(c.count > 0),
        tables.gap[gap as usize],
        frac(c.reads),
        frac(c.writes),
        frac(c.execs),
        frac(c.code),
        frac(c.shared),
        c.pages.count_ones() as f32 / block_pages,
        t.ever_mask.count_ones() as f32 / block_pages,
        frac(c.sequential),
        frac(c.same_stride),
        flag(prev),
        flag(next),
        flag(c.vcpus.count_ones() > 1),
        if c.count == 0 {
            0.0 // ln(1)
        } else {
            (1.0 + n / mean).ln() / 3.0
        },
    ]
}

/// The logarithmic features for small arguments, computed once by the same
/// expressions (so the values are identical): idle blocks, most of a model step,
/// would otherwise pay three `ln` calls each.
struct LogTables {
    /// `ln(1 + count) / 10` for counts below 1,024.
    count: Vec<f32>,
    /// The recency feature for gaps 0..=MAX_GAP.
    gap: Vec<f32>,
}

fn log_tables() -> &'static LogTables {
    static TABLES: std::sync::OnceLock<LogTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| LogTables {
        count: (0..1024).map(count_feature).collect(),
        gap: (0..=MAX_GAP)
            .map(|g| (1.0 + g as f32).ln() / (1.0 + MAX_GAP as f32).ln())
            .collect(),
    })
}

/// The log access count feature.
fn count_feature(count: u32) -> f32 {
    (1.0 + count as f32).ln() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gru::test_rng::Rng;
    use tiering::access::AccessSource;

    /// Pruning from the candidates forgets every block a walk of all of them would:
    /// after each prune, no block is left that is neither tracked nor kept.
    #[test]
    fn a_prune_leaves_only_tracked_or_kept_blocks() {
        let cfg = FeatureConfig {
            idle_windows: 2,
            max_stepped: 24,
            ..FeatureConfig::default()
        };
        let mut fx = FeatureExtractor::new(cfg);
        let (mut batch, mut samples) = (WindowBatch::default(), Vec::new());
        let mut kept = std::collections::BTreeSet::new();
        let mut rng = Rng(7);
        let blocks = 64u64;
        let mut pruned = 0;
        for w in 0..400u64 {
            for _ in 0..12 {
                let page = (rng.uniform(0.0, (blocks * 16) as f32) as u64).min(blocks * 16 - 1);
                fx.on_access(&Access {
                    time_ns: w,
                    page,
                    vcpu: 0,
                    op: AccessOp::Read,
                    kind: PageKind::Data,
                    source: AccessSource::MissingFault,
                });
                // The caller holds some blocks (resident pages) and lets go of others.
                let b = cfg.block_of(page);
                if rng.uniform(0.0, 1.0) < 0.3 {
                    kept.insert(b);
                } else if rng.uniform(0.0, 1.0) < 0.3 && kept.remove(&b) {
                    fx.release(b);
                }
            }
            fx.end_window(&mut batch, &mut samples, 0);
            if w % 5 == 4 {
                let before = (0..=blocks).filter(|&b| fx.block(b).is_some()).count();
                fx.prune(|b| kept.contains(&b));
                let after = (0..=blocks).filter(|&b| fx.block(b).is_some()).count();
                pruned += before - after;
                for b in 0..=blocks {
                    if let Some(t) = fx.block(b) {
                        assert!(
                            t.tracked || kept.contains(&b),
                            "block {b} left after window {w}"
                        );
                    }
                }
            }
        }
        assert!(pruned > 100, "the test prunes ({pruned})");
    }
}
