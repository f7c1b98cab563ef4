//! `make bench-fault`: the cost of a demand fault served from tier 2 by tiervisor's
//! fault path, against the raw cost of the same work (userfaultfd MISSING event,
//! O_DIRECT read of the page, UFFDIO_COPY) done by a minimal handler, in one run.
//!
//! Both sides: a memfd mapping registered with userfaultfd, a toucher thread reading
//! the pages in the same shuffled order, the handler pinned to the toucher's CPU, the
//! pages' data in a raw file (no device profile) read with O_DIRECT. The two sides
//! alternate in rounds so that a noisy host hurts both alike. No VM is involved: on
//! this PVM host a VM adds its own vCPU sleep/wake to both (see docs/tiering.md).
//!
//! Usage: bench_fault [PAGES_PER_ROUND] [ROUNDS] [WORKDIR]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;
use tiering::config::TierConfig;
use tiering::layout::GuestRegion;
use tiering::runtime::{HostOnlyHooks, TieredMemory, TieringOptions};
use tiering::uffd::{pin_current_thread, GuestUffd};

const PAGE: usize = 4096;
const CPU: usize = 0;

/// Never asked for victims here: the budget holds every page.
struct NoAdvice;
impl Advisor for NoAdvice {
    fn name(&self) -> &str {
        "none"
    }
    fn on_access(&mut self, _: &Access, _: bool) {}
    fn on_fill(&mut self, _: PageNumber, _: bool) {}
    fn on_evict(&mut self, _: PageNumber) {}
    fn victims(&mut self, _: usize, _: &mut Vec<PageNumber>) {}
    fn prefetch(&mut self, _: u64, _: usize, _: &mut Vec<PageNumber>) {}
    fn probability(&self, _: PageNumber) -> f32 {
        1.0
    }
}

struct Mapping {
    file: Arc<File>,
    addr: usize,
    len: usize,
}

