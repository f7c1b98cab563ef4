//! Anomaly detection measured on traces with known change points: segments of real
//! program traces (and synthetic scan storms) spliced one after another, each segment
//! in its own page range, replayed with the `gru` advisor through the replay simulator
//! (the paging policy the live VMM uses), and its detections scored against the
//! splice points. docs/anomaly.md has the results.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tiering::access::{Access, AccessOp, AccessSource, PageKind, PageNumber};
use tiering::advisor::Advisor;
use tiering::trace::{Clock, TraceError, TraceReader};

use crate::gru::anomaly::{score_detections, DetectionScore};
use crate::gru::{GruAdvisor, GruOptions, ModelFileError};
use crate::live::{AnomalyRecord, LiveGru};
use crate::replay::{replay_advisor, summarize, ReplayConfig, ReplayError, TraceInput};
use crate::ReplayContext;

/// Segment `k` of a splice lives at pages `k << SEGMENT_SHIFT` and up. Lackey pages
/// (48-bit addresses / 4 KiB) stay below 2^36, so segments never overlap.
pub const SEGMENT_SHIFT: u32 = 36;

/// One piece of a splice.
#[derive(Debug, Clone)]
pub enum Part {
    /// Records `skip..skip + take` of a trace file.
    Trace {
        path: PathBuf,
        skip: usize,
        take: usize,
    },
    /// A scan storm: `pages` fresh pages read in order, `touches` accesses each (a
    /// program streaming through a large buffer), `gap` clock units apart.
    ScanStorm { pages: u64, touches: u32, gap: u64 },
    /// Records `skip..skip + take` of a trace file with its own page numbers: one cut
    /// of a recording whose cuts follow each other (a phase change inside one VM,
    /// which may come back to pages an earlier phase used).
    Cut {
        path: PathBuf,
        skip: usize,
        take: usize,
    },
}

impl Part {
    fn label(&self) -> String {
        match self {
            Part::Trace { path, .. } | Part::Cut { path, .. } => path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into(),
            ),
            Part::ScanStorm { pages, .. } => format!("scan-storm({pages}p)"),
        }
    }
}

/// A spliced trace; segment `k >= 1` starts a known change.
#[derive(Debug, Clone)]
pub struct Splice {
    pub name: String,
    pub accesses: Vec<Access>,
    pub clock: Clock,
    pub segments: Vec<String>,
    /// Distinct pages of each segment.
    pub segment_pages: Vec<u64>,
    /// Index in `accesses` of each segment's first access.
    pub segment_starts: Vec<u64>,
}

impl Splice {
    /// The median footprint of its segments (the lower one of two), in pages.
    pub fn median_segment_pages(&self) -> u64 {
        let mut p = self.segment_pages.clone();
        p.sort_unstable();
        p.get(p.len().saturating_sub(1) / 2).copied().unwrap_or(0)
    }
}

/// Why a splice could not be built or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ChangeEvalError {
    #[error("cannot read trace {path}: {source} (run `make traces` to produce it)")]
    Trace { path: PathBuf, source: TraceError },
    #[error("trace {path} has only {have} records; the splice wants {want} after skipping {skip}")]
    TooShort {
        path: PathBuf,
        have: usize,
        want: usize,
        skip: usize,
    },
    #[error("splice {0}: the first part must be a trace (it sets the clock)")]
    NoClock(String),
    #[error("splice {splice}: {path} counts {got} but the splice's clock is {want}")]
    MixedClocks {
        splice: String,
        path: PathBuf,
        got: &'static str,
        want: &'static str,
    },
    #[error("cannot load the GRU model {path}: {source}")]
    Model {
        path: PathBuf,
        source: ModelFileError,
    },
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

