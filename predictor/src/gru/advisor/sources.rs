//! The prefetch candidate sources of [`GruAdvisor`]: successor chains of the fault
//! stream, first-touch runs, readahead of fault streams and of the streams context
//! starts, the fault trend (off by default), the first-touch prior and (optionally)
//! the model's window plan.
//! Each source is followed on its record: prefetch outcomes, and the shadow outcomes
//! of candidates that were not prefetched (`super::super::outcomes`).

use tiering::access::PageNumber;

use super::super::outcomes::{Outcomes, ShadowKey, REGION_SHIFT};
use super::super::scorer::CandidateFacts;
use super::{pair_key, GruAdvisor, Source, MAX_LINKS};

/// Used candidates the record of context-started streams needs before their windows
/// are prefetched (the other sources need `GruOptions::min_uses`, 1): the first of
/// these windows are often used by chance, next to a resident cluster. 8 was chosen
/// among 1, 8 and 16 on the training traces (docs/predictor-experiments.md,
/// "Context readahead").
const CONTEXT_MIN_USES: u32 = 8;

impl GruAdvisor {
    /// Candidates right after a demand fault (and the window plan's), at most
    /// `max` and the per-window cap, into `out`.
    pub(super) fn prefetch_candidates(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        let start = out.len();
        let cap = self.prefetch_cap().min(max);
        // Right after a demand fault: the pages that faulted after it last time.
        let stream_covers = self.opts.links_off_streams
            && self.fault_in_stream
            && self
                .readahead_outcomes
                .trusted(self.opts.readahead_threshold, self.opts.min_uses);
        let fault_page = self.fault_page.take().filter(|_| !stream_covers);
        if let Some(mut page) = fault_page {
            self.last_chain.clear();
            let mut before = self.fault_before_last;
            for depth in 0..self.opts.successor_depth as u32 {
                let facts = *self.lists.data(page);
                let Some(next) = facts.successor() else {
                    break;
                };
                let record = facts.link();
                // A link is followed on its own record. With shadow outcomes a link
                // earns its first record without a prefetch; without them, a link
                // never tried is followed while untried links have been paying off in
                // this VM, and one in 8 anyway, so the estimate can recover.
                let link_ok = match record {
                    Some(r) => {
                        // A one-fault link is often stale or one of several paths
                        // through the page; where the fault before also led here, the
                        // path repeats.
                        let confirmed = !self.opts.link_context
                            || before.is_some_and(|b| {
                                self.pair_successor.get(&pair_key(b, page)) == Some(&next)
                            });
                        confirmed && r.trusted(self.opts.source_threshold, self.opts.min_uses)
                    }
                    None if self.opts.shadow_horizon > 0.0 => false,
                    None => {
                        self.untried_seen += 1;
                        self.untried_link_outcomes.score() >= self.opts.untried_threshold
                            || self.untried_seen.is_multiple_of(8)
                    }
                };
                if !link_ok || out.len() - start >= cap {
                    if !self.lists.contains(next) {
                        self.add_shadow(ShadowKey::Link(page), next);
                    }
                    break;
                }
                if self.opts.protect_chain && self.lists.contains(next) {
                    // Resident and expected soon: keep it from the eviction order's tail.
                    self.lists.on_access(next, true);
                }
                if !self.lists.contains(next)
                    && !out[start..].contains(&next)
                    && self.block_probability(next) >= self.opts.fault_block_threshold
                    && self.admit(next, 0, depth, record.unwrap_or_default())
                {
                    out.push(next);
                    if self.opts.chain_inference {
                        self.last_chain.push(next);
                    }
                    self.lists
                        .data_mut(next)
                        .set_origin(Some(Source::Successor {
                            from: page,
                            untried: record.is_none(),
                        }));
                }
                before = Some(page);
                page = next;
            }
            // The chain is expected to be used without faulting, so the next demand
            // fault follows its last page, not the fault that started it: links then
            // extend the chain instead of replacing its first link.
            self.last_fault = Some(page);
            self.fault_before_last = before;
        }
        // First-touch candidates, on their region's record or on one for the whole VM.
        let by_region = self.opts.first_touch_by_region;
        for i in 0..self.first_touch_candidates.len() {
            let page = self.first_touch_candidates[i];
            let region = page >> REGION_SHIFT;
            let (record, trusted) = if by_region {
                let r = self.first_touch_regions.get(&region).copied();
                let ok =
                    r.is_some_and(|r| r.trusted(self.opts.source_threshold, self.opts.min_uses));
                (r.unwrap_or_default(), ok)
            } else {
                let r = self.first_touch_outcomes;
                (r, r.score() >= self.opts.source_threshold)
            };
            if trusted
                && out.len() - start < cap
                && !self.lists.contains(page)
                && !out[start..].contains(&page)
                && self.admit(page, 2, 0, record)
            {
                out.push(page);
                self.lists
                    .data_mut(page)
                    .set_origin(Some(Source::FirstTouch));
                // Expected to be first-touched without a fault: the run goes on
                // from here, as successor chains do.
                self.push_first_touch(page);
            } else if by_region && !self.lists.contains(page) {
                self.add_shadow(ShadowKey::FirstTouch(region), page);
            }
        }
        self.first_touch_candidates.clear();
        self.readahead_candidates(false, cap, start, out);
        if self.opts.readahead_context && self.context_readahead.by_context() {
            self.readahead_candidates(true, cap, start, out);
        }
        if self.opts.trend_candidates {
            let mut trend = std::mem::take(&mut self.candidates);
            trend.clear();
            let lists = &self.lists;
            self.trend
                .drain_pending(cap, |p| lists.contains(p), &mut trend);
            if self.trend_outcomes.score() >= self.opts.source_threshold {
                for &page in &trend {
                    if out.len() - start >= cap {
                        break;
                    }
                    if !self.lists.contains(page)
                        && !out[start..].contains(&page)
                        && self.block_probability(page) >= self.opts.fault_block_threshold
                        && self.admit(page, 1, 0, self.trend_outcomes)
                    {
                        out.push(page);
                        self.set_origin_if_none(page, Source::Trend);
                    }
                }
            }
            self.candidates = trend;
        }
        // The prior's pages last: the sources above follow this VM's own record, the
        // prior what other programs did.
        for i in 0..self.prior_candidates.len() {
            let page = self.prior_candidates[i];
            if out.len() - start < cap
                && !self.lists.contains(page)
                && !out[start..].contains(&page)
            {
                out.push(page);
                self.set_origin_if_none(page, Source::Prior);
            }
        }
        self.prior_candidates.clear();
        while out.len() - start < max && self.prefetch_cursor < self.prefetch_queue.len() {
            let page = self.prefetch_queue[self.prefetch_cursor];
            self.prefetch_cursor += 1;
            if !self.lists.contains(page) && !out[start..].contains(&page) {
                out.push(page);
            }
        }
    }

