//! Starting the other CPUs and sharing a run between them.
//!
//! The BSP reads the MADT for the number of CPUs, copies the 16-bit trampoline below
//! 1 MiB and sends INIT-SIPI-SIPI to all other CPUs. Each AP goes through the same
//! long-mode path as the BSP (boot.rs) and arrives at CPL3 in [`ap_main`]. A CPU owns the
//! pages (kv: keys) whose index modulo the CPU count is its own; all CPUs replay the
//! same operation stream, so the result does not depend on how many there are.

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use testguest::acpi::{self, PhysMem};
use testguest::engine::{Arena, Totals};
use testguest::latency::{cycles_to_ns, Histogram, BUCKETS};
use testguest::startinfo::{MemmapEntry, StartInfo, MEMMAP_RAM};

use crate::boot::{self, MAX_CPUS, TRAMPOLINE_ADDR};
use crate::hw::{self, exit_code};

/// How long the BSP waits for APs to check in.
const AP_WAIT_US: u64 = 200_000;

/// APs that reached [`ap_main`].
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// CPUs taking part (0 until the BSP has decided).
static CPUS: AtomicU32 = AtomicU32::new(0);
/// 0 = wait, 1 = fill, 2 = run.
static PHASE: AtomicU32 = AtomicU32::new(0);
/// APs done with the current phase.
static FILLED: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
/// The shared run (an `Arena` on the BSP's stack, which never returns).
static ARENA: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Per-CPU results.
static OPS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WRITES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CHECKSUM: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per-CPU operation times: histogram bucket counts and the largest.
static LATENCY: [[AtomicU64; BUCKETS]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; BUCKETS] }; MAX_CPUS];
static LATENCY_MAX: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// TSC at the start and end of the operations.
static START_TSC: AtomicU64 = AtomicU64::new(0);
static END_TSC: AtomicU64 = AtomicU64::new(0);

/// Identity-mapped guest memory below 4 GiB, for the ACPI parser.
struct GuestMem;

impl PhysMem for GuestMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > 1 << 32 {
            return false;
        }
        for (offset, byte) in buf.iter_mut().enumerate() {
            // SAFETY: below 4 GiB everything is identity-mapped; ACPI tables are
            // plain memory the VMM wrote.
            *byte = unsafe { ((addr + offset as u64) as *const u8).read_volatile() };
        }
        true
    }
}

fn wait_until(condition: impl Fn() -> bool) {
    while !condition() {
        core::hint::spin_loop();
    }
}

/// What the CPU start-up found and did.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// CPUs taking part in the run.
    pub cpus: u32,
    /// Enabled processors the MADT lists (0 when there is no MADT).
    pub listed: usize,
}

/// Starts the APs the MADT lists and reports how many CPUs take part (1 without ACPI).
pub fn start_aps(info: &StartInfo, map: &[MemmapEntry], tsc_hz: u64) -> Started {
    let (wanted, listed) = match acpi::cpus(&GuestMem, info.rsdp_paddr) {
        // The LAPIC must be in the boot map's uncached top GiB below 4 GiB.
        Some(cpus) if cpus.count > 1 && (3 << 30..1 << 32).contains(&cpus.lapic_addr) => {
            (cpus, cpus.count)
        }
        other => {
            CPUS.store(1, Ordering::Release);
            return Started {
                cpus: 1,
                listed: other.map_or(0, |c| c.count),
            };
        }
    };
    let code = boot::trampoline();
    let page_is_ram = map.iter().any(|e| {
        e.kind == MEMMAP_RAM
            && e.addr <= TRAMPOLINE_ADDR
            && e.addr + e.size >= TRAMPOLINE_ADDR + code.len() as u64
    });
    if !page_is_ram {
        CPUS.store(1, Ordering::Release);
        return Started { cpus: 1, listed };
    }
    // SAFETY: the trampoline page is RAM below 1 MiB that the guest no longer needs
    // (the start info, command line and memory map were copied before this).
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE_ADDR as *mut u8, code.len());
    }
    let expected = (wanted.count.min(MAX_CPUS) - 1) as u32;
    hw::lapic::start_all_aps(wanted.lapic_addr, tsc_hz, (TRAMPOLINE_ADDR >> 12) as u8);
    let deadline = hw::rdtsc() + tsc_hz / 1_000_000 * AP_WAIT_US;
    while ONLINE.load(Ordering::Acquire) < expected && hw::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    // APs index themselves 1, 2, ... in arrival order; late ones are left out.
    let cpus = 1 + ONLINE.load(Ordering::Acquire).min(expected);
    CPUS.store(cpus, Ordering::Release);
    Started { cpus, listed }
}

