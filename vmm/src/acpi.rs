//! ACPI tables for x86 guests: RSDP (v2), XSDT, FADT, MADT and DSDT.
//!
//! The reference Linux kernel (Debian cloud 6.1) has no MP-table parser, so the MADT is
//! the only way it learns about more than one vCPU and about the IO-APIC. The FADT
//! declares a hardware-reduced ACPI platform, as Firecracker and Cloud Hypervisor do:
//! no PM timer, no SCI, no legacy ACPI fixed hardware to emulate. The DSDT describes the
//! one device a guest needs to find through ACPI: the COM1 16550 UART.
//!
//! Tables are built with the rust-vmm `acpi_tables` crate and written one after the
//! other from `tables_addr`; the RSDP goes to `rsdp_addr`, where the guest is told to
//! look (PVH `rsdp_paddr`, zero page `acpi_rsdp_addr`, or the BIOS area scan).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::layout;

/// OEM ID in every table header: who made the tables.
const OEM_ID: [u8; 6] = *b"TIERVM";
/// One revision for all our tables; bump it when their content changes meaning.
const OEM_REVISION: u32 = 1;
/// FADT "hypervisor vendor identity", so a guest can tell which VMM it runs under.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"TIERVISR";

/// Where every x86 local APIC answers (architectural default of IA32_APIC_BASE).
const LAPIC_ADDR: u32 = layout::LAPIC_START.0 as u32;
/// Where the in-kernel IO-APIC of KVM answers (the PC default).
const IOAPIC_ADDR: u32 = layout::IOAPIC_START.0 as u32;
/// COM1's port range length as the AML IO descriptor stores it.
const COM1_PORT_LEN: u8 = layout::COM1_PORTS as u8;
// The casts above are exact: both MMIO bases sit in the 32-bit hole, the UART spans 8 ports.
const _: () = assert!(layout::LAPIC_START.0 <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_START.0 <= u32::MAX as u64);
const _: () = assert!(layout::COM1_PORTS <= u8::MAX as u16);

/// MADT flags bit 0: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt controller structure types (ACPI 6.5, table 5.21).
const MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_EDGE: u16 = 0b01 << 2;
const MPS_INTI_LEVEL: u16 = 0b11 << 2;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// IA-PC boot architecture flag (FADT offset 109): no VGA to probe.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Offset of the MADT's local interrupt controller address and flags fields.
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
/// Size of a MADT header (the standard 36-byte header plus the two fields above).
const MADT_HEADER_LEN: u32 = 44;
/// Size of the standard ACPI table header.
const SDT_HEADER_LEN: u32 = 36;
/// Tables start on 8-byte boundaries so that 64-bit fields in them are aligned.
const TABLE_ALIGN: u64 = 8;

/// Largest vCPU count the MADT can describe with xAPIC IDs (0xff is the broadcast ID).
pub const MAX_ACPI_VCPUS: u8 = 254;