    /// The window of the readahead's stream (`context`: of the second readahead's,
    /// which context started), while it is at least `readahead_min_window` pages, up to
    /// the cap with what `out` holds since `start`. Prefetched while its record is
    /// trusted, judged as shadows otherwise.
    fn readahead_candidates(
        &mut self,
        context: bool,
        cap: usize,
        start: usize,
        out: &mut Vec<PageNumber>,
    ) {
        let (readahead, record) = if context {
            (&mut self.context_readahead, self.context_outcomes)
        } else {
            (&mut self.readahead, self.readahead_outcomes)
        };
        if self.opts.readahead_min_window == 0
            || readahead.window() < self.opts.readahead_min_window
        {
            return;
        }
        let mut ahead = std::mem::take(&mut self.candidates);
        ahead.clear();
        let lists = &self.lists;
        let room = cap.saturating_sub(out.len() - start);
        readahead.drain(room, |p| lists.contains(p), &mut ahead);
        ahead.retain(|&p| readahead.is_ahead(p));
        // A page of a region the VM never touched would be a zero fill: the first-touch
        // sources' to judge (`GruOptions::readahead_touched_regions`).
        if self.opts.readahead_touched_regions && self.tracks_first_touches() {
            let seen = &self.seen;
            ahead.retain(|&p| seen.region_touched(p));
        }
        // Untrusted, the window's pages are judged as shadows: a stream the program
        // really walks earns the record by faulting on them.
        let min_uses = if context {
            CONTEXT_MIN_USES
        } else {
            self.opts.min_uses
        };
        let trusted = record.trusted(self.opts.readahead_threshold, min_uses);
        for &page in &ahead {
            if out[start..].contains(&page) {
                continue;
            }
            if trusted {
                out.push(page);
                self.set_origin_if_none(page, Source::Readahead { context });
            } else if context {
                self.add_shadow(ShadowKey::ContextReadahead, page);
            } else {
                self.add_shadow(ShadowKey::Readahead, page);
            }
        }
        self.candidates = ahead;
    }

