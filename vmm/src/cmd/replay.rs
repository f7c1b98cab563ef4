//! `tiervisor replay`: replay a trace through simulated tiered memory with each
//! advisor and compare them (predictor::replay; docs/replay.md).

use std::path::PathBuf;

use predictor::replay::{
    format_table, replay_all_saving, LatencyModel, ReplayConfig, TraceInput, Visibility,
};
use predictor::saved_model::ModelSaver;
use tiering::policy::PolicyConfig;

const REPLAY_EXAMPLES: &str = "\
Examples:
  Compare the baselines on a trace at 25% RAM (a table):
    tiervisor replay --trace resources/out/traces/eval/gzip.tvt
  The GRU advisor against leap and the oracle, as JSON:
    tiervisor replay --trace prog.tvt --advisor gru,leap,oracle --json
  Little fast room: the tiers of a tier file set the latencies and capacities:
    tiervisor replay --trace prog.tvt --advisor gru,leap \\
        --tiers resources/tiers/bench-constrained.toml
  gru's model as online learning leaves it after this trace, then a replay from it:
    tiervisor replay --trace prog.tvt --advisor gru --save-model tuned.bpk
    tiervisor replay --trace prog.tvt --advisor gru --model tuned.bpk

Exit status: 0; 1 if stdout or the --save-model file cannot be written; 2 for bad
input (unreadable trace, unknown advisor, bad model file).";

