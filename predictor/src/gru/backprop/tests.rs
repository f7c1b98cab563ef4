//! The hand-written training step against burn: loss and every gradient against
//! burn's autodiff, Adam steps against [`BurnTrainer`], and the trained model handed
//! back as an `AccessModel`.
//!
//! Tolerance: a value `ours` matches burn's `theirs` when
//! `|ours - theirs| <= ABS_TOL + REL_TOL * |theirs|`. The two compute the same
//! formulas in f32 with different summation orders, FMA and exp/tanh approximations
//! (the cell's ~1 ulp `exp`), so they differ in the last bits, not more.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::{BatchError, BpttTrainer};
use crate::gru::cell::{GruCell, GruWeights, Isa};
use crate::gru::features::{FeatureConfig, Sample, NUM_FEATURES};
use crate::gru::model::{to_vec, AccessModel, ModelMeta};
use crate::gru::train::{bce_with_logits, BurnTrainer, TrainConfig, Trainer};

/// Gradients and the loss: absolute part of the tolerance.
const ABS_TOL: f32 = 1e-6;
/// Relative part.
const REL_TOL: f32 = 1e-4;

use crate::gru::test_rng::Rng;

/// A model with random weights larger than burn's initial ones, so gates saturate in
/// places and every gradient is well away from zero.
fn random_model(f: usize, h: usize, rng: &mut Rng) -> AccessModel {
    scaled_model(f, h, 1.0, rng)
}

/// A model with weights uniform in `scale` times +-0.6 (biases +-0.3, head +-1).
fn scaled_model(f: usize, h: usize, scale: f32, rng: &mut Rng) -> AccessModel {
    let (w, b) = (0.6 * scale, 0.3 * scale);
    let w = GruWeights {
        d_input: f,
        d_hidden: h,
        input_weight: rng.vec(f * 3 * h, -w, w),
        input_bias: rng.vec(3 * h, -b, b),
        hidden_weight: rng.vec(h * 3 * h, -w, w),
        hidden_bias: rng.vec(3 * h, -b, b),
        head_weight: rng.vec(h, -scale, scale),
        head_bias: rng.uniform(-b, b),
        clip: None,
    };
    let model = AccessModel::with_input(f, h, &Device::flex())
        .with_weights(&w)
        .expect("same shape");
    assert_eq!(model.export_weights().expect("burn GRU"), w);
    model
}

/// Features `[batch][seq][f]` in [-1, 2] and labels mixing 0 and 1.
fn random_batch(f: usize, batch: usize, seq: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let x = rng.vec(batch * seq * f, -1.0, 2.0);
    let y = (0..batch * seq)
        .map(|_| f32::from(rng.uniform(0.0, 1.0) < 0.4))
        .collect();
    (x, y)
}

/// Replaces each parameter's value with its gradient.
struct ToGrads<'a>(&'a GradientsParams);

impl ModuleMapper for ToGrads<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let grads = self.0;
        param.map(|_| grads.get::<D>(id).expect("every parameter has a gradient"))
    }
}

/// Loss and gradients from burn's autodiff, in the exported-weights layout.
fn burn_loss_and_grads(
    model: &AccessModel,
    x: &[f32],
    y: &[f32],
    batch: usize,
    seq: usize,
) -> (f32, GruWeights) {
    let device = Device::flex().autodiff();
    let m = model.clone().fork(&device).train();
    let f = x.len() / (batch * seq);
    let xt = Tensor::from_data(TensorData::new(x.to_vec(), [batch, seq, f]), &device);
    let yt = Tensor::from_data(TensorData::new(y.to_vec(), [batch, seq]), &device);
    let loss = bce_with_logits(m.forward_seq(xt), yt);
    let value = to_vec(loss.clone())[0];
    let grads = GradientsParams::from_grads(loss.backward(), &m);
    let as_model = m.valid().map(&mut ToGrads(&grads));
    (value, as_model.export_weights().expect("burn GRU"))
}

