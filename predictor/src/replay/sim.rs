//! One replay of a trace with one advisor.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use tiering::access::{Access, AccessOp, AccessSource, PageNumber};
use tiering::advisor::{Advisor, TimedAdvisor};
use tiering::policy::{AccessOutcome, Action, PagingPolicy, PolicyConfig};
use tiering::trace::Clock;

use super::registry::{sees_everything, ReplayContext};
use super::{open_trace, AdvisorReport, LatencyModel, ReplayError};
use crate::replay::latency::DeviceQueues;

/// Where the accesses come from: a trace file (streamed once per advisor) or memory.
#[derive(Debug, Clone)]
pub enum TraceInput {
    File(PathBuf),
    Memory {
        accesses: Arc<[Access]>,
        clock: Clock,
    },
}

impl TraceInput {
    pub(crate) fn clock_and_page_size(&self) -> Result<(Clock, u64), ReplayError> {
        match self {
            TraceInput::File(path) => {
                let r = open_trace(path)?;
                Ok((r.header().clock, u64::from(r.header().page_size)))
            }
            TraceInput::Memory { clock, .. } => Ok((*clock, tiering::access::PAGE_SIZE)),
        }
    }

    /// Calls `f` on every access in order; stops at the first damaged block.
    pub fn for_each(&self, mut f: impl FnMut(&Access)) -> Result<(), ReplayError> {
        match self {
            TraceInput::File(path) => {
                for a in open_trace(path)? {
                    let a = a.map_err(|source| ReplayError::Trace {
                        path: path.clone(),
                        source,
                    })?;
                    f(&a);
                }
            }
            TraceInput::Memory { accesses, .. } => accesses.iter().for_each(f),
        }
        Ok(())
    }
}

/// What the advisor is shown of the access stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Every access, hits included: what a full trace offers, not a live VM.
    Full,
    /// What a live VM can see: every fault, plus, per window, about `pages` resident
    /// pages zapped at random whose next touch is observed (and costs a minor fault),
    /// plus the pages the advisor asks to watch (`ReplayConfig::probe_pages`).
    Sampled { pages: u32 },
}

impl std::fmt::Display for Visibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Visibility::Full => write!(f, "full"),
            Visibility::Sampled { pages } => write!(f, "sampled:{pages}"),
        }
    }
}

impl std::str::FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "full" {
            return Ok(Visibility::Full);
        }
        let n = s
            .strip_prefix("sampled:")
            .and_then(|n| n.parse::<u32>().ok());
        match n {
            Some(pages) if pages > 0 => Ok(Visibility::Sampled { pages }),
            _ => Err(format!(
                "visibility \"{s}\": use full or sampled:N (N pages per window, N >= 1)"
            )),
        }
    }
}

/// Probes per window by default: 16, with the advisors' own gate, measured best in
/// stall over the training traces (docs/predictor.md, "Probes").
pub const DEFAULT_PROBE_PAGES: u32 = 16;

/// Settings of a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// RAM budget as a fraction of the trace's distinct pages.
    pub ram_fraction: f64,
    /// Policy settings; `ram_budget_pages` is replaced by the fraction's budget.
    pub policy: PolicyConfig,
    pub latency: LatencyModel,
    pub visibility: Visibility,
    /// Under sampled visibility, the most resident pages per window an advisor may
    /// ask to have zapped and watched ([`Advisor::probes`]), besides the random ones.
    pub probe_pages: u32,
    /// Nanoseconds per instruction for traces whose clock counts instructions.
    pub ns_per_instruction: f64,
    /// Under sampled visibility, every this many windows the resident pages written
    /// since the last harvest are shown to the advisor (`AccessSource::DirtyLog`), as
    /// a KVM dirty-log harvest would; the first write to a page in each round pays a
    /// write-protect fault. 0 (the default): the dirty log only settles prefetch
    /// outcomes, as in the live VMM.
    pub dirty_harvest_windows: u32,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            ram_fraction: 0.25,
            policy: PolicyConfig::default(),
            latency: LatencyModel::default(),
            visibility: Visibility::Sampled { pages: 4 },
            probe_pages: DEFAULT_PROBE_PAGES,
            ns_per_instruction: 0.4,
            dirty_harvest_windows: 0,
        }
    }
}

/// Decides which resident pages are zapped in a window, without a list of them:
/// a page is zapped in window `w` iff a hash of (page, w) falls under a threshold
/// chosen so that about `pages` of the resident set are.
fn zapped(page: PageNumber, window: u64, threshold: u64) -> bool {
    let h = (page ^ window.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h ^ (h >> 29)) < threshold
}

