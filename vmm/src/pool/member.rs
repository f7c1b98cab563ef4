//! The member side of a RAM pool: a VM joins, then a thread reports every round and
//! carries out what the manager assigns: a budget and, when the manager schedules
//! VMs in turns, whether the VM runs (docs/pool.md, "Running VMs in turns").

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tiering::access::PageNumber;
use tiering::runtime::BudgetHandle;
use vmm_sys_util::eventfd::EventFd;

use super::{
    budget_path, io_error, manager_runs, now_ms, read_json, read_pool_file, report_path,
    wait_readable, write_json, Assignment, DirWatch, MemberReport, PoolError, PoolFile,
    JOIN_TIMEOUT, POOL_FORMAT, TURN_REPORT_INTERVAL,
};
use crate::tiered::GuestPages;
use crate::vcpu::VcpuGate;

/// How often a member looks while its staged pages come in, and reads its assignment
/// when it cannot watch the pool directory and the manager runs VMs in turns (a turn
/// then starts and ends within this of the manager's decision). Otherwise it wakes when
/// the manager writes its assignment, and to report.
const ASSIGNMENT_POLL: Duration = Duration::from_millis(2);

/// A VM's place in a pool, from joining to leaving.
pub struct PoolMembership {
    dir: PathBuf,
    pool: PoolFile,
    pid: u32,
    priority: u32,
    guest_pages: u64,
    cpu: Option<usize>,
    /// The budget the manager gave at joining.
    pub initial_budget_pages: u64,
    /// Whether the VM may run from the start (false: the scheduler runs others first).
    pub initial_run: bool,
    /// The staging request of the first assignment: a first turn has nothing to stage,
    /// so it counts as done at once.
    initial_stage: u64,
}

/// What a member thread acts on besides the budget: the VM's vCPUs and its pages.
pub struct VmControl {
    pub gate: Arc<VcpuGate>,
    pub vcpus: usize,
    pub pages: GuestPages,
}

