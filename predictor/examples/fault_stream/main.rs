//! How predictable an advisor's demand-fault stream is: the ceiling of prefetchers that
//! work from faults (successor links, neighbouring pages), on the faults that remain
//! once the advisor's own eviction and prefetching have done their part.
//!
//! `cargo run --release -p predictor --example fault_stream -- [--advisor gru]
//!  [--ram-fraction 0.25] [--fit N] TRACE...`
//!
//! Replays each trace as `tiervisor replay` does (sampled visibility, probes, the
//! shipped model), records the demand faults the advisor sees, and reports, over the
//! faults that are not a page's first touch (refaults), the share that was:
//! - `succ`: the page that faulted after the previous fault last time;
//! - `pair`: the page that faulted after the last two faults last time;
//! - `chain`: within 8 links of successors from one of the last 4 faults;
//! - `near`: within 8 pages of one of the last 8 faults;
//! - `next`: a refault whose page + 1 faults within the next RAM's worth of faults
//!   (an always-on next-page readahead's accuracy, judged as shadow outcomes are);
//! - `period`: a refault that came when the page's previous interval between faults
//!   said it would (within a quarter, counted in faults), as a timer that prefetches
//!   each page one interval after its last fault would name it; `timer acc` is the
//!   share of such a timer's predictions (one per fault of a page whose interval is
//!   known) that came true.
//!
//! A second table splits the refaults by refault distance (evictions between the
//! page's eviction and its refault, in RAMs: the resident pages' worth), and gives the
//! share of the short ones (under one RAM) whose page had a short refault before: the
//! pages the eviction order keeps losing.
//!
//! A third table, over all the traces given, asks whether anything the advisor could
//! see marks the victims that come back: per class of victim (code or data, earlier
//! short refaults, a prefetched page never seen used, the advisor's `probability` of
//! the page's block at eviction), the share that faulted again within a RAM's worth
//! of evictions. For the model's raw probability set
//! `TIERVISOR_GRU_PROBABILITY_FLOOR=0` (with unbounded tiers it changes no decision).
//!
//! With `--fit N`, a fourth table asks the same of classifiers (`victims.rs`): fit
//! on the victims of the first N traces, each feature alone and together, scored by
//! AUC on those victims, on the other traces' victims, and within each trace (fit on
//! its first half of victims, tested on the second half, as a learner in the VM would;
//! over the traces after the first N).

mod victims;

use std::sync::{Arc, Mutex};

use predictor::replay::registry::{make_advisor, ReplayContext};
use predictor::replay::{replay_advisor, summarize, ReplayConfig, TraceInput};
use rustc_hash::{FxHashMap, FxHashSet};
use tiering::access::{Access, AccessOp, PageKind, PageNumber};
use tiering::advisor::Advisor;
use victims::{PageFacts, Victim};

/// Forwards every call to the advisor under test and records its demand faults.
struct FaultRecorder {
    inner: Box<dyn Advisor>,
    evictions: u64,
    pages: FxHashMap<PageNumber, PageState>,
    /// The demand faults, in order.
    faults: Arc<Mutex<Vec<Fault>>>,
    ram_pages: u64,
    /// Every eviction, in order (of every trace replayed).
    evicted: Arc<Mutex<Vec<Victim>>>,
    /// The trace's index among those given.
    trace: usize,
}

/// What the recorder keeps per page.
#[derive(Default)]
struct PageState {
    facts: PageFacts,
    /// It was in RAM before (so its next fault is not a first touch).
    filled: bool,
    /// Its last eviction: the eviction number, and its index in `evicted`.
    left: Option<(u64, usize)>,
}

/// One demand fault the advisor saw.
#[derive(Clone, Copy)]
struct Fault {
    page: PageNumber,
    first: bool,
    /// Evictions since the page left RAM, for a refault.
    distance: Option<u64>,
}

