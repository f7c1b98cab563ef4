//! The pool's rules when its manager runs VMs in turns (docs/pool.md, "Running VMs in
//! turns"): the budgets of running and waiting VMs, when VMs in turns fit all at once
//! again, and the room running VMs lend the next in line to stage its pages.

/// A member of a pool whose manager runs VMs in turns.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnMember {
    pub priority: u32,
    pub guest_pages: u64,
    /// Whether it runs now (else it waits for its turn).
    pub running: bool,
}

/// Budgets when VMs run in turns: a waiting member keeps a thirty-second of the pool
/// (less when so many wait that they would hold over half of it; at most its size), and
/// the running ones share the rest by priority (at most their size, at least a page).
pub fn turn_budgets(size_pages: u64, members: &[TurnMember]) -> Vec<u64> {
    let waiting_count = members.iter().filter(|m| !m.running).count() as u64;
    let waiting_share = (size_pages / 32)
        .min(size_pages / 2 / waiting_count.max(1))
        .max(1);
    let waiting: u64 = members
        .iter()
        .filter(|m| !m.running)
        .map(|m| waiting_share.min(m.guest_pages.max(1)))
        .sum();
    let weights: u64 = members
        .iter()
        .filter(|m| m.running)
        .map(|m| u64::from(m.priority.max(1)))
        .sum::<u64>()
        .max(1);
    let left = size_pages.saturating_sub(waiting);
    members
        .iter()
        .map(|m| {
            let guest = m.guest_pages.max(1);
            if m.running {
                (left * u64::from(m.priority.max(1)) / weights).clamp(1, guest)
            } else {
                waiting_share.min(guest)
            }
        })
        .collect()
}

/// Whether VMs run in turns because the pool was over-committed would fit all at once
/// again: every one has had a turn, and the pages each held at the end of its last
/// turn (`Some`; `None` before its first) add up to at most the pool less a sixteenth.
/// A running VM's budget is most of the pool, so what it holds at the end of a turn is
/// its working set, or all it touched if that is smaller: an estimate that errs
/// towards staying in turns.
pub fn fits_again(size_pages: u64, held_at_turn_end: &[Option<u64>]) -> bool {
    let held: Option<u64> = held_at_turn_end.iter().copied().sum();
    held.is_some_and(|h| h <= size_pages - size_pages / 16)
}

/// A running VM, as [`room_to_lend`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningUse {
    pub budget_pages: u64,
    pub resident_pages: u64,
}

/// The room each running VM lends to the next VM in line so that it can stage its pages
/// before its turn: what the VM holds beyond its resident pages and `margin` (room to
/// grow into), in order, until `wanted` is lent. Nothing is lent when the total would be
/// under `margin`, too little to be worth a staging request.
pub fn room_to_lend(running: &[RunningUse], margin: u64, wanted: u64) -> Vec<u64> {
    let mut total = 0;
    let lent: Vec<u64> = running
        .iter()
        .map(|r| {
            let spare = r
                .budget_pages
                .saturating_sub(r.resident_pages.saturating_add(margin))
                .min(wanted - total);
            total += spare;
            spare
        })
        .collect();
    if total < margin {
        return vec![0; running.len()];
    }
    lent
}

/// Whether a VM that lent room needs it back: its resident pages came within half the
/// margin of its lowered budget.
pub fn needs_lent_room_back(r: &RunningUse, lent: u64, margin: u64) -> bool {
    lent > 0 && r.resident_pages + margin / 2 > r.budget_pages.saturating_sub(lent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_turns_the_running_vms_share_what_the_waiting_ones_leave() {
        let m = |priority, running| TurnMember {
            priority,
            guest_pages: 4096,
            running,
        };
        // 2,048 pages: each waiting VM keeps 64, the running ones split the rest 3:1.
        let b = turn_budgets(2048, &[m(3, true), m(1, true), m(1, false), m(1, false)]);
        assert_eq!(b, vec![1440, 480, 64, 64]);
        // A hundred waiting VMs hold half the pool between them, not more than all of it.
        let mut many = vec![m(1, true)];
        many.extend((0..100).map(|_| m(1, false)));
        let b = turn_budgets(2048, &many);
        assert_eq!(b[1], 10);
        assert_eq!(b[0], 2048 - 100 * 10);
        assert!(b.iter().sum::<u64>() <= 2048);
    }

    #[test]
    fn running_vms_lend_the_room_they_do_not_use_and_take_it_back_when_they_grow() {
        let r = |budget_pages, resident_pages| RunningUse {
            budget_pages,
            resident_pages,
        };
        // 1,984 pages, 1,600 resident, a margin of 128: 256 to lend.
        assert_eq!(room_to_lend(&[r(1984, 1600)], 128, 10_000), vec![256]);
        // No more than the next VM can use, taken from the first lender first.
        assert_eq!(
            room_to_lend(&[r(1000, 500), r(1000, 500)], 100, 500),
            vec![400, 100]
        );
        // Under the margin in all: nothing.
        assert_eq!(
            room_to_lend(&[r(1000, 860), r(1000, 860)], 100, 500),
            vec![0, 0]
        );
        // A full VM lends nothing.
        assert_eq!(room_to_lend(&[r(1000, 1000)], 100, 500), vec![0]);
        // The lender of 256 (budget now 1,728) grows by half the margin: it wants it back.
        assert!(!needs_lent_room_back(&r(1984, 1600), 256, 128));
        assert!(!needs_lent_room_back(&r(1984, 1664), 256, 128));
        assert!(needs_lent_room_back(&r(1984, 1665), 256, 128));
        assert!(!needs_lent_room_back(&r(1984, 1984), 0, 128));
    }

    #[test]
    fn vms_fit_again_once_each_has_had_a_turn_and_their_sets_add_up_to_the_pool() {
        // 1,000 pages less a sixteenth: 938.
        assert!(fits_again(1000, &[Some(400), Some(500)]));
        assert!(fits_again(1000, &[Some(469), Some(469)]));
        assert!(!fits_again(1000, &[Some(470), Some(469)]));
        // One not yet measured: no.
        assert!(!fits_again(1000, &[Some(100), None]));
        assert!(!fits_again(1000, &[Some(900), Some(900)]));
    }
}