impl Mapping {
    fn new(pages: usize) -> Mapping {
        let len = pages * PAGE;
        let name = std::ffi::CString::new("bench-fault").unwrap();
        // SAFETY: valid name; result checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: fresh descriptor owned by nobody else.
        let file = Arc::new(unsafe { File::from_raw_fd(fd) });
        file.set_len(len as u64).unwrap();
        // SAFETY: shared mapping of the whole file; unmapped in drop.
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
        assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
        Mapping {
            file,
            addr: addr as usize,
            len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

fn stamp(page: usize) -> u64 {
    0x7469_6572_0000_0000 ^ page as u64
}

/// Touch every page in `order`; returns the per-touch latencies in ns.
fn touch_all(base: usize, order: &[usize]) -> Vec<u64> {
    pin_current_thread(CPU).ok();
    let mut lat = Vec::with_capacity(order.len());
    for &p in order {
        let t = Instant::now();
        // SAFETY: inside the mapping; the fault handler under test fills it.
        let v = unsafe { ((base + p * PAGE) as *const u64).read_volatile() };
        lat.push(t.elapsed().as_nanos() as u64);
        assert_eq!(v, stamp(p), "page {p} has wrong content");
    }
    lat
}

/// The raw cost: a minimal handler doing exactly event -> O_DIRECT read -> COPY.
fn raw_round(tier_path: &std::path::Path, order: &[usize], pages: usize) -> Vec<u64> {
    let map = Mapping::new(pages);
    let uffd = Arc::new(GuestUffd::new().unwrap());
    uffd.register(map.addr, map.len).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(tier_path)
        .unwrap();
    let base = map.addr;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (u2, d2) = (uffd.clone(), done.clone());
    let handler = std::thread::spawn(move || {
        pin_current_thread(CPU).ok();
        let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap();
        // SAFETY: non-zero size layout; freed below.
        let buf = unsafe { std::alloc::alloc(layout) };
        // SAFETY: buf is PAGE bytes, exclusively ours.
        let page = unsafe { std::slice::from_raw_parts_mut(buf, PAGE) };
        let mut fds = [libc::pollfd {
            fd: u2.raw().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        while !d2.load(std::sync::atomic::Ordering::Acquire) {
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 10) };
            while let Ok(Some(userfaultfd::Event::Pagefault { addr, .. })) = u2.raw().read_event() {
                let p = (addr as usize - base) / PAGE;
                file.read_exact_at(page, (p * PAGE) as u64).unwrap();
                u2.copy_page(page, base + p * PAGE).unwrap();
            }
        }
        // SAFETY: allocated above with the same layout.
        unsafe { std::alloc::dealloc(buf, layout) };
    });
    let order2 = order.to_vec();
    let lat = std::thread::spawn(move || touch_all(base, &order2))
        .join()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    handler.join().unwrap();
    uffd.unregister(map.addr, map.len);
    lat
}

/// tiervisor's fault path: TieredMemory with guest memory starting in tier 2.
fn tiered_round(dir: &std::path::Path, order: &[usize], pages: usize) -> (Vec<u64>, f64) {
    let map = Mapping::new(pages);
    let text = format!(
        "[tier1]\ncapacity = \"{}K\"\nbackend = \"ram\"\n[tier2]\ncapacity = \"{}K\"\nfile = \"tier2.img\"\n",
        pages * 4,
        pages * 4
    );
    let tiers = TierConfig::parse("bench.toml", &text, dir).unwrap();
    let mut options = TieringOptions::new(tiers, pages as u64);
    options.initial_tier = Some(2);
    options.sample_pages = 0;
    options.handler_cpu = Some(CPU);
    let regions = [GuestRegion {
        guest_addr: 0,
        host_addr: map.addr,
        len: map.len as u64,
        file_offset: 0,
    }];
    let failed = Arc::new(Mutex::new(None));
    let tm = TieredMemory::start(
        &regions,
        map.file.clone(),
        options,
        Box::new(NoAdvice),
        Box::new(HostOnlyHooks {
            failed: failed.clone(),
        }),
    )
    .unwrap();
    let base = map.addr;
    let order2 = order.to_vec();
    let lat = std::thread::spawn(move || touch_all(base, &order2))
        .join()
        .unwrap();
    let report = tm.stop();
    assert!(failed.lock().unwrap().is_none());
    assert_eq!(report.per_tier[2].demand_faults, order.len() as u64);
    (lat, report.per_tier[2].fault_latency_p50_us)
}

fn pct(v: &mut [u64], q: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pages: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4096);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::path::PathBuf::from(
        args.get(3)
            .cloned()
            .unwrap_or_else(|| "target/bench-fault".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    // The tier-2 image: page i in slot i, written once through the page cache.
    let image = dir.join("tier2.img");
    {
        let f = File::create(&image).unwrap();
        let mut block = vec![0u8; PAGE];
        for p in 0..pages {
            block[..8].copy_from_slice(&stamp(p).to_le_bytes());
            f.write_all_at(&block, (p * PAGE) as u64).unwrap();
        }
        f.sync_all().unwrap();
    }
    // One shuffled order (xorshift), the same for both sides.
    let mut order: Vec<usize> = (0..pages).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let (mut raw, mut tiered, mut service) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.extend(raw_round(&image, &order, pages));
        let (lat, p50) = tiered_round(&dir, &order, pages);
        tiered.extend(lat);
        service.push(p50);
    }
    let (r50, r99) = (pct(&mut raw, 0.5), pct(&mut raw, 0.99));
    let (t50, t99) = (pct(&mut tiered, 0.5), pct(&mut tiered, 0.99));
    service.sort_by(f64::total_cmp);
    println!("demand fault from tier 2 (raw file, O_DIRECT, no profile), {pages} pages x {rounds} rounds, handler and toucher on CPU {CPU}, no VM");
    println!("  raw (event + O_DIRECT read + UFFDIO_COPY): p50 {r50:.1} us  p99 {r99:.1} us");
    println!("  tiervisor fault path:                      p50 {t50:.1} us  p99 {t99:.1} us  (handler-side service p50 {:.1} us)", service[service.len() / 2]);
    println!(
        "  ratio tiervisor/raw: p50 {:.2}x  p99 {:.2}x  (target <= 1.2x)",
        t50 / r50,
        t99 / r99
    );
    std::fs::remove_file(&image).ok();
}
