//! The content every written page carries: a pattern derived from the page's address
//! (its offset in the working memory) and its version, filling the whole page. Reading a page back checks every word, so a
//! lost page (zeros), a stale one (older version), one from another address or any
//! flipped bit is caught.

use crate::rng::mix64;

/// 64-bit words in a 4 KiB page.
pub const WORDS_PER_PAGE: usize = 512;
/// Added per word so that neighbouring words differ (odd, so all 512 words are distinct).
const WORD_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// The first word of page `addr` at `version`; the rest follow by [`WORD_STEP`].
pub fn page_seed(addr: u64, version: u32) -> u64 {
    mix64(addr.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ mix64(u64::from(version) ^ 0x7e57_9e57))
}

/// The expected value of word `index` of page `addr` at `version`.
pub fn expected_word(addr: u64, version: u32, index: usize) -> u64 {
    page_seed(addr, version).wrapping_add((index as u64).wrapping_mul(WORD_STEP))
}

/// The first word of a page that does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the word (0..512; 512 if the page changed while being verified).
    pub word: usize,
    /// What the page holds.
    pub found: u64,
    /// What it should hold.
    pub expected: u64,
}

/// Writes the pattern of (`addr`, `version`) over the whole page at `page`.
///
/// # Safety
/// `page` must point to 4096 writable bytes, aligned to 8, that nothing else accesses
/// during the call.
pub unsafe fn fill_page(page: *mut u64, addr: u64, version: u32) {
    let mut value = page_seed(addr, version);
    for index in 0..WORDS_PER_PAGE {
        // SAFETY: in bounds of the 512-word page the caller vouches for. Volatile so every
        // store really reaches guest memory (the VMM, not this program, may read it next).
        unsafe { page.add(index).write_volatile(value) };
        value = value.wrapping_add(WORD_STEP);
    }
}

/// Reads the whole page and checks it against the pattern of (`addr`, `version`).
/// Returns a hash of the values read (a function of `addr` and `version` only when the
/// page is intact) or the first mismatching word.
///
/// # Safety
/// `page` must point to 4096 readable bytes, aligned to 8, that nothing writes during
/// the call.
pub unsafe fn verify_page(page: *const u64, addr: u64, version: u32) -> Result<u64, Mismatch> {
    // One pass that only accumulates (no branch per word, two independent lanes), and a
    // second pass to locate the first bad word only when something differed.
    let seed = page_seed(addr, version);
    let mut expected = seed;
    let mut diff = 0u64;
    let mut sum = 0u64;
    let mut mixed = 0u64;
    for index in (0..WORDS_PER_PAGE).step_by(2) {
        // SAFETY: index + 1 < 512, in bounds of the page the caller vouches for;
        // volatile so the reads really happen (never reuse what this program wrote).
        let (first, second) = unsafe {
            (
                page.add(index).read_volatile(),
                page.add(index + 1).read_volatile(),
            )
        };
        let second_expected = expected.wrapping_add(WORD_STEP);
        diff |= (first ^ expected) | (second ^ second_expected);
        sum = sum.wrapping_add(first);
        mixed ^= second.rotate_left(index as u32 / 2 % 64);
        expected = second_expected.wrapping_add(WORD_STEP);
    }
    if diff == 0 {
        return Ok(mix64(sum ^ mix64(mixed)));
    }
    let mut expected = seed;
    for index in 0..WORDS_PER_PAGE {
        // SAFETY: as above.
        let found = unsafe { page.add(index).read_volatile() };
        if found != expected {
            return Err(Mismatch {
                word: index,
                found,
                expected,
            });
        }
        expected = expected.wrapping_add(WORD_STEP);
    }
    // The page changed between the two passes (nothing else should write it): report
    // the first pass's finding as a mismatch of unknown position.
    Err(Mismatch {
        word: WORDS_PER_PAGE,
        found: diff,
        expected: 0,
    })
}