impl PoolMembership {
    /// Joins the pool in `dir`: reports this VM (pinned to host CPU `cpu`, if given)
    /// and waits for its first budget.
    pub fn join(
        dir: &Path,
        priority: u32,
        guest_pages: u64,
        cpu: Option<usize>,
    ) -> Result<Self, PoolError> {
        let pool = read_pool_file(dir)?;
        let pid = std::process::id();
        let report = MemberReport::joining(pid, priority, guest_pages, cpu);
        write_json(&report_path(dir, pid), &report)
            .map_err(io_error(dir, "cannot write this VM's report"))?;
        let start = Instant::now();
        let first = loop {
            match read_json::<Assignment>(&budget_path(dir, pid)) {
                Ok(a) if a.version == POOL_FORMAT && a.budget_pages > 0 => break a,
                _ => {}
            }
            if start.elapsed() >= JOIN_TIMEOUT || !manager_runs(dir) {
                let _ = std::fs::remove_file(report_path(dir, pid));
                return Err(PoolError::JoinTimeout {
                    dir: dir.display().to_string(),
                    pid: pool.manager_pid,
                    secs: JOIN_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            pool,
            pid,
            priority,
            guest_pages,
            cpu,
            initial_budget_pages: first.budget_pages,
            initial_run: first.run,
            initial_stage: if first.run { first.stage } else { 0 },
        })
    }

    /// Starts reporting every round and carrying out what the manager assigns. Call
    /// before the vCPUs run: if the VM's turn comes later, they wait from the start.
    pub fn start(self, handle: BudgetHandle, vm: VmControl) -> PoolMemberThread {
        if !self.initial_run {
            vm.gate.pause();
            handle.set_paused(true);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // An eventfd that `leave` makes readable to wake the thread (None if the kernel
        // refused one: the thread then notices `stop` at its next report).
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .ok()
            .map(Arc::new);
        let wake2 = wake.clone();
        let thread = std::thread::Builder::new()
            .name("ram-pool".into())
            .spawn(move || self.run(handle, vm, &stop2, wake2.as_deref()))
            .ok();
        PoolMemberThread { stop, wake, thread }
    }

    fn report(&self, handle: &BudgetHandle, staged: u64) {
        let Some(r) = handle.snapshot() else {
            return;
        };
        let report = MemberReport {
            version: POOL_FORMAT,
            pid: self.pid,
            priority: self.priority,
            guest_pages: self.guest_pages,
            budget_pages: r.ram_budget_pages,
            resident_pages: r.per_tier.iter().take(2).map(|t| t.resident_pages).sum(),
            demand_faults: r.demand_faults,
            zero_fills: r.zero_fills,
            sampled_zaps: r.sampled_zaps,
            sample_hits: r.sample_hits,
            samples_evicted: r.samples_evicted,
            time_ms: now_ms(),
            staged,
            cpu: self.cpu,
        };
        if let Err(e) = write_json(&report_path(&self.dir, self.pid), &report) {
            log::warn!("ram pool: cannot write this VM's report: {e}");
        }
    }

    fn run(
        self,
        handle: BudgetHandle,
        vm: VmControl,
        stop: &AtomicBool,
        wake: Option<&EventFd>,
    ) -> BudgetHistory {
        let interval = Duration::from_millis(self.pool.interval_ms.max(1));
        let watch = DirWatch::new(&self.dir)
            .map_err(|e| {
                log::warn!(
                    "ram pool: cannot watch {}: {e}; polling it",
                    self.dir.display()
                )
            })
            .ok();
        let budget_file = budget_path(&self.dir, self.pid);
        let budget_name = budget_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let (poll, report_every) = if self.pool.slice_ms.is_some() {
            (ASSIGNMENT_POLL, TURN_REPORT_INTERVAL.min(interval))
        } else {
            (interval, interval)
        };
        let mut history = BudgetHistory::new(self.initial_budget_pages);
        let mut turn = Turn {
            running: self.initial_run,
            paused_at: (!self.initial_run).then(Instant::now),
            stage: self.initial_stage,
            working_set: Vec::new(),
            staging: None,
            staged: self.initial_stage,
        };
        let mut applied = self.initial_budget_pages;
        let mut last_report: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            // Staging done: said at once, since the manager times the turn from it.
            let staged_now = turn.staging_done(&handle, &mut history);
            if staged_now || last_report.is_none_or(|t| t.elapsed() >= report_every) {
                last_report = Some(Instant::now());
                self.report(&handle, turn.staged);
                // A paused VM whose manager is gone would wait for ever: it runs on.
                if !turn.running && !manager_runs(&self.dir) {
                    log::warn!("ram pool: the manager is gone; this VM runs on");
                    turn.resume(&vm, &handle, &mut history);
                }
            }
            if let Ok(a) = read_json::<Assignment>(&budget_path(&self.dir, self.pid)) {
                if a.version == POOL_FORMAT && a.budget_pages > 0 {
                    // Pausing: the vCPUs stop and the working set is noted before a
                    // smaller budget evicts it. Resuming: the budget grows first, so
                    // that the staged pages have room.
                    if !a.run && turn.running {
                        turn.pause(&vm, &handle);
                    }
                    if a.budget_pages != applied && handle.set_ram_budget(a.budget_pages).is_ok() {
                        log::info!("ram pool: budget {applied} -> {} pages", a.budget_pages);
                        applied = a.budget_pages;
                        history.note(applied);
                    }
                    let new_stage = a.stage != 0 && a.stage != turn.stage;
                    if a.run && !turn.running {
                        if new_stage {
                            history.staged_pages +=
                                turn.begin_staging(a.stage, &handle, applied, false);
                        }
                        turn.resume(&vm, &handle, &mut history);
                    } else if !a.run && !turn.running && new_stage {
                        // Room lent while this VM waits: its pages come in before its turn.
                        let n = turn.begin_staging(a.stage, &handle, applied, true);
                        log::info!("ram pool: staging {n} pages before this VM's turn");
                        history.prestaged_pages += n;
                    }
                }
            }
            // Asleep until the manager writes this VM's assignment, the next report or
            // leaving, not woken every few ms: each wake-up on the vCPU's host CPU takes
            // the CPU from the guest (docs/pool.md, "Waking up").
            if stop.load(Ordering::Acquire) {
                break;
            }
            let since = last_report.map_or(Duration::ZERO, |t| t.elapsed());
            let mut timeout = report_every.saturating_sub(since);
            if turn.staging.is_some() {
                timeout = timeout.min(ASSIGNMENT_POLL);
            }
            let wake_fd = wake.map(|w| w.as_raw_fd());
            match &watch {
                Some(w) => {
                    w.wait(timeout, wake_fd, |name, _| {
                        Some(name) == budget_name.as_deref()
                    });
                }
                None => {
                    wait_readable(&[wake_fd], timeout.min(poll));
                }
            }
        }
        if let Some(t) = turn.paused_at {
            history.paused_ms += t.elapsed().as_secs_f64() * 1000.0;
        }
        history
    }
}

/// A member's turns: whether its VM runs, and what it held when it was paused.
struct Turn {
    running: bool,
    paused_at: Option<Instant>,
    /// The manager's staging request last carried out.
    stage: u64,
    /// The pages in RAM when the VM was last paused, in address order.
    working_set: Vec<PageNumber>,
    /// The staging under way, until its pages are in.
    staging: Option<Staging>,
    /// The last staging request whose pages are in (reported to the manager).
    staged: u64,
}

/// Pages asked back at the start of a turn (or before it, in lent room), and how far
/// they have come.
struct Staging {
    since: Instant,
    pages: u64,
    /// Asked for while the VM waits: its time is not the turn's staging time.
    before_turn: bool,
    /// Resident pages at the last look, when that last grew, and whether it has grown
    /// since the first look.
    resident: u64,
    last_growth: Instant,
    grew: bool,
}

/// Staging is done when this share of the pages asked for is in RAM (a few may have
/// been evicted again by the running VM, or dropped for want of room)...
const STAGED_SHARE: f64 = 0.95;
/// ... or when RAM, having begun to fill, has stopped for this long (the rest will not
/// come; the first pages can take longer, behind the VM's own write-backs on a disk)...
const STAGING_STALL: Duration = Duration::from_millis(250);
/// ... or after this long in any case.
const STAGING_MOST: Duration = Duration::from_secs(10);

impl Turn {
    fn pause(&mut self, vm: &VmControl, handle: &BudgetHandle) {
        vm.gate.pause();
        handle.set_paused(true);
        if !vm.gate.wait_parked(vm.vcpus, Duration::from_secs(1)) {
            log::warn!("ram pool: the vCPUs did not stop within 1 s");
        }
        let resident = vm.pages.resident();
        if self.staging.take().is_some() {
            // Paused before its staged pages were all in: those still on their way are
            // as much its working set as the resident ones, and would otherwise drop
            // out of it turn after turn.
            let mut set = std::mem::take(&mut self.working_set);
            set.extend(resident);
            set.sort_unstable();
            set.dedup();
            self.working_set = set;
        } else {
            self.working_set = resident;
        }
        self.running = false;
        self.paused_at = Some(Instant::now());
    }

    fn resume(&mut self, vm: &VmControl, handle: &BudgetHandle, history: &mut BudgetHistory) {
        handle.set_paused(false);
        vm.gate.resume();
        self.running = true;
        history.turns += 1;
        if let Some(t) = self.paused_at.take() {
            history.paused_ms += t.elapsed().as_secs_f64() * 1000.0;
        }
    }

    /// Whether the staging under way has just finished; if so, notes it (and its time).
    fn staging_done(&mut self, handle: &BudgetHandle, history: &mut BudgetHistory) -> bool {
        let Some(st) = self.staging.as_mut() else {
            return false;
        };
        let resident = handle.snapshot().map_or(0, |r| {
            r.per_tier.iter().take(2).map(|t| t.resident_pages).sum()
        });
        // The next look, a poll from now, then reads counters of that moment.
        handle.want_report();
        if resident > st.resident {
            // The first look finds the pages the VM kept while it waited: not growth.
            st.grew |= st.resident > 0;
            st.resident = resident;
            st.last_growth = Instant::now();
        }
        let filled = resident as f64 >= STAGED_SHARE * st.pages as f64;
        let stalled = st.grew && st.last_growth.elapsed() >= STAGING_STALL;
        if !filled && !stalled && st.since.elapsed() < STAGING_MOST {
            return false;
        }
        if !st.before_turn {
            let ms = st.since.elapsed().as_secs_f64() * 1000.0;
            history.staging_ms += ms;
            history.max_staging_ms = history.max_staging_ms.max(ms);
        }
        self.staging = None;
        self.staged = self.stage;
        true
    }

    /// Carries out staging request `stage`: asks for the pages and watches them come.
    /// Returns how many were asked for.
    fn begin_staging(
        &mut self,
        stage: u64,
        handle: &BudgetHandle,
        budget: u64,
        before_turn: bool,
    ) -> u64 {
        self.stage = stage;
        let pages = self.stage_pages(handle, budget);
        self.staging = Some(Staging {
            since: Instant::now(),
            pages,
            before_turn,
            resident: 0,
            last_growth: Instant::now(),
            grew: false,
        });
        pages
    }

    /// Asks for the pages the VM held when it was paused, as many as `budget` leaves
    /// room for; returns how many were asked for.
    fn stage_pages(&self, handle: &BudgetHandle, budget: u64) -> u64 {
        let n = self.working_set.len().min(budget as usize);
        if n == 0 {
            return 0;
        }
        // The most recently filled pages are not known here; the first `n` in address
        // order stand for them when the budget is smaller than the set.
        match handle.prefetch(&self.working_set[..n], tiering::policy::TIER_RAM) {
            Ok(()) => n as u64,
            Err(e) => {
                log::warn!("ram pool: cannot stage this VM's pages: {e}");
                0
            }
        }
    }
}

impl Drop for PoolMembership {
    /// Leaving: the files go, and the manager hands this VM's share to the others.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(report_path(&self.dir, self.pid));
        let _ = std::fs::remove_file(budget_path(&self.dir, self.pid));
    }
}

/// The budgets a member was given, for its metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetHistory {
    pub initial_budget_pages: u64,
    pub min_budget_pages: u64,
    pub max_budget_pages: u64,
    pub final_budget_pages: u64,
    pub budget_changes: u64,
    /// Turns the VM was let run after a pause (a scheduling manager).
    pub turns: u64,
    /// Time spent paused, waiting for its turn.
    pub paused_ms: f64,
    /// Pages asked back into RAM when a turn began, and before it, while the VM
    /// waited, in room the running VMs lent.
    pub staged_pages: u64,
    pub prestaged_pages: u64,
    /// Time from a turn's start until its staged pages were in, summed over the
    /// turns, and the longest.
    pub staging_ms: f64,
    pub max_staging_ms: f64,
}

