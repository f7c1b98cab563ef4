//! Bringing pages into RAM: demand fills (zero fill or a Demand-class read and
//! UFFDIO_COPY), prefetches and moves started here or handed to the migrator.

use super::*;

impl Engine {
    /// Brings never-touched page `index` into RAM as zeros; false if that failed (the
    /// engine is stopping). If the fill found the page present already (written
    /// before any fault, e.g. by the kernel loader), its content is not zeros: it stays
    /// dirty, so eviction writes it back instead of dropping it as still-zero (which
    /// lost guest code and crashed the guest when a prefetching advisor named such a
    /// page).
    fn zero_fill(&mut self, index: usize) -> bool {
        let host = self.layout.host_of_index(index);
        let zeroed = match self.uffd.zero_pages(host, PAGE) {
            Ok(filled) => filled == ZeroFill::Zeroed,
            Err(e) => {
                self.die(e.to_string());
                return false;
            }
        };
        let dirty_log = self.hooks.has_dirty_log();
        let m = &mut self.meta[index];
        m.state = State::Present;
        m.dirty = !(dirty_log && zeroed);
        m.zero = dirty_log && zeroed;
        true
    }

    /// Serve a demand fault: zero-fill a first touch or read the page from its tier.
    /// Returns whether it did either (false: the page was in RAM already, and the
    /// faulting thread is only woken; or the engine is stopping).
    pub(super) fn fill_demand(&mut self, index: usize, t0: Instant) -> bool {
        if self.meta[index].state == State::Prefetching && !self.meta[index].migrating {
            self.finish_prefetch_now(index);
        }
        let host = self.layout.host_of_index(index);
        let m = self.meta[index];
        match m.state {
            State::Untouched => {
                if !self.zero_fill(index) {
                    return false;
                }
                self.counters.zero_fills += 1;
                self.counters
                    .record_fault(1, t0.elapsed().as_nanos() as u64);
                true
            }
            // Prefetching here: with the migrator, whose read this one races.
            State::Absent | State::Moving | State::Prefetching => {
                let tier = m.copy_tier as usize;
                let mut attempt = 0;
                let buf = loop {
                    attempt += 1;
                    let tag = self.tag();
                    let mut others = Vec::new();
                    let spin = self.demand_spin();
                    let store = self.stores[tier].as_mut().expect("copy tier is open");
                    let read = IoRequest {
                        op: IoOp::Read,
                        slot: m.copy_slot,
                        buf: self.pool.get(),
                        priority: IoPriority::Demand,
                        tag,
                    };
                    let done = run_blocking(store, read, spin, &mut others);
                    self.deferred.extend(others.into_iter().map(|c| (tier, c)));
                    match done.result {
                        Ok(()) => break done.buf,
                        Err(e) => {
                            self.counters.tiers[tier].io_errors += 1;
                            if attempt >= IO_ATTEMPTS {
                                let page = self.layout.page_of_index(index);
                                self.die(format!(
                                    "guest page {page:#x} cannot be read back from tier {tier} ({}) after {IO_ATTEMPTS} tries: {e}",
                                    self.stores[tier].as_ref().map(|s| s.backend.describe()).unwrap_or_default()
                                ));
                                return false;
                            }
                        }
                    }
                };
                if let Err(e) = self.uffd.copy_page(&buf, host) {
                    self.die(e.to_string());
                    return false;
                }
                self.set_state(index, State::Present);
                self.meta[index].copy_hash = content_hash(&buf);
                // Racing the migrator, its UFFDIO_COPY may have come first and the
                // guest may have written the page since (the fault event was queued
                // before that install): the dirty flag was cleared when the job was
                // sent, and a harvest since is a real write. Clearing it here lost
                // such a write (the page was later dropped as clean).
                if !m.migrating {
                    self.meta[index].dirty = false;
                }
                self.meta[index].zero = false;
                // The policy counts it resident again: no deferred eviction.
                self.meta[index].reevict_to = NO_TIER;
                self.copy_holders[tier].push(index);
                let c = &mut self.counters;
                c.tiers[tier].bytes_read += PAGE as u64;
                c.record_fault(tier, t0.elapsed().as_nanos() as u64);
                true
            }
            _ => {
                let _ = self.uffd.wake(host, PAGE);
                false
            }
        }
    }

