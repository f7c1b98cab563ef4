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
//!
//! The manager (`manager.rs`) may also run the VMs in turns (`--slice-ms`): a VM whose
//! assignment says `run: false` waits with its vCPUs paused, and a turn that begins
//! with `stage` raised first asks back the pages the VM held when it was paused
//! (`member.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

mod manager;
mod member;
mod watch;

pub use manager::{Manager, ManagerOptions, Schedule};
pub use member::{BudgetHistory, PoolMemberThread, PoolMembership, VmControl};
pub(crate) use watch::{wait_readable, DirWatch, Wake};

/// Version of the files' format; a manager and a member of different versions refuse
/// each other's files.
pub const POOL_FORMAT: u32 = 1;
pub(crate) const POOL_FILE: &str = "pool.json";
/// Held locked (flock) by the manager while it runs: a second manager cannot take the
/// directory, and a member can tell a live manager from a stale `pool.json`.
pub(crate) const LOCK_FILE: &str = "pool.lock";
/// How long a joining VM waits for its first budget.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a member reports when the manager runs VMs in turns (else once a round):
/// the manager lends room for staging before a turn once the running VM ran from one
/// report to the next without a fault, and turns can be 100 ms.
pub(crate) const TURN_REPORT_INTERVAL: Duration = Duration::from_millis(20);

/// `pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolFile {
    pub version: u32,
    pub size_pages: u64,
    pub manager_pid: u32,
    pub interval_ms: u64,
    /// The length of a turn when the manager runs VMs in turns (`--slice-ms`).
    #[serde(default)]
    pub slice_ms: Option<u64>,
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
    /// Cumulative: sampled pages evicted before they were touched again (not counted
    /// as samples: eviction judged them, not their use).
    #[serde(default)]
    pub samples_evicted: u64,
    /// Wall-clock time of the report, ms since the Unix epoch.
    pub time_ms: u64,
    /// The last staging request ([`Assignment::stage`]) whose pages are in RAM: a
    /// scheduling manager starts the clock of the VM's turn then, so that a turn is
    /// time run with its pages in, however long staging took (0: none yet).
    #[serde(default)]
    pub staged: u64,
    /// The host CPU its vCPUs start on and its fault handler runs on (`run --cpu`),
    /// if pinned: a scheduling manager does not run two VMs of one CPU at once.
    #[serde(default)]
    pub cpu: Option<usize>,
}

impl MemberReport {
    /// The first report of a VM that joins: nothing held or counted yet.
    pub fn joining(pid: u32, priority: u32, guest_pages: u64, cpu: Option<usize>) -> Self {
        MemberReport {
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
            samples_evicted: 0,
            time_ms: now_ms(),
            staged: 0,
            cpu,
        }
    }
}

/// `vm-<pid>.budget.json`: what the manager assigns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub version: u32,
    pub budget_pages: u64,
    /// The manager's round that set it.
    pub round: u64,
    /// Whether the VM may run; false: its vCPUs wait (a scheduling manager runs VMs
    /// in turns).
    #[serde(default = "yes")]
    pub run: bool,
    /// Raised by the manager when a turn begins with staging: the VM asks for the
    /// pages it held when it was paused before its vCPUs go on (0: never).
    #[serde(default)]
    pub stage: u64,
}

fn yes() -> bool {
    true
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

pub(crate) fn io_error(
    dir: &Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> PoolError {
    let dir = dir.display().to_string();
    let action = action.into();
    move |source| PoolError::Io {
        dir,
        action,
        source,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether process `pid` exists.
pub(crate) fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes `value` as JSON to `path` atomically (a temporary file, then rename).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub(crate) fn report_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("vm-{pid}.json"))
}

/// The pid in a member's report file name (`vm-<pid>.json`), or `None` for any other
/// file of the pool directory.
pub(crate) fn report_pid(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix("vm-")
        .and_then(|s| s.strip_suffix(".json"))
        .and_then(|s| s.parse().ok())
}

pub(crate) fn budget_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("vm-{pid}.budget.json"))
}