    /// A demand fault on `page` right after a followed chain
    /// (`GruOptions::chain_inference`): if the fault stream goes on from the chain's end
    /// as it did before (the chain's last page links to `page`), the program walked the
    /// chain without faulting, so its prefetched pages whose use went unseen were used.
    /// A live VMM sees no reads of mapped pages; this is how it can know of them.
    pub(super) fn infer_chain_use(&mut self, page: PageNumber) {
        if self.last_chain.is_empty() {
            return;
        }
        // `last_fault` is still the chain's last page: this fault has not moved it yet.
        let walked = self
            .last_fault
            .is_some_and(|end| self.lists.data(end).successor() == Some(page));
        if walked {
            for i in 0..self.last_chain.len() {
                let p = self.last_chain[i];
                if self.lists.data(p).origin().is_some() && self.lists.contains(p) {
                    self.record_outcome(p, true);
                }
            }
        }
        self.last_chain.clear();
    }

    /// A demand fault on `page` continued the readahead stream: the program walked the
    /// stream up to it without faulting, so the stream's prefetched pages behind it
    /// still in RAM were used, whether or not a sample saw them (the kernel's
    /// readahead reads the same confirmation from a fault at the window's end).
    pub(super) fn infer_stream_use(&mut self, page: PageNumber, stride: i64) {
        // The pending queue holds at most two full windows.
        for k in 1..=64 {
            let Some(p) = page.checked_add_signed(-stride * k) else {
                break;
            };
            if matches!(self.lists.data(p).origin(), Some(Source::Readahead { .. }))
                && self.lists.contains(p)
            {
                self.record_outcome(p, true);
            }
        }
    }

    /// A late prefetch of `page` (a fault on a page still being read) named by one of
    /// the readaheads: the program reached it along that stream, so the stream's pages
    /// behind it were used ([`Self::infer_stream_use`]).
    pub(super) fn infer_late_stream_use(&mut self, page: PageNumber) {
        let stride = match self.lists.data(page).origin() {
            Some(Source::Readahead { context: false }) => self.readahead.stride(),
            Some(Source::Readahead { context: true }) => self.context_readahead.stride(),
            _ => return,
        };
        if stride != 0 {
            self.infer_stream_use(page, stride);
        }
    }

    /// A prefetched page was used, or evicted unused: its source's record.
    pub(super) fn record_outcome(&mut self, page: PageNumber, used: bool) {
        self.scorer.outcome(page, used);
        match self.lists.data_mut(page).take_origin() {
            Some(Source::Successor { from, untried }) => {
                self.lists.data_mut(from).link_mut().record(used);
                if untried {
                    self.untried_link_outcomes.record(used);
                }
            }
            Some(Source::Trend) => self.trend_outcomes.record(used),
            Some(Source::Readahead { context: false }) => self.readahead_outcomes.record(used),
            Some(Source::Readahead { context: true }) => self.context_outcomes.record(used),
            Some(Source::Prior) if used => self.stats.prior_used += 1,
            Some(Source::Prior) => self.stats.prior_wasted += 1,
            Some(Source::FirstTouch) => {
                self.first_touch_outcomes.record(used);
                self.first_touch_regions
                    .entry(page >> REGION_SHIFT)
                    .or_default()
                    .record(used);
            }
            None => {}
        }
    }

    /// Non-resident pages of high-probability blocks, most likely first.
    pub(super) fn plan_prefetch(&mut self) {
        self.prefetch_queue.clear();
        self.prefetch_cursor = 0;
        let mut cands: Vec<(f32, u64)> = self
            .batch
            .blocks
            .iter()
            .filter_map(|&b| self.block_prob(b).map(|p| (p, b)))
            .filter(|(p, _)| *p >= self.opts.prefetch_threshold)
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let bp = self.block_pages();
        let full = if bp == 64 { u64::MAX } else { (1u64 << bp) - 1 };
        for (_, b) in cands {
            let track = self.fx.block(b);
            let mut mask = track.map_or(0, |t| t.ever_mask);
            if mask == 0 {
                // Never touched: assume the layout of the neighbour that leads into it.
                let nb = |n: u64| self.fx.block(n).map_or(0, |t| t.ever_mask);
                mask = nb(b.wrapping_sub(1)) | nb(b.wrapping_add(1));
                if mask != full {
                    continue; // only dense neighbours predict a dense new block
                }
            }
            let missing = mask & !*self.resident.get(b);
            for bit in 0..bp {
                if missing >> bit & 1 == 1 {
                    self.prefetch_queue.push(b * bp + bit);
                }
            }
            let cap = self.prefetch_cap();
            if self.prefetch_queue.len() >= cap {
                self.prefetch_queue.truncate(cap);
                break;
            }
        }
    }

