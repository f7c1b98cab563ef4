//! Unit tests of the pool's scheme.

use super::*;

fn member(priority: u32, guest: u64, budget: u64, resident: u64, rate: f64) -> PoolMember {
    PoolMember {
        priority,
        guest_pages: guest,
        budget_pages: budget,
        resident_pages: resident,
        refaults_per_s: rate,
        first_touches_per_s: 0.0,
        active_fraction: 0.0,
        touched_pages: 0,
    }
}

#[test]
fn joining_members_get_their_priority_share() {
    let config = PoolConfig::new(1000);
    let b = rebalance(&config, &[member(1, 4096, 0, 0, 0.0)]);
    assert_eq!(b, vec![1000]);
    // A second VM of priority 3 joins a pool the first one fills: 750 of it.
    let b = rebalance(
        &config,
        &[
            member(1, 4096, 1000, 1000, 500.0),
            member(3, 4096, 0, 0, 0.0),
        ],
    );
    assert_eq!(b, vec![250, 750]);
    // Never more than the VM's own size.
    let b = rebalance(&config, &[member(1, 100, 0, 0, 0.0)]);
    assert_eq!(b, vec![100]);
}

#[test]
fn pages_move_towards_the_member_that_refaults() {
    let config = PoolConfig::new(1024);
    let mut members = vec![
        member(1, 4096, 512, 512, 400.0),
        member(1, 4096, 512, 512, 0.0),
    ];
    let b = rebalance(&config, &members);
    assert_eq!(b, vec![512 + 64, 512 - 64], "one step of a sixteenth");
    // Round after round, down to the donor's floor (a quarter of its share).
    for _ in 0..20 {
        members[0].budget_pages = rebalance(&config, &members)[0];
        members[1].budget_pages = 1024 - members[0].budget_pages;
        members[0].resident_pages = members[0].budget_pages;
        members[1].resident_pages = members[1].budget_pages;
    }
    assert_eq!(members[1].budget_pages, 128);
    // About equal pressure: nothing moves.
    let even = [
        member(1, 4096, 512, 512, 300.0),
        member(1, 4096, 512, 512, 250.0),
    ];
    assert_eq!(rebalance(&config, &even), vec![512, 512]);
}

#[test]
fn a_member_that_uses_all_it_holds_gives_nothing() {
    let config = PoolConfig::new(1024);
    let mut busy = member(1, 4096, 512, 512, 0.0);
    busy.active_fraction = 1.0;
    let pressed = member(1, 4096, 512, 512, 400.0);
    assert_eq!(
        rebalance(&config, &[pressed.clone(), busy.clone()]),
        vec![512, 512]
    );
    // Within the sampling margin: still nothing.
    busy.active_fraction = 0.95;
    assert_eq!(
        rebalance(&config, &[pressed.clone(), busy.clone()]),
        vec![512, 512]
    );
    // A fifth idle: a tenth (a fifth less the margin) goes, not a whole step.
    busy.active_fraction = 0.8;
    assert_eq!(rebalance(&config, &[pressed, busy]), vec![563, 461]);
}

#[test]
fn a_member_under_pressure_keeps_its_priority_share() {
    let config = PoolConfig::new(1024);
    // Both refault; the first far more. The second is at its share: it keeps it.
    let b = rebalance(
        &config,
        &[
            member(1, 4096, 512, 512, 6000.0),
            member(1, 4096, 512, 512, 3000.0),
        ],
    );
    assert_eq!(b, vec![512, 512]);
    // Above its share, it gives back a step (or what it holds above the share).
    let b = rebalance(
        &config,
        &[
            member(1, 4096, 482, 482, 6000.0),
            member(1, 4096, 542, 542, 3000.0),
        ],
    );
    assert_eq!(b, vec![512, 512]);
}

