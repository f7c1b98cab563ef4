//! Tiered guest memory for `tiervisor run --tiers FILE --ram-budget SIZE`: hands the
//! VM's memfd-backed RAM to [`tiering::runtime::TieredMemory`], lends it the KVM dirty
//! log and a way to stop the VM, and pins vCPU threads next to the fault handler.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use tiering::access::{PageNumber, PAGE_SIZE};
use tiering::config::{parse_size, TierConfig, TierConfigError};
use tiering::layout::GuestRegion;
use tiering::runtime::{TieredMemory, TieringError, TieringOptions, VcpuRegistry, VmHooks};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::machine::Machine;
use crate::stop::{StopReason, VmStop};

/// `KVM_GET_DIRTY_LOG` = _IOW(KVMIO, 0x42, struct kvm_dirty_log).
const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_ae42;

/// Bad `--tiers` / `--ram-budget` / `--advisor` input (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum TieredInputError {
    #[error("{0}")]
    TierFile(#[from] TierConfigError),
    #[error("--ram-budget {0}: not a size (use e.g. 64M, 1G)")]
    Budget(String),
    #[error("--ram-budget needs --tiers FILE (where the pages beyond the budget go)")]
    BudgetWithoutTiers,
    #[error("--advisor {0} needs --tiers FILE (without tiers all guest memory is RAM and nothing is paged)")]
    AdvisorWithoutTiers(String),
    #[error("--advisor: {0}")]
    Advisor(String),
    #[error(
        "--cpu {given}: not a CPU this process may run on (its affinity mask allows {allowed})"
    )]
    Cpu { given: usize, allowed: String },
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(std::io::Error),
}

