//! One RAM budget shared among VMs: the scheme that decides each VM's share, kept
//! apart from how the shares are measured and carried out (the VMM's `tiervisor pool`
//! manager and its members, docs/pool.md), as DAMON keeps its schemes apart from its
//! monitoring primitives.
//!
//! Each round the manager hands [`rebalance`] what every member reported: its
//! priority, its size, its current budget, its resident pages and how often it
//! refaults (demand faults on pages it had evicted, per second). The scheme:
//! 1. gives a VM that joins its priority's share of the pool (at most its size),
//!    taking what is not free from the members above their own priority share;
//! 2. takes back the unused part of the budget of a member that neither refaults nor
//!    touches new pages (resident pages well below its budget: it has not needed
//!    that much);
//! 3. hands free pages to the members that refault, in proportion to priority times
//!    refault rate;
//! 4. gives a member that refaults below its priority share pages back from the
//!    members above theirs (a step a round);
//! 5. otherwise moves one step of pages from the member whose priority-weighted refault rate
//!    is lowest to the one whose is highest, when the highest is clearly higher
//!    (hill climbing towards equal weighted pressure; one step a round, so a move
//!    shows its effect before the next). A donor that does not refault gives only
//!    the pages it does not use (its sampled idle share, as ESX's idle memory tax
//!    reclaims idle pages first: Waldspurger, OSDI'02): taking the working set of a
//!    VM that fits made it refault, and the pages came back a step a round.
//!
//! A member under pressure keeps at least its priority share (as cgroup's
//! `memory.low` protects a share): pages move to it from members above theirs, never
//! from below. The one exception: a member whose weighted pressure is over
//! [`FAR_HIGHER`] times another's gets that one's sampled-idle pages below its share
//! (as one LRU over all VMs would take a thrashing VM's cold pages for another's hot
//! ones). A member below its share takes back only what its samples do not show idle,
//! so it does not take them back while they stay idle. A member under no pressure may
//! give idle pages down to its floor (a quarter of its priority share). No member gets more than its size, and the
//! budgets never add up to more than the pool. (Equalising refault rates alone took
//! a VM whose working set fitted its share down to a third of it: it then refaulted
//! at 3,000 a second and ran 3.7x as long, docs/pool.md.)
//!
//! In a pool found over-committed (every member refaulting at its budget round after
//! round, [`over_committed`]), [`concentrate`] replaces steps 4 and 5: pages go to the
//! first members in precedence until they stop refaulting, from the last ones. A
//! manager that would run the VMs in turns once over-committed (load control) also
//! counts rounds in which the members have touched more pages than the pool holds
//! while those that do not refault still fill their memory ([`outgrown`]): the VMs of a
//! batch started together fill for a second or more before the last of them refaults.

mod turns;

pub use turns::{
    fits_again, needs_lent_room_back, room_to_lend, turn_budgets, RunningUse, TurnMember,
};

/// What one VM reports to the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMember {
    /// Priority, at least 1: shares and pressure are weighted by it.
    pub priority: u32,
    /// The VM's guest pages: it never needs a larger budget.
    pub guest_pages: u64,
    /// Its current budget; 0 while it joins.
    pub budget_pages: u64,
    /// Pages it holds in RAM now.
    pub resident_pages: u64,
    /// Demand faults on pages it had evicted, per second (smoothed).
    pub refaults_per_s: f64,
    /// First touches (zero fills) per second (smoothed): a member still filling its
    /// budget keeps the part it has not filled yet.
    pub first_touches_per_s: f64,
    /// Share of its resident pages in use (randomly sampled pages touched again,
    /// smoothed; 1.0 until measured): a member under no pressure gives up only the
    /// pages it does not use.
    pub active_fraction: f64,
    /// Pages it has touched since it started (its zero fills): what its memory holds,
    /// in RAM or below.
    pub touched_pages: u64,
}

