//! The fault-handler thread: serves userfaultfd faults, carries out the paging
//! policy's actions and drives the tier backends.
//!
//! This thread owns every page state, slot and the policy, so no locks sit on the
//! fault path. Demand reads block it only for their own completion (the backend
//! issues them ahead of queued prefetches and write-backs); write-backs are
//! asynchronous and finish when their completions come back between faults.
//! Prefetches and moves of file-backed tiers are executed by the migrator thread
//! (`migrator.rs`), so a demand fault never waits for one; those of the NBD tier
//! stay here, asynchronous too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use userfaultfd::{Event, FaultKind, ReadWrite};

use crate::access::{Access, AccessOp, AccessSource, PageKind, PageNumber, PAGE_SIZE};
use crate::backend::{IoCompletion, IoOp, IoPriority, IoRequest, PageBuf, PagePool, SubmitError};
use crate::layout::GuestLayout;
use crate::metrics::Counters;
use crate::policy::{AccessOutcome, Action, PagingPolicy};
use crate::runtime::{Shared, VmHooks};
use crate::stores::{run_blocking, Store};
use crate::uffd::{self, GuestUffd, ZeroFill};

mod cpu_share;
mod evict;
mod fault;
mod fill;
mod migrator;
mod monitor;
mod requests;

pub(crate) use migrator::MigratorHandle;

/// A 64-bit hash of a page's content (xxh3, keyed per process so a guest cannot
/// aim for a collision); never 0, which [`PageMeta::copy_hash`] uses for "unknown".
pub(crate) fn content_hash(data: &[u8]) -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let key = *KEY.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    xxhash_rust::xxh3::xxh3_64_with_seed(data, key).max(1)
}

const PAGE: usize = PAGE_SIZE as usize;
/// No tier holds a copy.
const NO_TIER: u8 = u8::MAX;
/// Evictions are carried out in batches (one dirty-log harvest per batch); RAM may
/// exceed the budget by at most this many pages in between.
pub(crate) const EVICT_BATCH: usize = 32;
/// Pages RAM may hold beyond the budget while evictions are pending (queued, zapped
/// and writing back, or waiting to be punched): a batch waiting to be carried out
/// plus a batch waiting to be punched. A demand fault that would go further waits
/// for write-backs to complete; a prefetch is dropped (see `evict::wait_for_room`).
pub(crate) const ADMISSION_SLACK: usize = 2 * EVICT_BATCH;
/// How often the guest page tables are walked for page kinds.
const KIND_WALK_INTERVAL: Duration = Duration::from_millis(500);
/// Least time between two published reports while running. Building one zeroes a
/// ~147 KB latency histogram, merges the six tiers' into it and scans it for
/// percentiles; done on every idle turn of the loop it was the fault handler's largest
/// user-space cost in a profile of a live run.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
/// Tries of a failed tier I/O before the page is left where it is.
const IO_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Never filled: the first touch is zero-filled.
    Untouched,
    /// In the memfd (RAM). `copy` may name a clean copy in a storage tier.
    Present,
    /// Zapped, write-back in flight; still in the memfd until the write completes.
    Evicting,
    /// An access came during the eviction: it stays in RAM, the write completes.
    EvictCancelled,
    /// Only in the storage tier `copy` names.
    Absent,
    /// A prefetch read from `copy` is in flight.
    Prefetching,
    /// A move between storage tiers is in flight; `copy` is valid until it ends.
    Moving,
}

#[derive(Clone, Copy, Debug)]
struct PageMeta {
    state: State,
    copy_tier: u8,
    copy_slot: u64,
    /// [`content_hash`] of what the copy in `copy_slot` holds (0: not known). An
    /// eviction whose page still hashes to it needs no write-back, whatever the dirty
    /// log says: on shadow paging it also counts pages the guest only read.
    copy_hash: u64,
    /// Written since its content was last captured (dirty log; always true without one).
    dirty: bool,
    /// The policy evicted the page again while its cancelled eviction was still
    /// writing: evict it to this tier once the write is done (NO_TIER: no).
    reevict_to: u8,
    /// Zero-filled and not written since (needs the dirty log to know): it can leave
    /// RAM without a write and come back as a zero fill.
    zero: bool,
    /// A prefetch or move of this page is with the migrator thread: it is not
    /// evicted (deferred to `reevict_to`) until the outcome comes back.
    migrating: bool,
    /// Zapped by a random sample and not touched since: its next minor fault counts
    /// in `sample_hits` (the share of a VM's resident pages in use).
    sampled: bool,
}

