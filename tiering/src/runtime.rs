//! The live tiered-memory runtime: takes over a VM's guest RAM (a MAP_SHARED memfd
//! mapping), registers it with userfaultfd and runs the fault-handler thread
//! ([`crate::engine`]) that keeps RAM within its budget, spreading the rest over the
//! storage tiers of a [`TierConfig`]. Decisions come from [`PagingPolicy`] (the same
//! code the replay simulator runs) asking an [`Advisor`].
//!
//! The VMM provides [`VmHooks`]: the KVM dirty log (so clean pages are dropped
//! without a write-back) and a way to stop the VM when a page can no longer be
//! produced. Without a VM ([`HostOnlyHooks`]) every evicted page is written back.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::access::{PageNumber, PAGE_SIZE};
use crate::advisor::Advisor;
use crate::config::{TierBackendSpec, TierConfig, TIER_COUNT};
use crate::engine::MigratorHandle;
use crate::engine::{Engine, EngineConfig};
use crate::layout::{GuestLayout, GuestRegion};
use crate::metrics::{percentile_us, TierReport, TieringReport};
use crate::policy::{PagingPolicy, PolicyConfig, PolicyError};
use crate::stores::{open_migrator_backends, open_stores, StoreError};
use crate::uffd::{GuestUffd, UffdError};

/// The live policy's window: the advisor's models step and prefetches and re-tiering
/// are decided once per window (faults are served at once).
const LIVE_WINDOW_NS: u64 = 10_000_000;

/// Prefetches the live policy asks of the advisor after each demand fault and each first
/// use of a prefetched page: a kernel-sized readahead window (32 pages, 128 KiB). The
/// replay keeps `PolicyConfig::default()`'s 8 (`tiervisor replay
/// --max-prefetch-per-fault 32` models the live VMM). Live, a fault's readahead goes
/// out as a few merged transfers (`backend::MAX_RUN_PAGES`), so 32 pages cost little
/// more than 8: `stride` ran in 0.90-0.91 of its time and gru in 0.96-0.99
/// (docs/benchmarks.md, "Per-fault prefetch budget").
pub const LIVE_MAX_PREFETCH_PER_FAULT: usize = 32;

/// What the VMM lends the runtime.
pub trait VmHooks: Send {
    /// Whether [`VmHooks::harvest_dirty`] works (KVM dirty logging is on).
    fn has_dirty_log(&self) -> bool;
    /// Append the guest pages written since the last call and reset the log.
    fn harvest_dirty(&mut self, out: &mut Vec<PageNumber>) -> Result<(), String>;
    /// Stop the VM with this message: guest memory can no longer be served correctly.
    fn fatal(&mut self, message: String);
    /// The guest's page-table root (CR3) when it runs with 4-level paging, and whether
    /// EFER.NXE is set; `None` when unknown (no VM, paging off).
    fn page_table_root(&self) -> Option<(u64, bool)> {
        None
    }
}

/// Hooks for use without a VM (tests, benchmarks): no dirty log, fatal errors logged.
pub struct HostOnlyHooks {
    pub failed: Arc<Mutex<Option<String>>>,
}

impl VmHooks for HostOnlyHooks {
    fn has_dirty_log(&self) -> bool {
        false
    }
    fn harvest_dirty(&mut self, _out: &mut Vec<PageNumber>) -> Result<(), String> {
        Ok(())
    }
    fn fatal(&mut self, message: String) {
        log::error!("{message}");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(message);
        }
    }
}

