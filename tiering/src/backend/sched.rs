//! The part every backend shares: per-class queues with bounded in-flight
//! counts, and the device-profile model that holds completions back until an
//! emulated device would have finished them. The engine underneath (io_uring
//! on a file, an NBD connection) only moves bytes.

use super::notify::Notifier;
use super::{
    BackendError, DeviceProfile, IoCompletion, IoOp, IoPriority, IoRequest, OpenError, PageBuf,
    SubmitError,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// Most pages one transfer carries when queued requests for adjacent slots merge
/// (128 KiB, as Linux's default `max_sectors_kb` for many disks).
pub const MAX_RUN_PAGES: usize = 32;

/// How far into a class's queue a merge looks for the next adjacent slot.
const MERGE_LOOKAHEAD: usize = 64;

/// How many requests of each class may be at the device at once. Requests
/// beyond these wait in user space, highest class first, so a demand request
/// finds at most `prefetch + writeback` lower-class requests ahead of it.
/// With a [`DeviceProfile`], prefetch and write-back are further capped at
/// half the device's parallelism each, so they never occupy every unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Demand reads/writes in flight.
    pub demand: usize,
    /// Prefetch reads in flight.
    pub prefetch: usize,
    /// Write-backs in flight.
    pub writeback: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            demand: 32,
            prefetch: 8,
            writeback: 8,
        }
    }
}

impl QueueLimits {
    fn for_class(&self, class: IoPriority) -> usize {
        match class {
            IoPriority::Demand => self.demand,
            IoPriority::Prefetch => self.prefetch,
            IoPriority::Writeback => self.writeback,
        }
        .max(1)
    }

    /// Most requests that can be at the engine at once (sizes rings).
    pub(crate) fn total(&self) -> usize {
        IoPriority::ALL.iter().map(|c| self.for_class(*c)).sum()
    }
}

/// A finished transfer as the engine reports it.
pub(crate) struct EngineDone {
    pub token: u64,
    pub result: Result<(), BackendError>,
    pub buf: PageBuf,
}

/// What moves the bytes. `start` must not block for long; `reap` sleeps until
/// at least one transfer finished or `block_until` passed (`None`: no sleep).
/// A transfer is a run of pages at adjacent slots; every page completes on its
/// own (`EngineDone` per page), under its own token.
pub(crate) trait Engine: Send {
    fn describe(&self) -> String;
    fn capacity_pages(&self) -> u64;
    /// Most pages one transfer may carry.
    fn max_run_pages(&self) -> usize {
        MAX_RUN_PAGES
    }
    /// Refuse requests that can never succeed (read-only export, dead link).
    fn check(&self, _op: IoOp) -> Result<(), BackendError> {
        Ok(())
    }
    /// Start one transfer of `bufs.len()` pages at slots `slot..`; page `i`
    /// completes under token `token + i`. On an error at once, every buffer
    /// comes back.
    fn start(
        &mut self,
        token: u64,
        op: IoOp,
        slot: u64,
        bufs: Vec<PageBuf>,
    ) -> Result<(), (BackendError, Vec<PageBuf>)>;
    /// Push started requests to the device (batched submission).
    fn kick(&mut self) {}
    /// Fds that poll readable whenever `reap` may have something.
    fn event_fds(&self) -> Vec<i32> {
        Vec::new()
    }
    /// Reset the eventfd before reaping (so no wake-up is lost).
    fn clear_event(&self) {}
    fn reap(&mut self, out: &mut Vec<EngineDone>, block_until: Option<Instant>);
    fn trim(&mut self, slot: u64) -> Result<(), BackendError>;
    fn flush(&mut self) -> Result<(), BackendError>;
}

/// Emulated device: `parallelism` units plus a token bucket (GCRA form).
struct DeviceModel {
    latency: Duration,
    jitter_ns: u64,
    unit_free_at: Vec<Instant>,
    transfer: Duration,
    burst: Duration,
    /// Theoretical arrival time of the bandwidth limiter.
    tat: Instant,
    rng: u64,
}