#[test]
fn a_far_more_pressed_member_gets_the_idle_pages_of_one_at_its_share() {
    // Four members at their shares of 5,760 pages, as in bench-priority's equal
    // run: a kv store refaulting 5,700 a second with its pages in use, three
    // others refaulting 460-1,900 a second with their samples mostly idle.
    let config = PoolConfig::new(5760);
    let mut members = vec![
        member(1, 16384, 1440, 1440, 5700.0),
        member(1, 16384, 1440, 1440, 460.0),
        member(1, 16384, 1440, 1440, 435.0),
        member(1, 16384, 1440, 1440, 1900.0),
    ];
    members[0].active_fraction = 0.99;
    for m in &mut members[1..] {
        m.active_fraction = 0.05;
    }
    // A step (360 pages) from the least pressed to the kv store, below its share.
    let b = rebalance(&config, &members);
    assert_eq!(b, vec![1800, 1440, 1080, 1440]);
    // Next round the donor, now below its share, does not take them back.
    for (m, &budget) in members.iter_mut().zip(&b) {
        m.budget_pages = budget;
        m.resident_pages = budget;
    }
    let b = rebalance(&config, &members);
    assert_eq!(b[0], 2160, "{b:?}");
    assert_eq!(b.iter().sum::<u64>(), 5760);
    // A member whose samples show its pages in use keeps its share, however much
    // more another refaults (the chase of docs/pool.md, "How the scheme got there").
    let mut kv = members[0].clone();
    let mut busy = members[2].clone();
    for m in [&mut kv, &mut busy] {
        m.budget_pages = 1440;
        m.resident_pages = 1440;
    }
    busy.active_fraction = 1.0;
    let b = rebalance(&PoolConfig::new(2880), &[kv, busy]);
    assert_eq!(b, vec![1440, 1440]);
    // Below its share with its pages in use, a member takes its share back a step
    // a round, from a member above its own however pressed (the chase again).
    let mut cut = member(1, 16384, 1080, 1080, 3000.0);
    cut.active_fraction = 1.0;
    let b = rebalance(
        &PoolConfig::new(2880),
        &[member(1, 16384, 1800, 1800, 6000.0), cut],
    );
    assert_eq!(b, vec![1620, 1260], "a step of 180 pages");
    // Pressure not far higher (under four times): the share is kept, idle or not.
    let b = rebalance(
        &config,
        &[
            member(1, 16384, 2880, 2880, 1500.0),
            member(1, 16384, 2880, 2880, 460.0),
        ],
    );
    assert_eq!(b, vec![2880, 2880]);
}

#[test]
fn priority_weighs_pressure() {
    let config = PoolConfig::new(1024);
    // The same refault rate: the priority-4 member takes a step from the other.
    let b = rebalance(
        &config,
        &[
            member(1, 4096, 512, 512, 300.0),
            member(4, 4096, 512, 512, 300.0),
        ],
    );
    assert_eq!(b, vec![448, 576]);
}

#[test]
fn unused_budget_goes_to_the_members_under_pressure() {
    let config = PoolConfig::new(1024);
    // The second VM holds 100 pages of its 512 and never refaults.
    let b = rebalance(
        &config,
        &[
            member(1, 4096, 512, 512, 300.0),
            member(1, 4096, 512, 100, 0.0),
        ],
    );
    // Its budget falls to what it holds plus half a step (132), then a step goes
    // to the member that refaults, down to the floor (a quarter of 512).
    assert_eq!(b[1], 128);
    assert_eq!(b[0] + b[1], 1024);
    // A member that left: its pages are free, and go to whoever refaults.
    let b = rebalance(&config, &[member(1, 4096, 512, 512, 300.0)]);
    assert_eq!(b, vec![1024]);
    // A member still touching new pages keeps what it has not filled yet.
    let mut filling = member(1, 4096, 512, 100, 0.0);
    filling.first_touches_per_s = 1000.0;
    assert_eq!(rebalance(&config, &[filling]), vec![512]);
    // Nobody under pressure: free pages stay free.
    let b = rebalance(&config, &[member(1, 4096, 512, 512, 0.0)]);
    assert_eq!(b, vec![512]);
}

#[test]
fn budgets_never_exceed_the_pool_or_fall_below_one_page() {
    let config = PoolConfig::new(64);
    let mut x = 7u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let n = 1 + (next() % 6) as usize;
        let mut left = 64u64;
        let members: Vec<PoolMember> = (0..n)
            .map(|_| {
                let budget = if next() % 4 == 0 {
                    0
                } else {
                    next() % (left + 1)
                };
                left -= budget;
                let guest = 1 + next() % 200;
                member(
                    1 + (next() % 4) as u32,
                    guest,
                    budget,
                    next() % (budget + 1),
                    (next() % 500) as f64,
                )
            })
            .collect();
        let b = rebalance(&config, &members);
        assert!(b.iter().sum::<u64>() <= 64, "{members:?} -> {b:?}");
        for (m, &p) in members.iter().zip(&b) {
            assert!(p >= 1 && p <= m.guest_pages.max(1), "{members:?} -> {b:?}");
        }
    }
}

#[test]
fn a_pool_whose_members_all_refault_is_over_committed() {
    let config = PoolConfig::new(1000);
    let busy = |rate: f64, used: f64| PoolMember {
        active_fraction: used,
        ..member(1, 4096, 500, 500, rate)
    };
    assert!(over_committed(
        &config,
        &[busy(2500.0, 0.8), busy(2000.0, 0.7)]
    ));
    // A scanning VM's samples show its pages idle between passes: still so.
    assert!(over_committed(
        &config,
        &[busy(2500.0, 0.8), busy(2000.0, 0.2)]
    ));
    // One of them not refaulting, or still joining: not so; nor a pool of one.
    assert!(!over_committed(
        &config,
        &[busy(2500.0, 0.8), busy(5.0, 0.9)]
    ));
    let joining = PoolMember {
        budget_pages: 0,
        ..busy(0.0, 1.0)
    };
    assert!(!over_committed(&config, &[busy(2500.0, 0.8), joining]));
    assert!(!over_committed(&config, &[busy(2500.0, 0.8)]));
    // One refaulting its pages back into a budget just raised: not so either.
    let refilling = PoolMember {
        budget_pages: 800,
        ..busy(2000.0, 0.1)
    };
    assert!(!over_committed(&config, &[busy(2500.0, 0.8), refilling]));
}

