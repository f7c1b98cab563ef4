//! The devices the guest talks to from CPL3 (allowed by the TSS I/O bitmap): COM1, the
//! debug-exit port, the PIT for calibrating the TSC, and the local APIC for starting APs.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// COM1 data register.
const COM1: u16 = 0x3f8;
/// COM1 line status register; bit 5 = transmit holding register empty.
const COM1_LSR: u16 = COM1 + 5;
/// Debug-exit port: a 32-bit write of v ends the VM (tiervisor exits v & 0xff, QEMU
/// `isa-debug-exit` exits (v << 1) | 1).
const DEBUG_EXIT: u16 = 0xf4;
/// PIT channel 0 data and the PIT mode/command register.
const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;
/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;

/// Exit codes written to the debug-exit port. Failures use 10-13 so that they never
/// look like tiervisor's own statuses (1 VM failure, 2 bad input, 128+N signal).
pub mod exit_code {
    /// The run passed.
    pub const OK: u32 = 0;
    /// Bad command line, boot information or memory size.
    pub const CONFIG: u32 = 10;
    /// A page or index slot did not verify: data was lost or corrupted.
    pub const CORRUPT: u32 = 11;
    /// A CPU exception.
    pub const EXCEPTION: u32 = 12;
    /// A panic or an unusable timer.
    pub const INTERNAL: u32 = 13;
}

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to a device this guest owns; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn outl(port: u16, value: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack)) };
    value
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear, so CPL3 may).
    unsafe { asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack)) };
    u64::from(high) << 32 | u64::from(low)
}

/// Serialises whole lines from several CPUs.
static SERIAL_LOCK: AtomicBool = AtomicBool::new(false);

/// COM1 FIFO control register, and the depth of the 16550's transmit FIFO.
const COM1_FCR: u16 = COM1 + 2;
const TX_FIFO_BYTES: usize = 16;

/// Turns on (and clears) COM1's FIFOs, so that [`serial_line`] can write 16 bytes per
/// check of the line status: every port access is a VM exit, and on this host each
/// costs tens of microseconds.
pub fn serial_init() {
    outb(COM1_FCR, 0x07);
}

/// Writes one line (a newline is added) to COM1.
pub fn serial_line(bytes: &[u8]) {
    while SERIAL_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let mut pending = bytes.iter().chain(b"\n").peekable();
    while pending.peek().is_some() {
        // Transmitter empty (with FIFOs on: the whole FIFO). Bounded, so a UART that
        // never drains cannot hang the guest.
        for _ in 0..100_000 {
            if inb(COM1_LSR) & 0x20 != 0 {
                break;
            }
        }
        for &byte in pending.by_ref().take(TX_FIFO_BYTES) {
            outb(COM1, byte);
        }
    }
    SERIAL_LOCK.store(false, Ordering::Release);
}

/// Ends the VM through the debug-exit port; if that port is missing, resets through the
/// i8042 and as a last resort spins.
pub fn exit(code: u32) -> ! {
    outl(DEBUG_EXIT, code);
    outb(0x64, 0xfe);
    loop {
        core::hint::spin_loop();
    }
}

/// Reads PIT channel 0's current count (latched).
fn pit_count() -> u16 {
    outb(PIT_CMD, 0x00);
    let low = inb(PIT_CH0);
    let high = inb(PIT_CH0);
    u16::from_le_bytes([low, high])
}

/// Windows measured for the TSC calibration, and how many of them (those whose end
/// points were read most tightly) the median is taken over.
const CALIBRATION_WINDOWS: usize = 9;
const CALIBRATION_KEPT: usize = 5;

