//! The migrator thread: executes prefetches and moves between tiers, so the
//! fault-handler thread only decides (the paging policy) and serves demand faults,
//! and a demand fault never waits behind a migration.
//!
//! The handler owns every page state and slot. For each `Prefetch` or `Move` the
//! policy decides (including those of [`crate::runtime::TieredMemory::prefetch`]),
//! it marks the page `migrating`, picks the slots and sends the job here. This
//! thread has its own instance of each file-backed tier (its own O_DIRECT file
//! descriptor and io_uring on the same file; NBD exports allow one client per
//! connection in `qemu-nbd`'s default, so tier 5 migrations stay on the handler).
//! A job starts as soon as it arrives (prefetches first, at most [`MOVES_IN_FLIGHT`]
//! moves): its read at Prefetch (prefetch) or Writeback (move) priority, then for a
//! prefetch `UFFDIO_COPY` into guest RAM, for a move the write to the new slot. The
//! outcomes go back over a channel in groups, the handler is woken through its
//! eventfd, and it updates the page states.
//!
//! Races, and why no data is lost (see also docs/tiering.md, "Migrator"):
//! - A demand fault on a page being prefetched: the handler leaves it pending and
//!   this thread's `UFFDIO_COPY` wakes the vCPU (a second read would cost a whole
//!   device latency); if the read fails, the handler wakes the vCPU to fault again.
//!   A copy that finds the page present (EEXIST) only wakes.
//! - A page with a migration in flight is never evicted: the eviction is deferred
//!   (`reevict_to`) until the migrator reports, so the migrator's late `UFFDIO_COPY`
//!   can never re-install old data over a page that left RAM after being written.
//! - A move reads the old slot, which is released only when the handler processes
//!   the move's outcome; if the page came back to RAM meanwhile the new slot is
//!   released instead and the page keeps its copy.
//! - The guest may write a prefetched page between its `UFFDIO_COPY` here and the
//!   handler learning of it: the page's dirty flag is cleared when the job is sent,
//!   never when the outcome arrives nor when a racing demand fault installs it (that
//!   fault's event may predate the migrator's install and the guest's write), so a
//!   dirty-log harvest in between is kept.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::{
    BackendStats, EventFd, IoCompletion, IoOp, IoPriority, IoRequest, PagePool, TierBackend,
};
use crate::config::TIER_COUNT;
use crate::uffd::GuestUffd;

/// Most migration steps (reads, and a move's write) in flight at once.
pub(crate) const MIGRATE_BATCH: usize = 32;

/// Most moves in flight at once: re-tiering is background work, prefetches are not.
const MOVES_IN_FLIGHT: usize = 4;

/// Longest a finished job's outcome waits to go back to the handler.
const REPORT_EVERY: Duration = Duration::from_millis(2);

/// One migration, decided by the handler.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Job {
    /// Read `slot` of `tier` and install it at `host` (guest page `index`).
    Prefetch {
        index: usize,
        tier: u8,
        slot: u64,
        host: usize,
    },
    /// Copy `from_slot` of `from` to `to_slot` of `to`.
    Move {
        index: usize,
        from: u8,
        from_slot: u64,
        to: u8,
        to_slot: u64,
    },
}

/// What became of a job.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Installed in guest RAM (or found there already: a demand fault won).
    Prefetched { index: usize, tier: u8, hash: u64 },
    /// The new slot holds the page.
    Moved { index: usize, to: u8, to_slot: u64 },
    /// The job failed; `fatal`: guest RAM could not be written (the VM must stop).
    Failed {
        job: Job,
        error: String,
        fatal: bool,
    },
}

/// Which job an I/O belongs to, and which step it is.
enum Step {
    Read(Job),
    MoveWrite(Job),
}

/// The handler's end: send jobs, collect outcomes.
pub(crate) struct MigratorHandle {
    jobs: Option<Sender<Vec<Job>>>,
    /// Signalled with every send, so the thread wakes for new jobs at once.
    job_signal: Arc<EventFd>,
    pub outcomes: Receiver<Vec<Outcome>>,
    thread: Option<JoinHandle<()>>,
    /// Tiers the migrator has a backend for.
    serves: [bool; TIER_COUNT],
    /// Jobs collected during one loop iteration of the handler, sent together.
    pub outgoing: Vec<Job>,
    /// Jobs sent whose outcome has not come back yet.
    pub in_flight: usize,
    /// The migrator's backends' requests and transfers, by tier, as of its last report.
    pub stats: Arc<std::sync::Mutex<[BackendStats; TIER_COUNT]>>,
}

