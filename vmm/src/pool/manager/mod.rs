//! The manager side of a RAM pool: rounds that read the members' reports and write
//! their budgets, by [`tiering::pool::rebalance`] or, with a [`Schedule`], by turns.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tiering::pool::{
    concentrate, outgrown, over_committed, rebalance, thrashing, PoolConfig, PoolMember,
};

mod turns;

use super::{
    alive, budget_path, io_error, read_json, report_path, report_pid, wait_readable, write_json,
    Assignment, DirWatch, MemberReport, PoolError, PoolFile, Wake, LOCK_FILE, POOL_FILE,
    POOL_FORMAT,
};

/// How often the manager looks at the directory between rounds when it cannot watch it
/// (no inotify) or runs VMs in turns (whose ends it times): a VM that joins waits for its
/// first budget before it boots.
const TICK: Duration = Duration::from_millis(5);

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub dir: PathBuf,
    pub config: PoolConfig,
    pub interval: Duration,
    /// End once every member has left, after at least one joined.
    pub exit_when_empty: bool,
    /// Run the VMs in turns instead of all at once (`None`: all run, budgets by
    /// [`rebalance`]).
    pub schedule: Option<Schedule>,
    /// Run them all at once, and by `schedule` only while the pool is over-committed
    /// ([`over_committed`]): from the round that finds it so until what the VMs hold at
    /// the ends of their turns fits ([`tiering::pool::fits_again`]) or no more VMs
    /// remain than `schedule.slots`. Load control, as Denning's working-set principle
    /// has it: run only the VMs whose working sets fit.
    pub turns_when_over_committed: bool,
    /// With `turns_when_over_committed`: start in turns, as if over-committed, so that
    /// the VMs run all at once only once what each held at the end of its turn fits
    /// ([`tiering::pool::fits_again`]): admission by measured working set, for a batch
    /// of VMs started together, which otherwise fill their memory all at once before
    /// their refaults can tell.
    pub start_in_turns: bool,
}

/// Turns: at most `slots` VMs run at once, each for `slice` while others wait; the
/// pool is split by [`tiering::pool::turn_budgets`].
#[derive(Debug, Clone)]
pub struct Schedule {
    pub slice: Duration,
    pub slots: usize,
    /// Whether a turn begins by asking back the pages the VM held when it was paused.
    pub staging: bool,
    /// Whether the next VM in line stages its pages before its turn, in the room the
    /// running VMs hold but do not use ([`Manager::lend_for_prestaging`]).
    pub prestaging: bool,
}

/// What the manager knows of a member between rounds.
struct Tracked {
    report: MemberReport,
    budget: u64,
    refaults_per_s: f64,
    first_touches_per_s: f64,
    /// First touches since its report before last, per second (not smoothed).
    first_touches_lately: f64,
    /// Its latest report as read between rounds (a schedule with staging before turns):
    /// resident pages, and whether it runs settled.
    fresh_resident: u64,
    /// Its first report since its turn's clock started or since its last demand fault
    /// (time, demand faults): it has settled once a report [`SETTLE_MS`] later shows
    /// no more faults.
    settle_mark: Option<(u64, u64)>,
    settled: bool,
    /// Sampled pages touched again, and sampled pages, summed with a decay of
    /// [`SAMPLE_DECAY`] a round: a live VM samples a few dozen of its pages a round,
    /// too few to judge its active share from one round.
    sample_hits: f64,
    sample_zaps: f64,
    /// This round's sampled pages, counted against next round's hits: a VM reports
    /// just after it samples, before the pages it zapped are touched again (counted
    /// in the same round, a VM touching all its pages showed 81-90% in use).
    zaps_last_round: u64,
    /// Whether it touched new pages at the pressure threshold's rate or more last
    /// round (filling): its samples of that round are not counted.
    filled_last_round: bool,
    /// As last written to its assignment: whether it runs, and its staging request.
    run: bool,
    stage: u64,
    /// As the schedule decides them (written at the end of the round or tick).
    turn_run: bool,
    turn_stage: u64,
    /// When its current turn began (a schedule), and when its clock started: once its
    /// staged pages are in (its report's `staged`), or at once without staging.
    turn_began: Option<Instant>,
    turn_started: Option<Instant>,
    /// This turn's length: the slice, or longer when staging took long
    /// ([`STAGING_SLICE_RATIO`]).
    turn_slice: Duration,
    /// Whether it has had a turn (a first turn has nothing to stage).
    had_turn: bool,
    /// Its resident pages when its last turn ended (by its latest report), while the
    /// VMs run in turns because the pool was over-committed
    /// ([`tiering::pool::fits_again`]).
    held_at_turn_end: Option<u64>,
    /// Pages a running VM lends to the next in line, and pages that VM borrows, to
    /// stage its pages before its turn (until the turns change).
    lent: u64,
    borrowed: u64,
}

