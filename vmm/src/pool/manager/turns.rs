//! Turns: which VMs run and when, their staging, and leaving turns once their
//! working sets fit (docs/pool.md, "Running VMs in turns" and "Load control").

use std::time::{Duration, Instant};

use tiering::pool::{
    fits_again, needs_lent_room_back, room_to_lend, turn_budgets, RunningUse, TurnMember,
};

use super::{Manager, Schedule, Tracked};
use crate::pool::{read_json, report_path, MemberReport};

/// A turn whose member never reports its staged pages in (a member of an older
/// version, or one that cannot tell) starts its clock after this many slices.
const STAGING_WAIT_SLICES: u32 = 10;

/// A turn runs at least this many times as long as its staging took, so that on a slow
/// tier a turn is not mostly staging (with 300 ms turns over an hdd-profiled tier,
/// staging took up to 1.5 s and the VMs made almost no progress).
const STAGING_SLICE_RATIO: u32 = 2;

/// A running VM lends room for staging before the next turn once it has run this long
/// (by its reports) without a demand fault: its staged pages are in and it does not
/// grow. Its reports' counters are at most 20 ms old, so a shorter span could miss the
/// faults of a VM still filling.
const SETTLE_MS: u64 = 50;

/// The margin a running VM keeps when it lends room for staging before the next turn,
/// as a fraction of the pool ([`room_to_lend`]).
const PRESTAGING_MARGIN_DIVISOR: u64 = 16;

