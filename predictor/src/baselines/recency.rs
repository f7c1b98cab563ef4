//! A recency-based access probability for advisors that have no model of their own.

use rustc_hash::FxHashMap;
use tiering::access::PageNumber;

/// Estimates the probability that a page is touched within the next window as
/// `1 / (1 + windows since its last observed access)`: touched in the current
/// window -> 1, one window ago -> 0.5, 19 or more ago -> below 0.05 (HDD with the
/// default thresholds), 99 or more -> below 0.01 (networked). Never seen: 0.
#[derive(Debug, Default)]
pub struct Recency {
    window: u64,
    last: FxHashMap<PageNumber, u64>,
}

impl Recency {
    pub fn touch(&mut self, page: PageNumber) {
        self.last.insert(page, self.window);
    }

    pub fn end_window(&mut self) {
        self.window += 1;
    }

    pub fn probability(&self, page: PageNumber) -> f32 {
        match self.last.get(&page) {
            Some(&w) => 1.0 / (1.0 + (self.window - w) as f32),
            None => 0.0,
        }
    }
}