const SAMPLE_DECAY: f64 = 0.8;

/// Rounds in a row the pool must be over-committed ([`over_committed`]) before the
/// manager says so: half a second at the default interval, so that a burst of
/// refaults does not trigger it.
const OVER_COMMITTED_ROUNDS: u32 = 5;

/// Rounds in a row in which every VM thrashes ([`thrashing`]) that count as a whole
/// [`OVER_COMMITTED_ROUNDS`]: VMs that have just filled their memory thrash from
/// their first refaults, and half a second of it was most of a short batch's run
/// (docs/pool.md, "Load control"; 1 and 3 measured alike).
const THRASHING_ROUNDS: u32 = 2;

/// Rounds in a row without over-commitment that end a spell of it: a round or two in
/// which a VM starved of CPU refaults less do not (the log would say it again and
/// again on a loaded host).
const CALM_ROUNDS: u32 = 10;

/// Rounds a VM is favoured first in an over-committed pool that concentrates its pages
/// before the next VM is: 30 s at the default interval, many times the 1-2 s it takes
/// to move a working set of half the pool a step a round. With 5 s, a batch of VMs
/// running for 7-10 s took 1.19 times as long as without moving the lead on, since
/// the lead moved just before the first VM finished (docs/pool.md).
const LEAD_ROUNDS: u32 = 300;

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
    /// The pool directory, watched for members' reports (None: polled).
    watch: Option<DirWatch>,
    /// `pool.lock`, held with flock for the manager's lifetime.
    _lock: std::fs::File,
    members: Vec<(u32, Tracked)>,
    /// Members waiting for a turn, first in line first (a schedule).
    queue: VecDeque<u32>,
    round: u64,
    start: Instant,
    /// Whether any member ever joined (for `exit_when_empty`).
    ever_joined: bool,
    /// Whether the running turns have lent room for staging before the next one (once
    /// per change of turns: room taken back is not lent again).
    lent_this_turn: bool,
    /// Rounds the pool has been over-committed in this spell (all at once), which
    /// [`CALM_ROUNDS`] in a row without it end; the log says so once per spell.
    over_committed_rounds: u32,
    /// Whether a round of this spell saw it only from the pages the VMs have touched
    /// ([`outgrown`]), not from every VM refaulting (the log line says which).
    seen_by_touched: bool,
    /// Rounds in a row in which every VM thrashed.
    thrashing_rounds: u32,
    /// Whether any member has left.
    any_left: bool,
    /// Whether the next all-at-once round splits the pool as if every VM had just
    /// joined (set on leaving turns).
    shares_afresh: bool,
    calm_rounds: u32,
    /// Whether the pool, over-committed and all at once, favours its first VMs
    /// ([`concentrate`]) until no VM refaults for [`CALM_ROUNDS`].
    concentrating: bool,
    /// The VM favoured first while concentrating, and the round it took the lead.
    lead: Option<(u32, u64)>,
    /// Whether the VMs run in turns now (`options.schedule`): from the start, or with
    /// `turns_when_over_committed` while the pool is over-committed.
    in_turns: bool,
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
            // Members in turns from the start report more often; a pool that may turn
            // to turns later keeps the members' all-at-once pace (they act on their
            // assignments whenever the manager writes them).
            slice_ms: options
                .schedule
                .as_ref()
                .filter(|_| !options.turns_when_over_committed)
                .map(|s| s.slice.as_millis() as u64),
        };
        write_json(&dir.join(POOL_FILE), &pool).map_err(io_error(dir, "cannot write pool.json"))?;
        let watch = DirWatch::new(dir)
            .map_err(|e| log::warn!("ram pool: cannot watch {}: {e}; polling it", dir.display()))
            .ok();
        let in_turns = options.schedule.is_some()
            && (!options.turns_when_over_committed || options.start_in_turns);
        Ok(Self {
            options,
            watch,
            _lock: lock,
            members: Vec::new(),
            queue: VecDeque::new(),
            round: 0,
            start: Instant::now(),
            ever_joined: false,
            lent_this_turn: false,
            over_committed_rounds: 0,
            seen_by_touched: false,
            thrashing_rounds: 0,
            any_left: false,
            shares_afresh: false,
            calm_rounds: 0,
            concentrating: false,
            lead: None,
            in_turns,
        })
    }

    /// Members now in the pool.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether a VM waits to join (a report of a process the manager does not track) or
    /// has left (a member whose report is gone): the caller runs a round at once rather
    /// than keep a joining VM, or with turns the next VM, waiting for the next round.
    pub fn membership_changed(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.options.dir) else {
            return false;
        };
        let mut reports = 0;
        let mut joining = false;
        for e in entries.flatten() {
            let Some(pid) = report_pid(&e.file_name().to_string_lossy()) else {
                continue;
            };
            reports += 1;
            joining |= !self.members.iter().any(|(p, _)| *p == pid);
        }
        joining || reports < self.members.len()
    }

    /// Waits up to `timeout`, less in turns, for a VM to join or leave (the report of a
    /// VM it does not track renamed in, or any report removed; not the members' reports
    /// of every round) or for `stop` to become readable (then true). Between rounds the
    /// caller then looks for joiners ([`Self::membership_changed`]) and ticks.
    pub fn wait(&self, timeout: Duration, stop: BorrowedFd<'_>) -> bool {
        let joins_or_leaves = |name: &str, removed: bool| {
            report_pid(name)
                .is_some_and(|pid| removed || !self.members.iter().any(|(p, _)| *p == pid))
        };
        match &self.watch {
            Some(watch) if !self.in_turns => {
                watch.wait(timeout, Some(stop.as_raw_fd()), joins_or_leaves) == Wake::Other
            }
            _ => wait_readable(&[Some(stop.as_raw_fd())], timeout.min(TICK)).is_some(),
        }
    }

    /// Whether the manager is done (`exit_when_empty` and everyone left).
    pub fn done(&self) -> bool {
        self.options.exit_when_empty && self.ever_joined && self.members.is_empty()
    }

    /// One round: reads the reports, drops members that left, decides the budgets (and
    /// turns) and writes those that changed. Returns a line per change, for the log.
    pub fn round(&mut self) -> Vec<String> {
        self.round += 1;
        let mut lines = self.read_reports();
        if let Some(line) = self.leave_turns_if_they_fit() {
            lines.push(line);
        }
        lines.extend(self.assign());
        lines
    }

    /// The schedule the VMs run by now: `options.schedule` while in turns.
    fn active_schedule(&self) -> Option<Schedule> {
        self.options.schedule.clone().filter(|_| self.in_turns)
    }

    fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Reads every member's report, drops the members that left and updates the rates.
    fn read_reports(&mut self) -> Vec<String> {
        let dir = self.options.dir.clone();
        let t = self.elapsed_s();
        let mut lines = Vec::new();
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = report_pid(&name) else {
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
        let queue = &mut self.queue;
        let before = self.members.len();
        self.members.retain(|(pid, m)| {
            let stays = seen.iter().any(|r| r.pid == *pid);
            if !stays {
                queue.retain(|p| p != pid);
                lines.push(format!(
                    "{t:7.2}s  vm {pid} left; its {} pages go back to the pool",
                    m.budget
                ));
            }
            stays
        });
        self.any_left |= self.members.len() < before;
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
                        m.first_touches_lately = rate;
                        let zaps = r.sampled_zaps.saturating_sub(m.report.sampled_zaps);
                        let hits = r.sample_hits.saturating_sub(m.report.sample_hits);
                        let evicted = r.samples_evicted.saturating_sub(m.report.samples_evicted);
                        // A VM touching new pages writes them now and uses them
                        // later: samples taken or judged in such a round would say
                        // its pages are idle.
                        let filling = rate >= self.options.config.min_refaults_per_s;
                        if !filling && !m.filled_last_round {
                            // Samples evicted before a touch are left out: the policy
                            // evicts zapped pages first (they look unused to it), so
                            // after a cut they would read as idle and invite the next.
                            m.sample_zaps = (SAMPLE_DECAY * m.sample_zaps
                                + m.zaps_last_round as f64
                                - evicted as f64)
                                .max(0.0);
                            m.sample_hits = SAMPLE_DECAY * m.sample_hits + hits as f64;
                        }
                        m.filled_last_round = filling;
                        m.zaps_last_round = zaps;
                        m.report = r;
                    }
                }
                None => {
                    self.ever_joined = true;
                    self.queue.push_back(r.pid);
                    self.members.push((
                        r.pid,
                        Tracked {
                            report: r,
                            budget: 0,
                            refaults_per_s: 0.0,
                            first_touches_per_s: NEW_MEMBER_FILL_RATE
                                * self.options.config.min_refaults_per_s,
                            first_touches_lately: 0.0,
                            fresh_resident: 0,
                            settle_mark: None,
                            settled: false,
                            sample_hits: 0.0,
                            sample_zaps: 0.0,
                            zaps_last_round: 0,
                            filled_last_round: true,
                            run: false,
                            stage: 0,
                            turn_run: false,
                            turn_stage: 0,
                            turn_began: None,
                            turn_started: None,
                            turn_slice: Duration::ZERO,
                            had_turn: false,
                            held_at_turn_end: None,
                            lent: 0,
                            borrowed: 0,
                        },
                    ));
                }
            }
        }
        lines
    }

    /// Decides every member's budget (and turn) and writes those that changed.
    fn assign(&mut self) -> Vec<String> {
        // The rounds it took, if this round finds the pool over-committed for the first
        // time in a spell.
        let mut newly_over_committed = None;
        let mut ended_concentrating = false;
        let mut lead_line = None;
        let t = self.elapsed_s();
        let decided: Vec<(u64, bool, u64)> = match self.active_schedule() {
            None => {
                // Out of turns, every VM starts again from its priority's share, as
                // when it joined: its budget in turns (a waiting VM's thirty-second)
                // says nothing of what it needs, and a VM resumed with it would
                // refault until the scheme noticed (docs/pool.md, "Load control").
                let afresh = std::mem::take(&mut self.shares_afresh);
                let view: Vec<PoolMember> = self
                    .members
                    .iter()
                    .map(|(_, m)| PoolMember {
                        priority: m.report.priority.max(1),
                        guest_pages: m.report.guest_pages,
                        budget_pages: if afresh { 0 } else { m.budget },
                        resident_pages: m.report.resident_pages,
                        refaults_per_s: m.refaults_per_s,
                        first_touches_per_s: m.first_touches_per_s,
                        active_fraction: m.active_fraction(),
                        touched_pages: m.report.zero_fills,
                    })
                    .collect();
                let budgets = if self.concentrating {
                    let lead = self.lead_index(t, &mut lead_line);
                    concentrate(&self.options.config, &view, lead)
                } else {
                    rebalance(&self.options.config, &view)
                };
                let was_concentrating = self.concentrating;
                newly_over_committed = self.count_over_commitment(&view);
                if was_concentrating && !self.concentrating {
                    ended_concentrating = true;
                }
                // Load control: turns, once over-committed, if more VMs than run at once.
                let take_turns = self.options.schedule.clone().filter(|s| {
                    self.options.turns_when_over_committed
                        && self.over_committed_rounds >= OVER_COMMITTED_ROUNDS
                        && self.members.len() > s.slots
                });
                match take_turns {
                    Some(schedule) => {
                        self.in_turns = true;
                        // Turns serve the working sets one at a time instead.
                        self.stop_concentrating();
                        self.turns(&schedule)
                    }
                    // All run; the staging request stays as it was (0 unless turns
                    // ended, which asked the waiting VMs' pages back). Over-committed
                    // without turns, the pool favours its first VMs from next round.
                    None => {
                        self.concentrating |= self.over_committed_rounds >= OVER_COMMITTED_ROUNDS;
                        budgets
                            .into_iter()
                            .zip(&self.members)
                            .map(|(b, (_, m))| (b, true, m.turn_stage))
                            .collect()
                    }
                }
            }
            Some(schedule) => self.turns(&schedule),
        };
        let dir = self.options.dir.clone();
        let mut lines = Vec::new();
        if let Some((rounds, touched)) = newly_over_committed {
            lines.push(self.over_committed_line(t, rounds, touched));
        }
        lines.extend(lead_line);
        if ended_concentrating {
            lines.push(format!(
                "{t:7.2}s  no VM has refaulted for {CALM_ROUNDS} rounds: shares follow \
                 pressure again"
            ));
        }
        for ((pid, m), &(b, run, stage)) in self.members.iter_mut().zip(&decided) {
            if b == m.budget && run == m.run && stage == m.stage {
                continue;
            }
            let assignment = Assignment {
                version: POOL_FORMAT,
                budget_pages: b,
                round: self.round,
                run,
                stage,
            };
            if let Err(e) = write_json(&budget_path(&dir, *pid), &assignment) {
                log::warn!("ram pool: cannot write the budget of vm {pid}: {e}");
                continue;
            }
            let turn = match (self.in_turns, run, run == m.run) {
                (false, true, false) if m.budget > 0 => ", runs (all at once)",
                (false, _, _) => "",
                (true, true, false) if stage != m.stage => ", its turn: runs, pages asked back",
                (true, true, false) => ", its turn: runs",
                (true, false, false) => ", waits",
                (true, false, true) if stage != m.stage => ", stages its pages before its turn",
                (true, _, true) => "",
            };
            lines.push(if m.budget == 0 {
                format!(
                    "{t:7.2}s  vm {pid} joined (priority {}, {} pages): budget {b} pages{turn}",
                    m.report.priority, m.report.guest_pages
                )
            } else {
                format!(
                    "{t:7.2}s  vm {pid}: {} -> {b} pages (resident {}, {:.0}% in use, {:.0} refaults/s){turn}",
                    m.budget,
                    m.report.resident_pages,
                    100.0 * m.active_fraction(),
                    m.refaults_per_s
                )
            });
            m.budget = b;
            m.run = run;
            m.stage = stage;
        }
        lines
    }

    /// Where the VM favoured first while concentrating is in `members`: the first VM
    /// to join, then, every [`LEAD_ROUNDS`], the next (so that VMs that run for ever
    /// each have their spell with their working set held); a lead that left hands
    /// over to the first VM. Says so in `line` when the lead moves on.
    fn lead_index(&mut self, t: f64, line: &mut Option<String>) -> usize {
        let n = self.members.len();
        let found = self.lead.and_then(|(pid, since)| {
            let i = self.members.iter().position(|(p, _)| *p == pid)?;
            Some((i, since))
        });
        let (mut i, mut since) = found.unwrap_or((0, self.round));
        if self.round - since >= u64::from(LEAD_ROUNDS) && n > 1 {
            i = (i + 1) % n;
            since = self.round;
            *line = Some(format!(
                "{t:7.2}s  over-committed still: vm {} is favoured first now, for {} rounds",
                self.members[i].0, LEAD_ROUNDS
            ));
        }
        self.lead = self.members.get(i).map(|(pid, _)| (*pid, since));
        i
    }

    /// Ends a spell of concentrating: shares follow pressure again.
    fn stop_concentrating(&mut self) {
        self.concentrating = false;
        self.lead = None;
    }

    /// Counts this all-at-once round towards a spell of over-commitment
    /// ([`OVER_COMMITTED_ROUNDS`] of it, or [`THRASHING_ROUNDS`] of thrashing) or
    /// towards its end ([`CALM_ROUNDS`]). If this round is the first of the spell to
    /// find the pool over-committed, returns the rounds it took and, if any round of the
    /// spell saw it only from the pages touched ([`outgrown`]), their sum now.
    fn count_over_commitment(&mut self, view: &[PoolMember]) -> Option<(u32, Option<u64>)> {
        let before = self.over_committed_rounds;
        if thrashing(&self.options.config, view) {
            self.thrashing_rounds += 1;
        } else {
            self.thrashing_rounds = 0;
        }
        let all_refault = over_committed(&self.options.config, view);
        let by_touched =
            !all_refault && self.turns_would_serve() && outgrown(&self.options.config, view);
        // Concentrated, the first VMs no longer refault: the spell lasts until none does.
        let calm = if self.concentrating {
            view.iter()
                .all(|m| m.refaults_per_s < self.options.config.min_refaults_per_s)
        } else {
            !(all_refault || by_touched)
        };
        if calm {
            self.calm_rounds += 1;
            if self.calm_rounds >= CALM_ROUNDS {
                self.over_committed_rounds = 0;
                self.seen_by_touched = false;
                self.stop_concentrating();
            }
            return None;
        }
        self.calm_rounds = 0;
        if self.concentrating {
            return None;
        }
        self.over_committed_rounds += 1;
        self.seen_by_touched |= by_touched;
        if self.thrashing_rounds >= THRASHING_ROUNDS {
            self.over_committed_rounds = self.over_committed_rounds.max(OVER_COMMITTED_ROUNDS);
        }
        let touched = self
            .seen_by_touched
            .then(|| view.iter().map(|m| m.touched_pages).sum());
        (before < OVER_COMMITTED_ROUNDS && self.over_committed_rounds >= OVER_COMMITTED_ROUNDS)
            .then_some((before + 1, touched))
    }

    /// Whether load control would run the VMs in turns once the pool is over-committed
    /// (`turns_when_over_committed`, and more VMs than run at once). Only then does
    /// the pool also count rounds in which the VMs have touched more pages than it
    /// holds ([`outgrown`]) while they still fill: concentrating that soon hands the
    /// pool to the first VM before a short job beside it has made progress (bench-pool's
    /// `staggered` lost 1.08x, docs/pool.md), while turns serve every VM in its turn.
    fn turns_would_serve(&self) -> bool {
        self.options.turns_when_over_committed
            && self
                .options
                .schedule
                .as_ref()
                .is_some_and(|s| self.members.len() > s.slots)
    }

    /// The log's line for a spell of over-commitment: the members' refault rates and
    /// shares in use, and what to do about it; `rounds` it was seen, and the pages the
    /// VMs have touched if some of those rounds saw it from them alone.
    fn over_committed_line(&self, t: f64, rounds: u32, touched: Option<u64>) -> String {
        let range = |f: &dyn Fn(&Tracked) -> f64| {
            let v: Vec<f64> = self.members.iter().map(|(_, m)| f(m)).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        };
        let (r_lo, r_hi) = range(&|m| m.refaults_per_s);
        let (u_lo, u_hi) = range(&|m| 100.0 * m.active_fraction());
        let concentrating = "Until they fit, the first VMs (by priority, then joining) get \
                             their working sets and the last ones a quarter of their shares";
        let remedy = match (self.active_schedule(), &self.options.schedule) {
            (Some(s), _) => format!(
                "They run in turns of {} ms, {} at once, until what they hold at the ends \
                 of their turns fits or no more than {} remain",
                s.slice.as_millis(),
                s.slots,
                s.slots
            ),
            // Turns allowed, but no more VMs than run at once: turns would not help.
            (None, Some(s)) if self.options.turns_when_over_committed => format!(
                "No more of them than --run-slots ({}), so turns would not help. \
                 {concentrating}",
                s.slots
            ),
            _ => format!("{concentrating}; `--slice-ms` runs them in turns instead (docs/pool.md)"),
        };
        let n = self.members.len();
        let seen = match touched {
            None => format!("all {n} VMs have refaulted at their budgets for {rounds} rounds"),
            Some(pages) => format!(
                "the {n} VMs have touched {pages} pages, more than the pool's {}, and for \
                 {rounds} rounds those not still filling their memory have refaulted at their \
                 budgets",
                self.options.config.size_pages
            ),
        };
        format!(
            "{t:7.2}s  over-committed: {seen} ({r_lo:.0}-{r_hi:.0} refaults/s, \
             {u_lo:.0}-{u_hi:.0}% in use): together their working sets do not fit in the \
             pool. {remedy}"
        )
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
