//! Baseline advisors behind the same [`tiering::advisor::Advisor`] trait as the GRU:
//! what every result is compared against (DESIGN.md, "Baselines").
//!
//! | name | eviction | prefetch |
//! |---|---|---|
//! | `none` | CLOCK (second chance) | none: demand paging |
//! | `lru` | least recently used | none |
//! | `lfu` | least frequently used (ties: least recent) | none |
//! | `stride` | LRU | kernel-style readahead on a constant fault stride |
//! | `leap` | LRU | Leap (ATC'20): majority trend of recent fault deltas |
//! | `oracle` | Belady MIN (future knowledge) | the next pages the trace uses |
//!
//! Every call is O(1) or O(log n): traces have tens of millions of accesses.
//! `probability` is a recency estimate for all but the oracle (see [`Recency`]).

mod clock;
mod lfu;
mod lru;
mod oracle;
mod prefetchers;
mod recency;

pub use clock::ClockAdvisor;
pub use lfu::LfuAdvisor;
pub use lru::{LruAdvisor, LruList};
pub use oracle::{OracleAdvisor, OracleFuture};
pub use prefetchers::{LeapAdvisor, StrideAdvisor};
pub use recency::Recency;

#[cfg(test)]
mod tests;
