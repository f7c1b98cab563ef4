//! What `tiervisor trace info` reports about a trace.

use super::TraceError;
use crate::access::Access;
use std::collections::{BTreeMap, HashMap};

/// Totals over every record of a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSummary {
    pub records: u64,
    pub first_time: Option<u64>,
    pub last_time: Option<u64>,
    /// Indexed by `AccessOp as usize`: read, write, exec.
    pub ops: [u64; 3],
    /// Indexed by `PageKind as usize`: unknown, code, data, shared.
    pub kinds: [u64; 4],
    /// Indexed by `AccessSource as usize`: full, missing-fault, sampled-minor, dirty-log.
    pub sources: [u64; 4],
    pub vcpus: BTreeMap<u16, u64>,
    /// Accesses per page.
    pub page_counts: HashMap<u64, u64>,
}

impl TraceSummary {
    /// Summarises `records`, stopping at the first error.
    pub fn from_records(
        records: impl IntoIterator<Item = Result<Access, TraceError>>,
    ) -> Result<Self, TraceError> {
        let mut s = TraceSummary::default();
        for a in records {
            s.add(&a?);
        }
        Ok(s)
    }

    pub fn add(&mut self, a: &Access) {
        self.records += 1;
        self.first_time.get_or_insert(a.time_ns);
        self.last_time = Some(a.time_ns);
        self.ops[a.op as usize] += 1;
        self.kinds[a.kind as usize] += 1;
        self.sources[a.source as usize] += 1;
        *self.vcpus.entry(a.vcpu).or_default() += 1;
        *self.page_counts.entry(a.page).or_default() += 1;
    }

    pub fn distinct_pages(&self) -> u64 {
        self.page_counts.len() as u64
    }

    /// Last minus first time stamp (in the trace's clock unit).
    pub fn duration(&self) -> u64 {
        match (self.first_time, self.last_time) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    /// The `n` most accessed pages, most first (ties by page number).
    pub fn top_pages(&self, n: usize) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.page_counts.iter().map(|(&p, &c)| (p, c)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}
