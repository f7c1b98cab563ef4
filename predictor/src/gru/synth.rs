//! Synthetic access streams with known structure, and a minimal replay loop, for
//! development, tests and the anomaly evaluation (change points are known exactly).

use std::collections::{HashMap, HashSet};

use tiering::access::{Access, AccessOp, AccessSource, PageKind, PageNumber};
use tiering::advisor::Advisor;

/// A simple access pattern over `pages` pages starting at `base`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Sequential passes over the region, again and again.
    Loop { base: u64, pages: u64 },
    /// Fixed stride through the region, wrapping.
    Stride { base: u64, pages: u64, stride: u64 },
    /// Skewed random: `hot` of the pages get 90% of the accesses.
    Hot { base: u64, pages: u64, hot: u64 },
    /// Uniform random.
    Random { base: u64, pages: u64 },
}

/// Small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Accesses of `pages` in order, each `reps` times in a row, 1 us apart.
pub fn repeated(
    pages: impl IntoIterator<Item = PageNumber>,
    reps: usize,
    op: AccessOp,
) -> Vec<Access> {
    pages
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, reps))
        .enumerate()
        .map(|(i, page)| data_access(i as u64 * 1000, page, op))
        .collect()
}

/// A data access by vCPU 0 that the monitor saw (every synthetic access is one).
fn data_access(time_ns: u64, page: PageNumber, op: AccessOp) -> Access {
    Access {
        time_ns,
        page,
        vcpu: 0,
        op,
        kind: PageKind::Data,
        source: AccessSource::Full,
    }
}

/// `n` accesses of `pattern`, timestamps continuing from `t0` at 100 ns per access.
pub fn generate(pattern: Pattern, n: usize, seed: u64, t0: u64) -> Vec<Access> {
    let mut rng = Rng::new(seed);
    let mut pos = 0u64;
    (0..n as u64)
        .map(|i| {
            let page = match pattern {
                Pattern::Loop { base, pages } => {
                    let p = base + pos % pages;
                    pos += 1;
                    p
                }
                Pattern::Stride {
                    base,
                    pages,
                    stride,
                } => {
                    let p = base + (pos * stride) % pages;
                    pos += 1;
                    p
                }
                Pattern::Hot { base, pages, hot } => {
                    if rng.below(10) < 9 {
                        base + rng.below(hot)
                    } else {
                        base + rng.below(pages)
                    }
                }
                Pattern::Random { base, pages } => base + rng.below(pages),
            };
            let op = if rng.below(4) == 0 {
                AccessOp::Write
            } else {
                AccessOp::Read
            };
            data_access(t0 + i * 100, page, op)
        })
        .collect()
}

/// Concatenate phases; returns the stream and the access index where each phase after
/// the first begins (the injected change points).
pub fn phases(parts: &[(Pattern, usize)], seed: u64) -> (Vec<Access>, Vec<usize>) {
    let mut out: Vec<Access> = Vec::new();
    let mut changes = Vec::new();
    for (i, &(p, n)) in parts.iter().enumerate() {
        if i > 0 {
            changes.push(out.len());
        }
        let t0 = out.last().map_or(0, |a| a.time_ns + 100);
        out.extend(generate(p, n, seed.wrapping_add(i as u64), t0));
    }
    (out, changes)
}

/// What a replay of a stream through an advisor cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MiniReplay {
    pub demand_faults: u64,
    pub prefetch_issued: u64,
    pub prefetch_useful: u64,
}

/// A minimal tiered-memory loop with `ram_pages` of RAM and a window every
/// `window_accesses` accesses; the project's simulator is `predictor::replay`, this one
/// exists so the GRU's tests need nothing but this module.
pub fn mini_replay(
    adv: &mut dyn Advisor,
    trace: &[Access],
    ram_pages: usize,
    window_accesses: u64,
    max_prefetch: usize,
) -> MiniReplay {
    let mut resident: HashSet<PageNumber> = HashSet::new();
    let mut unused_prefetch: HashMap<PageNumber, ()> = HashMap::new();
    let mut r = MiniReplay::default();
    let mut victims = Vec::new();
    let mut make_room = |adv: &mut dyn Advisor,
                         resident: &mut HashSet<PageNumber>,
                         unused: &mut HashMap<PageNumber, ()>| {
        while resident.len() >= ram_pages {
            victims.clear();
            adv.victims(8, &mut victims);
            let before = resident.len();
            for &v in &victims {
                if resident.remove(&v) {
                    unused.remove(&v);
                    adv.on_evict(v);
                }
            }
            if resident.len() == before {
                let v = *resident.iter().next().expect("over budget means non-empty");
                resident.remove(&v);
                unused.remove(&v);
                adv.on_evict(v);
            }
        }
    };
    let mut pf = Vec::new();
    for (i, a) in trace.iter().enumerate() {
        let hit = resident.contains(&a.page);
        adv.on_access(a, hit);
        if hit {
            if unused_prefetch.remove(&a.page).is_some() {
                r.prefetch_useful += 1;
            }
        } else {
            r.demand_faults += 1;
            make_room(adv, &mut resident, &mut unused_prefetch);
            resident.insert(a.page);
            adv.on_fill(a.page, false);
        }
        if (i as u64 + 1).is_multiple_of(window_accesses) {
            adv.end_window(a.time_ns);
            pf.clear();
            adv.prefetch(a.time_ns, max_prefetch, &mut pf);
            for &p in &pf {
                if resident.contains(&p) {
                    continue;
                }
                make_room(adv, &mut resident, &mut unused_prefetch);
                resident.insert(p);
                unused_prefetch.insert(p, ());
                adv.on_fill(p, true);
                r.prefetch_issued += 1;
            }
        }
    }
    r
}

/// CLOCK (second chance) eviction and no prefetch: the `none` baseline, for tests.
#[derive(Default)]
pub struct ClockAdvisor {
    ring: Vec<PageNumber>,
    pos: HashMap<PageNumber, usize>,
    referenced: HashMap<PageNumber, bool>,
    hand: usize,
}

impl Advisor for ClockAdvisor {
    fn name(&self) -> &str {
        "clock"
    }
    fn on_access(&mut self, a: &Access, _resident: bool) {
        if let Some(r) = self.referenced.get_mut(&a.page) {
            *r = true;
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        self.pos.insert(page, self.ring.len());
        self.ring.push(page);
        self.referenced.insert(page, true);
    }
    fn on_evict(&mut self, page: PageNumber) {
        if let Some(i) = self.pos.remove(&page) {
            self.referenced.remove(&page);
            let last = self.ring.len() - 1;
            self.ring.swap(i, last);
            self.ring.pop();
            if i < self.ring.len() {
                self.pos.insert(self.ring[i], i);
            }
        }
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        let mut given = 0;
        let mut spins = 0;
        while given < n && !self.ring.is_empty() && spins < 3 * self.ring.len() {
            self.hand %= self.ring.len();
            let p = self.ring[self.hand];
            let r = self.referenced.get_mut(&p).expect("ring pages are tracked");
            if *r {
                *r = false;
            } else {
                out.push(p);
                given += 1;
            }
            self.hand += 1;
            spins += 1;
        }
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        0.0
    }
}