fn store_totals(cpu: u32, totals: Totals, latency: &Histogram) {
    let cpu = cpu as usize;
    OPS[cpu].store(totals.ops, Ordering::Relaxed);
    WRITES[cpu].store(totals.writes, Ordering::Relaxed);
    CHECKSUM[cpu].store(totals.checksum, Ordering::Relaxed);
    for (slot, &n) in LATENCY[cpu].iter().zip(latency.counts().iter()) {
        slot.store(n, Ordering::Relaxed);
    }
    LATENCY_MAX[cpu].store(latency.max(), Ordering::Relaxed);
}

fn run_share(arena: &Arena<'_>, cpu: u32, cpus: u32, latency: &mut Histogram) -> Totals {
    match arena.run(cpu, cpus, latency, hw::rdtsc) {
        Ok(totals) => totals,
        Err(failure) => crate::fail(exit_code::CORRUPT, format_args!("{failure} cpu={cpu}")),
    }
}

/// Fills and runs the workload on all `cpus` CPUs; returns the merged totals and
/// operation times (TSC cycles).
pub fn run_on_all(arena: &Arena<'_>, cpus: u32) -> (Totals, Histogram) {
    ARENA.store(arena as *const Arena<'_> as *mut (), Ordering::Release);
    PHASE.store(1, Ordering::Release);
    arena.fill(0, cpus);
    wait_until(|| FILLED.load(Ordering::Acquire) == cpus - 1);
    START_TSC.store(hw::rdtsc(), Ordering::Relaxed);
    PHASE.store(2, Ordering::Release);
    let mut latency = Histogram::default();
    let mut totals = run_share(arena, 0, cpus, &mut latency);
    wait_until(|| DONE.load(Ordering::Acquire) == cpus - 1);
    END_TSC.store(hw::rdtsc(), Ordering::Relaxed);
    for cpu in 1..cpus as usize {
        totals.merge(Totals {
            ops: OPS[cpu].load(Ordering::Relaxed),
            writes: WRITES[cpu].load(Ordering::Relaxed),
            checksum: CHECKSUM[cpu].load(Ordering::Relaxed),
        });
        latency.merge(&Histogram::from_counts(
            LATENCY[cpu].iter().map(|n| n.load(Ordering::Relaxed)),
            LATENCY_MAX[cpu].load(Ordering::Relaxed),
        ));
    }
    (totals, latency)
}

/// Nanoseconds between the start and the end of the operations.
pub fn elapsed_ns(tsc_hz: u64) -> u64 {
    let cycles = END_TSC.load(Ordering::Relaxed) - START_TSC.load(Ordering::Relaxed);
    cycles_to_ns(cycles, tsc_hz)
}

/// An AP at CPL3: check in, then fill and run its share when the BSP says so.
pub fn ap_main(cpu: u32) -> ! {
    ONLINE.fetch_add(1, Ordering::AcqRel);
    wait_until(|| CPUS.load(Ordering::Acquire) != 0);
    let cpus = CPUS.load(Ordering::Acquire);
    if cpu < cpus {
        wait_until(|| PHASE.load(Ordering::Acquire) >= 1);
        // SAFETY: the BSP published a pointer to its Arena, which lives on its stack in
        // a function that never returns, before setting PHASE.
        let arena = unsafe { &*(ARENA.load(Ordering::Acquire) as *const Arena<'_>) };
        arena.fill(cpu, cpus);
        FILLED.fetch_add(1, Ordering::AcqRel);
        wait_until(|| PHASE.load(Ordering::Acquire) >= 2);
        let mut latency = Histogram::default();
        let totals = run_share(arena, cpu, cpus, &mut latency);
        store_totals(cpu, totals, &latency);
        DONE.fetch_add(1, Ordering::AcqRel);
    }
    loop {
        core::hint::spin_loop();
    }
}