/// How to run tiered memory.
#[derive(Debug, Clone)]
pub struct TieringOptions {
    pub tiers: TierConfig,
    /// Most guest pages resident in RAM (tiers 0 and 1 together).
    pub ram_budget_pages: u64,
    /// Record access events here (tiering::trace format).
    pub trace_out: Option<PathBuf>,
    /// CPU to pin the fault handler to (the vCPU's CPU); `None`: not pinned.
    pub handler_cpu: Option<usize>,
    /// Resident pages zapped per sampling round to observe accesses to them (0: off).
    pub sample_pages: usize,
    /// Time between sampling rounds; with `sample_pages` it bounds the overhead.
    pub sample_interval: Duration,
    /// Resident pages the advisor may ask to watch per probe round
    /// ([`crate::advisor::Advisor::probes`]; 0: off).
    pub probe_pages: usize,
    /// Time between probe rounds: 1 ms, the replay's window, so that a live VM probes
    /// as often as `tiervisor replay` assumes (16 pages per 1 ms window; until session
    /// 13 probes came with the 50 ms sampling rounds, 50 times fewer: docs/replay.md).
    /// `TIERVISOR_PROBE_INTERVAL_US` overrides it, for comparisons.
    pub probe_interval: Duration,
    /// How long the fault handler polls a demand read's completion before it sleeps
    /// on it (`TIERVISOR_DEMAND_SPIN_US` overrides it, for comparisons; 0: always
    /// sleep). 200 us covers a read from this host's disk and from the `nvme` and `ssd`
    /// profiles; the vCPU waits on the read meanwhile, so the handler's CPU (the
    /// vCPU's) would otherwise idle.
    pub demand_spin: Duration,
    /// Name of the advisor, for the report.
    pub advisor_name: String,
    /// `Some(t)`: guest memory starts in storage tier `t`, page index i in slot i (a
    /// VM restored from an image of its memory); `None`: it starts empty (zero-filled).
    pub initial_tier: Option<u8>,
    /// Execute prefetches and moves of file-backed tiers on a migrator thread (the
    /// default); `false`: the fault-handler thread executes them (for comparison).
    pub migrator: bool,
    /// Publish page content hashes here and mark pages other live VMs also hold as
    /// kind Shared (see [`crate::share`]); `None`: off.
    pub share_dir: Option<PathBuf>,
    /// Probabilities from which an evicted page goes to each storage tier (an admin
    /// policy's, [`crate::admin`]; the defaults otherwise).
    pub thresholds: crate::policy::TierThresholds,
}

impl TieringOptions {
    pub fn new(tiers: TierConfig, ram_budget_pages: u64) -> Self {
        Self {
            tiers,
            ram_budget_pages,
            trace_out: None,
            handler_cpu: None,
            sample_pages: 64,
            sample_interval: Duration::from_millis(50),
            probe_pages: 16,
            probe_interval: Duration::from_micros(
                env_us("TIERVISOR_PROBE_INTERVAL_US").unwrap_or(1_000),
            ),
            demand_spin: Duration::from_micros(env_us("TIERVISOR_DEMAND_SPIN_US").unwrap_or(200)),
            advisor_name: "none".into(),
            initial_tier: None,
            migrator: true,
            share_dir: None,
            thresholds: crate::policy::TierThresholds::default(),
        }
    }
}

/// A duration in microseconds from the environment (comparison overrides).
fn env_us(var: &str) -> Option<u64> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

/// Why tiered memory could not start.
#[derive(Debug, thiserror::Error)]
pub enum TieringError {
    #[error("--ram-budget must be at least one page (4 KiB)")]
    ZeroBudget,
    #[error("the tier file gives no storage tier (2-5) for the {pages} guest pages beyond the RAM budget of {budget}: add [tier2] .. [tier5]")]
    NoStorage { pages: u64, budget: u64 },
    #[error("guest memory cannot start in tier {tier}: it is not a storage tier of the tier file or holds fewer than the guest's {pages} pages")]
    InitialTier { tier: u8, pages: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Uffd(#[from] UffdError),
    #[error("paging policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("cannot create trace file {path}: {detail}")]
    Trace { path: PathBuf, detail: String },
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error("cannot start the fault-handler thread: {0}")]
    Thread(std::io::Error),
}

/// Why [`TieredMemory::prefetch`] could not pass a request on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrefetchError {
    #[error("target tier {0} does not exist: tiers are 0 (hot set) to 5 (networked)")]
    NoSuchTier(u8),
    #[error("the fault-handler thread has stopped; no page can be moved any more")]
    Stopped,
}

/// Pages to move to a tier, sent to the fault-handler thread.
pub(crate) struct MoveRequest {
    pub pages: Vec<PageNumber>,
    pub target: u8,
}

/// State the handler thread publishes for the owner.
pub(crate) struct Shared {
    pub report: Mutex<Option<TieringReport>>,
    /// A RAM budget (pages) asked for by [`BudgetHandle::set_ram_budget`] and not yet
    /// applied by the handler; 0: none.
    pub budget_request: AtomicU64,
    /// The VM's vCPUs are paused ([`BudgetHandle::set_paused`]): no window ends, and
    /// no page is sampled or probed, until they run again.
    pub paused: AtomicBool,
    /// A fresh report is wanted ([`BudgetHandle::want_report`]): the handler publishes
    /// at its next idle moment instead of waiting out its publishing interval.
    pub report_wanted: AtomicBool,
}

