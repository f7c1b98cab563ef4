//! The inference cell against burn's `AccessModel::step`, on every instruction set
//! this CPU has.

use burn::nn::{GruConfig, LinearConfig};
use burn::tensor::Device;

use super::{exp, CellError, GruCell, GruWeights, Isa, Unfused};
use crate::gru::model::{tensor2, to_vec, AccessModel};

use crate::gru::test_rng::Rng;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Three consecutive steps of `n` rows through burn and through the cell on each
/// instruction set, each fed its own previous state, agree within 1e-5.
fn check_against_burn(f: usize, h: usize, n: usize, seed: u64) {
    let device = Device::flex();
    let model = AccessModel::with_input(f, h, &device);
    let mut rng = Rng(seed);
    for isa in Isa::available() {
        let cell = GruCell::from_model(&model)
            .with_isa(isa)
            .expect("available isa");
        assert_eq!((cell.d_input(), cell.d_hidden()), (f, h));
        let mut hs_burn = rng.vec(n * h, -1.0, 1.0);
        let mut hs_cell = hs_burn.clone();
        let mut probs = vec![0.0; n];
        for step in 0..3 {
            // Features of the real extractor are mostly in [0, 1]; go wider.
            let xs = rng.vec(n * f, -2.0, 3.0);
            let (h_t, p_t) = model.step(
                tensor2(xs.clone(), n, f, &device),
                tensor2(hs_burn.clone(), n, h, &device),
            );
            hs_burn = to_vec(h_t);
            let p_burn = to_vec(p_t);
            cell.step(&xs, &mut hs_cell, &mut probs);
            let (dh, dp) = (max_diff(&hs_burn, &hs_cell), max_diff(&p_burn, &probs));
            assert!(
                dh < 1e-5 && dp < 1e-5,
                "{f}->{h}, batch {n}, {isa:?}, step {step}: states differ by {dh}, probabilities by {dp}"
            );
        }
    }
}

#[test]
fn matches_burn_16_to_32() {
    for (n, seed) in [(1, 1), (7, 2), (1000, 3)] {
        check_against_burn(16, 32, n, seed);
    }
}

#[test]
fn matches_burn_12_to_16() {
    for (n, seed) in [(1, 4), (7, 5), (1000, 6)] {
        check_against_burn(12, 16, n, seed);
    }
}

#[test]
fn matches_burn_with_padded_columns() {
    // 3 * 5 = 15 gate columns: one padded panel; 3 inputs: shorter than any tile.
    check_against_burn(3, 5, 9, 7);
    check_against_burn(8, 16, 5, 8);
}

#[test]
fn step_one_equals_a_batch_row() {
    let model = AccessModel::with_input(16, 32, &Device::flex());
    let cell = GruCell::from_model(&model);
    let mut rng = Rng(9);
    let n = 6;
    let xs = rng.vec(n * 16, 0.0, 1.0);
    let mut hs = rng.vec(n * 32, -1.0, 1.0);
    let mut hs_one = hs.clone();
    let mut probs = vec![0.0; n];
    cell.step(&xs, &mut hs, &mut probs);
    for r in 0..n {
        let p = cell.step_one(&xs[r * 16..(r + 1) * 16], &mut hs_one[r * 32..(r + 1) * 32]);
        assert!((p - probs[r]).abs() < 1e-6, "row {r}: {p} vs {}", probs[r]);
    }
    assert!(max_diff(&hs, &hs_one) < 1e-6);
}

#[test]
fn exp_is_accurate_over_the_clamped_range() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 88.0 {
        let want = f64::from(x).exp();
        let rel = ((f64::from(exp::<Unfused>(x)) - want) / want).abs();
        worst = worst.max(rel);
        x += 0.013;
    }
    assert!(worst < 5e-7, "worst relative error {worst}");
    assert_eq!(exp::<Unfused>(-1000.0), exp::<Unfused>(-87.0));
    assert!(exp::<Unfused>(1000.0).is_finite());
}

#[test]
fn clip_bounds_the_state() {
    let model = AccessModel::with_input(4, 8, &Device::flex());
    let mut w = model.export_weights().expect("default GRU");
    // Large biases drive every unit to +-1; the clip must hold them at 0.25.
    w.input_bias.iter_mut().skip(16).for_each(|b| *b = 50.0);
    w.input_bias.iter_mut().take(8).for_each(|b| *b = -50.0);
    w.clip = Some(0.25);
    let cell = GruCell::from_weights(&w).expect("valid weights");
    let mut h = vec![0.0; 8];
    cell.step_one(&[1.0, 0.0, 0.5, 0.25], &mut h);
    assert!(h.iter().all(|v| (v - 0.25).abs() < 1e-6), "{h:?}");
}

#[test]
fn refuses_other_architectures_and_bad_shapes() {
    let device = Device::flex();
    let gru = GruConfig::new(4, 8, true)
        .with_reset_after(false)
        .init(&device);
    let head = LinearConfig::new(8, 1).init(&device);
    let err = GruWeights::from_burn(&gru, &head).expect_err("reset-before GRU");
    assert!(matches!(err, CellError::Unsupported { .. }), "{err}");
    let gru = GruConfig::new(4, 8, true).init(&device);
    let head2 = LinearConfig::new(8, 2).init(&device);
    let err = GruWeights::from_burn(&gru, &head2).expect_err("two-logit head");
    assert!(err.to_string().contains("8 -> 2"), "{err}");

    let mut w = GruWeights::from_burn(&gru, &head).expect("default GRU");
    w.hidden_weight.pop();
    let err = GruCell::from_weights(&w).expect_err("short hidden weights");
    assert!(
        err.to_string()
            .contains("hidden_weight has 191 values, expected 192"),
        "{err}"
    );
}