impl Advisor for FaultRecorder {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        let state = self.pages.entry(access.page).or_default();
        let facts = &mut state.facts;
        facts.code |= access.op == AccessOp::Exec || access.kind == PageKind::Code;
        facts.on_access(self.evictions, resident);
        if !resident {
            let distance = state.left.map(|(at, _)| self.evictions - at);
            if let (Some(d), Some((_, victim))) = (distance, state.left) {
                facts.on_refault(d, self.ram_pages);
                if d < self.ram_pages {
                    self.evicted.lock().unwrap()[victim].came_back = true;
                }
            }
            self.faults.lock().unwrap().push(Fault {
                page: access.page,
                first: !state.filled,
                distance,
            });
        }
        self.inner.on_access(access, resident);
    }
    fn on_fill(&mut self, page: PageNumber, prefetched: bool) {
        let state = self.pages.entry(page).or_default();
        state.filled = true;
        state.facts.on_fill(self.evictions, prefetched);
        self.inner.on_fill(page, prefetched);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.evictions += 1;
        let probability = self.inner.probability(page);
        let state = self.pages.entry(page).or_default();
        let mut evicted = self.evicted.lock().unwrap();
        state.left = Some((self.evictions, evicted.len()));
        evicted.push(Victim {
            facts: state.facts,
            probability,
            came_back: false,
            at: self.evictions,
            ram_pages: self.ram_pages,
            trace: self.trace,
        });
        drop(evicted);
        self.inner.on_evict(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.inner.victims(n, out);
    }
    fn prefetch(&mut self, now_ns: u64, max: usize, out: &mut Vec<PageNumber>) {
        self.inner.prefetch(now_ns, max, out);
    }
    fn probability(&self, page: PageNumber) -> f32 {
        self.inner.probability(page)
    }
    fn end_window(&mut self, now_ns: u64) {
        self.inner.end_window(now_ns);
    }
    fn on_prefetch_outcome(&mut self, page: PageNumber, used: bool) {
        self.inner.on_prefetch_outcome(page, used);
    }
    fn probes(&mut self, max: usize, out: &mut Vec<PageNumber>) {
        self.inner.probes(max, out);
    }
}

/// Counts of refaults each fault-driven source would have named.
#[derive(Default)]
struct Ceiling {
    faults: u64,
    refaults: u64,
    succ: u64,
    pair: u64,
    chain: u64,
    near: u64,
    next: u64,
    period: u64,
    /// Predictions the `period` timer makes: one per fault of a page with a known
    /// interval.
    timer_fired: u64,
    /// Refaults by refault distance: under 1, 1-2, 2-4 and 4 or more RAMs.
    distance: [u64; 4],
    /// Short refaults (under 1 RAM) of pages that had a short refault before.
    short_again: u64,
}

impl Ceiling {
    fn add(&mut self, c: &Ceiling) {
        self.faults += c.faults;
        self.refaults += c.refaults;
        self.succ += c.succ;
        self.pair += c.pair;
        self.chain += c.chain;
        self.near += c.near;
        self.next += c.next;
        self.period += c.period;
        self.timer_fired += c.timer_fired;
        for (a, b) in self.distance.iter_mut().zip(c.distance) {
            *a += b;
        }
        self.short_again += c.short_again;
    }
}

fn analyse(faults: &[Fault], ram_pages: usize) -> Ceiling {
    let mut c = Ceiling {
        faults: faults.len() as u64,
        ..Ceiling::default()
    };
    // Positions of each page's faults, for "faults again within a RAM's worth".
    let mut at: FxHashMap<PageNumber, Vec<usize>> = FxHashMap::default();
    for (i, f) in faults.iter().enumerate() {
        at.entry(f.page).or_default().push(i);
    }
    let mut short_before: FxHashSet<PageNumber> = FxHashSet::default();
    for f in faults.iter().filter(|f| !f.first) {
        let Some(d) = f.distance else { continue };
        let rams = d as f64 / ram_pages.max(1) as f64;
        c.distance[match rams {
            r if r < 1.0 => 0,
            r if r < 2.0 => 1,
            r if r < 4.0 => 2,
            _ => 3,
        }] += 1;
        if rams < 1.0 && !short_before.insert(f.page) {
            c.short_again += 1;
        }
    }
    let faults_within = |page: PageNumber, i: usize| {
        at.get(&page).is_some_and(|v| {
            let k = v.partition_point(|&j| j <= i);
            k < v.len() && v[k] - i <= ram_pages
        })
    };
    let mut succ: FxHashMap<PageNumber, PageNumber> = FxHashMap::default();
    let mut pair: FxHashMap<(PageNumber, PageNumber), PageNumber> = FxHashMap::default();
    // Per page: the position of its last fault, and the interval before that one.
    let mut last: FxHashMap<PageNumber, (usize, Option<usize>)> = FxHashMap::default();
    for i in 0..faults.len() {
        let Fault { page, first, .. } = faults[i];
        let before = last.insert(page, (i, None));
        if let Some((at, interval)) = before {
            last.insert(page, (i, Some(i - at)));
            if let Some(d) = interval {
                c.timer_fired += 1;
                c.period += u64::from((i - at).abs_diff(d) * 4 <= d);
            }
        }
        if !first && i > 0 {
            c.refaults += 1;
            let prev = faults[i - 1].page;
            c.succ += u64::from(succ.get(&prev) == Some(&page));
            if i > 1 {
                c.pair += u64::from(pair.get(&(faults[i - 2].page, prev)) == Some(&page));
            }
            let chained = faults[i.saturating_sub(4)..i].iter().any(|f| {
                let mut x = f.page;
                (0..8).any(|_| match succ.get(&x) {
                    Some(&n) => {
                        x = n;
                        n == page
                    }
                    None => false,
                })
            });
            c.chain += u64::from(chained);
            c.near += u64::from(
                faults[i.saturating_sub(8)..i]
                    .iter()
                    .any(|f| f.page != page && f.page.abs_diff(page) <= 8),
            );
            c.next += u64::from(faults_within(page + 1, i));
        }
        if i > 0 {
            succ.insert(faults[i - 1].page, page);
        }
        if i > 1 {
            pair.insert((faults[i - 2].page, faults[i - 1].page), page);
        }
    }
    // The last prediction of each page counts too where it fell inside the trace.
    c.timer_fired += last
        .values()
        .filter(|&&(at, interval)| interval.is_some_and(|d| at + d < faults.len()))
        .count() as u64;
    c
}

