//! The PVH boot information (`struct hvm_start_info`, Xen's arch-x86/hvm/start_info.h)
//! and the memory map it points to.

use thiserror::Error;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// e820 type of usable RAM.
pub const MEMMAP_RAM: u32 = 1;

/// `struct hvm_start_info`, version 1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// 1 when the memory map fields are present.
    pub version: u32,
    /// SIF_* flags.
    pub flags: u32,
    /// Number of modules (unused here).
    pub nr_modules: u32,
    /// Module list (unused here).
    pub modlist_paddr: u64,
    /// NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// ACPI RSDP, or 0.
    pub rsdp_paddr: u64,
    /// Memory map (`MemmapEntry` array).
    pub memmap_paddr: u64,
    /// Entries in the memory map.
    pub memmap_entries: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type ([`MEMMAP_RAM`] for RAM).
    pub kind: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// Why the boot information is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StartInfoError {
    /// Not a PVH start info.
    #[error("bad-start-info magic={0:#x}")]
    BadMagic(u32),
    /// Version 0 start info or an empty map: the guest cannot know its RAM.
    #[error("no-memmap version={version} entries={entries}")]
    NoMemmap {
        /// Start info version.
        version: u32,
        /// Map entries.
        entries: u32,
    },
    /// No RAM above the image and below the identity map's end.
    #[error("no-usable-ram above={floor:#x}")]
    NoUsableRam {
        /// Where usable RAM has to start.
        floor: u64,
    },
}

impl StartInfo {
    /// Checks the magic and that a memory map is there.
    pub fn check(&self) -> Result<(), StartInfoError> {
        if self.magic != START_INFO_MAGIC {
            return Err(StartInfoError::BadMagic(self.magic));
        }
        if self.version < 1 || self.memmap_entries == 0 || self.memmap_paddr == 0 {
            return Err(StartInfoError::NoMemmap {
                version: self.version,
                entries: self.memmap_entries,
            });
        }
        Ok(())
    }
}

/// The largest stretch of RAM inside `[floor, ceiling)`, page aligned, as `(start, end)`.
pub fn usable_region(
    entries: &[MemmapEntry],
    floor: u64,
    ceiling: u64,
) -> Result<(u64, u64), StartInfoError> {
    let mut best: Option<(u64, u64)> = None;
    for entry in entries.iter().filter(|e| e.kind == MEMMAP_RAM) {
        let start = entry.addr.max(floor).next_multiple_of(4096);
        let end = (entry.addr.saturating_add(entry.size).min(ceiling)) & !4095;
        if end > start && best.is_none_or(|(s, e)| end - start > e - s) {
            best = Some((start, end));
        }
    }
    best.ok_or(StartInfoError::NoUsableRam { floor })
}

/// End of the highest RAM range in the map.
pub fn ram_end(entries: &[MemmapEntry]) -> u64 {
    entries
        .iter()
        .filter(|e| e.kind == MEMMAP_RAM)
        .map(|e| e.addr.saturating_add(e.size))
        .max()
        .unwrap_or(0)
}

/// Total RAM in the map, in bytes.
pub fn total_ram(entries: &[MemmapEntry]) -> u64 {
    entries
        .iter()
        .filter(|e| e.kind == MEMMAP_RAM)
        .map(|e| e.size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind: MEMMAP_RAM,
            reserved: 0,
        }
    }

    #[test]
    fn layout_matches_the_c_struct() {
        assert_eq!(core::mem::size_of::<StartInfo>(), 56);
        assert_eq!(core::mem::offset_of!(StartInfo, cmdline_paddr), 24);
        assert_eq!(core::mem::offset_of!(StartInfo, rsdp_paddr), 32);
        assert_eq!(core::mem::offset_of!(StartInfo, memmap_paddr), 40);
        assert_eq!(core::mem::offset_of!(StartInfo, memmap_entries), 48);
        assert_eq!(core::mem::size_of::<MemmapEntry>(), 24);
    }

    #[test]
    fn check_wants_magic_and_memmap() {
        let mut info = StartInfo {
            magic: START_INFO_MAGIC,
            version: 1,
            memmap_paddr: 0x1000,
            memmap_entries: 2,
            ..StartInfo::default()
        };
        assert_eq!(info.check(), Ok(()));
        info.version = 0;
        assert!(matches!(info.check(), Err(StartInfoError::NoMemmap { .. })));
        info.magic = 1;
        assert_eq!(info.check(), Err(StartInfoError::BadMagic(1)));
    }

    #[test]
    fn usable_region_is_the_largest_ram_above_the_floor() {
        let map = [
            ram(0, 0x9fc00),
            MemmapEntry {
                addr: 0x9fc00,
                size: 0x400,
                kind: 2,
                reserved: 0,
            },
            ram(0x10_0000, 0x1ff0_0000),
            ram(0x1_0000_0000, 0x4000_0000),
        ];
        assert_eq!(
            usable_region(&map, 0x20_0000, 1 << 32),
            Ok((0x20_0000, 0x2000_0000))
        );
        assert_eq!(total_ram(&map), 0x9fc00 + 0x1ff0_0000 + 0x4000_0000);
        assert_eq!(ram_end(&map), 0x1_4000_0000);
        assert_eq!(
            usable_region(&map, 0x20_0000, 0x2_0000_0000),
            Ok((0x1_0000_0000, 0x1_4000_0000)),
            "the larger range above 4 GiB wins once it is mapped"
        );
        assert_eq!(
            usable_region(&map[..2], 0x20_0000, 1 << 32),
            Err(StartInfoError::NoUsableRam { floor: 0x20_0000 })
        );
        // Unaligned ends are trimmed to pages.
        assert_eq!(
            usable_region(&[ram(0x20_0800, 0x3000)], 0x20_0000, 1 << 32),
            Ok((0x20_1000, 0x20_3000))
        );
    }
}
