//! `tiervisor train-prior`: learn the first-touch prior (`predictor::gru::prior`)
//! from traces and write its file.

use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  The shipped prior, as `make prior` learns it:
    tiervisor train-prior --trace resources/out/traces/train/*.tvt \\
        -o resources/models/first-touch-prior.json
  Replay with another prior (gru follows the shipped one by default):
    TIERVISOR_GRU_PRIOR=my-prior.json tiervisor replay --trace prog.tvt --advisor gru

Exit status: 0; 2 for bad input (unreadable trace, bad option values, an output
path that cannot be written).";

/// Arguments of `tiervisor train-prior`.
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct TrainPriorArgs {
    /// Trace files to learn from (each gives one first-touch sequence).
    #[arg(long, num_args = 1.., required = true)]
    pub trace: Vec<PathBuf>,
    /// Prior file to write (.json).
    #[arg(short = 'o', long = "output", required = true)]
    pub output: PathBuf,
    /// Distinct traces that must show a transition before it is kept.
    #[arg(long, default_value_t = 2)]
    pub min_traces: usize,
    /// Share of a context's occurrences its most common next delta must have.
    #[arg(long, default_value_t = 0.6)]
    pub min_share: f64,
}

#[cfg(not(feature = "gru"))]
pub fn run(_args: TrainPriorArgs) -> i32 {
    super::usage_error("train-prior: this tiervisor was built without the `gru` feature")
}

#[cfg(feature = "gru")]
pub fn run(args: TrainPriorArgs) -> i32 {
    match train_prior(&args) {
        Ok(()) => 0,
        Err(msg) => super::usage_error(format!("train-prior: {msg}")),
    }
}

#[cfg(feature = "gru")]
fn train_prior(args: &TrainPriorArgs) -> Result<(), String> {
    use predictor::gru::prior::{first_touches, FirstTouchPrior, PriorConfig};

    if args.min_traces == 0 {
        return Err("--min-traces must be positive".into());
    }
    if !(args.min_share > 0.0 && args.min_share <= 1.0) {
        return Err(format!("--min-share {} must be in (0, 1]", args.min_share));
    }
    if let Some(why) = super::unwritable_output(&args.output) {
        return Err(format!("cannot write {}: {why}", args.output.display()));
    }
    let mut sequences = Vec::with_capacity(args.trace.len());
    let mut names = Vec::with_capacity(args.trace.len());
    for path in &args.trace {
        let seq = first_touches(path).map_err(|e| e.to_string())?;
        eprintln!(
            "train-prior: {}: {} first touches",
            path.display(),
            seq.len()
        );
        names.push(path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ));
        sequences.push(seq);
    }
    let cfg = PriorConfig {
        min_traces: args.min_traces,
        min_share: args.min_share,
    };
    let prior = FirstTouchPrior::learn(&sequences, cfg);
    let from = format!(
        "{} (--min-traces {} --min-share {})",
        names.join(" "),
        args.min_traces,
        args.min_share
    );
    prior.save(&args.output, &from).map_err(|e| e.to_string())?;
    eprintln!(
        "train-prior: {} transitions -> {}",
        prior.len(),
        args.output.display()
    );
    Ok(())
}