/// Failure to start tiering on a built VM (exit status 1, or 2 for a bad tier file).
#[derive(Debug, thiserror::Error)]
pub enum TieredStartError {
    #[error("tiered memory: {0}")]
    Start(#[from] TieringError),
    #[error("tiered memory: KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The parsed tiering arguments.
pub struct TieredRequest {
    pub tiers: TierConfig,
    pub ram_budget_bytes: Option<u64>,
    pub trace_out: Option<PathBuf>,
    pub advisor: String,
    /// `--share-dir`: content hashes shared with other VMs (page kind Shared).
    pub share_dir: Option<PathBuf>,
    /// `--cpu`: where the vCPUs and the fault handler run.
    pub cpus: CpuPlacement,
    /// Where evicted pages go by probability (`--policy`; the defaults otherwise).
    pub thresholds: tiering::policy::TierThresholds,
}

impl TieredRequest {
    /// Check the arguments; `None` when tiering is not asked for.
    pub fn from_args(
        tiers: Option<&PathBuf>,
        ram_budget: Option<&str>,
        trace_out: Option<&PathBuf>,
        advisor: &str,
        cpu: Option<usize>,
    ) -> Result<Option<Self>, TieredInputError> {
        let Some(path) = tiers else {
            if ram_budget.is_some() {
                return Err(TieredInputError::BudgetWithoutTiers);
            }
            if advisor != "none" {
                return Err(TieredInputError::AdvisorWithoutTiers(advisor.to_string()));
            }
            return Ok(None);
        };
        let tiers = TierConfig::load(path)?;
        let allowed = tiering::uffd::allowed_cpus().map_err(TieredInputError::Affinity)?;
        let cpus = CpuPlacement::new(allowed, cpu)?;
        let ram_budget_bytes = match ram_budget {
            Some(s) => Some(
                parse_size(s)
                    .filter(|&b| b >= PAGE_SIZE)
                    .ok_or_else(|| TieredInputError::Budget(s.to_string()))?,
            ),
            None => None,
        };
        Ok(Some(Self {
            tiers,
            ram_budget_bytes,
            trace_out: trace_out.cloned(),
            advisor: advisor.to_string(),
            share_dir: None,
            cpus,
            thresholds: tiering::policy::TierThresholds::default(),
        }))
    }
}

/// Where a tiered VM's threads run: the host CPUs this process may run on (its affinity
/// mask, as `taskset` or a cpuset set it), starting at `--cpu`. vCPU i runs on the i-th
/// of them, round the list; the fault handler beside vCPU 0, so that a fault is served
/// without a cross-CPU wake-up (`tiering::uffd::pin_current_thread`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlacement(Vec<usize>);

impl CpuPlacement {
    /// `first` (`--cpu`) must be one of `allowed`; `None` takes the first of them.
    /// Pinning outside the mask would move the threads off the CPUs the process was
    /// given (sched_setaffinity does not check), onto another VM's.
    pub fn new(allowed: Vec<usize>, first: Option<usize>) -> Result<Self, TieredInputError> {
        let start = match first {
            None => 0,
            Some(cpu) => {
                allowed
                    .iter()
                    .position(|&c| c == cpu)
                    .ok_or_else(|| TieredInputError::Cpu {
                        given: cpu,
                        allowed: cpu_list(&allowed),
                    })?
            }
        };
        let mut cpus = allowed;
        if cpus.is_empty() {
            // sched_getaffinity never reports an empty mask; run where the host puts us.
            cpus.push(first.unwrap_or(0));
        }
        cpus.rotate_left(start);
        Ok(Self(cpus))
    }

    /// The CPU of vCPU `vcpu`.
    pub fn of_vcpu(&self, vcpu: usize) -> usize {
        self.0[vcpu % self.0.len()]
    }

    /// The CPU of the fault handler (vCPU 0's).
    pub fn handler(&self) -> usize {
        self.0[0]
    }
}

/// CPU numbers as `taskset -c` writes them: "0-3,6".
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j == i {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(",")
    }
}

/// Which CPU each vCPU thread is pinned to, and where vCPU threads report their ids.
struct VcpuPinning {
    registry: VcpuRegistry,
    cpus: CpuPlacement,
}

static PINNING: OnceLock<VcpuPinning> = OnceLock::new();

/// The guest's CR3 (bit 0 set when known) and EFER.NXE (bit 1), for page-kind walks.
/// Read by the vCPU threads between runs: KVM_GET_SREGS cannot be asked of a vCPU
/// blocked in a fault, so the fault handler never asks itself.
static GUEST_PAGING: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static EXITS_SEEN: Cell<u32> = const { Cell::new(0) };
}

/// Called by a vCPU thread before each KVM_RUN: every 256th time (and until it is
/// known), note where the guest's page tables are.
pub fn observe_vcpu(vcpu: &kvm_ioctls::VcpuFd) {
    if PINNING.get().is_none() {
        return;
    }
    let n = EXITS_SEEN.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    if n % 256 != 1 && GUEST_PAGING.load(Ordering::Relaxed) != 0 {
        return;
    }
    if let Ok(sregs) = vcpu.get_sregs() {
        let paging = sregs.cr0 & (1 << 31) != 0;
        let long_mode = sregs.efer & (1 << 10) != 0;
        if paging && long_mode {
            let nxe = u64::from(sregs.efer & (1 << 11) != 0);
            GUEST_PAGING.store((sregs.cr3 & !0xfff) | 1 | (nxe << 1), Ordering::Relaxed);
        }
    }
}

/// Called by each vCPU thread as it starts: pin it ([`CpuPlacement`]) and tell the
/// fault handler its thread id.
pub fn on_vcpu_thread_start(vcpu: u8) {
    if let Some(p) = PINNING.get() {
        if let Err(e) = tiering::uffd::pin_current_thread(p.cpus.of_vcpu(usize::from(vcpu))) {
            log::warn!("cannot pin vCPU {vcpu}: {e}");
        }
        p.registry.register_current_thread(u16::from(vcpu));
    }
}

struct KvmHooks {
    vm_fd: File,
    /// (slot, guest page of the slot's start, pages)
    slots: Vec<(u32, PageNumber, u64)>,
    stop: Arc<VmStop>,
    bitmap: Vec<u64>,
}

