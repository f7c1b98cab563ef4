//! Fault-driven prefetchers over LRU eviction: `stride` (kernel-style readahead)
//! and `leap` (Al Maruf & Chowdhury, ATC'20). Both evict exactly as `lru` does, so
//! their difference from `lru` is what their prefetching buys.

use std::collections::VecDeque;

use rustc_hash::FxHashSet;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::{LruList, NO_OPINION};

/// `page + k * stride`, or `None` outside the page number space.
fn step(page: PageNumber, stride: i64, k: i64) -> Option<PageNumber> {
    page.checked_add_signed(stride.checked_mul(k)?)
}

/// First readahead window in pages, and the largest (128 KiB: Linux's default
/// `read_ahead_kb`).
const STRIDE_INITIAL_WINDOW: i64 = 4;
const STRIDE_MAX_WINDOW: i64 = 32;
/// Resident pages right before a fault that make it part of a stream
/// ([`Readahead::on_fault_in_context`]).
const CONTEXT_MIN_RUN: i64 = 4;
/// Larger fault distances are not treated as a stream.
const STRIDE_MAX_DISTANCE: i64 = 1024;

/// Sequential/stride readahead as the kernel does for files. Two faults with the same
/// non-zero distance start a stream; each confirmation (a fault where the readahead
/// ended, or an observed access to the first page of the last window, the kernel's
/// `PG_readahead` marker) doubles the window up to 32 pages. The `stride` baseline is
/// this over LRU eviction; `gru` may take its candidates too
/// (`GruOptions::readahead_min_window`).
#[derive(Debug, Default)]
pub struct Readahead {
    last_fault: Option<PageNumber>,
    stride: i64,
    window: i64,
    /// Next page along the stream after the queued window.
    next_ahead: Option<PageNumber>,
    marker: Option<PageNumber>,
    pending: VecDeque<PageNumber>,
    /// A fault up to one window past where the readahead ended continues the stream too.
    lenient: bool,
    /// The stream was started by the resident pages before a fault
    /// ([`Readahead::on_fault_in_context`]).
    by_context: bool,
}

impl Readahead {
    /// A readahead that also takes a fault up to one window past where it ended as
    /// the stream going on (pages other prefetch sources brought in were walked
    /// without a fault), where the strict one starts over. The kernel's context
    /// readahead likewise counts pages already in the page cache as the stream's.
    pub fn lenient() -> Self {
        Self {
            lenient: true,
            ..Self::default()
        }
    }

    fn read_ahead_from(&mut self, from: PageNumber) {
        self.marker = Some(from);
        for k in 0..self.window {
            if let Some(p) = step(from, self.stride, k) {
                self.pending.push_back(p);
            }
        }
        self.next_ahead = step(from, self.stride, self.window);
        let cap = 2 * STRIDE_MAX_WINDOW as usize;
        while self.pending.len() > cap {
            self.pending.pop_front();
        }
    }

    fn grow(&mut self) {
        self.window = (self.window * 2).clamp(STRIDE_INITIAL_WINDOW, STRIDE_MAX_WINDOW);
    }

    /// A demand fault on `page`. Returns whether it continued the stream: it came where
    /// the readahead ended or on a page it had queued, so the program walked the
    /// stream up to it.
    pub fn on_fault(&mut self, page: PageNumber) -> bool {
        let delta = self
            .last_fault
            .map(|l| page.wrapping_sub(l) as i64)
            .unwrap_or(0);
        self.last_fault = Some(page);
        let continued = self.continues(page);
        if !continued {
            self.by_context = false;
        }
        if continued || (delta != 0 && delta == self.stride) {
            if self.window == 0 {
                self.window = STRIDE_INITIAL_WINDOW;
            } else {
                self.grow();
            }
            if let Some(next) = step(page, self.stride, 1) {
                self.read_ahead_from(next);
            }
        } else {
            self.stride = if delta.abs() <= STRIDE_MAX_DISTANCE {
                delta
            } else {
                0
            };
            self.window = 0;
            self.next_ahead = None;
            self.marker = None;
            self.pending.clear();
        }
        continued
    }

