//! Training: BCE on (feature sequence, outcome) samples, shared by `tiervisor train`
//! (offline, many traces) and the online learner (one VM's recent windows). The step
//! itself is hand-written ([`super::backprop`]); burn's autodiff version is kept as
//! [`BurnTrainer`], the reference it is tested against.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

use super::backprop::BpttTrainer;
use super::cell::{CellError, GruWeights};
use super::features::{FeatureConfig, FeatureExtractor, Sample, WindowBatch, NUM_FEATURES};
use super::model::{to_vec, AccessModel};
use tiering::access::Access;

/// Learning-rate and batch settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub batch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 3e-3,
            batch: 128,
        }
    }
}

/// The model being trained, with its optimiser state: the hand-written forward,
/// backward and Adam step of [`BpttTrainer`] (which computes what [`BurnTrainer`],
/// burn's autodiff and Adam, computes, several times faster), and the model it
/// started from, to hand the trained weights back as an [`AccessModel`].
pub struct Trainer {
    net: BpttTrainer,
    /// The starting model (plain device): the architecture and parameter ids that
    /// [`Trainer::inference_model`] fills with the trained weights.
    template: AccessModel,
    pub cfg: TrainConfig,
    pub steps: u64,
}

impl Trainer {
    /// Continue training `model` (any device).
    ///
    /// # Panics
    /// If the model's GRU is not the one the hand-written step implements (burn's
    /// default GRU with a one-logit head). `AccessModel` only builds that, and the
    /// unit tests compare the step with burn on it; [`Trainer::try_new`] returns
    /// the reason instead.
    pub fn new(model: &AccessModel, cfg: TrainConfig) -> Self {
        Self::try_new(model, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Trainer::new`], or why the model's architecture is not supported.
    pub fn try_new(model: &AccessModel, cfg: TrainConfig) -> Result<Self, CellError> {
        let template = model.valid().fork(&Device::flex());
        Ok(Trainer {
            net: BpttTrainer::new(&template.export_weights()?)?,
            template,
            cfg,
            steps: 0,
        })
    }

    /// One optimiser step on `batch` (samples of equal length) at `cfg.lr *
    /// lr_scale`; returns the batch's mean loss before the step.
    pub fn step(&mut self, batch: &[&Sample], lr_scale: f64) -> f32 {
        if batch.is_empty() {
            return 0.0;
        }
        let loss = self
            .net
            .step_samples(batch, (self.cfg.lr * lr_scale) as f32);
        self.steps += 1;
        loss
    }

    /// The current weights as plain arrays (what [`Trainer::inference_model`] holds).
    pub fn weights(&self) -> GruWeights {
        self.net.weights()
    }

    /// A plain (no autodiff) model with the current weights, for inference.
    pub fn inference_model(&self) -> AccessModel {
        self.template
            .with_weights(&self.net.weights())
            .unwrap_or_else(|e| panic!("trained weights do not fit their own model: {e}"))
    }
}

/// The training step on burn: autodiff through `AccessModel::forward_seq` and
/// [`bce_with_logits`], then burn's Adam. What [`Trainer`] used before the
/// hand-written step; kept as its reference in the tests and cost measurements.
pub struct BurnTrainer {
    model: AccessModel,
    optim: ModuleOptimizer,
    device: Device,
    pub cfg: TrainConfig,
    pub steps: u64,
}

impl BurnTrainer {
    /// Continue training `model` (any device) on an autodiff flex device.
    pub fn new(model: &AccessModel, cfg: TrainConfig) -> Self {
        let device = Device::flex().autodiff();
        BurnTrainer {
            model: model.clone().fork(&device).train(),
            optim: AdamConfig::new().init(),
            device,
            cfg,
            steps: 0,
        }
    }

    /// One optimiser step on `batch`; returns the batch's mean loss.
    pub fn step(&mut self, batch: &[&Sample], lr_scale: f64) -> f32 {
        if batch.is_empty() {
            return 0.0;
        }
        let (x, y) = batch_tensors(batch, &self.device);
        let loss = bce_with_logits(self.model.forward_seq(x), y);
        let value = to_vec(loss.clone()).first().copied().unwrap_or(f32::NAN);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.model = self
            .optim
            .step(self.cfg.lr * lr_scale, self.model.clone(), grads);
        self.steps += 1;
        value
    }

    /// A plain (no autodiff) copy of the current weights for inference.
    pub fn inference_model(&self) -> AccessModel {
        self.model.valid()
    }
}

/// Features `[b, l, F]` and labels `[b, l]` of a batch.
pub fn batch_tensors(batch: &[&Sample], device: &Device) -> (Tensor<3>, Tensor<2>) {
    let l = batch[0].features.len();
    let mut xs = Vec::with_capacity(batch.len() * l * NUM_FEATURES);
    let mut ys = Vec::with_capacity(batch.len() * l);
    for s in batch {
        for f in &s.features {
            xs.extend_from_slice(f);
        }
        ys.extend_from_slice(&s.labels);
    }
    let x = Tensor::from_data(TensorData::new(xs, [batch.len(), l, NUM_FEATURES]), device);
    let y = Tensor::from_data(TensorData::new(ys, [batch.len(), l]), device);
    (x, y)
}

/// Mean binary cross-entropy of logits `z` against labels `y`, in the stable form
/// `max(z, 0) - z*y + ln(1 + exp(-|z|))`.
pub fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let pos = z.clone().clamp_min(0.0);
    let soft = z.clone().abs().neg().exp().add_scalar(1.0).log();
    (pos - z * y + soft).mean()
}

/// Held-out quality of a model on samples (prediction at each sample's last step).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalStats {
    pub loss: f32,
    pub precision: f32,
    pub recall: f32,
    pub auc: f32,
    pub positives: usize,
    pub samples: usize,
}