#[repr(C)]
struct KvmDirtyLog {
    slot: u32,
    padding: u32,
    bitmap: *mut u64,
}

impl VmHooks for KvmHooks {
    fn has_dirty_log(&self) -> bool {
        true
    }

    fn harvest_dirty(&mut self, out: &mut Vec<PageNumber>) -> Result<(), String> {
        for &(slot, first_page, pages) in &self.slots {
            let words = pages.div_ceil(64) as usize;
            self.bitmap.clear();
            self.bitmap.resize(words, 0);
            let mut log = KvmDirtyLog {
                slot,
                padding: 0,
                bitmap: self.bitmap.as_mut_ptr(),
            };
            // SAFETY: KVM_GET_DIRTY_LOG writes one bit per page of the slot into a
            // buffer of at least that many bits (words * 64 >= pages).
            let r = unsafe { libc::ioctl(self.vm_fd.as_raw_fd(), KVM_GET_DIRTY_LOG, &mut log) };
            if r != 0 {
                return Err(format!(
                    "KVM_GET_DIRTY_LOG slot {slot}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            for (w, &bits) in self.bitmap.iter().enumerate() {
                let mut b = bits;
                while b != 0 {
                    let i = b.trailing_zeros() as u64;
                    out.push(first_page + w as u64 * 64 + i);
                    b &= b - 1;
                }
            }
        }
        Ok(())
    }

    fn fatal(&mut self, message: String) {
        if !self.stop.is_stopping() {
            self.stop.request(StopReason::TieredMemory(message));
        }
    }

    fn page_table_root(&self) -> Option<(u64, bool)> {
        let v = GUEST_PAGING.load(Ordering::Relaxed);
        (v & 1 != 0).then_some((v & !0xfff, v & 2 != 0))
    }
}

/// Which guest pages are in RAM, read with mincore(2) over guest RAM's mappings (a
/// page the fault handler evicted is punched out of the memfd). Valid while the
/// [`TieredVm`] it came from lives.
#[derive(Clone)]
pub struct GuestPages {
    /// (host address, bytes, first guest page) of each RAM region.
    regions: Vec<(usize, usize, PageNumber)>,
}

impl GuestPages {
    /// The guest pages now in RAM, in address order.
    pub fn resident(&self) -> Vec<PageNumber> {
        let mut out = Vec::new();
        let mut vec = Vec::new();
        for &(addr, len, first) in &self.regions {
            let pages = len.div_ceil(PAGE_SIZE as usize);
            vec.clear();
            vec.resize(pages, 0u8);
            // SAFETY: [addr, addr + len) is a mapping of guest RAM that lives as long as
            // the TieredVm; mincore writes one byte per page into `vec`, which has one
            // per page. It never touches the pages themselves (no fault is raised).
            let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
            if rc != 0 {
                log::warn!("mincore of guest RAM: {}", std::io::Error::last_os_error());
                continue;
            }
            out.extend(
                vec.iter()
                    .enumerate()
                    .filter(|(_, &v)| v & 1 != 0)
                    .map(|(i, _)| first + i as PageNumber),
            );
        }
        out
    }
}

/// Tiering attached to a VM; keeps the guest mappings alive until it has stopped.
pub struct TieredVm {
    memory: TieredMemory,
    pages: GuestPages,
    _mappings: GuestMemoryMmap,
}

impl TieredVm {
    /// Reads which guest pages are in RAM.
    pub fn guest_pages(&self) -> GuestPages {
        self.pages.clone()
    }

    /// Changes the RAM budget while the VM runs (`--ram-pool`).
    pub fn budget_handle(&self) -> tiering::runtime::BudgetHandle {
        self.memory.budget_handle()
    }

    /// Stop the fault handler (after the vCPUs stopped) and return the metrics section.
    pub fn finish(self) -> serde_json::Value {
        let report = self.memory.stop();
        serde_json::to_value(report).unwrap_or(serde_json::Value::Null)
    }
}

/// Turn KVM dirty logging on for every RAM slot (slots are numbered as vm.rs does:
/// one per region, in order).
fn enable_dirty_log(vm: &kvm_ioctls::VmFd, mem: &GuestMemoryMmap) -> Result<(), TieredStartError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| TieredStartError::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION (no host address)",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
        };
        // SAFETY: the same live mapping the slot already had; only the flags change.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|e| TieredStartError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION (dirty logging)",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    }
    Ok(())
}