/// Why the ACPI tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A VM needs at least one vCPU to describe.
    #[error("cannot build ACPI tables for 0 vCPUs")]
    NoVcpus,
    /// xAPIC IDs are 8 bits and 0xff is the broadcast ID.
    #[error("cannot describe {0} vCPUs in the MADT: at most {MAX_ACPI_VCPUS} are supported")]
    TooManyVcpus(u8),
    /// The RSDP would land inside the tables it points at.
    #[error("the ACPI RSDP at {rsdp:#x} overlaps the ACPI tables at {start:#x}-{end:#x}")]
    Overlap { rsdp: u64, start: u64, end: u64 },
    /// The tables run past the end of the guest address space.
    #[error("the ACPI tables starting at {0:#x} do not fit in the guest address space")]
    AddressOverflow(u64),
    /// Guest memory does not cover where a table must go.
    #[error("cannot write the ACPI {table} table at guest address {addr:#x}: {source}")]
    Write {
        table: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One table serialised and the guest address it goes to.
struct PlacedTable {
    name: &'static str,
    addr: GuestAddress,
    bytes: Vec<u8>,
}

/// Hands out 8-byte aligned guest addresses one table after the other.
struct TablePlacer {
    next: GuestAddress,
    tables: Vec<PlacedTable>,
}

impl TablePlacer {
    fn place(&mut self, name: &'static str, bytes: Vec<u8>) -> Result<GuestAddress, AcpiError> {
        let addr = self.next;
        let end = addr
            .checked_add(bytes.len() as u64)
            .and_then(|end| end.checked_align_up(TABLE_ALIGN))
            .ok_or(AcpiError::AddressOverflow(addr.raw_value()))?;
        self.next = end;
        self.tables.push(PlacedTable { name, addr, bytes });
        Ok(addr)
    }
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT describing `vcpus` vCPUs into guest memory.
///
/// The tables are laid out from `tables_addr` upwards (about 0.4 KiB plus 8 bytes per
/// vCPU); the RSDP (36 bytes) goes to `rsdp_addr` and must not overlap them.
pub fn write_acpi_tables<M: GuestMemory>(
    mem: &M,
    rsdp_addr: GuestAddress,
    tables_addr: GuestAddress,
    vcpus: u8,
) -> Result<(), AcpiError> {
    if vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    if vcpus > MAX_ACPI_VCPUS {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }

    let mut placer = TablePlacer {
        next: tables_addr,
        tables: Vec::new(),
    };
    let dsdt_addr = placer.place("DSDT", build_dsdt())?;
    let fadt_addr = placer.place("FADT", build_fadt(dsdt_addr))?;
    let madt_addr = placer.place("MADT", build_madt(vcpus))?;
    let xsdt_addr = placer.place("XSDT", build_xsdt(&[fadt_addr, madt_addr]))?;

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr.raw_value()));
    let rsdp_end = rsdp_addr.raw_value() + rsdp.len() as u64;
    let (start, end) = (tables_addr.raw_value(), placer.next.raw_value());
    if rsdp_addr.raw_value() < end && start < rsdp_end {
        return Err(AcpiError::Overlap {
            rsdp: rsdp_addr.raw_value(),
            start,
            end,
        });
    }
    placer.tables.push(PlacedTable {
        name: "RSDP",
        addr: rsdp_addr,
        bytes: rsdp,
    });

    for table in &placer.tables {
        mem.write_slice(&table.bytes, table.addr)
            .map_err(|source| AcpiError::Write {
                table: table.name,
                addr: table.addr.raw_value(),
                source,
            })?;
    }
    Ok(())
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// DSDT: the COM1 UART as a PNP0501 device with its ports and interrupt, so that the
/// guest's ACPI PNP layer finds it (the legacy 8250 probe would find it too, but a
/// hardware-reduced platform is expected to describe its devices).
fn build_dsdt() -> Vec<u8> {
    let mut body = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_DDN".into(), &"COM1"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    // consumer, edge-triggered, active-high, exclusive: ISA IRQ 4.
                    &aml::Interrupt::new(true, true, false, false, layout::COM1_IRQ),
                    &aml::IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, COM1_PORT_LEN),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        6,
        OEM_ID,
        *b"TVDSDT  ",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// FADT: hardware-reduced ACPI with power and sleep buttons as control-method devices
/// (i.e. none), no VGA, pointing at the DSDT through X_DSDT. These are Firecracker's x86
/// choices; a guest resets through the i8042 (`reboot=k`) rather than an ACPI reset
/// register.
fn build_fadt(dsdt_addr: GuestAddress) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"TVFADT  ", OEM_REVISION)
        .dsdt_64(dsdt_addr.raw_value())
        .flag(FadtFlags::HwReducedAcpi)
        .flag(FadtFlags::PwrButton)
        .flag(FadtFlags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    aml_bytes(&fadt.finalize())
}

/// MADT: one enabled local APIC per vCPU (processor UID = APIC ID = index), the IO-APIC
/// with GSIs from 0, the interrupt source overrides a PC has, and LINT1 as NMI on every
/// processor (how the VMM programs LVT1).
fn build_madt(vcpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        5,
        OEM_ID,
        *b"TVMADT  ",
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, LAPIC_ADDR);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for id in 0..vcpus {
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(0, IOAPIC_ADDR, 0)));
    // ISA IRQ 0 (the PIT) is wired to IO-APIC pin 2 on a PC; QEMU's MADT says the same
    // and QEMU routes KVM's GSI 0 to pin 2 to match. Linux uses no PIT interrupt on a
    // hardware-reduced platform, so KVM's default GSI 0 -> pin 0 routing does not matter
    // today; route GSI 0 to pin 2 before relying on the PIT through the IO-APIC.
    // IRQ 9 is the PC's ACPI SCI line: level-triggered, active high.
    madt.append_slice(&interrupt_source_override(
        0,
        2,
        MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE,
    ));
    madt.append_slice(&interrupt_source_override(
        9,
        9,
        MPS_INTI_ACTIVE_HIGH | MPS_INTI_LEVEL,
    ));
    madt.append_slice(&local_apic_nmi(ALL_PROCESSORS, 1));
    madt.as_slice().to_vec()
}

/// MADT Interrupt Source Override (type 2, 10 bytes): ISA `irq` arrives on `gsi`.
fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut entry = [0u8; 10];
    entry[0] = MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE;
    entry[1] = entry.len() as u8;
    entry[2] = 0; // bus: ISA
    entry[3] = irq;
    entry[4..8].copy_from_slice(&gsi.to_le_bytes());
    entry[8..10].copy_from_slice(&flags.to_le_bytes());
    entry
}

/// MADT Local APIC NMI (type 4, 6 bytes): `lint` of `processor_uid` is the NMI input.
fn local_apic_nmi(processor_uid: u8, lint: u8) -> [u8; 6] {
    let mut entry = [0u8; 6];
    entry[0] = MADT_TYPE_LOCAL_APIC_NMI;
    entry[1] = entry.len() as u8;
    entry[2] = processor_uid;
    // entry[3..5]: MPS INTI flags, 0 = conforms to the bus (edge, active high).
    entry[5] = lint;
    entry
}

