//! The access model (GRU -> linear -> sigmoid) and its model file.
//!
//! A model file is `MAGIC`, a little-endian u32 header length, a JSON [`ModelMeta`]
//! header, then the weights as a burnpack record (burn's `.bpk` format). The header is
//! checked before any weight is read, so a file for another feature set, block size or
//! hidden size is refused with a message that says which.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Gru, GruConfig, Linear, LinearConfig};
use burn::store::ModuleRecord;
use burn::tensor::{activation, Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::features::{FeatureConfig, FEATURE_SET, NUM_FEATURES};

/// First bytes of every model file.
pub const MAGIC: &[u8; 8] = b"TVGRU\0\0\x01";
/// Bumped whenever the file layout or the model's architecture changes.
pub const FORMAT_VERSION: u32 = 1;

/// What a model file says about the model it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    pub feature_set: String,
    pub num_features: usize,
    pub hidden: usize,
    pub block_shift: u32,
    pub horizon: usize,
    pub seq_len: usize,
    /// Window length (modelled ns) the features were computed over.
    pub window_ns: u64,
    /// Free text: what it was trained on, and the validation result.
    pub trained_on: String,
}

impl ModelMeta {
    /// Metadata for a fresh model with this feature configuration.
    pub fn new(cfg: &FeatureConfig, hidden: usize, window_ns: u64) -> Self {
        ModelMeta {
            format_version: FORMAT_VERSION,
            feature_set: FEATURE_SET.to_string(),
            num_features: NUM_FEATURES,
            hidden,
            block_shift: cfg.block_shift,
            horizon: cfg.horizon,
            seq_len: cfg.seq_len,
            window_ns,
            trained_on: String::new(),
        }
    }

    /// The feature configuration the model was trained with.
    pub fn feature_config(&self) -> FeatureConfig {
        FeatureConfig {
            block_shift: self.block_shift,
            horizon: self.horizon,
            seq_len: self.seq_len,
            ..FeatureConfig::default()
        }
    }
}

/// Why a model file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not a tiervisor GRU model (bad magic); train one with `tiervisor train`")]
    NotAModel { path: PathBuf },
    #[error("model file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("model file {path} has format version {found}, this tiervisor reads version {FORMAT_VERSION}; retrain it with `tiervisor train`")]
    Version { path: PathBuf, found: u32 },
    #[error("model file {path} was trained for feature set {found} ({found_n} features), this tiervisor computes {FEATURE_SET} ({NUM_FEATURES}); retrain it with `tiervisor train`")]
    FeatureSet {
        path: PathBuf,
        found: String,
        found_n: usize,
    },
    #[error("model file {path}: cannot serialise weights: {reason}")]
    Encode { path: PathBuf, reason: String },
}

/// GRU over per-block feature vectors, then a linear layer to one logit.
#[derive(Module, Debug)]
pub struct AccessModel {
    gru: Gru,
    head: Linear,
}

