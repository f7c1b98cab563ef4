//! The first-touch prior: what the training traces say about the order in which
//! programs touch pages for the first time, as page deltas, learned offline and
//! shipped beside the base model (`resources/models/first-touch-prior.json`).
//!
//! Every process starts the same way (the dynamic loader maps and relocates the
//! libraries, libc initialises itself), so the first ~150 first touches of the
//! training programs repeat, as deltas, in programs they do not include
//! (docs/predictor-experiments.md, "The first-touch prior"). A first touch costs a demand fault;
//! a zero fill ahead of it costs nothing but the page of RAM. The table maps the last
//! two deltas of the first-touch sequence to the next; `+-1` is left out, as the
//! first-touch run source follows runs without a table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;
use tiering::access::PageNumber;
use tiering::trace::{TraceError, TraceReader};

/// Bumped whenever the file's meaning changes.
pub const PRIOR_FORMAT_VERSION: u32 = 1;

/// Where the project's prior lives in the source tree (`make prior` writes it).
pub const BASE_PRIOR_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../resources/models/first-touch-prior.json"
);

/// Environment variable that overrides [`BASE_PRIOR_PATH`].
pub const PRIOR_ENV: &str = "TIERVISOR_GRU_PRIOR";

/// The prior file to use: `$TIERVISOR_GRU_PRIOR` or the shipped one.
pub fn base_prior_path() -> PathBuf {
    std::env::var_os(PRIOR_ENV).map_or_else(|| BASE_PRIOR_PATH.into(), Into::into)
}

/// How a prior is learned.
#[derive(Debug, Clone, Copy)]
pub struct PriorConfig {
    /// Distinct traces that must show a transition before it is kept.
    pub min_traces: usize,
    /// Share of a context's occurrences its most common next delta must have.
    pub min_share: f64,
}

impl Default for PriorConfig {
    fn default() -> Self {
        // Chosen on the training traces, each left out in turn
        // (docs/predictor-experiments.md, "The first-touch prior").
        PriorConfig {
            min_traces: 2,
            min_share: 0.6,
        }
    }
}

/// Next first-touch delta by the two deltas before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirstTouchPrior {
    next: FxHashMap<(i64, i64), i64>,
}

/// The file: a version, what it was learned from, and the table as
/// `[delta before last, last delta, next delta]` rows (sorted, so a file is
/// reproducible). Read with serde; written by [`FirstTouchPrior::save`].
/// (The version is checked before, and `learned_from` is for people.)
#[derive(Debug, Deserialize)]
struct PriorFile {
    transitions: Vec<[i64; 3]>,
}

/// Why a prior could not be learned, written or read.
#[derive(Debug, thiserror::Error)]
pub enum PriorError {
    #[error("prior file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("prior file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("prior file {path} has format version {found}, this tiervisor reads version {PRIOR_FORMAT_VERSION}; rebuild it with `make prior`")]
    Version { path: PathBuf, found: u32 },
    #[error("trace {path}: {source}")]
    Trace { path: PathBuf, source: TraceError },
}

/// The pages of a trace in the order they are first touched.
pub fn first_touches(path: &Path) -> Result<Vec<PageNumber>, PriorError> {
    let err = |source| PriorError::Trace {
        path: path.to_path_buf(),
        source,
    };
    let mut seen = FxHashSet::default();
    let mut order = Vec::new();
    for a in TraceReader::open(path).map_err(err)? {
        let page = a.map_err(err)?.page;
        if seen.insert(page) {
            order.push(page);
        }
    }
    Ok(order)
}

/// How often a next delta followed a context, and in which traces.
#[derive(Default)]
struct Seen {
    times: usize,
    traces: FxHashSet<usize>,
}

fn delta(from: PageNumber, to: PageNumber) -> i64 {
    to.wrapping_sub(from) as i64
}

