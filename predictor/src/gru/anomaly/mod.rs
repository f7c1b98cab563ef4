//! Pattern-change detection from the model's rolling loss and working-set drift.
//!
//! Each window yields two signals: the model's loss on what just happened (its
//! predictions from the previous window against the blocks actually touched) and the
//! Jaccard distance between the blocks touched now and in the recent past. Each feeds a
//! Page-Hinkley test (a CUSUM for an upward shift of the mean). An alarm is an
//! [`AnomalyEvent`]; the advisor answers it with faster adaptation. Optionally a third
//! signal, the same distance over coarse regions of blocks (`region_shift`), catches a
//! VM that moves its work to other memory while every block it touches is new anyway.
//! A fourth (`spread_test`, on by default) watches how far apart successive demand
//! faults are: a scan, a strided walk and a uniform or skewed random walk leave
//! different spreads even where sampled visibility hides the change from the loss and
//! the block drift.

/// Which signal raised the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalySignal {
    Loss,
    /// The loss fell ([`AnomalyConfig::two_sided_loss`]): the VM moved to work the
    /// model predicts better, as when a scan storm ends.
    LossDrop,
    Drift,
    /// The working set moved to other regions ([`AnomalyConfig::region_shift`]).
    Region,
    /// The distance between successive demand faults moved, up or down
    /// ([`AnomalyConfig::spread_test`]).
    Spread,
}

/// A detected pattern change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyEvent {
    pub window: u64,
    pub time_ns: u64,
    pub signal: AnomalySignal,
    /// The Page-Hinkley statistic when it crossed the threshold.
    pub score: f64,
}

/// Page-Hinkley test for an increase of a signal's mean, on the signal standardised by
/// its running (EWMA) mean and deviation, so one setting fits signals of any scale.
#[derive(Debug, Clone, Copy)]
pub struct PageHinkley {
    /// Tolerated shift (in deviations) before evidence accumulates.
    pub delta: f64,
    /// Alarm threshold on the cumulative statistic (in deviations).
    pub lambda: f64,
    /// EWMA weight of the running mean and variance.
    pub alpha: f64,
    /// Smallest deviation assumed (a flat signal must not turn noise into alarms).
    pub min_dev: f64,
    /// After an alarm, forget the old baseline and learn the new one from scratch
    /// (otherwise the alarm value itself becomes the mean and hides the next change).
    pub restart: bool,
    /// Values after a (re)start that only teach the baseline: scored against one or
    /// two values, whose spread is near zero, any change looks like tens of
    /// deviations, so a restarted test would fire again at once or pile up a
    /// meaningless statistic.
    pub settle: u64,
    /// The last value's distance from the baseline, in deviations (0 while settling).
    pub last_z: f64,
    mean: f64,
    var: f64,
    n: u64,
    cum: f64,
    min_cum: f64,
}

impl PageHinkley {
    pub fn new(delta: f64, lambda: f64, alpha: f64, min_dev: f64) -> Self {
        PageHinkley {
            delta,
            lambda,
            alpha,
            min_dev,
            restart: false,
            settle: 1,
            last_z: 0.0,
            mean: 0.0,
            var: 0.0,
            n: 0,
            cum: 0.0,
            min_cum: 0.0,
        }
    }

    /// The baseline (running mean) of the signal.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Feed one value; returns the statistic when it crosses `lambda` (and restarts).
    pub fn update(&mut self, x: f64) -> Option<f64> {
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
            self.last_z = 0.0;
            return None;
        }
        let settling = self.n <= self.settle;
        let dev = self.var.sqrt().max(self.min_dev);
        let z = if settling { 0.0 } else { (x - self.mean) / dev };
        self.last_z = z;
        // Learn the baseline after scoring, with a plain average while it is young.
        let w = self.alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += w * d;
        self.var = (1.0 - w) * (self.var + w * d * d);
        if settling {
            return None;
        }
        self.cum += z - self.delta;
        self.min_cum = self.min_cum.min(self.cum);
        let stat = self.cum - self.min_cum;
        if stat > self.lambda {
            if self.restart {
                self.n = 0;
                self.var = 0.0;
            }
            self.mean = x;
            self.cum = 0.0;
            self.min_cum = 0.0;
            return Some(stat);
        }
        None
    }
}