/// The pool's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Pages all members' budgets share.
    pub size_pages: u64,
    /// Most pages moved from one member to another in a round.
    pub step_pages: u64,
    /// Refault rate below which a member is not under pressure.
    pub min_refaults_per_s: f64,
    /// Refault rate from which a member thrashes ([`thrashing`]).
    pub thrashing_refaults_per_s: f64,
}

impl PoolConfig {
    /// A pool of `size_pages` moving a sixteenth of itself a round, and counting a
    /// member as under pressure from 20 refaults a second (about 2 ms of stall a
    /// second at a 100 us refault), and as thrashing from 1,000 (a tenth of its time).
    pub fn new(size_pages: u64) -> Self {
        Self {
            size_pages,
            step_pages: (size_pages / 16).max(1),
            min_refaults_per_s: 20.0,
            thrashing_refaults_per_s: 1000.0,
        }
    }
}

/// Share of a member's resident pages counted as in use beyond what its samples say:
/// a live VM samples a few dozen pages a round, and a VM touching all its pages
/// showed 83-100% in use (docs/pool.md).
const ACTIVE_MARGIN: f64 = 0.1;

/// A weighted pressure counts as clearly higher than another when above this many
/// times it (plus the pressure threshold): hysteresis, so that two members with
/// about the same pressure do not trade pages back and forth.
const CLEARLY_HIGHER: f64 = 1.5;

/// A member under pressure gives pages its samples show idle below its priority
/// share only to a member whose weighted pressure is above this many times its own
/// (plus the pressure threshold).
const FAR_HIGHER: f64 = 4.0;

/// The members' new budgets, in the order given. With no member, empty.
pub fn rebalance(config: &PoolConfig, members: &[PoolMember]) -> Vec<u64> {
    balance(config, members, None)
}

/// The members' new budgets in a pool found over-committed, where their working sets
/// do not fit together: steps 1-3 of [`rebalance`], then, instead of levelling
/// pressure (which leaves every VM refaulting at its share until one leaves), a step
/// a round goes to the first member in precedence that still refaults, from the last
/// members down to their floors. Precedence is priority, then the order given
/// starting from member `lead` (the manager passes them in the order they joined and
/// moves the lead on from time to time, so that every VM has its spell). So the first
/// VMs hold their working sets and run at speed while the last ones refault at a
/// quarter of their share, and each VM that leaves makes room for the next: Denning's
/// load control by memory alone, for VMs that may not be paused (turns pause them,
/// docs/pool.md, "Concentrating an over-committed pool").
pub fn concentrate(config: &PoolConfig, members: &[PoolMember], lead: usize) -> Vec<u64> {
    balance(config, members, Some(lead))
}

