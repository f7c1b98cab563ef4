//! Eviction (zap, dirty-log harvest, write-back, batched punch), the completions of
//! every tier I/O, and the bookkeeping of pages that come back to RAM.

use std::os::unix::fs::FileExt;

use super::*;

impl Engine {
    /// Changes a page's state, keeping the count of pages being evicted.
    pub(super) fn set_state(&mut self, index: usize, state: State) {
        let old = std::mem::replace(&mut self.meta[index].state, state);
        // A sampled page leaving RAM before it was touched again: eviction judged it,
        // not its use, so it does not count as an idle sample (the pool's share in use).
        if state != State::Present && std::mem::take(&mut self.meta[index].sampled) {
            self.counters.samples_evicted += 1;
        }
        if old == State::Evicting {
            self.evicting -= 1;
        }
        if state == State::Evicting {
            self.evicting += 1;
        }
    }

    /// Pages in the memfd or on their way into it: what the policy counts resident
    /// (including prefetches in flight), plus evictions it decided that have not
    /// freed their page yet (queued, or zapped and writing back / waiting to punch).
    pub(super) fn pages_in_ram(&self) -> usize {
        self.policy.resident_pages() + self.evict_queue.len() + self.evicting
    }

    /// Whether RAM is at the budget plus [`ADMISSION_SLACK`].
    pub(super) fn ram_full(&self) -> bool {
        self.pages_in_ram() > self.policy.config().ram_budget_pages + ADMISSION_SLACK
    }

    /// Admission bound for a demand fill: while RAM is over the budget plus
    /// [`ADMISSION_SLACK`], carry out queued evictions and punches and wait for
    /// write-backs to complete. Without this, slow write-backs (a loaded host, a slow
    /// tier) let faults run ahead of them and RAM grows without bound: the policy
    /// counts a page gone as soon as it decides to evict it.
    pub(super) fn wait_for_room(&mut self) {
        let mut got = Vec::new();
        while self.ram_full() && !self.fatal {
            if !self.evict_queue.is_empty() {
                self.flush_evictions();
                continue;
            }
            if !self.punch_queue.is_empty() {
                self.flush_punches();
                continue;
            }
            if self.poll_completions() {
                continue;
            }
            let Some(tier) = (0..self.stores.len()).find(|&t| {
                self.stores[t]
                    .as_ref()
                    .is_some_and(|s| s.backend.outstanding() > 0)
            }) else {
                // Nothing in flight will free a page (evictions refused): go over.
                return;
            };
            self.counters.admission_waits += 1;
            got.clear();
            if let Some(store) = self.stores[tier].as_mut() {
                store.backend.wait(&mut got, Duration::from_millis(1));
            }
            for c in got.drain(..) {
                self.complete(tier, c);
            }
        }
    }

    /// Harvest the dirty log into the page states (and the trace, as DirtyLog events).
    pub(super) fn harvest_dirty(&mut self) {
        if !self.hooks.has_dirty_log() {
            return;
        }
        let mut pages = std::mem::take(&mut self.dirty_scratch);
        pages.clear();
        if let Err(e) = self.hooks.harvest_dirty(&mut pages) {
            log::warn!("dirty log harvest failed, treating every page as dirty: {e}");
            for m in &mut self.meta {
                m.dirty = true;
                m.zero = false;
            }
        }
        self.counters.dirty_harvests += 1;
        let now = self.now_ns();
        for &page in &pages {
            if let Some(index) = self.layout.index_of_page(page) {
                self.meta[index].dirty = true;
                self.meta[index].zero = false;
                let a = Access {
                    time_ns: now,
                    page,
                    vcpu: 0,
                    op: AccessOp::Write,
                    kind: self.kind_of(index),
                    source: AccessSource::DirtyLog,
                };
                self.trace(&a);
                self.policy.note_dirty(page);
            }
        }
        self.dirty_scratch = pages;
    }

    /// Carry out the queued evictions: zap, harvest the dirty log, write back what is
    /// dirty (asynchronously, the batch's writes merged where their slots are
    /// adjacent), drop the rest from the memfd now.
    pub(super) fn flush_evictions(&mut self) {
        self.plug_stores();
        self.evict_queued();
        self.unplug_stores();
    }

