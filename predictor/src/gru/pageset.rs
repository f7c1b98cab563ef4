//! The set of pages a VM has ever touched, for the first-touch sources (and for the
//! readaheads, which leave untouched regions alone): one bit per page, in 512-page
//! (2 MiB) regions found by one hash lookup.
//!
//! A VM's pages cluster in a few regions (its RAM, or a process's heap, stack and
//! mappings in a lackey trace), so a 4 GiB VM's million pages take 2,048 regions of
//! 64 bytes of bits (at most about 300 KiB with the table's spare buckets), where a
//! hash set of pages needs 9-19 MiB. It replaced a `roaring` treemap (about 128 KiB):
//! one lookup instead of a B-tree walk and a container search on every observed
//! access.

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

const REGION_SHIFT: u32 = 9;
const WORDS: usize = 1 << (REGION_SHIFT - 6);

/// A set of page numbers.
#[derive(Debug, Default)]
pub struct PageSet {
    regions: FxHashMap<u64, [u64; WORDS]>,
}

/// Region, word and bit of `page`.
fn place(page: PageNumber) -> (u64, usize, u64) {
    let region = page >> REGION_SHIFT;
    let offset = (page & ((1 << REGION_SHIFT) - 1)) as usize;
    (region, offset >> 6, 1 << (offset & 63))
}

impl PageSet {
    /// Adds `page`; true if it was not in the set.
    pub fn insert(&mut self, page: PageNumber) -> bool {
        let (region, word, bit) = place(page);
        let w = &mut self.regions.entry(region).or_insert([0; WORDS])[word];
        let new = *w & bit == 0;
        *w |= bit;
        new
    }

    /// Whether any page of `page`'s 512-page region is in the set.
    pub fn region_touched(&self, page: PageNumber) -> bool {
        self.regions.contains_key(&(page >> REGION_SHIFT))
    }

    pub fn contains(&self, page: PageNumber) -> bool {
        let (region, word, bit) = place(page);
        self.regions
            .get(&region)
            .is_some_and(|r| r[word] & bit != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_members_once_inserted_across_regions_and_at_the_ends() {
        let mut s = PageSet::default();
        let pages = [0, 1, 63, 64, 511, 512, 1 << 20, u64::MAX >> 12, u64::MAX];
        for &p in &pages {
            assert!(!s.contains(p), "{p}");
            assert!(s.insert(p), "{p} is new");
            assert!(!s.insert(p), "{p} again");
            assert!(s.contains(p), "{p}");
        }
        for p in [2, 62, 65, 510, 513, (1 << 20) + 1] {
            assert!(!s.contains(p), "{p} was never inserted");
        }
        assert!(s.region_touched(2) && s.region_touched(1023));
        assert!(!s.region_touched(1024) && !s.region_touched((1 << 20) + 512));
    }
}