/// XSDT: 64-bit pointers to every table except the DSDT (reached through the FADT).
fn build_xsdt(tables: &[GuestAddress]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"TVXSDT  ", OEM_REVISION);
    for table in tables {
        xsdt.add_entry(table.raw_value());
    }
    aml_bytes(&xsdt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const RSDP: GuestAddress = GuestAddress(0xe_0000);
    const TABLES: GuestAddress = GuestAddress(0xe_1000);

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads a whole table (header length) and checks its signature and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, SDT_HEADER_LEN as usize);
        assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= SDT_HEADER_LEN as usize);
        let bytes = read(mem, addr, len);
        assert_eq!(
            sum(&bytes),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        assert_eq!(&bytes[10..16], &OEM_ID);
        bytes
    }

    fn written(vcpus: u8) -> (GuestMemoryMmap, Vec<u8>) {
        let mem = memory();
        write_acpi_tables(&mem, RSDP, TABLES, vcpus).unwrap();
        let rsdp = read(&mem, RSDP.raw_value(), 36);
        (mem, rsdp)
    }

    /// The (type, bytes) of every interrupt controller structure in a MADT.
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut off = MADT_HEADER_LEN as usize;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(
                len >= 2 && off + len <= madt.len(),
                "MADT entry at {off} overruns"
            );
            entries.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        entries
    }

    #[test]
    fn rsdp_is_v2_with_both_checksums_and_points_at_xsdt() {
        let (mem, rsdp) = written(1);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        table(&mem, u64_at(&rsdp, 24), b"XSDT");
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
        let (mem, rsdp) = written(2);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        table(&mem, u64_at(&xsdt, 44), b"APIC");
        assert_eq!(fadt.len(), 276, "ACPI 6.x FADT length");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & FadtFlags::HwReducedAcpi as u32, 0);
        assert_eq!(&fadt[268..276], &HYPERVISOR_VENDOR_ID);
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT unused");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        assert!(dsdt.len() > 36);
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu() {
        for vcpus in [1u8, 2, 7, MAX_ACPI_VCPUS] {
            let (mem, rsdp) = written(vcpus);
            let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
            let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
            assert_eq!(u32_at(&madt, 36), LAPIC_ADDR);
            assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);
            let entries = madt_entries(&madt);
            let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), vcpus as usize);
            for (i, (_, e)) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!((e[2], e[3]), (i as u8, i as u8), "UID and APIC ID");
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
            }
            let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
            assert_eq!(ioapics.len(), 1);
            assert_eq!(u32_at(&ioapics[0].1, 4), IOAPIC_ADDR);
            assert_eq!(u32_at(&ioapics[0].1, 8), 0, "GSI base");
            let overrides: Vec<_> = entries.iter().filter(|(t, _)| *t == 2).collect();
            assert_eq!(overrides.len(), 2);
            assert_eq!((overrides[0].1[3], u32_at(&overrides[0].1, 4)), (0, 2));
            let nmis: Vec<_> = entries.iter().filter(|(t, _)| *t == 4).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!((nmis[0].1[2], nmis[0].1[5]), (ALL_PROCESSORS, 1));
        }
    }

    #[test]
    fn dsdt_describes_com1_as_pnp0501() {
        let (mem, rsdp) = written(1);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let contains = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"COM1"));
        // EISA ID "PNP0501" compressed: 0x0105d041 stored little-endian after DWordPrefix.
        assert!(contains(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // IO port descriptor: decode16, min = max = 0x3f8, alignment 1, length 8.
        assert!(contains(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        // Extended interrupt descriptor: consumer + edge, one interrupt, GSI 4.
        assert!(contains(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00
        ]));
    }

    #[test]
    fn tables_are_contiguous_from_tables_addr_and_aligned() {
        let (mem, rsdp) = written(2);
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt = table(&mem, xsdt_addr, b"XSDT");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let dsdt_addr = u64_at(&fadt, 140);
        assert_eq!(dsdt_addr, TABLES.raw_value(), "DSDT comes first");
        for addr in [xsdt_addr, u64_at(&xsdt, 36), u64_at(&xsdt, 44), dsdt_addr] {
            assert_eq!(addr % TABLE_ALIGN, 0);
            assert!(addr >= TABLES.raw_value() && addr < TABLES.raw_value() + 0x1000);
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let mem = memory();
        assert!(matches!(
            write_acpi_tables(&mem, RSDP, TABLES, 0),
            Err(AcpiError::NoVcpus)
        ));
        assert!(matches!(
            write_acpi_tables(&mem, RSDP, TABLES, 255),
            Err(AcpiError::TooManyVcpus(255))
        ));
        assert!(matches!(
            write_acpi_tables(&mem, GuestAddress(TABLES.raw_value() + 16), TABLES, 1),
            Err(AcpiError::Overlap { .. })
        ));
        let err = write_acpi_tables(&mem, RSDP, GuestAddress((1 << 20) - 64), 1).unwrap_err();
        assert!(matches!(err, AcpiError::Write { .. }), "{err}");
        assert!(err.to_string().contains("ACPI"), "{err}");
        assert!(matches!(
            write_acpi_tables(&mem, RSDP, GuestAddress(u64::MAX - 8), 1),
            Err(AcpiError::AddressOverflow(_))
        ));
    }
}