    fn evict_queued(&mut self) {
        let queue = std::mem::take(&mut self.evict_queue);
        let mut victims = Vec::with_capacity(queue.len());
        for (page, to) in queue {
            let Some(index) = self.layout.index_of_page(page) else {
                continue;
            };
            if self.policy.is_resident(page) {
                // A fill or prefetch took it back after the policy chose it: the
                // policy counts it in RAM, so it stays.
                continue;
            }
            if self.meta[index].migrating {
                // The migrator may still install it: evict once it reports.
                self.meta[index].reevict_to = to;
                continue;
            }
            if self.meta[index].state == State::Prefetching {
                self.finish_prefetch_now(index);
            }
            if self.meta[index].state == State::EvictCancelled {
                // Its cancelled eviction still writes: evict it again after that.
                self.meta[index].reevict_to = to;
                continue;
            }
            // Pages never filled, or already on their way out, need nothing.
            if self.meta[index].state == State::Present {
                let host = self.layout.host_of_index(index);
                if let Err(e) = uffd::zap(host, PAGE) {
                    self.die(e.to_string());
                    return;
                }
                self.set_state(index, State::Evicting);
                victims.push((index, to as usize));
            }
        }
        // Writes before the zap are in the log now; none can follow until a fault.
        self.harvest_dirty();
        let dirty_log = self.hooks.has_dirty_log();
        for (index, to) in victims {
            let m = self.meta[index];
            if dirty_log && !m.dirty && m.zero {
                // Still all zeros: nothing to keep.
                self.release_copy(index);
                self.drop_from_ram(index);
                continue;
            }
            let clean_copy_here = dirty_log && !m.dirty && m.copy_tier as usize == to;
            self.meta[index].dirty = false;
            if clean_copy_here {
                self.counters.write_backs_skipped_clean += 1;
                self.drop_from_ram(index);
                continue;
            }
            if m.copy_tier as usize == to && m.copy_hash != 0 {
                // Written, says the dirty log (if there is one), but maybe not changed:
                // on shadow paging (PVM) KVM logs a page as dirty when it maps a read
                // writable, which it does wherever the guest's page table entry has
                // its dirty bit set, as a 2 MiB page's has after any write to it.
                let Some(buf) = self.read_resident(index) else {
                    return;
                };
                if content_hash(&buf) == m.copy_hash {
                    self.counters.write_backs_skipped_unchanged += 1;
                    self.drop_from_ram(index);
                    continue;
                }
                self.meta[index].copy_tier = NO_TIER;
                self.meta[index].copy_hash = 0;
                self.submit_evict_write(index, to, m.copy_slot, Some(buf));
                continue;
            }
            // The old copy is stale (or elsewhere): reuse its slot if it is in `to`.
            let slot = if m.copy_tier as usize == to {
                self.meta[index].copy_tier = NO_TIER;
                self.meta[index].copy_hash = 0;
                Some(m.copy_slot)
            } else {
                self.release_copy(index);
                // `to`, else the next slower tier with room, else a faster one: the
                // policy counts capacity but does not know which tiers exist.
                let order = self.policy.config().storage_order;
                let rank = order.rank(to as crate::policy::TierId);
                let found = (rank..4)
                    .chain((0..rank).rev())
                    .map(|r| order.tier(r) as usize)
                    .find_map(|t| self.alloc_slot(t).map(|s| (t, s)));
                match found {
                    Some((t, s)) if t == to => Some(s),
                    Some((t, s)) => {
                        // `to` is full: the page goes one tier further down.
                        self.submit_evict_write(index, t, s, None);
                        continue;
                    }
                    None => None,
                }
            };
            match slot {
                Some(s) => self.submit_evict_write(index, to, s, None),
                None => {
                    log::debug!("no free slot in any storage tier; page stays in RAM");
                    self.counters.evictions_refused += 1;
                    self.set_state(index, State::Present);
                    self.policy
                        .evict_refused_storage_full(self.layout.page_of_index(index));
                }
            }
        }
    }

