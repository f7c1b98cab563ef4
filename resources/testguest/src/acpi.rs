//! Just enough ACPI to count the CPUs: RSDP -> XSDT (or RSDT) -> MADT local APICs.

/// Where ACPI tables are read from (guest memory, or a buffer in tests).
pub trait PhysMem {
    /// Copies `buf.len()` bytes from physical address `addr`; false if out of range.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// Highest number of CPUs reported.
pub const MAX_APICS: usize = 16;

/// The CPUs the MADT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    /// Local APIC ids of enabled processors, in MADT order (the first is the BSP).
    pub apic_ids: [u32; MAX_APICS],
    /// How many of `apic_ids` are valid.
    pub count: usize,
    /// Physical address of the local APIC.
    pub lapic_addr: u64,
}

fn read_bytes<const N: usize>(mem: &dyn PhysMem, addr: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    mem.read(addr, &mut buf).then_some(buf)
}

fn u32_at(mem: &dyn PhysMem, addr: u64) -> Option<u32> {
    read_bytes::<4>(mem, addr).map(u32::from_le_bytes)
}

fn u64_at(mem: &dyn PhysMem, addr: u64) -> Option<u64> {
    read_bytes::<8>(mem, addr).map(u64::from_le_bytes)
}

/// Finds the table with `signature` through the RSDP at `rsdp`.
fn find_table(mem: &dyn PhysMem, rsdp: u64, signature: &[u8; 4]) -> Option<u64> {
    let head = read_bytes::<36>(mem, rsdp)?;
    if &head[..8] != b"RSD PTR " {
        return None;
    }
    let revision = head[15];
    let rsdt = u64::from(u32::from_le_bytes(head[16..20].try_into().ok()?));
    let xsdt = u64::from_le_bytes(head[24..32].try_into().ok()?);
    let (root, entry_size) = if revision >= 2 && xsdt != 0 {
        (xsdt, 8)
    } else {
        (rsdt, 4)
    };
    let length = u64::from(u32_at(mem, root + 4)?);
    let entries = length.checked_sub(36)? / entry_size;
    for index in 0..entries.min(64) {
        let at = root + 36 + index * entry_size;
        let table = if entry_size == 8 {
            u64_at(mem, at)?
        } else {
            u64::from(u32_at(mem, at)?)
        };
        if read_bytes::<4>(mem, table)? == *signature {
            return Some(table);
        }
    }
    None
}

/// Where the ACPI spec says to scan for the RSDP when nobody says where it is: the BIOS
/// read-only area (16-byte aligned).
const BIOS_AREA: core::ops::Range<u64> = 0xe_0000..0x10_0000;

/// Looks for the RSDP in the BIOS area (signature and ACPI 1.0 checksum), as a kernel
/// does when the PVH start info's `rsdp_paddr` is 0.
pub fn scan_rsdp(mem: &dyn PhysMem) -> Option<u64> {
    BIOS_AREA.step_by(16).find(|&addr| {
        read_bytes::<20>(mem, addr).is_some_and(|head| {
            &head[..8] == b"RSD PTR " && head.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
        })
    })
}

