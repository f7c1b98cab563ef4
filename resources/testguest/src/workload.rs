//! What each workload accesses, as one deterministic stream of operations.
//!
//! Every CPU replays the same stream (same seed) and performs only the operations whose
//! page (or key) it owns, so each page sees the same history whatever the number of
//! CPUs, and the checksum - a sum over operations - does not depend on it.

use crate::cmdline::{Config, Workload, PAGE_SIZE};
use crate::rng::{random_cycle, shuffle, Rng};
use crate::zipf::Zipf;

/// Pages between consecutive accesses of the stride workload (64 KiB).
pub const STRIDE_PAGES: u64 = 16;
/// Regions (and patterns) of the phases workload.
pub const PHASES: u64 = 4;
/// Phase switches in a run of the phases workload: each pattern runs twice.
pub const PHASE_SEGMENTS: u64 = 8;
/// Page workloads write one access in this many (the rest read).
pub const WRITE_ONE_IN: u64 = 4;
/// The kv workload puts one operation in this many (the rest get).
pub const PUT_ONE_IN: u64 = 5;
/// Bytes of one kv index slot: key, page + 1, check, !check.
pub const KV_SLOT_BYTES: u64 = 32;

/// Random streams derived from the seed, one per use.
mod stream {
    pub const OPS: u64 = 1;
    pub const PERM: u64 = 2;
    pub const CYCLE: u64 = 3;
    pub const KEYS: u64 = 4;
}

/// How one run lays out its working memory and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The command line.
    pub config: Config,
    /// Pages of working memory.
    pub pages: u64,
    /// kv: pages at the start of the working memory that hold the hash index.
    pub index_pages: u64,
    /// kv: slots of the hash index (a power of two, at least twice the keys).
    pub index_slots: u64,
    /// Entries of the permutation that scatters hot ranks (zipf, kv, phases).
    pub perm_len: u64,
    /// Entries of the pointer-chasing cycle (chase).
    pub next_len: u64,
}

impl Plan {
    /// The layout for `config` (whose `mem` the parser already checked).
    pub fn new(config: Config) -> Plan {
        let pages = config.mem / PAGE_SIZE;
        let mut plan = Plan {
            config,
            pages,
            index_pages: 0,
            index_slots: 0,
            perm_len: 0,
            next_len: 0,
        };
        match config.workload {
            Workload::Zipf => plan.perm_len = pages,
            Workload::Chase => plan.next_len = pages,
            Workload::Phases => plan.perm_len = pages / PHASES,
            Workload::Kv => {
                plan.index_slots = (2 * pages).next_power_of_two();
                plan.index_pages = (plan.index_slots * KV_SLOT_BYTES).div_ceil(PAGE_SIZE);
                plan.perm_len = plan.keys();
            }
            Workload::Scan | Workload::Stride | Workload::Random => {}
        }
        plan
    }

    /// kv: number of keys, one value page each.
    pub fn keys(&self) -> u64 {
        self.pages - self.index_pages
    }

    /// Bytes of metadata: kv's index page hashes (u64 each, first, for alignment), then
    /// a version per page, the permutation and the cycle (u32 each).
    pub fn meta_bytes(&self) -> u64 {
        8 * self.index_pages + 4 * (self.pages + self.perm_len + self.next_len)
    }

    /// The first page that carries a versioned pattern (kv's index pages do not).
    pub fn first_data_page(&self) -> u64 {
        self.index_pages
    }

    /// Pages per region of the phases workload.
    pub fn phase_pages(&self) -> u64 {
        self.pages / PHASES
    }

    /// Operations per phase segment of the phases workload.
    pub fn phase_len(&self) -> u64 {
        (self.config.iters / PHASE_SEGMENTS).max(1)
    }
}

/// Builds the random tables of a run: the permutation that scatters hot ranks over the
/// pages (or over a phase region) and the cycle the chase follows.
pub fn build_tables(plan: &Plan, perm: &mut [u32], next: &mut [u32]) {
    let seed = plan.config.seed;
    for (i, slot) in perm.iter_mut().enumerate() {
        *slot = i as u32;
    }
    shuffle(perm, &mut Rng::new(seed, stream::PERM));
    if !next.is_empty() {
        random_cycle(next, &mut Rng::new(seed, stream::CYCLE));
    }
}

/// kv: the key stored for `rank` (distinct for distinct ranks: mix64 is a bijection).
pub fn kv_key(seed: u64, rank: u64) -> u64 {
    crate::rng::mix64(rank ^ crate::rng::mix64(seed ^ stream::KEYS))
}