/// Changes a running VM's RAM budget and reads its counters from another thread: what
/// a memory manager that shares one RAM budget among VMs needs of each
/// (`tiervisor pool`, docs/pool.md).
#[derive(Clone)]
pub struct BudgetHandle {
    shared: Arc<Shared>,
    wake: Arc<File>,
    moves: Sender<MoveRequest>,
}

/// Why [`BudgetHandle::set_ram_budget`] refused a budget.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("a RAM budget must be at least one page (4 KiB)")]
    Zero,
}

impl BudgetHandle {
    /// Asks the fault handler for a new RAM budget; it applies it between faults, and
    /// a smaller one starts evictions at once. Returns without waiting.
    pub fn set_ram_budget(&self, pages: u64) -> Result<(), BudgetError> {
        if pages == 0 {
            return Err(BudgetError::Zero);
        }
        self.shared.budget_request.store(pages, Ordering::Release);
        wake(&self.wake);
        Ok(())
    }

    /// The latest published counters ([`TieredMemory::snapshot`]).
    pub fn snapshot(&self) -> Option<TieringReport> {
        self.shared.report.lock().ok().and_then(|r| r.clone())
    }

    /// Says that the VM's vCPUs are paused (a scheduler runs VMs in turns) or run
    /// again. While paused the policy's windows do not end, so an advisor that learns
    /// online is not taught that nothing is touched, and no page is sampled or probed.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
        wake(&self.wake);
    }

    /// Asks the handler to publish its counters at its next idle moment: a member
    /// watching its staged pages come in reads them within milliseconds, not the 20 ms
    /// the handler otherwise waits between reports.
    pub fn want_report(&self) {
        self.shared.report_wanted.store(true, Ordering::Release);
        wake(&self.wake);
    }

    /// [`TieredMemory::prefetch`], from another thread (staging a VM's pages before a
    /// scheduler runs it).
    pub fn prefetch(&self, pages: &[PageNumber], target_tier: u8) -> Result<(), PrefetchError> {
        send_moves(&self.moves, &self.wake, pages, target_tier)
    }
}

/// Passes a move request to the fault-handler thread and wakes it.
fn send_moves(
    moves: &Sender<MoveRequest>,
    handler_fd: &File,
    pages: &[PageNumber],
    target_tier: u8,
) -> Result<(), PrefetchError> {
    if target_tier as usize >= TIER_COUNT {
        return Err(PrefetchError::NoSuchTier(target_tier));
    }
    let request = MoveRequest {
        pages: pages.to_vec(),
        target: target_tier,
    };
    moves.send(request).map_err(|_| PrefetchError::Stopped)?;
    wake(handler_fd);
    Ok(())
}

/// Wakes the fault-handler thread if it waits in poll (its eventfd, `stop_fd`).
fn wake(fd: &File) {
    let one = 1u64.to_ne_bytes();
    let _ = std::io::Write::write(&mut &*fd, &one);
}

/// Lets other threads tell the handler which vCPU a thread id is.
#[derive(Clone)]
pub struct VcpuRegistry(Arc<Mutex<FxHashMap<i32, u16>>>);

impl VcpuRegistry {
    /// Record that the calling thread runs `vcpu`.
    pub fn register_current_thread(&self, vcpu: u16) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if let Ok(mut m) = self.0.lock() {
            m.insert(tid, vcpu);
        }
    }
}

/// A running tiered memory. Stop it after the vCPUs have stopped.
pub struct TieredMemory {
    thread: Option<JoinHandle<TieringReport>>,
    stop: Arc<AtomicBool>,
    stop_fd: Arc<File>,
    shared: Arc<Shared>,
    vcpus: VcpuRegistry,
    moves: Sender<MoveRequest>,
}