    pub(super) fn start_prefetch(&mut self, page: PageNumber) {
        let Some(index) = self.layout.index_of_page(page) else {
            return;
        };
        let m = self.meta[index];
        match m.state {
            State::Untouched => {
                self.zero_fill(index);
            }
            State::Absent => {
                if self.ram_full() {
                    // No room while write-backs lag: drop the prefetch, not the budget.
                    self.counters.prefetches_dropped += 1;
                    self.policy.fill_failed(page);
                    return;
                }
                let tier = m.copy_tier as usize;
                if self.send_prefetch_to_migrator(index, tier as u8) {
                    return;
                }
                let (buf, priority) = (self.pool.get(), IoPriority::Prefetch);
                let read = Op::PrefetchRead { index };
                match self.submit_io(tier, IoOp::Read, m.copy_slot, buf, priority, read) {
                    Ok(()) => {
                        self.set_state(index, State::Prefetching);
                        self.counters.tiers[tier].prefetch_issued += 1;
                    }
                    Err(e) => {
                        log::warn!("prefetch of page {page:#x} refused: {}", e.error);
                        self.policy.fill_failed(page);
                    }
                }
            }
            // Zapped, its write-back in flight, but still in the memfd: keep it, as a
            // touch during the eviction does, and map it again as a prefetch would
            // (writes from now on reach the dirty log, or change its content hash).
            // Left alone it was punched while the policy counted it resident, and the
            // guest's next touch was a read the advisor heard of as a hit
            // (docs/tiering.md, "Prefetches of pages on their way out").
            State::Evicting => {
                self.set_state(index, State::EvictCancelled);
                self.counters.evictions_cancelled += 1;
                let host = self.layout.host_of_index(index);
                if let Err(e) = self.uffd.continue_page(host) {
                    self.die(e.to_string());
                }
            }
            // Its copy is moving between storage tiers: a read now would race the move.
            State::Moving => {
                self.counters.prefetches_dropped += 1;
                self.policy.fill_failed(page);
            }
            // In RAM already (a queued eviction of it is void: `evict_queued`), or on
            // its way in.
            State::Present | State::EvictCancelled | State::Prefetching => {}
        }
    }

    /// A demand fault hit a page whose prefetch is in flight: wait for that read.
    pub(super) fn finish_prefetch_now(&mut self, index: usize) {
        let tier = self.meta[index].copy_tier as usize;
        while self.meta[index].state == State::Prefetching && !self.fatal {
            let mut got = Vec::new();
            if let Some(store) = self.stores[tier].as_mut() {
                store.backend.wait(&mut got, Duration::from_millis(10));
            }
            for c in got {
                self.complete(tier, c);
            }
            let deferred = std::mem::take(&mut self.deferred);
            for (t, c) in deferred {
                self.complete(t, c);
            }
        }
    }

    pub(super) fn start_move(&mut self, page: PageNumber, from: u8, to: u8) {
        let Some(index) = self.layout.index_of_page(page) else {
            return;
        };
        let m = self.meta[index];
        if m.state != State::Absent || m.copy_tier != from || self.stores[to as usize].is_none() {
            return;
        }
        if self.send_move_to_migrator(index, from, to) {
            return;
        }
        let buf = self.pool.get();
        let read = Op::MoveRead { index, to };
        let priority = IoPriority::Writeback;
        if self
            .submit_io(from as usize, IoOp::Read, m.copy_slot, buf, priority, read)
            .is_ok()
        {
            self.set_state(index, State::Moving);
        }
    }
}