fn read_part(
    path: &Path,
    skip: usize,
    take: usize,
) -> Result<(Clock, Vec<Access>), ChangeEvalError> {
    let err = |source| ChangeEvalError::Trace {
        path: path.to_path_buf(),
        source,
    };
    let reader = TraceReader::open(path).map_err(err)?;
    let clock = reader.header().clock;
    let mut out = Vec::with_capacity(take);
    for a in reader.skip(skip).take(take) {
        out.push(a.map_err(err)?);
    }
    if out.len() < take {
        return Err(ChangeEvalError::TooShort {
            path: path.to_path_buf(),
            have: skip + out.len(),
            want: take,
            skip,
        });
    }
    Ok((clock, out))
}

/// Where a run of a test-guest workload that walks `regions` regions of
/// `region_pages` pages from `first_page` on (the phases workload) moves from one
/// region to the next: `(record index, region)` for the first record of each run of
/// records in one region. Records outside the regions (code, stack) are skipped, and a
/// run of fewer than `min_run` in-region records is folded into the run before it
/// (a dirty-log harvest lists pages out of time order, so a phase switch can flicker).
pub fn region_runs(
    pages: impl IntoIterator<Item = PageNumber>,
    first_page: PageNumber,
    region_pages: u64,
    regions: u64,
    min_run: usize,
) -> Vec<(usize, u64)> {
    let end = first_page + region_pages * regions;
    // Raw runs: (first record index, region, in-region records).
    let mut raw: Vec<(usize, u64, usize)> = Vec::new();
    for (i, page) in pages.into_iter().enumerate() {
        if !(first_page..end).contains(&page) {
            continue;
        }
        let region = (page - first_page) / region_pages.max(1);
        match raw.last_mut() {
            Some(run) if run.1 == region => run.2 += 1,
            _ => raw.push((i, region, 1)),
        }
    }
    let mut runs: Vec<(usize, u64)> = Vec::new();
    for (i, region, n) in raw {
        if n < min_run || runs.last().is_some_and(|r| r.1 == region) {
            continue;
        }
        runs.push((i, region));
    }
    runs
}

/// One run of [`trace_region_runs`]: its first record, its region and that record's
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRun {
    pub record: usize,
    pub region: u64,
    pub time_ns: u64,
}

/// [`region_runs`] over a trace file's records, and how many records it holds.
pub fn trace_region_runs(
    path: &Path,
    first_page: PageNumber,
    region_pages: u64,
    regions: u64,
    min_run: usize,
) -> Result<(Vec<RegionRun>, usize), ChangeEvalError> {
    let err = |source| ChangeEvalError::Trace {
        path: path.to_path_buf(),
        source,
    };
    let (mut pages, mut times) = (Vec::new(), Vec::new());
    for a in TraceReader::open(path).map_err(err)? {
        let a = a.map_err(err)?;
        pages.push(a.page);
        times.push(a.time_ns);
    }
    let records = pages.len();
    let runs = region_runs(pages, first_page, region_pages, regions, min_run)
        .into_iter()
        .map(|(record, region)| RegionRun {
            record,
            region,
            time_ns: times[record],
        })
        .collect();
    Ok((runs, records))
}

