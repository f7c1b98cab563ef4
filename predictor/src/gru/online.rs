//! Online learning: the per-VM model keeps training on the VM's own recent windows.
//!
//! The advisor hands samples over and, now and then, gets updated inference weights
//! back. In `Background` mode a low-priority thread (nice 19) trains within a CPU
//! budget; samples travel over a bounded channel and are dropped when it is full, so
//! the advisor (and the fault path behind it) never waits. `Inline` mode runs the same
//! training steps synchronously in `end_window`, for deterministic replays and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::features::Sample;
use super::model::AccessModel;
use super::train::{TrainConfig, Trainer};

/// How and how much the model learns online.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineConfig {
    pub mode: OnlineMode,
    /// Inline mode: one training step every this many model windows in normal
    /// operation (chosen when the step ran on burn, about ten times the hand-written
    /// step's CPU, docs/predictor.md "Online learning": one in 64 kept training
    /// within about 1% of a core on the replayed real programs, so the whole advisor
    /// could stay near the 2% target).
    pub train_every: u64,
    /// Inline: a step every this many windows while adapting after an anomaly; both
    /// modes: the learning-rate multiplier then.
    pub boost_train_every: u64,
    pub boost_lr: f64,
    /// Windows a boost lasts.
    pub boost_windows: u64,
    /// Publish new inference weights every this many windows (inline) or steps (thread).
    pub publish_every: u64,
    /// Replay buffer capacity (samples).
    pub buffer: usize,
    pub train: TrainConfig,
    /// Background thread: the share of one core it may use (0.01..1; default 1%, the
    /// same share inline training gets, as the advisor's whole CPU target is 2%).
    pub cpu_budget: f64,
}

/// Where the training steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineMode {
    /// No online learning: the base model only.
    Off,
    /// In the caller's thread, in `end_window` (deterministic).
    Inline,
    /// In a nice-19 thread with a CPU budget.
    Background,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            mode: OnlineMode::Inline,
            train_every: 64,
            boost_train_every: 2,
            boost_lr: 3.0,
            boost_windows: 32,
            publish_every: 1,
            buffer: 4096,
            train: TrainConfig {
                lr: 1e-3,
                batch: 128,
            },
            cpu_budget: 0.01,
        }
    }
}

/// A ring of recent samples to draw training batches from.
struct ReplayBuffer {
    items: Vec<Sample>,
    next: usize,
    cap: usize,
    rng: u64,
}

impl ReplayBuffer {
    fn new(cap: usize) -> Self {
        ReplayBuffer {
            items: Vec::new(),
            next: 0,
            cap: cap.max(1),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }
    fn push(&mut self, s: Sample) {
        if self.items.len() < self.cap {
            self.items.push(s);
        } else {
            self.items[self.next] = s;
        }
        self.next = (self.next + 1) % self.cap;
    }
    fn batch(&mut self, n: usize) -> Vec<&Sample> {
        let len = self.items.len();
        let mut out = Vec::with_capacity(n.min(len));
        for _ in 0..n.min(len) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            out.push(&self.items[(self.rng % len as u64) as usize]);
        }
        out
    }
}

struct Inline {
    trainer: Trainer,
    buffer: ReplayBuffer,
    windows: u64,
}

struct Background {
    samples: SyncSender<Msg>,
    models: Receiver<AccessModel>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<BackgroundCounters>,
}

/// What the background thread has done so far; readable from any thread while it
/// runs (the live VMM reports them in --metrics-out).
#[derive(Debug, Default)]
pub struct BackgroundCounters {
    /// Training steps (one Adam step on one batch each).
    pub steps: AtomicU64,
    /// Weight sets sent back to the advisor (it may skip some if it is slow to pick up).
    pub published: AtomicU64,
    /// Samples that reached the thread.
    pub samples_received: AtomicU64,
    /// CPU time of the thread (user + system, CLOCK_THREAD_CPUTIME_ID).
    pub cpu_ns: AtomicU64,
    /// Wall time since the thread started, for the CPU share.
    pub wall_ns: AtomicU64,
}