/// Evaluate `model` on `samples` at probability `threshold`.
pub fn evaluate(model: &AccessModel, samples: &[Sample], threshold: f32) -> EvalStats {
    let device = Device::flex();
    let mut scored: Vec<(f64, bool)> = Vec::with_capacity(samples.len());
    let mut loss_sum = 0.0f64;
    for chunk in samples.chunks(512) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let (x, _) = batch_tensors(&refs, &device);
        let l = chunk[0].features.len();
        let logits = to_vec(model.forward_seq(x));
        for (i, s) in chunk.iter().enumerate() {
            let z = logits[i * l + l - 1];
            let y = s.labels[l - 1];
            let p = 1.0 / (1.0 + (-z).exp());
            loss_sum += f64::from(z.max(0.0) - z * y + (1.0 + (-z.abs()).exp()).ln());
            scored.push((f64::from(p), y > 0.5));
        }
    }
    let n = scored.len();
    let positives = scored.iter().filter(|s| s.1).count();
    // The scores are f32 probabilities held exactly in f64, so the comparison is unchanged.
    let threshold = f64::from(threshold);
    let tp = scored.iter().filter(|s| s.1 && s.0 >= threshold).count();
    let predicted = scored.iter().filter(|s| s.0 >= threshold).count();
    EvalStats {
        loss: if n == 0 {
            0.0
        } else {
            (loss_sum / n as f64) as f32
        },
        precision: if predicted == 0 {
            0.0
        } else {
            tp as f32 / predicted as f32
        },
        recall: if positives == 0 {
            0.0
        } else {
            tp as f32 / positives as f32
        },
        auc: auc(&mut scored) as f32,
        positives,
        samples: n,
    }
}

/// Area under the ROC curve of (score, positive) pairs by the rank-sum formula (ties
/// count half); 0.5 when one class is missing.
pub fn auc(scored: &mut [(f64, bool)]) -> f64 {
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0.0f64, 0usize, 0usize);
    while i < scored.len() {
        // The group holds scored[i] itself even when it is NaN (NaN != NaN): a model
        // with NaN weights once hung `tiervisor train` here.
        let mut j = i + 1;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0; // average 1-based rank of the tie group
        for s in &scored[i..j] {
            if s.1 {
                rank_sum += mid;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Run the feature extractor over `accesses` with a window every `window_accesses`
/// accesses and collect up to `per_window` samples per window.
pub fn samples_from_accesses<I: IntoIterator<Item = Access>>(
    accesses: I,
    cfg: FeatureConfig,
    window_accesses: u64,
    per_window: usize,
    out: &mut Vec<Sample>,
) {
    let mut fx = FeatureExtractor::new(cfg);
    let mut batch = WindowBatch::default();
    for a in accesses {
        fx.on_access(&a);
        if fx.window_accesses() >= window_accesses {
            fx.end_window(&mut batch, out, per_window);
        }
    }
}

#[cfg(test)]
mod auc_tests {
    use super::auc;

    #[test]
    fn auc_of_perfect_reversed_and_tied_scores() {
        let mut s = vec![(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        assert_eq!(auc(&mut s), 1.0);
        let mut s = vec![(0.9, false), (0.1, true)];
        assert_eq!(auc(&mut s), 0.0);
        let mut s = vec![(0.5, false), (0.5, true)];
        assert_eq!(auc(&mut s), 0.5);
    }

    #[test]
    fn auc_of_nan_scores_ends() {
        // NaN sorts last and ranks above every number: here, like a perfect score.
        let mut s = vec![(f64::NAN, true), (0.2, false), (f64::NAN, true)];
        assert_eq!(auc(&mut s), 1.0);
    }
}