/// Largest `|ours - theirs|` and largest excess over the tolerance (<= 0 passes).
fn diff(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .fold((0.0f32, f32::MIN), |(d, e), (a, b)| {
            let abs = (a - b).abs();
            (d.max(abs), e.max(abs - (ABS_TOL + REL_TOL * b.abs())))
        })
}

/// Every parameter group of two weight sets: (name, max abs diff, max excess).
fn diffs(ours: &GruWeights, theirs: &GruWeights) -> Vec<(&'static str, f32, f32)> {
    let groups: [(&str, &[f32], &[f32]); 6] = [
        ("input_weight", &ours.input_weight, &theirs.input_weight),
        ("input_bias", &ours.input_bias, &theirs.input_bias),
        ("hidden_weight", &ours.hidden_weight, &theirs.hidden_weight),
        ("hidden_bias", &ours.hidden_bias, &theirs.hidden_bias),
        ("head_weight", &ours.head_weight, &theirs.head_weight),
        ("head_bias", &[ours.head_bias], &[theirs.head_bias]),
    ];
    groups
        .iter()
        .map(|&(name, a, b)| {
            let (d, e) = diff(a, b);
            (name, d, e)
        })
        .collect()
}

/// Largest absolute value of each parameter group, in [`diffs`]' order.
fn magnitudes(w: &GruWeights) -> [f32; 6] {
    let max = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    [
        max(&w.input_weight),
        max(&w.input_bias),
        max(&w.hidden_weight),
        max(&w.hidden_bias),
        max(&w.head_weight),
        w.head_bias.abs(),
    ]
}

/// The loss and all gradients of `batch` sequences of `seq` steps equal burn's, on
/// every instruction set this CPU has.
fn check_grads(f: usize, h: usize, batch: usize, seq: usize, clip: Option<f64>, seed: u64) {
    let mut rng = Rng(seed);
    let mut model = random_model(f, h, &mut rng);
    if let Some(c) = clip {
        model = model.with_clip(c);
    }
    let (x, y) = random_batch(f, batch, seq, &mut rng);
    let (burn_loss, burn_grads) = burn_loss_and_grads(&model, &x, &y, batch, seq);
    let weights = model.export_weights().expect("burn GRU");
    for isa in Isa::available() {
        let mut t = BpttTrainer::new(&weights)
            .expect("supported")
            .with_isa(isa)
            .expect("available");
        let loss = t.loss_and_grads(&x, &y, batch, seq).expect("shapes");
        let (dl, el) = diff(&[loss], &[burn_loss]);
        println!("{f}->{h} b{batch} l{seq} clip {clip:?} {isa:?}: loss {loss} (burn {burn_loss}, diff {dl:e})");
        assert!(el <= 0.0, "{isa:?}: loss {loss}, burn {burn_loss}");
        for ((name, d, e), scale) in diffs(&t.grads(), &burn_grads)
            .into_iter()
            .zip(magnitudes(&burn_grads))
        {
            println!("  {name}: max abs diff {d:e} (largest burn gradient {scale:e})");
            assert!(
                e <= 0.0,
                "{f}->{h} {isa:?}: {name} differs from burn's by up to {d:e}"
            );
        }
    }
}

#[test]
fn grads_match_burn_16_to_16() {
    check_grads(16, 16, 64, 8, None, 1);
}

#[test]
fn grads_match_burn_with_padded_units_12_to_20() {
    // 20 hidden units pad to 32: the padded units must stay out of every result.
    check_grads(12, 20, 37, 5, None, 2);
}

#[test]
fn grads_match_burn_with_a_clipped_state() {
    // A clip of 0.3 clamps many states, so the clamp's masked gradient is exercised.
    check_grads(16, 16, 32, 6, Some(0.3), 3);
    // (It does: the same model and batch without the clip have other gradients.)
    let mut rng = Rng(3);
    let model = random_model(16, 16, &mut rng);
    let (x, y) = random_batch(16, 32, 6, &mut rng);
    let (_, free) = burn_loss_and_grads(&model, &x, &y, 32, 6);
    let (_, clipped) = burn_loss_and_grads(&model.with_clip(0.3), &x, &y, 32, 6);
    let (d, _) = diff(&free.hidden_weight, &clipped.hidden_weight);
    assert!(d > 1e-3, "the clip changed no gradient by more than {d:e}");
}

