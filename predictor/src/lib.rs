//! Access prediction for tiervisor: advisors behind `tiering::advisor::Advisor`
//! (baselines, the GRU) and the replay simulator that compares them.

/// Inside `impl Advisor for W`: forwards the calls a wrapper passes through unchanged
/// to its field `$inner` (every method but `on_access` and `end_window`, which the
/// wrappers here observe). One list, so a method added to the trait is forwarded by
/// every wrapper at once.
#[cfg(feature = "gru")]
macro_rules! forward_advisor {
    ($inner:ident) => {
        fn name(&self) -> &str {
            self.$inner.name()
        }
        fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
            self.$inner.on_fill(page, prefetched);
        }
        fn on_evict(&mut self, page: PageNumber) {
            self.$inner.on_evict(page);
        }
        fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
            self.$inner.victims(n, out);
        }
        fn prefetch(&mut self, now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
            self.$inner.prefetch(now_ns, max, out);
        }
        fn probability(&self, page: PageNumber) -> f32 {
            self.$inner.probability(page)
        }
        fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
            self.$inner.on_prefetch_outcome(page, used);
        }
        fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
            self.$inner.probes(max, out);
        }
        fn wants_hot_set(&self) -> bool {
            self.$inner.wants_hot_set()
        }
        fn set_ram_budget(&mut self, pages: usize) {
            self.$inner.set_ram_budget(pages);
        }
    };
}

pub mod baselines;
#[cfg(feature = "gru")]
pub mod changepoints;
pub(crate) mod pagetable;
pub mod replay;
pub mod saved_model;

pub use replay::registry::{
    make_advisor, make_live_advisor, LiveAdvisor, ReplayContext, UnknownAdvisor,
};

#[cfg(feature = "gru")]
pub mod gru;
#[cfg(feature = "gru")]
pub mod live;