/// Drift baseline (mean Jaccard distance) above which drift cannot confirm a change.
const DRIFT_SATURATED: f64 = 0.9;

/// Tunables of the detector.
#[derive(Debug, Clone, Copy)]
pub struct AnomalyConfig {
    /// (delta, lambda, min_dev) of the loss and drift tests.
    pub loss: (f64, f64, f64),
    pub drift: (f64, f64, f64),
    pub alpha: f64,
    /// Windows to ignore at start (the model warms up) and after an alarm.
    pub warmup: u64,
    pub cooldown: u64,
    /// Windows the drift reference set spans.
    pub drift_span: usize,
    /// An alarm of one test needs the other signal at least this many deviations above
    /// its baseline in the same window (0: either test alone raises an alarm).
    pub confirm_z: f64,
    /// Restart a test's baseline after its alarm (see [`PageHinkley::restart`]).
    pub restart: bool,
    /// Values a test only learns from after a (re)start ([`PageHinkley::settle`]).
    pub settle: u64,
    /// A signal at or above `confirm_z` still confirms the other test's alarm this many
    /// windows later (0: only in the same window).
    pub confirm_span: u64,
    /// Also test the loss for a fall (a second Page-Hinkley test on its negation).
    pub two_sided_loss: bool,
    /// Regions for the region-drift test: blocks `>> region_shift` (0: no such test).
    pub region_shift: u32,
    /// (delta, lambda, min_dev) of the region-drift test.
    pub region: (f64, f64, f64),
    /// An alarm of the region test needs the loss or the block drift at least this many
    /// deviations above its baseline in the same window (0: none).
    pub region_confirm_z: f64,
    /// Test the fault spread (the mean of log2(1 + |distance|) between successive
    /// demand faults, per window) for a rise and for a fall.
    pub spread_test: bool,
    /// (delta, lambda, min_dev) of the fault-spread tests.
    pub spread: (f64, f64, f64),
    /// An alarm of a fault-spread test needs the loss or the block drift at least this
    /// many deviations above its baseline in the same window (0: none).
    pub spread_confirm_z: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            loss: (0.5, 6.0, 0.02),
            drift: (0.5, 6.0, 0.02),
            alpha: 0.05,
            warmup: 16,
            cooldown: 8,
            drift_span: 4,
            confirm_z: 3.0,
            restart: true,
            settle: 4,
            confirm_span: 0,
            two_sided_loss: false,
            region_shift: 0,
            region: (0.5, 6.0, 0.02),
            region_confirm_z: 0.5,
            // Lambda 10, not the loss test's 6: a real program's fault spread wanders
            // more than its loss. On since session 38, by rule 21 (docs/anomaly.md,
            // "The spread of demand faults").
            spread: (0.5, 10.0, 0.02),
            spread_test: true,
            spread_confirm_z: 0.0,
        }
    }
}

impl AnomalyConfig {
    /// The detector as first shipped (session 1), kept to measure changes against.
    pub fn baseline() -> Self {
        AnomalyConfig {
            confirm_z: 0.0,
            restart: false,
            settle: 1,
            confirm_span: 0,
            two_sided_loss: false,
            spread_test: false,
            ..Self::default()
        }
    }

    /// The default detector with the region-drift test: regions of 4 blocks.
    pub fn with_regions() -> Self {
        AnomalyConfig {
            region_shift: 2,
            ..Self::default()
        }
    }
}

/// The detector state for one VM.
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    loss: PageHinkley,
    /// The test for a fall of the loss, when `two_sided_loss` is set.
    loss_fall: Option<PageHinkley>,
    drift: PageHinkley,
    blocks: SetDrift,
    /// The region test and its sets, when `region_shift > 0`.
    regions: Option<(PageHinkley, SetDrift)>,
    /// The fault-spread tests (a rise, a fall), when `spread_test` is set.
    spread: Option<(PageHinkley, PageHinkley)>,
    faults: FaultSpread,
    scratch: Vec<u64>,
    /// `TIERVISOR_ANOMALY_DEBUG` is set: print both signals every window.
    debug: bool,
    windows: u64,
    quiet_until: u64,
    /// The last window in which the loss / the drift was at least `confirm_z` above
    /// its baseline (or its test fired).
    loss_high_at: Option<u64>,
    drift_high_at: Option<u64>,
    pub events: Vec<AnomalyEvent>,
    /// The signals of every window (loss, drift), kept when `keep_trace` is set.
    pub trace: Vec<(f64, f64)>,
    pub keep_trace: bool,
}