#[test]
fn refuses_a_batch_of_the_wrong_shape() {
    let mut rng = Rng(4);
    let w = random_model(8, 16, &mut rng)
        .export_weights()
        .expect("burn GRU");
    let mut t = BpttTrainer::new(&w).expect("supported");
    assert_eq!(
        t.loss_and_grads(&[0.0; 8 * 5], &[0.0; 6], 2, 3),
        Err(BatchError::Shape {
            what: "features",
            expected: 48,
            found: 40
        })
    );
    assert_eq!(t.loss_and_grads(&[], &[], 0, 3), Ok(0.0));
}

/// Samples whose label is learnable from their features: block `t` is accessed when
/// its first feature and the previous window's second feature sum past 1.
fn learnable_samples(n: usize, seq: usize, rng: &mut Rng) -> Vec<Sample> {
    (0..n)
        .map(|_| {
            let features: Vec<[f32; NUM_FEATURES]> = (0..seq)
                .map(|_| std::array::from_fn(|_| rng.uniform(0.0, 1.0)))
                .collect();
            let labels = (0..seq)
                .map(|t| {
                    let prev = if t > 0 { features[t - 1][1] } else { 0.5 };
                    f32::from(features[t][0] + prev > 1.0)
                })
                .collect();
            Sample { features, labels }
        })
        .collect()
}

/// Mean loss of `samples` under `weights` (no step).
fn loss_of(weights: &GruWeights, samples: &[Sample]) -> f32 {
    let refs: Vec<&Sample> = samples.iter().collect();
    BpttTrainer::new(weights)
        .expect("supported")
        .loss_and_grads_samples(&refs)
}

/// 20 Adam steps of [`Trainer`] and [`BurnTrainer`] from the same model on the same
/// batches (two of them at a boosted learning rate) give the same losses and weights,
/// and the loss goes down.
fn check_adam_steps(h: usize, seed: u64) {
    let mut rng = Rng(seed);
    // Weights about the size of burn's initial ones, from a seed (burn's own
    // initialisation draws from a process-wide generator other tests share).
    let model = scaled_model(NUM_FEATURES, h, 0.5, &mut rng);
    let samples = learnable_samples(128 * 4, 8, &mut rng);
    let held_out = learnable_samples(256, 8, &mut rng);
    let cfg = TrainConfig {
        lr: 1e-2,
        batch: 128,
    };
    let mut ours = Trainer::new(&model, cfg);
    let mut burn = BurnTrainer::new(&model, cfg);
    let mut worst_loss = 0.0f32;
    for step in 0..20 {
        let batch: Vec<&Sample> = samples[(step % 4) * 128..][..128].iter().collect();
        let scale = if step == 5 || step == 6 { 3.0 } else { 1.0 };
        let (a, b) = (ours.step(&batch, scale), burn.step(&batch, scale));
        let (d, e) = diff(&[a], &[b]);
        worst_loss = worst_loss.max(d);
        assert!(e <= 0.0, "step {step}: loss {a}, burn {b}");
    }
    assert_eq!(ours.steps, 20);
    let burn_weights = burn.inference_model().export_weights().expect("burn GRU");
    let before = loss_of(&model.export_weights().expect("burn GRU"), &held_out);
    let after = loss_of(&ours.weights(), &held_out);
    println!(
        "16->{h}: 20 steps, largest loss diff {worst_loss:e}; held-out loss {before} -> {after}"
    );
    // Adam's normalised step turns last-bit gradient differences into weight
    // differences of a few ulp per step; 20 steps stay well within 1e-5.
    for (name, d, _) in diffs(&ours.weights(), &burn_weights) {
        println!("  {name}: max abs diff after 20 steps {d:e}");
        assert!(d <= 1e-5, "16->{h}: {name} differs from burn's by {d:e}");
    }
    assert!(after < before * 0.9, "held-out loss {before} -> {after}");
}