impl DeviceModel {
    fn new(profile: &DeviceProfile, now: Instant) -> Self {
        let transfer = profile.page_transfer_time();
        Self {
            latency: Duration::from_micros(profile.latency_us),
            jitter_ns: profile.jitter_us * 1000,
            unit_free_at: vec![now; profile.parallelism.max(1) as usize],
            transfer,
            burst: transfer * profile.burst_pages.max(1),
            tat: now,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn jitter(&mut self) -> Duration {
        if self.jitter_ns == 0 {
            return Duration::ZERO;
        }
        // xorshift64: cheap, repeatable; quality is irrelevant here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_nanos(self.rng % (self.jitter_ns + 1))
    }

    /// A transfer of `pages` enters the device now: when may its completions be
    /// delivered? One latency for the transfer (a device serves one command, however
    /// long), and the bandwidth for every page of it.
    fn admit(&mut self, now: Instant, pages: usize) -> Instant {
        let (unit, free_at) = self
            .unit_free_at
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, t)| *t)
            .expect("at least one unit");
        let start = free_at.max(now);
        let mut done = start + self.latency + self.jitter();
        if !self.transfer.is_zero() {
            let transfer = self.transfer * pages as u32;
            let new_tat = self.tat.max(start) + transfer;
            let passes = start.max(new_tat.checked_sub(self.burst).unwrap_or(start));
            self.tat = new_tat;
            done = done.max(passes + transfer);
        }
        self.unit_free_at[unit] = done;
        done
    }

    fn parallelism(&self) -> usize {
        self.unit_free_at.len()
    }
}

struct Queued {
    req: IoRequest,
    submitted: Instant,
}

struct Issued {
    tag: u64,
    op: IoOp,
    slot: u64,
    priority: IoPriority,
    submitted: Instant,
    not_before: Option<Instant>,
    /// Token of the transfer's first page (its own token when it went alone).
    run_head: u64,
}

/// A completion whose real I/O is done but whose emulated time is not.
struct Delayed {
    due: Instant,
    seq: u64,
    info: Issued,
    done: EngineDone,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Queues + profile over an engine; implements [`super::TierBackend`].
pub(crate) struct Scheduled<E: Engine> {
    engine: E,
    limits: QueueLimits,
    model: Option<DeviceModel>,
    profile_name: Option<String>,
    queued: [VecDeque<Queued>; 3],
    at_device: [usize; 3],
    issued: HashMap<u64, Issued>,
    next_token: u64,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Completions produced without the engine (refused at issue time).
    ready: VecDeque<(Issued, EngineDone)>,
    /// Pages not yet delivered of each multi-page transfer, by its head token: the
    /// transfer leaves the device (and its class's count) with its last page.
    runs: HashMap<u64, usize>,
    /// While set, submitted prefetches and write-backs only queue, so that those
    /// submitted together can merge ([`plug`](Self::plug)).
    plugged: bool,
    stats: super::BackendStats,
    outstanding: usize,
    scratch: Vec<EngineDone>,
    notifier: Notifier,
    armed_for: Option<Instant>,
    /// Whether anyone asked for `notify_fd`; until then the eventfd is not
    /// reset on every poll (saves a syscall per poll).
    notify_used: std::cell::Cell<bool>,
}

impl<E: Engine> Scheduled<E> {
    pub(crate) fn new(
        engine: E,
        limits: QueueLimits,
        profile: Option<&DeviceProfile>,
    ) -> Result<Self, OpenError> {
        let notifier = Notifier::new(&engine.event_fds()).map_err(OpenError::Resources)?;
        let now = Instant::now();
        let model = profile.map(|p| DeviceModel::new(p, now));
        let mut limits = limits;
        if let Some(m) = &model {
            // Lower classes may never fill the whole emulated device.
            let cap = (m.parallelism() / 2).max(1);
            limits.prefetch = limits.prefetch.min(cap);
            limits.writeback = limits.writeback.min(cap);
        }
        Ok(Self {
            engine,
            limits,
            model,
            profile_name: profile.map(|p| format!("{}us", p.latency_us)),
            queued: Default::default(),
            at_device: [0; 3],
            issued: HashMap::new(),
            next_token: 1,
            delayed: BinaryHeap::new(),
            ready: VecDeque::new(),
            runs: HashMap::new(),
            plugged: false,
            stats: super::BackendStats::default(),
            outstanding: 0,
            scratch: Vec::new(),
            notifier,
            armed_for: None,
            notify_used: std::cell::Cell::new(false),
        })
    }