impl FirstTouchPrior {
    /// Learns the table from first-touch sequences, one per trace.
    pub fn learn(sequences: &[Vec<PageNumber>], cfg: PriorConfig) -> Self {
        // context -> next delta -> its occurrences
        let mut seen: BTreeMap<(i64, i64), BTreeMap<i64, Seen>> = BTreeMap::new();
        for (t, seq) in sequences.iter().enumerate() {
            let d: Vec<i64> = seq.windows(2).map(|w| delta(w[0], w[1])).collect();
            for w in d.windows(3) {
                let e = seen
                    .entry((w[0], w[1]))
                    .or_default()
                    .entry(w[2])
                    .or_default();
                e.times += 1;
                e.traces.insert(t);
            }
        }
        let mut next = FxHashMap::default();
        for (ctx, nexts) in seen {
            let total: usize = nexts.values().map(|e| e.times).sum();
            // Most occurrences first; ties to the smaller delta, so learning is repeatable.
            let Some((&d, best)) = nexts
                .iter()
                .max_by(|a, b| a.1.times.cmp(&b.1.times).then(b.0.cmp(a.0)))
            else {
                continue;
            };
            if d.abs() != 1
                && best.traces.len() >= cfg.min_traces
                && best.times as f64 >= cfg.min_share * total as f64
            {
                next.insert(ctx, d);
            }
        }
        FirstTouchPrior { next }
    }

    /// Transitions in the table.
    pub fn len(&self) -> usize {
        self.next.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The delta that follows `before_last` then `last`, if the table has one.
    pub fn next_delta(&self, before_last: i64, last: i64) -> Option<i64> {
        self.next.get(&(before_last, last)).copied()
    }

    pub fn save(&self, path: &Path, learned_from: &str) -> Result<(), PriorError> {
        let mut transitions: Vec<[i64; 3]> =
            self.next.iter().map(|(&(a, b), &c)| [a, b, c]).collect();
        transitions.sort_unstable();
        // A row per line (serde_json's pretty printer puts every number on its own).
        let rows: Vec<String> = transitions
            .iter()
            .map(|[a, b, c]| format!("    [{a}, {b}, {c}]"))
            .collect();
        let text = format!(
            "{{\n  \"format_version\": {PRIOR_FORMAT_VERSION},\n  \"learned_from\": {},\n  \"transitions\": [\n{}\n  ]\n}}\n",
            serde_json::Value::from(learned_from),
            rows.join(",\n")
        );
        // A temp file renamed over the target, as model files are, so a reader never
        // sees half a prior.
        let io = |source| PriorError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, PriorError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriorError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |reason: String| PriorError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        // The version first, so a newer layout is named as such, not as corrupt.
        let version: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        match version.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(PRIOR_FORMAT_VERSION) => {}
            Some(v) => {
                return Err(PriorError::Version {
                    path: path.to_path_buf(),
                    found: v as u32,
                })
            }
            None => return Err(corrupt("no format_version".into())),
        }
        let file: PriorFile =
            serde_json::from_value(version).map_err(|e| corrupt(e.to_string()))?;
        let mut next = FxHashMap::default();
        for [a, b, c] in file.transitions {
            if next.insert((a, b), c).is_some() {
                return Err(corrupt(format!("transition ({a}, {b}) appears twice")));
            }
        }
        Ok(FirstTouchPrior { next })
    }
}

/// Where a VM is in its first-touch sequence, as the prior follows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorCursor {
    /// The last first touch (or the last page the prior expected), and the delta that
    /// led to it.
    last: Option<(PageNumber, Option<i64>)>,
}