/// A running member with its turn's budget `b`, for the lending rules.
fn running_use(m: &Tracked, b: u64) -> RunningUse {
    RunningUse {
        budget_pages: b,
        resident_pages: m.fresh_resident,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Manager {
    /// Turns taken up because the pool was over-committed end once no more VMs remain
    /// than run at once anyway, or once what each VM held at the end of its last turn
    /// fits in the pool ([`fits_again`]): all of them run, and budgets follow
    /// [`rebalance`] again. Returns the log's line.
    pub(super) fn leave_turns_if_they_fit(&mut self) -> Option<String> {
        let slots = self.options.schedule.as_ref()?.slots;
        if !(self.options.turns_when_over_committed && self.in_turns) {
            return None;
        }
        let t = self.elapsed_s();
        let n = self.members.len();
        let held: Vec<Option<u64>> = self
            .members
            .iter()
            .map(|(_, m)| m.held_at_turn_end)
            .collect();
        let size = self.options.config.size_pages;
        let line = if n <= slots {
            // A pool that starts in turns has no more VMs than slots while its batch
            // joins: only VMs leaving end its turns this way.
            if self.options.start_in_turns && !self.any_left {
                return None;
            }
            format!(
                "{t:7.2}s  {n} VMs left, no more than run at once in turns: all run at once again"
            )
        } else if fits_again(size, &held) {
            let total: u64 = held.iter().flatten().sum();
            format!(
                "{t:7.2}s  the {n} VMs held {total} pages at the ends of their last turns, of \
                 {size}: all run at once again"
            )
        } else {
            return None;
        };
        self.in_turns = false;
        self.over_committed_rounds = 0;
        self.thrashing_rounds = 0;
        self.shares_afresh = true;
        self.return_lent_room();
        self.lent_this_turn = false;
        let staging = self.options.schedule.as_ref().is_some_and(|s| s.staging);
        self.queue.clear();
        for (pid, m) in self.members.iter_mut() {
            m.turn_run = false;
            m.turn_began = None;
            m.turn_started = None;
            // A waiting VM resumes with the pages it held asked back, as a turn does.
            if staging && !m.run {
                m.turn_stage += 1;
            }
            m.held_at_turn_end = None;
            self.queue.push_back(*pid);
        }
        Some(line)
    }

    /// Between rounds, with a schedule: ends the turns that are over and starts the
    /// next. Returns a line per change.
    pub fn tick(&mut self) -> Vec<String> {
        let Some(schedule) = self.active_schedule() else {
            return Vec::new();
        };
        let prestaging = schedule.staging && schedule.prestaging;
        let latest = self.latest_reports(prestaging);
        let mut lines = self.start_staged_clocks(schedule.slice, &latest);
        let running = self.members.iter().filter(|(_, m)| m.turn_run).count();
        let expired = self.members.iter().any(|(_, m)| {
            m.turn_run && m.turn_started.is_some_and(|t| t.elapsed() >= m.turn_slice)
        });
        let lending = prestaging && self.watch_turns(&latest);
        if !self.queue.is_empty() && (expired || running < schedule.slots || lending) {
            lines.extend(self.assign());
        }
        lines
    }

    /// Between rounds, the members' latest reports (members in turns report every
    /// [`super::TURN_REPORT_INTERVAL`]), read once a tick: of every member with `all`
    /// (staging before turns), else of those whose staged pages are awaited.
    fn latest_reports(&self, all: bool) -> Vec<Option<MemberReport>> {
        self.members
            .iter()
            .map(|(pid, m)| {
                let awaited = m.turn_run && m.turn_started.is_none();
                (all || awaited)
                    .then(|| read_json(&report_path(&self.options.dir, *pid)).ok())
                    .flatten()
            })
            .collect()
    }

    /// Between rounds, with staging before turns: takes the members' resident pages
    /// from their `latest` reports, and marks a running VM settled once its reports
    /// since its clock started show [`SETTLE_MS`] without a demand fault. Returns
    /// whether lending may be due: nothing lent yet and every running VM settled, or
    /// something lent that a lender needs back.
    fn watch_turns(&mut self, latest: &[Option<MemberReport>]) -> bool {
        for ((_, m), r) in self.members.iter_mut().zip(latest) {
            let Some(r) = r else {
                continue;
            };
            m.fresh_resident = r.resident_pages;
            if !m.turn_run || m.turn_started.is_none() {
                continue;
            }
            match m.settle_mark {
                Some((t, faults)) if r.demand_faults == faults => {
                    m.settled |= r.time_ms >= t + SETTLE_MS;
                }
                _ => m.settle_mark = Some((r.time_ms, r.demand_faults)),
            }
        }
        let lent = self.members.iter().any(|(_, m)| m.lent > 0);
        (!self.lent_this_turn && self.running_settled()) || lent
    }

    /// Whether every running VM has settled ([`Manager::watch_turns`]).
    fn running_settled(&self) -> bool {
        self.members.iter().all(|(_, m)| !m.turn_run || m.settled)
    }

    /// Every lender takes back the room it lent, and the borrower gives it up.
    fn return_lent_room(&mut self) {
        for (_, m) in self.members.iter_mut() {
            m.lent = 0;
            m.borrowed = 0;
        }
    }

    /// Starts the clock of each running turn whose staged pages are in (its member's
    /// `latest` report says so), or that has waited for them [`STAGING_WAIT_SLICES`]
    /// slices.
    fn start_staged_clocks(
        &mut self,
        slice: Duration,
        latest: &[Option<MemberReport>],
    ) -> Vec<String> {
        let t = self.elapsed_s();
        let mut lines = Vec::new();
        for ((pid, m), r) in self.members.iter_mut().zip(latest) {
            let Some(began) = m
                .turn_began
                .filter(|_| m.turn_run && m.turn_started.is_none())
            else {
                continue;
            };
            let staged = r.as_ref().is_some_and(|r| r.staged >= m.turn_stage);
            if staged || began.elapsed() >= slice * STAGING_WAIT_SLICES {
                let staging = began.elapsed();
                m.turn_started = Some(Instant::now());
                m.settle_mark = None;
                m.settled = false;
                // A VM's first turn stages nothing; the wait was its boot.
                let first = !m.had_turn;
                if !first {
                    m.turn_slice = slice.max(staging * STAGING_SLICE_RATIO);
                }
                let what = match (first, staged) {
                    (true, true) => "started".to_string(),
                    (false, true) => format!("pages staged in {:.0} ms", ms(staging)),
                    (_, false) => format!("staging not reported in {:.0} ms", ms(staging)),
                };
                lines.push(format!(
                    "{t:7.2}s  vm {pid}: {what}; its turn's {} ms start now",
                    m.turn_slice.as_millis()
                ));
            }
        }
        lines
    }

    /// Turns: ends those that are over (when someone waits), starts the next in line,
    /// and splits the pool by [`turn_budgets`].
    pub(super) fn turns(&mut self, schedule: &Schedule) -> Vec<(u64, bool, u64)> {
        let now = Instant::now();
        let mut changed = false;
        let filling_from = self.options.config.min_refaults_per_s;
        if !self.queue.is_empty() {
            for (pid, m) in self.members.iter_mut() {
                if m.turn_run && m.turn_started.is_some_and(|t| now - t >= m.turn_slice) {
                    m.turn_run = false;
                    m.turn_began = None;
                    m.turn_started = None;
                    m.had_turn = true;
                    // A VM still touching new pages as its turn ends holds less than
                    // it will need: no estimate of its working set from this turn.
                    if m.first_touches_lately < filling_from {
                        m.held_at_turn_end = Some(m.report.resident_pages);
                    }
                    self.queue.push_back(*pid);
                    changed = true;
                }
            }
        }
        let mut running = self.members.iter().filter(|(_, m)| m.turn_run).count();
        while running < schedule.slots {
            let Some(next) = self.next_in_line() else {
                break;
            };
            changed = true;
            if let Some((_, m)) = self.members.iter_mut().find(|(p, _)| *p == next) {
                m.turn_run = true;
                m.turn_began = Some(now);
                m.turn_slice = schedule.slice;
                // With staging, the turn's clock starts once the pages are in
                // (`start_staged_clocks`): on a slow tier staging can take longer
                // than a slice, and a turn spent staging would end with nothing run.
                // A VM that runs already (turns that began with the pool
                // over-committed) has its pages in: nothing to stage.
                let stage = schedule.staging && !m.run;
                m.turn_started = if stage { None } else { Some(now) };
                m.settle_mark = None;
                m.settled = false;
                if stage {
                    m.turn_stage += 1;
                }
                running += 1;
            }
        }
        let view: Vec<TurnMember> = self
            .members
            .iter()
            .map(|(_, m)| TurnMember {
                priority: m.report.priority,
                guest_pages: m.report.guest_pages,
                running: m.turn_run,
            })
            .collect();
        let mut budgets = turn_budgets(self.options.config.size_pages, &view);
        if changed {
            // New turns: what was lent goes back (the budgets above are the new turns').
            self.return_lent_room();
            self.lent_this_turn = false;
        }
        if schedule.staging && schedule.prestaging {
            self.lend_for_prestaging(&mut budgets);
        }
        budgets
            .into_iter()
            .zip(&self.members)
            .map(|(b, (_, m))| (b, m.turn_run, m.turn_stage))
            .collect()
    }

    /// Takes from the queue the first VM in line not pinned to the CPU of a VM that
    /// runs: two VMs on one CPU run no faster together than in turn while another CPU
    /// idles, and which VMs share a turn otherwise follows the order they joined in
    /// (docs/pool.md, "Turns and CPUs"). None if every VM in line is on a busy CPU: its
    /// slot waits for that CPU's turn to end.
    fn next_in_line(&mut self) -> Option<u32> {
        let i = self.first_in_line_off(&self.busy_cpus(None))?;
        self.queue.remove(i)
    }

    /// The VM [`Manager::next_in_line`] will take when the running turn that ends first
    /// has ended: the one to stage before its turn. Not always the head of the queue,
    /// whose CPU may stay busy with a turn that ends later.
    pub(in crate::pool) fn runs_next(&self) -> Option<u32> {
        // A turn whose clock has not started (its pages still coming in) ends last.
        let ends_first = self
            .members
            .iter()
            .filter(|(_, m)| m.turn_run)
            .min_by_key(|(_, m)| {
                let end = m.turn_started.map(|t| t + m.turn_slice);
                (end.is_none(), end)
            })
            .map(|(pid, _)| *pid);
        let i = self.first_in_line_off(&self.busy_cpus(ends_first))?;
        self.queue.get(i).copied()
    }

    /// The host CPUs of the running VMs but `except`.
    fn busy_cpus(&self, except: Option<u32>) -> Vec<usize> {
        self.members
            .iter()
            .filter(|(pid, m)| m.turn_run && Some(*pid) != except)
            .filter_map(|(_, m)| m.report.cpu)
            .collect()
    }

    /// Where in the queue the first VM not pinned to one of the `busy` CPUs is.
    fn first_in_line_off(&self, busy: &[usize]) -> Option<usize> {
        let cpu_of = |pid: u32| {
            self.members
                .iter()
                .find(|(p, _)| *p == pid)
                .and_then(|(_, m)| m.report.cpu)
        };
        self.queue
            .iter()
            .position(|&pid| cpu_of(pid).is_none_or(|c| !busy.contains(&c)))
    }

    /// Staging before a turn (the "VM x runs next: stage its set first" of the vCPU
    /// scheduler): once every running VM has settled, the room it holds beyond its
    /// resident pages and a margin ([`room_to_lend`]) is lent to the next VM in line,
    /// which stages its pages into it while it waits. A lender whose resident pages grow
    /// into the margin takes the room back, as do the lenders of a borrower that left.
    /// `budgets` are [`turn_budgets`]'s, changed by what is lent.
    fn lend_for_prestaging(&mut self, budgets: &mut [u64]) {
        let margin = (self.options.config.size_pages / PRESTAGING_MARGIN_DIVISOR).max(1);
        let squeezed = self
            .members
            .iter()
            .zip(budgets.iter())
            .any(|((_, m), &b)| needs_lent_room_back(&running_use(m, b), m.lent, margin));
        let borrower_left = self.members.iter().any(|(_, m)| m.lent > 0)
            && self.members.iter().all(|(_, m)| m.borrowed == 0);
        if squeezed || borrower_left {
            self.return_lent_room();
        } else if !self.lent_this_turn {
            self.lend(budgets, margin);
        }
        for ((_, m), b) in self.members.iter().zip(budgets.iter_mut()) {
            *b = b.saturating_sub(m.lent) + m.borrowed;
        }
    }

    /// Lends the running VMs' spare room to the VM that runs next
    /// ([`Manager::runs_next`]), if it has had a turn (a set to stage) and is down to
    /// its budget, and every running VM is settled ([`Manager::watch_turns`]).
    fn lend(&mut self, budgets: &[u64], margin: u64) {
        let Some(next) = self.runs_next() else {
            return;
        };
        let Some(n) = self
            .members
            .iter()
            .position(|(p, m)| *p == next && m.had_turn)
        else {
            return;
        };
        let settled = self.running_settled();
        // Nor while the next VM still writes back the pages it gave up when it was
        // paused: its staging reads would queue behind those writes (on an hdd-profiled
        // tier, for seconds) and could ask back pages still on their way out.
        let evicted = self.members[n].1.fresh_resident <= budgets[n];
        if !settled || !evicted {
            return;
        }
        self.lent_this_turn = true;
        let lenders: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].1.turn_run)
            .collect();
        let uses: Vec<RunningUse> = lenders
            .iter()
            .map(|&i| running_use(&self.members[i].1, budgets[i]))
            .collect();
        let wanted = self.members[n]
            .1
            .report
            .guest_pages
            .saturating_sub(budgets[n]);
        let lent = room_to_lend(&uses, margin, wanted);
        let total: u64 = lent.iter().sum();
        if total == 0 {
            return;
        }
        for (&i, l) in lenders.iter().zip(lent) {
            self.members[i].1.lent = l;
        }
        let m = &mut self.members[n].1;
        m.borrowed = total;
        m.turn_stage += 1;
    }
}