    pub(crate) fn notify_fd(&self) -> BorrowedFd<'_> {
        if !self.notify_used.replace(true) {
            // Someone may already have slept through a completion: make sure
            // the first poll on the fd returns.
            self.notifier.arm(Some(Duration::ZERO));
        }
        self.notifier.fd()
    }

    /// Arm the timer for the next held-back completion, so `notify_fd` fires then.
    fn rearm(&mut self) {
        let now = Instant::now();
        let next = if self.ready.is_empty() {
            self.delayed.peek().map(|d| d.0.due)
        } else {
            Some(now)
        };
        if next == self.armed_for && next.is_none_or(|t| t > now) {
            return;
        }
        self.armed_for = next;
        self.notifier
            .arm(next.map(|t| t.saturating_duration_since(now)));
    }

    pub(crate) fn engine(&self) -> &E {
        &self.engine
    }

    /// The limits in force (after capping by the profile).
    pub(crate) fn limits(&self) -> QueueLimits {
        self.limits
    }

    pub(crate) fn describe(&self) -> String {
        match &self.profile_name {
            Some(p) => format!("{} (emulated {p})", self.engine.describe()),
            None => self.engine.describe(),
        }
    }

    pub(crate) fn capacity_pages(&self) -> u64 {
        self.engine.capacity_pages()
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    pub(crate) fn stats(&self) -> super::BackendStats {
        self.stats
    }

    /// Hold prefetches and write-backs submitted from now on in their queues until
    /// [`unplug`](Self::unplug), `poll` or `wait`, so that those for adjacent slots
    /// leave as one transfer (the block layer's plugging). Demand requests still go
    /// at once.
    pub(crate) fn plug(&mut self) {
        self.plugged = true;
    }

    /// Issue what a [`plug`](Self::plug) held back.
    pub(crate) fn unplug(&mut self) {
        if std::mem::take(&mut self.plugged) {
            self.pump();
        }
    }

    pub(crate) fn expedite(&mut self, tag: u64) -> bool {
        for class in [IoPriority::Prefetch, IoPriority::Writeback] {
            let queue = &mut self.queued[class.index()];
            if let Some(pos) = queue.iter().position(|q| q.req.tag == tag) {
                let mut q = queue.remove(pos).expect("position is in range");
                q.req.priority = IoPriority::Demand;
                self.queued[IoPriority::Demand.index()].push_back(q);
                self.pump();
                return true;
            }
        }
        false
    }

    fn check_slot(&self, slot: u64) -> Result<(), BackendError> {
        let capacity = self.engine.capacity_pages();
        if slot >= capacity {
            return Err(BackendError::SlotOutOfRange { slot, capacity });
        }
        Ok(())
    }

    pub(crate) fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError> {
        if let Err(error) = self
            .check_slot(req.slot)
            .and_then(|()| self.engine.check(req.op))
        {
            return Err(SubmitError {
                error,
                request: Box::new(req),
            });
        }
        self.outstanding += 1;
        self.stats.requests += 1;
        let class = req.priority.index();
        self.queued[class].push_back(Queued {
            req,
            submitted: Instant::now(),
        });
        self.pump();
        if !self.ready.is_empty() {
            self.rearm();
        }
        Ok(())
    }

    /// Issue queued requests, highest class first, within the limits. A class's
    /// limit counts transfers, as a device's queue depth counts commands.
    fn pump(&mut self) {
        let mut started = false;
        for class in IoPriority::ALL {
            if self.plugged && class != IoPriority::Demand {
                continue;
            }
            let c = class.index();
            while self.at_device[c] < self.limits.for_class(class) {
                let Some(q) = self.queued[c].pop_front() else {
                    break;
                };
                let run = self.gather(c, q);
                self.issue(run);
                started = true;
            }
        }
        if started {
            self.engine.kick();
        }
    }

    /// `first` and the queued requests of its class that continue it slot by slot,
    /// either way, with the same operation: one transfer. Demand requests go alone
    /// (a vCPU waits for that page only). A request is never taken past an earlier
    /// one for the same slot, so the order of two requests for one slot holds.
    fn gather(&mut self, c: usize, first: Queued) -> VecDeque<Queued> {
        let mut run = VecDeque::from([first]);
        if c == IoPriority::Demand.index() {
            return run;
        }
        let op = run[0].req.op;
        let (mut lo, mut hi) = (run[0].req.slot, run[0].req.slot);
        let max_run = self.engine.max_run_pages();
        let queue = &mut self.queued[c];
        while run.len() < max_run {
            let found = queue.iter().take(MERGE_LOOKAHEAD).position(|q| {
                q.req.op == op && (q.req.slot == hi + 1 || q.req.slot.checked_add(1) == Some(lo))
            });
            let Some(pos) = found else { break };
            let slot = queue[pos].req.slot;
            if queue.iter().take(pos).any(|q| q.req.slot == slot) {
                break;
            }
            let q = queue.remove(pos).expect("position is in range");
            if slot == hi + 1 {
                hi = slot;
                run.push_back(q);
            } else {
                lo = slot;
                run.push_front(q);
            }
        }
        run
    }

    fn issue(&mut self, run: VecDeque<Queued>) {
        let pages = run.len();
        let head = self.next_token;
        self.next_token += pages as u64;
        let now = Instant::now();
        let not_before = self.model.as_mut().map(|m| m.admit(now, pages));
        let (op, slot, priority) = (run[0].req.op, run[0].req.slot, run[0].req.priority);
        let mut bufs = Vec::with_capacity(pages);
        for (i, q) in run.into_iter().enumerate() {
            let IoRequest {
                op,
                slot,
                buf,
                priority,
                tag,
            } = q.req;
            bufs.push(buf);
            let info = Issued {
                tag,
                op,
                slot,
                priority,
                submitted: q.submitted,
                not_before,
                run_head: head,
            };
            self.issued.insert(head + i as u64, info);
        }
        if pages > 1 {
            self.runs.insert(head, pages);
        }
        self.stats.transfers += 1;
        self.at_device[priority.index()] += 1;
        if let Err((error, bufs)) = self.engine.start(head, op, slot, bufs) {
            for (i, buf) in bufs.into_iter().enumerate() {
                let token = head + i as u64;
                let info = self.issued.remove(&token).expect("issued above");
                let result = Err(error.duplicate());
                self.ready
                    .push_back((info, EngineDone { token, result, buf }));
            }
        }
    }

    fn absorb(&mut self, now: Instant, out: &mut Vec<IoCompletion>) {
        let mut done = std::mem::take(&mut self.scratch);
        for d in done.drain(..) {
            let Some(info) = self.issued.remove(&d.token) else {
                log::warn!(
                    "{}: completion for unknown token {}",
                    self.engine.describe(),
                    d.token
                );
                continue;
            };
            match info.not_before {
                Some(due) if due > now => {
                    let seq = d.token;
                    self.delayed.push(Reverse(Delayed {
                        due,
                        seq,
                        info,
                        done: d,
                    }));
                }
                _ => self.deliver(info, d, now, out),
            }
        }
        self.scratch = done;
    }

    fn deliver(
        &mut self,
        info: Issued,
        done: EngineDone,
        now: Instant,
        out: &mut Vec<IoCompletion>,
    ) {
        let transfer_done = match self.runs.get_mut(&info.run_head) {
            Some(left) => {
                *left -= 1;
                *left == 0
            }
            None => true,
        };
        if transfer_done {
            self.runs.remove(&info.run_head);
            self.at_device[info.priority.index()] -= 1;
        }
        self.outstanding -= 1;
        let latency = now.saturating_duration_since(info.submitted);
        out.push(IoCompletion {
            tag: info.tag,
            op: info.op,
            slot: info.slot,
            priority: info.priority,
            result: done.result,
            buf: done.buf,
            latency_ns: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
        });
    }

    fn release_due(&mut self, now: Instant, out: &mut Vec<IoCompletion>) {
        while let Some((info, done)) = self.ready.pop_front() {
            self.deliver(info, done, now, out);
        }
        while self.delayed.peek().is_some_and(|d| d.0.due <= now) {
            let Reverse(d) = self.delayed.pop().expect("peeked");
            self.deliver(d.info, d.done, now, out);
        }
    }

    pub(crate) fn poll(&mut self, out: &mut Vec<IoCompletion>) -> usize {
        // Whoever looks for completions wants what it queued under way.
        self.plugged = false;
        let first = out.len();
        // Reset the wake-up sources before looking, so none is lost.
        if self.notify_used.get() {
            self.engine.clear_event();
        }
        if self.armed_for.is_some() || self.notify_used.get() {
            self.notifier.clear_timer();
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        if !self.issued.is_empty() {
            self.engine.reap(&mut scratch, None);
        }
        self.scratch = scratch;
        let now = Instant::now();
        self.absorb(now, out);
        self.release_due(now, out);
        self.pump();
        self.rearm();
        // Within one batch, hand demand completions to the caller first.
        out[first..].sort_by_key(|c| c.priority);
        out.len() - first
    }

    pub(crate) fn wait(&mut self, out: &mut Vec<IoCompletion>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.poll(out);
            if n > 0 || self.outstanding == 0 {
                return n;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            let until = match self.delayed.peek() {
                Some(d) => d.0.due.min(deadline),
                None => deadline,
            };
            if self.issued.is_empty() {
                // Only emulated time is left: sleep on the timerfd (exact,
                // unlike nanosleep, which timer slack delays by ~50 us).
                if self.armed_for != Some(until) {
                    self.armed_for = Some(until);
                    self.notifier
                        .arm(Some(until.saturating_duration_since(now)));
                }
                self.notifier
                    .wait_timer(until.saturating_duration_since(now) + Duration::from_millis(2));
            } else {
                let mut scratch = std::mem::take(&mut self.scratch);
                self.engine.reap(&mut scratch, Some(until));
                self.scratch = scratch;
            }
        }
    }

    pub(crate) fn trim(&mut self, slot: u64) -> Result<(), BackendError> {
        self.check_slot(slot)?;
        self.engine.trim(slot)
    }

    pub(crate) fn flush(&mut self) -> Result<(), BackendError> {
        self.engine.flush()
    }
}

/// Implement [`super::TierBackend`] for a newtype around `Scheduled<_>` in field `inner`.
macro_rules! delegate_tier_backend {
    ($ty:ty) => {
        impl $crate::backend::TierBackend for $ty {
            fn describe(&self) -> String {
                self.inner.describe()
            }
            fn capacity_pages(&self) -> u64 {
                self.inner.capacity_pages()
            }
            fn submit(
                &mut self,
                req: $crate::backend::IoRequest,
            ) -> Result<(), $crate::backend::SubmitError> {
                self.inner.submit(req)
            }
            fn poll(&mut self, out: &mut Vec<$crate::backend::IoCompletion>) -> usize {
                self.inner.poll(out)
            }
            fn wait(
                &mut self,
                out: &mut Vec<$crate::backend::IoCompletion>,
                timeout: std::time::Duration,
            ) -> usize {
                self.inner.wait(out, timeout)
            }
            fn outstanding(&self) -> usize {
                self.inner.outstanding()
            }
            fn expedite(&mut self, tag: u64) -> bool {
                self.inner.expedite(tag)
            }
            fn notify_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                self.inner.notify_fd()
            }
            fn trim(&mut self, slot: u64) -> Result<(), $crate::backend::BackendError> {
                self.inner.trim(slot)
            }
            fn flush(&mut self) -> Result<(), $crate::backend::BackendError> {
                self.inner.flush()
            }
            fn plug(&mut self) {
                self.inner.plug()
            }
            fn unplug(&mut self) {
                self.inner.unplug()
            }
            fn stats(&self) -> $crate::backend::BackendStats {
                self.inner.stats()
            }
        }
    };
}
pub(crate) use delegate_tier_backend;