/// Whether a manager holds the lock of `dir`.
pub(crate) fn manager_runs(dir: &Path) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tiering::pool::PoolConfig;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tv-pool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn joining_without_a_manager_is_a_clear_error() {
        let d = temp_dir("none");
        std::fs::create_dir_all(&d).unwrap();
        let e = PoolMembership::join(&d, 1, 100, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no pool manager runs there"), "{e}");
        // A pool file left by a manager that is gone (nobody holds its lock): the same.
        let stale = PoolFile {
            version: POOL_FORMAT,
            size_pages: 10,
            manager_pid: 0x3fff_fff0,
            interval_ms: 100,
            slice_ms: None,
        };
        write_json(&d.join(POOL_FILE), &stale).unwrap();
        let e = PoolMembership::join(&d, 1, 100, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no pool manager runs there"), "{e}");
        std::fs::write(d.join(POOL_FILE), "{").unwrap();
        let e = PoolMembership::join(&d, 1, 100, None)
            .err()
            .unwrap()
            .to_string();
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
            schedule: None,
            turns_when_over_committed: false,
            start_in_turns: false,
        })
        .unwrap();
        // A second manager on the same directory is refused.
        let again = Manager::start(ManagerOptions {
            dir: d.clone(),
            config: PoolConfig::new(1000),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
            schedule: None,
            turns_when_over_committed: false,
            start_in_turns: false,
        });
        assert!(matches!(again, Err(PoolError::ManagerRunning { .. })));
        // This process is both: the member joins on a thread while the manager runs.
        let d2 = d.clone();
        let joining = std::thread::spawn(move || PoolMembership::join(&d2, 1, 400, None));
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

    /// Processes that live while a test runs, to stand for members (the manager drops
    /// a member whose process is gone).
    fn members_alive(n: usize) -> Vec<std::process::Child> {
        (0..n)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect()
    }

    fn all_at_once(d: &Path, pool_pages: u64) -> Manager {
        Manager::start(ManagerOptions {
            dir: d.to_path_buf(),
            config: PoolConfig::new(pool_pages),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
            schedule: None,
            turns_when_over_committed: false,
            start_in_turns: false,
        })
        .unwrap()
    }

    fn budget_of(d: &Path, pid: u32) -> u64 {
        read_json::<Assignment>(&budget_path(d, pid))
            .unwrap()
            .budget_pages
    }

    /// What a member counted by round `k` (a round is 100 ms of its clock), as a report.
    struct Counts {
        refaults_per_round: u64,
        fills_per_round: u64,
        hits_per_round: u64,
    }

    fn report_round(d: &Path, pid: u32, start_ms: u64, k: u64, counts: &[Counts]) {
        let sum = |f: &dyn Fn(&Counts) -> u64| counts.iter().map(f).sum::<u64>();
        let fills = sum(&|c| c.fills_per_round);
        let budget = budget_of(d, pid);
        let report = MemberReport {
            budget_pages: budget,
            resident_pages: budget,
            demand_faults: sum(&|c| c.refaults_per_round) + fills,
            zero_fills: fills,
            sampled_zaps: 30 * k,
            sample_hits: sum(&|c| c.hits_per_round),
            time_ms: start_ms + 100 * k,
            ..MemberReport::joining(pid, 1, 4096, None)
        };
        write_json(&report_path(d, pid), &report).unwrap();
    }

    #[test]
    fn samples_of_a_filling_vm_do_not_count_its_pages_idle() {
        // Two VMs at their budgets: one fills its budget (first touches, and the pages
        // sampled are not touched again yet), the other refaults. Samples of the
        // rounds it fills would say the first one's pages are idle, and give them away.
        let d = temp_dir("filling");
        let mut manager = all_at_once(&d, 1000);
        let mut children = members_alive(2);
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        for &pid in &pids {
            write_json(
                &report_path(&d, pid),
                &MemberReport::joining(pid, 1, 4096, None),
            )
            .unwrap();
            manager.round();
        }
        assert_eq!(budget_of(&d, pids[0]), 500);
        let start = now_ms();
        let (mut filler, mut busy) = (Vec::new(), Vec::new());
        let round = |k: u64, filler: &[Counts], busy: &[Counts], m: &mut Manager| {
            report_round(&d, pids[0], start, k, filler);
            report_round(&d, pids[1], start, k, busy);
            m.round();
        };
        for k in 1..=12 {
            filler.push(Counts {
                refaults_per_round: 0,
                fills_per_round: 50,
                hits_per_round: 0,
            });
            busy.push(Counts {
                refaults_per_round: 100,
                fills_per_round: 0,
                hits_per_round: 30,
            });
            round(k, &filler, &busy, &mut manager);
        }
        let while_filling = budget_of(&d, pids[0]);
        // Filled, its pages sampled and not touched again: now they are idle.
        for k in 13..=24 {
            filler.push(Counts {
                refaults_per_round: 0,
                fills_per_round: 0,
                hits_per_round: 0,
            });
            busy.push(Counts {
                refaults_per_round: 100,
                fills_per_round: 0,
                hits_per_round: 30,
            });
            round(k, &filler, &busy, &mut manager);
        }
        let idle = budget_of(&d, pids[0]);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        manager.close();
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(while_filling, 500, "kept while filling");
        assert!(idle < 500, "idle pages go to the VM that refaults: {idle}");
    }

    #[test]
    fn an_over_committed_pool_without_turns_favours_its_first_vms_until_none_refaults() {
        let d = temp_dir("favours");
        let mut manager = all_at_once(&d, 900);
        let mut children = members_alive(3);
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        for &pid in &pids {
            write_json(
                &report_path(&d, pid),
                &MemberReport::joining(pid, 1, 4096, None),
            )
            .unwrap();
            manager.round();
        }
        let start = now_ms();
        let mut counts: Vec<Vec<Counts>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut lines = Vec::new();
        // Every VM refaults at its budget, 1,000 times a second.
        for k in 1..=12 {
            for (i, &pid) in pids.iter().enumerate() {
                counts[i].push(Counts {
                    refaults_per_round: 100,
                    fills_per_round: 0,
                    hits_per_round: 30,
                });
                report_round(&d, pid, start, k, &counts[i]);
            }
            lines.extend(manager.round());
        }
        let favoured: Vec<u64> = pids.iter().map(|&pid| budget_of(&d, pid)).collect();
        // Still so 300 rounds after the first VM took the lead: the second takes it.
        for k in 13..=320 {
            for (i, &pid) in pids.iter().enumerate() {
                counts[i].push(Counts {
                    refaults_per_round: 100,
                    fills_per_round: 0,
                    hits_per_round: 30,
                });
                report_round(&d, pid, start, k, &counts[i]);
            }
            lines.extend(manager.round());
        }
        let then: Vec<u64> = pids.iter().map(|&pid| budget_of(&d, pid)).collect();
        // Then none refaults: after ten calm rounds, shares follow pressure again.
        for k in 321..=350 {
            for (i, &pid) in pids.iter().enumerate() {
                counts[i].push(Counts {
                    refaults_per_round: 0,
                    fills_per_round: 0,
                    hits_per_round: 30,
                });
                report_round(&d, pid, start, k, &counts[i]);
            }
            lines.extend(manager.round());
        }
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        manager.close();
        std::fs::remove_dir_all(&d).unwrap();
        let said = |s: &str| lines.iter().any(|l| l.contains(s));
        assert!(
            said("over-committed") && said("Until they fit"),
            "{lines:?}"
        );
        assert!(said("shares follow pressure again"), "{lines:?}");
        // From 300 each: the first VM gained, the last lost down to its floor (75).
        assert!(
            favoured[0] > 300 && favoured[2] == 75,
            "{favoured:?} {lines:?}"
        );
        let second_leads = format!("vm {} is favoured first now", pids[1]);
        assert!(said(&second_leads), "{lines:?}");
        assert!(then[1] > then[0] && then[0] == 75, "{then:?}");
    }

    #[test]
    fn vms_in_turns_share_a_turn_only_on_different_cpus() {
        let d = temp_dir("cpus");
        let mut manager = Manager::start(ManagerOptions {
            dir: d.clone(),
            config: PoolConfig::new(1000),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
            schedule: Some(Schedule {
                slice: Duration::from_secs(60),
                slots: 2,
                staging: false,
                prestaging: false,
            }),
            turns_when_over_committed: false,
            start_in_turns: false,
        })
        .unwrap();
        // Members are processes: three that live while the test runs, reported on CPUs
        // 0, 0 and 1, joining in that order.
        let mut children: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        for (&pid, cpu) in pids.iter().zip([0, 0, 1]) {
            let report = MemberReport::joining(pid, 1, 400, Some(cpu));
            write_json(&report_path(&d, pid), &report).unwrap();
            manager.round();
        }
        let runs: Vec<bool> = pids
            .iter()
            .map(|&pid| read_json::<Assignment>(&budget_path(&d, pid)).unwrap().run)
            .collect();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        manager.close();
        std::fs::remove_dir_all(&d).unwrap();
        // The second VM on CPU 0 waits though a slot was free when it joined; the VM
        // on CPU 1 takes that slot.
        assert_eq!(runs, [true, false, true]);
    }

    #[test]
    fn the_vm_staged_before_its_turn_is_the_one_the_first_turn_to_end_makes_room_for() {
        let d = temp_dir("next");
        let mut manager = Manager::start(ManagerOptions {
            dir: d.clone(),
            config: PoolConfig::new(1000),
            interval: Duration::from_millis(10),
            exit_when_empty: true,
            schedule: Some(Schedule {
                slice: Duration::from_secs(60),
                slots: 2,
                staging: false,
                prestaging: false,
            }),
            turns_when_over_committed: false,
            start_in_turns: false,
        })
        .unwrap();
        // On CPUs 0, 1, 1 and 0, joining in that order: the first two run, and the
        // first one's turn, started first, ends first.
        let mut children = members_alive(4);
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        for (&pid, cpu) in pids.iter().zip([0, 1, 1, 0]) {
            let report = MemberReport::joining(pid, 1, 400, Some(cpu));
            write_json(&report_path(&d, pid), &report).unwrap();
            manager.round();
            std::thread::sleep(Duration::from_millis(2));
        }
        let next = manager.runs_next();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        manager.close();
        std::fs::remove_dir_all(&d).unwrap();
        // First in line is the third VM, but its CPU stays busy with the second's
        // turn: the fourth takes the first's CPU, so it is the one to stage.
        assert_eq!(next, Some(pids[3]));
    }
}
