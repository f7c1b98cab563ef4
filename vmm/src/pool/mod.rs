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

    /// What a member counts in a round (100 ms of its clock).
    #[derive(Clone, Copy)]
    struct Counts {
        refaults: u64,
        fills: u64,
        hits: u64,
    }

    /// Members standing in for VMs (processes that live while the test runs), what
    /// each has counted so far, and the manager's log.
    struct FakeVms {
        dir: PathBuf,
        children: Vec<std::process::Child>,
        pids: Vec<u32>,
        start_ms: u64,
        totals: Vec<Counts>,
        rounds: u64,
        lines: Vec<String>,
    }

    impl FakeVms {
        /// `n` members join `manager` in order, a round each.
        fn join(dir: &Path, manager: &mut Manager, n: usize) -> Self {
            let children = members_alive(n);
            let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
            for &pid in &pids {
                let report = MemberReport::joining(pid, 1, 4096, None);
                write_json(&report_path(dir, pid), &report).unwrap();
                manager.round();
            }
            let zero = Counts {
                refaults: 0,
                fills: 0,
                hits: 0,
            };
            FakeVms {
                dir: dir.to_path_buf(),
                children,
                pids,
                start_ms: now_ms(),
                totals: vec![zero; n],
                rounds: 0,
                lines: Vec::new(),
            }
        }

        /// `rounds` rounds in which member i counts `each(i)`, at its budget, and 30
        /// samples; the manager's round after each.
        fn run(&mut self, manager: &mut Manager, rounds: u64, each: impl Fn(usize) -> Counts) {
            for _ in 0..rounds {
                self.rounds += 1;
                let k = self.rounds;
                for (i, &pid) in self.pids.iter().enumerate() {
                    let c = each(i);
                    let t = &mut self.totals[i];
                    t.refaults += c.refaults;
                    t.fills += c.fills;
                    t.hits += c.hits;
                    let budget = budget_of(&self.dir, pid);
                    let report = MemberReport {
                        budget_pages: budget,
                        resident_pages: budget,
                        demand_faults: t.refaults + t.fills,
                        zero_fills: t.fills,
                        sampled_zaps: 30 * k,
                        sample_hits: t.hits,
                        time_ms: self.start_ms + 100 * k,
                        ..MemberReport::joining(pid, 1, 4096, None)
                    };
                    write_json(&report_path(&self.dir, pid), &report).unwrap();
                }
                self.lines.extend(manager.round());
            }
        }

        fn budgets(&self) -> Vec<u64> {
            self.pids
                .iter()
                .map(|&pid| budget_of(&self.dir, pid))
                .collect()
        }

        /// Ends the members and the manager; returns the manager's log.
        fn end(self, manager: Manager) -> Vec<String> {
            end(&self.dir, self.children, manager);
            self.lines
        }
    }

    const REFAULTING: Counts = Counts {
        refaults: 100,
        fills: 0,
        hits: 30,
    };

    #[test]
    fn samples_of_a_filling_vm_do_not_count_its_pages_idle() {
        // Two VMs at their budgets: one fills its budget (first touches, and the pages
        // sampled are not touched again yet), the other refaults. Samples of the
        // rounds it fills would say the first one's pages are idle, and give them away.
        let d = temp_dir("filling");
        let mut manager = all_at_once(&d, 1000);
        let mut vms = FakeVms::join(&d, &mut manager, 2);
        assert_eq!(vms.budgets()[0], 500);
        let filling = Counts {
            refaults: 0,
            fills: 50,
            hits: 0,
        };
        vms.run(
            &mut manager,
            12,
            |i| if i == 0 { filling } else { REFAULTING },
        );
        let while_filling = vms.budgets()[0];
        // Filled, its pages sampled and not touched again: now they are idle.
        let idle = Counts {
            fills: 0,
            ..filling
        };
        vms.run(&mut manager, 12, |i| if i == 0 { idle } else { REFAULTING });
        let after = vms.budgets()[0];
        vms.end(manager);
        assert_eq!(while_filling, 500, "kept while filling");
        assert!(
            after < 500,
            "idle pages go to the VM that refaults: {after}"
        );
    }

    #[test]
    fn an_over_committed_pool_without_turns_favours_its_first_vms_until_none_refaults() {
        let d = temp_dir("favours");
        let mut manager = all_at_once(&d, 900);
        let mut vms = FakeVms::join(&d, &mut manager, 3);
        let pids = vms.pids.clone();
        // Every VM refaults at its budget, 1,000 times a second.
        vms.run(&mut manager, 12, |_| REFAULTING);
        let favoured = vms.budgets();
        // Still so 300 rounds after the first VM took the lead: the second takes it.
        vms.run(&mut manager, 308, |_| REFAULTING);
        let then = vms.budgets();
        // Then none refaults: after ten calm rounds, shares follow pressure again.
        vms.run(&mut manager, 30, |_| Counts {
            refaults: 0,
            ..REFAULTING
        });
        let lines = vms.end(manager);
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
    fn an_over_committed_pool_of_no_more_vms_than_run_at_once_says_turns_would_not_help() {
        let d = temp_dir("few");
        let mut manager = load_control(&d);
        let mut vms = FakeVms::join(&d, &mut manager, 2);
        vms.run(&mut manager, 12, |_| REFAULTING);
        let favoured = vms.budgets();
        let lines = vms.end(manager);
        let over = lines.iter().find(|l| l.contains("over-committed:"));
        assert!(
            over.is_some_and(|l| l.contains(
                "No more of them than --run-slots (2), so turns \
                                             would not help. Until they fit"
            )),
            "{lines:?}"
        );
        // Nobody waits; the first VM is favoured instead.
        assert!(!lines.iter().any(|l| l.contains(", waits")), "{lines:?}");
        assert!(favoured[0] > favoured[1], "{favoured:?} {lines:?}");
    }

    #[test]
    fn load_control_sees_over_commitment_while_the_vms_still_fill() {
        // One VM refaults at its budget while the two others still fill theirs: not
        // every VM refaults, but together they have touched more than the 1,000 pages
        // of the pool by the eleventh round. With load control that counts; a plain
        // pool waits for every VM to refault (concentrating sooner costs a short job
        // beside a long one, docs/pool.md).
        let filling = Counts {
            refaults: 0,
            fills: 50,
            hits: 0,
        };
        let each = |i: usize| if i == 0 { REFAULTING } else { filling };
        let over = |lines: &[String]| {
            lines
                .iter()
                .find(|l| l.contains("over-committed:"))
                .cloned()
        };
        let d = temp_dir("outgrown");
        let mut manager = load_control(&d);
        let mut vms = FakeVms::join(&d, &mut manager, 3);
        vms.run(&mut manager, 8, each);
        let before = over(&vms.lines);
        vms.run(&mut manager, 10, each);
        let lines = vms.end(manager);
        assert_eq!(before, None, "{lines:?}");
        assert!(
            over(&lines).is_some_and(|l| l.contains(
                "the 3 VMs have touched 1500 pages, more than the pool's 1000, and for 5 \
                 rounds those not still filling their memory have refaulted at their budgets"
            )),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains(", waits")), "{lines:?}");

        let d = temp_dir("outgrown-plain");
        let mut manager = all_at_once(&d, 1000);
        let mut vms = FakeVms::join(&d, &mut manager, 3);
        vms.run(&mut manager, 18, each);
        let lines = vms.end(manager);
        assert_eq!(over(&lines), None, "{lines:?}");
    }

    /// A manager running VMs all at once, and in turns two at a time once the pool is
    /// over-committed (`--turns-when-over-committed`).
    fn load_control(d: &Path) -> Manager {
        Manager::start(ManagerOptions {
            turns_when_over_committed: true,
            ..two_at_a_time_options(d)
        })
        .unwrap()
    }

    /// A manager running VMs in turns, two at a time, of a minute each.
    fn two_at_a_time(d: &Path) -> Manager {
        Manager::start(two_at_a_time_options(d)).unwrap()
    }

    fn two_at_a_time_options(d: &Path) -> ManagerOptions {
        ManagerOptions {
            dir: d.to_path_buf(),
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
        }
    }

    /// Members that join in order, a round each, reporting the host CPUs `cpus`.
    fn join_on_cpus(
        d: &Path,
        manager: &mut Manager,
        cpus: &[usize],
    ) -> (Vec<std::process::Child>, Vec<u32>) {
        let children = members_alive(cpus.len());
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        for (&pid, &cpu) in pids.iter().zip(cpus) {
            let report = MemberReport::joining(pid, 1, 400, Some(cpu));
            write_json(&report_path(d, pid), &report).unwrap();
            manager.round();
            std::thread::sleep(Duration::from_millis(2));
        }
        (children, pids)
    }

    fn end(d: &Path, mut children: Vec<std::process::Child>, manager: Manager) {
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        manager.close();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn vms_in_turns_share_a_turn_only_on_different_cpus() {
        let d = temp_dir("cpus");
        let mut manager = two_at_a_time(&d);
        let (children, pids) = join_on_cpus(&d, &mut manager, &[0, 0, 1]);
        let runs: Vec<bool> = pids
            .iter()
            .map(|&pid| read_json::<Assignment>(&budget_path(&d, pid)).unwrap().run)
            .collect();
        end(&d, children, manager);
        // The second VM on CPU 0 waits though a slot was free when it joined; the VM
        // on CPU 1 takes that slot.
        assert_eq!(runs, [true, false, true]);
    }

    #[test]
    fn the_vm_staged_before_its_turn_is_the_one_the_first_turn_to_end_makes_room_for() {
        let d = temp_dir("next");
        let mut manager = two_at_a_time(&d);
        // On CPUs 0, 1, 1 and 0, joining in that order: the first two run, and the
        // first one's turn, started first, ends first.
        let (children, pids) = join_on_cpus(&d, &mut manager, &[0, 1, 1, 0]);
        let next = manager.runs_next();
        end(&d, children, manager);
        // First in line is the third VM, but its CPU stays busy with the second's
        // turn: the fourth takes the first's CPU, so it is the one to stage.
        assert_eq!(next, Some(pids[3]));
    }
}
