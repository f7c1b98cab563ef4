//! Baseline advisors behind the same [`tiering::advisor::Advisor`] trait as the GRU:
//! what every result is compared against (DESIGN.md, "Baselines").
//!
//! | name | eviction | prefetch |
//! |---|---|---|
//! | `none` | CLOCK (second chance) | none: demand paging |
//! | `lru` | least recently used | none |
//! | `lfu` | least frequently used with dynamic aging (LFU-DA) | none |
//! | `arc` | ARC (FAST'03): recency and frequency lists sized by ghost hits | none |
//! | `lirs` | LIRS (SIGMETRICS'02): keeps the pages of shortest reuse distance | none |
//! | `stride` | LRU | kernel-style readahead on a constant fault stride |
//! | `leap` | LRU | Leap (ATC'20): majority trend of recent fault deltas |
//! | `reap` | LRU | the recorded working set (first-touch order), once, up front |
//! | `oracle` | Belady MIN (future knowledge) | the next pages the trace uses |
//! | `belady` | Belady MIN | none |
//! | `prefetch-oracle` | LRU, every access seen | the oracle's |
//!
//! Every call is O(1) or O(log n): traces have tens of millions of accesses.
//!
//! Tier placement: the baselines have no opinion ([`NO_OPINION`]), so every page
//! they evict goes to tier 2, the fastest storage tier, as with one swap device
//! (B0). Their results measure eviction and prefetching alone; placing cold pages
//! in slower tiers is left to advisors that predict (the GRU).

mod arc;
mod clock;
mod lfu;
mod lirs;
mod lru;
mod oracle;
mod prefetchers;
mod reap;
mod workingset;

pub use arc::ArcAdvisor;
pub use clock::ClockAdvisor;
pub use lfu::LfuAdvisor;
pub use lirs::LirsAdvisor;
use lru::drain_not_resident;
pub use lru::{LruAdvisor, LruList};
pub use oracle::{OracleAdvisor, OracleFuture};
pub use prefetchers::{LeapAdvisor, Readahead, StrideAdvisor};
pub use reap::ReapAdvisor;
pub use workingset::{WorkingSet, WorkingSetAdvisor};

/// Probability the baselines report for every page: maps to tier 2 (NVMe) with the
/// default thresholds.
pub const NO_OPINION: f32 = 0.25;

#[cfg(test)]
mod tests;
