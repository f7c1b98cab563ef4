//! One RAM budget shared among VMs, each in its own `tiervisor run` process
//! (`--ram-pool DIR`), by a manager process (`tiervisor pool --dir DIR --size SIZE`).
//! The scheme that decides the shares is [`tiering::pool::rebalance`]; this module
//! carries the reports and the budgets between the processes (docs/pool.md).
//!
//! The pool directory holds small JSON files, each replaced atomically by rename:
//! - `pool.json`, by the manager: the pool's size, its pid and its round interval;
//! - `vm-<pid>.json`, by each member every round: its priority, size, budget,
//!   resident pages and fault counters;
//! - `vm-<pid>.budget.json`, by the manager: the member's budget in pages.
//!
//! A member joins by writing its report with a budget of 0 and waiting for its first
//! budget, so its VM starts within its share. Files of processes that are gone are
//! removed by the manager; a member removes its own when it leaves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tiering::pool::{rebalance, PoolConfig, PoolMember};
use tiering::runtime::BudgetHandle;

/// Version of the files' format; a manager and a member of different versions refuse
/// each other's files.
pub const POOL_FORMAT: u32 = 1;
const POOL_FILE: &str = "pool.json";
/// Held locked (flock) by the manager while it runs: a second manager cannot take the
/// directory, and a member can tell a live manager from a stale `pool.json`.
const LOCK_FILE: &str = "pool.lock";
/// How long a joining VM waits for its first budget.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolFile {
    pub version: u32,
    pub size_pages: u64,
    pub manager_pid: u32,
    pub interval_ms: u64,
}

/// `vm-<pid>.json`: what a member reports each round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberReport {
    pub version: u32,
    pub pid: u32,
    pub priority: u32,
    pub guest_pages: u64,
    /// The budget its fault handler applies now (0 while joining).
    pub budget_pages: u64,
    pub resident_pages: u64,
    /// Cumulative: every demand fault, and those that were first touches.
    pub demand_faults: u64,
    pub zero_fills: u64,
    /// Cumulative: resident pages zapped by random samples, and those touched again.
    pub sampled_zaps: u64,
    pub sample_hits: u64,
    /// Wall-clock time of the report, ms since the Unix epoch.
    pub time_ms: u64,
}

/// `vm-<pid>.budget.json`: what the manager assigns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub version: u32,
    pub budget_pages: u64,
    /// The manager's round that set it.
    pub round: u64,
}

/// Why the pool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("--ram-pool {dir}: no pool manager runs there (start one with `tiervisor pool --dir {dir} --size SIZE`)")]
    NoManager { dir: String },
    #[error("--ram-pool {dir}: {file} is not a pool file of this version ({why})")]
    BadFile {
        dir: String,
        file: String,
        why: String,
    },
    #[error(
        "--ram-pool {dir}: the pool manager (pid {pid}) gave this VM no budget within {secs} s"
    )]
    JoinTimeout { dir: String, pid: u32, secs: u64 },
    #[error("pool directory {dir}: {action}: {source}")]
    Io {
        dir: String,
        action: String,
        source: std::io::Error,
    },
    #[error("pool directory {dir}: another manager (pid {pid}) runs there")]
    ManagerRunning { dir: String, pid: u32 },
}

fn io_error(dir: &Path, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> PoolError {
    let dir = dir.display().to_string();
    let action = action.into();
    move |source| PoolError::Io {
        dir,
        action,
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes `value` as JSON to `path` atomically (a temporary file, then rename).
fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn report_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("vm-{pid}.json"))
}

fn budget_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("vm-{pid}.budget.json"))
}

/// Whether a manager holds the lock of `dir`.
fn manager_runs(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; it is released when `f` closes.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    rc != 0
}

/// Reads `pool.json` and checks that its manager runs.
pub fn read_pool_file(dir: &Path) -> Result<PoolFile, PoolError> {
    let shown = dir.display().to_string();
    let pool: PoolFile = match read_json(&dir.join(POOL_FILE)) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PoolError::NoManager { dir: shown })
        }
        Err(e) => {
            return Err(PoolError::BadFile {
                dir: shown,
                file: POOL_FILE.into(),
                why: e.to_string(),
            })
        }
    };
    if pool.version != POOL_FORMAT {
        return Err(PoolError::BadFile {
            dir: shown,
            file: POOL_FILE.into(),
            why: format!("version {}, expected {POOL_FORMAT}", pool.version),
        });
    }
    if !manager_runs(dir) {
        return Err(PoolError::NoManager { dir: shown });
    }
    Ok(pool)
}

