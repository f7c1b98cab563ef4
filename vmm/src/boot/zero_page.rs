//! Linux 64-bit boot protocol: the zero page (`boot_params`) with the kernel's own
//! setup header, loader type, command line, initrd, e820 map and ACPI RSDP.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::pvh::memory_map;
use super::InitrdInfo;
use crate::layout;

/// `type_of_loader` 0xff: "undefined / other" loader.
pub const LOADER_TYPE_OTHER: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// More memory-map entries than boot_params has room for.
    #[error("memory map has {0} entries; the zero page holds at most 128")]
    TooManyE820(usize),
    /// linux-loader could not write the zero page.
    #[error("cannot write the zero page: {0}")]
    Write(linux_loader::configurator::Error),
}

/// Build the zero page from the kernel's setup header.
pub fn build_zero_page(
    hdr: setup_header,
    cmdline_len: usize,
    ram: &[(GuestAddress, u64)],
    initrd: Option<&InitrdInfo>,
    rsdp: Option<GuestAddress>,
) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.0 as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    let map = memory_map(ram);
    if map.len() > params.e820_table.len() {
        return Err(ZeroPageError::TooManyE820(map.len()));
    }
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *type_;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Write `params` at [`layout::ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ZeroPageError> {
    LinuxBootConfigurator::write_bootparams(&BootParams::new(params, layout::ZERO_PAGE_START), mem)
        .map_err(ZeroPageError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::pvh::{E820_RAM, E820_RESERVED};
    use vm_memory::Bytes;

    #[test]
    fn zero_page_has_loader_cmdline_initrd_e820_and_rsdp() {
        let hdr = setup_header {
            version: 0x020f,
            xloadflags: 1,
            ..Default::default()
        };
        let ram = [(GuestAddress(0), 128u64 << 20)];
        let initrd = InitrdInfo {
            addr: GuestAddress(0x700_0000),
            size: 0x12345,
        };
        let p = build_zero_page(hdr, 42, &ram, Some(&initrd), Some(layout::RSDP_START)).unwrap();
        assert_eq!({ p.hdr.type_of_loader }, LOADER_TYPE_OTHER);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START.0 as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x700_0000, 0x12345)
        );
        assert_eq!({ p.acpi_rsdp_addr }, layout::RSDP_START.0);
        assert_eq!({ p.e820_entries }, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, 0x9_fc00, E820_RAM)
        );
        assert_eq!({ e[1].r#type }, E820_RESERVED);
        assert_eq!(({ e[2].addr }, { e[2].r#type }), (0x10_0000, E820_RAM));
        assert_eq!({ e[2].addr } + { e[2].size }, 128 << 20);

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_zero_page(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(layout::ZERO_PAGE_START).unwrap();
        assert_eq!({ back.hdr.type_of_loader }, LOADER_TYPE_OTHER);
        assert_eq!({ back.e820_entries }, 3);
    }
}
