//! Making room and placing what leaves RAM: victims from the advisor (never the hot
//! set nor the page being filled), the storage tier each goes to by its probability,
//! and re-tiering of pages already out as their scores change.

use super::*;

impl PagingPolicy {
    /// Evicts until RAM is within budget, never evicting `protect` (the page a demand
    /// fault is bringing in) nor a page of the hot set.
    pub(super) fn make_room(&mut self, protect: Option<PageNumber>, out: &mut Vec<Action>) {
        let budget = self.config.ram_budget_pages;
        let mut victims = std::mem::take(&mut self.scratch);
        let mut retried = false;
        // Advisors keep hot pages on their lists, and a hot page, mapped and never
        // probed (a random sample sees it now and then), sinks to their tails. So the
        // advisor is asked for as many more victims as the last round met hot pages
        // (the order changes little between faults), and for twice as many while a
        // round names nothing but hot pages. Asked for only what it needed, it named
        // hot pages alone, and every victim was the fallback's arbitrary pick.
        let mut past_hot = self.hot_at_tail;
        while self.resident.len() > budget && !self.storage_full() {
            // After a round that named only the protected page, ask for one more.
            let need = self.resident.len() - budget + usize::from(retried);
            victims.clear();
            let asked = need + past_hot;
            self.advisor.victims(asked, &mut victims);
            let before = self.resident.len();
            let mut hot_named = 0;
            for &v in victims.iter() {
                if self.resident.len() <= budget || self.storage_full() {
                    break;
                }
                if self.hot.contains(v) {
                    self.stats.hot_victims_skipped += 1;
                    hot_named += 1;
                } else if Some(v) != protect && self.resident.contains_key(&v) {
                    self.evict(v, out);
                }
            }
            self.hot_at_tail = hot_named;
            if self.resident.len() == before && hot_named > 0 && victims.len() >= asked {
                // Nothing but hot pages: the advisor may have more behind them.
                past_hot = 2 * asked;
                continue;
            }
            past_hot = hot_named;
            if self.resident.len() == before && protect.is_some() && !retried {
                retried = true;
                continue;
            }
            if self.resident.len() == before {
                // The advisor named nothing usable; keep the budget anyway.
                let v = self
                    .resident
                    .keys()
                    .copied()
                    .find(|&p| Some(p) != protect && !self.hot.contains(p));
                match v {
                    Some(v) => {
                        self.stats.fallback_victims += 1;
                        self.evict(v, out);
                    }
                    None => break,
                }
            }
        }
        if self.resident.len() <= budget {
            // Within budget again: the engine will say if the tiers fill up again.
            self.storage_room = None;
        }
        self.scratch = victims;
    }

    fn evict(&mut self, page: PageNumber, out: &mut Vec<Action>) {
        let Some(entry) = self.resident.remove(&page) else {
            return;
        };
        if let Some(room) = self.storage_room.as_mut() {
            *room = room.saturating_sub(1);
        }
        if entry.prefetched_unused {
            self.stats.prefetch_wasted += 1;
        }
        if entry.outcome_unseen {
            self.advisor.on_prefetch_outcome(page, false);
        }
        // Where the fastest storage tier's spare room decides, the advisor's
        // probability could not change the tier, so it is not asked.
        let to = match self.spare_fastest_tier() {
            Some(t) => t,
            None => self.placement(self.wanted_tier(page), None),
        };
        self.stats.evictions += 1;
        self.put_location(page, to);
        if self.config.retier_per_window > 0 {
            self.retier_queue.push_back((page, self.stats.evictions));
        }
        self.advisor.on_evict(page);
        out.push(Action::Evict { page, to });
    }

    /// The storage tier that `page`'s probability asks for.
    fn wanted_tier(&self, page: PageNumber) -> TierId {
        self.config
            .storage_order
            .storage_tier_for(&self.config.thresholds, self.advisor.probability(page))
    }

    /// Where an evicted page goes when its probability wants tier `wanted` (`from`: the
    /// tier it is in now, whose slot it may keep). Spare room is better used than kept:
    /// a faster storage tier with more than a quarter of its capacity free takes the page
    /// (so an unbounded fast tier takes every page, whatever the advisor expects);
    /// otherwise `wanted`, or the next slower tier with room. "Faster" and "slower"
    /// are the storage order's.
    fn placement(&self, wanted: TierId, from: Option<TierId>) -> TierId {
        let order = self.config.storage_order;
        let wanted_rank = order.rank(wanted);
        if let Some(r) = (0..wanted_rank).find(|&r| self.has_spare_room(order.tier(r), from)) {
            return order.tier(r);
        }
        (wanted_rank..3)
            .map(|r| order.tier(r))
            .find(|&t| self.free_pages(t, from) > 0)
            .unwrap_or(order.tier(3))
    }

    /// The fastest storage tier, if it has spare room: then [`Self::placement`] picks
    /// it for an evicted page whatever tier is wanted.
    fn spare_fastest_tier(&self) -> Option<TierId> {
        let fastest = self.config.storage_order.tier(0);
        self.has_spare_room(fastest, None).then_some(fastest)
    }

    /// Whether more than a quarter of tier `t` is free (`from`: the tier the page is in
    /// now, whose slot it may keep).
    fn has_spare_room(&self, t: TierId, from: Option<TierId>) -> bool {
        self.free_pages(t, from) > self.config.tier_capacity_pages[t as usize] / 4
    }

    /// Free slots of tier `t`, counting the page's own if it is in `t` (`from`).
    fn free_pages(&self, t: TierId, from: Option<TierId>) -> u64 {
        let cap = self.config.tier_capacity_pages[t as usize];
        let used = self.tier_pages[t as usize].saturating_sub(u64::from(from == Some(t)));
        cap.saturating_sub(used)
    }

    /// Re-scores a bounded number of non-resident pages and moves those whose target
    /// tier changed, so pages that cool down sink and pages that warm up rise.
    pub(super) fn retier(&mut self, out: &mut Vec<Action>) {
        let n = self.config.retier_per_window.min(self.retier_queue.len());
        for _ in 0..n {
            let Some((page, eviction)) = self.retier_queue.pop_front() else {
                break;
            };
            // Pages filled since they were queued are dropped; they re-enter on eviction.
            let from = match self.location.get(&page) {
                Some(l) if l.eviction == eviction => l.tier,
                _ => continue,
            };
            let wanted = self.wanted_tier(page);
            if wanted != from {
                let target = self.placement(wanted, Some(from));
                // Rising only to a faster tier; sinking only where the placement rule
                // says (a tier with spare room keeps its pages).
                let rank = |t| self.config.storage_order.rank(t);
                let to = if (rank(wanted) < rank(from)) == (rank(target) < rank(from)) {
                    target
                } else {
                    from
                };
                if to != from {
                    self.tier_pages[from as usize] -= 1;
                    self.tier_pages[to as usize] += 1;
                    self.location.insert(page, Located { tier: to, eviction });
                    self.stats.moves += 1;
                    out.push(Action::Move { page, from, to });
                }
            }
            self.retier_queue.push_back((page, eviction));
        }
    }
}
