//! The storage tiers (2-5) of a running VM: one backend each plus the allocation of
//! its page slots.

use std::time::{Duration, Instant};

use crate::backend::{
    self, FileBackend, FileConfig, IoCompletion, IoRequest, PageBuf, TierBackend,
};
use crate::config::{DeviceProfile, TierBackendSpec, TierConfig, TIER_COUNT};

/// Why the storage tiers could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tier {tier}: {source}")]
    Open {
        tier: usize,
        source: backend::OpenError,
    },
    #[error("tier {tier}: {detail}")]
    Unsupported { tier: usize, detail: String },
}

/// Slot numbers of one tier, handed out in rising order from where the last one was
/// taken (next fit, as the kernel's swap allocator does within a cluster): pages
/// evicted together get adjacent slots, so their write-backs, and the reads that
/// bring them back together, merge into one transfer each (`backend::MAX_RUN_PAGES`).
/// A LIFO free list scattered them once slots began to be reused.
pub(crate) struct Slots {
    capacity: u64,
    next_unused: u64,
    free: std::collections::BTreeSet<u64>,
    /// Where the next search starts: one past the last slot handed out.
    cursor: u64,
}

impl Slots {
    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            next_unused: 0,
            free: std::collections::BTreeSet::new(),
            cursor: 0,
        }
    }

    pub fn alloc(&mut self) -> Option<u64> {
        // Free slots lie below `next_unused`; past the cursor, they come first, then the
        // unused tail, then the free slots before the cursor.
        let slot = if let Some(&s) = self.free.range(self.cursor..).next() {
            self.free.remove(&s);
            s
        } else if self.next_unused < self.capacity {
            self.next_unused += 1;
            self.next_unused - 1
        } else {
            self.free.pop_first()?
        };
        self.cursor = slot + 1;
        Some(slot)
    }

    /// Mark slots `0..n` used (their content is already there). Only on a fresh set.
    pub fn reserve_prefix(&mut self, n: u64) -> bool {
        if self.next_unused != 0 || n > self.capacity {
            return false;
        }
        self.next_unused = n;
        self.cursor = n;
        true
    }

    pub fn release(&mut self, slot: u64) {
        debug_assert!(slot < self.next_unused);
        let fresh = self.free.insert(slot);
        debug_assert!(fresh, "slot {slot} released twice");
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// One storage tier: its backend and its slots.
pub(crate) struct Store {
    pub backend: Box<dyn TierBackend>,
    pub slots: Slots,
}

fn to_backend_profile(p: &DeviceProfile) -> backend::DeviceProfile {
    match p {
        DeviceProfile::Nvme => backend::DeviceProfile::nvme(),
        DeviceProfile::Ssd => backend::DeviceProfile::ssd(),
        DeviceProfile::Hdd => backend::DeviceProfile::hdd(),
        DeviceProfile::Custom {
            latency_us,
            bandwidth_bytes_per_s,
        } => {
            let mut d = backend::DeviceProfile::nvme();
            d.latency_us = *latency_us;
            d.jitter_us = 0;
            d.bandwidth_mib_s = (*bandwidth_bytes_per_s != u64::MAX)
                .then(|| *bandwidth_bytes_per_s as f64 / (1u64 << 20) as f64);
            d
        }
    }
}

/// Open every storage tier the config names. Entries 0 and 1 (RAM) stay `None`.
pub(crate) fn open_stores(config: &TierConfig) -> Result<Vec<Option<Store>>, StoreError> {
    let mut stores: Vec<Option<Store>> = (0..TIER_COUNT).map(|_| None).collect();
    for (tier, spec) in config.tiers.iter().enumerate() {
        let Some(spec) = spec else { continue };
        let pages = spec.capacity_bytes / backend::PAGE_SIZE as u64;
        let backend: Box<dyn TierBackend> = match &spec.backend {
            TierBackendSpec::Ram => continue,
            TierBackendSpec::File { path, profile } | TierBackendSpec::Device { path, profile } => {
                let mut fc = FileConfig::new(path.clone(), pages);
                if let Some(p) = profile {
                    fc = fc.with_profile(to_backend_profile(p));
                }
                Box::new(
                    FileBackend::open(&fc).map_err(|source| StoreError::Open { tier, source })?,
                )
            }
            TierBackendSpec::Nbd { address, export } => {
                open_nbd(tier, address, export, pages, NBD_CONNECT_TIMEOUT)?
            }
        };
        stores[tier] = Some(Store {
            slots: Slots::new(backend.capacity_pages().min(pages)),
            backend,
        });
    }
    Ok(stores)
}

/// A second instance of every storage tier for the migrator thread: its own
/// descriptor and io_uring on the same file or device, or its own connection to the
/// same NBD export. `qemu-nbd` serves one client unless started with `-e N`
/// (`--shared`); if the second connection is refused or not answered within
/// [`MIGRATOR_NBD_TIMEOUT`] the tier is `None` and the handler migrates it itself.
pub(crate) fn open_migrator_backends(
    config: &TierConfig,
) -> Result<Vec<Option<Box<dyn TierBackend>>>, StoreError> {
    let mut backends: Vec<Option<Box<dyn TierBackend>>> = (0..TIER_COUNT).map(|_| None).collect();
    for (tier, spec) in config.tiers.iter().enumerate() {
        let Some(spec) = spec else { continue };
        let pages = spec.capacity_bytes / backend::PAGE_SIZE as u64;
        if let TierBackendSpec::File { path, profile } | TierBackendSpec::Device { path, profile } =
            &spec.backend
        {
            let mut fc = FileConfig::new(path.clone(), pages);
            if let Some(p) = profile {
                fc = fc.with_profile(to_backend_profile(p));
            }
            let b = FileBackend::open(&fc).map_err(|source| StoreError::Open { tier, source })?;
            backends[tier] = Some(Box::new(b));
        } else if let TierBackendSpec::Nbd { address, export } = &spec.backend {
            match open_nbd(tier, address, export, pages, MIGRATOR_NBD_TIMEOUT) {
                Ok(b) => backends[tier] = Some(b),
                Err(e) => log::info!(
                    "{e}: no NBD connection of its own for the migrator, so the fault \
                     handler migrates tier {tier} (start qemu-nbd with -e 2)"
                ),
            }
        }
    }
    Ok(backends)
}

/// How long the migrator waits for its own NBD connection before leaving the tier to
/// the handler: a server that allows one client does not answer the handshake.
const MIGRATOR_NBD_TIMEOUT: Duration = Duration::from_secs(1);

fn open_nbd(
    tier: usize,
    address: &crate::config::NbdAddress,
    export: &str,
    pages: u64,
    timeout: Duration,
) -> Result<Box<dyn TierBackend>, StoreError> {
    let address = match address {
        crate::config::NbdAddress::Unix(p) => backend::NbdAddress::Unix(p.clone()),
        crate::config::NbdAddress::Tcp(hp) => {
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(hp.as_str())
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StoreError::Unsupported {
                    tier,
                    detail: format!("cannot resolve NBD address tcp:{hp}"),
                })?;
            backend::NbdAddress::Tcp(resolved)
        }
    };
    let mut config = backend::NbdConfig::new(address, export);
    config.capacity_pages = Some(pages);
    config.connect_timeout = timeout;
    let b = backend::NbdBackend::connect(&config)
        .map_err(|source| StoreError::Open { tier, source })?;
    Ok(Box::new(b))
}

