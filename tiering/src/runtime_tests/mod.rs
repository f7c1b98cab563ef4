//! Host-only tests of the fault path: a plain thread (no VM) touches guest-like
//! memory registered with userfaultfd while the runtime keeps it within a small RAM
//! budget over real file tiers.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};

use crate::access::{Access, PageNumber, PAGE_SIZE};
use crate::advisor::Advisor;
use crate::backend::tests::TempDir;
use crate::config::TierConfig;
use crate::layout::GuestRegion;
use crate::runtime::{HostOnlyHooks, TieredMemory, TieringOptions};

mod prefetch;

/// First in, first out: the simplest advisor that names real resident pages.
#[derive(Default)]
struct Fifo {
    queue: VecDeque<PageNumber>,
    resident: std::collections::HashSet<PageNumber>,
}

impl Advisor for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }
    fn on_access(&mut self, _a: &Access, _resident: bool) {}
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        if self.resident.insert(page) {
            self.queue.push_back(page);
        }
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.resident.remove(&page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        while out.len() < n {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            if self.resident.contains(&p) {
                out.push(p);
                // Stays queued until the policy reports the eviction.
                self.queue.push_back(p);
            }
        }
    }
    fn prefetch(&mut self, _now: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        1.0
    }
}

struct Mapping {
    file: Arc<File>,
    addr: usize,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Self {
        let name = std::ffi::CString::new("tier-test").unwrap();
        // SAFETY: valid name; result checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let file = Arc::new(unsafe { File::from_raw_fd(fd) });
        file.set_len(len as u64).unwrap();
        // SAFETY: shared mapping of a file we own, of its full length.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Self {
            file,
            addr: addr as usize,
            len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(); nothing uses it after the test.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

const TIERS: &str = "[tier1]\ncapacity = \"256K\"\nbackend = \"ram\"\n\
                     [tier2]\ncapacity = \"1M\"\nfile = \"t2.img\"\n\
                     [tier3]\ncapacity = \"8M\"\nfile = \"t3.img\"\n";

fn value(page: usize, word: usize, round: u64) -> u64 {
    (page as u64) << 32 ^ (word as u64) << 8 ^ round ^ 0x5a5a_0000_0000_0000
}

/// A host-only tiered runtime over `pages` fresh pages with a 64-page RAM budget and a
/// fast sampler (sampled minor faults are how a host-only run, with no dirty log, sees
/// accesses to resident pages, such as the first use of a prefetched page).
fn start_host_only(
    tag: &str,
    pages: usize,
) -> (TempDir, Mapping, TieredMemory, Arc<Mutex<Option<String>>>) {
    start_host_only_with(tag, pages, true, Box::new(Fifo::default()))
}

fn start_host_only_with(
    tag: &str,
    pages: usize,
    migrator: bool,
    advisor: Box<dyn Advisor>,
) -> (TempDir, Mapping, TieredMemory, Arc<Mutex<Option<String>>>) {
    start_host_only_over(tag, pages, TIERS, migrator, advisor)
}

/// As [`start_host_only_with`], over the tiers of tier-file text `tiers`.
fn start_host_only_over(
    tag: &str,
    pages: usize,
    tiers: &str,
    migrator: bool,
    advisor: Box<dyn Advisor>,
) -> (TempDir, Mapping, TieredMemory, Arc<Mutex<Option<String>>>) {
    // Removed when the test ends, whether it passed or not.
    let dir = TempDir::new(&format!("tier-rt-{tag}"));
    let map = Mapping::new(pages * PAGE_SIZE as usize);
    let regions = [GuestRegion {
        guest_addr: 0,
        host_addr: map.addr,
        len: map.len as u64,
        file_offset: 0,
    }];
    let failed = Arc::new(Mutex::new(None));
    let tiers = TierConfig::parse("test.toml", tiers, &dir.0).unwrap();
    let mut options = TieringOptions::new(tiers, 64);
    options.sample_pages = 8;
    options.sample_interval = std::time::Duration::from_millis(1);
    options.migrator = migrator;
    let tm = TieredMemory::start(
        &regions,
        map.file.clone(),
        options,
        advisor,
        Box::new(HostOnlyHooks {
            failed: failed.clone(),
        }),
    )
    .unwrap();
    (dir, map, tm, failed)
}

/// Joins `worker`, stops the runtime and removes its directory; the test fails if the
/// worker found bad data or the runtime failed.
fn finish(
    dir: TempDir,
    tm: TieredMemory,
    worker: std::thread::JoinHandle<Result<(), String>>,
    failed: &Mutex<Option<String>>,
) -> crate::metrics::TieringReport {
    let result = worker.join().unwrap();
    let report = tm.stop();
    drop(dir);
    result.unwrap();
    assert!(failed.lock().unwrap().is_none(), "{failed:?}");
    report
}

#[test]
fn thread_touching_registered_memory_is_served_within_budget() {
    let pages = 1024usize; // 4 MiB
    let (dir, map, tm, failed) = start_host_only("", pages);
    let base = map.addr;
    let worker = std::thread::spawn(move || {
        let word = |p: usize, w: usize| (base + p * 4096 + w * 512) as *mut u64;
        for round in 0..3u64 {
            for p in 0..pages {
                // Round 0 writes every page; rounds 1 and 2 read it back from the tiers.
                for w in 0..8 {
                    let expect = value(p, w, 0);
                    // SAFETY: inside the mapping; the runtime serves the fault.
                    let got = unsafe { word(p, w).read_volatile() };
                    if round > 0 && got != expect {
                        return Err(format!(
                            "page {p} word {w} round {round}: {got:#x} != {expect:#x}"
                        ));
                    }
                    if round == 0 {
                        // SAFETY: as above.
                        unsafe { word(p, w).write_volatile(value(p, w, 0)) };
                    }
                }
            }
        }
        // Random re-reads.
        let mut x = 12345u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x % pages as u64) as usize;
            // SAFETY: as above.
            let got = unsafe { word(p, 3).read_volatile() };
            if got != value(p, 3, 0) {
                return Err(format!("random read of page {p}: {got:#x}"));
            }
        }
        Ok(())
    });
    let report = finish(dir, tm, worker, &failed);
    assert_eq!(report.zero_fills, pages as u64, "{report:#?}");
    // Every page beyond the budget left RAM at least once.
    assert!(report.evictions >= (pages - 128) as u64, "{report:#?}");
    assert!(report.per_tier[2].demand_faults > 0, "{report:#?}");
    assert!(report.per_tier[3].demand_faults > 0, "{report:#?}");
    // The budget plus the admission slack (a batch of evictions waiting and a batch
    // waiting to be punched), however slow the write-backs were.
    let bound = 64 + crate::engine::ADMISSION_SLACK as u64;
    assert!(report.per_tier[1].resident_pages <= bound, "{report:#?}");
}

