//! Where guest pages are: guest-physical page number <-> dense index <-> host address
//! <-> memfd offset, over the VM's RAM regions.

use crate::access::{PageNumber, PAGE_SIZE};

/// One guest RAM region: a MAP_SHARED mapping of part of the guest memfd.
#[derive(Debug, Clone, Copy)]
pub struct GuestRegion {
    /// Guest-physical start (page aligned).
    pub guest_addr: u64,
    /// Host virtual address of the mapping.
    pub host_addr: usize,
    /// Length in bytes (page multiple).
    pub len: u64,
    /// Offset of the region in the memfd.
    pub file_offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Placed {
    region: GuestRegion,
    first_index: usize,
    pages: usize,
}

/// The guest's RAM regions with dense page indices across them.
#[derive(Debug, Clone)]
pub struct GuestLayout {
    regions: Vec<Placed>,
    pages: usize,
}

impl GuestLayout {
    pub fn new(regions: &[GuestRegion]) -> Self {
        let mut placed = Vec::with_capacity(regions.len());
        let mut next = 0usize;
        for r in regions {
            let pages = (r.len / PAGE_SIZE) as usize;
            placed.push(Placed {
                region: *r,
                first_index: next,
                pages,
            });
            next += pages;
        }
        Self {
            regions: placed,
            pages: next,
        }
    }

    /// Total guest pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    pub fn regions(&self) -> impl Iterator<Item = &GuestRegion> {
        self.regions.iter().map(|p| &p.region)
    }

    fn placed_of_index(&self, index: usize) -> &Placed {
        let i = self
            .regions
            .partition_point(|p| p.first_index + p.pages <= index);
        &self.regions[i]
    }

    /// Dense index of a host address inside guest RAM.
    pub fn index_of_host(&self, addr: usize) -> Option<usize> {
        self.regions.iter().find_map(|p| {
            let start = p.region.host_addr;
            (addr >= start && addr < start + p.region.len as usize)
                .then(|| p.first_index + (addr - start) / PAGE_SIZE as usize)
        })
    }

    /// Dense index of a guest page number.
    pub fn index_of_page(&self, page: PageNumber) -> Option<usize> {
        let gpa = page.checked_mul(PAGE_SIZE)?;
        self.regions.iter().find_map(|p| {
            let start = p.region.guest_addr;
            (gpa >= start && gpa < start + p.region.len)
                .then(|| p.first_index + ((gpa - start) / PAGE_SIZE) as usize)
        })
    }

    pub fn page_of_index(&self, index: usize) -> PageNumber {
        let p = self.placed_of_index(index);
        p.region.guest_addr / PAGE_SIZE + (index - p.first_index) as u64
    }

    pub fn host_of_index(&self, index: usize) -> usize {
        let p = self.placed_of_index(index);
        p.region.host_addr + (index - p.first_index) * PAGE_SIZE as usize
    }

    pub fn file_offset_of_index(&self, index: usize) -> u64 {
        let p = self.placed_of_index(index);
        p.region.file_offset + (index - p.first_index) as u64 * PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_cross_regions() {
        let l = GuestLayout::new(&[
            GuestRegion {
                guest_addr: 0,
                host_addr: 0x10_0000,
                len: 0x4000,
                file_offset: 0,
            },
            GuestRegion {
                guest_addr: 0x1_0000_0000,
                host_addr: 0x90_0000,
                len: 0x2000,
                file_offset: 0x4000,
            },
        ]);
        assert_eq!(l.pages(), 6);
        assert_eq!(l.index_of_host(0x10_1fff), Some(1));
        assert_eq!(l.index_of_host(0x90_1000), Some(5));
        assert_eq!(l.index_of_host(0x90_2000), None);
        assert_eq!(l.index_of_page(0x10_0001), Some(5));
        assert_eq!(l.page_of_index(4), 0x10_0000);
        assert_eq!(l.host_of_index(4), 0x90_0000);
        assert_eq!(l.file_offset_of_index(5), 0x5000);
        assert_eq!(l.file_offset_of_index(3), 0x3000);
    }
}
