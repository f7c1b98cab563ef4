//! Serving a userfaultfd fault: a MINOR fault is an observed access (a sampled or
//! probed page touched again, or a page touched while its eviction runs); a MISSING
//! fault asks the policy, waits for room and fills the page.

use super::*;

impl Engine {
    pub(super) fn on_fault(&mut self, kind: FaultKind, rw: ReadWrite, addr: usize, tid: i32) {
        let t0 = Instant::now();
        let Some(index) = self.layout.index_of_host(addr) else {
            log::warn!("fault at {addr:#x} outside guest RAM");
            return;
        };
        let vcpu = self
            .vcpu_of_thread
            .lock()
            .map(|m| m.get(&tid).copied().unwrap_or(0))
            .unwrap_or(0);
        let access = Access {
            time_ns: self.now_ns(),
            page: self.layout.page_of_index(index),
            vcpu,
            op: if rw == ReadWrite::Write {
                AccessOp::Write
            } else {
                AccessOp::Read
            },
            kind: self.kind_of(index),
            source: if kind == FaultKind::Minor {
                AccessSource::SampledMinor
            } else {
                AccessSource::MissingFault
            },
        };
        if kind == FaultKind::Minor {
            self.on_minor(index, &access);
        } else {
            self.on_missing(index, &access, t0);
        }
    }

    fn on_minor(&mut self, index: usize, access: &Access) {
        self.counters.minor_faults += 1;
        let host = self.layout.host_of_index(index);
        match self.meta[index].state {
            // The policy takes the page back: an eviction deferred while it was
            // migrating is void.
            State::Present => {
                self.meta[index].reevict_to = NO_TIER;
                if std::mem::take(&mut self.meta[index].sampled) {
                    self.counters.sample_hits += 1;
                }
            }
            // The policy sees this access and takes the page back: no re-eviction.
            State::EvictCancelled => self.meta[index].reevict_to = NO_TIER,
            State::Evicting => {
                // Touched while its write-back runs: keep it in RAM.
                self.set_state(index, State::EvictCancelled);
                self.counters.evictions_cancelled += 1;
                self.policy.evict_failed(access.page);
            }
            _ => {
                // Gone from the memfd since: the access comes back as MISSING.
                let _ = self.uffd.wake(host, PAGE);
                return;
            }
        }
        self.trace(access);
        self.observe(access, index);
        if let Err(e) = self.uffd.continue_page(host) {
            self.die(e.to_string());
        }
    }

    /// Tell the policy about an access to a page that is in RAM; carry out what it decides.
    fn observe(&mut self, access: &Access, index: usize) {
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        self.policy.on_access(access, &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Fill { page, .. } if self.layout.index_of_page(page) == Some(index) => {}
                other => self.queue_action(other),
            }
        }
        self.actions = actions;
    }

    fn on_missing(&mut self, index: usize, access: &Access, t0: Instant) {
        let host = self.layout.host_of_index(index);
        let late = self.meta[index].state == State::Prefetching;
        match self.meta[index].state {
            State::Present | State::Evicting | State::EvictCancelled => {
                // Already filled (a stale event, or filled by a prefetch just now).
                let _ = self.uffd.wake(host, PAGE);
                return;
            }
            State::Prefetching if !self.meta[index].migrating => self.finish_prefetch_now(index),
            _ => {}
        }
        if late {
            self.counters.prefetches_late += 1;
        }
        self.trace(access);
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        let outcome = self.policy.on_access(access, &mut actions);
        let mut fill = false;
        for a in actions.drain(..) {
            match a {
                Action::Fill { page, .. } if page == access.page => fill = true,
                other => self.queue_action(other),
            }
        }
        self.actions = actions;
        if self.meta[index].state == State::Prefetching && self.meta[index].migrating {
            // The migrator's read is under way: its UFFDIO_COPY wakes the vCPU, as the
            // kernel's fault on a page under readahead waits on the page. A second read
            // would cost a whole device latency and hold this thread meanwhile. If the
            // prefetch fails, `apply_outcome` wakes the vCPU to fault again.
            return;
        }
        // The evictions this fill needs are queued now: bound RAM before adding a page.
        self.wait_for_room();
        if self.fatal {
            return;
        }
        let filled = self.fill_demand(index, t0);
        if filled && !fill && !matches!(outcome, AccessOutcome::DemandFault { .. }) {
            self.counters.resident_misses += 1;
            log::debug!(
                "page {:#x} missing though the policy has it resident",
                access.page
            );
        }
    }
}