    /// Pages to prefetch per window: bounded by a fraction of the resident set, since
    /// every prefetch into a full RAM evicts something (measured: with a fixed 512 a
    /// 150-page budget thrashed, accuracy 0.02-0.19 on the evaluation traces).
    pub(super) fn prefetch_cap(&self) -> usize {
        let by_ram = (self.resident_pages / self.opts.prefetch_ram_divisor.max(1)).max(2);
        self.opts.max_prefetch_per_window.min(by_ram)
    }

    /// A first touch of `page`: if it continues a recent first touch at `page -+ 1`,
    /// the next never-touched pages in that direction become candidates.
    pub(super) fn note_first_touch(&mut self, page: PageNumber) {
        self.prior_candidates.clear();
        if let Some(prior) = &self.prior {
            if self.opts.first_touch_prior {
                let seen = &self.seen;
                self.prior_cursor.on_first_touch(
                    prior,
                    page,
                    self.opts.prior_depth,
                    |p| seen.contains(p),
                    &mut self.prior_candidates,
                );
            }
        }
        self.first_touch_candidates.clear();
        let run = self.opts.first_touch_run;
        if run > 0 {
            let up = self.recent_first_touches.contains(&page.wrapping_sub(1));
            let down = self.recent_first_touches.contains(&page.wrapping_add(1));
            for k in 1..=run {
                let next = match (up, down) {
                    (true, _) => page.wrapping_add(k),
                    (false, true) => page.wrapping_sub(k),
                    _ => break,
                };
                if self.seen.contains(next) {
                    break;
                }
                self.first_touch_candidates.push(next);
            }
        }
        self.push_first_touch(page);
    }

    pub(super) fn push_first_touch(&mut self, page: PageNumber) {
        const RECENT: usize = 8;
        if self.recent_first_touches.len() == RECENT {
            self.recent_first_touches.pop_front();
        }
        self.recent_first_touches.push_back(page);
    }

    /// Asks the candidate scorer about `page`, proposed by `source` (0 successor,
    /// 1 trend, 2 first touch) at chain `depth` with the source's record `outcomes`.
    pub(super) fn admit(
        &mut self,
        page: PageNumber,
        source: u8,
        depth: u32,
        outcomes: Outcomes,
    ) -> bool {
        if self.opts.scorer_threshold <= 0.0 {
            return true; // scorer off: no facts to gather
        }
        let block = self.fx.cfg.block_of(page);
        let bp = self.block_pages() as f32;
        let facts = CandidateFacts {
            source,
            depth,
            used: outcomes.used,
            wasted: outcomes.wasted,
            block_probability: self.block_probability(page),
            refault_ratio: self
                .lists
                .refault_distance(page)
                .map(|d| d as f32 / self.lists.resident().max(1) as f32),
            block_resident: self.resident.get(block).count_ones() as f32 / bp,
        };
        let h = self.model.hidden();
        let hidden = self.hidden_row(block).and_then(|i| self.hidden.state(i, h));
        self.scorer
            .admit(page, hidden, &facts, self.opts.scorer_threshold)
    }

    /// The successor table and the link records start over once they hold more
    /// entries than [`MAX_LINKS`]: chains are relearned from the next faults.
    pub(super) fn bound_successor_tables(&mut self) {
        if self.links > MAX_LINKS || self.pair_successor.len() > MAX_LINKS {
            self.lists.for_each_data_mut(super::PageFacts::forget_link);
            self.links = 0;
            self.pair_successor.clear();
        }
    }

    /// Adds `page` to the set of pages ever touched; true if it was not there. The
    /// page's record says so first, so a page already in the set costs no look in it.
    pub(super) fn note_seen(&mut self, page: PageNumber) -> bool {
        self.lists.data_mut(page).mark_seen() && self.seen.insert(page)
    }

    /// Records `source` as `page`'s unless it has one.
    fn set_origin_if_none(&mut self, page: PageNumber, source: Source) {
        let facts = self.lists.data_mut(page);
        if facts.origin().is_none() {
            facts.set_origin(Some(source));
        }
    }

    /// Judges `page`, named by `key` but not prefetched, by whether it faults soon.
    pub(super) fn add_shadow(&mut self, key: ShadowKey, page: PageNumber) {
        if self.opts.shadow_horizon > 0.0 {
            let horizon = self.opts.shadow_horizon * self.lists.resident() as f32;
            self.shadows.add(key, page, horizon.max(4.0) as u64);
            self.lists.data_mut(page).mark_shadowed();
        }
    }
}