    pub(super) fn submit_evict_write(
        &mut self,
        index: usize,
        tier: usize,
        slot: u64,
        buf: Option<PageBuf>,
    ) {
        let buf = match buf {
            Some(b) => b,
            None => match self.read_resident(index) {
                Some(b) => b,
                None => return,
            },
        };
        let write = Op::EvictWrite {
            index,
            tier: tier as u8,
            slot,
            attempt: 1,
        };
        if let Err(e) = self.submit_io(tier, IoOp::Write, slot, buf, IoPriority::Writeback, write) {
            log::warn!("write-back refused by tier {tier}: {}", e.error);
            let store = self.stores[tier].as_mut().expect("tier is open");
            store.slots.release(slot);
            self.set_state(index, State::Present);
            self.policy.evict_failed(self.layout.page_of_index(index));
        }
    }

    /// The page's content from the memfd (not through the guest mapping, which may be
    /// zapped); `None` after a fatal error.
    fn read_resident(&mut self, index: usize) -> Option<PageBuf> {
        let mut b = self.pool.get();
        let off = self.layout.file_offset_of_index(index);
        if let Err(e) = self.memfd.read_exact_at(&mut b, off) {
            self.die(format!("cannot read guest memory at offset {off:#x}: {e}"));
            return None;
        }
        // The content is at hand: hash it for sharing across VMs.
        if let Some(share) = self.share.as_mut() {
            share.record(index, &b);
        }
        Some(b)
    }

    /// A cancelled or failed eviction ends: the page is resident again (with a clean
    /// copy in `copy_tier`, if given); if the policy evicted it meanwhile, queue that.
    pub(super) fn back_in_ram(&mut self, index: usize, copy_tier: Option<usize>) {
        self.set_state(index, State::Present);
        if let Some(t) = copy_tier {
            self.copy_holders[t].push(index);
        }
        let to = std::mem::replace(&mut self.meta[index].reevict_to, NO_TIER);
        if to != NO_TIER {
            self.evict_queue
                .push((self.layout.page_of_index(index), to));
        }
    }

    /// The page's data is safely in its tier: free it from the memfd with the next
    /// batch. Punching in batches matters on PVM: every punch invalidates KVM's
    /// shadow mappings, and the guest pays for rebuilding them once per batch
    /// instead of once per page.
    pub(super) fn drop_from_ram(&mut self, index: usize) {
        self.punch_queue.push(index);
    }

    pub(super) fn flush_punches(&mut self) {
        let queue = std::mem::take(&mut self.punch_queue);
        for &index in &queue {
            let tier = self.meta[index].copy_tier;
            match self.meta[index].state {
                State::Evicting => {
                    let off = self.layout.file_offset_of_index(index);
                    if let Err(e) = uffd::punch(&self.memfd, off, PAGE as u64) {
                        return self.die(e.to_string());
                    }
                    if self.meta[index].zero {
                        self.set_state(index, State::Untouched);
                        self.counters.zero_drops += 1;
                    } else {
                        self.set_state(index, State::Absent);
                        self.counters.tiers[tier as usize].evictions += 1;
                    }
                }
                // Touched while waiting: stays in RAM with a clean copy.
                State::EvictCancelled => {
                    let copy = (tier != NO_TIER).then_some(tier as usize);
                    self.back_in_ram(index, copy);
                }
                _ => {}
            }
        }
        self.punch_queue = queue;
        self.punch_queue.clear();
    }

    pub(super) fn poll_completions(&mut self) -> bool {
        let mut any = false;
        let deferred = std::mem::take(&mut self.deferred);
        for (t, c) in deferred {
            any = true;
            self.complete(t, c);
        }
        let mut got = Vec::new();
        for tier in 0..self.stores.len() {
            got.clear();
            if let Some(store) = self.stores[tier].as_mut() {
                if store.backend.outstanding() == 0 {
                    continue;
                }
                store.backend.poll(&mut got);
            }
            for c in got.drain(..) {
                any = true;
                self.complete(tier, c);
            }
        }
        any
    }