#[derive(clap::Args)]
#[command(after_help = REPLAY_EXAMPLES)]
pub struct ReplayArgs {
    /// Trace file to replay.
    #[arg(long)]
    pub trace: PathBuf,
    /// RAM budget as a fraction of the trace's distinct pages, in (0, 1].
    #[arg(long, default_value_t = 0.25)]
    pub ram_fraction: f64,
    /// Advisors to compare, comma-separated: gru, leap, stride, lru, lfu, arc, lirs, none, reap, oracle, belady (MIN eviction without prefetch), prefetch-oracle (perfect prefetch over LRU eviction), workingset.
    #[arg(long, default_value = "leap,stride,lru,lfu,none,oracle")]
    pub advisor: String,
    /// Tier file (TOML, as for `run --tiers`): device profiles set the tier latencies.
    #[arg(long)]
    pub tiers: Option<PathBuf>,
    /// What advisors see: `sampled:N` (faults plus about N zapped resident pages per
    /// window, as a live VM) or `full` (every access). The oracle always sees all.
    #[arg(long, default_value = "sampled:4")]
    pub visibility: Visibility,
    /// Under sampled visibility, resident pages per window an advisor may ask to
    /// watch besides the random ones (`workingset` and `gru` probe the pages next to
    /// be evicted, while short refaults are frequent); a touched probe costs a minor
    /// fault like a sample. 0: none.
    #[arg(long, default_value_t = predictor::replay::DEFAULT_PROBE_PAGES)]
    pub probe_pages: u32,
    /// Under sampled visibility, show advisors the pages written since the last
    /// dirty-log harvest every N windows (each first write after a harvest costs a
    /// 2 us write-protect fault). 0: the dirty log is not an access signal, as in
    /// the live VMM.
    #[arg(long, default_value_t = 0)]
    pub dirty_harvest: u32,
    /// Monitoring window in microseconds of simulated time (at least 1).
    #[arg(long, default_value_t = 1000)]
    pub window_us: u64,
    /// Prefetches per window.
    #[arg(long, default_value_t = 64)]
    pub prefetch_per_window: usize,
    /// Prefetches after each fault and each first use of a prefetched page.
    #[arg(long, default_value_t = 8)]
    pub max_prefetch_per_fault: usize,
    /// Tier (2-5) holding pages before their first touch; default: they do not exist
    /// yet and a first touch is zero-filled.
    #[arg(long)]
    pub initial_tier: Option<u8>,
    /// Nanoseconds per instruction for traces clocked in instructions (lackey).
    #[arg(long, default_value_t = 0.4)]
    pub ns_per_instruction: f64,
    /// Modelled cost of an access that hits RAM, in ns (0: the trace clock already
    /// holds it).
    #[arg(long, default_value_t = 0)]
    pub hit_ns: u64,
    /// Model file for learned advisors (gru).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write gru's model, as online learning left it at the end of the trace, here
    /// (what `run --save-model` keeps of a VM; docs/predictor.md, "Per-VM models
    /// across runs").
    #[arg(long, value_name = "FILE.bpk")]
    pub save_model: Option<PathBuf>,
    /// Print one JSON object per advisor (an array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReplayArgs) -> i32 {
    let names: Vec<String> = args
        .advisor
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return super::usage_error("replay: --advisor names no advisor");
    }
    if args.dirty_harvest > 0 && args.visibility == Visibility::Full {
        return super::usage_error(
            "replay: --dirty-harvest shows written pages to advisors that see only samples; with --visibility full they see every access already",
        );
    }
    if args.window_us == 0 {
        return super::usage_error("replay: --window-us must be at least 1");
    }
    if let Some(path) = &args.save_model {
        if !names.iter().any(|n| n == "gru") {
            return super::usage_error(
                "replay: --save-model saves gru's model: add gru to --advisor",
            );
        }
        if let Some(why) = super::unwritable_output(path) {
            return super::usage_error(format!(
                "replay: cannot write model {}: {why}",
                path.display()
            ));
        }
    }
    if !(args.ns_per_instruction > 0.0 && args.ns_per_instruction.is_finite()) {
        return super::usage_error("replay: --ns-per-instruction must be a positive number");
    }
    let mut latency = LatencyModel {
        hit_ns: args.hit_ns,
        ..LatencyModel::default()
    };
    let mut capacity = [u64::MAX; tiering::policy::TIER_COUNT];
    let mut storage_order = tiering::policy::StorageOrder::default();
    if let Some(path) = &args.tiers {
        match tiering::config::TierConfig::load(path) {
            Ok(file) => {
                storage_order = file.order;
                (latency, capacity) = latency.with_tier_file(&file, tiering::access::PAGE_SIZE)
            }
            Err(e) => return super::usage_error(format!("replay: {e}")),
        }
    }
    let window_ns = args.window_us.saturating_mul(1000);
    let config = ReplayConfig {
        ram_fraction: args.ram_fraction,
        policy: PolicyConfig {
            window_ns,
            // The live engine's rate per second of guest time, whatever the window.
            retier_per_window: PolicyConfig::retier_for_window(window_ns),
            prefetch_per_window: args.prefetch_per_window,
            max_prefetch_per_fault: args.max_prefetch_per_fault,
            initial_tier: args.initial_tier,
            tier_capacity_pages: capacity,
            storage_order,
            ..PolicyConfig::default()
        },
        latency,
        visibility: args.visibility,
        probe_pages: args.probe_pages,
        ns_per_instruction: args.ns_per_instruction,
        dirty_harvest_windows: args.dirty_harvest,
    };
    let input = TraceInput::File(args.trace.clone());
    let saver = args.save_model.clone().map(ModelSaver::new);
    let reports = match replay_all_saving(&input, &names, &config, args.model, saver.clone()) {
        Ok(r) => r,
        Err(e) => return super::usage_error(format!("replay: {e}")),
    };
    // gru's replay has ended, so its advisor has saved.
    let mut status = 0;
    match saver.as_ref().map(ModelSaver::result) {
        None => {}
        Some(Ok(saved)) => eprintln!(
            "tiervisor: replay: saved gru's model to {} ({} weight updates from online learning)",
            saved.path, saved.weight_updates
        ),
        Some(Err(e)) => {
            eprintln!("tiervisor: replay: --save-model: {e}");
            status = 1;
        }
    }
    let text = if args.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => s + "\n",
            Err(e) => return super::usage_error(format!("replay: cannot print JSON: {e}")),
        }
    } else {
        format_table(&reports)
    };
    match super::print_stdout(&text) {
        Ok(()) => status,
        Err(e) => {
            eprintln!("tiervisor: replay: {e}");
            1
        }
    }
}
