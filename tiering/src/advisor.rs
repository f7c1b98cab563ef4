//! The interface between mechanism (this crate) and policy (the `predictor` crate).
//!
//! The tier manager (live VMM) and the replay simulator drive an advisor through the
//! same calls, in the same order, so an advisor cannot tell a replay from a live VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::access::{Access, PageNumber};

/// Decides which pages to prefetch and which to evict.
///
/// Call order for every access the driver observes: [`Advisor::on_access`]; if the
/// page was not resident the driver then fills it and calls [`Advisor::on_fill`].
/// When RAM is over budget the driver asks [`Advisor::victims`] and calls
/// [`Advisor::on_evict`] for each page it actually evicts. Once per window it calls
/// [`Advisor::end_window`] and then [`Advisor::prefetch`].
///
/// `on_access` runs on the fault path: it must be O(1) amortised and never block.
pub trait Advisor: Send {
    /// Short name used in reports (`none`, `lru`, `leap`, `gru`, ...).
    fn name(&self) -> &str;

    /// An access was observed. `resident` says whether the page was in RAM.
    fn on_access(&mut self, access: &Access, resident: bool);

    /// `page` entered RAM, on demand (`prefetched == false`) or by a prefetch.
    fn on_fill(&mut self, page: PageNumber, prefetched: bool);

    /// `page` left RAM.
    fn on_evict(&mut self, page: PageNumber);

    /// Append up to `n` resident pages to evict to `out`, least wanted first.
    /// Only pages the advisor was told are resident (via `on_fill`) may be named.
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>);

    /// Append up to `max` non-resident pages to bring into RAM now, most wanted first.
    fn prefetch(&mut self, now_ns: u64, max: usize, out: &mut Vec<PageNumber>);

    /// Probability that `page` is accessed within the advisor's horizon, in [0, 1].
    /// The placement policy maps it to a target tier through thresholds.
    fn probability(&self, page: PageNumber) -> f32;

    /// A monitoring window ended at `now_ns`: time to update models.
    fn end_window(&mut self, _now_ns: u64) {}

    /// What became of a prefetched page: first used (`used`), or evicted unused. The
    /// simulator knows every use; a live VM learns of writes from the dirty log, so an
    /// advisor must not rely on hearing of every use.
    fn on_prefetch_outcome(&mut self, _page: PageNumber, _used: bool) {}

    /// Append up to `max` resident pages whose next touch the advisor wants to see,
    /// asked once per window. The driver zaps them (a live VM: `MADV_DONTNEED` with
    /// userfaultfd MINOR mode), so a touch comes back as a sampled minor fault, which
    /// costs the guest a minor fault and reaches [`Advisor::on_access`]. Under sampled
    /// visibility an advisor otherwise learns of hits only by chance; probing the pages
    /// it is about to evict is the kernel's referenced-bit check at the inactive tail.
    fn probes(&mut self, _max: usize, _out: &mut Vec<PageNumber>) {}

    /// Whether the policy keeps a hot set (tier 0) over this advisor: the resident
    /// pages with the most observed accesses, which are never evicted, and brought
    /// back when they turn hot while out of RAM. The set is chosen by access counts,
    /// not by the advisor, so an advisor that orders eviction by its own prediction
    /// may decline it (docs/benchmarks.md, "Session 15, without tier 0").
    fn wants_hot_set(&self) -> bool {
        true
    }

    /// The RAM budget changed while running (a RAM pool moved this VM's share): an
    /// advisor whose lists are sized by the budget resizes them. Called before the
    /// policy evicts down to a smaller budget.
    fn set_ram_budget(&mut self, _pages: usize) {}
}

/// The advisor's calls, for the breakdown of its time ([`AdvisorTime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    OnAccess,
    OnFill,
    OnEvict,
    Victims,
    Prefetch,
    Probability,
    EndWindow,
    PrefetchOutcome,
    Probes,
    SetRamBudget,
}

impl Call {
    pub const ALL: [Call; 10] = [
        Call::OnAccess,
        Call::OnFill,
        Call::OnEvict,
        Call::Victims,
        Call::Prefetch,
        Call::Probability,
        Call::EndWindow,
        Call::PrefetchOutcome,
        Call::Probes,
        Call::SetRamBudget,
    ];

    /// The method's name, as reports give it.
    pub fn name(self) -> &'static str {
        match self {
            Call::OnAccess => "on_access",
            Call::OnFill => "on_fill",
            Call::OnEvict => "on_evict",
            Call::Victims => "victims",
            Call::Prefetch => "prefetch",
            Call::Probability => "probability",
            Call::EndWindow => "end_window",
            Call::PrefetchOutcome => "on_prefetch_outcome",
            Call::Probes => "probes",
            Call::SetRamBudget => "set_ram_budget",
        }
    }
}

/// Wall time spent inside an advisor's calls, in total and by call: which call a
/// change of cost comes from (a live VM's first call after a fault pays for data the
/// fault's other work left cold; docs/predictor.md, "Live, on a larger VM").
#[derive(Debug, Default)]
pub struct AdvisorTime {
    total_ns: AtomicU64,
    ns: [AtomicU64; Call::ALL.len()],
    calls: [AtomicU64; Call::ALL.len()],
}

impl AdvisorTime {
    /// Nanoseconds inside the advisor, all calls.
    pub fn total_ns(&self) -> u64 {
        self.total_ns.load(Ordering::Relaxed)
    }

    /// How many times `call` was made and the nanoseconds spent in it.
    pub fn of(&self, call: Call) -> (u64, u64) {
        let i = call as usize;
        (
            self.calls[i].load(Ordering::Relaxed),
            self.ns[i].load(Ordering::Relaxed),
        )
    }