/// Measures the TSC frequency in Hz against PIT channel 0; None if the PIT does not
/// count. Each PIT read is bracketed by two TSC reads and their midpoint taken, so the
/// cost of the port exits does not bias the result. A window's error comes from its two
/// end points, and an end point is uncertain by its bracket (wide when the vCPU was
/// descheduled during that read, common on a loaded host): of nine 5 ms windows the five
/// with the narrowest brackets are kept and their median rate returned.
pub fn calibrate_tsc() -> Option<u64> {
    // Channel 0, low then high byte, mode 2 (rate generator), reload 0 = 65536.
    outb(PIT_CMD, 0x34);
    outb(PIT_CH0, 0);
    outb(PIT_CH0, 0);
    let mut windows = [(0u64, 0u64); CALIBRATION_WINDOWS];
    for window in windows.iter_mut() {
        *window = calibration_window(PIT_HZ / 200)?;
    }
    windows.sort_unstable_by_key(|&(_, bracket)| bracket);
    let mut rates = [0u64; CALIBRATION_KEPT];
    for (rate, &(window_rate, _)) in rates.iter_mut().zip(&windows) {
        *rate = window_rate;
    }
    rates.sort_unstable();
    Some(rates[CALIBRATION_KEPT / 2])
}

/// TSC cycles per second over one window of at least `target_ticks` PIT ticks, and the
/// wider of its two end points' TSC brackets.
fn calibration_window(target_ticks: u64) -> Option<(u64, u64)> {
    let sample = || {
        let before = rdtsc();
        let count = pit_count();
        let after = rdtsc();
        let bracket = after.wrapping_sub(before);
        (before + bracket / 2, bracket, count)
    };
    let (start_tsc, start_bracket, mut last) = sample();
    let mut ticks = 0u64;
    let mut end = (start_tsc, start_bracket);
    let mut idle_reads = 0u32;
    while ticks < target_ticks {
        let (tsc, bracket, count) = sample();
        let delta = last.wrapping_sub(count);
        if delta == 0 {
            idle_reads += 1;
            if idle_reads > 1_000_000 {
                return None;
            }
        }
        ticks += u64::from(delta);
        last = count;
        end = (tsc, bracket);
    }
    let cycles = end.0.wrapping_sub(start_tsc);
    let rate = (u128::from(cycles) * u128::from(PIT_HZ) / u128::from(ticks)) as u64;
    Some((rate, start_bracket.max(end.1)))
}

/// Busy-waits `micros` microseconds by the TSC.
pub fn delay_us(tsc_hz: u64, micros: u64) {
    let end = rdtsc() + tsc_hz / 1_000_000 * micros;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Local APIC registers (xAPIC MMIO, identity-mapped uncached by the boot page tables).
pub mod lapic {
    /// Spurious-interrupt vector register; bit 8 enables the APIC.
    const SVR: u64 = 0xf0;
    /// Interrupt command register, low and high halves.
    const ICR_LOW: u64 = 0x300;
    const ICR_HIGH: u64 = 0x310;
    /// ICR: destination shorthand "all excluding self".
    const ALL_BUT_SELF: u32 = 0b11 << 18;
    /// ICR: level assert.
    const ASSERT: u32 = 1 << 14;
    /// ICR: delivery status (send pending).
    const PENDING: u32 = 1 << 12;
    /// ICR delivery modes.
    const INIT: u32 = 0b101 << 8;
    const STARTUP: u32 = 0b110 << 8;

    fn write(base: u64, register: u64, value: u32) {
        // SAFETY: the LAPIC page is mapped by the boot page tables; MMIO writes to it
        // have no effect on this program's memory.
        unsafe { ((base + register) as *mut u32).write_volatile(value) };
    }

    fn read(base: u64, register: u64) -> u32 {
        // SAFETY: as write.
        unsafe { ((base + register) as *const u32).read_volatile() }
    }

    fn send(base: u64, command: u32) {
        write(base, ICR_HIGH, 0);
        write(base, ICR_LOW, command);
        for _ in 0..1_000_000 {
            if read(base, ICR_LOW) & PENDING == 0 {
                break;
            }
        }
    }

    /// INIT-SIPI-SIPI to every other CPU, starting them at `vector << 12`.
    pub fn start_all_aps(base: u64, tsc_hz: u64, vector: u8) {
        write(base, SVR, read(base, SVR) | 0x1ff);
        send(base, ALL_BUT_SELF | ASSERT | INIT);
        super::delay_us(tsc_hz, 10_000);
        for _ in 0..2 {
            send(base, ALL_BUT_SELF | ASSERT | STARTUP | u32::from(vector));
            super::delay_us(tsc_hz, 200);
        }
    }
}