impl AnomalyDetector {
    pub fn new(cfg: AnomalyConfig) -> Self {
        let test = |(delta, lambda, min_dev): (f64, f64, f64)| PageHinkley {
            restart: cfg.restart,
            settle: cfg.settle,
            ..PageHinkley::new(delta, lambda, cfg.alpha, min_dev)
        };
        AnomalyDetector {
            loss: test(cfg.loss),
            loss_fall: cfg.two_sided_loss.then(|| test(cfg.loss)),
            drift: test(cfg.drift),
            blocks: SetDrift::new(cfg.drift_span),
            regions: (cfg.region_shift > 0)
                .then(|| (test(cfg.region), SetDrift::new(cfg.drift_span))),
            spread: cfg
                .spread_test
                .then(|| (test(cfg.spread), test(cfg.spread))),
            faults: FaultSpread::default(),
            scratch: Vec::new(),
            cfg,
            debug: std::env::var_os("TIERVISOR_ANOMALY_DEBUG").is_some(),
            windows: 0,
            quiet_until: cfg.warmup,
            loss_high_at: None,
            drift_high_at: None,
            events: Vec::new(),
            trace: Vec::new(),
            keep_trace: false,
        }
    }

    /// Note a demand fault of `vcpu` on `page` (for the fault-spread test).
    pub fn on_fault(&mut self, page: u64, vcpu: u16) {
        if self.spread.is_some() {
            self.faults.on_fault(page, vcpu);
        }
    }