    /// A demand fault on `page`, as [`Readahead::on_fault`], for a stream whose pages
    /// may be resident already (kept by the eviction order, or brought in by other
    /// prefetch sources), so that its faults skip pages. If the fault neither continues
    /// nor starts a stream, the pages before it are looked at, on the last stride, then
    /// +1 and -1, as the kernel's context readahead counts the cached pages before a
    /// missed index. At least `CONTEXT_MIN_RUN` `resident` pages there, with the
    /// previous fault at most two largest windows behind on that stride (a walk, not a
    /// fault next to a resident cluster), start a stream: a window of twice the run
    /// (4-32 pages) after `page`, with [`Readahead::by_context`] set until a fault
    /// leaves the stream. Returns whether the fault continued a stream.
    pub fn on_fault_in_context(
        &mut self,
        page: PageNumber,
        resident: impl Fn(PageNumber) -> bool,
    ) -> bool {
        let (last_stride, last_fault) = (self.stride, self.last_fault);
        if self.on_fault(page) {
            return true;
        }
        if self.window > 0 {
            return false;
        }
        for stride in [last_stride, 1, -1] {
            if stride == 0 || stride.abs() > STRIDE_MAX_DISTANCE {
                continue;
            }
            let walked = last_fault.is_some_and(|l| {
                let d = page.wrapping_sub(l) as i64;
                d % stride == 0 && (1..=2 * STRIDE_MAX_WINDOW).contains(&(d / stride))
            });
            // Only a walk counts its resident run: up to 32 lookups on the fault path.
            if !walked {
                continue;
            }
            let run = (1..=STRIDE_MAX_WINDOW)
                .take_while(|&k| step(page, stride, -k).is_some_and(&resident))
                .count() as i64;
            if run >= CONTEXT_MIN_RUN {
                self.stride = stride;
                self.by_context = true;
                self.window = (2 * run).clamp(STRIDE_INITIAL_WINDOW, STRIDE_MAX_WINDOW);
                if let Some(next) = step(page, stride, 1) {
                    self.read_ahead_from(next);
                }
                break;
            }
        }
        false
    }

    /// An observed access to resident `page`: the marker page of the last window
    /// queues the next, larger one (the kernel's asynchronous readahead).
    pub fn on_observed(&mut self, page: PageNumber) {
        if Some(page) == self.marker {
            self.marker = None;
            self.grow();
            if let Some(next) = self.next_ahead {
                self.read_ahead_from(next);
            }
        }
    }

    /// Whether a demand fault on `page` continues the stream: it is where the
    /// readahead ended or on a page it had queued but not yet read, or (lenient)
    /// at most one window past the end.
    fn continues(&self, page: PageNumber) -> bool {
        if self.window == 0 {
            return false;
        }
        if Some(page) == self.next_ahead || self.pending.contains(&page) {
            return true;
        }
        let (true, Some(next)) = (self.lenient && self.stride != 0, self.next_ahead) else {
            return false;
        };
        let steps = page.wrapping_sub(next) as i64;
        steps % self.stride == 0 && (1..=self.window).contains(&(steps / self.stride))
    }

    /// Whether `page` lies ahead of the last fault along the stream. The queue also
    /// holds pages the stream has passed (queued twice, or read and evicted since).
    pub fn is_ahead(&self, page: PageNumber) -> bool {
        let (Some(last), stride) = (self.last_fault, self.stride) else {
            return false;
        };
        let d = page.wrapping_sub(last) as i64;
        stride != 0 && d % stride == 0 && d / stride > 0
    }

    /// The stream's stride in pages (0: none).
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// Whether the stream was started by [`Readahead::on_fault_in_context`].
    pub fn by_context(&self) -> bool {
        self.by_context
    }

    /// The current readahead window in pages (0: no stream).
    pub fn window(&self) -> usize {
        self.window as usize
    }

    /// Up to `max` queued pages that are not `resident`, oldest first, into `out`.
    pub fn drain(
        &mut self,
        max: usize,
        resident: impl Fn(PageNumber) -> bool,
        out: &mut Vec<PageNumber>,
    ) {
        super::drain_not_resident(&mut self.pending, max, resident, out);
    }
}

/// `stride`: [`Readahead`] over LRU eviction.
#[derive(Debug, Default)]
pub struct StrideAdvisor {
    list: LruList,
    readahead: Readahead,
}

