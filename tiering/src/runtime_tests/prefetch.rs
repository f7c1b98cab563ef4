//! Host-only tests of prefetching and the migrator: pages brought back before the
//! thread touches them, reads and moves that overlap its faults, the tier order of
//! evictions.

use super::*;

#[test]
fn requested_prefetch_brings_pages_back_before_they_are_touched() {
    let pages = 512usize; // 2 MiB
    let (_dir, map, tm, failed) = start_host_only("pf-", pages);
    let word = |p: usize| (map.addr + p * 4096) as *mut u64;
    for p in 0..pages {
        // SAFETY: inside the mapping; the runtime serves the fault.
        unsafe { word(p).write_volatile(value(p, 0, 0)) };
    }
    // The first pages written were the first evicted (FIFO): they sit in tier 2.
    let wanted: Vec<PageNumber> = (0..32).collect();
    let before = wait_for_idle(&tm, |_| true);
    tm.prefetch(&wanted, 1).unwrap();
    assert_eq!(
        tm.prefetch(&wanted, 9),
        Err(crate::runtime::PrefetchError::NoSuchTier(9))
    );
    let issued = wait_for_idle(&tm, |r| r.prefetch_issued >= before.prefetch_issued + 32);
    let read_wanted = || {
        for &p in &wanted {
            // SAFETY: as above.
            let got = unsafe { word(p as usize).read_volatile() };
            assert_eq!(got, value(p as usize, 0, 0), "page {p}");
        }
    };
    read_wanted();
    // The runtime counts a prefetch useful only when it sees the use: a fault on a
    // page still in flight, or a sampled page touched. Under load the migrator can
    // install all 32 before the reads above, which then fault on none of them; the
    // sampler zaps 8 resident pages a millisecond, so reading on shows a use.
    poll_until(&tm, std::time::Duration::from_millis(5), |r| {
        read_wanted();
        r.prefetch_useful > 0
    });
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    assert!(issued.per_tier[2].prefetch_issued >= 32, "{issued:#?}");
    let demand = report.demand_faults - issued.demand_faults;
    assert!(
        demand < wanted.len() as u64,
        "{demand} demand faults: {report:#?}"
    );
    assert!(report.prefetch_useful > 0, "{report:#?}");
    // FIFO evicted the pages in the order written, into adjacent slots (each on its
    // own, or in batches, as the writer outran the handler). The prefetch of 32 of
    // them, and the write-backs of the 32 pages it evicted together, went out merged.
    let io = |r: &crate::metrics::TieringReport| {
        let storage = &r.per_tier[2..];
        let requests: u64 = storage.iter().map(|t| t.io_requests).sum();
        (
            requests,
            storage.iter().map(|t| t.io_transfers).sum::<u64>(),
        )
    };
    let ((r0, t0), (r1, t1)) = (io(&before), io(&report));
    let (requests, transfers) = (r1 - r0, t1 - t0);
    assert!(requests >= 2 * wanted.len() as u64, "{report:#?}");
    assert!(
        transfers * 4 <= requests,
        "{transfers} transfers for {requests} requests"
    );
}

#[test]
fn migrator_prefetches_a_batch_while_a_thread_faults_on_other_pages() {
    let pages = 512usize; // 2 MiB
    let (_dir, map, tm, failed) = start_host_only("mig-", pages);
    let base = map.addr;
    let word = move |p: usize| (base + p * 4096 + 8) as *mut u64;
    for p in 0..pages {
        // SAFETY: inside the mapping; the runtime serves the fault.
        unsafe { word(p).write_volatile(value(p, 1, 0)) };
    }
    // FIFO evicted the first pages written: 0..64 are in the storage tiers.
    let before = wait_for_idle(&tm, |_| true);
    // Another thread faults on pages 256..512 (all out of RAM by now: each of its
    // reads is a demand fault) while the migrator prefetches 0..64.
    let faulting = std::thread::spawn(move || {
        let mut x = 99u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = 256 + (x % 256) as usize;
            // SAFETY: as above.
            let got = unsafe { word(p).read_volatile() };
            if got != value(p, 1, 0) {
                return Err(format!("page {p}: {got:#x}"));
            }
        }
        Ok(())
    });
    let wanted: Vec<PageNumber> = (0..64).collect();
    tm.prefetch(&wanted, 1).unwrap();
    let result = faulting.join().unwrap();
    let done = wait_for_idle(&tm, |r| r.migrations >= before.migrations + 64);
    for &p in &wanted {
        // SAFETY: as above.
        let got = unsafe { word(p as usize).read_volatile() };
        assert_eq!(got, value(p as usize, 1, 0), "page {p}");
    }
    let report = tm.stop();
    result.unwrap();
    assert!(failed.lock().unwrap().is_none());
    assert!(done.per_tier[2].prefetch_issued >= 64, "{done:#?}");
    assert!(
        report.demand_faults > before.demand_faults + 100,
        "{report:#?}"
    );
}