/// Builds a splice: each part's pages moved to its own range, its clock continuing
/// where the previous part ended.
pub fn build_splice(name: &str, parts: &[Part]) -> Result<Splice, ChangeEvalError> {
    let mut accesses: Vec<Access> = Vec::new();
    let mut segment_pages = Vec::new();
    let mut segment_starts = Vec::new();
    let mut clock = None;
    let mut now = 0u64;
    for (k, part) in parts.iter().enumerate() {
        let base: PageNumber = (k as u64) << SEGMENT_SHIFT;
        let first = accesses.len();
        match part {
            Part::Trace { path, skip, take } | Part::Cut { path, skip, take } => {
                let (c, recs) = read_part(path, *skip, *take)?;
                let (base, mask) = match part {
                    Part::Cut { .. } => (0, PageNumber::MAX),
                    _ => (base, (1 << SEGMENT_SHIFT) - 1),
                };
                match clock {
                    None => clock = Some(c),
                    Some(want) if want != c => {
                        return Err(ChangeEvalError::MixedClocks {
                            splice: name.into(),
                            path: path.clone(),
                            got: c.unit(),
                            want: want.unit(),
                        })
                    }
                    Some(_) => {}
                }
                let t0 = recs.first().map_or(0, |a| a.time_ns);
                let start = now + 1;
                for a in recs {
                    now = start + (a.time_ns - t0);
                    accesses.push(Access {
                        time_ns: now,
                        page: base + (a.page & mask),
                        ..a
                    });
                }
            }
            Part::ScanStorm {
                pages,
                touches,
                gap,
            } => {
                if clock.is_none() {
                    return Err(ChangeEvalError::NoClock(name.into()));
                }
                for p in 0..*pages {
                    for _ in 0..*touches {
                        now += gap;
                        accesses.push(Access {
                            time_ns: now,
                            page: base + p,
                            vcpu: 0,
                            op: AccessOp::Read,
                            kind: PageKind::Unknown,
                            source: AccessSource::Full,
                        });
                    }
                }
            }
        }
        let distinct: rustc_hash::FxHashSet<PageNumber> =
            accesses[first..].iter().map(|a| a.page).collect();
        segment_pages.push(distinct.len() as u64);
        segment_starts.push(first as u64);
    }
    Ok(Splice {
        name: name.into(),
        accesses,
        clock: clock.ok_or_else(|| ChangeEvalError::NoClock(name.into()))?,
        segments: parts.iter().map(Part::label).collect(),
        segment_pages,
        segment_starts,
    })
}

/// Where a change happened as the advisor saw it: the first observed access of a new
/// segment (a demand fault, unless the segment is a [`Part::Cut`] that comes back to
/// pages still resident).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeMark {
    pub segment: u64,
    /// Simulated time (trace clock scaled, plus the stall so far), as the advisor sees it.
    pub time_ns: u64,
    /// The advisor's model window then.
    pub window: u64,
}

/// [`LiveGru`] that also notes when each new segment starts: the replay says which
/// access it is at (`position`), `starts` where each segment begins.
struct Marked {
    inner: LiveGru,
    marks: Arc<Mutex<Vec<ChangeMark>>>,
    segment: u64,
    position: Arc<AtomicU64>,
    starts: Vec<u64>,
}

impl Advisor for Marked {
    forward_advisor!(inner);

    fn on_access(&mut self, access: &Access, resident: bool) {
        let at = self.position.load(Ordering::Relaxed);
        let seg = self.starts.partition_point(|&s| s <= at).saturating_sub(1) as u64;
        if seg > self.segment {
            self.segment = seg;
            let mark = ChangeMark {
                segment: seg,
                time_ns: access.time_ns,
                window: self.inner.inner().stats.windows,
            };
            self.marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(mark);
        }
        self.inner.on_access(access, resident);
    }
    fn end_window(&mut self, now_ns: u64) {
        self.inner.end_window(now_ns);
    }
}

/// The detector's result on one splice.
#[derive(Debug, Clone)]
pub struct SpliceResult {
    pub name: String,
    pub segments: Vec<String>,
    pub accesses: usize,
    pub model_windows: u64,
    pub changes: Vec<ChangeMark>,
    pub detections: Vec<AnomalyRecord>,
    /// Scored in model windows.
    pub score: DetectionScore,
    /// Per detected change: (delay in model windows, delay in ms of simulated time).
    pub delays: Vec<(u64, f64)>,
}