/// An I/O in flight, by tag.
enum Op {
    EvictWrite {
        index: usize,
        tier: u8,
        slot: u64,
        attempt: u32,
    },
    PrefetchRead {
        index: usize,
    },
    MoveRead {
        index: usize,
        to: u8,
    },
    MoveWrite {
        index: usize,
        to: u8,
        slot: u64,
    },
}

/// Settings the thread needs.
pub(crate) struct EngineConfig {
    pub cpu: Option<usize>,
    pub sample_pages: usize,
    pub sample_interval: Duration,
    pub probe_pages: usize,
    pub probe_interval: Duration,
    /// How long a demand read is polled for before the handler sleeps on it.
    pub demand_spin: Duration,
}

pub(crate) struct Engine {
    pub uffd: Arc<GuestUffd>,
    pub layout: GuestLayout,
    pub memfd: Arc<File>,
    pub policy: PagingPolicy,
    pub stores: Vec<Option<Store>>,
    pub hooks: Box<dyn VmHooks>,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    /// Written to stop the thread or to wake it for a move request; drained on wake-up.
    pub stop_fd: Arc<File>,
    pub config: EngineConfig,
    /// Move requests from [`crate::runtime::TieredMemory::prefetch`].
    pub move_requests: Option<std::sync::mpsc::Receiver<crate::runtime::MoveRequest>>,
    /// Executes prefetches and moves of the tiers it serves (the others: this thread).
    pub migrator: Option<MigratorHandle>,
    /// Content hashes shared with other VMs (`--share-dir`).
    pub share: Option<crate::share::ShareRegistry>,
    share_cursor: usize,
    last_share_scan: Option<Instant>,
    pending_moves: std::collections::VecDeque<crate::runtime::MoveRequest>,
    pub counters: Counters,
    pub vcpu_of_thread: Arc<Mutex<FxHashMap<i32, u16>>>,
    /// Whether other work shares the handler's CPU (when pinned): no spin then.
    cpu_share: Option<cpu_share::CpuShareProbe>,
    pub trace: Option<crate::trace::TraceWriter<std::io::BufWriter<File>>>,
    pub start: Instant,
    meta: Vec<PageMeta>,
    /// Pages in State::Evicting (still in the memfd, no longer counted by the policy).
    evicting: usize,
    inflight: FxHashMap<u64, Op>,
    next_tag: u64,
    evict_queue: Vec<(PageNumber, u8)>,
    punch_queue: Vec<usize>,
    actions: Vec<Action>,
    /// The pages of a probe round (every 1 ms), kept to save an allocation a round.
    probe_scratch: Vec<PageNumber>,
    deferred: Vec<(usize, IoCompletion)>,
    copy_holders: Vec<Vec<usize>>,
    pool: PagePool,
    dirty_scratch: Vec<PageNumber>,
    rng: u64,
    fatal: bool,
    kinds: crate::pagekind::KindMap,
    last_walk: Option<Instant>,
    last_publish: Option<Instant>,
    /// For the report.
    pub advisor_name: String,
    /// Time spent inside the advisor, by call (its [`crate::advisor::TimedAdvisor`]).
    pub advisor_time: Arc<crate::advisor::AdvisorTime>,
    pub tiers: crate::config::TierConfig,
}

