//! `--metrics-out`: what a run cost and what the guest did, as JSON.
//!
//! [`RunMetrics::tiers`] is left for the tiering layer: it fills that section with
//! its own serializable report; runs without tiering leave it out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// VM exit counters, by reason, shared by all vCPU threads.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub hlt: AtomicU64,
    pub shutdown: AtomicU64,
    pub internal_error: AtomicU64,
    pub fail_entry: AtomicU64,
    pub system_event: AtomicU64,
    /// KVM_RUN interrupted by a signal (kicks) or immediate_exit.
    pub intr: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounters {
    /// Count one exit.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by name; `io` and `mmio` are the sums of their directions.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut m = BTreeMap::new();
        m.insert("io", get(&self.io_in) + get(&self.io_out));
        m.insert("io_in", get(&self.io_in));
        m.insert("io_out", get(&self.io_out));
        m.insert("mmio", get(&self.mmio_read) + get(&self.mmio_write));
        m.insert("hlt", get(&self.hlt));
        m.insert("shutdown", get(&self.shutdown));
        m.insert("internal_error", get(&self.internal_error));
        m.insert("fail_entry", get(&self.fail_entry));
        m.insert("system_event", get(&self.system_event));
        m.insert("intr", get(&self.intr));
        m.insert("other", get(&self.other));
        m
    }
}

/// The JSON document.
#[derive(Debug, Serialize)]
pub struct RunMetrics {
    /// Process start to the guest's first boot-timer write, in ms (null if the guest
    /// never wrote it).
    pub boot_ms: Option<f64>,
    /// Every boot-timer write, in ms since process start.
    pub boot_timer_marks_ms: Vec<f64>,
    /// Resident memory of the process not counting guest RAM, in KiB.
    pub vmm_overhead_kib: u64,
    /// Resident guest RAM, in KiB.
    pub guest_rss_kib: u64,
    /// Wall time from process start to the VM's end, in ms.
    pub run_ms: f64,
    /// tiervisor's exit status.
    pub exit_status: i32,
    /// Why the VM ended, in words.
    pub stop_reason: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Boot protocol used: "pvh" or "linux64".
    pub boot_protocol: &'static str,
    /// VM exits by reason.
    pub exits: BTreeMap<&'static str, u64>,
    /// Tiered-memory report, filled in by the tiering layer when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiers: Option<serde_json::Value>,
}

/// Resident memory of this process split into guest RAM and the rest, in KiB, from
/// /proc/self/smaps: mappings inside `guest_ranges` (host address, length) are guest.
pub fn resident_split(guest_ranges: &[(u64, u64)]) -> std::io::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(split_smaps(&smaps, guest_ranges))
}

/// (vmm_kib, guest_kib) from smaps text.
pub fn split_smaps(smaps: &str, guest_ranges: &[(u64, u64)]) -> (u64, u64) {
    let (mut vmm, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = guest_ranges
                    .iter()
                    .any(|&(g, len)| start >= g && end <= g + len);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            let kib: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if in_guest {
                guest += kib;
            } else {
                vmm += kib;
            }
        }
    }
    (vmm, guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_split_counts_guest_mapping_apart() {
        let text = "\
55d0a0000000-55d0a0100000 r-xp 00000000 08:01 123 /usr/bin/tiervisor
Size:               1024 kB
Rss:                 300 kB
7f0000000000-7f0004000000 rw-s 00000000 00:01 5 /memfd:tiervisor-guest-ram (deleted)
Size:              65536 kB
Rss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  20 kB
";
        let (vmm, guest) = split_smaps(text, &[(0x7f00_0000_0000, 64 << 20)]);
        assert_eq!((vmm, guest), (320, 2048));
    }

    #[test]
    fn own_process_has_resident_memory() {
        let (vmm, guest) = resident_split(&[]).unwrap();
        assert!(vmm > 0);
        assert_eq!(guest, 0);
    }

    #[test]
    fn metrics_serialize_with_required_fields() {
        let c = ExitCounters::default();
        ExitCounters::bump(&c.io_out);
        let m = RunMetrics {
            boot_ms: Some(1.5),
            boot_timer_marks_ms: vec![1.5],
            vmm_overhead_kib: 1000,
            guest_rss_kib: 10,
            run_ms: 20.0,
            exit_status: 0,
            stop_reason: "debug-exit 0".into(),
            vcpus: 1,
            memory_mib: 64,
            boot_protocol: "pvh",
            exits: c.snapshot(),
            tiers: None,
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["boot_ms"], 1.5);
        assert_eq!(v["vmm_overhead_kib"], 1000);
        assert_eq!(v["exits"]["io"], 1);
        assert!(v.get("tiers").is_none());
    }
}