/// Replays `splice` with the `gru` advisor (model `model`, options `opts`) and scores
/// its pattern-change events: a detection within `tolerance` model windows after a
/// change counts for it, any other is a false alarm. RAM holds `cfg.ram_fraction` of
/// the median segment's footprint (not of the whole splice: a budget sized for the
/// storm would hold a whole program, whose accesses the advisor then never sees).
pub fn evaluate(
    splice: &Splice,
    cfg: &ReplayConfig,
    model: &Path,
    opts: GruOptions,
    tolerance: u64,
) -> Result<SpliceResult, ChangeEvalError> {
    let input = TraceInput::Memory {
        accesses: Arc::from(splice.accesses.as_slice()),
        clock: splice.clock,
    };
    let summary = summarize(&input, false)?;
    let position = Arc::new(AtomicU64::new(0));
    let ctx = ReplayContext {
        ram_budget_pages: ((splice.median_segment_pages() as f64 * cfg.ram_fraction) as usize)
            .max(1),
        distinct_pages: summary.distinct_pages,
        future: None,
        model: Some(model.to_path_buf()),
        position: Some(position.clone()),
        save_model: None,
    };
    let gru = GruAdvisor::from_file(model, opts).map_err(|source| ChangeEvalError::Model {
        path: model.to_path_buf(),
        source,
    })?;
    let (live, handle) = LiveGru::new(gru);
    let marks = Arc::new(Mutex::new(Vec::new()));
    let marked = Marked {
        inner: live,
        marks: marks.clone(),
        segment: 0,
        position,
        starts: splice.segment_starts.clone(),
    };
    replay_advisor(
        &input,
        Box::new(marked),
        "gru",
        cfg,
        &ctx,
        summary.clock,
        summary.page_size,
    )?;
    let report = handle.report();
    let changes = marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let change_w: Vec<u64> = changes.iter().map(|c| c.window).collect();
    let det_w: Vec<u64> = report.anomalies.iter().map(|a| a.window).collect();
    let score = score_detections(&change_w, &det_w, tolerance);
    let delays = changes
        .iter()
        .filter_map(|c| {
            report
                .anomalies
                .iter()
                .find(|a| a.window >= c.window && a.window <= c.window + tolerance)
                .map(|a| (a.window - c.window, a.time_ms - c.time_ns as f64 / 1e6))
        })
        .collect();
    Ok(SpliceResult {
        name: splice.name.clone(),
        segments: splice.segments.clone(),
        accesses: splice.accesses.len(),
        model_windows: report.model_windows,
        changes,
        detections: report.anomalies,
        score,
        delays,
    })
}

/// Totals over several splices.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub changes: usize,
    pub found: usize,
    pub detections: usize,
    pub false_alarms: usize,
    pub model_windows: u64,
    pub mean_delay_windows: f64,
    pub max_delay_windows: u64,
    pub mean_delay_ms: f64,
    pub max_delay_ms: f64,
}

impl Totals {
    pub fn of(results: &[SpliceResult]) -> Totals {
        let mut t = Totals::default();
        let mut delays = Vec::new();
        for r in results {
            t.changes += r.score.changes;
            t.found += r.delays.len();
            t.detections += r.score.detections;
            t.false_alarms += r.score.false_alarms;
            t.model_windows += r.model_windows;
            delays.extend_from_slice(&r.delays);
        }
        if !delays.is_empty() {
            let n = delays.len() as f64;
            t.mean_delay_windows = delays.iter().map(|d| d.0 as f64).sum::<f64>() / n;
            t.mean_delay_ms = delays.iter().map(|d| d.1).sum::<f64>() / n;
            t.max_delay_windows = delays.iter().map(|d| d.0).max().unwrap_or(0);
            t.max_delay_ms = delays.iter().map(|d| d.1).fold(0.0, f64::max);
        }
        t
    }
    pub fn precision(&self) -> f64 {
        if self.detections == 0 {
            0.0
        } else {
            (self.detections - self.false_alarms) as f64 / self.detections as f64
        }
    }
    pub fn recall(&self) -> f64 {
        if self.changes == 0 {
            0.0
        } else {
            self.found as f64 / self.changes as f64
        }
    }
    pub fn false_alarms_per_1000(&self) -> f64 {
        if self.model_windows == 0 {
            0.0
        } else {
            self.false_alarms as f64 * 1000.0 / self.model_windows as f64
        }
    }
}

