//! The replay simulator: drives a trace through [`tiering::policy::PagingPolicy`]
//! (the decision core the live VMM uses) with a modelled tiered memory, and reports
//! per advisor what it cost. docs/replay.md describes the model.

mod latency;
pub mod registry;
mod report;
mod sim;

pub use latency::{DeviceQueues, LatencyModel, TierTiming};
pub use report::{format_table, AdvisorReport};
pub use sim::{replay_advisor, ReplayConfig, TraceInput, Visibility, DEFAULT_PROBE_PAGES};

use std::path::PathBuf;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use tiering::trace::{Clock, TraceError, TraceReader};

use crate::baselines::OracleFuture;
use registry::{make_advisor, needs_future, ReplayContext, UnknownAdvisor};

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read trace {path}: {source}")]
    Trace {
        path: PathBuf,
        #[source]
        source: TraceError,
    },
    #[error("{0}")]
    Advisor(#[from] UnknownAdvisor),
    #[error("the trace has no accesses")]
    EmptyTrace,
    #[error("--ram-fraction must be in (0, 1], got {0}")]
    BadRamFraction(f64),
    #[error("the trace is too long for the oracle (at most 4294967294 accesses)")]
    TooLongForOracle,
    #[error("policy settings refused: {0}")]
    Policy(#[from] tiering::policy::PolicyError),
}

/// What one pass over the trace learns before any advisor runs.
#[derive(Debug)]
pub struct TraceSummary {
    pub accesses: u64,
    pub distinct_pages: u64,
    pub clock: Clock,
    pub page_size: u64,
    /// The page sequence, kept only when an advisor needs the future.
    pub pages: Option<Vec<u64>>,
}

/// Counts accesses and distinct pages, and keeps the page sequence if `keep_pages`.
pub fn summarize(input: &TraceInput, keep_pages: bool) -> Result<TraceSummary, ReplayError> {
    let (clock, page_size) = input.clock_and_page_size()?;
    let mut distinct = FxHashSet::default();
    let mut pages = keep_pages.then(Vec::new);
    let mut accesses = 0u64;
    input.for_each(|a| {
        accesses += 1;
        distinct.insert(a.page);
        if let Some(p) = pages.as_mut() {
            p.push(a.page);
        }
    })?;
    Ok(TraceSummary {
        accesses,
        distinct_pages: distinct.len() as u64,
        clock,
        page_size,
        pages,
    })
}

/// Replays `input` once per advisor in `names` (plus `none` as the coverage
/// reference when it is not among them) and returns one report per requested name.
pub fn replay_all(
    input: &TraceInput,
    names: &[String],
    config: &ReplayConfig,
    model: Option<PathBuf>,
) -> Result<Vec<AdvisorReport>, ReplayError> {
    replay_all_saving(input, names, config, model, None)
}

/// As [`replay_all`]; a learned advisor (`gru`) also writes its model, as online
/// learning left it at the end of the trace, to `save`.
pub fn replay_all_saving(
    input: &TraceInput,
    names: &[String],
    config: &ReplayConfig,
    model: Option<PathBuf>,
    save: Option<crate::saved_model::ModelSaver>,
) -> Result<Vec<AdvisorReport>, ReplayError> {
    if !(config.ram_fraction > 0.0 && config.ram_fraction <= 1.0) {
        return Err(ReplayError::BadRamFraction(config.ram_fraction));
    }
    // Refuse unknown names before the (possibly long) first pass.
    let probe = ReplayContext {
        ram_budget_pages: 1,
        model: model.clone(),
        position: None,
        ..ReplayContext::default()
    };
    for n in names {
        match make_advisor(n, &probe) {
            Ok(_) | Err(UnknownAdvisor::NoFuture(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let want_future = names.iter().any(|n| needs_future(n));
    let summary = summarize(input, want_future)?;
    if summary.accesses == 0 {
        return Err(ReplayError::EmptyTrace);
    }
    let budget = ((summary.distinct_pages as f64 * config.ram_fraction).floor() as usize).max(1);
    let future = match summary.pages {
        Some(pages) => Some(Arc::new(
            OracleFuture::new(pages).ok_or(ReplayError::TooLongForOracle)?,
        )),
        None => None,
    };
    let ctx = ReplayContext {
        ram_budget_pages: budget,
        distinct_pages: summary.distinct_pages,
        future,
        model,
        position: None,
        save_model: save,
    };
    let mut order: Vec<&str> = names.iter().map(String::as_str).collect();
    let reference_extra = !order.contains(&"none");
    if reference_extra {
        order.push("none");
    }
    let mut reports = Vec::new();
    for name in order {
        let advisor = make_advisor(name, &ctx)?;
        let r = replay_advisor(
            input,
            advisor,
            name,
            config,
            &ctx,
            summary.clock,
            summary.page_size,
        )?;
        reports.push(r);
    }
    let none_faults = reports
        .iter()
        .find(|r| r.advisor == "none")
        .map(|r| r.demand_faults);
    for r in &mut reports {
        r.set_coverage(none_faults);
    }
    if reference_extra {
        reports.pop();
    }
    Ok(reports)
}

/// Opens a trace file for reading.
pub(crate) fn open_trace(
    path: &PathBuf,
) -> Result<TraceReader<std::io::BufReader<std::fs::File>>, ReplayError> {
    TraceReader::open(path).map_err(|source| ReplayError::Trace {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests;