/// [`rebalance`], or with `concentrating` (the lead) [`concentrate`].
fn balance(config: &PoolConfig, members: &[PoolMember], concentrating: Option<usize>) -> Vec<u64> {
    let n = members.len();
    if n == 0 {
        return Vec::new();
    }
    let size = config.size_pages;
    let weights: u64 = members.iter().map(|m| m.priority.max(1) as u64).sum();
    let fair: Vec<u64> = members
        .iter()
        .map(|m| (size as u128 * m.priority.max(1) as u128 / weights as u128) as u64)
        .map(|f| f.max(1))
        .collect();
    let cap: Vec<u64> = members.iter().map(|m| m.guest_pages.max(1)).collect();
    // The share a member keeps while it refaults: its priority's, at most its size. The
    // floor (a quarter of its priority's share) is never above it.
    let share: Vec<u64> = (0..n).map(|i| fair[i].min(cap[i])).collect();
    let floor: Vec<u64> = (0..n).map(|i| (fair[i] / 4).clamp(1, cap[i])).collect();
    let mut budget: Vec<u64> = (0..n)
        .map(|i| members[i].budget_pages.min(cap[i]))
        .collect();
    // Budgets over the pool (the pool shrank, or a report was stale): scale down.
    let total: u64 = budget.iter().sum();
    if total > size {
        for b in budget.iter_mut() {
            *b = (*b as u128 * size as u128 / total as u128) as u64;
        }
    }
    let pressure = |i: usize| members[i].refaults_per_s * members[i].priority.max(1) as f64;
    let needy = |i: usize| members[i].refaults_per_s >= config.min_refaults_per_s;
    // Whether `a`'s weighted pressure is far above `b`'s.
    let far_higher = |a: usize, b: usize| {
        pressure(a)
            > FAR_HIGHER * pressure(b)
                + config.min_refaults_per_s * members[a].priority.max(1) as f64
    };
    // Resident pages its samples show idle, less the margin.
    let idle = |i: usize, budget: u64| {
        let m = &members[i];
        let resident = m.resident_pages.min(budget);
        let idle_share = (1.0 - m.active_fraction.clamp(0.0, 1.0) - ACTIVE_MARGIN).max(0.0);
        (resident as f64 * idle_share) as u64
    };

    // 1. Joining members get their priority share, from free pages first, then from
    // the members above their own share.
    for j in (0..n).filter(|&j| members[j].budget_pages == 0) {
        let want = share[j];
        let mut free = size.saturating_sub(budget.iter().sum());
        if free < want {
            let short = want - free;
            let excess: Vec<u64> = (0..n)
                .map(|i| {
                    if i == j || members[i].budget_pages == 0 {
                        0
                    } else {
                        budget[i].saturating_sub(share[i])
                    }
                })
                .collect();
            let total_excess: u64 = excess.iter().sum();
            if total_excess > 0 {
                let take_total = short.min(total_excess);
                let mut taken = 0;
                for i in 0..n {
                    let t = (take_total as u128 * excess[i] as u128 / total_excess as u128) as u64;
                    budget[i] -= t;
                    taken += t;
                }
                // Rounding: the rest from the largest excess.
                let mut rest = take_total - taken;
                while rest > 0 {
                    let Some(i) = (0..n)
                        .filter(|&i| excess[i] > 0 && budget[i] > share[i])
                        .max_by_key(|&i| budget[i] - share[i])
                    else {
                        break;
                    };
                    budget[i] -= 1;
                    rest -= 1;
                }
            }
            free = size.saturating_sub(budget.iter().sum());
        }
        budget[j] = want.min(free).max(floor[j].min(free)).max(1);
    }

    // 2. Unused budget of members under no pressure goes back to the pool (half a
    // step of headroom stays, so a member filling up does not refault at once).
    let headroom = (config.step_pages / 2).max(1);
    for i in 0..n {
        let filling = members[i].first_touches_per_s >= config.min_refaults_per_s;
        if members[i].budget_pages == 0 || needy(i) || filling {
            continue;
        }
        let keep = (members[i].resident_pages + headroom).max(floor[i]);
        if budget[i] > keep {
            budget[i] = keep;
        }
    }

    // What a member that does not refault could give from `budget`: what it holds
    // unused or idle, down to its floor. The headroom of step 2 stays: without it a
    // member that fits refaulted at the next page it touched, and took its pages back.
    let spare = |i: usize, budget: u64| {
        let resident = members[i].resident_pages.min(budget);
        let unused = budget.saturating_sub(resident + headroom);
        budget
            .saturating_sub(floor[i])
            .min(unused + idle(i, budget))
    };

    // 3. Free pages to the members under pressure, by priority times refault rate.
    let free = size.saturating_sub(budget.iter().sum());
    let wanting: Vec<usize> = (0..n).filter(|&i| needy(i) && budget[i] < cap[i]).collect();
    let total_pressure: f64 = wanting.iter().map(|&i| pressure(i)).sum();
    if free > 0 && total_pressure > 0.0 {
        let mut given = 0;
        for &i in &wanting {
            let share = (free as f64 * pressure(i) / total_pressure) as u64;
            let g = share.min(cap[i] - budget[i]);
            budget[i] += g;
            given += g;
        }
        // Rounding: the rest to the most pressed member with room.
        let mut rest = free - given;
        while rest > 0 {
            let Some(i) = wanting
                .iter()
                .copied()
                .filter(|&i| budget[i] < cap[i])
                .max_by(|&a, &b| pressure(a).total_cmp(&pressure(b)))
            else {
                break;
            };
            let g = rest.min(cap[i] - budget[i]);
            budget[i] += g;
            rest -= g;
        }
    }

    if let Some(lead) = concentrating {
        concentrate_step(config, members, lead, &floor, &cap, &mut budget, &spare);
        debug_assert!(budget.iter().sum::<u64>() <= size.max(n as u64));
        return budget;
    }

    // 4. A member under pressure below its priority share takes pages back from
    // those above theirs, least pressed first (its share is protected).
    let mut protected_move = false;
    let mut below: Vec<usize> = (0..n)
        .filter(|&i| needy(i) && members[i].budget_pages > 0 && budget[i] < share[i])
        .collect();
    below.sort_by(|&a, &b| pressure(b).total_cmp(&pressure(a)));
    for r in below {
        // Less the pages its samples show idle: it does not need those back (they
        // may have gone to a far more pressed member in step 5).
        let mut want = (share[r] - budget[r])
            .min(config.step_pages)
            .saturating_sub(idle(r, budget[r]));
        let mut above: Vec<usize> = (0..n).filter(|&i| i != r && budget[i] > share[i]).collect();
        above.sort_by(|&a, &b| pressure(a).total_cmp(&pressure(b)));
        for d in above {
            let give = want.min(budget[d] - share[d]);
            budget[d] -= give;
            budget[r] += give;
            want -= give;
            protected_move |= give > 0;
            if want == 0 {
                break;
            }
        }
    }

    // 5. One step from the least to the most pressed member, if clearly more pressed.
    let receiver = (0..n)
        .filter(|&i| needy(i) && budget[i] < cap[i] && members[i].budget_pages > 0)
        .max_by(|&a, &b| pressure(a).total_cmp(&pressure(b)));
    if let Some(r) = receiver.filter(|_| !protected_move) {
        // What each member could give: one that refaults, what it holds above its
        // share (and to a far more pressed receiver its idle pages, down to its
        // floor); one that does not, only what it holds unused or idle.
        let available = |i: usize| {
            let above_floor = budget[i].saturating_sub(floor[i]);
            if needy(i) {
                let above_share = budget[i].saturating_sub(share[i]);
                // Below its share only its idle pages, and only to a member far more
                // pressed: as the kernel's one LRU would take a thrashing VM's cold
                // pages for another's hot ones.
                if !far_higher(r, i) {
                    return above_share;
                }
                return above_floor.min(above_share.max(idle(i, budget[i])));
            }
            spare(i, budget[i])
        };
        let donor = (0..n)
            .filter(|&i| i != r && members[i].budget_pages > 0 && available(i) > 0)
            .min_by(|&a, &b| {
                pressure(a)
                    .total_cmp(&pressure(b))
                    .then(available(b).cmp(&available(a)))
            });
        if let Some(d) = donor {
            let threshold = CLEARLY_HIGHER * pressure(d)
                + config.min_refaults_per_s * members[r].priority.max(1) as f64;
            if pressure(r) > threshold {
                let step = config.step_pages.min(available(d)).min(cap[r] - budget[r]);
                budget[d] -= step;
                budget[r] += step;
            }
        }
    }
    debug_assert!(budget.iter().sum::<u64>() <= size.max(n as u64));
    budget
}