/// One row per splice and a total row.
pub fn format_table(results: &[SpliceResult]) -> String {
    let mut s = format!(
        "{:<34} {:>7} {:>7} {:>5} {:>5} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "splice",
        "windows",
        "changes",
        "found",
        "dets",
        "prec",
        "recall",
        "delay_w",
        "maxdel_w",
        "delay_ms",
        "maxdel_ms",
        "FA/1kw"
    );
    let mut row = |name: &str, t: &Totals| {
        s.push_str(&format!(
            "{:<34} {:>7} {:>7} {:>5} {:>5} {:>6.2} {:>6.2} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>8.2}\n",
            name,
            t.model_windows,
            t.changes,
            t.found,
            t.detections,
            t.precision(),
            t.recall(),
            t.mean_delay_windows,
            t.max_delay_windows,
            t.mean_delay_ms,
            t.max_delay_ms,
            t.false_alarms_per_1000()
        ));
    };
    for r in results {
        row(&r.name, &Totals::of(std::slice::from_ref(r)));
    }
    row("TOTAL", &Totals::of(results));
    s
}

#[cfg(test)]
mod tests {
    use super::{build_splice, region_runs, Part, SEGMENT_SHIFT};
    use tiering::access::{Access, AccessOp, AccessSource, PageKind};
    use tiering::trace::{TraceHeader, TraceWriter};

    #[test]
    fn cuts_keep_their_pages_and_traces_move_to_their_own() {
        let path = std::env::temp_dir().join(format!("cuts-{}.tvt", std::process::id()));
        let mut w = TraceWriter::create(&path, &TraceHeader::default()).unwrap();
        for i in 0..10u64 {
            let a = Access {
                time_ns: 1_000 * (i + 1),
                page: 100 + i % 4,
                vcpu: 0,
                op: AccessOp::Read,
                kind: PageKind::Data,
                source: AccessSource::Full,
            };
            w.write(&a).unwrap();
        }
        w.finish().unwrap();
        let cut = |skip, take| Part::Cut {
            path: path.clone(),
            skip,
            take,
        };
        let parts = [
            cut(0, 6),
            cut(6, 4),
            Part::Trace {
                path: path.clone(),
                skip: 0,
                take: 4,
            },
        ];
        let splice = build_splice("t", &parts);
        std::fs::remove_file(&path).ok();
        let splice = splice.unwrap();
        assert_eq!(splice.segment_starts, vec![0, 6, 10]);
        let pages: Vec<u64> = splice.accesses.iter().map(|a| a.page).collect();
        // The second cut comes back to pages the first used; the trace part does not.
        assert_eq!(
            &pages[..10],
            &[100, 101, 102, 103, 100, 101, 102, 103, 100, 101]
        );
        assert!(
            pages[10..].iter().all(|&p| p >> SEGMENT_SHIFT == 2),
            "{pages:?}"
        );
        assert!(splice
            .accesses
            .windows(2)
            .all(|w| w[0].time_ns < w[1].time_ns));
    }

    #[test]
    fn region_runs_skip_other_pages_and_fold_flickers() {
        // Regions of 10 pages from page 100: 0, then 2 with a one-record flicker to 3
        // inside it, then 0; page 5 is outside the regions.
        let pages = [
            5, 100, 101, 5, 102, 120, 121, 130, 122, 123, 124, 101, 102, 103,
        ];
        let runs = region_runs(pages, 100, 10, 4, 2);
        assert_eq!(runs, vec![(1, 0), (5, 2), (11, 0)]);
        // Every run counts with min_run 1.
        let runs = region_runs(pages, 100, 10, 4, 1);
        assert_eq!(runs, vec![(1, 0), (5, 2), (7, 3), (8, 2), (11, 0)]);
    }
}