/// Waits up to 10 s for the published report to satisfy `ok`.
fn wait_for_report(
    handle: &crate::runtime::BudgetHandle,
    what: &str,
    ok: impl Fn(&crate::metrics::TieringReport) -> bool,
) -> crate::metrics::TieringReport {
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = handle.snapshot() {
            if ok(&r) {
                return r;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{what}: {r:#?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_ram_budget_grows_and_shrinks_while_the_memory_is_in_use() {
    // RAM itself (tier 1) may hold 1 MiB; the budget starts at 64 pages.
    let tiers = "[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\n\
                 [tier2]\ncapacity = \"4M\"\nfile = \"t2.img\"\n";
    let pages = 256usize;
    let (dir, map, tm, failed) =
        start_host_only_over("budget-", pages, tiers, true, Box::new(Fifo::default()));
    let handle = tm.budget_handle();
    assert_eq!(
        handle.set_ram_budget(0),
        Err(crate::runtime::BudgetError::Zero)
    );
    let base = map.addr;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let word = |p: usize| (base + p * 4096) as *mut u64;
        let read_all = || {
            for p in 0..pages {
                // SAFETY: inside the mapping; the runtime serves the fault.
                let got = unsafe { word(p).read_volatile() };
                if got != value(p, 0, 0) {
                    return Err(format!("page {p}: {got:#x}"));
                }
            }
            Ok(())
        };
        for p in 0..pages {
            // SAFETY: as above.
            unsafe { word(p).write_volatile(value(p, 0, 0)) };
        }
        done_tx.send(()).unwrap();
        // Budget raised to every page: one pass brings them back, the next faults on none.
        go_rx.recv().unwrap();
        read_all()?;
        read_all()?;
        done_tx.send(()).unwrap();
        // Budget cut to 32 pages while this thread waited: the data is still all there.
        go_rx.recv().unwrap();
        read_all()
    });
    done_rx.recv().unwrap();
    // Evictions finish after the faults that caused them: a report taken as the last
    // zero fill lands can still have write-backs in flight (seen in a full suite's
    // run: 66 pages resident, 190 evictions done). Wait until the fill has settled.
    let filled = wait_for_report(&handle, "fill", |r| {
        r.zero_fills == pages as u64
            && r.per_tier[1].resident_pages + r.per_tier[0].resident_pages <= 64
            && r.evictions >= (pages - 64) as u64
    });

    handle.set_ram_budget(pages as u64).unwrap();
    wait_for_report(&handle, "grow", |r| r.ram_budget_pages == pages as u64);
    go_tx.send(()).unwrap();
    done_rx.recv().unwrap();
    let grown = wait_for_report(&handle, "reads", |r| {
        r.per_tier[1].resident_pages + r.per_tier[0].resident_pages == pages as u64
    });
    assert_eq!(
        grown.evictions, filled.evictions,
        "no eviction within the larger budget"
    );

    // No fault comes while the worker waits: the cut alone must evict.
    handle.set_ram_budget(32).unwrap();
    let shrunk = wait_for_report(&handle, "shrink", |r| {
        r.ram_budget_pages == 32
            && r.per_tier[1].resident_pages + r.per_tier[0].resident_pages <= 32
            && r.evictions >= grown.evictions + (pages - 32) as u64
    });
    go_tx.send(()).unwrap();
    let report = finish(dir, tm, worker, &failed);
    assert!(report.demand_faults > shrunk.demand_faults, "{report:#?}");
}

#[test]
fn a_paused_vm_is_neither_sampled_nor_windowed() {
    // Windows end every 10 ms of a running VM (the live window).
    let pages = 128usize;
    let (dir, map, tm, failed) = start_host_only("paused-", pages);
    let handle = tm.budget_handle();
    let base = map.addr;
    let worker = std::thread::spawn(move || {
        for p in 0..64 {
            // SAFETY: inside the mapping; the runtime serves the fault.
            unsafe { ((base + p * 4096) as *mut u64).write_volatile(p as u64) };
        }
        Ok(())
    });
    // The sampler zaps resident pages every 1 ms while the handler is idle.
    let sampled = |r: &crate::metrics::TieringReport| r.sampled_zaps;
    let before = wait_for_report(&handle, "sampling", |r| sampled(r) > 0);
    handle.set_paused(true);
    std::thread::sleep(std::time::Duration::from_millis(60));
    let paused = handle.snapshot().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let later = handle.snapshot().unwrap();
    assert_eq!(
        sampled(&later),
        sampled(&paused),
        "no sampling while paused"
    );
    assert_eq!(later.windows, paused.windows, "no window ends while paused");
    assert!(sampled(&paused) >= sampled(&before));
    handle.set_paused(false);
    wait_for_report(&handle, "sampling again", |r| {
        sampled(r) > sampled(&later) && r.windows > later.windows
    });
    finish(dir, tm, worker, &failed);
}

#[test]
fn sampled_pages_evicted_before_a_touch_are_counted_apart_from_samples() {
    // Pages written once and left alone: the sampler zaps some, and none is touched
    // again. A cut then evicts them, zapped ones first (they look unused to the policy),
    // and each is counted as evicted, not left pending or taken for a hit.
    let pages = 128usize;
    let (dir, map, tm, failed) = start_host_only("sample-evict-", pages);
    let handle = tm.budget_handle();
    let base = map.addr;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        for p in 0..64 {
            // SAFETY: inside the mapping; the runtime serves the fault.
            unsafe { ((base + p * 4096) as *mut u64).write_volatile(p as u64) };
        }
        done_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        Ok(())
    });
    done_rx.recv().unwrap();
    let sampled = wait_for_report(&handle, "sampling", |r| r.sampled_zaps >= 8);
    handle.set_ram_budget(4).unwrap();
    let cut = wait_for_report(&handle, "the cut", |r| {
        r.per_tier[1].resident_pages + r.per_tier[0].resident_pages <= 4
    });
    // (A page zapped between its zero fill and the retried write can count a hit.)
    assert!(sampled.sample_hits < sampled.sampled_zaps, "{sampled:#?}");
    assert!(cut.samples_evicted >= 1, "{cut:#?}");
    assert!(
        cut.samples_evicted + cut.sample_hits <= cut.sampled_zaps,
        "{cut:#?}"
    );
    go_tx.send(()).unwrap();
    finish(dir, tm, worker, &failed);
}