/// A VM's place in a pool, from joining to leaving.
pub struct PoolMembership {
    dir: PathBuf,
    pool: PoolFile,
    pid: u32,
    priority: u32,
    guest_pages: u64,
    /// The budget the manager gave at joining.
    pub initial_budget_pages: u64,
}

impl PoolMembership {
    /// Joins the pool in `dir`: reports this VM and waits for its first budget.
    pub fn join(dir: &Path, priority: u32, guest_pages: u64) -> Result<Self, PoolError> {
        let pool = read_pool_file(dir)?;
        let pid = std::process::id();
        let report = MemberReport {
            version: POOL_FORMAT,
            pid,
            priority,
            guest_pages,
            budget_pages: 0,
            resident_pages: 0,
            demand_faults: 0,
            zero_fills: 0,
            sampled_zaps: 0,
            sample_hits: 0,
            time_ms: now_ms(),
        };
        write_json(&report_path(dir, pid), &report)
            .map_err(io_error(dir, "cannot write this VM's report"))?;
        let start = Instant::now();
        let budget = loop {
            match read_json::<Assignment>(&budget_path(dir, pid)) {
                Ok(a) if a.version == POOL_FORMAT && a.budget_pages > 0 => break a.budget_pages,
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
            initial_budget_pages: budget,
        })
    }

    /// Starts reporting every round and applying the budgets the manager assigns.
    pub fn start(self, handle: BudgetHandle) -> PoolMemberThread {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ram-pool".into())
            .spawn(move || self.run(handle, &stop2))
            .ok();
        PoolMemberThread { stop, thread }
    }

    fn run(self, handle: BudgetHandle, stop: &AtomicBool) -> BudgetHistory {
        let interval = Duration::from_millis(self.pool.interval_ms.max(1));
        let mut history = BudgetHistory::new(self.initial_budget_pages);
        let mut applied = self.initial_budget_pages;
        while !stop.load(Ordering::Acquire) {
            if let Some(r) = handle.snapshot() {
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
                    time_ms: now_ms(),
                };
                if let Err(e) = write_json(&report_path(&self.dir, self.pid), &report) {
                    log::warn!("ram pool: cannot write this VM's report: {e}");
                }
            }
            if let Ok(a) = read_json::<Assignment>(&budget_path(&self.dir, self.pid)) {
                if a.version == POOL_FORMAT && a.budget_pages > 0 && a.budget_pages != applied {
                    log::info!("ram pool: budget {applied} -> {} pages", a.budget_pages);
                    if handle.set_ram_budget(a.budget_pages).is_ok() {
                        applied = a.budget_pages;
                        history.note(applied);
                    }
                }
            }
            // Sleep in short slices so that leaving is prompt.
            let start = Instant::now();
            while start.elapsed() < interval && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5).min(interval));
            }
        }
        history
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
}