/// [`concentrate`]'s step: up to a step of pages to the first member in precedence
/// that refaults, from the members after it, last first, down to their floors (one
/// that does not refault gives only its `spare` pages).
fn concentrate_step(
    config: &PoolConfig,
    members: &[PoolMember],
    lead: usize,
    floor: &[u64],
    cap: &[u64],
    budget: &mut [u64],
    spare: &dyn Fn(usize, u64) -> u64,
) {
    let n = members.len();
    let needy = |i: usize| members[i].refaults_per_s >= config.min_refaults_per_s;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| {
        (
            std::cmp::Reverse(members[i].priority.max(1)),
            (i + n - lead % n) % n,
        )
    });
    // Refaulting at its budget: a rate smoothed over rounds goes on after the pages
    // came, and a member holding well under its budget needs no more.
    let wants = |i: usize| {
        let m = &members[i];
        needy(i) && m.budget_pages > 0 && budget[i] < cap[i] && holds(m.resident_pages, budget[i])
    };
    let Some(p) = order.iter().position(|&i| wants(i)) else {
        return;
    };
    let r = order[p];
    let mut want = config.step_pages.min(cap[r] - budget[r]);
    for &d in order[p + 1..].iter().rev() {
        if want == 0 {
            break;
        }
        if members[d].budget_pages == 0 {
            continue;
        }
        let available = if needy(d) {
            budget[d].saturating_sub(floor[d])
        } else {
            spare(d, budget[d])
        };
        let give = available.min(want);
        budget[d] -= give;
        budget[r] += give;
        want -= give;
    }
}