#[test]
fn pages_evicted_unchanged_are_not_written_again_and_changed_ones_are() {
    // No dirty log here (no VM), so every eviction used to write its page back. Now a
    // page whose content still matches its copy in the tier is dropped without I/O;
    // one rewritten since must be written, or round 3 reads stale data.
    let pages = 512usize;
    let (dir, map, tm, failed) = start_host_only("same-", pages);
    let base = map.addr;
    let worker = std::thread::spawn(move || {
        let word = |p: usize, w: usize| (base + p * 4096 + w * 512) as *mut u64;
        let expect = |p: usize| if p.is_multiple_of(2) { 2 } else { 0 };
        for round in 0..4u64 {
            for p in 0..pages {
                for w in 0..8 {
                    // SAFETY: inside the mapping; the runtime serves the fault.
                    let got = unsafe { word(p, w).read_volatile() };
                    let want = match round {
                        0 => None,
                        1 | 2 => Some(value(p, w, 0)),
                        _ => Some(value(p, w, expect(p))),
                    };
                    if want.is_some_and(|v| v != got) {
                        return Err(format!("round {round} page {p} word {w}: {got:#x}"));
                    }
                    if round == 0 || (round == 2 && p.is_multiple_of(2)) {
                        // SAFETY: as above.
                        unsafe { word(p, w).write_volatile(value(p, w, round)) };
                    }
                }
            }
        }
        Ok(())
    });
    let report = finish(dir, tm, worker, &failed);
    // Round 1 evicts unchanged pages, and round 2 the odd ones again.
    assert!(
        report.write_backs_skipped_unchanged >= (pages / 2) as u64,
        "{report:#?}"
    );
    // Every eviction wrote its page before; now fewer writes than evictions.
    let written: u64 = report.per_tier.iter().map(|t| t.bytes_written).sum();
    assert!(written / PAGE_SIZE < report.evictions, "{report:#?}");
}