#[test]
fn a_touch_of_a_page_the_migrator_is_reading_waits_for_that_read() {
    // A slow tier (1 s a request), so the touches below come while the migrator's
    // reads are in flight, even on a loaded host.
    let tiers = "[tier1]\ncapacity = \"256K\"\nbackend = \"ram\"\n\
                 [tier2]\ncapacity = \"1M\"\nfile = \"t2.img\"\nlatency_us = 1000000\n";
    let (_dir, map, tm, failed, before) = start_written("late-", tiers, 16, 2);
    let word = |p: usize| (map.addr + p * 4096 + 16) as *mut u64;
    let wanted: Vec<PageNumber> = (0..16).collect();
    tm.prefetch(&wanted, 1).unwrap();
    // Once the jobs are with the migrator (reports come every 20 ms), touch the pages,
    // well before their 1 s reads end.
    poll_until(&tm, std::time::Duration::from_millis(2), |r| {
        r.migrations >= before.migrations + 16
    });
    for &p in &wanted {
        // SAFETY: as above. Each read faults on a page whose read is in flight.
        let got = unsafe { word(p as usize).read_volatile() };
        assert_eq!(got, value(p as usize, 2, 0), "page {p}");
    }
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    // The touches waited for the migrator's reads instead of reading the pages again.
    assert!(report.prefetches_late >= 1, "{report:#?}");
    assert_eq!(
        report.per_tier[2].demand_faults, before.per_tier[2].demand_faults,
        "{report:#?}"
    );
}

#[test]
fn a_prefetch_does_not_wait_behind_a_slow_move() {
    // Tier 3 takes 1 s a request: a move into it holds one of the migrator's I/Os
    // that long. Prefetches sent meanwhile from the fast tier 2 must not wait for it.
    // (At 300 ms and a 150 ms bound, a run under a loaded host's scheduling missed.)
    let tiers = "[tier1]\ncapacity = \"256K\"\nbackend = \"ram\"\n\
                 [tier2]\ncapacity = \"1M\"\nfile = \"t2.img\"\n\
                 [tier3]\ncapacity = \"1M\"\nfile = \"t3.img\"\nlatency_us = 1000000\n";
    let (_dir, map, tm, failed, before) = start_written("hol-", tiers, 24, 3);
    let word = |p: usize| (map.addr + p * 4096 + 24) as *mut u64;
    tm.prefetch(&[0, 1], 3).unwrap();
    poll_until(&tm, std::time::Duration::from_millis(2), |r| {
        r.migrations >= before.migrations + 2
    });
    // The moves are with the migrator, their writes to tier 3 under way.
    let wanted: Vec<PageNumber> = (8..24).collect();
    tm.prefetch(&wanted, 1).unwrap();
    poll_until(&tm, std::time::Duration::from_millis(1), |r| {
        r.migrations >= before.migrations + 2 + wanted.len() as u64
    });
    let started = std::time::Instant::now();
    for &p in &wanted {
        // SAFETY: as above. A page whose prefetch is still on its way waits for it.
        let got = unsafe { word(p as usize).read_volatile() };
        assert_eq!(got, value(p as usize, 3, 0), "page {p}");
    }
    let waited = started.elapsed();
    let done = wait_for_idle(&tm, |r| r.per_tier[3].bytes_written >= 2 * PAGE_SIZE);
    for p in [0usize, 1] {
        // SAFETY: as above; the moved pages come back from tier 3.
        let got = unsafe { word(p).read_volatile() };
        assert_eq!(got, value(p, 3, 0), "page {p}");
    }
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    assert!(
        waited < std::time::Duration::from_millis(500),
        "the prefetched pages took {waited:?}, behind the 1 s move: {report:#?}"
    );
    assert!(done.per_tier[3].bytes_written >= 2 * PAGE_SIZE, "{done:#?}");
}

