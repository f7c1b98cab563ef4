//! PVH boot: `hvm_start_info` (version 1) with the command line, the e820-style
//! memory map, the initrd as a module and the ACPI RSDP.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::InitrdInfo;
use crate::layout;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Errors writing PVH boot structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// linux-loader could not write the start info, memmap or module list.
    #[error("cannot write the PVH start info: {0}")]
    Write(linux_loader::configurator::Error),
}

/// The guest's memory map, as (start, size, e820 type): usable low RAM, the reserved
/// system area (ACPI tables, RSDP, BIOS hole) and the RAM regions from 1 MiB on.
/// Shared by PVH and the zero page so both boot paths describe the same machine.
pub fn memory_map(ram: &[(GuestAddress, u64)]) -> Vec<(u64, u64, u32)> {
    let system = layout::ACPI_TABLES_START.0;
    let mut map = vec![
        (0, system, E820_RAM),
        (system, layout::SYSTEM_AREA_END.0 - system, E820_RESERVED),
    ];
    for &(start, size) in ram {
        let end = start.0 + size;
        let from = start.0.max(layout::HIMEM_START.0);
        if end > from {
            map.push((from, end - from, E820_RAM));
        }
    }
    map
}

/// The start info for this boot.
pub fn start_info(
    memmap_entries: usize,
    initrd: Option<&InitrdInfo>,
    rsdp: Option<GuestAddress>,
) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START.0,
        memmap_paddr: layout::PVH_MEMMAP_START.0,
        memmap_entries: memmap_entries as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            layout::PVH_MODLIST_START.0
        } else {
            0
        },
        rsdp_paddr: rsdp.map_or(0, |a| a.0),
        ..Default::default()
    }
}

/// Write start info, memory map and module list to their [`layout`] addresses.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    ram: &[(GuestAddress, u64)],
    initrd: Option<&InitrdInfo>,
    rsdp: Option<GuestAddress>,
) -> Result<(), PvhError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(ram)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            ..Default::default()
        })
        .collect();
    let info = start_info(memmap.len(), initrd, rsdp);
    let mut params = BootParams::new::<hvm_start_info>(&info, layout::PVH_INFO_START);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, layout::PVH_MEMMAP_START);
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules::<hvm_modlist_entry>(&[module], layout::PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(PvhError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_map_reserves_the_system_area() {
        let map = memory_map(&[(GuestAddress(0), 64 << 20)]);
        assert_eq!(map[0], (0, 0x9_fc00, E820_RAM));
        assert_eq!(map[1], (0x9_fc00, 0x10_0000 - 0x9_fc00, E820_RESERVED));
        assert_eq!(map[2], (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM));
        let map = memory_map(&layout::ram_regions(5 << 30));
        assert_eq!(map.len(), 4);
        assert_eq!(map[3], (1 << 32, 2 << 30, E820_RAM));
    }

    #[test]
    fn start_info_is_written_with_magic_cmdline_memmap_and_rsdp() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let ram = [(GuestAddress(0), 32 << 20)];
        let initrd = InitrdInfo {
            addr: GuestAddress(0x1f0_0000),
            size: 4096,
        };
        write_start_info(&mem, &ram, Some(&initrd), Some(layout::RSDP_START)).unwrap();
        let info: hvm_start_info = mem.read_obj(layout::PVH_INFO_START).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE_START.0);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.rsdp_paddr, layout::RSDP_START.0);
        assert_eq!(info.nr_modules, 1);
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (0x10_0000, (32 << 20) - 0x10_0000, E820_RAM)
        );
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x1f0_0000, 4096));
    }
}
