//! Runs a workload over real memory: the initial fill, the kv hash index, and the
//! operations with their verification. A page's pattern is derived from its offset in
//! the working memory (so checksums do not depend on where the VMM's memory map puts
//! that memory) and its version; failures report the guest-physical address. Shared by all CPUs of the guest (each owns the
//! pages `page % cpus == cpu`) and by the host unit tests (over a heap buffer).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use thiserror::Error;

use crate::cmdline::{Workload, PAGE_SIZE};
use crate::latency::Histogram;
use crate::pattern::{fill_page, hash_page, verify_page};
use crate::rng::mix64;
use crate::workload::{kv_key, Op, OpStream, Plan, Target, KV_SLOT_BYTES};

/// Why a run failed; displays as the `reason=...` tail of the result line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Failure {
    /// A page did not hold the pattern of its address and last written version.
    #[error(
        "corrupt page={page:#x} expected_version={expected_version} word={word} found={found:#x} expected={expected:#x}"
    )]
    Corrupt {
        /// Guest-physical address of the page.
        page: u64,
        /// The version last written to it.
        expected_version: u32,
        /// First wrong word (0..512).
        word: usize,
        /// Its value.
        found: u64,
        /// What it should be.
        expected: u64,
    },
    /// A kv index slot whose check word does not match its key and page.
    #[error("corrupt index_slot={slot:#x} key={key:#x}")]
    CorruptIndex {
        /// Guest-physical address of the slot.
        slot: u64,
        /// The key being looked up.
        key: u64,
    },
    /// A kv index page whose content changed since the index was built.
    #[error("corrupt index_page={page:#x} expected_hash={expected:#x} found_hash={found:#x}")]
    CorruptIndexPage {
        /// Guest-physical address of the index page.
        page: u64,
        /// Hash recorded when the index was built.
        expected: u64,
        /// Hash of what the page holds now.
        found: u64,
    },
    /// A kv key that the index no longer finds (its slot was lost).
    #[error("corrupt missing_key={key:#x} slot={slot:#x}")]
    MissingKey {
        /// The key.
        key: u64,
        /// The empty slot the probe ended at.
        slot: u64,
    },
}

/// What one CPU's share of the operations produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Operations this CPU performed.
    pub ops: u64,
    /// Of those, writes (puts for kv).
    pub writes: u64,
    /// Wrapping sum over its operations of a hash of (operation index, values read).
    pub checksum: u64,
}

impl Totals {
    /// Adds another CPU's share.
    pub fn merge(&mut self, other: Totals) {
        self.ops += other.ops;
        self.writes += other.writes;
        self.checksum = self.checksum.wrapping_add(other.checksum);
    }
}

/// The memory a run works on and its tables; shared by every CPU.
#[derive(Debug)]
pub struct Arena<'a> {
    /// The layout.
    pub plan: Plan,
    /// Address of page 0 of the working memory (identity-mapped in the guest).
    pub base: u64,
    /// Last written version of each page (0 for kv index pages).
    pub versions: &'a [AtomicU32],
    /// kv: hash of each index page, recorded when the index is built.
    pub index_hashes: &'a [AtomicU64],
    /// Scatter permutation (see [`crate::workload::build_tables`]).
    pub perm: &'a [u32],
    /// Chase cycle.
    pub next: &'a [u32],
}