#[test]
fn adam_steps_match_burn_16_to_16() {
    check_adam_steps(16, 5);
}

#[test]
fn adam_steps_match_burn_16_to_20() {
    check_adam_steps(20, 6);
}

/// The trained weights come back as an `AccessModel` exactly: exported weights,
/// inference-cell predictions and the model file round trip; and the cell's
/// predictions match those of burn's trainer's model after the same steps.
#[test]
fn inference_model_holds_the_trained_weights() {
    let mut rng = Rng(7);
    let model = scaled_model(NUM_FEATURES, 16, 0.5, &mut rng);
    let samples = learnable_samples(128, 8, &mut rng);
    let batch: Vec<&Sample> = samples.iter().collect();
    let cfg = TrainConfig::default();
    let mut ours = Trainer::new(&model, cfg);
    let mut burn = BurnTrainer::new(&model, cfg);
    for _ in 0..5 {
        ours.step(&batch, 1.0);
        burn.step(&batch, 1.0);
    }
    let trained = ours.inference_model();
    let weights = trained.export_weights().expect("burn GRU");
    assert_eq!(weights, ours.weights());
    assert_ne!(weights, model.export_weights().expect("burn GRU"));

    let n = 300;
    let xs = rng.vec(n * NUM_FEATURES, 0.0, 1.0);
    let predict = |cell: &GruCell| {
        let mut hs = vec![0.0; n * 16];
        let mut probs = vec![0.0; n];
        cell.step(&xs, &mut hs, &mut probs);
        cell.step(&xs, &mut hs, &mut probs);
        probs
    };
    let p_model = predict(&GruCell::from_model(&trained));
    let p_weights = predict(&GruCell::from_weights(&ours.weights()).expect("cell"));
    assert_eq!(p_model, p_weights);
    let p_burn = predict(&GruCell::from_model(&burn.inference_model()));
    let (d, _) = diff(&p_model, &p_burn);
    println!("cell predictions, hand-written vs burn trainer after 5 steps: max diff {d:e}");
    assert!(
        d < 1e-5,
        "predictions differ from burn's trainer's by {d:e}"
    );

    // The model file is unchanged in format: it saves and loads back bit for bit.
    let meta = ModelMeta::new(&FeatureConfig::default(), 16, 1_000_000);
    let path = std::env::temp_dir().join(format!("backprop-test-{}.bpk", std::process::id()));
    trained.save(&meta, &path).expect("save");
    let loaded = AccessModel::load_cpu(&path);
    let _ = std::fs::remove_file(&path);
    let (loaded, loaded_meta) = loaded.expect("load");
    assert_eq!(loaded_meta, meta);
    assert_eq!(loaded.export_weights().expect("burn GRU"), weights);
}

#[test]
fn with_weights_refuses_weights_of_another_shape() {
    let mut rng = Rng(8);
    let w = random_model(16, 16, &mut rng)
        .export_weights()
        .expect("burn GRU");
    let other = AccessModel::with_input(8, 16, &Device::flex());
    assert!(other.with_weights(&w).is_err());
}

#[test]
fn a_batch_without_labels_takes_no_step() {
    let mut rng = Rng(9);
    let w = random_model(NUM_FEATURES, 16, &mut rng)
        .export_weights()
        .expect("burn GRU");
    let mut t = BpttTrainer::new(&w).expect("supported");
    let empty = Sample {
        features: Vec::new(),
        labels: Vec::new(),
    };
    assert_eq!(t.step_samples(&[], 1e-2), 0.0);
    assert_eq!(t.step_samples(&[&empty, &empty], 1e-2), 0.0);
    assert_eq!((t.weights(), t.adam_steps()), (w, 0));
}
