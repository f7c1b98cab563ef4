//! The latency model of the replay simulator: what a hit, a fault and a prefetch cost.

use tiering::backend::DeviceProfile;
use tiering::config::{self, TierBackendSpec, TierConfig};
use tiering::policy::{TierId, TIER_COUNT};

/// One storage tier as the simulator sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierTiming {
    /// Time from issuing a 4 KiB read until its data arrives.
    pub read_ns: u64,
    /// Transfer rate; requests to one tier queue behind each other at this rate.
    pub bytes_per_sec: u64,
}

/// Costs the simulator charges. Defaults: HOST-NOTES.md measurements for the
/// mechanism, published device figures for the tiers (see docs/replay.md).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// Tiers 0-5; entries 0 and 1 (RAM) are unused.
    pub tiers: [TierTiming; TIER_COUNT],
    /// An access to a resident page. Default 0: the trace clock already holds the
    /// time of accesses that hit (lackey counts their instructions; a live recording
    /// its wall time), so a hit adds no wait for paging.
    pub hit_ns: u64,
    /// userfaultfd MISSING fault handling on top of the read: 34.8 us measured
    /// (PVM vCPU sleep/wake plus UFFDIO_COPY).
    pub fault_overhead_ns: u64,
    /// The first touch of a sampled (zapped) resident page: MINOR fault + CONTINUE,
    /// 33 us measured.
    pub sample_fault_ns: u64,
    /// The first write to a page after a dirty-log harvest: KVM's write-protect
    /// fault, 2 us measured (HOST-NOTES); paid only with `--dirty-harvest`.
    pub write_protect_fault_ns: u64,
}

impl Default for LatencyModel {
    /// Tiers 2-4 use the live VMM's device-profile presets (`nvme`, `ssd`, `hdd` in
    /// tiering::backend::DeviceProfile: mean service time = latency + jitter / 2),
    /// so a replay and an emulated run agree; tier 5 (NBD) has no preset.
    fn default() -> Self {
        let ram = TierTiming {
            read_ns: 0,
            bytes_per_sec: 0,
        };
        Self {
            tiers: [
                ram,
                ram,
                TierTiming::from_profile(&DeviceProfile::nvme()),
                TierTiming::from_profile(&DeviceProfile::ssd()),
                TierTiming::from_profile(&DeviceProfile::hdd()),
                // Networked block store: assumed 1 ms per request over a busy network
                // and 100 MiB/s; a tier file with a custom profile replaces it.
                TierTiming {
                    read_ns: 1_000_000,
                    bytes_per_sec: 100 << 20,
                },
            ],
            hit_ns: 0,
            fault_overhead_ns: 35_000,
            sample_fault_ns: 33_000,
            write_protect_fault_ns: 2_000,
        }
    }
}

impl TierTiming {
    /// Mean read time and bandwidth of an emulated device.
    pub fn from_profile(p: &DeviceProfile) -> Self {
        Self {
            read_ns: (p.latency_us + p.jitter_us / 2) * 1000,
            bytes_per_sec: p
                .bandwidth_mib_s
                .map_or(0, |m| (m * (1u64 << 20) as f64) as u64),
        }
    }
}

impl LatencyModel {
    /// The model for a tier file: tiers with a device profile take its figures;
    /// tiers without one (a real device, an NBD export) keep the defaults, since
    /// the file does not say how fast they are. Also returns each tier's capacity
    /// in pages (0 for tiers the file leaves out: they do not exist).
    pub fn with_tier_file(
        mut self,
        file: &TierConfig,
        page_size: u64,
    ) -> (Self, [u64; TIER_COUNT]) {
        // A storage tier the file does not list does not exist (as in `tiervisor run`);
        // the policy's last resort, tier 5, still takes what no tier has room for.
        let mut capacity = [0; TIER_COUNT];
        for (i, spec) in file.tiers.iter().enumerate() {
            let Some(spec) = spec else { continue };
            capacity[i] = file.capacity_pages(i, page_size);
            let profile = match &spec.backend {
                TierBackendSpec::File { profile, .. } | TierBackendSpec::Device { profile, .. } => {
                    *profile
                }
                _ => None,
            };
            let timing = match profile {
                Some(config::DeviceProfile::Nvme) => {
                    TierTiming::from_profile(&DeviceProfile::nvme())
                }
                Some(config::DeviceProfile::Ssd) => TierTiming::from_profile(&DeviceProfile::ssd()),
                Some(config::DeviceProfile::Hdd) => TierTiming::from_profile(&DeviceProfile::hdd()),
                Some(config::DeviceProfile::Custom {
                    latency_us,
                    bandwidth_bytes_per_s,
                }) => TierTiming {
                    read_ns: latency_us * 1000,
                    bytes_per_sec: if bandwidth_bytes_per_s == u64::MAX {
                        0
                    } else {
                        bandwidth_bytes_per_s
                    },
                },
                None => continue,
            };
            if i >= 2 {
                self.tiers[i] = timing;
            }
        }
        (self, capacity)
    }

    /// Time to move one page over tier `t`'s link.
    pub fn transfer_ns(&self, t: TierId, page_size: u64) -> u64 {
        // Zero bandwidth means "not modelled" (RAM): no transfer time.
        page_size
            .saturating_mul(1_000_000_000)
            .checked_div(self.tiers[t as usize].bytes_per_sec)
            .unwrap_or(0)
    }
}

/// Per-tier device queues: prefetches and write-backs share a tier's bandwidth;
/// demand reads go first (io_uring priorities), so they pay only latency + transfer.
#[derive(Debug, Default)]
pub struct DeviceQueues {
    free_at: [u64; TIER_COUNT],
}

impl DeviceQueues {
    /// When a demand read from `from` issued at `now` completes.
    pub fn demand_read(&self, m: &LatencyModel, from: Option<TierId>, now: u64, page: u64) -> u64 {
        match from {
            None => now,
            Some(t) => now + m.tiers[t as usize].read_ns + m.transfer_ns(t, page),
        }
    }

    /// When a background read from `from` issued at `now` completes.
    pub fn background_read(
        &mut self,
        m: &LatencyModel,
        from: Option<TierId>,
        now: u64,
        page: u64,
    ) -> u64 {
        match from {
            None => now,
            Some(t) => {
                let done = self.occupy(m, t, now, page);
                done + m.tiers[t as usize].read_ns
            }
        }
    }

    /// A background write to `to` issued at `now` (it stalls nobody, it takes bandwidth).
    pub fn background_write(&mut self, m: &LatencyModel, to: TierId, now: u64, page: u64) {
        self.occupy(m, to, now, page);
    }

    fn occupy(&mut self, m: &LatencyModel, t: TierId, now: u64, page: u64) -> u64 {
        let slot = &mut self.free_at[t as usize];
        *slot = (*slot).max(now) + m.transfer_ns(t, page);
        *slot
    }
}
