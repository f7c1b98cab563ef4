//! `PageTable`: a record per page (or per block of pages), in chunks of 512.
//!
//! The advisors keep several facts per page (list links, shadow entries, flags). In a
//! hash map each is a lookup of its own, and on a VM with a few hundred thousand pages
//! each lookup is a cache miss. Here the facts of one page share one record, found
//! through a map of chunks that is small enough to stay in the cache (2,048 entries
//! for the pages of 4 GiB), and records of neighbouring pages or blocks are neighbours
//! in memory. Chunks are allocated on first use and kept: a VM's touched memory, not
//! its size, sets the table's size (sparse traces of 64-bit addresses included).
//! Keys are page numbers or block numbers: any `u64`.

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

/// A page number no page has: what a record that names another page holds for none.
pub const NO_PAGE: PageNumber = PageNumber::MAX;

const CHUNK_SHIFT: u32 = 9;
const CHUNK_PAGES: usize = 1 << CHUNK_SHIFT;

/// A `T` for every page, `T::default()` for pages never written.
#[derive(Debug)]
pub struct PageTable<T> {
    chunks: FxHashMap<u64, Box<[T]>>,
    /// A record for pages of chunks not allocated, returned by [`PageTable::get`].
    empty: T,
}

impl<T: Default + Clone> Default for PageTable<T> {
    fn default() -> Self {
        Self {
            chunks: FxHashMap::default(),
            empty: T::default(),
        }
    }
}

fn split(page: PageNumber) -> (u64, usize) {
    (page >> CHUNK_SHIFT, (page as usize) & (CHUNK_PAGES - 1))
}

impl<T: Default + Clone> PageTable<T> {
    /// `page`'s record (the default one if it was never written).
    pub fn get(&self, page: PageNumber) -> &T {
        let (chunk, i) = split(page);
        match self.chunks.get(&chunk) {
            Some(c) => &c[i],
            None => &self.empty,
        }
    }

    /// `page`'s record for writing, its chunk made if it has none.
    pub fn get_mut(&mut self, page: PageNumber) -> &mut T {
        let (chunk, i) = split(page);
        &mut self
            .chunks
            .entry(chunk)
            .or_insert_with(|| vec![T::default(); CHUNK_PAGES].into_boxed_slice())[i]
    }

    /// `page`'s record for writing if its chunk exists (no allocation).
    pub fn get_mut_if_present(&mut self, page: PageNumber) -> Option<&mut T> {
        let (chunk, i) = split(page);
        self.chunks.get_mut(&chunk).map(|c| &mut c[i])
    }

    /// Every record of every allocated chunk, with its page, in no set order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(PageNumber, &mut T)) {
        for (&chunk, records) in &mut self.chunks {
            for (i, r) in records.iter_mut().enumerate() {
                f(chunk << CHUNK_SHIFT | i as u64, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_per_page_default_until_written_and_visited_with_their_page() {
        let mut t: PageTable<u32> = PageTable::default();
        assert_eq!(*t.get(5), 0);
        assert!(t.get_mut_if_present(5).is_none());
        *t.get_mut(5) = 7;
        *t.get_mut(u64::MAX >> 12) = 9;
        assert_eq!(*t.get(5), 7);
        assert_eq!(*t.get(6), 0);
        assert_eq!(*t.get(u64::MAX >> 12), 9);
        assert_eq!(t.get_mut_if_present(6).copied(), Some(0));
        let mut written = Vec::new();
        t.for_each_mut(|p, r| {
            if *r != 0 {
                written.push((p, *r));
            }
        });
        written.sort_unstable();
        assert_eq!(written, [(5, 7), (u64::MAX >> 12, 9)]);
    }
}
