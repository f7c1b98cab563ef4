//! The victims' tables: whether anything the advisor could see of a page when it was
//! evicted tells if it comes back soon (faults again within a RAM's worth of
//! evictions). First per class of victim, then (`--fit N`) as a classifier fit on the
//! victims of some traces and tested on others', the way a learned eviction such as
//! LRB (Song et al., NSDI'20: per-object gaps between requests, no instruction
//! addresses) would have to predict it.

use predictor::gru::train::auc;
use rustc_hash::FxHashMap;

/// What the advisor could have known of a page when it was evicted. Times are counted
/// in evictions, as refault distances are.
#[derive(Default, Clone, Copy)]
pub struct PageFacts {
    /// An exec access or a code page was seen.
    pub code: bool,
    /// Refaults within a RAM's worth of evictions so far (under one RAM, as in the
    /// refault-distance table).
    pub short_refaults: u32,
    /// Brought in by a prefetch and not seen accessed since.
    pub prefetched_unseen: bool,
    /// Demand faults on the page so far.
    pub faults: u32,
    /// Its last two refault distances, newest first.
    pub distances: [Option<u64>; 2],
    /// When it was last seen accessed (a fault, a sample or a probe).
    pub last_seen: u64,
    /// When it last came into RAM.
    pub filled_at: u64,
    /// Accesses seen while it was resident, since it last came into RAM.
    pub seen_resident: u32,
}

impl PageFacts {
    /// An access the advisor saw, at `now`.
    pub fn on_access(&mut self, now: u64, resident: bool) {
        self.prefetched_unseen &= !resident;
        self.last_seen = now;
        if resident {
            self.seen_resident += 1;
        } else {
            self.faults += 1;
        }
    }

    /// A refault `distance` evictions after the page left RAM.
    pub fn on_refault(&mut self, distance: u64, ram_pages: u64) {
        self.distances = [Some(distance), self.distances[0]];
        if distance < ram_pages {
            self.short_refaults += 1;
        }
    }

    pub fn on_fill(&mut self, now: u64, prefetched: bool) {
        self.prefetched_unseen = prefetched;
        self.filled_at = now;
        self.seen_resident = 0;
    }
}

#[derive(Clone, Copy)]
pub struct Victim {
    pub facts: PageFacts,
    /// The advisor's `probability` for the page at its eviction.
    pub probability: f32,
    /// It faulted again within a RAM's worth of evictions.
    pub came_back: bool,
    /// The eviction's number in its trace, the trace's RAM in pages, and the trace's
    /// index among those given.
    pub at: u64,
    pub ram_pages: u64,
    pub trace: usize,
}

/// Per class of victim, how many there were and the share that came back within a
/// RAM's worth of evictions.
pub fn print_classes(victims: &[Victim]) {
    type Class<'a> = (&'a str, &'a dyn Fn(&Victim) -> bool);
    let classes: [Class; 14] = [
        ("every victim", &|_| true),
        ("code", &|v| v.facts.code),
        ("data", &|v| !v.facts.code),
        ("no short refault before", &|v| v.facts.short_refaults == 0),
        ("1 short refault before", &|v| v.facts.short_refaults == 1),
        ("2 or more", &|v| v.facts.short_refaults >= 2),
        ("prefetched, never seen used", &|v| {
            v.facts.prefetched_unseen
        }),
        ("probability < 0.2", &|v| v.probability < 0.2),
        ("0.2-0.4", &|v| (0.2..0.4).contains(&v.probability)),
        ("0.4-0.5", &|v| (0.4..0.5).contains(&v.probability)),
        ("0.5-0.6", &|v| (0.5..0.6).contains(&v.probability)),
        ("0.6-0.7", &|v| (0.6..0.7).contains(&v.probability)),
        ("0.7-0.8", &|v| (0.7..0.8).contains(&v.probability)),
        (">= 0.8", &|v| v.probability >= 0.8),
    ];
    println!("\n| victims (all traces) | evictions | back within a RAM's worth |");
    println!("|---|---|---|");
    for (name, is) in classes {
        let (n, back) = victims
            .iter()
            .filter(|v| is(v))
            .fold((0u64, 0u64), |(n, b), v| {
                (n + 1, b + u64::from(v.came_back))
            });
        println!("| {name} | {n} | {:.2} |", back as f64 / n.max(1) as f64);
    }
}

/// The features a classifier gets, each cut into a few bins (times relative to RAM).
const FEATURES: [&str; 10] = [
    "code",
    "prefetched, unseen",
    "short refaults",
    "faults",
    "last refault distance",
    "the one before",
    "age (since last seen)",
    "time in RAM",
    "seen while resident",
    "model probability",
];