#[test]
fn evicted_pages_go_down_the_tier_file_s_order() {
    // Tier 3 is named the faster: FIFO's pages (probability 1) go there first, and
    // once its 16 slots are taken they spill to tier 2, the slower by this order.
    let tiers = "order = [3, 2]\n\
                 [tier1]\ncapacity = \"256K\"\nbackend = \"ram\"\n\
                 [tier2]\ncapacity = \"1M\"\nfile = \"t2.img\"\n\
                 [tier3]\ncapacity = \"64K\"\nfile = \"t3.img\"\n";
    let (_dir, map, tm, failed, before) = start_written("order-", tiers, 40, 5);
    let written = |r: &crate::metrics::TieringReport, t: usize| r.per_tier[t].evictions;
    assert_eq!(
        (written(&before, 3), written(&before, 2)),
        (16, 16),
        "{before:#?}"
    );
    for p in 0..32usize {
        // SAFETY: inside the mapping; the runtime serves the fault from either tier.
        let got = unsafe { ((map.addr + p * 4096 + 40) as *mut u64).read_volatile() };
        assert_eq!(got, value(p, 5, 0), "page {p}");
    }
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    assert!(report.per_tier[3].demand_faults > 0, "{report:#?}");
}

/// FIFO that asks for every page it hears evicted right back: each prefetch names a
/// page whose eviction the handler may not have carried out yet (queued, or its
/// write-back in flight).
#[derive(Default)]
struct Boomerang {
    fifo: Fifo,
    evicted: VecDeque<PageNumber>,
}

impl Advisor for Boomerang {
    fn name(&self) -> &str {
        "boomerang"
    }
    fn on_access(&mut self, _a: &Access, _resident: bool) {}
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        self.fifo.on_fill(page, prefetched);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.fifo.on_evict(page);
        self.evicted.push_back(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.fifo.victims(n, out);
    }
    fn prefetch(&mut self, _now: u64, max: usize, out: &mut Vec<PageNumber>) {
        while out.len() < max {
            match self.evicted.pop_back() {
                Some(p) => out.push(p),
                None => break,
            }
        }
    }
    fn probability(&self, _page: PageNumber) -> f32 {
        1.0
    }
}

/// A prefetch of a page whose eviction is queued or writing back keeps the page in
/// RAM. Before, the handler ignored it: the policy counted the page resident, the
/// eviction went on, and the guest's next touch was a read that the advisor heard of
/// as a hit (live, 8% of gru's demand faults on the phases workload).
#[test]
fn a_prefetch_of_a_page_on_its_way_out_keeps_it_in_ram() {
    for migrator in [true, false] {
        let pages = 256usize;
        let (dir, map, tm, failed) =
            start_host_only_with("boomerang-", pages, migrator, Box::<Boomerang>::default());
        let base = map.addr;
        let word = move |p: usize| (base + p * 4096 + 8) as *mut u64;
        let worker = std::thread::spawn(move || {
            for round in 0..3u64 {
                for p in 0..pages {
                    // SAFETY: inside the mapping; the runtime serves the fault.
                    let got = unsafe { word(p).read_volatile() };
                    let want = if round == 0 {
                        0
                    } else {
                        value(p, 1, round - 1)
                    };
                    if got != want {
                        return Err(format!("page {p} round {round}: {got:#x}, want {want:#x}"));
                    }
                    // SAFETY: as above.
                    unsafe { word(p).write_volatile(value(p, 1, round)) };
                }
            }
            Ok(())
        });
        let report = finish(dir, tm, worker, &failed);
        assert!(report.evictions > pages as u64, "{report:#?}");
        assert!(report.prefetch_issued > pages as u64, "{report:#?}");
        assert_eq!(
            report.resident_misses, 0,
            "migrator {migrator}: {report:#?}"
        );
    }
}

