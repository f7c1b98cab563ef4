//! The GRU access predictor: per-block features over windows, a GRU on burn that
//! steps each tracked block's hidden state once per window, offline and online
//! training, pattern-change detection, and the `gru` advisor built from them.
//! Design and measurements: docs/predictor.md.

pub mod advisor;
pub mod anomaly;
pub mod backprop;
pub mod cell;
pub mod collect;
pub mod features;
pub mod model;
pub mod online;
mod outcomes;
mod pageset;
pub mod prior;
pub mod scorer;
pub mod synth;
pub mod train;

pub use advisor::{GruAdvisor, GruOptions};
pub use cell::{CellError, GruCell, GruWeights, Isa};
pub use model::{AccessModel, ModelFileError, ModelMeta};

/// Where the project's base model lives in the source tree (`make model` writes it).
pub const BASE_MODEL_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../resources/models/gru-base.bpk"
);

/// Environment variable that overrides [`BASE_MODEL_PATH`].
pub const MODEL_ENV: &str = "TIERVISOR_GRU_MODEL";

/// The base model file to use: `$TIERVISOR_GRU_MODEL` or the shipped one.
pub fn base_model_path() -> std::path::PathBuf {
    std::env::var_os(MODEL_ENV).map_or_else(|| BASE_MODEL_PATH.into(), Into::into)
}

#[cfg(test)]
mod test_rng;
#[cfg(test)]
mod tests;