fn io_fatal(msg: String) -> String {
    format!("tiered memory: {msg}; the VM is stopped so that no guest data is lost or wrong")
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uffd: Arc<GuestUffd>,
        layout: GuestLayout,
        memfd: Arc<File>,
        policy: PagingPolicy,
        stores: Vec<Option<Store>>,
        hooks: Box<dyn VmHooks>,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
        stop_fd: Arc<File>,
        config: EngineConfig,
        trace: Option<crate::trace::TraceWriter<std::io::BufWriter<File>>>,
        vcpu_of_thread: Arc<Mutex<FxHashMap<i32, u16>>>,
    ) -> Self {
        let pages = layout.pages();
        Self {
            uffd,
            layout,
            memfd,
            policy,
            stores,
            hooks,
            shared,
            stop,
            stop_fd,
            config,
            move_requests: None,
            migrator: None,
            share: None,
            share_cursor: 0,
            last_share_scan: None,
            pending_moves: std::collections::VecDeque::new(),
            counters: Counters::new(),
            vcpu_of_thread,
            cpu_share: None,
            trace,
            start: Instant::now(),
            meta: vec![
                PageMeta {
                    state: State::Untouched,
                    copy_tier: NO_TIER,
                    copy_slot: 0,
                    copy_hash: 0,
                    dirty: true,
                    reevict_to: NO_TIER,
                    zero: false,
                    migrating: false,
                    sampled: false,
                };
                pages
            ],
            evicting: 0,
            inflight: FxHashMap::default(),
            next_tag: 1,
            evict_queue: Vec::new(),
            punch_queue: Vec::new(),
            actions: Vec::new(),
            probe_scratch: Vec::new(),
            deferred: Vec::new(),
            copy_holders: (0..crate::config::TIER_COUNT).map(|_| Vec::new()).collect(),
            pool: PagePool::new(256),
            dirty_scratch: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            fatal: false,
            kinds: crate::pagekind::KindMap::new(pages),
            last_walk: None,
            last_publish: None,
            advisor_name: String::new(),
            advisor_time: Default::default(),
            tiers: crate::config::TierConfig::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Every guest page starts in storage tier `tier`, page index i in slot i (a VM
    /// restored from an image of its memory). Returns false if the tier cannot hold them.
    pub fn start_in_tier(&mut self, tier: u8) -> bool {
        let pages = self.meta.len() as u64;
        let Some(store) = self.stores[tier as usize].as_mut() else {
            return false;
        };
        if !store.slots.reserve_prefix(pages) {
            return false;
        }
        for (i, m) in self.meta.iter_mut().enumerate() {
            m.state = State::Absent;
            m.copy_tier = tier;
            m.copy_slot = i as u64;
            m.copy_hash = 0;
            m.dirty = false;
        }
        true
    }

    /// Pages already in the memfd when tiering starts (kernel image, boot data) are
    /// resident: tell the policy, which may already evict some of them.
    ///
    /// The pages are listed before the policy hears of any: its actions are carried out
    /// as they come, and a prefetch zero-fills pages further on in the file. When the
    /// adoption went through `on_access`, the readahead of a prefetching advisor took
    /// the kernel image's pages for a stream, its zero-fills became data the scan then
    /// adopted as used prefetches, and the stream marched through all of guest RAM:
    /// 16,182 prefetches for 25 present pages with `gru`, before the guest ran.
    pub fn adopt_present_pages(&mut self) {
        let fd = self.memfd.as_raw_fd();
        let mut present = Vec::new();
        let regions: Vec<_> = self.layout.regions().copied().collect();
        for r in regions {
            let mut off = r.file_offset as i64;
            let end = (r.file_offset + r.len) as i64;
            while off < end {
                // SAFETY: lseek on our own descriptor; no memory is touched.
                let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
                if data < 0 || data >= end {
                    break;
                }
                // SAFETY: as above.
                let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
                let hole = if hole < 0 { end } else { hole.min(end) };
                let mut p = data & !(PAGE as i64 - 1);
                while p < hole {
                    present.push(
                        self.layout
                            .index_of_host(r.host_addr + (p as u64 - r.file_offset) as usize)
                            .expect("offset inside region"),
                    );
                    p += PAGE as i64;
                }
                off = hole;
            }
        }
        let mut actions = std::mem::take(&mut self.actions);
        for index in present {
            self.set_state(index, State::Present);
            self.meta[index].dirty = true;
            actions.clear();
            self.policy
                .adopt_resident(self.layout.page_of_index(index), &mut actions);
            for a in actions.drain(..) {
                self.queue_action(a);
            }
        }
        self.actions = actions;
    }

    /// The thread's main loop; returns when asked to stop (or after a fatal error).
    pub fn run(&mut self) {
        if let Some(cpu) = self.config.cpu {
            if let Err(e) = uffd::pin_current_thread(cpu) {
                log::warn!("cannot pin the fault handler to CPU {cpu}: {e}");
            }
            self.cpu_share = Some(cpu_share::CpuShareProbe::new(cpu));
        }
        let mut events = userfaultfd::EventBuffer::new(64);
        let mut last_sample = Instant::now();
        let mut last_probe = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let mut busy = false;
            // A fault's readahead goes out after its demand read, and merged.
            self.plug_stores();
            match self.uffd.raw().read_events(&mut events) {
                Ok(iter) => {
                    let evs: Vec<_> = iter.collect();
                    for ev in evs {
                        busy = true;
                        match ev {
                            Ok(Event::Pagefault {
                                kind,
                                rw,
                                addr,
                                thread_id,
                            }) => {
                                self.on_fault(kind, rw, addr as usize, thread_id.as_raw());
                            }
                            Ok(other) => log::debug!("userfaultfd event ignored: {other:?}"),
                            Err(e) => log::warn!("userfaultfd event: {e}"),
                        }
                    }
                }
                Err(e) => {
                    self.die(format!("reading userfaultfd events failed: {e}"));
                }
            }
            self.unplug_stores();
            busy |= self.apply_budget_request();
            busy |= self.poll_completions();
            busy |= self.collect_migrations();
            busy |= self.serve_move_requests();
            if self.evict_queue.len() >= EVICT_BATCH || (!busy && !self.evict_queue.is_empty()) {
                self.flush_evictions();
                busy = true;
            }
            if self.punch_queue.len() >= EVICT_BATCH || (!busy && !self.punch_queue.is_empty()) {
                self.flush_punches();
                busy = true;
            }
            self.send_migrations();
            if self.fatal {
                break;
            }
            if !busy {
                // While the vCPUs are paused no guest time passes: no window ends and
                // nothing is sampled; only I/O completions and requests are served.
                if !self.shared.paused.load(Ordering::Acquire) {
                    let now = self.now_ns();
                    let mut actions = std::mem::take(&mut self.actions);
                    actions.clear();
                    self.policy.tick(now, &mut actions);
                    self.plug_stores();
                    for a in actions.drain(..) {
                        self.queue_action(a);
                    }
                    self.unplug_stores();
                    self.actions = actions;
                    self.send_migrations();
                    if self
                        .last_walk
                        .is_none_or(|t| t.elapsed() >= KIND_WALK_INTERVAL)
                    {
                        self.classify_pages();
                    }
                    // Probes (pages the advisor is about to evict) come first and more
                    // often than random samples, as the replay models them. None while
                    // another VM shares the CPU: a touched probe's minor fault then takes
                    // CPU time from it, while a refault's read does not (docs/tiering.md,
                    // "No probes on a shared CPU").
                    if self.config.probe_pages > 0
                        && last_probe.elapsed() >= self.config.probe_interval
                    {
                        last_probe = Instant::now();
                        if self.cpu_shared() {
                            self.counters.probe_rounds_skipped += 1;
                        } else {
                            self.probe_resident();
                        }
                    }
                    if self.config.sample_pages > 0
                        && last_sample.elapsed() >= self.config.sample_interval
                    {
                        last_sample = Instant::now();
                        self.sample_resident();
                    }
                    self.scan_for_sharing();
                }
                self.check_cpu_share();
                self.publish_if_due();
                let outstanding = self
                    .stores
                    .iter()
                    .flatten()
                    .any(|s| s.backend.outstanding() > 0);
                let idle = Instant::now();
                self.wait_for_events(if outstanding { 1 } else { 20 });
                self.counters.handler_idle_ns += idle.elapsed().as_nanos() as u64;
            }
        }
        self.drain_io();
        self.publish();
    }

    /// Whether other work shares the handler's CPU ([`cpu_share`]; never when the
    /// handler is not pinned).
    fn cpu_shared(&self) -> bool {
        self.cpu_share.as_ref().is_some_and(|p| p.shared())
    }

    /// How long a demand read is spun on: not at all while other work shares the
    /// handler's CPU.
    fn demand_spin(&self) -> Duration {
        if self.cpu_shared() {
            Duration::ZERO
        } else {
            self.config.demand_spin
        }
    }

    /// Every [`cpu_share::CHECK_INTERVAL`]: who used the handler's CPU, counting the
    /// handler and the vCPU threads as this VM's (a vCPU on another CPU makes the
    /// others' share look smaller, so the handler spins as before).
    fn check_cpu_share(&mut self) {
        let Some(probe) = self.cpu_share.as_mut().filter(|p| p.due()) else {
            return;
        };
        let was_shared = probe.shared();
        let since = probe.since_check();
        // SAFETY: gettid has no preconditions.
        let mut tids = vec![unsafe { libc::gettid() }];
        if let Ok(m) = self.vcpu_of_thread.lock() {
            tids.extend(m.keys());
        }
        probe.check(&tids);
        if was_shared {
            self.counters.cpu_shared_ns += since.as_nanos() as u64;
        }
    }

    /// Applies a RAM budget asked for through [`crate::runtime::BudgetHandle`]; a
    /// smaller one queues the evictions that bring RAM down to it.
    fn apply_budget_request(&mut self) -> bool {
        let pages = self.shared.budget_request.swap(0, Ordering::AcqRel);
        if pages == 0 {
            return false;
        }
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        if let Err(e) = self.policy.set_ram_budget(pages as usize, &mut actions) {
            log::warn!("RAM budget of {pages} pages refused: {e}");
        }
        for a in actions.drain(..) {
            self.queue_action(a);
        }
        self.actions = actions;
        // Publish at once so that the manager sees the new budget in the report.
        self.publish();
        true
    }

    fn wait_for_events(&self, timeout_ms: i32) {
        let mut fds = [
            libc::pollfd {
                fd: self.uffd.raw().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if fds[1].revents & libc::POLLIN != 0 {
            // Reset the eventfd (non-blocking) so the next poll waits again; the stop
            // flag and the request channel carry the actual message.
            let mut count = [0u8; 8];
            let _ = std::io::Read::read(&mut &*self.stop_fd, &mut count);
        }
    }

    /// Stop the VM: a page can no longer be produced, or the fault path broke.
    fn die(&mut self, msg: String) {
        if !self.fatal {
            self.fatal = true;
            log::error!("{msg}");
            self.hooks.fatal(io_fatal(msg));
        }
    }

    fn trace(&mut self, a: &Access) {
        if let Some(w) = self.trace.as_mut() {
            if let Err(e) = w.write(a) {
                log::warn!("trace output failed, recording stops: {e}");
                self.trace = None;
            } else {
                self.counters.events_traced += 1;
            }
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Hands one page of I/O on `slot` to `tier` under a fresh tag and, once the
    /// backend has taken it, records `op` as in flight under that tag.
    fn submit_io(
        &mut self,
        tier: usize,
        io: IoOp,
        slot: u64,
        buf: PageBuf,
        priority: IoPriority,
        op: Op,
    ) -> Result<(), SubmitError> {
        let tag = self.tag();
        let req = IoRequest {
            op: io,
            slot,
            buf,
            priority,
            tag,
        };
        let store = self.stores[tier].as_mut().expect("tier is open");
        store.backend.submit(req)?;
        self.inflight.insert(tag, op);
        Ok(())
    }

    /// Hold the storage tiers' prefetches and write-backs while a batch of them is
    /// decided, so that those for adjacent slots leave as one transfer
    /// (`TierBackend::plug`). Demand reads are never held, and waiting on a tier
    /// releases what it holds.
    fn plug_stores(&mut self) {
        for store in self.stores.iter_mut().flatten() {
            store.backend.plug();
        }
    }

    fn unplug_stores(&mut self) {
        for store in self.stores.iter_mut().flatten() {
            store.backend.unplug();
        }
    }

    fn queue_action(&mut self, a: Action) {
        match a {
            Action::Fill { page, .. } | Action::Prefetch { page, .. } => self.start_prefetch(page),
            Action::Evict { page, to } => self.evict_queue.push((page, to)),
            Action::Move { page, from, to } => self.start_move(page, from, to),
        }
    }

    /// A free slot in `tier`, taking one from a clean copy of a resident page if need be.
    fn alloc_slot(&mut self, tier: usize) -> Option<u64> {
        let store = self.stores[tier].as_mut()?;
        if let Some(s) = store.slots.alloc() {
            return Some(s);
        }
        while let Some(index) = self.copy_holders[tier].pop() {
            let m = &mut self.meta[index];
            if m.state == State::Present && m.copy_tier as usize == tier {
                m.copy_tier = NO_TIER;
                m.copy_hash = 0;
                m.dirty = true;
                return Some(m.copy_slot);
            }
        }
        None
    }

    fn release_copy(&mut self, index: usize) {
        let m = &mut self.meta[index];
        if m.copy_tier != NO_TIER {
            if let Some(store) = self.stores[m.copy_tier as usize].as_mut() {
                store.slots.release(m.copy_slot);
            }
            m.copy_tier = NO_TIER;
            m.copy_hash = 0;
        }
    }

    /// A move of page `index` has written slot `slot` of tier `to`: that is its copy
    /// now, holding what the old one did (the old slot is freed), and the page is Absent.
    fn finish_move(&mut self, index: usize, to: u8, slot: u64) {
        let hash = self.meta[index].copy_hash;
        self.release_copy(index);
        let m = &mut self.meta[index];
        m.copy_tier = to;
        m.copy_slot = slot;
        m.copy_hash = hash;
        self.set_state(index, State::Absent);
    }

    /// Wait for every write-back, so no page is lost at shutdown.
    fn drain_io(&mut self) {
        self.shut_down_migrator();
        if !self.fatal && !self.evict_queue.is_empty() {
            self.flush_evictions();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.inflight.is_empty() && Instant::now() < deadline {
            let mut got = Vec::new();
            for tier in 0..self.stores.len() {
                got.clear();
                if let Some(store) = self.stores[tier].as_mut() {
                    if store.backend.outstanding() > 0 {
                        store.backend.wait(&mut got, Duration::from_millis(5));
                    }
                }
                for c in got.drain(..) {
                    self.complete(tier, c);
                }
            }
            let deferred = std::mem::take(&mut self.deferred);
            for (t, c) in deferred {
                self.complete(t, c);
            }
        }
        self.flush_punches();
        if let Some(w) = self.trace.take() {
            if let Err(e) = w.finish() {
                log::warn!("cannot finish the trace file: {e}");
            }
        }
    }

    /// [`Engine::publish`], at most every [`PUBLISH_INTERVAL`] unless a report is
    /// wanted sooner ([`crate::runtime::BudgetHandle::want_report`]).
    fn publish_if_due(&mut self) {
        let wanted = self.shared.report_wanted.swap(false, Ordering::AcqRel);
        if wanted
            || self
                .last_publish
                .is_none_or(|t| t.elapsed() >= PUBLISH_INTERVAL)
        {
            self.last_publish = Some(Instant::now());
            self.publish();
        }
    }

    /// Copy the counters where the owner can read them.
    fn publish(&mut self) {
        let report = self.report();
        if let Ok(mut r) = self.shared.report.lock() {
            *r = Some(report);
        }
    }

    pub fn report(&self) -> crate::metrics::TieringReport {
        crate::runtime::build_report(self)
    }

    pub(crate) fn ram_budget(&self) -> u64 {
        self.policy.config().ram_budget_pages as u64
    }

    /// The migrator's requests and transfers by tier, as of its last report.
    pub(crate) fn migrator_stats(
        &self,
    ) -> [crate::backend::BackendStats; crate::config::TIER_COUNT] {
        self.migrator
            .as_ref()
            .and_then(|m| m.stats.lock().ok().map(|s| *s))
            .unwrap_or_default()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn resident_pages(&self) -> u64 {
        self.meta
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    State::Present | State::Evicting | State::EvictCancelled
                )
            })
            .count() as u64
    }
}