impl StrideAdvisor {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Advisor for StrideAdvisor {
    fn name(&self) -> &str {
        "stride"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if !resident {
            self.readahead.on_fault(access.page);
            return;
        }
        self.list.touch(access.page);
        self.readahead.on_observed(access.page);
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        self.list.touch(page);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.list.remove(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.list.least_recent(n, out);
    }
    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        let list = &self.list;
        self.readahead.drain(max, |p| list.contains(p), out);
    }
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}

/// Deltas Leap remembers (the paper's `H_size`).
const LEAP_HISTORY: usize = 32;
/// The trend search starts on the newest `LEAP_HISTORY / LEAP_SPLIT` deltas and
/// doubles the window until a majority appears or the history is used up.
const LEAP_SPLIT: usize = 8;
/// Most pages per prefetch (the paper's `PW_max`).
const LEAP_MAX_WINDOW: usize = 8;

/// `leap`: the majority-trend prefetcher of Leap. On each fault (and each observed
/// first use of a prefetched page, which in Leap is a swap-cache hit) the page delta
/// joins a history of 32; the trend is the Boyer-Moore majority of the newest 4, 8,
/// 16 or 32 deltas, the first window that has one. The prefetch window grows with
/// the prefetch hits since the last fault (rounded up to a power of two, at most 8),
/// shrinks by at most half per fault, and is 1 or 0 after a fault with no hits
/// (1 if the last delta followed the trend). Without a trend Leap reads the
/// neighbours of the faulting page.
#[derive(Debug, Default)]
pub struct LeapAdvisor {
    /// Its LRU eviction order.
    list: LruList,
    /// [`LeapAdvisor::trend_only`]: `list` is not kept.
    trend_only: bool,
    history: VecDeque<i64>,
    last_page: Option<PageNumber>,
    prefetched_unused: FxHashSet<PageNumber>,
    hits: usize,
    last_window: usize,
    pending: VecDeque<PageNumber>,
}

impl LeapAdvisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Leap's trend and prefetch window without its eviction order, for an advisor
    /// that evicts by its own lists and takes candidates with [`Self::drain_pending`].
    pub fn trend_only() -> Self {
        Self {
            trend_only: true,
            ..Self::default()
        }
    }

    /// Moves up to `max` pending candidates that are not resident (`resident`) to `out`.
    pub fn drain_pending(
        &mut self,
        max: usize,
        resident: impl Fn(PageNumber) -> bool,
        out: &mut Vec<PageNumber>,
    ) {
        super::drain_not_resident(&mut self.pending, max, resident, out);
    }

    /// Boyer-Moore majority of the newest deltas, widening the window as Leap does.
    pub fn find_trend(&self) -> Option<i64> {
        let len = self.history.len();
        let mut w = (LEAP_HISTORY / LEAP_SPLIT).max(1);
        loop {
            let w_eff = w.min(len);
            if w_eff == 0 {
                return None;
            }
            let recent = self.history.range(len - w_eff..);
            let (mut candidate, mut count) = (0i64, 0usize);
            for &d in recent.clone() {
                if count == 0 {
                    candidate = d;
                    count = 1;
                } else if d == candidate {
                    count += 1;
                } else {
                    count -= 1;
                }
            }
            let votes = recent.filter(|&&d| d == candidate).count();
            if count > 0 && votes * 2 > w_eff && candidate != 0 {
                return Some(candidate);
            }
            if w >= len || w >= LEAP_HISTORY {
                return None;
            }
            w *= 2;
        }
    }

    fn window_size(&mut self, trend: Option<i64>) -> usize {
        let mut pw = if self.hits == 0 {
            let follows = trend.is_some() && self.history.back().copied() == trend;
            usize::from(follows)
        } else {
            (self.hits + 1).next_power_of_two().min(LEAP_MAX_WINDOW)
        };
        if pw < self.last_window / 2 {
            pw = self.last_window / 2;
        }
        self.hits = 0;
        self.last_window = pw;
        pw
    }

    fn record(&mut self, page: PageNumber) {
        if let Some(last) = self.last_page {
            if self.history.len() == LEAP_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(page.wrapping_sub(last) as i64);
        }
        self.last_page = Some(page);
    }

    fn on_fault(&mut self, page: PageNumber) {
        self.record(page);
        let trend = self.find_trend();
        let pw = self.window_size(trend);
        self.pending.clear();
        match trend {
            Some(d) => self
                .pending
                .extend((1..=pw as i64).filter_map(|k| step(page, d, k))),
            None => {
                // No trend: the pages around the fault, nearest first.
                for k in 1..=pw as i64 {
                    let d = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
                    self.pending.extend(step(page, d, 1));
                }
            }
        }
    }
}

impl Advisor for LeapAdvisor {
    fn name(&self) -> &str {
        "leap"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if !resident {
            self.on_fault(access.page);
            return;
        }
        if !self.trend_only {
            self.list.touch(access.page);
        }
        if self.prefetched_unused.remove(&access.page) {
            self.hits += 1;
            self.record(access.page);
        }
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        if !self.trend_only {
            self.list.touch(page);
        }
        if prefetched {
            self.prefetched_unused.insert(page);
        }
    }
    fn on_evict(&mut self, page: PageNumber) {
        if !self.trend_only {
            self.list.remove(page);
        }
        self.prefetched_unused.remove(&page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.list.least_recent(n, out);
    }
    fn prefetch(&mut self, _now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        self.list.drain_absent(&mut self.pending, max, out);
    }
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
