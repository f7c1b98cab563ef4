//! Monitoring beyond MISSING faults: page kinds from the guest page tables and
//! sampled minor faults on resident pages.

use std::os::unix::fs::FileExt;

use super::*;

/// Resident pages hashed per scan for sharing across VMs (with the interval below:
/// at most 6,400 pages, 25 MiB, a second).
const SHARE_SCAN_PAGES: usize = 64;
const SHARE_SCAN_INTERVAL: Duration = Duration::from_millis(10);

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

    /// A page's kind for the events: `Shared` when its content is in another live
    /// VM (content hashes), else what the page-table walk found.
    pub(super) fn kind_of(&self, index: usize) -> PageKind {
        match &self.share {
            Some(s) if s.is_shared(index) => PageKind::Shared,
            _ => self.kinds.kind(index),
        }
    }

    /// KSM-like: hash the content of up to [`SHARE_SCAN_PAGES`] resident pages per
    /// [`SHARE_SCAN_INTERVAL`] (round robin over guest RAM, read through the memfd),
    /// then publish and re-read the share directory when it is time.
    pub(super) fn scan_for_sharing(&mut self) {
        if self.share.is_none()
            || self
                .last_share_scan
                .is_some_and(|t| t.elapsed() < SHARE_SCAN_INTERVAL)
        {
            return;
        }
        self.last_share_scan = Some(Instant::now());
        let n = self.meta.len();
        let mut buf = self.pool.get();
        let mut hashed = 0;
        for _ in 0..n.min(SHARE_SCAN_PAGES * 8) {
            if hashed >= SHARE_SCAN_PAGES {
                break;
            }
            let index = self.share_cursor;
            self.share_cursor = (self.share_cursor + 1) % n;
            if !matches!(
                self.meta[index].state,
                State::Present | State::EvictCancelled
            ) {
                continue;
            }
            let off = self.layout.file_offset_of_index(index);
            if self.memfd.read_exact_at(&mut buf, off).is_ok() {
                if let Some(share) = self.share.as_mut() {
                    share.record(index, &buf);
                }
                hashed += 1;
            }
        }
        self.counters.pages_hashed += hashed as u64;
        let Some(share) = self.share.as_mut() else {
            return;
        };
        match share.maybe_refresh() {
            Ok(()) => {
                let c = &mut self.counters;
                c.shared_pages_peak = c.shared_pages_peak.max(share.shared_pages());
                c.share_peers_peak = c.share_peers_peak.max(share.live_peers() as u64);
            }
            Err(e) => {
                // Sharing is an observation, not needed to run: stop it, keep the VM.
                log::warn!("content sharing across VMs stops: {e}");
                self.share = None;
            }
        }
    }

    pub(crate) fn kind_totals(&self) -> (u64, u64, u64) {
        self.kinds.totals()
    }

    /// Zap the resident pages the advisor wants watched; a MINOR fault that comes back
    /// is an access event for a page a MISSING fault never shows.
    pub(super) fn probe_resident(&mut self) {
        let mut pages = std::mem::take(&mut self.probe_scratch);
        pages.clear();
        self.policy.probes(self.config.probe_pages, &mut pages);
        for &page in &pages {
            let Some(index) = self.layout.index_of_page(page) else {
                continue;
            };
            if self.meta[index].state == State::Present
                && uffd::zap(self.layout.host_of_index(index), PAGE).is_ok()
            {
                self.counters.probe_zaps += 1;
            }
        }
        self.probe_scratch = pages;
    }

    /// Zap a random sample of resident pages, as [`Engine::probe_resident`] zaps the
    /// advisor's.
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
                self.meta[index].sampled = true;
                zapped += 1;
            }
        }
        self.counters.sampled_zaps += zapped as u64;
    }
}