impl Arena<'_> {
    fn page_addr(&self, page: u64) -> u64 {
        self.base + page * PAGE_SIZE
    }

    fn owns(page_or_rank: u64, cpu: u32, cpus: u32) -> bool {
        page_or_rank % u64::from(cpus) == u64::from(cpu)
    }

    /// Writes version 1 of every data page this CPU owns (and, on CPU 0, builds the kv
    /// index). Must complete on every CPU before any runs [`Arena::run`].
    pub fn fill(&self, cpu: u32, cpus: u32) {
        for page in self.plan.first_data_page()..self.plan.pages {
            if Self::owns(page, cpu, cpus) {
                self.versions[page as usize].store(1, Ordering::Relaxed);
                // SAFETY: the page is inside the working memory the caller handed over,
                // and only its owner CPU touches it.
                unsafe { fill_page(self.page_addr(page) as *mut u64, page * PAGE_SIZE, 1) };
            }
        }
        if self.plan.config.workload == Workload::Kv && cpu == 0 {
            self.build_index();
        }
    }

    fn slot_addr(&self, slot: u64) -> u64 {
        self.base + slot * KV_SLOT_BYTES
    }

    fn slot_check(key: u64, page: u64, slot_addr: u64) -> u64 {
        mix64(key ^ mix64(page ^ slot_addr.rotate_left(32)))
    }

    /// kv: the page that holds the value of `rank`'s key (scattered by the permutation).
    fn value_page(&self, rank: u64) -> u64 {
        self.plan.first_data_page() + u64::from(self.perm[rank as usize])
    }

    fn build_index(&self) {
        let words = self.plan.index_pages * PAGE_SIZE / 8;
        for word in 0..words {
            // SAFETY: the index pages are the first pages of the working memory.
            unsafe { (self.base as *mut u64).add(word as usize).write_volatile(0) };
        }
        let mask = self.plan.index_slots - 1;
        for rank in 0..self.plan.keys() {
            let key = kv_key(self.plan.config.seed, rank);
            let page = self.value_page(rank);
            let mut slot = mix64(key) & mask;
            loop {
                let addr = self.slot_addr(slot) as *mut u64;
                // SAFETY: slot < index_slots, inside the index pages; CPU 0 builds the
                // index before any CPU reads it.
                unsafe {
                    if addr.add(1).read_volatile() == 0 {
                        let check = Self::slot_check(key, page, addr as u64);
                        addr.write_volatile(key);
                        addr.add(1).write_volatile(page + 1);
                        addr.add(2).write_volatile(check);
                        addr.add(3).write_volatile(!check);
                        break;
                    }
                }
                slot = (slot + 1) & mask;
            }
        }
        for index_page in 0..self.plan.index_pages {
            // SAFETY: an index page in the working memory, complete now.
            let hash = unsafe { hash_page(self.page_addr(index_page) as *const u64) };
            self.index_hashes[index_page as usize].store(hash, Ordering::Relaxed);
        }
    }

    /// kv: reads a whole index page and checks it against the hash recorded at build time;
    /// on a mismatch names the first broken slot when there is one.
    fn verify_index_page(&self, index_page: u64, key: u64) -> Result<(), Failure> {
        let addr = self.page_addr(index_page);
        // SAFETY: an index page in the working memory, which no CPU writes after the fill.
        let found = unsafe { hash_page(addr as *const u64) };
        let expected = self.index_hashes[index_page as usize].load(Ordering::Relaxed);
        if found == expected {
            return Ok(());
        }
        let slots_per_page = PAGE_SIZE / KV_SLOT_BYTES;
        for slot in index_page * slots_per_page..(index_page + 1) * slots_per_page {
            self.read_slot(slot, key)?;
        }
        Err(Failure::CorruptIndexPage {
            page: addr,
            expected,
            found,
        })
    }

    /// kv: reads one index slot: `None` if empty, `Some((key, page))` if it checks.
    fn read_slot(&self, slot: u64, key: u64) -> Result<Option<(u64, u64)>, Failure> {
        let addr = self.slot_addr(slot);
        let ptr = addr as *const u64;
        // SAFETY: inside the index pages, which no CPU writes after the fill.
        let [stored_key, stored_page, check, inverse] = unsafe {
            [
                ptr.read_volatile(),
                ptr.add(1).read_volatile(),
                ptr.add(2).read_volatile(),
                ptr.add(3).read_volatile(),
            ]
        };
        if stored_page == 0 {
            if stored_key != 0 || check != 0 || inverse != 0 {
                return Err(Failure::CorruptIndex { slot: addr, key });
            }
            return Ok(None);
        }
        let page = stored_page - 1;
        if check != Self::slot_check(stored_key, page, addr)
            || inverse != !check
            || page < self.plan.first_data_page()
            || page >= self.plan.pages
        {
            return Err(Failure::CorruptIndex { slot: addr, key });
        }
        Ok(Some((stored_key, page)))
    }

    /// kv: finds the value page of `key`. Every index page the probe enters is read in
    /// full and checked against its recorded hash, and every slot read is checked.
    fn lookup(&self, key: u64) -> Result<u64, Failure> {
        let mask = self.plan.index_slots - 1;
        let slots_per_page = PAGE_SIZE / KV_SLOT_BYTES;
        let mut slot = mix64(key) & mask;
        let mut checked_page = u64::MAX;
        for _ in 0..self.plan.index_slots {
            let index_page = slot / slots_per_page;
            if index_page != checked_page {
                self.verify_index_page(index_page, key)?;
                checked_page = index_page;
            }
            match self.read_slot(slot, key)? {
                None => {
                    return Err(Failure::MissingKey {
                        key,
                        slot: self.slot_addr(slot),
                    })
                }
                Some((stored_key, page)) if stored_key == key => return Ok(page),
                Some(_) => slot = (slot + 1) & mask,
            }
        }
        Err(Failure::MissingKey {
            key,
            slot: self.slot_addr(slot),
        })
    }

    /// Reads `page` in full against its version; on a write, writes the next version.
    /// Returns the hash of the values read.
    fn access(&self, page: u64, write: bool) -> Result<u64, Failure> {
        let addr = self.page_addr(page);
        let offset = page * PAGE_SIZE;
        let version = self.versions[page as usize].load(Ordering::Relaxed);
        // SAFETY: the page is in the working memory and only its owner CPU (this one)
        // reads or writes it during the run.
        let read = unsafe { verify_page(addr as *const u64, offset, version) }.map_err(|m| {
            Failure::Corrupt {
                page: addr,
                expected_version: version,
                word: m.word,
                found: m.found,
                expected: m.expected,
            }
        })?;
        if write {
            let next = version.wrapping_add(1);
            // SAFETY: as above.
            unsafe { fill_page(addr as *mut u64, offset, next) };
            self.versions[page as usize].store(next, Ordering::Relaxed);
        }
        Ok(read)
    }

    /// Performs this CPU's share of the run's operations (those on pages or keys it
    /// owns) in stream order, recording in `latency` how long each took by `clock` (the
    /// TSC in the guest).
    pub fn run(
        &self,
        cpu: u32,
        cpus: u32,
        latency: &mut Histogram,
        mut clock: impl FnMut() -> u64,
    ) -> Result<Totals, Failure> {
        let mut stream = OpStream::new(self.plan, self.perm, self.next);
        let mut totals = Totals::default();
        for index in 0..self.plan.config.iters {
            let Op { target, write } = stream.next_op();
            let began = clock();
            let read = match target {
                Target::Page(page) => {
                    if !Self::owns(page, cpu, cpus) {
                        continue;
                    }
                    self.access(page, write)?
                }
                Target::Key(rank) => {
                    if !Self::owns(rank, cpu, cpus) {
                        continue;
                    }
                    let page = self.lookup(kv_key(self.plan.config.seed, rank))?;
                    self.access(page, write)?
                }
            };
            latency.record(clock().saturating_sub(began));
            totals.ops += 1;
            totals.writes += u64::from(write);
            totals.checksum = totals.checksum.wrapping_add(mix64(index ^ read));
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;
    use crate::workload::build_tables;

    /// A run's memory on the heap.
    struct HostRun {
        plan: Plan,
        memory: Vec<u64>,
        base: u64,
        versions: Vec<AtomicU32>,
        index_hashes: Vec<AtomicU64>,
        perm: Vec<u32>,
        next: Vec<u32>,
    }

    impl HostRun {
        fn new(line: &str) -> HostRun {
            let plan = Plan::new(parse(line).unwrap());
            let mut perm = vec![0u32; plan.perm_len as usize];
            let mut next = vec![0u32; plan.next_len as usize];
            build_tables(&plan, &mut perm, &mut next);
            let mut memory = vec![0xdead_beef; (plan.pages * PAGE_SIZE / 8) as usize];
            HostRun {
                plan,
                base: memory.as_mut_ptr() as u64,
                memory,
                versions: (0..plan.pages).map(|_| AtomicU32::new(0)).collect(),
                index_hashes: (0..plan.index_pages).map(|_| AtomicU64::new(0)).collect(),
                perm,
                next,
            }
        }

        fn arena(&self) -> Arena<'_> {
            Arena {
                plan: self.plan,
                base: self.base,
                versions: &self.versions,
                index_hashes: &self.index_hashes,
                perm: &self.perm,
                next: &self.next,
            }
        }

        /// Fills and runs on `cpus` CPUs one after another (each page has one owner,
        /// so the order between CPUs does not matter).
        fn run(&self, cpus: u32) -> Result<Totals, Failure> {
            let arena = self.arena();
            for cpu in 0..cpus {
                arena.fill(cpu, cpus);
            }
            let mut totals = Totals::default();
            let mut latency = Histogram::default();
            for cpu in 0..cpus {
                // A clock that advances one tick a reading: every operation takes 1.
                let mut ticks = 0;
                totals.merge(arena.run(cpu, cpus, &mut latency, || {
                    ticks += 1;
                    ticks
                })?);
            }
            assert_eq!(latency.count(), totals.ops, "one time per operation");
            assert_eq!(latency.max(), 1);
            Ok(totals)
        }
    }

    /// One CPU's share, its operation times thrown away.
    fn untimed(arena: &Arena<'_>, cpu: u32, cpus: u32) -> Result<Totals, Failure> {
        arena.run(cpu, cpus, &mut Histogram::default(), || 0)
    }

    fn line(workload: Workload, seed: u64) -> String {
        format!("workload={} mem=1M iters=5000 seed={seed}", workload.name())
    }

    #[test]
    fn every_workload_verifies_and_counts_all_ops() {
        for workload in Workload::ALL {
            let run = HostRun::new(&line(workload, 1));
            let totals = run
                .run(1)
                .unwrap_or_else(|f| panic!("{}: {f}", workload.name()));
            assert_eq!(totals.ops, 5000, "{}", workload.name());
            assert!(totals.writes > 0, "{}", workload.name());
        }
    }

    #[test]
    fn checksum_depends_on_seed_not_on_cpu_count() {
        for workload in Workload::ALL {
            let one = HostRun::new(&line(workload, 1)).run(1).unwrap();
            let again = HostRun::new(&line(workload, 1)).run(1).unwrap();
            let two = HostRun::new(&line(workload, 1)).run(2).unwrap();
            let three = HostRun::new(&line(workload, 1)).run(3).unwrap();
            let other = HostRun::new(&line(workload, 2)).run(1).unwrap();
            assert_eq!(one, again, "{}", workload.name());
            assert_eq!(one, two, "{}", workload.name());
            assert_eq!(one, three, "{}", workload.name());
            assert_ne!(one.checksum, other.checksum, "{}", workload.name());
        }
    }

    #[test]
    fn a_flipped_bit_is_reported_with_page_and_version() {
        let mut run = HostRun::new("workload=scan mem=1M iters=600");
        let arena = run.arena();
        arena.fill(0, 1);
        // Let the scan write some pages first, then corrupt page 5 of the second pass.
        untimed(&arena, 0, 1).unwrap();
        let version = run.versions[5].load(Ordering::Relaxed);
        let base = run.memory.as_ptr() as u64;
        run.memory[5 * 512 + 100] ^= 4;
        let failure = untimed(&run.arena(), 0, 1).unwrap_err();
        assert_eq!(
            failure,
            Failure::Corrupt {
                page: base + 5 * PAGE_SIZE,
                expected_version: version,
                word: 100,
                found: crate::pattern::expected_word(5 * PAGE_SIZE, version, 100) ^ 4,
                expected: crate::pattern::expected_word(5 * PAGE_SIZE, version, 100),
            }
        );
        let text = failure.to_string();
        assert!(
            text.starts_with(&format!(
                "corrupt page={:#x} expected_version={version}",
                base + 5 * PAGE_SIZE
            )),
            "{text}"
        );
    }

    #[test]
    fn a_lost_write_is_caught() {
        // Keep an old copy of a page, run writes, put the stale copy back: detected.
        let mut run = HostRun::new("workload=random mem=64K iters=2000 seed=4");
        let arena = run.arena();
        arena.fill(0, 1);
        let stale: Vec<u64> = run.memory[..512].to_vec();
        untimed(&arena, 0, 1).unwrap();
        assert!(
            run.versions[0].load(Ordering::Relaxed) > 1,
            "page 0 was rewritten"
        );
        run.memory[..512].copy_from_slice(&stale);
        match untimed(&run.arena(), 0, 1).unwrap_err() {
            Failure::Corrupt {
                expected_version,
                word,
                ..
            } => {
                assert!(expected_version > 1);
                assert_eq!(word, 0);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn kv_detects_lost_index_and_value_pages() {
        let fresh = || {
            let run = HostRun::new("workload=kv mem=1M iters=20000");
            run.run(1).unwrap();
            run
        };
        let base = |run: &HostRun| run.memory.as_ptr() as u64;
        let slot_of = |run: &HostRun, key: u64| {
            (0..run.plan.index_slots as usize)
                .find(|&s| run.memory[s * 4] == key && run.memory[s * 4 + 1] != 0)
                .unwrap()
        };

        // A lost (zeroed) index page: every slot looks empty, the page hash does not match.
        let mut run = fresh();
        let index_words = (run.plan.index_pages * PAGE_SIZE / 8) as usize;
        run.memory[..index_words].fill(0);
        let failure = untimed(&run.arena(), 0, 1);
        assert!(
            matches!(failure, Err(Failure::CorruptIndexPage { found, expected, .. }) if found != expected),
            "{failure:?}"
        );

        // A flipped bit in the hottest key's slot: that slot is named.
        let mut run = fresh();
        let slot = slot_of(&run, kv_key(1, 0));
        run.memory[slot * 4 + 2] ^= 1;
        assert_eq!(
            untimed(&run.arena(), 0, 1),
            Err(Failure::CorruptIndex {
                slot: base(&run) + slot as u64 * KV_SLOT_BYTES,
                key: kv_key(1, 0),
            })
        );

        // One lost slot (zeroed, so it looks empty) on a page the hot key probes: the
        // page hash catches it even though every slot on its own looks valid.
        let mut run = fresh();
        let hot = slot_of(&run, kv_key(1, 0));
        let neighbour = (0..run.plan.index_slots as usize)
            .rev()
            .find(|&s| s / 128 == hot / 128 && s != hot && run.memory[s * 4 + 1] != 0)
            .unwrap();
        run.memory[neighbour * 4..neighbour * 4 + 4].fill(0);
        assert!(matches!(
            untimed(&run.arena(), 0, 1),
            Err(Failure::CorruptIndexPage { .. })
        ));

        // A lost value page.
        let mut run = fresh();
        let hot_page = run.arena().value_page(0) as usize;
        run.memory[hot_page * 512..(hot_page + 1) * 512].fill(0);
        assert!(matches!(
            untimed(&run.arena(), 0, 1),
            Err(Failure::Corrupt {
                word: 0,
                found: 0,
                ..
            })
        ));
    }
}
