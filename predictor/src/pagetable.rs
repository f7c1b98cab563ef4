//! `PageTable`: a record per page (or per block of pages), in chunks of 512.
//!
//! The advisors keep several facts per page (list links, shadow entries, flags). In a
//! hash map each is a lookup of its own, and on a VM with a few hundred thousand pages
//! each lookup is a cache miss. Here the facts of one page share one record, found
//! through a flat directory of chunks (16 KiB for the pages of 4 GiB; a map for the
//! page numbers of a lackey trace's far addresses), and records of neighbouring pages
//! or blocks are neighbours in memory. Chunks are allocated on first use and kept: a
//! VM's touched memory, not its size, sets the table's size (sparse traces of 64-bit
//! addresses included).
//! Keys are page numbers or block numbers: any `u64`.

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

/// A page number no page has: what a record that names another page holds for none.
pub const NO_PAGE: PageNumber = PageNumber::MAX;

const CHUNK_SHIFT: u32 = 9;
const CHUNK_PAGES: usize = 1 << CHUNK_SHIFT;

/// Chunks numbered below this are found in a flat directory (a VM's guest-physical
/// pages: 64 GiB of them); the rest (a lackey trace's virtual addresses) in a map.
const DIRECT_CHUNKS: u64 = 1 << 15;

type Chunk<T> = Box<[T; CHUNK_PAGES]>;

/// A `T` for every page, `T::default()` for pages never written.
#[derive(Debug)]
pub struct PageTable<T> {
    /// Chunk `c` at `direct[c]`, for `c < DIRECT_CHUNKS`: a record is one load from
    /// the directory and one from the chunk. On a busy VM every one of those misses
    /// the cache (the guest's and the kernel's work between faults leaves the
    /// advisor's data cold), and a map's lookup adds one or two dependent misses.
    direct: Vec<Option<Chunk<T>>>,
    /// Chunks numbered `DIRECT_CHUNKS` and above.
    far: FxHashMap<u64, Chunk<T>>,
    /// A record for pages of chunks not allocated, returned by [`PageTable::get`].
    empty: T,
}

impl<T: Default + Clone> Default for PageTable<T> {
    fn default() -> Self {
        Self {
            direct: Vec::new(),
            far: FxHashMap::default(),
            empty: T::default(),
        }
    }
}

fn split(page: PageNumber) -> (u64, usize) {
    (page >> CHUNK_SHIFT, (page as usize) & (CHUNK_PAGES - 1))
}

fn new_chunk<T: Default + Clone>() -> Chunk<T> {
    vec![T::default(); CHUNK_PAGES]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("the vector has CHUNK_PAGES records"))
}

impl<T: Default + Clone> PageTable<T> {
    fn chunk(&self, chunk: u64) -> Option<&Chunk<T>> {
        if chunk < DIRECT_CHUNKS {
            self.direct.get(chunk as usize)?.as_ref()
        } else {
            self.far.get(&chunk)
        }
    }

    fn chunk_mut(&mut self, chunk: u64) -> Option<&mut Chunk<T>> {
        if chunk < DIRECT_CHUNKS {
            self.direct.get_mut(chunk as usize)?.as_mut()
        } else {
            self.far.get_mut(&chunk)
        }
    }

    /// `page`'s record (the default one if it was never written).
    pub fn get(&self, page: PageNumber) -> &T {
        let (chunk, i) = split(page);
        match self.chunk(chunk) {
            Some(c) => &c[i],
            None => &self.empty,
        }
    }

    /// `page`'s record for writing, its chunk made if it has none.
    pub fn get_mut(&mut self, page: PageNumber) -> &mut T {
        let (chunk, i) = split(page);
        let c = if chunk < DIRECT_CHUNKS {
            let at = chunk as usize;
            if self.direct.len() <= at {
                self.direct.resize_with(at + 1, || None);
            }
            self.direct[at].get_or_insert_with(new_chunk)
        } else {
            self.far.entry(chunk).or_insert_with(new_chunk)
        };
        &mut c[i]
    }

    /// `page`'s record for writing if its chunk exists (no allocation).
    pub fn get_mut_if_present(&mut self, page: PageNumber) -> Option<&mut T> {
        let (chunk, i) = split(page);
        self.chunk_mut(chunk).map(|c| &mut c[i])
    }

    /// Every record of every allocated chunk, with its page, in no set order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(PageNumber, &mut T)) {
        let direct = self
            .direct
            .iter_mut()
            .enumerate()
            .filter_map(|(c, r)| Some((c as u64, r.as_mut()?)));
        for (chunk, records) in direct.chain(self.far.iter_mut().map(|(&c, r)| (c, r))) {
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
        // The last chunk of the directory and the first found by the map.
        let edge = DIRECT_CHUNKS << CHUNK_SHIFT;
        *t.get_mut(edge - 1) = 3;
        *t.get_mut(edge) = 4;
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
        assert_eq!(
            written,
            [(5, 7), (edge - 1, 3), (edge, 4), (u64::MAX >> 12, 9)]
        );
        assert_eq!(
            (*t.get(edge - 1), *t.get(edge), *t.get(edge + 1)),
            (3, 4, 0)
        );
    }
}
