//! Monitoring beyond MISSING faults: page kinds from the guest page tables and
//! sampled minor faults on resident pages.

use std::os::unix::fs::FileExt;

use super::*;

impl Engine {
    /// Walk the guest page tables (when the VM says where they are) to tell code,
    /// data and shared pages apart for the events that follow.
    pub(super) fn classify_pages(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some((cr3, nxe)) = self.hooks.page_table_root() else {
            return;
        };
        let mut kinds = std::mem::replace(&mut self.kinds, crate::pagekind::KindMap::new(0));
        let (layout, meta, memfd) = (&self.layout, &self.meta, &self.memfd);
        let index_of = |gpa: u64| layout.index_of_page(gpa / PAGE_SIZE);
        let mut read_table = |gpa: u64, buf: &mut [u8; 4096]| {
            let Some(index) = index_of(gpa) else {
                return false;
            };
            // Tables not in RAM right now are skipped rather than read from a tier.
            matches!(
                meta[index].state,
                State::Present | State::Evicting | State::EvictCancelled
            ) && memfd
                .read_exact_at(buf, layout.file_offset_of_index(index))
                .is_ok()
        };
        let stats = kinds.walk(cr3, nxe, &mut read_table, &index_of);
        self.kinds = kinds;
        self.counters.page_table_walks += 1;
        self.counters.page_tables_unreadable += stats.tables_unreadable;
    }

    pub(crate) fn kind_totals(&self) -> (u64, u64, u64) {
        self.kinds.totals()
    }

    /// Zap a random sample of resident pages; the MINOR faults that come back are
    /// access events for pages a MISSING fault never shows.
    pub(super) fn sample_resident(&mut self) {
        let n = self.meta.len();
        if n == 0 {
            return;
        }
        let mut zapped = 0;
        for _ in 0..self.config.sample_pages * 4 {
            if zapped >= self.config.sample_pages {
                break;
            }
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let index = (self.rng % n as u64) as usize;
            if self.meta[index].state == State::Present
                && uffd::zap(self.layout.host_of_index(index), PAGE).is_ok()
            {
                zapped += 1;
            }
        }
        self.counters.sampled_zaps += zapped as u64;
    }
}
