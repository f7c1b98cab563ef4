//! Whether other work shares the fault handler's CPU. The handler spins on a demand
//! read (docs/tiering.md, "Spinning on demand reads") because its vCPU, stalled on
//! the read, leaves the CPU idle meanwhile. When another VM runs on the same CPU the
//! spin takes that VM's time instead: two VMs on one CPU ran 10-15% slower with it
//! (docs/benchmarks.md, "Several VMs in one RAM budget"). So the handler looks at its
//! CPU every [`CHECK_INTERVAL`], and sleeps on reads while others use a fair part of it.

use std::time::{Duration, Instant};

/// How often the CPU's use is read (two small /proc files per thread and one for the
/// CPU; /proc/stat counts in 10 ms ticks, so a shorter interval would be mostly noise).
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Others' share of the CPU above which it counts as shared...
const SHARED_ABOVE: f64 = 0.25;
/// ...and below which it counts as this VM's again (apart, so that a share near one
/// bound does not flip the mode every interval).
const ALONE_BELOW: f64 = 0.10;

/// The CPU's busy and total time and this VM's threads' time on it, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    pub busy: u64,
    pub total: u64,
    pub own: u64,
}

/// Watches one host CPU (the handler's, which its vCPU 0 shares).
pub(crate) struct CpuShareProbe {
    cpu: usize,
    /// The whole process may run on this CPU only (`taskset`, a cpuset): all its
    /// threads' time counts as its own, the migrator's and a learner's too.
    whole_process: bool,
    last: Option<CpuTicks>,
    last_at: Instant,
    shared: bool,
}

impl CpuShareProbe {
    pub fn new(cpu: usize) -> Self {
        Self {
            cpu,
            whole_process: crate::uffd::allowed_cpus().is_ok_and(|c| c == [cpu]),
            last: None,
            last_at: Instant::now(),
            shared: false,
        }
    }

    /// Whether others used a fair part of the CPU at the last check.
    pub fn shared(&self) -> bool {
        self.shared
    }

    pub fn due(&self) -> bool {
        self.since_check() >= CHECK_INTERVAL
    }

    pub fn since_check(&self) -> Duration {
        self.last_at.elapsed()
    }

    /// Reads the CPU's and this VM's time since the last check and updates
    /// [`Self::shared`]. This VM's time is its whole process's when the process may
    /// run on this CPU only, else its threads `tids` (pinned here). A /proc file that
    /// cannot be read leaves the judgement as it was.
    pub fn check(&mut self, tids: &[i32]) {
        self.last_at = Instant::now();
        let own = if self.whole_process { None } else { Some(tids) };
        let Some(now) = read_ticks(self.cpu, own) else {
            return;
        };
        if let Some(last) = self.last.replace(now) {
            if let Some(share) = others_share(last, now) {
                self.shared = next_shared(self.shared, share);
            }
        }
    }
}

/// Others' share of the CPU between two readings: its busy time less this VM's
/// threads', over its total; `None` when no tick passed.
pub(crate) fn others_share(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let own = after.own.saturating_sub(before.own);
    Some(busy.saturating_sub(own) as f64 / total as f64)
}

/// The judgement after a reading, with hysteresis between the two bounds.
pub(crate) fn next_shared(shared: bool, others: f64) -> bool {
    if shared {
        others >= ALONE_BELOW
    } else {
        others > SHARED_ABOVE
    }
}

/// `tids`: the threads whose time is this VM's; `None` for the whole process.
fn read_ticks(cpu: usize, tids: Option<&[i32]>) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, total) = cpu_ticks(&stat, cpu)?;
    let own = match tids {
        // The process's line sums all its threads.
        None => thread_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?,
        Some(tids) => {
            let mut own = 0;
            for tid in tids {
                let path = format!("/proc/self/task/{tid}/stat");
                own += thread_ticks(&std::fs::read_to_string(path).ok()?)?;
            }
            own
        }
    };
    Some(CpuTicks { busy, total, own })
}

/// (busy, total) ticks of `cpu` from /proc/stat: busy is user, nice, system, irq and
/// softirq; total adds idle and iowait. Steal (time the hypervisor under this host
/// took) is in neither: it is no one's on this host.
pub(crate) fn cpu_ticks(proc_stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{cpu}");
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Some((busy, busy + field(3) + field(4)))
}

/// utime + stime ticks from a /proc/PID/stat or /proc/PID/task/TID/stat line (the command name, in
/// parentheses, may hold spaces: fields are counted after its closing parenthesis).
pub(crate) fn thread_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the line, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cpus_ticks_and_a_threads_ticks() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                    cpu0 7 1 2 50 3 4 5 6 0 0\n\
                    cpu1 3 0 8 50 0 0 0 0 0 0\n";
        assert_eq!(cpu_ticks(stat, 0), Some((7 + 1 + 2 + 4 + 5, 19 + 50 + 3)));
        assert_eq!(cpu_ticks(stat, 1), Some((11, 61)));
        assert_eq!(cpu_ticks(stat, 2), None);
        let thread = "4242 (tier faults) S 1 2 3 0 -1 4194624 10 0 0 0 37 5 0 0 20 0 9 0";
        assert_eq!(thread_ticks(thread), Some(42));
        assert_eq!(thread_ticks("garbage"), None);
    }

    #[test]
    fn a_cpu_is_shared_while_others_use_a_fair_part_of_it() {
        let at = |busy, total, own| CpuTicks { busy, total, own };
        // Alone: the CPU was busy with this VM's threads only.
        let alone = others_share(at(0, 0, 0), at(90, 100, 88)).unwrap();
        assert!(alone < 0.05);
        // Beside another VM: half the CPU went to it.
        let beside = others_share(at(0, 0, 0), at(100, 100, 50)).unwrap();
        assert!((beside - 0.5).abs() < 1e-9);
        assert_eq!(others_share(at(5, 100, 0), at(5, 100, 0)), None);
        assert!(!next_shared(false, alone));
        assert!(next_shared(false, beside));
        // Hysteresis: between the bounds the judgement stays as it was.
        assert!(next_shared(true, 0.2));
        assert!(!next_shared(false, 0.2));
        assert!(!next_shared(true, 0.05));
    }

    #[test]
    fn this_hosts_proc_files_parse() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let cpu = (0..1024)
            .find(|&c| {
                std::fs::read_to_string("/proc/stat")
                    .ok()
                    .and_then(|s| cpu_ticks(&s, c))
                    .is_some()
            })
            .expect("/proc/stat lists a CPU");
        assert!(read_ticks(cpu, Some(&[tid])).is_some());
        assert!(read_ticks(cpu, None).is_some());
    }
}
