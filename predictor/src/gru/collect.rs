//! Training samples gathered the way the live advisor sees a workload: the trace is
//! replayed through the project's simulator (`crate::replay`, the same
//! `PagingPolicy` the VMM uses), so the windows (1 ms of modelled time) and what is
//! visible (faults plus sampled minor faults) match what the advisor meets later.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::replay::registry::ReplayContext;
use crate::replay::{replay_advisor, summarize, ReplayConfig, ReplayError, TraceInput};

use super::features::Sample;
use super::model::{AccessModel, ModelMeta};
use super::online::OnlineMode;
use super::{GruAdvisor, GruOptions};

/// Shared buffer the advisor appends its per-window training samples to.
pub type SampleSink = Arc<Mutex<Vec<Sample>>>;

/// Replay `input` once per configuration with `model` deciding (no online learning)
/// and return the samples its windows produced.
pub fn collect_samples(
    input: &TraceInput,
    model: &AccessModel,
    meta: &ModelMeta,
    configs: &[ReplayConfig],
    per_window: usize,
) -> Result<Vec<Sample>, ReplayError> {
    let summary = summarize(input, false)?;
    if summary.accesses == 0 {
        return Err(ReplayError::EmptyTrace);
    }
    let mut out = Vec::new();
    for cfg in configs {
        let budget = ((summary.distinct_pages as f64 * cfg.ram_fraction).floor() as usize).max(1);
        let ctx = ReplayContext {
            ram_budget_pages: budget,
            distinct_pages: summary.distinct_pages,
            future: None,
            model: None,
            position: None,
            save_model: None,
        };
        let sink: SampleSink = Arc::default();
        let mut opts = GruOptions {
            samples_per_window: per_window,
            ..GruOptions::from_env()
        };
        opts.online.mode = OnlineMode::Off;
        let mut adv = GruAdvisor::new(model.clone(), meta.clone(), opts);
        adv.set_sample_sink(sink.clone());
        replay_advisor(
            input,
            Box::new(adv),
            "gru",
            cfg,
            &ctx,
            summary.clock,
            summary.page_size,
        )?;
        let mut got = sink.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut got);
    }
    Ok(out)
}

/// [`collect_samples`] for a trace file.
pub fn collect_from_file(
    path: &Path,
    model: &AccessModel,
    meta: &ModelMeta,
    configs: &[ReplayConfig],
    per_window: usize,
) -> Result<Vec<Sample>, ReplayError> {
    collect_samples(
        &TraceInput::File(path.to_path_buf()),
        model,
        meta,
        configs,
        per_window,
    )
}
