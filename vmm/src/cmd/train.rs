//! `tiervisor train`: fit the GRU access model to traces and write a model file.
//!
//! Samples (a block's features over `seq_len` windows and whether it was touched in
//! the following `horizon` windows) are gathered by replaying each trace through the
//! project's simulator with the GRU advisor deciding, so windows and visibility are
//! those the advisor meets in `tiervisor replay` and in a live VM. The last
//! `--val-split` of every replay (in time) is held out, so the validation figures
//! measure prediction of the future, not of shuffled neighbours.

use std::path::PathBuf;

#[cfg(feature = "gru")]
use predictor::gru::{
    collect::collect_from_file,
    features::{FeatureConfig, Sample},
    model::{AccessModel, ModelMeta},
    train::{evaluate, EvalStats, TrainConfig, Trainer},
};
#[cfg(feature = "gru")]
use predictor::replay::{ReplayConfig, Visibility};

const TRAIN_EXAMPLES: &str = "\
Examples:
  The shipped base model, as `make model` trains it:
    tiervisor train --trace resources/out/traces/train/*.tvt \\
        -o resources/models/gru-base.bpk --epochs 4 --ram-fractions 0.25 \\
        --visibility sampled:4 --hidden 16
  Then replay with it:
    tiervisor replay --trace prog.tvt --advisor gru --model resources/models/gru-base.bpk

Exit status: 0; 2 for bad input (unreadable trace, bad option values, a model
path that cannot be written, checked before training starts).";

/// Arguments of `tiervisor train`.
#[derive(clap::Args)]
#[command(after_help = TRAIN_EXAMPLES)]
pub struct TrainArgs {
    /// Trace files to learn from.
    #[arg(long, num_args = 1.., required = true)]
    pub trace: Vec<PathBuf>,
    /// Model file to write (.bpk).
    #[arg(short = 'o', long = "output", required = true)]
    pub output: PathBuf,
    /// Passes over the training samples.
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Fraction of each replay (its end, in time) held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_split: f64,
    /// GRU hidden units.
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Pages per block (power of two, 1..=64).
    #[arg(long, default_value_t = 4)]
    pub block_pages: u64,
    /// Target horizon in windows.
    #[arg(long, default_value_t = 2)]
    pub horizon: usize,
    /// Windows per training sequence.
    #[arg(long, default_value_t = 8)]
    pub seq_len: usize,
    /// RAM budgets (fractions of each trace's pages) the traces are replayed at.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.25, 0.5])]
    pub ram_fractions: Vec<f64>,
    /// What the advisor sees while collecting: full, sampled:N (comma list).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["sampled:4".to_string(), "full".to_string()])]
    pub visibility: Vec<String>,
    /// Training samples taken per window.
    #[arg(long, default_value_t = 48)]
    pub samples_per_window: usize,
    /// Cap on training samples over all traces (evenly thinned beyond it).
    #[arg(long, default_value_t = 60_000)]
    pub max_samples: usize,
    /// Learning rate (positive).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Samples per training batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Probability threshold for the reported precision/recall (the prefetch threshold).
    #[arg(long, default_value_t = 0.9)]
    pub threshold: f32,
    /// Start from this model instead of fresh weights (fine-tuning).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Seed of the fresh weights: the same seed, traces and options train the same
    /// weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[cfg(not(feature = "gru"))]
pub fn run(_args: TrainArgs) -> i32 {
    super::usage_error("train: this tiervisor was built without the `gru` feature")
}

#[cfg(feature = "gru")]
pub fn run(args: TrainArgs) -> i32 {
    match train(&args) {
        Ok(()) => 0,
        Err(msg) => super::usage_error(format!("train: {msg}")),
    }
}

#[cfg(feature = "gru")]
fn replay_configs(args: &TrainArgs) -> Result<Vec<ReplayConfig>, String> {
    let mut configs = Vec::new();
    for v in &args.visibility {
        let visibility: Visibility = v
            .parse()
            .map_err(|e: String| format!("--visibility: {e}"))?;
        for &ram_fraction in &args.ram_fractions {
            if !(ram_fraction > 0.0 && ram_fraction <= 1.0) {
                return Err(format!("--ram-fractions: {ram_fraction} is not in (0, 1]"));
            }
            configs.push(ReplayConfig {
                ram_fraction,
                visibility,
                ..ReplayConfig::default()
            });
        }
    }
    Ok(configs)
}

#[cfg(feature = "gru")]
fn train(args: &TrainArgs) -> Result<(), String> {
    use indicatif::{ProgressBar, ProgressStyle};

    if !args.block_pages.is_power_of_two() || args.block_pages > 64 {
        return Err(format!(
            "--block-pages {} must be a power of two up to 64",
            args.block_pages
        ));
    }
    if !(0.0..1.0).contains(&args.val_split) {
        return Err(format!("--val-split {} must be in [0, 1)", args.val_split));
    }
    if args.hidden == 0
        || args.horizon == 0
        || args.seq_len == 0
        || args.batch == 0
        || args.epochs == 0
    {
        return Err("--hidden, --horizon, --seq-len, --batch and --epochs must be positive".into());
    }
    if args.samples_per_window == 0 || args.max_samples == 0 {
        return Err("--samples-per-window and --max-samples must be positive".into());
    }
    // A NaN rate makes NaN weights (and once hung the validation's AUC on their scores).
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(format!("--lr {} must be a positive number", args.lr));
    }
    if !(0.0..=1.0).contains(&args.threshold) {
        return Err(format!("--threshold {} must be in [0, 1]", args.threshold));
    }
    let fcfg = FeatureConfig {
        block_shift: args.block_pages.trailing_zeros(),
        horizon: args.horizon,
        seq_len: args.seq_len,
        ..FeatureConfig::default()
    };
    let configs = replay_configs(args)?;
    check_output(&args.output)?;
    let (model, mut meta) = match &args.init {
        Some(p) => {
            let (m, meta) = AccessModel::load_cpu(p).map_err(|e| e.to_string())?;
            (m, meta)
        }
        None => (
            AccessModel::new_cpu_seeded(args.hidden, args.seed),
            ModelMeta::new(
                &fcfg,
                args.hidden,
                tiering::policy::PolicyConfig::default().window_ns,
            ),
        ),
    };
    let (mut train_set, mut val_set) = (Vec::new(), Vec::new());
    let mut names = Vec::new();
    for path in &args.trace {
        for cfg in &configs {
            let mut s: Vec<Sample> = collect_from_file(
                path,
                &model,
                &meta,
                std::slice::from_ref(cfg),
                args.samples_per_window,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            let cut = ((s.len() as f64) * (1.0 - args.val_split)) as usize;
            eprintln!(
                "{} at {} RAM, {} visibility: {} samples ({} train, {} validation)",
                path.display(),
                cfg.ram_fraction,
                cfg.visibility,
                s.len(),
                cut,
                s.len() - cut
            );
            val_set.extend(s.split_off(cut));
            train_set.extend(s);
        }
        names.push(
            path.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        );
    }
    thin(&mut train_set, args.max_samples);
    thin(&mut val_set, args.max_samples / 4);
    if train_set.len() < args.batch {
        return Err(format!(
            "only {} training samples; give longer traces",
            train_set.len()
        ));
    }
    let mut trainer = Trainer::new(
        &model,
        TrainConfig {
            lr: args.lr,
            batch: args.batch,
        },
    );
    let steps_per_epoch = train_set.len().div_ceil(args.batch);
    let bar = ProgressBar::new((steps_per_epoch * args.epochs) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} steps {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut rng = predictor::gru::synth::Rng::new(0x7e57);
    let mut last = EvalStats::default();
    for epoch in 1..=args.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut sum = 0.0f64;
        for (k, chunk) in order.chunks(args.batch).enumerate() {
            let batch: Vec<&Sample> = chunk.iter().map(|&i| &train_set[i]).collect();
            sum += f64::from(trainer.step(&batch, 1.0));
            bar.inc(1);
            bar.set_message(format!("epoch {epoch} loss {:.4}", sum / (k + 1) as f64));
        }
        last = evaluate(&trainer.inference_model(), &val_set, args.threshold);
        let line = format!(
            "epoch {epoch}: train loss {:.4}  val loss {:.4}  precision@{} {:.3}  recall {:.3}  AUC {:.3}  ({} val samples, {} positive)",
            sum / steps_per_epoch as f64,
            last.loss,
            args.threshold,
            last.precision,
            last.recall,
            last.auc,
            last.samples,
            last.positives
        );
        // Printed outside the bar, so it also reaches a log when stderr is no terminal.
        bar.suspend(|| eprintln!("{line}"));
    }
    bar.finish_and_clear();
    meta.trained_on = format!(
        "{} ({} train samples, {} epochs); validation: loss {:.4} precision@{} {:.3} recall {:.3} AUC {:.3}",
        names.join(", "),
        train_set.len(),
        args.epochs,
        last.loss,
        args.threshold,
        last.precision,
        last.recall,
        last.auc
    );
    trainer
        .inference_model()
        .save(&meta, &args.output)
        .map_err(|e| e.to_string())?;
    println!("wrote {} ({})", args.output.display(), meta.trained_on);
    Ok(())
}

/// Fails before any training if the model file could not be written at the end
/// ([`super::unwritable_output`]; then a probe with the temporary name
/// `AccessModel::save` writes first, for a directory this user cannot write).
#[cfg(feature = "gru")]
fn check_output(output: &std::path::Path) -> Result<(), String> {
    let cannot = |why: String| format!("cannot write the model file {}: {why}", output.display());
    if let Some(why) = super::unwritable_output(output) {
        return Err(cannot(why));
    }
    let probe = output.with_extension("bpk.tmp");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| cannot(e.to_string()))
}

/// Keep at most `max` samples, evenly spread over the input.
#[cfg(feature = "gru")]
fn thin(v: &mut Vec<Sample>, max: usize) {
    if v.len() <= max || max == 0 {
        return;
    }
    let step = v.len() as f64 / max as f64;
    let picked: Vec<Sample> = (0..max)
        .map(|i| v[(i as f64 * step) as usize].clone())
        .collect();
    *v = picked;
}