/// A copy of [`BackgroundCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackgroundSnapshot {
    pub steps: u64,
    pub published: u64,
    pub samples_received: u64,
    pub cpu_ns: u64,
    pub wall_ns: u64,
}

impl BackgroundCounters {
    pub fn snapshot(&self) -> BackgroundSnapshot {
        BackgroundSnapshot {
            steps: self.steps.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            samples_received: self.samples_received.load(Ordering::Relaxed),
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            wall_ns: self.wall_ns.load(Ordering::Relaxed),
        }
    }
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on this stack.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

enum Msg {
    Samples(Vec<Sample>),
    Boost(u64),
}

/// The online learner attached to one advisor.
pub struct OnlineLearner {
    cfg: OnlineConfig,
    inline: Option<Inline>,
    background: Option<Background>,
    boost_until: u64,
    window: u64,
    /// Samples dropped because the background thread was behind.
    pub dropped: u64,
    /// Training steps taken in the caller's thread.
    pub inline_steps: u64,
    /// Last training batch loss (inline mode).
    pub last_loss: f32,
}

impl OnlineLearner {
    pub fn new(model: &AccessModel, cfg: OnlineConfig) -> Self {
        let mut learner = OnlineLearner {
            cfg,
            inline: None,
            background: None,
            boost_until: 0,
            window: 0,
            dropped: 0,
            inline_steps: 0,
            last_loss: f32::NAN,
        };
        match cfg.mode {
            OnlineMode::Off => {}
            OnlineMode::Inline => {
                learner.inline = Some(Inline {
                    trainer: Trainer::new(model, cfg.train),
                    buffer: ReplayBuffer::new(cfg.buffer),
                    windows: 0,
                })
            }
            OnlineMode::Background => learner.background = Some(spawn(model, cfg)),
        }
        learner
    }

    /// Faster adaptation for the next `boost_windows` windows (after an anomaly).
    pub fn mode(&self) -> OnlineMode {
        self.cfg.mode
    }

    /// The background thread's counters (`None` unless the mode is `Background`).
    pub fn background_counters(&self) -> Option<Arc<BackgroundCounters>> {
        self.background.as_ref().map(|bg| bg.counters.clone())
    }

    pub fn boost(&mut self) {
        self.boost_until = self.window + self.cfg.boost_windows;
        if let Some(bg) = &self.background {
            let _ = bg.samples.try_send(Msg::Boost(self.cfg.boost_windows));
        }
    }