/// Mutable state of one replay.
struct Sim<'a> {
    cfg: &'a ReplayConfig,
    policy: PagingPolicy,
    queues: DeviceQueues,
    page_size: u64,
    /// Prefetched pages whose read has not been waited for: when their data is ready.
    in_flight: FxHashMap<PageNumber, u64>,
    dirty: rustc_hash::FxHashSet<PageNumber>,
    /// Window in which each sampled page was last observed.
    sampled_in: FxHashMap<PageNumber, u64>,
    actions: Vec<Action>,
    stall_ns: u64,
    sample_stall_ns: u64,
    samples: u64,
    late_prefetches: u64,
    full: bool,
    /// Pages the advisor asked to watch ([`Advisor::probes`]): zapped until touched.
    probed: rustc_hash::FxHashSet<PageNumber>,
    probe_scratch: Vec<PageNumber>,
    probes: u64,
    /// Pages written since the last dirty-log harvest (`dirty_harvest_windows`), in
    /// the order of their first write, and the same as a set.
    written: Vec<PageNumber>,
    written_set: rustc_hash::FxHashSet<PageNumber>,
    /// Prefetched pages first used unseen and written since the last eviction: the
    /// live VMM harvests the dirty log when it carries out evictions, and that is when
    /// it learns such a page was used (`PagingPolicy::note_use_revealed`).
    unharvested_writes: rustc_hash::FxHashSet<PageNumber>,
}

impl Sim<'_> {
    /// Shows the advisor the resident pages written since the last harvest.
    fn harvest_dirty_log(&mut self, now: u64) {
        for i in 0..self.written.len() {
            let page = self.written[i];
            if self.policy.is_resident(page) {
                let seen = Access {
                    time_ns: now,
                    page,
                    vcpu: 0,
                    op: AccessOp::Write,
                    kind: Default::default(),
                    source: AccessSource::DirtyLog,
                };
                self.policy.on_access(&seen, &mut self.actions);
            }
        }
        self.written.clear();
        self.written_set.clear();
        self.apply_actions(now);
    }

    fn apply_actions(&mut self, now: u64) {
        let m = &self.cfg.latency;
        let mut evicted = false;
        for action in self.actions.drain(..) {
            match action {
                // Demand fills are charged by the access that waits on them.
                Action::Fill { .. } => {}
                Action::Prefetch { page, from } => {
                    let ready = self.queues.background_read(m, from, now, self.page_size);
                    self.in_flight.insert(page, ready);
                }
                Action::Evict { page, to } => {
                    evicted = true;
                    self.in_flight.remove(&page);
                    self.probed.remove(&page);
                    if self.dirty.remove(&page) {
                        self.queues.background_write(m, to, now, self.page_size);
                    }
                }
                Action::Move { to, .. } => self.queues.background_write(m, to, now, self.page_size),
            }
        }
        if evicted {
            // The live VMM's eviction flush harvests the dirty log after the policy
            // chose its victims (a victim's outcome was settled by then).
            for page in self.unharvested_writes.drain() {
                self.policy.note_use_revealed(page);
            }
        }
    }

    fn step(&mut self, a: &Access, now: u64, window: u64, zap_threshold: u64) {
        let m = &self.cfg.latency;
        let stall_at_start = self.stall_ns;
        let resident = self.policy.is_resident(a.page);
        // A prefetched page whose read has not completed is not mapped yet: touching it
        // is a missing fault the live handler sees (and waits on the read), whatever
        // the sampling. `Some(when the read completes)` for such a touch.
        let late = self
            .in_flight
            .get(&a.page)
            .copied()
            .filter(|&ready| resident && ready > now);
        let late_fault = late.is_some();
        let probed = resident && !self.full && self.probed.remove(&a.page);
        let observed = !resident
            || late_fault
            || self.full
            || probed
            || (zapped(a.page, window, zap_threshold)
                && self.sampled_in.insert(a.page, window) != Some(window));
        let outcome = if observed {
            let source = if !resident || late_fault {
                AccessSource::MissingFault
            } else if self.full {
                AccessSource::Full
            } else {
                self.samples += 1;
                self.sample_stall_ns += m.sample_fault_ns;
                self.stall_ns += m.sample_fault_ns;
                AccessSource::SampledMinor
            };
            let seen = Access {
                time_ns: now,
                source,
                ..*a
            };
            self.policy.on_access(&seen, &mut self.actions)
        } else {
            let outcome = self
                .policy
                .note_unobserved_hit(a.page)
                .unwrap_or(AccessOutcome::Hit);
            if a.op == AccessOp::Write && self.policy.use_unseen(a.page) {
                self.unharvested_writes.insert(a.page);
            }
            outcome
        };
        match outcome {
            AccessOutcome::Hit | AccessOutcome::PrefetchHit => {
                self.stall_ns += m.hit_ns;
                self.in_flight.remove(&a.page);
                if let Some(ready) = late {
                    self.stall_ns += m.fault_overhead_ns + (ready - now);
                    self.late_prefetches += 1;
                }
            }
            AccessOutcome::DemandFault { from } => {
                let done = self.queues.demand_read(m, from, now, self.page_size);
                self.stall_ns += m.fault_overhead_ns + (done - now);
            }
        }
        if a.op == AccessOp::Write {
            self.dirty.insert(a.page);
            if self.cfg.dirty_harvest_windows > 0 && !self.full && self.written_set.insert(a.page) {
                // The page was write-protected by the last harvest.
                self.written.push(a.page);
                self.stall_ns += m.write_protect_fault_ns;
                self.sample_stall_ns += m.write_protect_fault_ns;
            }
        }
        // Prefetches and write-backs are issued once the access is served.
        self.apply_actions(now + (self.stall_ns - stall_at_start));
    }
}