/// Start tiered memory on a built (not yet running) VM.
pub fn attach(
    machine: &Machine,
    request: TieredRequest,
    advisor: Box<dyn tiering::advisor::Advisor>,
) -> Result<TieredVm, TieredStartError> {
    let ram = machine.guest_ram();
    let mut regions = Vec::new();
    let mut slots = Vec::new();
    let mut offset = 0u64;
    for (slot, r) in ram.memory.iter().enumerate() {
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| TieredStartError::Kvm {
                what: "guest region host address",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })? as usize;
        regions.push(GuestRegion {
            guest_addr: r.start_addr().0,
            host_addr: host,
            len: r.len(),
            file_offset: r.file_offset().map_or(offset, |f| f.start()),
        });
        slots.push((
            slot as u32,
            r.start_addr().0 / PAGE_SIZE,
            r.len() / PAGE_SIZE,
        ));
        offset += r.len();
    }
    let vm = machine.vm_fd();
    enable_dirty_log(vm, &ram.memory)?;
    // SAFETY: dup of the VM descriptor we hold; the new descriptor is owned by the File.
    let dup = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(TieredStartError::Kvm {
            what: "dup of the VM descriptor",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: dup is a fresh descriptor nobody else owns.
    let vm_fd = unsafe { File::from_raw_fd(dup) };
    let hooks = KvmHooks {
        vm_fd,
        slots,
        stop: machine.stop_handle(),
        bitmap: Vec::new(),
    };
    let guest_pages = ram.size / PAGE_SIZE;
    let budget = request
        .ram_budget_bytes
        .map_or(guest_pages, |b| b / PAGE_SIZE)
        .max(1);
    let mut options = TieringOptions::new(request.tiers, budget);
    options.trace_out = request.trace_out;
    options.share_dir = request.share_dir;
    options.thresholds = request.thresholds;
    options.advisor_name = request.advisor;
    options.handler_cpu = Some(request.cpus.handler());
    let memory = TieredMemory::start(
        &regions,
        ram.file.clone(),
        options,
        advisor,
        Box::new(hooks),
    )?;
    let _ = PINNING.set(VcpuPinning {
        registry: memory.vcpu_registry(),
        cpus: request.cpus.clone(),
    });
    let pages = GuestPages {
        regions: regions
            .iter()
            .map(|r| (r.host_addr, r.len as usize, r.guest_addr / PAGE_SIZE))
            .collect(),
    };
    Ok(TieredVm {
        memory,
        pages,
        _mappings: ram.memory.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_placement_stays_inside_the_affinity_mask() {
        // `taskset -c 1`: the default is CPU 1, not CPU 0 outside the mask.
        let only_1 = CpuPlacement::new(vec![1], None).unwrap();
        assert_eq!(
            (only_1.handler(), only_1.of_vcpu(0), only_1.of_vcpu(1)),
            (1, 1, 1)
        );
        let from_1 = CpuPlacement::new(vec![0, 1, 2, 3], Some(1)).unwrap();
        assert_eq!(
            (0..5).map(|v| from_1.of_vcpu(v)).collect::<Vec<_>>(),
            vec![1, 2, 3, 0, 1]
        );
        assert_eq!(from_1.handler(), 1);
        let err = CpuPlacement::new(vec![0, 1, 2, 5, 6], Some(4)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cpu 4: not a CPU this process may run on (its affinity mask allows 0-2,5-6)"
        );
    }
}
