//! tiervisor's minimal test guest: a PVH ELF that sets up long mode, drops to CPL3 and
//! runs one memory workload, verifying every page it reads, then prints one result line
//! on COM1 and ends the VM through the debug-exit port. See docs/testguest.md.

#![no_std]
#![no_main]

mod boot;
mod hw;
mod smp;

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64};

use testguest::cmdline::{self, Config};
use testguest::engine::{Arena, Totals};
use testguest::latency::{cycles_to_ns, Histogram};
use testguest::line::Line;
use testguest::startinfo::{self, MemmapEntry, StartInfo};
use testguest::workload::{build_tables, Plan};

use hw::exit_code;

/// The boot identity map covers the first 4 GiB: the start info, command line, memory
/// map and ACPI tables must be there.
const MAPPED_LIMIT: u64 = boot::BOOT_MAPPED;
/// Working memory starts on a 2 MiB boundary (a huge page for the VMM's tiers).
const HUGE_PAGE: u64 = 2 << 20;
/// Longest command line read.
const CMDLINE_MAX: usize = 2048;

/// The workload name once known, for FAIL lines printed from anywhere.
static WORKLOAD_NAME: AtomicU32 = AtomicU32::new(u32::MAX);

fn workload_name() -> &'static str {
    let index = WORKLOAD_NAME.load(core::sync::atomic::Ordering::Relaxed) as usize;
    cmdline::Workload::ALL
        .get(index)
        .map_or("unknown", |w| w.name())
}

/// Prints `testguest: workload=W result=FAIL reason=...` and ends the VM with `code`.
fn fail(code: u32, reason: core::fmt::Arguments<'_>) -> ! {
    let mut line = Line::new();
    let _ = write!(
        line,
        "testguest: workload={} result=FAIL reason={}",
        workload_name(),
        reason
    );
    hw::serial_line(line.as_bytes());
    hw::exit(code)
}

/// Reads the NUL-terminated command line at `paddr` into `buf`.
fn read_cmdline(paddr: u64, buf: &mut [u8; CMDLINE_MAX]) -> &str {
    let mut len = 0;
    if paddr != 0 && paddr < MAPPED_LIMIT {
        while len < CMDLINE_MAX {
            // SAFETY: the start info's command line is in identity-mapped low memory
            // and NUL-terminated; reading stops at the NUL or the buffer's end.
            let byte = unsafe { ((paddr + len as u64) as *const u8).read_volatile() };
            if byte == 0 {
                break;
            }
            buf[len] = byte;
            len += 1;
        }
    }
    match core::str::from_utf8(&buf[..len]) {
        Ok(text) => text,
        Err(_) => fail(exit_code::CONFIG, format_args!("bad-cmdline not-utf8")),
    }
}

/// Copies the boot information out of low memory (the AP trampoline may overwrite it).
fn read_start_info(paddr: u64) -> (StartInfo, [MemmapEntry; 64], usize) {
    if paddr == 0 || paddr >= MAPPED_LIMIT {
        fail(
            exit_code::CONFIG,
            format_args!("bad-start-info addr={paddr:#x}"),
        );
    }
    // SAFETY: the VMM passes the start info's address in ebx; it is in low memory,
    // identity-mapped, and the struct is plain data.
    let info = unsafe { (paddr as *const StartInfo).read_unaligned() };
    if let Err(error) = info.check() {
        fail(exit_code::CONFIG, format_args!("{error}"));
    }
    let mut map = [MemmapEntry::default(); 64];
    let count = (info.memmap_entries as usize).min(map.len());
    for (index, slot) in map.iter_mut().take(count).enumerate() {
        let entry = info.memmap_paddr + (index * core::mem::size_of::<MemmapEntry>()) as u64;
        if entry >= MAPPED_LIMIT {
            fail(
                exit_code::CONFIG,
                format_args!("bad-memmap addr={entry:#x}"),
            );
        }
        // SAFETY: the memory map is an array of memmap_entries entries the VMM wrote.
        *slot = unsafe { (entry as *const MemmapEntry).read_unaligned() };
    }
    (info, map, count)
}

/// Where the run's metadata and working memory go.
struct Layout {
    meta: u64,
    base: u64,
}

fn layout(plan: &Plan, region: (u64, u64)) -> Layout {
    let (start, end) = region;
    let base = (start + plan.meta_bytes()).next_multiple_of(HUGE_PAGE);
    let available = end.saturating_sub(base);
    if plan.config.mem > available {
        fail(
            exit_code::CONFIG,
            format_args!(
                "mem-too-large mem={} available={} meta={} region={:#x}-{:#x}",
                plan.config.mem,
                available,
                plan.meta_bytes(),
                start,
                end
            ),
        );
    }
    Layout { meta: start, base }
}

/// Zero-initialised atomics over `len` u32 of metadata RAM at `at`.
///
/// # Safety
/// `[at, at + 4 * len)` must be RAM owned by the caller for the rest of the run.
unsafe fn atomics_u32(at: *mut AtomicU32, len: usize) -> &'static [AtomicU32] {
    for index in 0..len {
        // SAFETY: in the range the caller owns.
        unsafe { at.add(index).write(AtomicU32::new(0)) };
    }
    // SAFETY: initialised just above; the caller owns the range.
    unsafe { core::slice::from_raw_parts(at, len) }
}

/// Zero-initialised atomics over `len` u64 of metadata RAM at `at` (8-byte aligned).
///
/// # Safety
/// `[at, at + 8 * len)` must be RAM owned by the caller for the rest of the run.
unsafe fn atomics_u64(at: *mut AtomicU64, len: usize) -> &'static [AtomicU64] {
    for index in 0..len {
        // SAFETY: in the range the caller owns.
        unsafe { at.add(index).write(AtomicU64::new(0)) };
    }
    // SAFETY: initialised just above; the caller owns the range.
    unsafe { core::slice::from_raw_parts(at, len) }
}