    /// End of a window: hand over its samples; returns new weights when there are some.
    pub fn end_window(&mut self, samples: Vec<Sample>) -> Option<AccessModel> {
        self.window += 1;
        let boosted = self.window < self.boost_until;
        if let Some(inl) = &mut self.inline {
            for s in samples {
                inl.buffer.push(s);
            }
            let (every, scale) = if boosted {
                (self.cfg.boost_train_every, self.cfg.boost_lr)
            } else {
                (self.cfg.train_every, 1.0)
            };
            inl.windows += 1;
            if !inl.windows.is_multiple_of(every.max(1)) {
                return None;
            }
            let batch = inl.buffer.batch(self.cfg.train.batch);
            if batch.len() < self.cfg.train.batch.min(16) {
                return None;
            }
            self.last_loss = inl.trainer.step(&batch, scale);
            self.inline_steps += 1;
            if self
                .inline_steps
                .is_multiple_of(self.cfg.publish_every.max(1))
            {
                return Some(inl.trainer.inference_model());
            }
            return None;
        }
        if let Some(bg) = &mut self.background {
            if !samples.is_empty() {
                match bg.samples.try_send(Msg::Samples(samples)) {
                    Ok(()) => {}
                    Err(
                        TrySendError::Full(Msg::Samples(s))
                        | TrySendError::Disconnected(Msg::Samples(s)),
                    ) => self.dropped += s.len() as u64,
                    Err(_) => {}
                }
            }
            let mut latest = None;
            while let Ok(m) = bg.models.try_recv() {
                latest = Some(m);
            }
            return latest;
        }
        None
    }
}

impl Drop for OnlineLearner {
    fn drop(&mut self) {
        if let Some(mut bg) = self.background.take() {
            drop(bg.samples); // closes the channel: the thread ends after its current step
            if let Some(t) = bg.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn spawn(model: &AccessModel, cfg: OnlineConfig) -> Background {
    let (stx, srx) = mpsc::sync_channel::<Msg>(64);
    let (mtx, mrx) = mpsc::sync_channel::<AccessModel>(2);
    let model = model.clone();
    let counters = Arc::new(BackgroundCounters::default());
    let thread_counters = counters.clone();
    let thread = std::thread::Builder::new()
        .name("gru-online".into())
        .spawn(move || train_loop(model, cfg, srx, mtx, &thread_counters))
        .map_err(|e| log::warn!("gru: no background learning (cannot start its thread: {e})"))
        .ok();
    Background {
        samples: stx,
        models: mrx,
        thread,
        counters,
    }
}

/// The background thread: nice 19, trains while it has data and budget.
fn train_loop(
    model: AccessModel,
    cfg: OnlineConfig,
    rx: Receiver<Msg>,
    tx: SyncSender<AccessModel>,
    counters: &BackgroundCounters,
) {
    let started = std::time::Instant::now();
    let cpu_at_start = thread_cpu_ns();
    // SAFETY: setpriority only changes this thread's nice value (Linux applies
    // PRIO_PROCESS with who = 0 to the calling thread); no memory is involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
    let mut trainer = Trainer::new(&model, cfg.train);
    let mut buffer = ReplayBuffer::new(cfg.buffer);
    let mut boost_steps_left = 0u64;
    let mut fresh = 0usize;
    let budget = cfg.cpu_budget.clamp(0.01, 1.0);
    loop {
        // Block for data only when there is nothing new to learn from; end when the
        // advisor is gone.
        let msg = if fresh < cfg.train.batch / 2 {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        };
        match msg {
            Some(Msg::Samples(s)) => {
                fresh += s.len();
                counters
                    .samples_received
                    .fetch_add(s.len() as u64, Ordering::Relaxed);
                for x in s {
                    buffer.push(x);
                }
            }
            Some(Msg::Boost(w)) => boost_steps_left = w / cfg.boost_train_every.max(1),
            None => {}
        }
        if fresh < cfg.train.batch / 2 {
            continue;
        }
        let scale = if boost_steps_left > 0 {
            cfg.boost_lr
        } else {
            1.0
        };
        let cpu_before = thread_cpu_ns();
        let batch = buffer.batch(cfg.train.batch);
        trainer.step(&batch, scale);
        fresh = fresh.saturating_sub(cfg.train.batch);
        boost_steps_left = boost_steps_left.saturating_sub(1);
        counters.steps.fetch_add(1, Ordering::Relaxed);
        if trainer.steps.is_multiple_of(cfg.publish_every.max(1))
            && tx.try_send(trainer.inference_model()).is_ok()
        {
            // (A full channel: the advisor has not picked up the previous weights yet;
            // it will get newer ones.)
            counters.published.fetch_add(1, Ordering::Relaxed);
        }
        let cpu_now = thread_cpu_ns();
        counters
            .cpu_ns
            .store(cpu_now.saturating_sub(cpu_at_start), Ordering::Relaxed);
        counters
            .wall_ns
            .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        // Duty cycle on CPU time (not wall time, which a nice-19 thread spends partly
        // preempted): sleep so that training uses at most `budget` of a core.
        let spent_s = cpu_now.saturating_sub(cpu_before) as f64 / 1e9;
        std::thread::sleep(Duration::from_secs_f64(spent_s * (1.0 / budget - 1.0)));
    }
}
