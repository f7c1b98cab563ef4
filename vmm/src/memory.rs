//! Guest RAM: one memfd, mapped shared, carved into the regions of
//! [`layout::ram_regions`]. A memfd (not anonymous memory) so the tiering layer can
//! register the mapping with userfaultfd (MISSING/MINOR modes need shmem), zap pages
//! with MADV_DONTNEED without losing their data, and read the file directly.
//!
//! [`create_guest_memory`] is the one place guest RAM is made; tiering wraps it.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the guest memory file to {size} bytes: {source}")]
    Truncate { size: u64, source: std::io::Error },
    /// mmap of a region failed.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A region does not fit the address space or overlaps another.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
}

/// Guest RAM and the file behind it.
pub struct GuestRam {
    /// The guest-physical view, used by loaders, devices and KVM slot set-up.
    pub memory: GuestMemoryMmap,
    /// The memfd holding every region back to back (region i at the sum of the sizes
    /// before it).
    pub file: Arc<File>,
    /// Total bytes of RAM.
    pub size: u64,
}

impl GuestRam {
    /// Host address ranges (start, length) of the guest RAM mappings, for telling
    /// guest pages from VMM pages in /proc/self/smaps.
    pub fn host_ranges(&self) -> Vec<(u64, u64)> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.memory
            .iter()
            .map(|r| (r.as_ptr() as u64, r.len()))
            .collect()
    }
}

/// Create `size` bytes of guest RAM laid out as [`layout::ram_regions`] says.
pub fn create_guest_memory(size: u64) -> Result<GuestRam, MemoryError> {
    let file = Arc::new(memfd("tiervisor-guest-ram")?);
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in layout::ram_regions(size) {
        let len_usize = usize::try_from(len)
            .map_err(|_| MemoryError::Layout(format!("region of {len} bytes")))?;
        // MAP_SHARED (from_file): the memfd holds the data, so the mapping can be
        // zapped and faulted back by the tiering layer.
        let mapping = MmapRegion::from_file(FileOffset::from_arc(file.clone(), offset), len_usize)
            .map_err(|source| MemoryError::Map { size: len, source })?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| MemoryError::Layout(format!("region at {:#x}", start.0)))?;
        regions.push(region);
        offset += len;
    }
    let memory =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))?;
    Ok(GuestRam { memory, file, size })
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let cname = std::ffi::CString::new(name).map_err(|e| MemoryError::Layout(e.to_string()))?;
    // SAFETY: cname is a valid NUL-terminated string; the return value is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn memory_is_backed_by_the_memfd() {
        let ram = create_guest_memory(32 << 20).unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        assert_eq!(ram.file.metadata().unwrap().len(), 32 << 20);
        ram.memory
            .write_obj(0xdead_beefu32, GuestAddress(0x12_3456))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.file.read_exact_at(&mut buf, 0x12_3456).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.host_ranges()[0].1, 32 << 20);
    }
}