/// Hashes a whole page as read (used for the kv index pages, which hold data rather
/// than a pattern and never change after they are built).
///
/// # Safety
/// `page` must point to 4096 readable bytes, aligned to 8, that nothing writes during
/// the call.
pub unsafe fn hash_page(page: *const u64) -> u64 {
    let mut sum = 0u64;
    let mut mixed = 0u64;
    for index in (0..WORDS_PER_PAGE).step_by(2) {
        // SAFETY: index + 1 < 512, in bounds of the page the caller vouches for.
        let (first, second) = unsafe {
            (
                page.add(index).read_volatile(),
                page.add(index + 1).read_volatile(),
            )
        };
        sum = sum.wrapping_add(first.rotate_left(index as u32 / 2 % 64));
        mixed = mixed.rotate_left(1) ^ second;
    }
    mix64(sum ^ mix64(mixed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Vec<u64> {
        vec![0u64; WORDS_PER_PAGE]
    }

    fn fill(buf: &mut [u64], addr: u64, version: u32) {
        assert_eq!(buf.len(), WORDS_PER_PAGE);
        // SAFETY: buf is one page of words, borrowed mutably.
        unsafe { fill_page(buf.as_mut_ptr(), addr, version) }
    }

    fn verify(buf: &[u64], addr: u64, version: u32) -> Result<u64, Mismatch> {
        assert_eq!(buf.len(), WORDS_PER_PAGE);
        // SAFETY: buf is one page of words, borrowed for the call.
        unsafe { verify_page(buf.as_ptr(), addr, version) }
    }

    #[test]
    fn filled_page_verifies_with_its_address_and_version() {
        let mut buf = page();
        fill(&mut buf, 0x20_0000, 3);
        assert_eq!(buf[0], page_seed(0x20_0000, 3));
        assert_eq!(buf[511], expected_word(0x20_0000, 3, 511));
        let first = verify(&buf, 0x20_0000, 3).unwrap();
        let again = verify(&buf, 0x20_0000, 3).unwrap();
        assert_eq!(first, again, "the read hash is repeatable");
    }

    #[test]
    fn stale_moved_zeroed_or_flipped_pages_fail() {
        let mut buf = page();
        fill(&mut buf, 0x40_0000, 7);
        let stale = verify(&buf, 0x40_0000, 8).unwrap_err();
        assert_eq!(stale.word, 0);
        assert_eq!(stale.found, page_seed(0x40_0000, 7));
        let moved = verify(&buf, 0x40_1000, 7).unwrap_err();
        assert_eq!(moved.word, 0);

        let mut flipped = buf.clone();
        flipped[300] ^= 1 << 17;
        let bit = verify(&flipped, 0x40_0000, 7).unwrap_err();
        assert_eq!(bit.word, 300);
        assert_eq!(bit.expected, expected_word(0x40_0000, 7, 300));

        let zero = page();
        assert!(verify(&zero, 0x40_0000, 7).is_err());

        let mut last = buf.clone();
        last[511] = 0;
        assert_eq!(verify(&last, 0x40_0000, 7).unwrap_err().word, 511);
    }

    #[test]
    fn page_hash_sees_any_changed_word() {
        let mut buf = page();
        fill(&mut buf, 0x1000, 1);
        // SAFETY: buf is one page of words.
        let hash = |b: &[u64]| unsafe { hash_page(b.as_ptr()) };
        let original = hash(&buf);
        for word in [0, 1, 255, 510, 511] {
            let mut changed = buf.clone();
            changed[word] ^= 1 << (word % 64);
            assert_ne!(hash(&changed), original, "word {word}");
        }
        let mut swapped = buf.clone();
        swapped.swap(2, 4);
        assert_ne!(hash(&swapped), original, "moved words");
        assert_ne!(hash(&page()), original);
    }

    #[test]
    fn every_word_of_a_pattern_is_distinct_and_versions_differ() {
        let words: std::collections::HashSet<u64> = (0..WORDS_PER_PAGE)
            .map(|i| expected_word(0x1000, 1, i))
            .collect();
        assert_eq!(words.len(), WORDS_PER_PAGE);
        for version in 1..100 {
            assert_ne!(page_seed(0x1000, version), page_seed(0x1000, version + 1));
            assert_ne!(page_seed(0x1000, version), page_seed(0x2000, version));
        }
    }
}