impl MigratorHandle {
    /// Start the thread over `backends` (entries `None`: not served, the handler
    /// migrates those tiers itself). `wake` is the handler's eventfd.
    pub fn spawn(
        backends: Vec<Option<Box<dyn TierBackend>>>,
        uffd: Arc<GuestUffd>,
        wake: Arc<File>,
    ) -> std::io::Result<Self> {
        let mut serves = [false; TIER_COUNT];
        for (t, b) in backends.iter().enumerate() {
            serves[t] = b.is_some();
        }
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let (out_tx, outcomes) = std::sync::mpsc::channel();
        let job_signal = Arc::new(EventFd::new()?);
        let stats = Arc::new(std::sync::Mutex::new([BackendStats::default(); TIER_COUNT]));
        let mut worker = Worker {
            stats: stats.clone(),
            job_signal: job_signal.clone(),
            backends,
            uffd,
            wake,
            pool: PagePool::new(2 * MIGRATE_BATCH),
            steps: rustc_hash::FxHashMap::default(),
            next_tag: 0,
            done: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tier-migrator".into())
            .spawn(move || worker.run(job_rx, out_tx))?;
        Ok(Self {
            jobs: Some(jobs),
            job_signal,
            outcomes,
            thread: Some(thread),
            serves,
            outgoing: Vec::new(),
            in_flight: 0,
            stats,
        })
    }

    pub fn serves(&self, tier: u8) -> bool {
        self.serves.get(tier as usize).copied().unwrap_or(false)
    }

    /// Send the jobs collected so far. Returns false if the thread is gone.
    pub fn send(&mut self) -> bool {
        if self.outgoing.is_empty() {
            return true;
        }
        let jobs = std::mem::take(&mut self.outgoing);
        let n = jobs.len();
        match self.jobs.as_ref().map(|s| s.send(jobs)) {
            Some(Ok(())) => {
                self.in_flight += n;
                self.job_signal.signal();
                true
            }
            _ => false,
        }
    }

    /// Close the job channel and wait for the thread to finish the jobs it has.
    pub fn shut_down(&mut self) {
        self.jobs = None;
        self.job_signal.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Jobs received and not started yet, by kind.
#[derive(Default)]
struct Waiting {
    prefetches: VecDeque<Job>,
    moves: VecDeque<Job>,
}

impl Waiting {
    fn add(&mut self, jobs: Vec<Job>) {
        for job in jobs {
            match job {
                Job::Prefetch { .. } => self.prefetches.push_back(job),
                Job::Move { .. } => self.moves.push_back(job),
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.prefetches.is_empty() && self.moves.is_empty()
    }
}

struct Worker {
    stats: Arc<std::sync::Mutex<[BackendStats; TIER_COUNT]>>,
    job_signal: Arc<EventFd>,
    backends: Vec<Option<Box<dyn TierBackend>>>,
    uffd: Arc<GuestUffd>,
    wake: Arc<File>,
    pool: PagePool,
    steps: rustc_hash::FxHashMap<u64, Step>,
    next_tag: u64,
    done: Vec<Outcome>,
}

impl Worker {
    /// Takes jobs as they come and keeps up to [`MIGRATE_BATCH`] steps in flight,
    /// prefetches first: a job never waits for an unrelated one to finish (batches
    /// that waited for their slowest step held prefetches behind moves into a 2 ms
    /// tier, docs/tiering.md "Migrator"). Moves use at most [`MOVES_IN_FLIGHT`] of the
    /// places, and only while no prefetch waits.
    fn run(&mut self, jobs: Receiver<Vec<Job>>, outcomes: Sender<Vec<Outcome>>) {
        let mut waiting = Waiting::default();
        let mut open = true;
        let mut last_report = Instant::now();
        loop {
            if self.steps.is_empty() && waiting.is_empty() {
                if !open {
                    break;
                }
                match jobs.recv_timeout(Duration::from_millis(100)) {
                    Ok(v) => waiting.add(v),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(v) => waiting.add(v),
                    Err(TryRecvError::Empty) => break,
                    // Finish what was sent, then stop.
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            // Jobs started together leave merged where their slots are adjacent.
            self.backends.iter_mut().flatten().for_each(|b| b.plug());
            while self.steps.len() < MIGRATE_BATCH {
                let Some(job) = waiting.prefetches.pop_front() else {
                    break;
                };
                self.start(job);
            }
            while waiting.prefetches.is_empty()
                && self.steps.len() < MIGRATE_BATCH
                && self.moves_in_flight() < MOVES_IN_FLIGHT
            {
                let Some(job) = waiting.moves.pop_front() else {
                    break;
                };
                self.start(job);
            }
            self.backends.iter_mut().flatten().for_each(|b| b.unplug());
            // New jobs and completions both wake the wait; the timeout is a backstop.
            self.reap(Duration::from_millis(10));
            // Outcomes go back in groups: the guest does not wait for them (its pages
            // are installed here), and every wake-up of the handler takes the CPU it
            // shares with the vCPU.
            let report = self.steps.is_empty()
                || self.done.len() >= MIGRATE_BATCH / 2
                || last_report.elapsed() >= REPORT_EVERY;
            if report && !self.done.is_empty() {
                last_report = Instant::now();
                self.publish_stats();
                if outcomes.send(std::mem::take(&mut self.done)).is_err() {
                    break;
                }
                // Wake the handler if it is waiting in poll.
                let _ = std::io::Write::write(&mut &*self.wake, &1u64.to_ne_bytes());
            }
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            for (t, b) in self.backends.iter().enumerate() {
                if let Some(b) = b {
                    stats[t] = b.stats();
                }
            }
        }
    }

    /// Submits a job's read.
    fn start(&mut self, job: Job) {
        let (tier, slot, priority) = match job {
            Job::Prefetch { tier, slot, .. } => (tier, slot, IoPriority::Prefetch),
            Job::Move {
                from, from_slot, ..
            } => (from, from_slot, IoPriority::Writeback),
        };
        self.submit(tier, IoOp::Read, slot, priority, Step::Read(job), None);
    }

    /// Moves whose read or write is in flight.
    fn moves_in_flight(&self) -> usize {
        self.steps
            .values()
            .filter(|s| matches!(s, Step::Read(Job::Move { .. }) | Step::MoveWrite(_)))
            .count()
    }

    /// Waits up to `timeout` for any busy backend's completions, or for new jobs, and
    /// handles the completions (an install, a move's write, an outcome).
    fn reap(&mut self, timeout: Duration) {
        if self.steps.is_empty() {
            return;
        }
        let busy: Vec<usize> = (0..self.backends.len())
            .filter(|&t| {
                self.backends[t]
                    .as_ref()
                    .is_some_and(|b| b.outstanding() > 0)
            })
            .collect();
        if busy.is_empty() {
            // Nothing outstanding yet steps remain: their completions were lost.
            for (_, step) in self.steps.drain() {
                let job = match step {
                    Step::Read(j) | Step::MoveWrite(j) => j,
                };
                self.done.push(Outcome::Failed {
                    job,
                    error: "the tier backend lost the request".into(),
                    fatal: false,
                });
            }
            return;
        }
        let mut fds: Vec<libc::pollfd> = busy
            .iter()
            .map(|&t| {
                self.backends[t]
                    .as_ref()
                    .expect("busy tier is open")
                    .notify_fd()
                    .as_raw_fd()
            })
            .chain(std::iter::once(self.job_signal.raw()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        // SAFETY: fds is a valid, initialised array of fds.len() pollfd that lives for
        // the whole call; the fds are the backends' own, open while they are.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if fds.last().is_some_and(|f| f.revents & libc::POLLIN != 0) {
            self.job_signal.clear();
        }
        let mut got = Vec::new();
        for &t in &busy {
            got.clear();
            let backend = self.backends[t].as_mut().expect("busy tier is open");
            backend.poll(&mut got);
            for c in got.drain(..) {
                self.complete(c);
            }
        }
    }

    fn submit(
        &mut self,
        tier: u8,
        op: IoOp,
        slot: u64,
        priority: IoPriority,
        step: Step,
        buf: Option<crate::backend::PageBuf>,
    ) {
        self.next_tag += 1;
        let tag = self.next_tag;
        let req = IoRequest {
            op,
            slot,
            buf: buf.unwrap_or_else(|| self.pool.get()),
            priority,
            tag,
        };
        let Some(backend) = self.backends[tier as usize].as_mut() else {
            return self.fail(step, format!("tier {tier} is not served by the migrator"));
        };
        match backend.submit(req) {
            Ok(()) => {
                self.steps.insert(tag, step);
            }
            Err(e) => self.fail(step, e.error.to_string()),
        }
    }

    fn fail(&mut self, step: Step, error: String) {
        let job = match step {
            Step::Read(j) | Step::MoveWrite(j) => j,
        };
        self.done.push(Outcome::Failed {
            job,
            error,
            fatal: false,
        });
    }

    fn complete(&mut self, c: IoCompletion) {
        let Some(step) = self.steps.remove(&c.tag) else {
            return;
        };
        if let Err(e) = c.result {
            return self.fail(step, e.to_string());
        }
        match step {
            Step::Read(
                job @ Job::Prefetch {
                    index, tier, host, ..
                },
            ) => {
                // EEXIST (a demand fault installed it first) is success: same slot.
                let r = self.uffd.copy_page(&c.buf, host);
                self.done.push(match r {
                    Ok(()) => Outcome::Prefetched {
                        index,
                        tier,
                        hash: super::content_hash(&c.buf),
                    },
                    Err(e) => Outcome::Failed {
                        job,
                        error: e.to_string(),
                        fatal: true,
                    },
                });
            }
            Step::Read(job @ Job::Move { to, to_slot, .. }) => {
                let step = Step::MoveWrite(job);
                self.submit(
                    to,
                    IoOp::Write,
                    to_slot,
                    IoPriority::Writeback,
                    step,
                    Some(c.buf),
                );
            }
            Step::MoveWrite(Job::Move {
                index, to, to_slot, ..
            }) => self.done.push(Outcome::Moved { index, to, to_slot }),
            // A write step is only ever made for a move.
            Step::MoveWrite(job @ Job::Prefetch { .. }) => {
                self.fail(Step::Read(job), "not a move".into())
            }
        }
    }
}

// The handler's side: hand jobs over, take outcomes back.
use super::{Engine, State, NO_TIER, PAGE};

impl Engine {
    /// Gives the prefetch of Absent page `index` (copy in `tier`) to the migrator if it
    /// serves that tier; returns false if this thread must do it.
    pub(super) fn send_prefetch_to_migrator(&mut self, index: usize, tier: u8) -> bool {
        let Some(m) = self.migrator.as_mut().filter(|m| m.serves(tier)) else {
            return false;
        };
        let host = self.layout.host_of_index(index);
        m.outgoing.push(Job::Prefetch {
            index,
            tier,
            slot: self.meta[index].copy_slot,
            host,
        });
        let meta = &mut self.meta[index];
        meta.migrating = true;
        // Cleared now, not when the outcome comes: the guest may write the page as
        // soon as the migrator installs it, and a harvest may mark it dirty before
        // this thread hears of the install.
        meta.dirty = false;
        meta.zero = false;
        self.set_state(index, State::Prefetching);
        self.counters.tiers[tier as usize].prefetch_issued += 1;
        self.counters.migrations += 1;
        true
    }

    /// Gives the move of Absent page `index` from `from` to `to` to the migrator if it
    /// serves both tiers (the new slot is taken here); returns false if this thread
    /// must do it.
    pub(super) fn send_move_to_migrator(&mut self, index: usize, from: u8, to: u8) -> bool {
        if !self
            .migrator
            .as_ref()
            .is_some_and(|m| m.serves(from) && m.serves(to))
        {
            return false;
        }
        let Some(to_slot) = self.alloc_slot(to as usize) else {
            // No room in `to`: the page stays where it is.
            return true;
        };
        let job = Job::Move {
            index,
            from,
            from_slot: self.meta[index].copy_slot,
            to,
            to_slot,
        };
        if let Some(m) = self.migrator.as_mut() {
            m.outgoing.push(job);
        }
        self.meta[index].migrating = true;
        self.set_state(index, State::Moving);
        self.counters.migrations += 1;
        true
    }

    /// Sends the jobs collected in this loop iteration as one batch.
    pub(super) fn send_migrations(&mut self) {
        let sent = self.migrator.as_mut().is_none_or(|m| m.send());
        if !sent {
            self.die("the migrator thread has stopped".into());
        }
    }

    /// Applies the outcomes the migrator sent back; returns whether there were any.
    pub(super) fn collect_migrations(&mut self) -> bool {
        let Some(m) = self.migrator.as_mut() else {
            return false;
        };
        let outcomes: Vec<Outcome> = m.outcomes.try_iter().flatten().collect();
        m.in_flight -= outcomes.len().min(m.in_flight);
        let any = !outcomes.is_empty();
        for o in outcomes {
            self.apply_outcome(o);
        }
        any
    }

    fn apply_outcome(&mut self, outcome: Outcome) {
        let index = match outcome {
            Outcome::Prefetched { index, tier, hash } => {
                self.counters.tiers[tier as usize].bytes_read += PAGE as u64;
                // Still Prefetching: installed by the migrator. Present: a demand fault
                // installed it first (it holds the copy already).
                if self.meta[index].state == State::Prefetching {
                    self.set_state(index, State::Present);
                    self.meta[index].copy_hash = hash;
                    self.copy_holders[tier as usize].push(index);
                }
                index
            }
            Outcome::Moved { index, to, to_slot } => {
                let from = self.meta[index].copy_tier as usize;
                if from != NO_TIER as usize {
                    self.counters.tiers[from].bytes_read += PAGE as u64;
                }
                self.counters.tiers[to as usize].bytes_written += PAGE as u64;
                if self.meta[index].state == State::Moving {
                    self.finish_move(index, to, to_slot);
                } else {
                    // Back in RAM meanwhile, keeping its old copy: drop the new one.
                    self.release_slot(to as usize, to_slot);
                }
                index
            }
            Outcome::Failed { job, error, fatal } => {
                if fatal {
                    self.die(error.clone());
                }
                match job {
                    Job::Prefetch { index, tier, .. } => {
                        log::warn!(
                            "prefetch of page index {index} from tier {tier} failed: {error}"
                        );
                        self.counters.tiers[tier as usize].io_errors += 1;
                        if self.meta[index].state == State::Prefetching {
                            self.set_state(index, State::Absent);
                            self.policy.fill_failed(self.layout.page_of_index(index));
                            // A vCPU may wait on this prefetch (`on_missing`): it
                            // faults again and is served from the tier.
                            let _ = self.uffd.wake(self.layout.host_of_index(index), PAGE);
                        }
                        index
                    }
                    Job::Move {
                        index, to, to_slot, ..
                    } => {
                        log::warn!("move of page index {index} to tier {to} failed: {error}");
                        self.release_slot(to as usize, to_slot);
                        if self.meta[index].state == State::Moving {
                            self.set_state(index, State::Absent);
                        }
                        index
                    }
                }
            }
        };
        self.meta[index].migrating = false;
        // An eviction deferred while the migrator had the page.
        let to = std::mem::replace(&mut self.meta[index].reevict_to, NO_TIER);
        if to != NO_TIER && self.meta[index].state == State::Present {
            self.evict_queue
                .push((self.layout.page_of_index(index), to));
        }
    }

    fn release_slot(&mut self, tier: usize, slot: u64) {
        if let Some(store) = self.stores[tier].as_mut() {
            store.slots.release(slot);
        }
    }

    /// Stops the migrator after the jobs it has, and applies their outcomes.
    pub(super) fn shut_down_migrator(&mut self) {
        self.send_migrations();
        if let Some(m) = self.migrator.as_mut() {
            m.shut_down();
        }
        self.collect_migrations();
    }
}