/// The backend's random generator is process-wide: every initialisation draws from it
/// under this lock, so a seeded one ([`AccessModel::new_cpu_seeded`]) is not
/// interleaved with another thread's draws and gives the same weights every time.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn init_lock() -> std::sync::MutexGuard<'static, ()> {
    INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessModel {
    /// Random initial weights; the caller holds [`init_lock`].
    fn init(d_input: usize, hidden: usize, device: &Device) -> Self {
        AccessModel {
            gru: GruConfig::new(d_input, hidden, true).init(device),
            head: LinearConfig::new(hidden, 1).init(device),
        }
    }

    /// A freshly initialised model.
    pub fn new(hidden: usize, device: &Device) -> Self {
        let _lock = init_lock();
        Self::init(NUM_FEATURES, hidden, device)
    }

    /// A freshly initialised model over `d_input` features instead of the feature
    /// set's [`NUM_FEATURES`] (inference-cell tests and cost measurements of other
    /// shapes; such a model cannot be saved as a model file for this feature set).
    pub fn with_input(d_input: usize, hidden: usize, device: &Device) -> Self {
        let _lock = init_lock();
        Self::init(d_input, hidden, device)
    }

    /// The weights as plain arrays, for the hand-written inference cell
    /// ([`super::cell::GruCell`]).
    pub fn export_weights(&self) -> Result<super::cell::GruWeights, super::cell::CellError> {
        super::cell::GruWeights::from_burn(&self.gru, &self.head)
    }

    /// This model (same architecture, device and parameter ids) with its weights
    /// replaced by `w`: the inverse of [`AccessModel::export_weights`]. How the
    /// hand-written trainer hands its weights back as a model.
    pub fn with_weights(
        &self,
        w: &super::cell::GruWeights,
    ) -> Result<AccessModel, super::cell::CellError> {
        let mut model = self.clone();
        w.write_burn(&mut model.gru, &mut model.head)?;
        Ok(model)
    }

    /// This model with the GRU's hidden state clamped to `[-clip, clip]` after each
    /// step (burn's `GruConfig::clip`): tests of the clipped path only, as the model
    /// file does not record it.
    #[cfg(test)]
    pub(crate) fn with_clip(mut self, clip: f64) -> AccessModel {
        self.gru.clip = Some(clip);
        self
    }

    /// A fresh model on the CPU (flex) device.
    pub fn new_cpu(hidden: usize) -> Self {
        Self::new(hidden, &Device::flex())
    }

    /// A fresh model on the CPU (flex) device whose initial weights come from `seed`,
    /// so the same seed and samples train the same model, whatever other threads
    /// initialise meanwhile. (The backend's generator is process-wide: this also
    /// reseeds later random draws on the device.)
    pub fn new_cpu_seeded(hidden: usize, seed: u64) -> Self {
        let _lock = init_lock();
        let device = Device::flex();
        device.seed(seed);
        Self::init(NUM_FEATURES, hidden, &device)
    }

    /// Load a model file onto the CPU (flex) device.
    pub fn load_cpu(path: &Path) -> Result<(AccessModel, ModelMeta), ModelFileError> {
        Self::load(path, &Device::flex())
    }

    /// Hidden state size.
    pub fn hidden(&self) -> usize {
        self.gru.d_hidden
    }

    /// Logits for every step of `x` `[batch, seq, features]`, starting from zero state.
    pub fn forward_seq(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, l, _] = x.shape().dims();
        let h = self.gru.forward(x, None);
        self.head.forward(h).reshape([b, l])
    }

    /// One window step for `n` blocks: features `[n, F]`, states `[n, H]` ->
    /// (new states `[n, H]`, probabilities `[n]`).
    pub fn step(&self, x: Tensor<2>, h: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let [n, f] = x.shape().dims();
        let hidden = self.hidden();
        let out = self
            .gru
            .forward(x.reshape([n, 1, f]), Some(h))
            .reshape([n, hidden]);
        let p = activation::sigmoid(self.head.forward(out.clone())).reshape([n]);
        (out, p)
    }

    /// Save with its metadata header.
    pub fn save(&self, meta: &ModelMeta, path: &Path) -> Result<(), ModelFileError> {
        let header = serde_json::to_vec(meta).map_err(|e| ModelFileError::Encode {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let weights =
            self.clone()
                .into_record()
                .into_bytes()
                .map_err(|e| ModelFileError::Encode {
                    path: path.into(),
                    reason: format!("{e:?}"),
                })?;
        let mut buf = Vec::with_capacity(MAGIC.len() + 4 + header.len() + weights.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(
            &u32::try_from(header.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&weights);
        // Write then rename, so a reader never sees half a model.
        let tmp = path.with_extension("bpk.tmp");
        std::fs::write(&tmp, &buf).map_err(|source| ModelFileError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| ModelFileError::Io {
            path: path.into(),
            source,
        })
    }

    /// Load a model file onto `device`, checking the header first.
    pub fn load(path: &Path, device: &Device) -> Result<(AccessModel, ModelMeta), ModelFileError> {
        let buf = std::fs::read(path).map_err(|source| ModelFileError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&buf, path, device)
    }

    /// Parse a model file already in memory (`path` names it in errors).
    pub fn from_bytes(
        buf: &[u8],
        path: &Path,
        device: &Device,
    ) -> Result<(AccessModel, ModelMeta), ModelFileError> {
        let corrupt = |reason: String| ModelFileError::Corrupt {
            path: path.into(),
            reason,
        };
        if buf.len() < MAGIC.len() || buf[..MAGIC.len() - 1] != MAGIC[..MAGIC.len() - 1] {
            return Err(ModelFileError::NotAModel { path: path.into() });
        }
        let rest = &buf[MAGIC.len()..];
        if rest.len() < 4 {
            return Err(corrupt("truncated header".into()));
        }
        let hlen = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(header) = rest.get(4..4 + hlen) else {
            return Err(corrupt(format!(
                "header of {hlen} bytes runs past the end of the file"
            )));
        };
        let meta: ModelMeta =
            serde_json::from_slice(header).map_err(|e| corrupt(format!("header: {e}")))?;
        if meta.format_version != FORMAT_VERSION || buf[MAGIC.len() - 1] != MAGIC[MAGIC.len() - 1] {
            return Err(ModelFileError::Version {
                path: path.into(),
                found: meta.format_version,
            });
        }
        if meta.feature_set != FEATURE_SET || meta.num_features != NUM_FEATURES {
            return Err(ModelFileError::FeatureSet {
                path: path.into(),
                found: meta.feature_set,
                found_n: meta.num_features,
            });
        }
        if meta.hidden == 0
            || meta.hidden > 1024
            || meta.block_shift > 6
            || meta.horizon == 0
            || meta.seq_len == 0
        {
            return Err(corrupt(format!("implausible header values {meta:?}")));
        }
        let weights = Bytes::from_bytes_vec(rest[4 + hlen..].to_vec());
        let record =
            ModuleRecord::from_bytes(weights).map_err(|e| corrupt(format!("weights: {e:?}")))?;
        let model = AccessModel::new(meta.hidden, device)
            .try_load_record(record)
            .map_err(|e| {
                corrupt(format!(
                    "weights do not fit a {}-unit model: {e:?}",
                    meta.hidden
                ))
            })?;
        Ok((model, meta))
    }
}

/// Build a `[rows, cols]` tensor from row-major data.
pub fn tensor2(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// Copy a tensor's values out.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap_or_default()
}