    /// Feed one window: the model's loss on it and the blocks touched in it.
    /// Returns the event when a change is detected.
    pub fn observe(
        &mut self,
        window: u64,
        time_ns: u64,
        loss: f64,
        touched: &[u64],
    ) -> Option<AnomalyEvent> {
        let drift = self.drift_of(touched);
        self.windows += 1;
        if self.keep_trace {
            self.trace.push((loss, drift));
        }
        let l = self.loss.update(loss);
        let fall = self.loss_fall.as_mut().and_then(|t| t.update(-loss));
        let d = self.drift.update(drift);
        let r = match self.regions.as_mut() {
            Some((test, sets)) => {
                self.scratch.clear();
                let shift = self.cfg.region_shift;
                self.scratch.extend(touched.iter().map(|b| b >> shift));
                let r = test.update(sets.drift(&mut self.scratch));
                if self.debug {
                    eprintln!("anomaly: window {window} region drift z {:.1}", test.last_z);
                }
                r
            }
            None => None,
        };
        // A window without demand faults says nothing about their spread.
        let spread = self.faults.end_window();
        let sp = match (self.spread.as_mut(), spread) {
            (Some((rise, fall)), Some(x)) => {
                let up = rise.update(x);
                let down = fall.update(-x);
                if self.debug {
                    eprintln!(
                        "anomaly: window {window} spread {x:.3} (z {:.1} / {:.1})",
                        rise.last_z, fall.last_z
                    );
                }
                up.or(down)
            }
            _ => None,
        };
        if self.debug {
            eprintln!(
                "anomaly: window {window} loss {loss:.3} (z {:.1}) drift {drift:.3} (z {:.1})",
                self.loss.last_z, self.drift.last_z
            );
        }
        // A change can move one signal a window before the other (the loss as soon as
        // predictions fail, the drift once the new set outweighs the recent ones), and a
        // test that fired restarts and scores nothing while it settles: remember when
        // each signal was last high.
        let high =
            |z: f64, fired: bool| fired || (self.cfg.confirm_z > 0.0 && z >= self.cfg.confirm_z);
        if high(self.loss.last_z, l.is_some() || fall.is_some()) {
            self.loss_high_at = Some(self.windows);
        }
        if high(self.drift.last_z, d.is_some()) {
            self.drift_high_at = Some(self.windows);
        }
        if self.windows <= self.quiet_until {
            return None;
        }
        // A new application or phase moves both the loss and the working set; a test
        // alone also fires on slow creep of a heavy-tailed signal (the false alarms on
        // real traces, docs/anomaly.md), so the other signal must confirm.
        // A drift pinned near 1 (every window touches new blocks: a random workload
        // seen through its faults) cannot confirm anything; the loss then decides alone.
        let span = self.cfg.confirm_span;
        let now = self.windows;
        let confirmed = |z: f64, high_at: Option<u64>| {
            self.cfg.confirm_z <= 0.0
                || z >= self.cfg.confirm_z
                || (span > 0 && high_at.is_some_and(|w| now - w <= span))
        };
        let drift_saturated = self.drift.mean() >= DRIFT_SATURATED;
        // The other test's own high mark this window does not count (it is its alarm
        // or its z, already tested above); one of the last `span` windows' does.
        let (loss_before, drift_before) = (
            self.loss_high_at.filter(|&w| w < now),
            self.drift_high_at.filter(|&w| w < now),
        );
        // A fall of the loss is confirmed as a rise is: a new pattern the model
        // predicts well still touches other blocks.
        let loss_hit = l
            .map(|s| (AnomalySignal::Loss, s))
            .or(fall.map(|s| (AnomalySignal::LossDrop, s)));
        // The region and spread tests' own confirmation: a weak rise of the loss or the
        // block drift (at least `z` deviations; 0: none needed).
        let weakly_confirmed = |z: f64| z <= 0.0 || self.loss.last_z >= z || self.drift.last_z >= z;
        let hit = match (loss_hit, d) {
            (Some(h), _) if drift_saturated || confirmed(self.drift.last_z, drift_before) => {
                Some(h)
            }
            (_, Some(s)) if confirmed(self.loss.last_z, loss_before) => {
                Some((AnomalySignal::Drift, s))
            }
            // Moving to other regions need not move the loss much (the model knows
            // the new pattern's kind) nor the block drift (already high when most
            // blocks are new each window): a weak rise of either confirms it.
            _ => r
                .filter(|_| weakly_confirmed(self.cfg.region_confirm_z))
                .map(|s| (AnomalySignal::Region, s))
                // A walk of another kind over the same blocks; the fault stream shows
                // it where the model (trained on every kind) and the block sets need not.
                .or_else(|| {
                    sp.filter(|_| weakly_confirmed(self.cfg.spread_confirm_z))
                        .map(|s| (AnomalySignal::Spread, s))
                }),
        };
        let (signal, score) = hit?;
        self.quiet_until = self.windows + self.cfg.cooldown;
        let ev = AnomalyEvent {
            window,
            time_ns,
            signal,
            score,
        };
        log::debug!("gru: pattern change at window {window} (t={time_ns} ns) by {signal:?}, score {score:.2}");
        self.events.push(ev);
        Some(ev)
    }

    /// Jaccard distance between `touched` and the union of the last `drift_span` windows.
    fn drift_of(&mut self, touched: &[u64]) -> f64 {
        self.scratch.clear();
        self.scratch.extend_from_slice(touched);
        self.blocks.drift(&mut self.scratch)
    }
}

/// The spread of one window's demand faults: the mean over its faults of
/// log2(1 + |page distance from the same vCPU's fault before|), capped at 24 (16 GiB)
/// and scaled to 0..1. A sequential scan gives about 0.04, a strided walk a little
/// more, a random walk over N pages about log2(N) / 24. Per vCPU, because the faults
/// of several vCPUs interleave as if at random.
#[derive(Debug, Default)]
struct FaultSpread {
    /// Each vCPU's last faulting page.
    last: Vec<Option<u64>>,
    sum: f64,
    n: u64,
}

