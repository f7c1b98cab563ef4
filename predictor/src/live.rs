//! The GRU advisor as a running VM uses it: it learns in the background, logs every
//! pattern change with its time, and leaves a report (learning counters, anomalies)
//! that the VMM reads once the VM has ended.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use crate::gru::anomaly::AnomalyEvent;
use crate::gru::online::{BackgroundCounters, BackgroundSnapshot, OnlineMode};
use crate::gru::GruAdvisor;

/// One detected pattern change, for the metrics file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRecord {
    /// The advisor's model window.
    pub window: u64,
    /// Milliseconds since tiered memory started (the advisor's clock).
    pub time_ms: f64,
    /// `Loss`, `LossDrop`, `Drift`, `Region` or `Spread`
    /// ([`crate::gru::anomaly::AnomalySignal`]).
    pub signal: String,
    pub score: f64,
}

impl From<&AnomalyEvent> for AnomalyRecord {
    fn from(e: &AnomalyEvent) -> Self {
        AnomalyRecord {
            window: e.window,
            time_ms: e.time_ns as f64 / 1e6,
            signal: format!("{:?}", e.signal),
            score: e.score,
        }
    }
}

/// What the advisor did while the VM ran (`tiers.advisor_online` in --metrics-out).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveGruReport {
    /// `off`, `inline` or `background`.
    pub online_mode: String,
    /// Model windows (the model steps once per window).
    pub model_windows: u64,
    /// Block states the model stepped over those windows, and the time the steps took
    /// (the GRU cell alone, in ms; the rest of a window's close is feature extraction
    /// and bookkeeping, in `advisor_calls`' `end_window`).
    pub stepped_blocks: u64,
    pub inference_ms: f64,
    /// New weights the advisor installed from online learning.
    pub weight_updates: u64,
    /// Samples the background thread could not take (it was behind).
    pub samples_dropped: u64,
    /// Pages the first-touch prior zero-filled ahead that the guest used, and that
    /// were evicted unused (as far as the VMM could tell).
    pub prior_used: u64,
    pub prior_wasted: u64,
    /// The background thread's own counters.
    pub background: BackgroundSnapshot,
    /// Its CPU time in ms and as a share of one core over its lifetime.
    pub background_cpu_ms: f64,
    pub background_cpu_share: f64,
    pub anomaly_count: usize,
    pub anomalies: Vec<AnomalyRecord>,
}

/// Reads the report of a [`LiveGru`] from another thread, during or after the run.
#[derive(Clone)]
pub struct LiveGruHandle {
    shared: Arc<Mutex<LiveGruReport>>,
    background: Option<Arc<BackgroundCounters>>,
}

impl LiveGruHandle {
    pub fn report(&self) -> LiveGruReport {
        let mut r = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = &self.background {
            r.background = c.snapshot();
            r.background_cpu_ms = r.background.cpu_ns as f64 / 1e6;
            r.background_cpu_share = if r.background.wall_ns == 0 {
                0.0
            } else {
                r.background.cpu_ns as f64 / r.background.wall_ns as f64
            };
        }
        r.anomaly_count = r.anomalies.len();
        r
    }
}

/// [`GruAdvisor`] plus reporting: forwards every call, and after each window copies
/// the counters and any new anomaly into the shared report.
pub struct LiveGru {
    inner: GruAdvisor,
    shared: Arc<Mutex<LiveGruReport>>,
    anomalies_seen: usize,
}

impl LiveGru {
    pub fn new(inner: GruAdvisor) -> (Self, LiveGruHandle) {
        let mode = match inner.learner().mode() {
            OnlineMode::Off => "off",
            OnlineMode::Inline => "inline",
            OnlineMode::Background => "background",
        };
        let shared = Arc::new(Mutex::new(LiveGruReport {
            online_mode: mode.into(),
            ..LiveGruReport::default()
        }));
        let handle = LiveGruHandle {
            shared: shared.clone(),
            background: inner.learner().background_counters(),
        };
        let live = LiveGru {
            inner,
            shared,
            anomalies_seen: 0,
        };
        (live, handle)
    }

    /// The wrapped advisor.
    pub fn inner(&self) -> &GruAdvisor {
        &self.inner
    }
}

impl Advisor for LiveGru {
    forward_advisor!(inner);

    fn on_access(&mut self, access: &Access, resident: bool) {
        self.inner.on_access(access, resident);
    }
    fn end_window(&mut self, now_ns: u64) {
        self.inner.end_window(now_ns);
        let all = self.inner.anomalies();
        let new = &all[self.anomalies_seen.min(all.len())..];
        for e in new {
            log::info!(
                "gru: pattern change at t={:.1} ms (model window {}), signal {:?}, score {:.2}: adapting faster",
                e.time_ns as f64 / 1e6,
                e.window,
                e.signal,
                e.score
            );
        }
        // Only the report reader contends for this lock, and only briefly.
        let mut r = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        r.anomalies.extend(new.iter().map(AnomalyRecord::from));
        self.anomalies_seen = all.len();
        r.model_windows = self.inner.stats.windows;
        r.stepped_blocks = self.inner.stats.stepped_blocks;
        r.inference_ms = self.inner.stats.inference_ns as f64 / 1e6;
        r.weight_updates = self.inner.stats.weight_updates;
        r.prior_used = self.inner.stats.prior_used;
        r.prior_wasted = self.inner.stats.prior_wasted;
        r.samples_dropped = self.inner.learner().dropped;
    }
}

impl Drop for LiveGru {
    fn drop(&mut self) {
        let r = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        log::info!(
            "gru: online learning ({}): {} weight updates over {} model windows, {} samples dropped, {} pattern changes",
            r.online_mode,
            r.weight_updates,
            r.model_windows,
            r.samples_dropped,
            r.anomalies.len()
        );
    }
}