impl BudgetHistory {
    fn new(initial: u64) -> Self {
        Self {
            initial_budget_pages: initial,
            min_budget_pages: initial,
            max_budget_pages: initial,
            final_budget_pages: initial,
            budget_changes: 0,
            turns: 0,
            paused_ms: 0.0,
            staged_pages: 0,
            prestaged_pages: 0,
            staging_ms: 0.0,
            max_staging_ms: 0.0,
        }
    }

    fn note(&mut self, budget: u64) {
        self.min_budget_pages = self.min_budget_pages.min(budget);
        self.max_budget_pages = self.max_budget_pages.max(budget);
        self.final_budget_pages = budget;
        self.budget_changes += 1;
    }
}

/// The running member thread of a VM in a pool.
pub struct PoolMemberThread {
    stop: Arc<AtomicBool>,
    wake: Option<Arc<EventFd>>,
    thread: Option<JoinHandle<BudgetHistory>>,
}

impl PoolMemberThread {
    /// Leaves the pool (its files are removed; the manager hands the share to the
    /// others) and returns the budgets this VM had.
    pub fn leave(mut self) -> Option<BudgetHistory> {
        self.stop.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            // It stays readable, so the thread cannot miss it.
            let _ = wake.write(1);
        }
        self.thread.take().and_then(|t| t.join().ok())
    }
}