impl FaultSpread {
    fn on_fault(&mut self, page: u64, vcpu: u16) {
        let v = usize::from(vcpu);
        if self.last.len() <= v {
            self.last.resize(v + 1, None);
        }
        if let Some(last) = self.last[v] {
            let distance = page.abs_diff(last) as f64;
            self.sum += (1.0 + distance).log2().min(24.0) / 24.0;
            self.n += 1;
        }
        self.last[v] = Some(page);
    }

    /// The window's mean, if it had a fault after another; starts the next window.
    fn end_window(&mut self) -> Option<f64> {
        let mean = (self.n > 0).then(|| self.sum / self.n as f64);
        self.sum = 0.0;
        self.n = 0;
        mean
    }
}

/// Jaccard distance between a window's set and the union of the last `span` windows'
/// sets. The sets are sorted lists merged in place (no hashing, no allocation once the
/// buffers have grown): this runs every model window.
struct SetDrift {
    span: usize,
    /// Each of the last `span` windows' sets, sorted, oldest first.
    recent: std::collections::VecDeque<Vec<u64>>,
    union: Vec<u64>,
    merged: Vec<u64>,
}

impl SetDrift {
    fn new(span: usize) -> Self {
        SetDrift {
            span,
            recent: Default::default(),
            union: Vec::new(),
            merged: Vec::new(),
        }
    }

    /// The distance of `now` (any order, duplicates allowed; sorted in place) to the
    /// recent windows; then `now` becomes the newest of them.
    fn drift(&mut self, now: &mut Vec<u64>) -> f64 {
        now.sort_unstable();
        now.dedup();
        self.union.clear();
        for w in &self.recent {
            merge_union(&self.union, w, &mut self.merged);
            std::mem::swap(&mut self.union, &mut self.merged);
        }
        let inter = count_common(now, &self.union);
        let union = self.union.len() + now.len() - inter;
        let mut slot = if self.recent.len() >= self.span {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.span > 0 {
            slot.clear();
            slot.extend_from_slice(now);
            self.recent.push_back(slot);
        }
        if union == 0 {
            0.0
        } else {
            1.0 - inter as f64 / union as f64
        }
    }
}

/// The union of the sorted, duplicate-free lists `a` and `b`, into `out`.
fn merge_union(a: &[u64], b: &[u64], out: &mut Vec<u64>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// How many values the sorted, duplicate-free lists `a` and `b` share.
fn count_common(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Detection quality against known change points.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DetectionScore {
    pub precision: f64,
    pub recall: f64,
    /// Mean windows from a change to its first detection (detected changes only).
    pub mean_delay: f64,
    /// Longest of those delays.
    pub max_delay: u64,
    pub detections: usize,
    pub changes: usize,
    /// Detections not within `tolerance` after any change.
    pub false_alarms: usize,
}

/// A detection within `tolerance` windows after a change point counts for it; other
/// detections are false alarms.
pub fn score_detections(changes: &[u64], detections: &[u64], tolerance: u64) -> DetectionScore {
    let mut matched = vec![false; detections.len()];
    let mut found = 0usize;
    let mut delay_sum = 0u64;
    let mut max_delay = 0u64;
    for &c in changes {
        let hit = detections
            .iter()
            .enumerate()
            .find(|(_, &d)| d >= c && d <= c + tolerance);
        if let Some((i, &d)) = hit {
            found += 1;
            delay_sum += d - c;
            max_delay = max_delay.max(d - c);
            matched[i] = true;
            for (j, &d2) in detections.iter().enumerate() {
                if d2 >= c && d2 <= c + tolerance {
                    matched[j] = true; // repeated alarms for the same change are not false
                }
            }
        }
    }
    let true_det = matched.iter().filter(|m| **m).count();
    DetectionScore {
        precision: if detections.is_empty() {
            0.0
        } else {
            true_det as f64 / detections.len() as f64
        },
        recall: if changes.is_empty() {
            0.0
        } else {
            found as f64 / changes.len() as f64
        },
        mean_delay: if found == 0 {
            0.0
        } else {
            delay_sum as f64 / found as f64
        },
        max_delay,
        detections: detections.len(),
        changes: changes.len(),
        false_alarms: detections.len() - true_det,
    }
}

#[cfg(test)]
mod tests;