/// Entry of the BSP at CPL3 (from boot.rs), with the start info's address.
#[no_mangle]
extern "C" fn testguest_bsp_main(start_info_paddr: u64) -> ! {
    boot::install_idt();
    // First output as early as possible: boot-time benchmarks measure up to here.
    hw::serial_init();
    hw::serial_line(b"testguest: start");
    let (info, map, entries) = read_start_info(start_info_paddr);
    let map = &map[..entries];
    let mut cmdline_buf = [0u8; CMDLINE_MAX];
    let text = read_cmdline(info.cmdline_paddr, &mut cmdline_buf);
    let config: Config = match cmdline::parse(text) {
        Ok(config) => config,
        Err(error) => fail(exit_code::CONFIG, format_args!("{error}")),
    };
    let workload_index = cmdline::Workload::ALL
        .iter()
        .position(|&w| w == config.workload)
        .unwrap_or(0);
    WORKLOAD_NAME.store(workload_index as u32, core::sync::atomic::Ordering::Relaxed);

    let floor = boot::image_end().next_multiple_of(HUGE_PAGE);
    let mapped = boot::map_high_ram(startinfo::ram_end(map));
    let region = match startinfo::usable_region(map, floor, mapped) {
        Ok(region) => region,
        Err(error) => fail(exit_code::CONFIG, format_args!("{error}")),
    };
    let plan = Plan::new(config);
    let layout = layout(&plan, region);

    let Some(tsc_hz) = hw::calibrate_tsc() else {
        fail(exit_code::INTERNAL, format_args!("pit-not-counting"));
    };
    let started = smp::start_aps(&info, map, tsc_hz);
    let cpus = started.cpus;

    let mut line = Line::new();
    let _ = write!(
        line,
        "testguest: boot ram={}M cpus={} madt_cpus={} tsc_mhz={} base={:#x} workload={} mem={} iters={} seed={}",
        startinfo::total_ram(map) >> 20,
        cpus,
        started.listed,
        tsc_hz / 1_000_000,
        layout.base,
        config.workload.name(),
        config.mem,
        config.iters,
        config.seed
    );
    hw::serial_line(line.as_bytes());

    // SAFETY: [meta, meta + meta_bytes) is RAM from the memory map, above the image and
    // below the working memory, page aligned; nothing else uses it. The tables all CPUs
    // read or update are atomics (each CPU writes only its own pages' versions).
    let (index_hashes, versions, perm, next) = unsafe {
        let hashes_at = layout.meta as *mut AtomicU64;
        let index_hashes = atomics_u64(hashes_at, plan.index_pages as usize);
        let versions_at = hashes_at.add(plan.index_pages as usize) as *mut AtomicU32;
        let versions = atomics_u32(versions_at, plan.pages as usize);
        let perm_at = versions_at.add(plan.pages as usize) as *mut u32;
        let perm = core::slice::from_raw_parts_mut(perm_at, plan.perm_len as usize);
        let next_at = perm_at.add(plan.perm_len as usize);
        let next = core::slice::from_raw_parts_mut(next_at, plan.next_len as usize);
        (index_hashes, versions, perm, next)
    };
    build_tables(&plan, perm, next);
    let arena = Arena {
        plan,
        base: layout.base,
        versions,
        index_hashes,
        perm,
        next,
    };

    let (totals, latency): (Totals, Histogram) = smp::run_on_all(&arena, cpus);
    let ns = smp::elapsed_ns(tsc_hz);
    if totals.ops != config.iters {
        fail(
            exit_code::INTERNAL,
            format_args!("ops-mismatch ops={} iters={}", totals.ops, config.iters),
        );
    }
    let mut line = Line::new();
    let _ = write!(
        line,
        "testguest: workload={} ops={} ns={} checksum={:#018x} op_p50_ns={} op_p99_ns={} op_p999_ns={} op_max_ns={} result=ok",
        config.workload.name(),
        totals.ops,
        ns,
        totals.checksum,
        cycles_to_ns(latency.quantile(0.5), tsc_hz),
        cycles_to_ns(latency.quantile(0.99), tsc_hz),
        cycles_to_ns(latency.quantile(0.999), tsc_hz),
        cycles_to_ns(latency.max(), tsc_hz),
    );
    hw::serial_line(line.as_bytes());
    hw::exit(exit_code::OK)
}

/// Entry of an AP at CPL3 (from boot.rs), with its CPU index (1..MAX_CPUS).
#[no_mangle]
extern "C" fn testguest_ap_main(cpu: u64) -> ! {
    smp::ap_main(cpu as u32)
}

/// Any CPU exception (runs at ring 0 on the faulting CPU's kernel stack).
#[no_mangle]
extern "C" fn testguest_exception(frame: *const boot::ExceptionFrame) -> ! {
    // SAFETY: the stub passes the address of the frame it and the CPU pushed.
    let frame = unsafe { frame.read() };
    fail(
        exit_code::EXCEPTION,
        format_args!(
            "exception vector={} rip={:#x} error={:#x} cr2={:#x} cpl={} rsp={:#x}",
            frame.vector,
            frame.rip,
            frame.error_code,
            boot::read_cr2(),
            frame.cs & 3,
            frame.rsp
        ),
    )
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => fail(
            exit_code::INTERNAL,
            format_args!("panic at={}:{}", at.file(), at.line()),
        ),
        None => fail(exit_code::INTERNAL, format_args!("panic")),
    }
}