/// What one operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A page of the working memory, by index.
    Page(u64),
    /// kv: a key, by popularity rank (0 = hottest).
    Key(u64),
}

/// One operation of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// What it touches.
    pub target: Target,
    /// Whether it writes (a put for kv) or only reads (a get).
    pub write: bool,
}

/// Column-major walk with a fixed stride: every page once per sweep.
#[derive(Debug, Clone, Default)]
struct StrideWalk {
    column: u64,
    at: u64,
}

impl StrideWalk {
    /// The next page of a region of `pages` pages.
    fn next(&mut self, pages: u64) -> u64 {
        let stride = STRIDE_PAGES.min(pages);
        let page = self.at;
        self.at += stride;
        if self.at >= pages {
            self.column = (self.column + 1) % stride;
            self.at = self.column;
        }
        page
    }
}

/// The operation stream of one run.
#[derive(Debug, Clone)]
pub struct OpStream<'a> {
    plan: Plan,
    rng: Rng,
    zipf: Option<Zipf>,
    perm: &'a [u32],
    next: &'a [u32],
    index: u64,
    scan_at: u64,
    stride: StrideWalk,
    chase_at: u64,
}

impl<'a> OpStream<'a> {
    /// The stream for `plan`; `perm` and `next` come from [`build_tables`].
    pub fn new(plan: Plan, perm: &'a [u32], next: &'a [u32]) -> OpStream<'a> {
        let zipf = match plan.config.workload {
            Workload::Zipf | Workload::Phases | Workload::Kv => Some(Zipf::new(plan.perm_len)),
            _ => None,
        };
        OpStream {
            plan,
            rng: Rng::new(plan.config.seed, stream::OPS),
            zipf,
            perm,
            next,
            index: 0,
            scan_at: 0,
            stride: StrideWalk::default(),
            chase_at: 0,
        }
    }

    fn zipf_rank(&mut self) -> u64 {
        match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng),
            None => 0,
        }
    }

    fn page_write(&mut self) -> bool {
        self.rng.below(WRITE_ONE_IN) == 0
    }

    /// The page the phases workload touches next: four regions, each its own pattern.
    fn phases_page(&mut self) -> u64 {
        let region_pages = self.plan.phase_pages();
        let phase = (self.index / self.plan.phase_len()) % PHASES;
        let start = phase * region_pages;
        let offset = match phase {
            0 => {
                let page = self.scan_at % region_pages;
                self.scan_at += 1;
                page
            }
            1 => self.rng.below(region_pages),
            2 => {
                let rank = self.zipf_rank();
                u64::from(self.perm[rank as usize])
            }
            _ => self.stride.next(region_pages),
        };
        start + offset
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let pages = self.plan.pages;
        let op = match self.plan.config.workload {
            Workload::Scan => {
                let page = self.scan_at;
                self.scan_at = (self.scan_at + 1) % pages;
                Op {
                    target: Target::Page(page),
                    write: self.page_write(),
                }
            }
            Workload::Stride => Op {
                target: Target::Page(self.stride.next(pages)),
                write: self.page_write(),
            },
            Workload::Random => Op {
                target: Target::Page(self.rng.below(pages)),
                write: self.page_write(),
            },
            Workload::Zipf => {
                let rank = self.zipf_rank();
                Op {
                    target: Target::Page(u64::from(self.perm[rank as usize])),
                    write: self.page_write(),
                }
            }
            Workload::Chase => {
                let page = self.chase_at;
                self.chase_at = u64::from(self.next[page as usize]);
                Op {
                    target: Target::Page(page),
                    write: self.page_write(),
                }
            }
            Workload::Phases => Op {
                target: Target::Page(self.phases_page()),
                write: self.page_write(),
            },
            Workload::Kv => Op {
                target: Target::Key(self.zipf_rank()),
                write: self.rng.below(PUT_ONE_IN) == 0,
            },
        };
        self.index += 1;
        op
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;

    fn tables(plan: &Plan) -> (Vec<u32>, Vec<u32>) {
        let mut perm = vec![0u32; plan.perm_len as usize];
        let mut next = vec![0u32; plan.next_len as usize];
        build_tables(plan, &mut perm, &mut next);
        (perm, next)
    }

    fn pages_of(line: &str, count: usize) -> Vec<u64> {
        let plan = Plan::new(parse(line).unwrap());
        let (perm, next) = tables(&plan);
        let mut ops = OpStream::new(plan, &perm, &next);
        (0..count)
            .map(|_| match ops.next_op().target {
                Target::Page(page) => page,
                Target::Key(rank) => rank,
            })
            .collect()
    }

    #[test]
    fn scan_is_sequential_and_wraps() {
        let pages = pages_of("workload=scan mem=64K", 20);
        let want: Vec<u64> = (0..20).map(|i| i % 16).collect();
        assert_eq!(pages, want);
    }

    #[test]
    fn stride_covers_every_page_once_per_sweep() {
        let pages = pages_of("workload=stride mem=1M", 256 * 2);
        assert_eq!(&pages[..3], &[0, 16, 32]);
        let mut sweep = pages[..256].to_vec();
        sweep.sort_unstable();
        assert_eq!(sweep, (0..256).collect::<Vec<u64>>());
        assert_eq!(pages[256..], pages[..256], "the next sweep repeats");
    }

    #[test]
    fn chase_visits_every_page_once_per_cycle() {
        let pages = pages_of("workload=chase mem=4M seed=5", 1024 * 2);
        let mut cycle = pages[..1024].to_vec();
        assert_ne!(cycle, (0..1024).collect::<Vec<u64>>(), "not sequential");
        cycle.sort_unstable();
        assert_eq!(cycle, (0..1024).collect::<Vec<u64>>());
        assert_eq!(pages[1024..], pages[..1024]);
    }

    #[test]
    fn zipf_hot_pages_are_scattered_and_skewed() {
        let pages = pages_of("workload=zipf mem=16M seed=3", 50_000);
        let mut counts = vec![0u32; 4096];
        for &page in &pages {
            counts[page as usize] += 1;
        }
        let mut hottest: Vec<usize> = (0..4096).collect();
        hottest.sort_by_key(|&p| core::cmp::Reverse(counts[p]));
        // The hottest page is far hotter than the median one...
        assert!(counts[hottest[0]] > 50 * counts[hottest[2048]].max(1));
        // ...and the ten hottest are not the first pages of memory (a permutation
        // scattered them).
        assert!(
            hottest[..10].iter().any(|&p| p >= 10),
            "{:?}",
            &hottest[..10]
        );
    }

    #[test]
    fn random_is_uniform_enough() {
        let pages = pages_of("workload=random mem=64K seed=2", 16_000);
        let mut counts = [0u32; 16];
        for &page in &pages {
            counts[page as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn phases_switch_between_distinct_regions() {
        let plan = Plan::new(parse("workload=phases mem=1M iters=8000").unwrap());
        let pages = pages_of("workload=phases mem=1M iters=8000", 8000);
        let region = plan.phase_pages();
        for (segment, chunk) in pages.chunks(plan.phase_len() as usize).enumerate() {
            let phase = segment as u64 % PHASES;
            assert!(
                chunk.iter().all(|&p| p / region == phase),
                "segment {segment} left region {phase}"
            );
        }
        // Phase 0 scans its region in order.
        assert_eq!(&pages[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn writes_are_mixed_in_and_kv_puts_too() {
        for (line, one_in) in [
            ("workload=random mem=1M", WRITE_ONE_IN),
            ("workload=kv mem=1M", PUT_ONE_IN),
        ] {
            let plan = Plan::new(parse(line).unwrap());
            let (perm, next) = tables(&plan);
            let mut ops = OpStream::new(plan, &perm, &next);
            let writes = (0..10_000).filter(|_| ops.next_op().write).count() as u64;
            let want = 10_000 / one_in;
            assert!(
                writes > want * 8 / 10 && writes < want * 12 / 10,
                "{line}: {writes}"
            );
        }
    }

    #[test]
    fn streams_are_deterministic_by_seed() {
        for workload in crate::cmdline::Workload::ALL {
            let line =
                |seed: u64| format!("workload={} mem=1M iters=800 seed={seed}", workload.name());
            let a = pages_of(&line(1), 500);
            assert_eq!(a, pages_of(&line(1), 500), "{}", workload.name());
            if !matches!(workload, Workload::Scan | Workload::Stride) {
                assert_ne!(a, pages_of(&line(2), 500), "{}", workload.name());
            }
        }
    }

    #[test]
    fn kv_plan_leaves_room_for_a_half_full_index() {
        let plan = Plan::new(parse("workload=kv mem=64M").unwrap());
        assert!(plan.index_slots >= 2 * plan.keys());
        assert!(plan.index_pages * PAGE_SIZE >= plan.index_slots * KV_SLOT_BYTES);
        assert_eq!(plan.keys() + plan.index_pages, plan.pages);
        let keys: std::collections::HashSet<u64> = (0..10_000).map(|r| kv_key(1, r)).collect();
        assert_eq!(keys.len(), 10_000);
    }
}