fn die(msg: &str) -> ! {
    eprintln!("fault_stream: {msg}");
    std::process::exit(2);
}

fn main() {
    let mut cfg = ReplayConfig::default();
    let mut advisor = "gru".to_string();
    let mut traces = Vec::new();
    let mut fit_traces = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--advisor" => advisor = args.next().unwrap_or_else(|| die("--advisor NAME")),
            "--ram-fraction" => {
                cfg.ram_fraction = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|f| *f > 0.0 && *f <= 1.0)
                    .unwrap_or_else(|| die("--ram-fraction F, 0 < F <= 1"))
            }
            "--fit" => {
                fit_traces = Some(
                    args.next()
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|n| *n > 0)
                        .unwrap_or_else(|| die("--fit N, N >= 1 traces")),
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: fault_stream [--advisor gru] [--ram-fraction 0.25] [--fit N] TRACE..."
                );
                return;
            }
            t => traces.push(t.to_string()),
        }
    }
    if traces.is_empty() {
        die("no trace given (try resources/out/traces/train/*.tvt)");
    }
    if fit_traces.is_some_and(|n| n >= traces.len()) {
        die("--fit N needs more than N traces: the rest are the test set");
    }
    println!(
        "| trace | faults | refaults | succ | pair | chain | near | next | period | timer acc |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut total = Ceiling::default();
    let mut rows = Vec::new();
    let evicted = Arc::new(Mutex::new(Vec::new()));
    for path in &traces {
        let input = TraceInput::File(path.into());
        let summary = summarize(&input, false).unwrap_or_else(|e| die(&format!("{path}: {e}")));
        let budget = ((summary.distinct_pages as f64 * cfg.ram_fraction) as usize).max(1);
        let ctx = ReplayContext {
            ram_budget_pages: budget,
            distinct_pages: summary.distinct_pages,
            ..ReplayContext::default()
        };
        let faults = Arc::new(Mutex::new(Vec::new()));
        let recorder = FaultRecorder {
            inner: make_advisor(&advisor, &ctx).unwrap_or_else(|e| die(&e.to_string())),
            evictions: 0,
            pages: FxHashMap::default(),
            faults: faults.clone(),
            ram_pages: budget as u64,
            evicted: evicted.clone(),
            trace: rows.len(),
        };
        replay_advisor(
            &input,
            Box::new(recorder),
            &advisor,
            &cfg,
            &ctx,
            summary.clock,
            summary.page_size,
        )
        .unwrap_or_else(|e| die(&format!("{path}: {e}")));
        let c = analyse(&faults.lock().unwrap(), budget);
        let name = std::path::Path::new(path)
            .file_stem()
            .map_or(path.clone(), |s| s.to_string_lossy().into_owned());
        print_row(&name, &c);
        total.add(&c);
        rows.push((name, c));
    }
    print_row("all", &total);
    println!("\n| trace | refaults | refault distance < 1 RAM | 1-2 | 2-4 | >= 4 | short again |");
    println!("|---|---|---|---|---|---|---|");
    for (name, c) in rows
        .iter()
        .map(|(n, c)| (n.as_str(), c))
        .chain([("all", &total)])
    {
        print_distance_row(name, c);
    }
    let evicted = evicted.lock().unwrap();
    victims::print_classes(&evicted);
    if let Some(n) = fit_traces {
        victims::print_classifiers(&evicted, n, traces.len());
    }
}

fn print_distance_row(name: &str, c: &Ceiling) {
    let d = c.distance;
    let share = |n: u64| n as f64 / d.iter().sum::<u64>().max(1) as f64;
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        c.refaults,
        share(d[0]),
        share(d[1]),
        share(d[2]),
        share(d[3]),
        c.short_again as f64 / d[0].max(1) as f64
    );
}

fn print_row(name: &str, c: &Ceiling) {
    let share = |n: u64| n as f64 / c.refaults.max(1) as f64;
    println!(
        "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        c.faults,
        c.refaults,
        share(c.succ),
        share(c.pair),
        share(c.chain),
        share(c.near),
        share(c.next),
        share(c.period),
        c.period as f64 / c.timer_fired.max(1) as f64
    );
}