/// Whether the pool looks over-committed this round: two or more members, every one
/// under pressure (refaulting at its budget, whatever the scheme moves between them).
/// Round after round of this means their working sets do not fit in the pool together:
/// each keeps its share while it refaults, so they all refault until one leaves
/// (docs/pool.md, "One round decides an all-at-once run"), and running them in turns
/// serves them one working set at a time. Samples that show a member's pages idle do
/// not change this: a VM that scans refaults with most of its pages idle between
/// passes.
pub fn over_committed(config: &PoolConfig, members: &[PoolMember]) -> bool {
    all_refault_at_budget(members, config.min_refaults_per_s)
}

/// Two or more members, every one refaulting at its budget ([`refaults_at_budget`]).
fn all_refault_at_budget(members: &[PoolMember], rate: f64) -> bool {
    members.len() >= 2 && members.iter().all(|m| refaults_at_budget(m, rate))
}

/// Whether a member refaults at least `rate` a second while it holds its budget
/// (within a sixteenth): a member whose budget was just raised refaults its pages back
/// into the room it was given, which says nothing of the pool.
fn refaults_at_budget(m: &PoolMember, rate: f64) -> bool {
    m.budget_pages > 0 && holds(m.resident_pages, m.budget_pages) && m.refaults_per_s >= rate
}

/// Whether `resident` pages fill a budget of `budget` (within a sixteenth): a member
/// holding well under its budget has room, whatever its smoothed refault rate says.
fn holds(resident: u64, budget: u64) -> bool {
    resident + budget / 16 >= budget
}

/// Whether the pool looks over-committed before every member refaults: the pages the
/// members have touched add up to more than the pool, one or more of them refault at
/// their budgets, and every other one still touches new pages (a guest writes its
/// memory before it uses it, so what it touches now it will want). VMs that start
/// together fill their memory for a second or more; until the last has filled, only
/// the first to fill refault, and [`over_committed`] waits for all of them.
pub fn outgrown(config: &PoolConfig, members: &[PoolMember]) -> bool {
    let rate = config.min_refaults_per_s;
    members.len() >= 2
        && members.iter().map(|m| m.touched_pages).sum::<u64>() > config.size_pages
        && members.iter().any(|m| refaults_at_budget(m, rate))
        && members
            .iter()
            .all(|m| refaults_at_budget(m, rate) || m.first_touches_per_s >= rate)
}

/// Whether every member (two or more) thrashes this round: refaults at its budget
/// fast enough to spend a tenth of its time or more waiting on them. Over-commitment
/// seen this plainly needs fewer rounds to be believed than [`over_committed`]'s 20
/// refaults a second: a burst that size from every VM at once is not a VM's phase
/// change.
pub fn thrashing(config: &PoolConfig, members: &[PoolMember]) -> bool {
    all_refault_at_budget(members, config.thrashing_refaults_per_s)
}

#[cfg(test)]
mod tests;