/// Connecting the handler's NBD tier (the backend's default).
const NBD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a demand read may take before it counts as failed (an HDD profile with a
/// deep queue stays far below this; a hung NBD server does not).
const DEMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Run one request to completion on `store`, handing completions of other requests
/// that arrive meanwhile to `others`. Used for demand reads: the backend issues a
/// Demand request ahead of queued prefetches and write-backs.
///
/// For the first `spin` the caller polls the backend instead of sleeping on it: a vCPU
/// is stalled on this read, and on this PVM host a CPU that goes idle meanwhile halts,
/// so the wake-ups cost tens of microseconds a fault (docs/tiering.md, "Spinning on
/// demand reads").
pub(crate) fn run_blocking(
    store: &mut Store,
    req: IoRequest,
    spin: Duration,
    others: &mut Vec<IoCompletion>,
) -> IoCompletion {
    let IoRequest {
        op,
        slot,
        priority,
        tag,
        ..
    } = req;
    if let Err(e) = store.backend.submit(req) {
        let backend::SubmitError { error, request } = e;
        return IoCompletion {
            tag,
            op,
            slot,
            priority,
            result: Err(error),
            buf: request.buf,
            latency_ns: 0,
        };
    }
    let started = Instant::now();
    let mut got = Vec::new();
    loop {
        got.clear();
        if started.elapsed() < spin {
            // A pure spin: with a yield every 20 us the guest ran about 17% longer
            // (docs/tiering.md), and the scheduler still preempts the spin for other
            // threads on this CPU at the end of its slice.
            store.backend.poll(&mut got);
            if got.is_empty() {
                std::hint::spin_loop();
                continue;
            }
        } else {
            store.backend.wait(&mut got, Duration::from_millis(50));
        }
        let mut mine = None;
        for c in got.drain(..) {
            if c.tag == tag && mine.is_none() {
                mine = Some(c);
            } else {
                others.push(c);
            }
        }
        if let Some(c) = mine {
            return c;
        }
        if started.elapsed() > DEMAND_TIMEOUT {
            // The request may still complete later; its tag is then unknown and ignored.
            return IoCompletion {
                tag,
                op,
                slot,
                priority,
                result: Err(backend::BackendError::Timeout {
                    waited: DEMAND_TIMEOUT,
                }),
                buf: PageBuf::new(),
                latency_ns: started.elapsed().as_nanos() as u64,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{collect_all, pattern, submit_pattern_writes, TempDir};
    use crate::backend::{IoOp, IoPriority, PagePool};

    /// Slots come in rising order from the last one taken, reusing freed ones on the
    /// way, so consecutive allocations are adjacent wherever the free space is.
    #[test]
    fn slots_are_handed_out_next_fit() {
        let mut slots = Slots::new(8);
        let first: Vec<u64> = (0..6).map(|_| slots.alloc().expect("room")).collect();
        assert_eq!(first, [0, 1, 2, 3, 4, 5]);
        for s in [4, 1, 2] {
            slots.release(s);
        }
        // Past the cursor first (the unused tail), then around to the freed 1, 2, 4.
        let next: Vec<u64> = (0..5).map(|_| slots.alloc().expect("room")).collect();
        assert_eq!(next, [6, 7, 1, 2, 4]);
        assert_eq!(slots.alloc(), None);
        slots.release(3);
        assert_eq!(slots.alloc(), Some(3));
        assert!(!slots.reserve_prefix(1), "only on a fresh set");
    }

    /// A demand read comes back with its page whether it completes while the caller
    /// spins or after the spin, when the caller sleeps on the backend; completions of
    /// other requests that arrive meanwhile go to `others`.
    #[test]
    fn demand_reads_complete_during_and_after_the_spin() {
        let dir = TempDir::new("run-blocking");
        let profile = backend::DeviceProfile::parse("latency_us=2000").expect("profile");
        let config = FileConfig::new(dir.0.join("t.img"), 8).with_profile(profile);
        let mut store = Store {
            backend: Box::new(FileBackend::open(&config).expect("open")),
            slots: Slots::new(8),
        };
        let pool = PagePool::new(8);
        submit_pattern_writes(store.backend.as_mut(), &pool, 0..4);
        for c in collect_all(store.backend.as_mut(), 4) {
            c.result.expect("write");
        }
        // 2 ms of emulated latency: a 100 us spin runs out, a 50 ms one does not.
        for (slot, spin) in [
            (1, Duration::from_micros(100)),
            (2, Duration::from_millis(50)),
        ] {
            let mut others = Vec::new();
            store
                .backend
                .submit(IoRequest {
                    op: IoOp::Read,
                    slot: 3,
                    buf: pool.get(),
                    priority: IoPriority::Prefetch,
                    tag: 100 + slot,
                })
                .expect("submit prefetch");
            let demand = IoRequest {
                op: IoOp::Read,
                slot,
                buf: pool.get(),
                priority: IoPriority::Demand,
                tag: slot,
            };
            let done = run_blocking(&mut store, demand, spin, &mut others);
            done.result.expect("demand read");
            assert_eq!(done.tag, slot);
            assert!(
                done.buf[..] == pattern(&pool, slot, 1)[..],
                "slot {slot}: wrong page"
            );
            assert!(done.latency_ns >= 2_000_000, "faster than the profile");
            let mut rest = others;
            if rest.is_empty() {
                rest = collect_all(store.backend.as_mut(), 1);
            }
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].tag, 100 + slot);
        }
    }
}