fn bins(v: &Victim) -> [u8; FEATURES.len()] {
    let f = &v.facts;
    let ram = v.ram_pages.max(1) as f64;
    let ratio = |d: u64| {
        let x = d as f64 / ram;
        1 + [0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
            .iter()
            .take_while(|&&t| x >= t)
            .count() as u8
    };
    let count = |n: u32| [1, 2, 3, 5, 9, 17].iter().take_while(|&&t| n >= t).count() as u8;
    [
        f.code as u8,
        f.prefetched_unseen as u8,
        count(f.short_refaults),
        count(f.faults),
        f.distances[0].map_or(0, ratio),
        f.distances[1].map_or(0, ratio),
        ratio(v.at - f.last_seen),
        ratio(v.at - f.filled_at),
        count(f.seen_resident),
        (v.probability * 10.0).clamp(0.0, 9.0) as u8,
    ]
}

/// A classifier: the share that came back per cell of the chosen features (bins
/// packed into a key), shrunk towards the fit set's share where a cell is thin.
struct CellRates {
    features: Vec<usize>,
    cells: FxHashMap<u64, (u32, u32)>,
    base: f64,
}

impl CellRates {
    fn key(&self, b: &[u8]) -> u64 {
        self.features
            .iter()
            .fold(0, |k, &i| k << 4 | u64::from(b[i]))
    }

    fn fit(features: &[usize], fit: &[(&[u8], bool)]) -> Self {
        let mut r = CellRates {
            features: features.to_vec(),
            cells: FxHashMap::default(),
            base: fit.iter().filter(|v| v.1).count() as f64 / fit.len().max(1) as f64,
        };
        for (b, back) in fit {
            let cell = r.cells.entry(r.key(b)).or_default();
            cell.0 += 1;
            cell.1 += u32::from(*back);
        }
        r
    }

    fn rate(&self, b: &[u8]) -> f64 {
        const PRIOR: f64 = 10.0;
        let (n, back) = self.cells.get(&self.key(b)).copied().unwrap_or_default();
        (back as f64 + self.base * PRIOR) / (n as f64 + PRIOR)
    }
}

/// A fitted classifier: a score per binned victim, higher for "comes back".
type Scorer = Box<dyn Fn(&[u8]) -> f64>;

/// Naive Bayes over every feature: the sum of each feature's log-odds against the base.
fn naive_bayes(fit: &[(&[u8], bool)]) -> impl Fn(&[u8]) -> f64 {
    let singles: Vec<CellRates> = (0..FEATURES.len())
        .map(|i| CellRates::fit(&[i], fit))
        .collect();
    let logit = |p: f64| (p / (1.0 - p)).ln();
    move |b: &[u8]| {
        singles
            .iter()
            .map(|c| logit(c.rate(b)) - logit(c.base))
            .sum()
    }
}

/// How well classifiers fit on the victims of the first `fit_traces` traces separate
/// those that come back among the other traces' victims, and, as a learner inside one
/// VM would, among the second half of each other trace's victims when fit on its first
/// half.
pub fn print_classifiers(victims: &[Victim], fit_traces: usize, traces: usize) {
    let binned: Vec<([u8; FEATURES.len()], bool, usize)> = victims
        .iter()
        .map(|v| (bins(v), v.came_back, v.trace))
        .collect();
    let view = |keep: &dyn Fn(usize) -> bool| -> Vec<(&[u8], bool)> {
        binned
            .iter()
            .filter(|v| keep(v.2))
            .map(|v| (&v.0[..], v.1))
            .collect()
    };
    let fit = view(&|t| t < fit_traces);
    let test = view(&|t| t >= fit_traces);
    println!(
        "\n| classifier of victims | AUC, fit traces' victims (fit on them) | other traces' victims | within each other trace: median (range) |"
    );
    println!("|---|---|---|---|");
    let mut sets: Vec<(String, Vec<usize>)> = FEATURES
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), vec![i]))
        .collect();
    sets.push((
        "last refault distance x age x time in RAM".into(),
        vec![4, 6, 7],
    ));
    sets.push(("naive Bayes over all ten".into(), Vec::new()));
    for (name, features) in sets {
        let model = |fit: &[(&[u8], bool)]| -> Scorer {
            if features.is_empty() {
                Box::new(naive_bayes(fit))
            } else {
                let c = CellRates::fit(&features, fit);
                Box::new(move |b| c.rate(b))
            }
        };
        let score = |m: &dyn Fn(&[u8]) -> f64, on: &[(&[u8], bool)]| {
            auc(&mut on.iter().map(|(b, l)| (m(b), *l)).collect::<Vec<_>>())
        };
        let m = model(&fit);
        let (in_sample, out_of_sample) = (score(&m, &fit), score(&m, &test));
        // Online, per trace: fit on its first half of victims, test on the second.
        let mut per_trace: Vec<f64> = (fit_traces..traces)
            .filter_map(|t| {
                let all = view(&|tr| tr == t);
                let (first, second) = all.split_at(all.len() / 2);
                // An AUC needs victims of both kinds in the half it is scored on.
                let both = second.iter().any(|v| v.1) && second.iter().any(|v| !v.1);
                both.then(|| score(&model(first), second))
            })
            .collect();
        per_trace.sort_by(f64::total_cmp);
        let median = per_trace
            .get(per_trace.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "| {name} | {in_sample:.3} | {out_of_sample:.3} | {median:.3} ({:.3}-{:.3}) |",
            per_trace.first().copied().unwrap_or(f64::NAN),
            per_trace.last().copied().unwrap_or(f64::NAN),
        );
    }
}