/// A migrating runtime over `tiers` (a RAM budget of 64 pages, FIFO eviction) whose
/// 96 pages have each been written once, at byte `offset`, with [`value`] for word
/// `word`. FIFO evicted the first 32 written, so they sit in tier 2 (and
/// further down if it is full); the report is the one published after those
/// evictions.
fn start_written(
    tag: &str,
    tiers: &str,
    offset: usize,
    word: usize,
) -> (
    TempDir,
    Mapping,
    TieredMemory,
    Arc<Mutex<Option<String>>>,
    crate::metrics::TieringReport,
) {
    let pages = 96usize;
    let (dir, map, tm, failed) =
        start_host_only_over(tag, pages, tiers, true, Box::new(Fifo::default()));
    for p in 0..pages {
        let at = (map.addr + p * 4096 + offset) as *mut u64;
        // SAFETY: inside the mapping; the runtime serves the fault.
        unsafe { at.write_volatile(value(p, word, 0)) };
    }
    let before = wait_for_idle(&tm, |r| r.evictions >= (pages - 64) as u64);
    (dir, map, tm, failed, before)
}

/// The report once the handler has published one satisfying `done` and stayed idle
/// long enough for its reads to complete and a few sampling rounds to pass.
fn wait_for_idle(
    tm: &TieredMemory,
    done: impl Fn(&crate::metrics::TieringReport) -> bool,
) -> crate::metrics::TieringReport {
    poll_until(tm, std::time::Duration::from_millis(100), done)
}

/// The first published report satisfying `done`, looked at every `every`; fails after
/// 10 s.
fn poll_until(
    tm: &TieredMemory,
    every: std::time::Duration,
    done: impl Fn(&crate::metrics::TieringReport) -> bool,
) -> crate::metrics::TieringReport {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        std::thread::sleep(every);
        if let Some(r) = tm.snapshot().filter(|r| done(r)) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{:#?}", tm.snapshot());
    }
}

/// Demand-fault latency from the storage tiers with and without a concurrent
/// prefetch stream, and with the stream executed by the migrator or by the handler.
/// A measurement, not a check: `cargo test --release -p tiering --lib
/// measure_demand_latency -- --ignored --nocapture` (docs/tiering.md, "Migrator").
#[test]
#[ignore]
fn measure_demand_latency_under_a_prefetch_stream() {
    for (label, stream, migrator) in [
        ("no prefetch stream", false, true),
        ("prefetch stream, migrator", true, true),
        ("prefetch stream, handler", true, false),
    ] {
        let pages = 2048usize; // 8 MiB
        let (_dir, map, tm, failed) =
            start_host_only_with("lat-", pages, migrator, Box::new(Fifo::default()));
        let base = map.addr;
        let word = move |p: usize| (base + p * 4096 + 16) as *mut u64;
        for p in 0..pages {
            // SAFETY: inside the mapping; the runtime serves the fault.
            unsafe { word(p).write_volatile(value(p, 2, 0)) };
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let faulting = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 7u64;
                for _ in 0..4000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = 1024 + (x % 1024) as usize;
                    // SAFETY: as above.
                    assert_eq!(unsafe { word(p).read_volatile() }, value(p, 2, 0));
                }
                stop.store(true, std::sync::atomic::Ordering::Release);
            })
        };
        let mut requested = 0;
        while stream && !stop.load(std::sync::atomic::Ordering::Acquire) {
            // Pages 0..1024, which the faulting thread never touches, 64 at a time.
            let first = (requested * 64) % 1024;
            let batch: Vec<PageNumber> = (first..first + 64).map(|p| p as u64).collect();
            tm.prefetch(&batch, 1).unwrap();
            requested += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        faulting.join().unwrap();
        let r = tm.stop();
        assert!(failed.lock().unwrap().is_none());
        let storage: Vec<_> = r.per_tier[2..4]
            .iter()
            .map(|t| {
                format!(
                    "tier {} {} faults p50 {:.0} us p99 {:.0} us",
                    t.tier, t.demand_faults, t.fault_latency_p50_us, t.fault_latency_p99_us
                )
            })
            .collect();
        println!(
            "{label}: {} prefetch requests, {} prefetches issued, {} migrations; {}",
            requested,
            r.prefetch_issued,
            r.migrations,
            storage.join("; ")
        );
    }
}