#[test]
fn a_pool_whose_vms_have_touched_more_than_it_holds_is_outgrown_while_they_fill() {
    let config = PoolConfig::new(1000);
    let refaulting = |touched: u64| PoolMember {
        touched_pages: touched,
        ..member(1, 4096, 500, 500, 2500.0)
    };
    let filling = |touched: u64| PoolMember {
        first_touches_per_s: 500.0,
        touched_pages: touched,
        ..member(1, 4096, 500, 300, 0.0)
    };
    // One refaults at its budget and the other still fills: together they have
    // touched more than the pool, which over_committed does not see yet.
    assert!(outgrown(&config, &[refaulting(600), filling(450)]));
    assert!(!over_committed(&config, &[refaulting(600), filling(450)]));
    // No more touched than the pool holds: not so.
    assert!(!outgrown(&config, &[refaulting(550), filling(450)]));
    // The other neither refaults nor fills (its working set fits): not so.
    let settled = PoolMember {
        first_touches_per_s: 0.0,
        ..filling(600)
    };
    assert!(!outgrown(&config, &[refaulting(600), settled]));
    // All still filling, none refaulting yet; or a pool of one: not so.
    assert!(!outgrown(&config, &[filling(600), filling(600)]));
    assert!(!outgrown(&config, &[refaulting(2000)]));
}

#[test]
fn an_over_committed_pool_favours_its_first_members_down_to_the_floors_of_the_last() {
    // Four VMs of 400-page working sets refault in a 1,000-page pool. Levelling
    // pressure leaves each at its 250-page share; concentrating gives a step (62
    // pages) a round to the first that refaults at its budget, last donors first,
    // down to their floors (62: a quarter of the share).
    let config = PoolConfig::new(1000);
    let refaulting = |budget: u64| member(1, 4096, budget, budget, 800.0);
    let mut budgets = vec![250; 4];
    assert_eq!(
        rebalance(
            &config,
            &budgets.iter().map(|&b| refaulting(b)).collect::<Vec<_>>()
        ),
        budgets,
        "levelled: nothing moves"
    );
    let set = 400;
    for _ in 0..30 {
        // A member holding its 400 pages stops refaulting and keeps what it holds.
        let members: Vec<PoolMember> = budgets
            .iter()
            .map(|&b| {
                if b >= set {
                    member(1, 4096, b, set, 0.0)
                } else {
                    refaulting(b)
                }
            })
            .collect();
        budgets = concentrate(&config, &members, 0);
        assert!(budgets.iter().sum::<u64>() <= 1000);
    }
    // The first two hold their sets (and half a step of headroom); the last two
    // share the rest, the last at its floor.
    assert!(budgets[0] >= set && budgets[1] >= set, "{budgets:?}");
    assert_eq!(budgets[3], 62, "{budgets:?}");
    assert!(budgets[2] < set, "{budgets:?}");
    // Priority first: the priority-2 member, last in order, is favoured (a full
    // pool, so that no free pages are handed out first).
    let full = PoolConfig::new(750);
    let members = [
        refaulting(250),
        refaulting(250),
        member(2, 4096, 250, 250, 800.0),
    ];
    let b = concentrate(&full, &members, 0);
    assert!(b[2] > 250 && b[1] < 250 && b[0] == 250, "{b:?}");
    // With the lead moved on to the second member, it comes first and the first
    // comes last.
    let even = [refaulting(250), refaulting(250), refaulting(250)];
    let b = concentrate(&full, &even, 1);
    assert!(b[1] > 250 && b[0] < 250 && b[2] == 250, "{b:?}");
    // A member holding well under its budget gets nothing more (its smoothed rate
    // lags the pages that came): the next in line does.
    let members = [
        member(1, 4096, 400, 300, 800.0),
        refaulting(300),
        refaulting(300),
    ];
    let b = concentrate(&config, &members, 0);
    assert!(b[0] == 400 && b[1] > 300 && b[2] < 300, "{b:?}");
}

#[test]
fn a_pool_whose_members_all_refault_a_thousand_times_a_second_thrashes() {
    let config = PoolConfig::new(1000);
    let busy = |rate: f64| member(1, 4096, 500, 500, rate);
    assert!(thrashing(&config, &[busy(2500.0), busy(1000.0)]));
    // Under pressure but not thrashing: over-committed only once it lasts.
    assert!(!thrashing(&config, &[busy(2500.0), busy(400.0)]));
    assert!(over_committed(&config, &[busy(2500.0), busy(400.0)]));
    assert!(!thrashing(&config, &[busy(2500.0)]));
    let refilling = PoolMember {
        budget_pages: 800,
        ..busy(2000.0)
    };
    assert!(!thrashing(&config, &[busy(2500.0), refilling]));
}
