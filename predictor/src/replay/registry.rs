//! Advisor construction by name, for `tiervisor replay` and anything else that lets
//! a user pick an advisor.

use std::path::PathBuf;
use std::sync::Arc;

use tiering::advisor::Advisor;

use crate::baselines::{
    ArcAdvisor, ClockAdvisor, LeapAdvisor, LfuAdvisor, LirsAdvisor, LruAdvisor, OracleAdvisor,
    OracleFuture, ReapAdvisor, StrideAdvisor, WorkingSetAdvisor,
};

/// Names `make_advisor` knows, in the order reports list them.
pub const ADVISOR_NAMES: &[&str] = &[
    "gru",
    "leap",
    "stride",
    "lru",
    "lfu",
    "none",
    "reap",
    "oracle",
    "belady",
    "prefetch-oracle",
    "workingset",
    "arc",
    "lirs",
];

/// What an advisor may know before the replay starts.
#[derive(Debug, Default, Clone)]
pub struct ReplayContext {
    pub ram_budget_pages: usize,
    /// Distinct pages of the trace.
    pub distinct_pages: u64,
    /// The whole trace, for `oracle` only (see [`needs_future`]).
    pub future: Option<Arc<OracleFuture>>,
    /// A model file for learned advisors (`gru`); `None`: their shipped default.
    pub model: Option<PathBuf>,
    /// Where a learned advisor writes its model, fine-tuned online, when it ends
    /// (`None`: nowhere).
    pub save_model: Option<crate::saved_model::ModelSaver>,
    /// Set to the index of the access being replayed before each step, for tools
    /// that map what the advisor is shown back to the trace (`changepoints`).
    pub position: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// Why an advisor could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnknownAdvisor {
    #[error("unknown advisor \"{0}\" (known: {known})", known = ADVISOR_NAMES.join(", "))]
    Unknown(String),
    #[error("advisor \"{0}\" is not built in: rebuild with the `gru` feature")]
    NotBuilt(String),
    #[error(
        "advisor \"{0}\" needs the whole trace in advance, so only `tiervisor replay` can run it"
    )]
    NoFuture(String),
    #[error("advisor \"{name}\" could not start: {reason}")]
    Failed { name: String, reason: String },
}

/// Whether `name` must be built from the whole trace before replaying it.
pub fn needs_future(name: &str) -> bool {
    sees_everything(name) || name == "reap"
}

/// Whether `name` is shown every access whatever the visibility setting (the
/// oracle's next-use table is indexed by trace position).
pub fn sees_everything(name: &str) -> bool {
    matches!(name, "oracle" | "belady" | "prefetch-oracle")
}

/// Builds the advisor called `name`.
pub fn make_advisor(name: &str, ctx: &ReplayContext) -> Result<Box<dyn Advisor>, UnknownAdvisor> {
    Ok(match name {
        "none" => Box::new(ClockAdvisor::new()),
        "lru" => Box::new(LruAdvisor::new()),
        "workingset" => Box::new(WorkingSetAdvisor::new()),
        "lfu" => Box::new(LfuAdvisor::new()),
        "arc" => Box::new(ArcAdvisor::new(ctx.ram_budget_pages)),
        "lirs" => Box::new(LirsAdvisor::from_env(ctx.ram_budget_pages)),
        "stride" => Box::new(StrideAdvisor::new()),
        "leap" => Box::new(LeapAdvisor::new()),
        "oracle" | "belady" | "prefetch-oracle" => {
            let future = ctx
                .future
                .clone()
                .ok_or(UnknownAdvisor::NoFuture(name.into()))?;
            let budget = ctx.ram_budget_pages;
            Box::new(match name {
                "oracle" => OracleAdvisor::new(future, budget),
                "belady" => OracleAdvisor::without_prefetch(future, budget),
                _ => OracleAdvisor::with_lru_eviction(future, budget),
            })
        }
        "reap" => {
            let future = ctx
                .future
                .as_ref()
                .ok_or(UnknownAdvisor::NoFuture(name.into()))?;
            Box::new(ReapAdvisor::new(
                &future.first_touch_order(),
                ctx.ram_budget_pages,
            ))
        }
        "gru" => return make_gru(ctx),
        other => return Err(UnknownAdvisor::Unknown(other.to_string())),
    })
}

/// An advisor for a running VM, and how to read what it did once the VM has ended.
pub struct LiveAdvisor {
    pub advisor: Box<dyn Advisor>,
    /// Learning counters and detected pattern changes (`gru` only), as JSON for the
    /// metrics file; callable from any thread, during or after the run.
    pub report: Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

/// Builds the advisor called `name` for a live VM. Unlike [`make_advisor`] (replays,
/// which must be repeatable), `gru` learns in a background thread at nice 19 within a
/// CPU budget, so the fault path never waits for a training step.
pub fn make_live_advisor(name: &str, ctx: &ReplayContext) -> Result<LiveAdvisor, UnknownAdvisor> {
    if name == "gru" {
        return make_live_gru(ctx);
    }
    Ok(LiveAdvisor {
        advisor: make_advisor(name, ctx)?,
        report: None,
    })
}

#[cfg(not(feature = "gru"))]
fn make_live_gru(_ctx: &ReplayContext) -> Result<LiveAdvisor, UnknownAdvisor> {
    Err(UnknownAdvisor::NotBuilt("gru".into()))
}

#[cfg(feature = "gru")]
fn make_live_gru(ctx: &ReplayContext) -> Result<LiveAdvisor, UnknownAdvisor> {
    let mut opts = crate::gru::GruOptions::from_env();
    opts.online.mode = crate::gru::online::OnlineMode::Background;
    let gru = load_gru(ctx, opts)?;
    let (live, handle) = crate::live::LiveGru::new(gru);
    Ok(LiveAdvisor {
        advisor: Box::new(live),
        report: Some(Box::new(move || {
            serde_json::to_value(handle.report()).unwrap_or(serde_json::Value::Null)
        })),
    })
}

#[cfg(feature = "gru")]
fn load_gru(
    ctx: &ReplayContext,
    opts: crate::gru::GruOptions,
) -> Result<crate::gru::GruAdvisor, UnknownAdvisor> {
    let path = ctx
        .model
        .clone()
        .unwrap_or_else(crate::gru::base_model_path);
    let failed = |reason: String| UnknownAdvisor::Failed {
        name: "gru".into(),
        reason,
    };
    let with_prior = opts.first_touch_prior;
    let mut gru =
        crate::gru::GruAdvisor::from_file(&path, opts).map_err(|e| failed(e.to_string()))?;
    if let Some(saver) = &ctx.save_model {
        gru.save_at_end(saver.clone());
    }
    if with_prior {
        let prior = crate::gru::prior::FirstTouchPrior::load(&crate::gru::prior::base_prior_path())
            .map_err(|e| failed(e.to_string()))?;
        gru.set_first_touch_prior(std::sync::Arc::new(prior));
    }
    Ok(gru)
}

#[cfg(not(feature = "gru"))]
fn make_gru(_ctx: &ReplayContext) -> Result<Box<dyn Advisor>, UnknownAdvisor> {
    Err(UnknownAdvisor::NotBuilt("gru".into()))
}

#[cfg(feature = "gru")]
fn make_gru(ctx: &ReplayContext) -> Result<Box<dyn Advisor>, UnknownAdvisor> {
    // The shipped base model (or the one named), plus online learning on the trace as
    // it replays, inline so that a replay is repeatable.
    load_gru(ctx, crate::gru::GruOptions::from_env()).map(|a| Box::new(a) as Box<dyn Advisor>)
}
