//! Page kinds from a walk of the guest's page tables: a page mapped executable is
//! code, one mapped at more than one virtual address is shared, any other mapped page
//! is data. The walk reads the tables through the memfd (never through the guest
//! mapping, which would fault into this very thread) and skips tables that are not in
//! RAM at the moment.

use crate::access::PageKind;

/// Present bit of a page-table entry.
const PRESENT: u64 = 1;
/// Page-size bit: a 2 MiB (level 2) or 1 GiB (level 3) leaf.
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// No-execute bit (honoured only with EFER.NXE).
const NX: u64 = 1 << 63;
/// Physical address bits of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What a walk found.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkStats {
    pub tables_read: u64,
    pub tables_unreadable: u64,
    pub leaves: u64,
}

/// Per-page mapping counts and executability, then kinds.
pub struct KindMap {
    count: Vec<u8>,
    exec: Vec<bool>,
}

impl KindMap {
    pub fn new(pages: usize) -> Self {
        Self {
            count: vec![0; pages],
            exec: vec![false; pages],
        }
    }

    /// Walk the 4-level tables at `cr3`. `read_table(gpa, buf)` fills `buf` with the
    /// 4 KiB table at guest-physical `gpa` (false: not readable now); `index_of(gpa)`
    /// is the dense index of a guest page.
    pub fn walk(
        &mut self,
        cr3: u64,
        nxe: bool,
        read_table: &mut dyn FnMut(u64, &mut [u8; 4096]) -> bool,
        index_of: &dyn Fn(u64) -> Option<usize>,
    ) -> WalkStats {
        self.count.iter_mut().for_each(|c| *c = 0);
        self.exec.iter_mut().for_each(|e| *e = false);
        let mut stats = WalkStats::default();
        self.walk_table(
            cr3 & ADDR_MASK,
            4,
            false,
            nxe,
            read_table,
            index_of,
            &mut stats,
        );
        stats
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_table(
        &mut self,
        table: u64,
        level: u32,
        nx_above: bool,
        nxe: bool,
        read_table: &mut dyn FnMut(u64, &mut [u8; 4096]) -> bool,
        index_of: &dyn Fn(u64) -> Option<usize>,
        stats: &mut WalkStats,
    ) {
        let mut buf = [0u8; 4096];
        if !read_table(table, &mut buf) {
            stats.tables_unreadable += 1;
            return;
        }
        stats.tables_read += 1;
        for i in 0..512 {
            let e = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            if e & PRESENT == 0 {
                continue;
            }
            let nx = nx_above || (nxe && e & NX != 0);
            let leaf = level == 1 || (level <= 3 && e & PAGE_SIZE_BIT != 0);
            if !leaf {
                self.walk_table(
                    e & ADDR_MASK,
                    level - 1,
                    nx,
                    nxe,
                    read_table,
                    index_of,
                    stats,
                );
                continue;
            }
            stats.leaves += 1;
            let size = 1u64 << (12 + 9 * (level - 1));
            let base = e & ADDR_MASK & !(size - 1);
            let mut gpa = base;
            while gpa < base + size {
                if let Some(idx) = index_of(gpa) {
                    self.count[idx] = self.count[idx].saturating_add(1);
                    self.exec[idx] |= !nx;
                }
                gpa += 4096;
            }
        }
    }

    /// The kind of the page at dense index `idx` after the last walk.
    pub fn kind(&self, idx: usize) -> PageKind {
        match (self.count[idx], self.exec[idx]) {
            (0, _) => PageKind::Unknown,
            (_, true) => PageKind::Code,
            (1, false) => PageKind::Data,
            _ => PageKind::Shared,
        }
    }

    /// Pages of each kind: (code, data, shared).
    pub fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for i in 0..self.count.len() {
            match self.kind(i) {
                PageKind::Code => t.0 += 1,
                PageKind::Data => t.1 += 1,
                PageKind::Shared => t.2 += 1,
                PageKind::Unknown => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn walk_classifies_code_data_and_shared() {
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        let mut mem: HashMap<u64, [u8; 4096]> = HashMap::new();
        let mut put = |table: u64, i: usize, e: u64| {
            mem.entry(table).or_insert([0; 4096])[i * 8..i * 8 + 8]
                .copy_from_slice(&e.to_le_bytes());
        };
        put(0x1000, 0, 0x2000 | 3);
        put(0x2000, 0, 0x3000 | 3);
        put(0x3000, 0, 0x4000 | 3);
        put(0x4000, 0x10, 0x10_000 | 1); // code (executable)
        put(0x4000, 0x11, 0x11_000 | 3 | NX); // data
        put(0x4000, 0x12, 0x12_000 | 3 | NX); // shared: mapped twice
        put(0x4000, 0x13, 0x12_000 | 3 | NX);
        put(0x3000, 1, 0x20_0000 | 3 | PAGE_SIZE_BIT | NX); // a 2 MiB data leaf
        let mut read = |gpa: u64, buf: &mut [u8; 4096]| match mem.get(&gpa) {
            Some(t) => {
                *buf = *t;
                true
            }
            None => false,
        };
        let index_of = |gpa: u64| (gpa < 0x40_0000).then_some((gpa / 4096) as usize);
        let mut k = KindMap::new(1024);
        let s = k.walk(0x1000, true, &mut read, &index_of);
        assert_eq!(s.tables_read, 4);
        assert_eq!(k.kind(0x10), PageKind::Code);
        assert_eq!(k.kind(0x11), PageKind::Data);
        assert_eq!(k.kind(0x12), PageKind::Shared);
        assert_eq!(k.kind(0x14), PageKind::Unknown);
        assert_eq!(k.kind(0x200), PageKind::Data);
        assert_eq!(k.kind(0x3ff), PageKind::Data);
        assert_eq!(k.totals(), (1, 513, 1));
        // Without NXE every mapped page is executable.
        k.walk(0x1000, false, &mut read, &index_of);
        assert_eq!(k.kind(0x11), PageKind::Code);
    }
}
