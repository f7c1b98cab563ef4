//! Every guest-physical address and port tiervisor uses, in one place, ordered by
//! address. Everything the VMM writes for boot (GDT, start info, memmap, zero page,
//! page tables, command line, ACPI tables) stays below 1 MiB: the guest contract
//! (docs/vmm.md) lets a guest use all RAM above its own image.

use vm_memory::GuestAddress;

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

// ---- Low memory (below 1 MiB) ----------------------------------------------------

/// Boot GDT (4 entries: null, code, data, TSS). 0x500 is the first byte free of the
/// real-mode IVT and BIOS data area, which guests may still look at.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Number of entries in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 4;
/// Boot IDT (one empty entry): the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);

/// PVH `hvm_start_info`; `rbx`/`ebx` points here at a PVH entry.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// PVH module list (the initrd, when one is given), right after the start info.
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
/// PVH memory map (e820-style entries). Shares its page with the zero page: a boot
/// uses one protocol or the other, never both.
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x7000);
/// Linux zero page (`boot_params`); `rsi` points here at a bzImage 64-bit entry.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);

/// Initial stack pointer for a bzImage entry (the kernel sets its own at once).
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);

/// Identity page tables for a 64-bit bzImage entry: PML4, one PDPT, one PD of 2 MiB
/// pages mapping the first 1 GiB (where the kernel, zero page and cmdline lie).
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// See [`PML4_START`].
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// See [`PML4_START`].
pub const PDE_START: GuestAddress = GuestAddress(0xb000);

/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Longest command line, terminating NUL included: Linux x86's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// ACPI tables (XSDT, MADT, FADT, DSDT) start where the EBDA usually begins; the
/// range up to [`RSDP_START`] is reserved in the memory map.
pub const ACPI_TABLES_START: GuestAddress = GuestAddress(0x9_fc00);
/// ACPI RSDP: in the BIOS area 0xe0000-0xfffff, where a legacy scan finds it too.
pub const RSDP_START: GuestAddress = GuestAddress(0xe_0000);
/// End of the reserved system area (= [`HIMEM_START`]).
pub const SYSTEM_AREA_END: GuestAddress = GuestAddress(0x10_0000);

// ---- RAM -------------------------------------------------------------------------

/// Start of high memory: kernels load here (PVH ELF segments, bzImage protected-mode
/// code).
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Smallest guest memory tiervisor accepts: 1 MiB of system area, a kernel image and
/// room to run. The test guest needs a few MiB; Linux needs far more.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Start of the 32-bit device hole (MMIO, IOAPIC, LAPIC); guest RAM above this
/// continues at [`HIGH_RAM_START`].
pub const MMIO_HOLE_START: GuestAddress = GuestAddress(0xc000_0000);
/// Where RAM resumes above the 32-bit hole.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(0x1_0000_0000);

// ---- 32-bit hole ------------------------------------------------------------------

/// IOAPIC registers (KVM's in-kernel irqchip emulates them here).
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// KVM's identity-map page (one page, needed by KVM on Intel for real mode).
pub const KVM_IDENTITY_MAP_START: GuestAddress = GuestAddress(0xfffb_c000);
/// KVM's TSS area (three pages, right after the identity map page).
pub const KVM_TSS_START: GuestAddress = GuestAddress(0xfffb_d000);
/// Local APIC registers.
pub const LAPIC_START: GuestAddress = GuestAddress(0xfee0_0000);

// ---- Ports and IRQs ------------------------------------------------------------------

/// i8042 data (0x60) to command/status (0x64) ports.
pub const I8042_PORT: u16 = 0x60;
/// Ports the i8042 spans.
pub const I8042_PORTS: u16 = 5;
/// Debug-exit port (QEMU `isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports the debug-exit device spans.
pub const DEBUG_EXIT_PORTS: u16 = 4;
/// Boot-timer port.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;
/// Ports the boot timer spans (a 1-, 2- or 4-byte write).
pub const BOOT_TIMER_PORTS: u16 = 4;
/// COM1 16550 UART.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports the UART spans.
pub const COM1_PORTS: u16 = 8;
/// COM1's ISA IRQ (GSI).
pub const COM1_IRQ: u32 = 4;

/// Guest RAM regions for `size` bytes: one region below the 32-bit hole and, for
/// more than fits there, a second from 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    let low_max = MMIO_HOLE_START.0;
    if size <= low_max {
        vec![(GuestAddress(0), size)]
    } else {
        vec![(GuestAddress(0), low_max), (HIGH_RAM_START, size - low_max)]
    }
}

// The layout's ordering, checked at compile time: boot structures do not overlap
// and stay below 1 MiB; KVM's private pages and the APICs lie in the 32-bit hole.
const _: () = {
    assert!(BOOT_GDT_START.0 + 8 * BOOT_GDT_ENTRIES as u64 <= BOOT_IDT_START.0);
    assert!(BOOT_IDT_START.0 + 8 <= PVH_INFO_START.0);
    // hvm_start_info is 56 bytes, one hvm_modlist_entry 32.
    assert!(PVH_INFO_START.0 + 56 <= PVH_MODLIST_START.0);
    assert!(PVH_MODLIST_START.0 + 32 <= PVH_MEMMAP_START.0);
    // boot_params is one page.
    assert!(ZERO_PAGE_START.0 + PAGE_SIZE <= BOOT_STACK_POINTER.0);
    assert!(BOOT_STACK_POINTER.0 < PML4_START.0);
    assert!(PDPTE_START.0 == PML4_START.0 + PAGE_SIZE);
    assert!(PDE_START.0 == PDPTE_START.0 + PAGE_SIZE);
    assert!(PDE_START.0 + PAGE_SIZE <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= ACPI_TABLES_START.0);
    assert!(ACPI_TABLES_START.0 < RSDP_START.0);
    assert!(RSDP_START.0 < SYSTEM_AREA_END.0);
    assert!(SYSTEM_AREA_END.0 == HIMEM_START.0);
    assert!(MIN_MEMORY > HIMEM_START.0);
    assert!(KVM_IDENTITY_MAP_START.0 + PAGE_SIZE == KVM_TSS_START.0);
    assert!(IOAPIC_START.0 >= MMIO_HOLE_START.0 && LAPIC_START.0 < HIGH_RAM_START.0);
    assert!(KVM_IDENTITY_MAP_START.0 >= MMIO_HOLE_START.0);
    assert!(KVM_TSS_START.0 + 3 * PAGE_SIZE <= HIGH_RAM_START.0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_regions(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (HIGH_RAM_START, 1 << 30));
    }

    #[test]
    fn ports_do_not_overlap() {
        let mut ranges = [
            (I8042_PORT, I8042_PORTS),
            (DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS),
            (BOOT_TIMER_PORT, BOOT_TIMER_PORTS),
            (COM1_PORT, COM1_PORTS),
        ];
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
    }
}
