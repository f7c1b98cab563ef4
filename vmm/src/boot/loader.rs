//! Kernel, initrd and command line loading with linux-loader.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

/// Errors loading what the user named on the command line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Neither an ELF nor a bzImage.
    #[error("{path} is not a kernel: neither an ELF with a PVH note nor a bzImage")]
    NotAKernel { path: String },
    /// An ELF without a PVH entry note.
    #[error("{path} is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); tiervisor boots ELF kernels only through PVH")]
    ElfWithoutPvh { path: String },
    /// A bzImage too old for the 64-bit boot protocol.
    #[error("{path} is a bzImage without a 64-bit entry point (boot protocol < 2.12 or no XLF_KERNEL_64)")]
    BzImageNo64Bit { path: String },
    /// The kernel loader refused the image (bad headers, does not fit in memory, ...).
    #[error("cannot load kernel {path}: {source}")]
    Kernel { path: String, source: loader::Error },
    /// The initrd does not fit in low memory above the kernel.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel; give more --memory")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    /// Writing the initrd into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    InitrdCopy {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, rbx = start info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, rsi = zero page.
    Linux64,
}

/// Where and how to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// The entry address.
    pub entry: GuestAddress,
    /// The protocol the entry expects.
    pub protocol: BootProtocol,
    /// First byte past the loaded image.
    pub kernel_end: u64,
    /// The bzImage setup header (seeds the zero page); None for PVH.
    pub setup_header: Option<setup_header>,
}

/// The 64-bit entry lies 0x200 past the protected-mode code's load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has a 64-bit entry.
const XLF_KERNEL_64: u16 = 1;

/// Load the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelEntry, LoadError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    match Elf::load(mem, None, &mut file, Some(layout::HIMEM_START)) {
        Ok(result) => match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => Ok(KernelEntry {
                entry,
                protocol: BootProtocol::Pvh,
                kernel_end: result.kernel_end,
                setup_header: None,
            }),
            _ => Err(LoadError::ElfWithoutPvh { path: shown }),
        },
        Err(loader::Error::Elf(loader::elf::Error::ReadElfHeader)) => {
            Err(LoadError::NotAKernel { path: shown })
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            load_bzimage(mem, &mut file, shown)
        }
        Err(source) => Err(LoadError::Kernel {
            path: shown,
            source,
        }),
    }
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    shown: String,
) -> Result<KernelEntry, LoadError> {
    let result = match BzImage::load(mem, None, file, Some(layout::HIMEM_START)) {
        Ok(r) => r,
        Err(loader::Error::Bzimage(loader::bzimage::Error::InvalidBzImage))
        | Err(loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageHeader)) => {
            return Err(LoadError::NotAKernel { path: shown })
        }
        Err(source) => {
            return Err(LoadError::Kernel {
                path: shown,
                source,
            })
        }
    };
    let hdr = result.setup_header.ok_or(LoadError::NotAKernel {
        path: shown.clone(),
    })?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoadError::BzImageNo64Bit { path: shown });
    }
    Ok(KernelEntry {
        entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
        protocol: BootProtocol::Linux64,
        kernel_end: result.kernel_end,
        setup_header: Some(hdr),
    })
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy)]
pub struct InitrdInfo {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Load the initrd at the top of low RAM (the first region, below the 32-bit hole
/// and below `max_addr`, the kernel's `initrd_addr_max` for a bzImage), page aligned,
/// above the kernel image ending at `kernel_end`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<InitrdInfo, LoadError> {
    let shown = path.display().to_string();
    let read_err = |source| LoadError::Read {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let low_end = mem
        .find_region(GuestAddress(0))
        .map(|r| r.len())
        .unwrap_or(0)
        .min(max_addr.saturating_add(1));
    let too_large = || LoadError::InitrdTooLarge {
        path: shown.clone(),
        size,
        limit: low_end,
    };
    let start = low_end.checked_sub(size).ok_or_else(too_large)? & !(layout::PAGE_SIZE - 1);
    if start < kernel_end.max(layout::HIMEM_START.0) {
        return Err(too_large());
    }
    let addr = GuestAddress(start);
    let len = usize::try_from(size).map_err(|_| too_large())?;
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(addr, &mut file, len)
        .map_err(|source| LoadError::InitrdCopy {
            path: shown.clone(),
            source,
        })?;
    Ok(InitrdInfo { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    fn temp_with(bytes: &[u8]) -> vmm_sys_util::tempfile::TempFile {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(bytes).unwrap();
        f
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let f = temp_with(&b"hello, I am not a kernel\n".repeat(100));
        let e = load_kernel(&mem(), f.as_path()).unwrap_err();
        assert!(matches!(e, LoadError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("is not a kernel"));
    }

    #[test]
    fn empty_file_is_not_a_kernel() {
        let f = temp_with(b"");
        let e = load_kernel(&mem(), f.as_path()).unwrap_err();
        assert!(matches!(e, LoadError::NotAKernel { .. }), "{e}");
    }

    #[test]
    fn missing_file_says_cannot_read() {
        let e = load_kernel(&mem(), Path::new("/nonexistent/kernel")).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
    }

    /// A bzImage header (setup area + small payload) as the boot protocol lays it out.
    fn fake_bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        const SETUP_SECTS: u8 = 4;
        let mut image = vec![0u8; (SETUP_SECTS as usize + 1) * 512 + 0x1000];
        image[0x1f1] = SETUP_SECTS;
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = 0x01; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        image
    }

    #[test]
    fn bzimage_enters_64bit_entry_with_its_setup_header() {
        let f = temp_with(&fake_bzimage(0x020f, XLF_KERNEL_64));
        let k = load_kernel(&mem(), f.as_path()).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.version }, 0x020f);
    }

    #[test]
    fn old_bzimage_without_64bit_entry_is_refused() {
        let f = temp_with(&fake_bzimage(0x020b, 0));
        let e = load_kernel(&mem(), f.as_path()).unwrap_err();
        assert!(matches!(e, LoadError::BzImageNo64Bit { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram_page_aligned() {
        let f = temp_with(&[7u8; 5000]);
        let m = mem();
        let info = load_initrd(&m, f.as_path(), 2 << 20, u64::MAX).unwrap();
        assert_eq!(info.size, 5000);
        assert_eq!(info.addr.0 % layout::PAGE_SIZE, 0);
        assert!(info.addr.0 + 5000 <= 32 << 20);
        assert!(info.addr.0 + 5000 + layout::PAGE_SIZE > 32 << 20);
        use vm_memory::Bytes;
        assert_eq!(m.read_obj::<u8>(info.addr.unchecked_add(4999)).unwrap(), 7);
    }

    #[test]
    fn initrd_larger_than_ram_is_refused() {
        let f = temp_with(&vec![0u8; 40 << 20]);
        let e = load_initrd(&mem(), f.as_path(), 2 << 20, u64::MAX).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }));
    }
}