/// FIFO that asks to watch a fixed set of pages and counts the touches it is shown.
struct Watching {
    fifo: Fifo,
    watch: Vec<PageNumber>,
    seen: Arc<Mutex<u64>>,
}

impl Advisor for Watching {
    fn name(&self) -> &str {
        "watching"
    }
    fn on_access(&mut self, a: &Access, resident: bool) {
        if resident
            && a.source == crate::access::AccessSource::SampledMinor
            && self.watch.contains(&a.page)
        {
            *self.seen.lock().unwrap() += 1;
        }
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        self.fifo.on_fill(page, prefetched);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.fifo.on_evict(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.fifo.victims(n, out);
    }
    fn prefetch(&mut self, _now: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        1.0
    }
    fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.watch.iter().take(max));
    }
}

#[test]
fn probed_pages_are_zapped_and_their_next_touch_reaches_the_advisor_data_intact() {
    let pages = 32usize;
    let seen = Arc::new(Mutex::new(0));
    let advisor = Watching {
        fifo: Fifo::default(),
        watch: (0..8).collect(),
        seen: seen.clone(),
    };
    let (_dir, map, tm, failed) = start_host_only_with("probe-", pages, true, Box::new(advisor));
    let word = |p: usize| (map.addr + p * 4096 + 16) as *mut u64;
    for p in 0..pages {
        // SAFETY: inside the mapping; the runtime serves the fault.
        unsafe { word(p).write_volatile(value(p, 2, 0)) };
    }
    // Everything fits the budget: only probes and random samples zap pages. Keep
    // reading the watched pages across many 1 ms sampling rounds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    while std::time::Instant::now() < deadline {
        for p in 0..8 {
            // SAFETY: as above.
            let got = unsafe { word(p).read_volatile() };
            assert_eq!(got, value(p, 2, 0), "page {p}");
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    assert_eq!(report.evictions, 0, "{report:#?}");
    assert!(report.probe_zaps >= 8, "{report:#?}");
    // A zapped page's next read is a MINOR fault the advisor is shown.
    let seen = *seen.lock().unwrap();
    assert!(seen >= 8, "watched pages seen {seen} times: {report:#?}");
    assert!(report.minor_faults >= seen, "{report:#?}");
}