/// Replays `input` with `advisor` and reports what it cost.
pub fn replay_advisor(
    input: &super::TraceInput,
    advisor: Box<dyn Advisor>,
    name: &str,
    cfg: &ReplayConfig,
    ctx: &ReplayContext,
    clock: Clock,
    page_size: u64,
) -> Result<AdvisorReport, ReplayError> {
    let timed = TimedAdvisor::new(advisor);
    let spent = timed.spent();
    let policy_cfg = PolicyConfig {
        ram_budget_pages: ctx.ram_budget_pages,
        ..cfg.policy.clone()
    };
    let full = cfg.visibility == Visibility::Full || sees_everything(name);
    let mut sim = Sim {
        cfg,
        policy: PagingPolicy::new(policy_cfg, Box::new(timed))?,
        queues: DeviceQueues::default(),
        page_size,
        in_flight: FxHashMap::default(),
        dirty: Default::default(),
        sampled_in: FxHashMap::default(),
        actions: Vec::new(),
        stall_ns: 0,
        sample_stall_ns: 0,
        samples: 0,
        late_prefetches: 0,
        full,
        probed: Default::default(),
        probe_scratch: Vec::new(),
        probes: 0,
        written: Vec::new(),
        written_set: Default::default(),
        unharvested_writes: Default::default(),
    };
    let scale = match clock {
        Clock::Nanoseconds => 1.0,
        Clock::Instructions => cfg.ns_per_instruction,
    };
    let window_ns = cfg.policy.window_ns.max(1);
    let zap_pages = match cfg.visibility {
        Visibility::Sampled { pages } => u64::from(pages),
        Visibility::Full => 0,
    };
    let mut t0 = None;
    let mut accesses = 0u64;
    let mut zap_threshold = 0u64;
    let mut window = u64::MAX;
    let wall = Instant::now();
    input.for_each(|a| {
        if let Some(p) = &ctx.position {
            p.store(accesses, Ordering::Relaxed);
        }
        accesses += 1;
        let start = *t0.get_or_insert(a.time_ns);
        let now = ((a.time_ns.saturating_sub(start)) as f64 * scale) as u64 + sim.stall_ns;
        let w = now / window_ns;
        if w != window {
            window = w;
            let harvest = u64::from(cfg.dirty_harvest_windows);
            if harvest > 0 && w.is_multiple_of(harvest) && !sim.written.is_empty() {
                sim.harvest_dirty_log(now);
            }
            // Windows end even when the advisor sees nothing (the live VMM's timer).
            sim.policy.tick(now, &mut sim.actions);
            sim.apply_actions(now);
            // The pages the advisor asks to watch are zapped until touched; their
            // touches cost a minor fault like any sample's.
            if !sim.full && cfg.probe_pages > 0 {
                let mut probes = std::mem::take(&mut sim.probe_scratch);
                probes.clear();
                sim.policy.probes(cfg.probe_pages as usize, &mut probes);
                sim.probes += probes.len() as u64;
                sim.probed.extend(probes.iter().copied());
                sim.probe_scratch = probes;
            }
            // And about `zap_pages` of the resident set at random.
            let resident = sim.policy.resident_pages().max(1) as u64;
            zap_threshold = if zap_pages >= resident {
                u64::MAX
            } else {
                (u64::MAX / resident).saturating_mul(zap_pages)
            };
        }
        sim.step(a, now, w, zap_threshold);
    })?;
    let s = sim.policy.stats().clone();
    Ok(AdvisorReport {
        advisor: name.to_string(),
        visibility: if full {
            "full".into()
        } else {
            cfg.visibility.to_string()
        },
        accesses,
        distinct_pages: ctx.distinct_pages,
        ram_budget_pages: ctx.ram_budget_pages as u64,
        demand_faults: s.demand_faults,
        cold_faults: s.cold_faults,
        prefetch_issued: s.prefetch_issued,
        prefetch_useful: s.prefetch_useful,
        prefetch_late: sim.late_prefetches,
        prefetch_wasted: s.prefetch_wasted,
        accuracy: if s.prefetch_issued == 0 {
            0.0
        } else {
            s.prefetch_useful as f64 / s.prefetch_issued as f64
        },
        coverage: None,
        stall_ns: sim.stall_ns,
        sample_stall_ns: sim.sample_stall_ns,
        samples: sim.samples,
        probes: sim.probes,
        advisor_cpu_ns: spent.total_ns(),
        advisor_calls: tiering::metrics::AdvisorCallReport::from_time(&spent),
        evictions: s.evictions,
        moves: s.moves,
        windows: s.windows,
        replay_wall_ms: wall.elapsed().as_millis() as u64,
    })
}