/// Reads the enabled processors from the MADT; None if there are no ACPI tables.
/// `rsdp` 0 means "not given": the BIOS area is scanned.
pub fn cpus(mem: &dyn PhysMem, rsdp: u64) -> Option<Cpus> {
    let rsdp = match rsdp {
        0 => scan_rsdp(mem)?,
        given => given,
    };
    let madt = find_table(mem, rsdp, b"APIC")?;
    let length = u64::from(u32_at(mem, madt + 4)?);
    let mut cpus = Cpus {
        apic_ids: [0; MAX_APICS],
        count: 0,
        lapic_addr: u64::from(u32_at(mem, madt + 36)?),
    };
    let mut at = madt + 44;
    while at + 2 <= madt + length {
        let [kind, len] = read_bytes::<2>(mem, at)?;
        if len < 2 {
            break;
        }
        let (id, flags) = match kind {
            0 => {
                let entry = read_bytes::<8>(mem, at)?;
                (
                    u32::from(entry[3]),
                    u32::from_le_bytes(entry[4..8].try_into().ok()?),
                )
            }
            9 => {
                let entry = read_bytes::<16>(mem, at)?;
                (
                    u32::from_le_bytes(entry[4..8].try_into().ok()?),
                    u32::from_le_bytes(entry[8..12].try_into().ok()?),
                )
            }
            5 => {
                cpus.lapic_addr = u64_at(mem, at + 4)?;
                (0, 0)
            }
            _ => (0, 0),
        };
        if matches!(kind, 0 | 9) && flags & 1 != 0 && cpus.count < MAX_APICS {
            cpus.apic_ids[cpus.count] = id;
            cpus.count += 1;
        }
        at += u64::from(len);
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buffer(Vec<u8>);

    impl PhysMem for Buffer {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let start = addr as usize;
            match self.0.get(start..start + buf.len()) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }
    }

    fn header(signature: &[u8; 4], length: usize) -> Vec<u8> {
        let mut table = vec![0u8; 36];
        table[..4].copy_from_slice(signature);
        table[4..8].copy_from_slice(&(length as u32).to_le_bytes());
        table
    }

    const RSDP: usize = 0x40;

    /// RSDP at 0x40, XSDT at 0x100 (pointing at a FACP and the MADT), MADT at 0x200.
    fn tables(xsdt: bool, processors: &[(u8, u32)]) -> Buffer {
        let mut mem = vec![0u8; 0x400];
        mem[RSDP..RSDP + 8].copy_from_slice(b"RSD PTR ");
        mem[RSDP + 15] = if xsdt { 2 } else { 0 };
        mem[RSDP + 16..RSDP + 20].copy_from_slice(&0x100u32.to_le_bytes());
        if xsdt {
            mem[RSDP + 24..RSDP + 32].copy_from_slice(&0x100u64.to_le_bytes());
        }
        let (size, entries): (usize, Vec<u8>) = if xsdt {
            (
                8,
                [0x180u64, 0x200]
                    .iter()
                    .flat_map(|a| a.to_le_bytes())
                    .collect(),
            )
        } else {
            (
                4,
                [0x180u32, 0x200]
                    .iter()
                    .flat_map(|a| a.to_le_bytes())
                    .collect(),
            )
        };
        let mut root = header(if xsdt { b"XSDT" } else { b"RSDT" }, 36 + 2 * size);
        root.extend(entries);
        mem[0x100..0x100 + root.len()].copy_from_slice(&root);
        mem[0x180..0x184].copy_from_slice(b"FACP");
        let mut madt = header(b"APIC", 0);
        madt.extend(0xfee0_0000u32.to_le_bytes());
        madt.extend(1u32.to_le_bytes());
        for &(apic_id, flags) in processors {
            madt.extend([0, 8, apic_id, apic_id]);
            madt.extend(flags.to_le_bytes());
        }
        madt.extend([1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // an IOAPIC entry
        let length = madt.len() as u32;
        madt[4..8].copy_from_slice(&length.to_le_bytes());
        mem[0x200..0x200 + madt.len()].copy_from_slice(&madt);
        Buffer(mem)
    }

    #[test]
    fn counts_enabled_processors_through_xsdt_and_rsdt() {
        for xsdt in [true, false] {
            let mem = tables(xsdt, &[(0, 1), (1, 1), (2, 0)]);
            let cpus = cpus(&mem, RSDP as u64).unwrap();
            assert_eq!(cpus.count, 2, "xsdt={xsdt}");
            assert_eq!(&cpus.apic_ids[..2], &[0, 1]);
            assert_eq!(cpus.lapic_addr, 0xfee0_0000);
        }
    }

    #[test]
    fn rsdp_is_found_in_the_bios_area_by_signature_and_checksum() {
        let tables = tables(true, &[(0, 1), (1, 1)]);
        let mut mem = vec![0u8; 0x10_0000];
        mem[..0x400].copy_from_slice(&tables.0);
        // A decoy with a bad checksum first, then a real RSDP pointing at the XSDT.
        mem[0xe_0010..0xe_0018].copy_from_slice(b"RSD PTR ");
        mem[0xe_0020..0xe_0024 + 32].copy_from_slice(&tables.0[RSDP..RSDP + 36]);
        let sum = mem[0xe_0020..0xe_0020 + 20]
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b));
        mem[0xe_0020 + 8] = mem[0xe_0020 + 8].wrapping_sub(sum); // checksum byte
        let mem = Buffer(mem);
        assert_eq!(scan_rsdp(&mem), Some(0xe_0020));
        assert_eq!(cpus(&mem, 0).map(|c| c.count), Some(2));
        assert_eq!(scan_rsdp(&Buffer(vec![0u8; 0x10_0000])), None);
    }

    #[test]
    fn missing_or_broken_tables_give_none() {
        let mem = tables(true, &[(0, 1)]);
        assert_eq!(cpus(&mem, RSDP as u64).map(|c| c.count), Some(1));
        assert!(cpus(&mem, 0x10).is_none(), "no RSDP signature there");
        let mut broken = tables(true, &[(0, 1)]);
        broken.0[0x200..0x204].copy_from_slice(b"XXXX");
        assert!(cpus(&broken, RSDP as u64).is_none(), "no MADT");
    }
}