    pub(super) fn complete(&mut self, tier: usize, c: IoCompletion) {
        let Some(op) = self.inflight.remove(&c.tag) else {
            log::debug!("completion for unknown tag {}", c.tag);
            return;
        };
        match op {
            Op::EvictWrite {
                index,
                tier: t,
                slot,
                attempt,
            } => {
                let t = t as usize;
                if let Err(e) = c.result {
                    self.counters.tiers[t].io_errors += 1;
                    if attempt < IO_ATTEMPTS {
                        let retry = Op::EvictWrite {
                            index,
                            tier: t as u8,
                            slot,
                            attempt: attempt + 1,
                        };
                        let priority = IoPriority::Writeback;
                        if self
                            .submit_io(t, IoOp::Write, slot, c.buf, priority, retry)
                            .is_ok()
                        {
                            return;
                        }
                    }
                    log::warn!(
                        "write-back to tier {t} failed {attempt} times ({e}); page stays in RAM"
                    );
                    if let Some(store) = self.stores[t].as_mut() {
                        store.slots.release(slot);
                    }
                    if self.meta[index].state == State::Evicting {
                        self.policy.evict_failed(self.layout.page_of_index(index));
                    }
                    self.meta[index].dirty = true;
                    self.back_in_ram(index, None);
                    return;
                }
                self.counters.tiers[t].bytes_written += PAGE as u64;
                self.meta[index].copy_tier = t as u8;
                self.meta[index].copy_slot = slot;
                self.meta[index].copy_hash = content_hash(&c.buf);
                match self.meta[index].state {
                    State::Evicting => self.drop_from_ram(index),
                    // Cancelled: back in RAM with a clean copy.
                    _ => self.back_in_ram(index, Some(t)),
                }
            }
            Op::PrefetchRead { index } => {
                if self.meta[index].state != State::Prefetching {
                    return;
                }
                let page = self.layout.page_of_index(index);
                match c.result {
                    Ok(()) => {
                        let host = self.layout.host_of_index(index);
                        if let Err(e) = self.uffd.copy_page(&c.buf, host) {
                            return self.die(e.to_string());
                        }
                        self.set_state(index, State::Present);
                        self.meta[index].dirty = false;
                        self.meta[index].zero = false;
                        self.meta[index].copy_hash = content_hash(&c.buf);
                        self.counters.tiers[tier].bytes_read += PAGE as u64;
                        self.copy_holders[tier].push(index);
                    }
                    Err(e) => {
                        log::warn!("prefetch of page {page:#x} from tier {tier} failed: {e}");
                        self.counters.tiers[tier].io_errors += 1;
                        self.set_state(index, State::Absent);
                        self.policy.fill_failed(page);
                    }
                }
            }
            Op::MoveRead { index, to } => {
                if self.meta[index].state != State::Moving || c.result.is_err() {
                    if self.meta[index].state == State::Moving {
                        self.set_state(index, State::Absent);
                    }
                    return;
                }
                self.counters.tiers[tier].bytes_read += PAGE as u64;
                let Some(slot) = self.alloc_slot(to as usize) else {
                    self.set_state(index, State::Absent);
                    return;
                };
                let write = Op::MoveWrite { index, to, slot };
                let priority = IoPriority::Writeback;
                let to = to as usize;
                if self
                    .submit_io(to, IoOp::Write, slot, c.buf, priority, write)
                    .is_err()
                {
                    let store = self.stores[to].as_mut().expect("tier is open");
                    store.slots.release(slot);
                    self.set_state(index, State::Absent);
                }
            }
            Op::MoveWrite { index, to, slot } => {
                let ok = c.result.is_ok();
                if ok {
                    self.counters.tiers[to as usize].bytes_written += PAGE as u64;
                }
                if ok && self.meta[index].state == State::Moving {
                    self.finish_move(index, to, slot);
                } else {
                    if let Some(store) = self.stores[to as usize].as_mut() {
                        store.slots.release(slot);
                    }
                    if self.meta[index].state == State::Moving {
                        self.set_state(index, State::Absent);
                    }
                }
            }
        }
    }
}