impl PriorCursor {
    /// A first touch of `page` that faulted: appends to `out` the up to `depth` pages
    /// the prior expects next that `seen` does not hold, and moves on to the last of
    /// them (they are expected to be touched without faulting).
    pub fn on_first_touch(
        &mut self,
        prior: &FirstTouchPrior,
        page: PageNumber,
        depth: usize,
        seen: impl Fn(PageNumber) -> bool,
        out: &mut Vec<PageNumber>,
    ) {
        let last_delta = self.last.map(|(p, _)| delta(p, page));
        let mut ctx = (self.last.and_then(|(_, d)| d), last_delta);
        let (mut at, mut led) = (page, last_delta);
        for _ in 0..depth {
            let (Some(a), Some(b)) = ctx else { break };
            let Some(d) = prior.next_delta(a, b) else {
                break;
            };
            let next = at.wrapping_add(d as u64);
            if seen(next) {
                break;
            }
            out.push(next);
            (at, led) = (next, Some(d));
            ctx = (Some(b), Some(d));
        }
        self.last = Some((at, led));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start sequence shared by programs, then each its own pages.
    fn program(own: PageNumber) -> Vec<PageNumber> {
        let mut v = vec![100, 140, 120, 300, 310, 900];
        v.extend(own..own + 5);
        v
    }

    #[test]
    fn learns_deltas_two_traces_share_and_leaves_runs_out() {
        let prior = FirstTouchPrior::learn(&[program(5000), program(7000)], PriorConfig::default());
        // 100 -> 140 -> 120: deltas 40, -20, then 180 (to 300), 10 (310), 590 (900).
        assert_eq!(prior.next_delta(40, -20), Some(180));
        assert_eq!(prior.next_delta(-20, 180), Some(10));
        assert_eq!(prior.next_delta(180, 10), Some(590));
        // The runs of each program's own pages are +1: not in the table.
        assert_eq!(prior.next_delta(1, 1), None);
        // One trace alone is not enough.
        let one = FirstTouchPrior::learn(&[program(5000)], PriorConfig::default());
        assert!(one.is_empty());
    }

    #[test]
    fn a_context_with_no_clear_next_delta_is_left_out() {
        let a = vec![0, 10, 30, 60];
        let b = vec![0, 10, 30, 70];
        let prior = FirstTouchPrior::learn(&[a.clone(), b.clone()], PriorConfig::default());
        assert_eq!(prior.next_delta(10, 20), None, "30 and 40 follow half each");
        let prior = FirstTouchPrior::learn(&[a.clone(), a, b], PriorConfig::default());
        assert_eq!(
            prior.next_delta(10, 20),
            Some(30),
            "two of three traces agree"
        );
    }

    #[test]
    fn the_cursor_predicts_from_the_third_first_touch_and_skips_seen_pages() {
        let prior = FirstTouchPrior::learn(&[program(5000), program(7000)], PriorConfig::default());
        let mut cursor = PriorCursor::default();
        let mut out = Vec::new();
        // Another program, shifted by 1000 pages: the deltas are the same.
        for page in [1100, 1140] {
            cursor.on_first_touch(&prior, page, 4, |_| false, &mut out);
            assert!(out.is_empty(), "two deltas are needed");
        }
        cursor.on_first_touch(&prior, 1120, 4, |_| false, &mut out);
        assert_eq!(out, vec![1300, 1310, 1900]);
        // Those three were touched without faulting; the next fault continues from 1900.
        out.clear();
        cursor.on_first_touch(&prior, 1901, 4, |_| false, &mut out);
        assert!(out.is_empty());
        // A page already seen ends the chain.
        let mut cursor = PriorCursor::default();
        for page in [1100, 1140, 1120] {
            out.clear();
            cursor.on_first_touch(&prior, page, 4, |p| p == 1310, &mut out);
        }
        assert_eq!(out, vec![1300]);
    }

    #[test]
    fn a_file_round_trips_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("tv-prior-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        let prior = FirstTouchPrior::learn(&[program(5000), program(7000)], PriorConfig::default());
        prior.save(&path, "two test programs").unwrap();
        assert_eq!(FirstTouchPrior::load(&path).unwrap(), prior);

        std::fs::write(&path, "{\"format_version\": 9, \"transitions\": []}").unwrap();
        let e = FirstTouchPrior::load(&path).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
        std::fs::write(&path, "not json").unwrap();
        let e = FirstTouchPrior::load(&path).unwrap_err().to_string();
        assert!(e.contains("is corrupt"), "{e}");
        std::fs::write(
            &path,
            "{\"format_version\": 1, \"learned_from\": \"\", \"transitions\": [[1, 2, 3], [1, 2, 4]]}",
        )
        .unwrap();
        let e = FirstTouchPrior::load(&path).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        let e = FirstTouchPrior::load(&dir.join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