    /// Every call made at least once: its name, count and nanoseconds.
    pub fn by_call(&self) -> Vec<(&'static str, u64, u64)> {
        Call::ALL
            .iter()
            .map(|&c| {
                let (n, ns) = self.of(c);
                (c.name(), n, ns)
            })
            .filter(|&(_, n, _)| n > 0)
            .collect()
    }

    fn add(&self, call: Call, ns: u64) {
        let i = call as usize;
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.ns[i].fetch_add(ns, Ordering::Relaxed);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// An advisor whose calls are timed: the wall time spent inside them is summed into a
/// counter shared with whoever reports it (the replay's `advisor_cpu_ns`, the live
/// report's `advisor_cpu_ms`). The cost of the two clock reads is subtracted from each.
pub struct TimedAdvisor {
    inner: Box<dyn Advisor>,
    spent: Arc<AdvisorTime>,
    /// Cost of one `Instant::now()` pair, subtracted from every measurement.
    overhead_ns: u64,
}

impl TimedAdvisor {
    pub fn new(inner: Box<dyn Advisor>) -> Self {
        Self {
            inner,
            spent: Arc::default(),
            overhead_ns: instant_overhead_ns(),
        }
    }

    /// The running totals of time spent inside the advisor.
    pub fn spent(&self) -> Arc<AdvisorTime> {
        self.spent.clone()
    }

    fn timed<T>(&mut self, call: Call, f: impl FnOnce(&mut dyn Advisor) -> T) -> T {
        let inner = self.inner.as_mut();
        measure(&self.spent, call, self.overhead_ns, || f(inner))
    }
}

/// Runs `f`, adding its wall time less `overhead_ns` (the clock reads) to `spent`.
fn measure<T>(spent: &AdvisorTime, call: Call, overhead_ns: u64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    spent.add(
        call,
        (t.elapsed().as_nanos() as u64).saturating_sub(overhead_ns),
    );
    r
}

fn instant_overhead_ns() -> u64 {
    let mut samples: Vec<u64> = (0..1001)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(&t);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

impl Advisor for TimedAdvisor {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        self.timed(Call::OnAccess, |a| a.on_access(access, resident))
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        self.timed(Call::OnFill, |a| a.on_fill(page, prefetched))
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.timed(Call::OnEvict, |a| a.on_evict(page))
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.timed(Call::Victims, |a| a.victims(n, out))
    }
    fn prefetch(&mut self, now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        self.timed(Call::Prefetch, |a| a.prefetch(now_ns, max, out))
    }
    fn probability(&self, page: PageNumber) -> f32 {
        measure(&self.spent, Call::Probability, self.overhead_ns, || {
            self.inner.probability(page)
        })
    }
    fn end_window(&mut self, now_ns: u64) {
        self.timed(Call::EndWindow, |a| a.end_window(now_ns))
    }
    fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
        self.timed(Call::PrefetchOutcome, |a| a.on_prefetch_outcome(page, used))
    }
    fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        self.timed(Call::Probes, |a| a.probes(max, out))
    }
    fn wants_hot_set(&self) -> bool {
        self.inner.wants_hot_set()
    }
    fn set_ram_budget(&mut self, pages: usize) {
        self.timed(Call::SetRamBudget, |a| a.set_ram_budget(pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessOp, AccessSource, PageKind};

    /// Spins in `on_access`, so its time is measurable.
    #[derive(Default)]
    struct Spinning;

    impl Advisor for Spinning {
        fn name(&self) -> &str {
            "spinning"
        }
        fn on_access(&mut self, _a: &Access, _resident: bool) {
            let t = Instant::now();
            while t.elapsed().as_micros() < 200 {}
        }
        fn on_fill(&mut self, _page: PageNumber, _prefetched: bool) {}
        fn on_evict(&mut self, _page: PageNumber) {}
        fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
            out.extend(0..n as u64);
        }
        fn prefetch(&mut self, _now_ns: u64, _max: usize, out: &mut Vec<PageNumber>) {
            out.push(7);
        }
        fn probability(&self, _page: PageNumber) -> f32 {
            0.5
        }
    }

    #[test]
    fn timed_advisor_forwards_every_call_and_sums_the_time_inside() {
        let mut timed = TimedAdvisor::new(Box::<Spinning>::default());
        let spent = timed.spent();
        let access = Access {
            time_ns: 0,
            page: 3,
            vcpu: 0,
            op: AccessOp::Read,
            kind: PageKind::Data,
            source: AccessSource::MissingFault,
        };
        for _ in 0..5 {
            timed.on_access(&access, false);
        }
        timed.on_fill(3, false);
        let mut out = Vec::new();
        timed.victims(2, &mut out);
        timed.prefetch(0, 4, &mut out);
        assert_eq!(out, [0, 1, 7]);
        assert_eq!(timed.probability(3), 0.5);
        assert_eq!(timed.name(), "spinning");
        // Five spins of at least 200 us each: at least 1 ms inside the advisor, all of
        // it in `on_access`.
        let ns = spent.total_ns();
        assert!(ns >= 1_000_000, "{ns} ns");
        let (calls, access_ns) = spent.of(Call::OnAccess);
        assert_eq!(calls, 5);
        assert!(
            access_ns >= 1_000_000 && access_ns <= ns,
            "{access_ns} of {ns} ns"
        );
        let by_call = spent.by_call();
        let names: Vec<_> = by_call.iter().map(|&(name, _, _)| name).collect();
        assert_eq!(
            names,
            ["on_access", "on_fill", "victims", "prefetch", "probability"]
        );
        assert_eq!(by_call.iter().map(|&(_, _, ns)| ns).sum::<u64>(), ns);
    }
}
