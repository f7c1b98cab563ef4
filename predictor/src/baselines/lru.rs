//! Least-recently-used eviction over an O(1) intrusive list.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use tiering::access::{Access, PageNumber};
use tiering::advisor::Advisor;

use super::NO_OPINION;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    page: PageNumber,
    prev: u32,
    next: u32,
}

/// Moves up to `max` pages for which `resident` is false from the front of `queue` to
/// `out`; resident pages met on the way are dropped from the queue.
pub(crate) fn drain_not_resident(
    queue: &mut VecDeque<PageNumber>,
    max: usize,
    resident: impl Fn(PageNumber) -> bool,
    out: &mut Vec<PageNumber>,
) {
    let mut n = 0;
    while n < max {
        let Some(p) = queue.pop_front() else { break };
        if !resident(p) {
            out.push(p);
            n += 1;
        }
    }
}

/// Resident pages from most to least recently used; every operation is O(1).
#[derive(Debug, Default)]
pub struct LruList {
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: FxHashMap<PageNumber, u32>,
    head: Option<u32>,
    tail: Option<u32>,
}

impl LruList {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, page: PageNumber) -> bool {
        self.index.contains_key(&page)
    }

    /// Makes `page` the most recently used, inserting it if absent.
    pub fn touch(&mut self, page: PageNumber) {
        if let Some(&i) = self.index.get(&page) {
            self.unlink(i);
            self.push_front(i);
            return;
        }
        let node = Node {
            page,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(page, i);
        self.push_front(i);
    }

    pub fn remove(&mut self, page: PageNumber) {
        if let Some(i) = self.index.remove(&page) {
            self.unlink(i);
            self.free.push(i);
        }
    }

    /// Appends up to `n` pages from the least recently used end.
    pub fn least_recent(&self, n: usize, out: &mut Vec<PageNumber>) {
        out.extend(self.iter_least_recent().take(n));
    }

    /// The least recently used page.
    pub fn oldest(&self) -> Option<PageNumber> {
        self.tail.map(|i| self.nodes[i as usize].page)
    }

    /// The pages from the least recently used end.
    pub fn iter_least_recent(&self) -> impl Iterator<Item = PageNumber> + '_ {
        let mut cur = self.tail;
        std::iter::from_fn(move || {
            let node = self.nodes[cur? as usize];
            cur = (node.prev != NIL).then_some(node.prev);
            Some(node.page)
        })
    }

    /// Moves up to `max` pages that are not resident from the front of `queue` to
    /// `out`; resident pages met on the way are dropped from the queue. Shared by
    /// the advisors that prefetch over LRU eviction.
    pub fn drain_absent(
        &self,
        queue: &mut VecDeque<PageNumber>,
        max: usize,
        out: &mut Vec<PageNumber>,
    ) {
        drain_not_resident(queue, max, |p| self.contains(p), out);
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = (next != NIL).then_some(next);
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = (prev != NIL).then_some(prev);
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        let n = &mut self.nodes[i as usize];
        n.prev = NIL;
        n.next = old.unwrap_or(NIL);
        if let Some(h) = old {
            self.nodes[h as usize].prev = i;
        }
        self.head = Some(i);
        if self.tail.is_none() {
            self.tail = Some(i);
        }
    }
}

/// `lru`: evicts the resident page whose last observed access is oldest. No prefetch.
#[derive(Debug, Default)]
pub struct LruAdvisor {
    list: LruList,
}

impl LruAdvisor {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Advisor for LruAdvisor {
    fn name(&self) -> &str {
        "lru"
    }
    fn on_access(&mut self, access: &Access, resident: bool) {
        if resident {
            self.list.touch(access.page);
        }
    }
    fn on_fill(&mut self, page: PageNumber, _prefetched: bool) {
        self.list.touch(page);
    }
    fn on_evict(&mut self, page: PageNumber) {
        self.list.remove(page);
    }
    fn victims(&mut self, n: usize, out: &mut Vec<PageNumber>) {
        self.list.least_recent(n, out);
    }
    fn prefetch(&mut self, _now_ns: u64, _max: usize, _out: &mut Vec<PageNumber>) {}
    fn probability(&self, _page: PageNumber) -> f32 {
        NO_OPINION
    }
}