impl BudgetHistory {
    fn new(initial: u64) -> Self {
        Self {
            initial_budget_pages: initial,
            min_budget_pages: initial,
            max_budget_pages: initial,
            final_budget_pages: initial,
            budget_changes: 0,
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
    thread: Option<JoinHandle<BudgetHistory>>,
}

impl PoolMemberThread {
    /// Leaves the pool (its files are removed; the manager hands the share to the
    /// others) and returns the budgets this VM had.
    pub fn leave(mut self) -> Option<BudgetHistory> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub dir: PathBuf,
    pub config: PoolConfig,
    pub interval: Duration,
    /// End once every member has left, after at least one joined.
    pub exit_when_empty: bool,
}

/// What the manager knows of a member between rounds.
struct Tracked {
    report: MemberReport,
    budget: u64,
    refaults_per_s: f64,
    first_touches_per_s: f64,
    /// Sampled pages touched again, and sampled pages, summed with a decay of
    /// [`SAMPLE_DECAY`] a round: a live VM samples a few dozen of its pages a round,
    /// too few to judge its active share from one round.
    sample_hits: f64,
    sample_zaps: f64,
    /// This round's sampled pages, counted against next round's hits: a VM reports
    /// just after it samples, before the pages it zapped are touched again (counted
    /// in the same round, a VM touching all its pages showed 81-90% in use).
    zaps_last_round: u64,
}

const SAMPLE_DECAY: f64 = 0.8;

impl Tracked {
    /// The share of its resident pages in use; 1.0 until a few samples came back.
    fn active_fraction(&self) -> f64 {
        if self.sample_zaps < 16.0 {
            1.0
        } else {
            (self.sample_hits / self.sample_zaps).min(1.0)
        }
    }
}

/// A member is taken to be filling (first touches) until its rates are measured:
/// this many times the pressure threshold, decaying by half a round.
const NEW_MEMBER_FILL_RATE: f64 = 64.0;

/// The manager's state: the members it tracks and the round count.
pub struct Manager {
    options: ManagerOptions,
    /// `pool.lock`, held with flock for the manager's lifetime.
    _lock: std::fs::File,
    members: Vec<(u32, Tracked)>,
    round: u64,
    start: Instant,
    /// Whether any member ever joined (for `exit_when_empty`).
    pub ever_joined: bool,
}

impl Manager {
    /// Claims `options.dir` (created if needed) and writes `pool.json`.
    pub fn start(options: ManagerOptions) -> Result<Self, PoolError> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(io_error(dir, "cannot create it"))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_error(dir, "cannot open pool.lock"))?;
        // SAFETY: flock on a descriptor we own; held until `lock` closes.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            let pid = read_json::<PoolFile>(&dir.join(POOL_FILE)).map_or(0, |p| p.manager_pid);
            return Err(PoolError::ManagerRunning {
                dir: dir.display().to_string(),
                pid,
            });
        }
        let pool = PoolFile {
            version: POOL_FORMAT,
            size_pages: options.config.size_pages,
            manager_pid: std::process::id(),
            interval_ms: options.interval.as_millis() as u64,
        };
        write_json(&dir.join(POOL_FILE), &pool).map_err(io_error(dir, "cannot write pool.json"))?;
        Ok(Self {
            options,
            _lock: lock,
            members: Vec::new(),
            round: 0,
            start: Instant::now(),
            ever_joined: false,
        })
    }

    /// Members now in the pool.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether a VM waits to join (a report of a process the manager does not track):
    /// the caller runs a round at once rather than keep it waiting for the next.
    pub fn has_joiners(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.options.dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("vm-")
                .and_then(|s| s.strip_suffix(".json"))
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|pid| !self.members.iter().any(|(p, _)| *p == pid))
        })
    }

    /// Whether the manager is done (`exit_when_empty` and everyone left).
    pub fn done(&self) -> bool {
        self.options.exit_when_empty && self.ever_joined && self.members.is_empty()
    }

    /// One round: reads the reports, drops members that left, rebalances and writes the
    /// budgets that changed. Returns a line per change, for the log.
    pub fn round(&mut self) -> Vec<String> {
        self.round += 1;
        let dir = self.options.dir.clone();
        let t = self.start.elapsed().as_secs_f64();
        let mut lines = Vec::new();
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("vm-")
                    .and_then(|s| s.strip_suffix(".json"))
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if !alive(pid) {
                    let _ = std::fs::remove_file(report_path(&dir, pid));
                    let _ = std::fs::remove_file(budget_path(&dir, pid));
                    continue;
                }
                match read_json::<MemberReport>(&e.path()) {
                    Ok(r) if r.version == POOL_FORMAT && r.pid == pid => seen.push(r),
                    Ok(_) => log::warn!("ram pool: {name} is not a report of this version"),
                    // Being replaced as we read it, or half-written: next round.
                    Err(_) => {}
                }
            }
        }
        // Members gone (their file removed, or the process ended).
        self.members.retain(|(pid, m)| {
            let stays = seen.iter().any(|r| r.pid == *pid);
            if !stays {
                lines.push(format!(
                    "{t:7.2}s  vm {pid} left; its {} pages go back to the pool",
                    m.budget
                ));
            }
            stays
        });
        for r in seen {
            match self.members.iter_mut().find(|(pid, _)| *pid == r.pid) {
                Some((_, m)) => {
                    let dt = r.time_ms.saturating_sub(m.report.time_ms);
                    if dt > 0 {
                        let refaults = (r.demand_faults.saturating_sub(r.zero_fills))
                            .saturating_sub(
                                m.report.demand_faults.saturating_sub(m.report.zero_fills),
                            );
                        let rate = refaults as f64 * 1000.0 / dt as f64;
                        m.refaults_per_s = 0.5 * m.refaults_per_s + 0.5 * rate;
                        let fills = r.zero_fills.saturating_sub(m.report.zero_fills);
                        let rate = fills as f64 * 1000.0 / dt as f64;
                        m.first_touches_per_s = 0.5 * m.first_touches_per_s + 0.5 * rate;
                        let zaps = r.sampled_zaps.saturating_sub(m.report.sampled_zaps);
                        let hits = r.sample_hits.saturating_sub(m.report.sample_hits);
                        m.sample_zaps = SAMPLE_DECAY * m.sample_zaps + m.zaps_last_round as f64;
                        m.zaps_last_round = zaps;
                        m.sample_hits = SAMPLE_DECAY * m.sample_hits + hits as f64;
                        m.report = r;
                    }
                }
                None => {
                    self.ever_joined = true;
                    self.members.push((
                        r.pid,
                        Tracked {
                            report: r,
                            budget: 0,
                            refaults_per_s: 0.0,
                            first_touches_per_s: NEW_MEMBER_FILL_RATE
                                * self.options.config.min_refaults_per_s,
                            sample_hits: 0.0,
                            sample_zaps: 0.0,
                            zaps_last_round: 0,
                        },
                    ));
                }
            }
        }
        let view: Vec<PoolMember> = self
            .members
            .iter()
            .map(|(_, m)| PoolMember {
                priority: m.report.priority.max(1),
                guest_pages: m.report.guest_pages,
                budget_pages: m.budget,
                resident_pages: m.report.resident_pages,
                refaults_per_s: m.refaults_per_s,
                first_touches_per_s: m.first_touches_per_s,
                active_fraction: m.active_fraction(),
            })
            .collect();
        let budgets = rebalance(&self.options.config, &view);
        for ((pid, m), &b) in self.members.iter_mut().zip(&budgets) {
            if b == m.budget {
                continue;
            }
            let assignment = Assignment {
                version: POOL_FORMAT,
                budget_pages: b,
                round: self.round,
            };
            if let Err(e) = write_json(&budget_path(&dir, *pid), &assignment) {
                log::warn!("ram pool: cannot write the budget of vm {pid}: {e}");
                continue;
            }
            lines.push(if m.budget == 0 {
                format!(
                    "{t:7.2}s  vm {pid} joined (priority {}, {} pages): budget {b} pages",
                    m.report.priority, m.report.guest_pages
                )
            } else {
                format!(
                    "{t:7.2}s  vm {pid}: {} -> {b} pages (resident {}, {:.0}% in use, {:.0} refaults/s)",
                    m.budget,
                    m.report.resident_pages,
                    100.0 * m.active_fraction(),
                    m.refaults_per_s
                )
            });
            m.budget = b;
        }
        lines
    }

    /// Removes `pool.json` (members can no longer join).
    pub fn close(self) {
        let _ = std::fs::remove_file(self.options.dir.join(POOL_FILE));
    }

    /// The pool's size and the budgets now assigned, in pages.
    pub fn assigned(&self) -> (u64, u64) {
        (
            self.options.config.size_pages,
            self.members.iter().map(|(_, m)| m.budget).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tv-pool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn joining_without_a_manager_is_a_clear_error() {
        let d = temp_dir("none");
        std::fs::create_dir_all(&d).unwrap();
        let e = PoolMembership::join(&d, 1, 100).err().unwrap().to_string();
        assert!(e.contains("no pool manager runs there"), "{e}");
        // A pool file left by a manager that is gone (nobody holds its lock): the same.
        let stale = PoolFile {
            version: POOL_FORMAT,
            size_pages: 10,
            manager_pid: 0x3fff_fff0,
            interval_ms: 100,
        };
        write_json(&d.join(POOL_FILE), &stale).unwrap();
        let e = PoolMembership::join(&d, 1, 100).err().unwrap().to_string();
        assert!(e.contains("no pool manager runs there"), "{e}");
        std::fs::write(d.join(POOL_FILE), "{").unwrap();
        let e = PoolMembership::join(&d, 1, 100).err().unwrap().to_string();
        assert!(e.contains("is not a pool file of this version"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_member_joins_gets_a_budget_and_leaves() {
        let d = temp_dir("join");
        let mut manager = Manager::start(ManagerOptions {
            dir: d.clone(),
            config: PoolConfig::new(1000),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
        })
        .unwrap();
        // A second manager on the same directory is refused.
        let again = Manager::start(ManagerOptions {
            dir: d.clone(),
            config: PoolConfig::new(1000),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
        });
        assert!(matches!(again, Err(PoolError::ManagerRunning { .. })));
        // This process is both: the member joins on a thread while the manager runs.
        let d2 = d.clone();
        let joining = std::thread::spawn(move || PoolMembership::join(&d2, 1, 400));
        let mut lines = Vec::new();
        while !joining.is_finished() {
            lines.extend(manager.round());
            std::thread::sleep(Duration::from_millis(2));
        }
        let member = joining.join().unwrap().unwrap();
        assert_eq!(
            member.initial_budget_pages, 400,
            "its size, under its share"
        );
        assert!(lines.iter().any(|l| l.contains("joined")), "{lines:?}");
        assert_eq!(manager.assigned(), (1000, 400));
        // The member leaves: its files go, and the manager is done.
        std::fs::remove_file(report_path(&d, std::process::id())).unwrap();
        let lines = manager.round();
        assert!(lines.iter().any(|l| l.contains("left")), "{lines:?}");
        assert!(manager.done());
        manager.close();
        assert!(matches!(
            read_pool_file(&d),
            Err(PoolError::NoManager { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