fn eventfd() -> std::io::Result<File> {
    // SAFETY: eventfd with valid flags; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl TieredMemory {
    /// Take over guest RAM. `regions` are MAP_SHARED mappings of `memfd`; pages
    /// already in the memfd count as resident.
    pub fn start(
        regions: &[GuestRegion],
        memfd: Arc<File>,
        options: TieringOptions,
        advisor: Box<dyn Advisor>,
        hooks: Box<dyn VmHooks>,
    ) -> Result<Self, TieringError> {
        if options.ram_budget_pages == 0 {
            return Err(TieringError::ZeroBudget);
        }
        let layout = GuestLayout::new(regions);
        let guest_pages = layout.pages() as u64;
        let mut capacity = [0u64; TIER_COUNT];
        for (t, c) in capacity.iter_mut().enumerate().skip(2) {
            *c = options.tiers.capacity_pages(t, PAGE_SIZE);
        }
        let storage: u64 = capacity.iter().sum();
        let beyond = guest_pages.saturating_sub(options.ram_budget_pages);
        if beyond > 0 && storage == 0 {
            return Err(TieringError::NoStorage {
                pages: guest_pages,
                budget: options.ram_budget_pages,
            });
        }
        if storage < beyond {
            // Untouched guest pages need no slot, so this may well work; if the tiers
            // do fill up, evictions are refused and RAM grows past the budget.
            log::warn!(
                "the storage tiers hold {storage} pages, fewer than the {beyond} guest pages beyond the RAM budget: if the guest touches more, RAM will exceed the budget"
            );
        }
        let stores = open_stores(&options.tiers)?;
        let policy_config = PolicyConfig {
            ram_budget_pages: options.ram_budget_pages as usize,
            window_ns: LIVE_WINDOW_NS,
            retier_per_window: PolicyConfig::retier_for_window(LIVE_WINDOW_NS),
            tier_capacity_pages: capacity,
            storage_order: options.tiers.order,
            hot_capacity_pages: options.tiers.capacity_pages(0, PAGE_SIZE) as usize,
            // Heats halve once a second (100 windows): sampling sees a resident page
            // about once a second, so a faster decay never lets one count as hot.
            hot_decay_windows: 100,
            initial_tier: options.initial_tier,
            max_prefetch_per_fault: LIVE_MAX_PREFETCH_PER_FAULT,
            thresholds: options.thresholds,
            ..PolicyConfig::default()
        };
        // Timed on the handler thread that calls it: the report's `advisor_cpu_ms`.
        let advisor = crate::advisor::TimedAdvisor::new(advisor);
        let advisor_time = advisor.spent();
        if policy_config.hot_capacity_pages > 0 && !advisor.wants_hot_set() {
            log::info!(
                "tier 0 (the hot set) is not kept: the {} advisor orders eviction by its own prediction",
                options.advisor_name
            );
        }
        let policy = PagingPolicy::new(policy_config, Box::new(advisor))?;
        let trace = match &options.trace_out {
            Some(path) => {
                let mut header = crate::trace::TraceHeader {
                    description: format!("tiervisor run, advisor {}", options.advisor_name),
                    ..crate::trace::TraceHeader::default()
                };
                header.metadata.insert(
                    "ram_budget_pages".into(),
                    options.ram_budget_pages.to_string(),
                );
                Some(
                    crate::trace::TraceWriter::create(path, &header).map_err(|e| {
                        TieringError::Trace {
                            path: path.clone(),
                            detail: e.to_string(),
                        }
                    })?,
                )
            }
            None => None,
        };
        advise_huge_pages(regions);
        let uffd = Arc::new(GuestUffd::new()?);
        for r in regions {
            uffd.register(r.host_addr, r.len as usize)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop_fd = Arc::new(eventfd().map_err(TieringError::Thread)?);
        let shared = Arc::new(Shared {
            report: Mutex::new(None),
            budget_request: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            report_wanted: AtomicBool::new(false),
        });
        let vcpus = VcpuRegistry(Arc::new(Mutex::new(FxHashMap::default())));
        let mut engine = Engine::new(
            uffd,
            layout,
            memfd,
            policy,
            stores,
            hooks,
            shared.clone(),
            stop.clone(),
            stop_fd.clone(),
            EngineConfig {
                cpu: options.handler_cpu,
                sample_pages: options.sample_pages,
                sample_interval: options.sample_interval,
                probe_pages: options.probe_pages,
                probe_interval: options.probe_interval,
                demand_spin: options.demand_spin,
            },
            trace,
            vcpus.0.clone(),
        );
        engine.advisor_name = options.advisor_name.clone();
        engine.advisor_time = advisor_time;
        if let Some(dir) = &options.share_dir {
            engine.share = Some(crate::share::ShareRegistry::new(dir, guest_pages as usize)?);
        }
        engine.tiers = options.tiers.clone();
        if options.migrator {
            let backends = open_migrator_backends(&options.tiers)?;
            engine.migrator = Some(
                MigratorHandle::spawn(backends, engine.uffd.clone(), stop_fd.clone())
                    .map_err(TieringError::Thread)?,
            );
        }
        let (moves, move_requests) = channel();
        engine.move_requests = Some(move_requests);
        if let Some(t) = options.initial_tier {
            if !engine.start_in_tier(t) {
                return Err(TieringError::InitialTier {
                    tier: t,
                    pages: guest_pages,
                });
            }
        }
        engine.adopt_present_pages();
        let thread = std::thread::Builder::new()
            .name("tier-faults".into())
            .spawn(move || {
                engine.run();
                engine.report()
            })
            .map_err(TieringError::Thread)?;
        Ok(Self {
            thread: Some(thread),
            stop,
            stop_fd,
            shared,
            vcpus,
            moves,
        })
    }

    /// Ask for `pages` (guest page numbers) to be moved to `target_tier`: 0 or 1
    /// prefetches them into RAM, 2-5 moves those not resident to that storage tier.
    /// Returns at once; the fault-handler thread carries the request out in batches
    /// between faults (see [`PagingPolicy::request_moves`] for what is skipped).
    pub fn prefetch(&self, pages: &[PageNumber], target_tier: u8) -> Result<(), PrefetchError> {
        send_moves(&self.moves, &self.stop_fd, pages, target_tier)
    }

    /// A handle that changes the RAM budget while the VM runs.
    pub fn budget_handle(&self) -> BudgetHandle {
        BudgetHandle {
            shared: self.shared.clone(),
            wake: self.stop_fd.clone(),
            moves: self.moves.clone(),
        }
    }

    /// For vCPU threads to say which vCPU they run (events carry the vCPU id).
    pub fn vcpu_registry(&self) -> VcpuRegistry {
        self.vcpus.clone()
    }

    /// The latest published counters (updated when the handler is idle, at most every
    /// 20 ms, and when it stops).
    pub fn snapshot(&self) -> Option<TieringReport> {
        self.shared.report.lock().ok().and_then(|r| r.clone())
    }

    /// Stop the handler after finishing in-flight write-backs; returns the final report.
    /// Call after the vCPUs stopped: a fault after this is never served.
    pub fn stop(mut self) -> TieringReport {
        self.finish()
    }

    fn finish(&mut self) -> TieringReport {
        self.stop.store(true, Ordering::Release);
        wake(&self.stop_fd);
        let report = self.thread.take().and_then(|t| t.join().ok());
        let report = report
            .or_else(|| self.snapshot())
            .expect("the fault handler publishes a report");
        if let Some(hint) = report.order_hint() {
            log::warn!("{hint}");
        }
        report
    }
}

impl Drop for TieredMemory {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}

/// Where the kernel says whether shared memory (our memfd) may use huge pages.
const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Asks for transparent huge pages on guest RAM (tier 0 "on huge pages where
/// possible") when the kernel allows them for shmem; a no-op when it says `never`
/// or `deny`. Pages installed by UFFDIO_COPY are 4 KiB either way, so only pages
/// the kernel fills itself (or collapses later) can become huge.
fn advise_huge_pages(regions: &[GuestRegion]) {
    let mode = std::fs::read_to_string(SHMEM_THP).unwrap_or_default();
    let allowed = ["[always]", "[within_size]", "[advise]", "[force]"]
        .iter()
        .any(|m| mode.contains(m));
    if !allowed {
        log::info!(
            "no transparent huge pages for guest RAM: {SHMEM_THP} is {}",
            mode.trim()
        );
        return;
    }
    for r in regions {
        // SAFETY: the region is a live mapping of guest RAM owned by the VMM for the
        // VM's lifetime; MADV_HUGEPAGE only changes the kernel's paging hints.
        let rc = unsafe {
            libc::madvise(
                r.host_addr as *mut libc::c_void,
                r.len as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            log::warn!(
                "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

pub(crate) fn build_report(e: &Engine) -> TieringReport {
    let c = e.counters();
    let kinds = e.kind_totals();
    let stats = e.policy.stats();
    let tier_pages = e.policy.tier_pages();
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)
        .expect("static histogram bounds are valid");
    let migrator_io = e.migrator_stats();
    let per_tier = (0..TIER_COUNT)
        .map(|t| {
            let tc = &c.tiers[t];
            let handler_io = e.stores[t]
                .as_ref()
                .map(|s| s.backend.stats())
                .unwrap_or_default();
            let _ = all.add(&tc.latency_ns);
            let spec = e.tiers.tiers[t].as_ref();
            TierReport {
                tier: t,
                backend: match spec.map(|s| &s.backend) {
                    None => "absent".into(),
                    Some(TierBackendSpec::Ram) => "ram".into(),
                    Some(_) => e.stores[t]
                        .as_ref()
                        .map(|s| s.backend.describe())
                        .unwrap_or_default(),
                },
                capacity_pages: match t {
                    0 | 1 => e.tiers.capacity_pages(t, PAGE_SIZE).min(e.ram_budget()),
                    _ => e.stores[t].as_ref().map_or(0, |s| s.slots.capacity()),
                },
                resident_pages: match t {
                    0 => tier_pages[0],
                    1 => e.resident_pages().saturating_sub(tier_pages[0]),
                    _ => tier_pages[t],
                },
                demand_faults: tc.demand_faults,
                fault_latency_p50_us: percentile_us(&tc.latency_ns, 0.5),
                fault_latency_p99_us: percentile_us(&tc.latency_ns, 0.99),
                bytes_read: tc.bytes_read,
                bytes_written: tc.bytes_written,
                evictions: tc.evictions,
                prefetch_issued: tc.prefetch_issued,
                io_errors: tc.io_errors,
                io_requests: handler_io.requests + migrator_io[t].requests,
                io_transfers: handler_io.transfers + migrator_io[t].transfers,
            }
        })
        .collect();
    TieringReport {
        advisor: e.advisor_name.clone(),
        ram_budget_pages: e.ram_budget(),
        guest_pages: e.layout.pages() as u64,
        demand_faults: c.tiers.iter().map(|t| t.demand_faults).sum(),
        evictions: c.tiers.iter().map(|t| t.evictions).sum::<u64>() + c.zero_drops,
        zero_drops: c.zero_drops,
        prefetch_issued: stats.prefetch_issued,
        prefetch_useful: stats.prefetch_useful,
        zero_fills: c.zero_fills,
        minor_faults: c.minor_faults,
        sampled_zaps: c.sampled_zaps,
        windows: stats.windows,
        sample_hits: c.sample_hits,
        samples_evicted: c.samples_evicted,
        probe_zaps: c.probe_zaps,
        probe_rounds_skipped: c.probe_rounds_skipped,
        write_backs_skipped_clean: c.write_backs_skipped_clean,
        write_backs_skipped_unchanged: c.write_backs_skipped_unchanged,
        dirty_log: e.hooks.has_dirty_log(),
        dirty_harvests: c.dirty_harvests,
        evictions_cancelled: c.evictions_cancelled,
        evictions_refused: c.evictions_refused,
        admission_waits: c.admission_waits,
        prefetches_dropped: c.prefetches_dropped,
        prefetches_late: c.prefetches_late,
        resident_misses: c.resident_misses,
        migrations: c.migrations,
        pages_hashed: c.pages_hashed,
        shared_pages: c.shared_pages_peak,
        share_peers: c.share_peers_peak,
        moves: stats.moves,
        trace_events: c.events_traced,
        fallback_victims: stats.fallback_victims,
        hot_victims_skipped: stats.hot_victims_skipped,
        handler_idle_ms: c.handler_idle_ns as f64 / 1e6,
        cpu_shared_ms: c.cpu_shared_ns as f64 / 1e6,
        advisor_cpu_ms: e.advisor_time.total_ns() as f64 / 1e6,
        advisor_calls: crate::metrics::AdvisorCallReport::from_time(&e.advisor_time),
        page_table_walks: c.page_table_walks,
        page_tables_unreadable: c.page_tables_unreadable,
        pages_code: kinds.0,
        pages_data: kinds.1,
        pages_shared: kinds.2,
        fault_latency_p50_us: percentile_us(&all, 0.5),
        fault_latency_p99_us: percentile_us(&all, 0.99),
        refault_distance_log2: stats.refault_distances.buckets().to_vec(),
        per_tier,
        storage_order: e.policy.config().storage_order.tiers(),
    }
}
