//! A hand-written training step for the access model (GRU -> linear head -> BCE with
//! logits): the forward pass through the sequence, keeping what the backward pass
//! needs; backpropagation through time for every GRU weight and bias and the head;
//! and burn 0.22's Adam. It replaces burn autodiff in [`super::train::Trainer`], where
//! one step of 128 samples x 8 windows cost about 2 ms of CPU. The tests
//! (`backprop/tests.rs`) check the loss, every gradient and 20 Adam steps against
//! burn's autodiff and optimiser ([`super::train::BurnTrainer`]).
//!
//! The model, as in [`super::cell`] (burn's `Gru` with `reset_after`), for each step
//! `t` from `h_0 = 0`:
//!
//! ```text
//! z = sigmoid(x Wxz + bxz + h Whz + bhz)      r = sigmoid(x Wxr + bxr + h Whr + bhr)
//! m = h Whn + bhn                             n = tanh(x Wxn + bxn + r * m)
//! h' = (1 - z) * n + z * h   (clamped to +-clip if set)    logit = h' . w + b
//! loss = mean over all samples and steps of BCE(logit, label)
//! ```
//!
//! Backward, with `d` the gradient reaching `h'` (from its logit and from step t+1),
//! the gradients of the gates' pre-activations are `dz = d (h - n) z (1 - z)`,
//! `dn = d (1 - z) (1 - n^2)`, `dr = dn m r (1 - r)`, and of `m`, `dm = dn r`. The
//! input side's products get `[dz | dr | dn]`, the hidden side's `[dz | dr | dm]`
//! (weight gradients: inputs transposed times these); the gradient to `h` is `d z`
//! plus the hidden side's times `Wh` transposed.
//!
//! Layout: each gate's `d_hidden` units are padded to a multiple of [`NR`] (`hp`), and
//! all per-row arrays (states, gates, gate gradients) use that padded width, so every
//! element-wise loop runs over fixed `NR`-wide blocks that LLVM vectorises, and every
//! matrix product is row x panel of `NR` columns. Padded units have zero weights and
//! biases, so their state stays 0 and their gradients are 0 (Adam leaves them at 0).
//! Batch rows are stored time-major (`[t][b]`), so one time step's rows are contiguous.
//! All buffers live in the trainer and keep their allocations, so a steady-state step
//! does not allocate. The kernels are compiled for the portable target, AVX2+FMA and AVX-512
//! and picked at run time like [`super::cell::GruCell`]'s.

use super::cell::{
    exp, lane_sum, sigmoid, tanh, CellError, Fused, GruWeights, Isa, MulAdd, Unfused, NR,
};
use super::features::Sample;

mod kernels;

use kernels::{col_sums, gemm, gemm_at};

/// burn's `AdamConfig` defaults (burn-optim 0.22 `adam.rs`), which the trainer used.
pub const ADAM_BETA_1: f32 = 0.9;
pub const ADAM_BETA_2: f32 = 0.999;
pub const ADAM_EPSILON: f32 = 1e-5;

/// Where each parameter sits in the flat, padded parameter vector (and in the
/// gradient and Adam moment vectors, which share the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Inputs per step.
    f: usize,
    /// Hidden units.
    h: usize,
    /// Hidden units padded to a multiple of `NR`.
    hp: usize,
    /// Gate columns `3 * hp`: update, reset, new.
    cols: usize,
    /// Input weights `[f][cols]`, then input biases `[cols]`.
    wx: usize,
    bx: usize,
    /// Hidden weights `[hp][cols]`, then hidden biases `[cols]`.
    wh: usize,
    bh: usize,
    /// Head weights `[hp]`, then the head bias.
    head_w: usize,
    head_b: usize,
    len: usize,
}

impl Layout {
    fn new(f: usize, h: usize) -> Layout {
        let hp = h.div_ceil(NR) * NR;
        let cols = 3 * hp;
        let wx = 0;
        let bx = wx + f * cols;
        let wh = bx + cols;
        let bh = wh + hp * cols;
        let head_w = bh + cols;
        let head_b = head_w + hp;
        Layout {
            f,
            h,
            hp,
            cols,
            wx,
            bx,
            wh,
            bh,
            head_w,
            head_b,
            len: head_b + 1,
        }
    }

    /// `[rows][3h]` gate-interleaved values into `[rows][cols]` padded ones.
    fn pad_gates(&self, src: &[f32], rows: usize, dst: &mut [f32]) {
        let h = self.h;
        for (d, s) in dst
            .chunks_exact_mut(self.cols)
            .zip(src.chunks_exact(3 * h))
            .take(rows)
        {
            for g in 0..3 {
                d[g * self.hp..g * self.hp + h].copy_from_slice(&s[g * h..(g + 1) * h]);
            }
        }
    }

    /// The inverse of [`Layout::pad_gates`].
    fn unpad_gates(&self, src: &[f32], rows: usize) -> Vec<f32> {
        let h = self.h;
        let mut out = Vec::with_capacity(rows * 3 * h);
        for s in src.chunks_exact(self.cols).take(rows) {
            for g in 0..3 {
                out.extend_from_slice(&s[g * self.hp..g * self.hp + h]);
            }
        }
        out
    }

    /// Padded flat parameters from exported weights.
    fn pack(&self, w: &GruWeights) -> Vec<f32> {
        let mut p = vec![0.0; self.len];
        self.pad_gates(&w.input_weight, self.f, &mut p[self.wx..self.bx]);
        self.pad_gates(&w.input_bias, 1, &mut p[self.bx..self.wh]);
        // Hidden rows past `h` (padded inputs) stay zero.
        self.pad_gates(&w.hidden_weight, self.h, &mut p[self.wh..self.bh]);
        self.pad_gates(&w.hidden_bias, 1, &mut p[self.bh..self.head_w]);
        p[self.head_w..self.head_w + self.h].copy_from_slice(&w.head_weight);
        p[self.head_b] = w.head_bias;
        p
    }

    /// Exported-weight form of padded flat values (parameters or gradients).
    fn unpack(&self, p: &[f32], clip: Option<f32>) -> GruWeights {
        GruWeights {
            d_input: self.f,
            d_hidden: self.h,
            input_weight: self.unpad_gates(&p[self.wx..self.bx], self.f),
            input_bias: self.unpad_gates(&p[self.bx..self.wh], 1),
            hidden_weight: self.unpad_gates(&p[self.wh..self.bh], self.h),
            hidden_bias: self.unpad_gates(&p[self.bh..self.head_w], 1),
            head_weight: p[self.head_w..self.head_w + self.h].to_vec(),
            head_bias: p[self.head_b],
            clip,
        }
    }
}

/// Per-step buffers, all time-major. Sized for the largest batch seen, then reused.
#[derive(Debug, Default)]
struct Scratch {
    /// Inputs `[seq][batch][f]`.
    x: Vec<f32>,
    /// Labels `[seq][batch]`.
    y: Vec<f32>,
    /// Input-side gate pre-activations `[seq][batch][cols]` (bias included); the
    /// backward pass overwrites each with its gradient `[dz | dr | dn]`.
    gx: Vec<f32>,
    /// Hidden-side products `[seq][batch][cols]` (bias included); the backward pass
    /// overwrites each with its gradient `[dz | dr | dm]`.
    gh: Vec<f32>,
    /// States `[seq + 1][batch][hp]`, from the zero state.
    hs: Vec<f32>,
    /// Activations `[seq][batch][4 * hp]`: z, r, n and m (the hidden product of the
    /// new gate, which the reset gate scales).
    acts: Vec<f32>,
    /// Logits `[seq][batch]`; then the loss's gradient with respect to each.
    logits: Vec<f32>,
    /// Gradient reaching the states of the step being processed, `[batch][hp]`.
    dh: Vec<f32>,
}

/// Make `v` `n` values long, keeping its allocation when it is big enough. The
/// values are left as they are: each pass writes every value it reads.
fn fit(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

impl Scratch {
    fn fit(&mut self, l: &Layout, batch: usize, seq: usize) {
        let rows = batch * seq;
        fit(&mut self.x, rows * l.f);
        fit(&mut self.y, rows);
        fit(&mut self.gx, rows * l.cols);
        fit(&mut self.gh, rows * l.cols);
        fit(&mut self.hs, (rows + batch) * l.hp);
        fit(&mut self.acts, rows * 4 * l.hp);
        fit(&mut self.logits, rows);
        fit(&mut self.dh, batch * l.hp);
        // Every sequence starts from the zero state.
        self.hs[..batch * l.hp].fill(0.0);
    }
}

/// Why a batch cannot be trained on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("training batch: {what} has {found} values, expected {expected}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
}

/// The GRU + head's parameters, their gradients and Adam state, with the buffers of
/// one training step.
#[derive(Debug)]
pub struct BpttTrainer {
    layout: Layout,
    clip: Option<f32>,
    params: Vec<f32>,
    grads: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    /// Adam steps taken (burn's `AdaptiveMomentumState::time`).
    adam_time: i32,
    /// Hidden weights transposed, `[cols][hp]`, for the gradient to the states.
    wh_t: Vec<f32>,
    scratch: Scratch,
    isa: Isa,
}

impl BpttTrainer {
    /// A trainer starting from `w`, with fresh Adam state, on the fastest instruction
    /// set this CPU has.
    pub fn new(w: &GruWeights) -> Result<BpttTrainer, CellError> {
        // The inference cell's checks: shapes agree, sizes non-zero.
        super::cell::GruCell::from_weights(w)?;
        let layout = Layout::new(w.d_input, w.d_hidden);
        let params = layout.pack(w);
        Ok(BpttTrainer {
            layout,
            clip: w.clip,
            grads: vec![0.0; layout.len],
            adam_m: vec![0.0; layout.len],
            adam_v: vec![0.0; layout.len],
            adam_time: 0,
            wh_t: vec![0.0; layout.cols * layout.hp],
            params,
            scratch: Scratch::default(),
            isa: Isa::best(),
        })
    }

    /// The same trainer running its kernels with `isa`, or `None` if this CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Option<BpttTrainer> {
        Isa::available().contains(&isa).then(|| {
            self.isa = isa;
            self
        })
    }

    /// Instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The current weights.
    pub fn weights(&self) -> GruWeights {
        self.layout.unpack(&self.params, self.clip)
    }

    /// The gradients of the last [`BpttTrainer::loss_and_grads`], in the weights' layout.
    pub fn grads(&self) -> GruWeights {
        self.layout.unpack(&self.grads, self.clip)
    }

    /// Adam steps taken.
    pub fn adam_steps(&self) -> u64 {
        self.adam_time as u64
    }

    /// One Adam step at learning rate `lr` on a batch of samples of equal length;
    /// returns the batch's mean loss (before the step). A batch without labels
    /// (no samples, or empty ones) takes no step and returns 0.
    ///
    /// # Panics
    /// If the samples' lengths differ or their features are not `d_input` wide
    /// (samples of one model's feature extractor always agree).
    pub fn step_samples(&mut self, batch: &[&Sample], lr: f32) -> f32 {
        if batch.first().is_none_or(|s| s.labels.is_empty()) {
            return 0.0;
        }
        let loss = self.loss_and_grads_samples(batch);
        self.adam_step(lr);
        loss
    }

    /// The loss and gradients of a batch without labels: 0.
    fn no_labels(&mut self) -> f32 {
        self.grads.fill(0.0);
        0.0
    }

    /// [`BpttTrainer::loss_and_grads`] for samples.
    ///
    /// # Panics
    /// As [`BpttTrainer::step_samples`].
    pub fn loss_and_grads_samples(&mut self, batch: &[&Sample]) -> f32 {
        let Some(first) = batch.first().filter(|s| !s.labels.is_empty()) else {
            return self.no_labels();
        };
        let (b, seq, l) = (batch.len(), first.features.len(), self.layout);
        assert_eq!(
            l.f,
            first.features.first().map_or(l.f, |f| f.len()),
            "BpttTrainer: the model takes {} features",
            l.f
        );
        self.scratch.fit(&l, b, seq);
        let s = &mut self.scratch;
        for (i, sample) in batch.iter().enumerate() {
            assert!(
                sample.features.len() == seq && sample.labels.len() == seq,
                "BpttTrainer: samples of one batch have different lengths"
            );
            for (t, (x, &y)) in sample.features.iter().zip(&sample.labels).enumerate() {
                let row = t * b + i;
                s.x[row * l.f..(row + 1) * l.f].copy_from_slice(x);
                s.y[row] = y;
            }
        }
        self.run_passes(b, seq)
    }

    /// Loss and gradients (kept for [`BpttTrainer::adam_step`] and
    /// [`BpttTrainer::grads`]) of `batch` sequences of `seq` steps: features `x`
    /// `[batch][seq][d_input]` and labels `y` `[batch][seq]`, row-major. Returns the
    /// mean loss over all `batch * seq` labels.
    pub fn loss_and_grads(
        &mut self,
        x: &[f32],
        y: &[f32],
        batch: usize,
        seq: usize,
    ) -> Result<f32, BatchError> {
        let l = self.layout;
        for (what, expected, found) in [
            ("features", batch * seq * l.f, x.len()),
            ("labels", batch * seq, y.len()),
        ] {
            if expected != found {
                return Err(BatchError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        if batch * seq == 0 {
            return Ok(self.no_labels());
        }
        self.scratch.fit(&l, batch, seq);
        let s = &mut self.scratch;
        for i in 0..batch {
            for t in 0..seq {
                let (src, dst) = (i * seq + t, t * batch + i);
                s.x[dst * l.f..(dst + 1) * l.f].copy_from_slice(&x[src * l.f..(src + 1) * l.f]);
                s.y[dst] = y[src];
            }
        }
        Ok(self.run_passes(batch, seq))
    }

    /// Forward and backward over the loaded batch, on the chosen instruction set.
    fn run_passes(&mut self, batch: usize, seq: usize) -> f32 {
        let l = self.layout;
        // Wh^T: `[cols][hp]` from `[hp][cols]`.
        let wh = &self.params[l.wh..l.bh];
        for (c, dst) in self.wh_t.chunks_exact_mut(l.hp).enumerate() {
            for (k, d) in dst.iter_mut().enumerate() {
                *d = wh[k * l.cols + c];
            }
        }
        let mut pass = Pass {
            l,
            clip: self.clip.map(|c| (-c, c)),
            batch,
            seq,
            params: &self.params,
            wh_t: &self.wh_t,
            grads: &mut self.grads,
            s: &mut self.scratch,
        };
        #[cfg(target_arch = "x86_64")]
        let loss = match self.isa {
            Isa::Portable => pass.run::<Unfused, 2>(),
            // SAFETY: `isa` is only ever set to an instruction set that
            // `Isa::available()` found on this CPU (`new`, `with_isa`).
            Isa::Avx2Fma => unsafe { x86::run_avx2(&mut pass) },
            // SAFETY: as above.
            Isa::Avx512 => unsafe { x86::run_avx512(&mut pass) },
        };
        #[cfg(not(target_arch = "x86_64"))]
        let loss = pass.run::<Unfused, 2>();
        loss
    }

    /// One Adam step at learning rate `lr` with the gradients of the last
    /// [`BpttTrainer::loss_and_grads`], exactly as burn's `Adam` computes it
    /// (moments, bias correction folded into the step and epsilon, f32 throughout).
    pub fn adam_step(&mut self, lr: f32) {
        self.adam_time += 1;
        let bias2_sqrt = (1.0 - ADAM_BETA_2.powi(self.adam_time)).sqrt();
        let factor = bias2_sqrt / (1.0 - ADAM_BETA_1.powi(self.adam_time));
        let eps = ADAM_EPSILON * bias2_sqrt;
        let (c1, c2) = (1.0 - ADAM_BETA_1, 1.0 - ADAM_BETA_2);
        for (((p, &g), m), v) in self
            .params
            .iter_mut()
            .zip(&self.grads)
            .zip(&mut self.adam_m)
            .zip(&mut self.adam_v)
        {
            // Separate multiplies and adds (no FMA), in burn's order, for its rounding.
            *m = *m * ADAM_BETA_1 + g * c1;
            *v = *v * ADAM_BETA_2 + g * g * c2;
            *p -= *m * factor / (v.sqrt() + eps) * lr;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Fused, Pass};

    /// [`Pass::run`] compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn run_avx2(pass: &mut Pass<'_>) -> f32 {
        pass.run::<Fused, 4>()
    }

    /// [`Pass::run`] compiled for AVX-512.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn run_avx512(pass: &mut Pass<'_>) -> f32 {
        pass.run::<Fused, 4>()
    }
}

/// One forward + backward pass over a loaded batch.
struct Pass<'a> {
    l: Layout,
    clip: Option<(f32, f32)>,
    batch: usize,
    seq: usize,
    params: &'a [f32],
    wh_t: &'a [f32],
    grads: &'a mut [f32],
    s: &'a mut Scratch,
}

impl Pass<'_> {
    /// Loss (returned) and gradients (into `grads`). `MR` rows per register tile of
    /// the matrix products: as many as the instruction set's registers hold
    /// accumulators for (16 floats a row: 2 on SSE's 16 registers of 4). Not more
    /// than 4: a tile of 8 x 16 was no longer kept in registers (AVX-512, 8x slower).
    #[inline(always)]
    fn run<M: MulAdd, const MR: usize>(&mut self) -> f32 {
        self.forward::<M, MR>();
        let loss = self.loss_gradients::<M, MR>();
        self.backward::<M, MR>();
        loss
    }

    #[inline(always)]
    fn forward<M: MulAdd, const MR: usize>(&mut self) {
        let (l, b, p) = (self.l, self.batch, self.params);
        let s = &mut *self.s;
        let (wx, bx) = (&p[l.wx..l.bx], &p[l.bx..l.wh]);
        let (wh, bh) = (&p[l.wh..l.bh], &p[l.bh..l.head_w]);
        let consts = RowConsts {
            hp: l.hp,
            clip: self.clip,
            head_w: &p[l.head_w..l.head_b],
        };
        let head_b = p[l.head_b];
        // All steps' input products at once; only the hidden products are sequential.
        gemm::<M, MR>(&s.x, l.f, wx, l.cols, Some(bx), &mut s.gx);
        let step_rows = b * l.cols;
        for t in 0..self.seq {
            let (done, next) = s.hs.split_at_mut((t + 1) * b * l.hp);
            let h_prev = &done[t * b * l.hp..];
            let h_next = &mut next[..b * l.hp];
            let gh = &mut s.gh[t * step_rows..(t + 1) * step_rows];
            gemm::<M, MR>(h_prev, l.hp, wh, l.cols, Some(bh), gh);
            let gx = &s.gx[t * step_rows..(t + 1) * step_rows];
            let acts = &mut s.acts[t * b * 4 * l.hp..(t + 1) * b * 4 * l.hp];
            let logits = &mut s.logits[t * b..(t + 1) * b];
            for (((((gx, gh), h_prev), h_new), acts), logit) in gx
                .chunks_exact(l.cols)
                .zip(gh.chunks_exact(l.cols))
                .zip(h_prev.chunks_exact(l.hp))
                .zip(h_next.chunks_exact_mut(l.hp))
                .zip(acts.chunks_exact_mut(4 * l.hp))
                .zip(logits.iter_mut())
            {
                *logit = forward_row::<M>(&consts, gx, gh, h_prev, h_new, acts) + head_b;
            }
        }
    }

    /// Mean loss over all labels; replaces each logit with the loss's gradient with
    /// respect to it, `(sigmoid(z) - y) / n`.
    #[inline(always)]
    fn loss_gradients<M: MulAdd, const MR: usize>(&mut self) -> f32 {
        let s = &mut *self.s;
        let n = s.logits.len();
        let inv_n = 1.0 / n as f32;
        // The stable form burn's `bce_with_logits` computes,
        // `max(z, 0) - z y + ln(1 + e^-|z|)`, with the logarithms summed as the
        // logarithm of their product (in f64, each factor in (1, 2], so 512 of them
        // stay far from overflow): one `ln` per 512 labels instead of a libm call each.
        let mut linear = 0.0f64;
        let mut log_sum = 0.0f64;
        for (zs, ys) in s.logits.chunks_mut(512).zip(s.y.chunks(512)) {
            let mut product = 1.0f64;
            for (z, &y) in zs.iter_mut().zip(ys) {
                let e = exp::<M>(-z.abs());
                linear += f64::from(z.max(0.0) - *z * y);
                product *= f64::from(1.0 + e);
                // sigmoid(z) from the same e^-|z|.
                let p = if *z >= 0.0 { 1.0 } else { e } / (1.0 + e);
                *z = (p - y) * inv_n;
            }
            log_sum += product.ln();
        }
        ((linear + log_sum) / n as f64) as f32
    }

    #[inline(always)]
    fn backward<M: MulAdd, const MR: usize>(&mut self) {
        let (l, b) = (self.l, self.batch);
        let s = &mut *self.s;
        let p = self.params;
        let (rest, head_grads) = self.grads.split_at_mut(l.head_w);
        let (head_w_grad, head_b_grad) = head_grads.split_at_mut(l.hp);
        head_w_grad.fill(0.0);
        let consts = RowConsts {
            hp: l.hp,
            clip: self.clip,
            head_w: &p[l.head_w..l.head_b],
        };
        s.dh.fill(0.0);
        let step_rows = b * l.cols;
        for t in (0..self.seq).rev() {
            let h_prev = &s.hs[t * b * l.hp..(t + 1) * b * l.hp];
            let h_new = &s.hs[(t + 1) * b * l.hp..(t + 2) * b * l.hp];
            let acts = &s.acts[t * b * 4 * l.hp..(t + 1) * b * 4 * l.hp];
            let dlogits = &s.logits[t * b..(t + 1) * b];
            let gx = &mut s.gx[t * step_rows..(t + 1) * step_rows];
            let gh = &mut s.gh[t * step_rows..(t + 1) * step_rows];
            for ((((((dh, &dlogit), h_prev), h_new), acts), gx), gh) in
                s.dh.chunks_exact_mut(l.hp)
                    .zip(dlogits)
                    .zip(h_prev.chunks_exact(l.hp))
                    .zip(h_new.chunks_exact(l.hp))
                    .zip(acts.chunks_exact(4 * l.hp))
                    .zip(gx.chunks_exact_mut(l.cols))
                    .zip(gh.chunks_exact_mut(l.cols))
            {
                let state = RowState {
                    h_prev,
                    h_new,
                    acts,
                };
                let out = RowGrads {
                    gx,
                    gh,
                    dh,
                    head_w: head_w_grad,
                };
                backward_row::<M>(&consts, dlogit, state, out);
            }
            if t > 0 {
                // The states' gradient through the hidden products: dh += gh . Wh^T.
                gemm::<M, MR>(gh, l.cols, self.wh_t, l.hp, None, &mut s.dh);
            }
        }
        head_b_grad[0] = s.logits.iter().sum();
        let rows = b * self.seq;
        let (wx_grad, rest) = rest.split_at_mut(l.bx);
        let (bx_grad, rest) = rest.split_at_mut(l.cols);
        let (wh_grad, bh_grad) = rest.split_at_mut(l.hp * l.cols);
        gemm_at::<M, MR>(&s.x, l.f, &s.gx, l.cols, wx_grad);
        col_sums(&s.gx, l.cols, bx_grad);
        // The hidden products saw the states before each step: `hs[0..seq]`.
        gemm_at::<M, MR>(&s.hs[..rows * l.hp], l.hp, &s.gh, l.cols, wh_grad);
        col_sums(&s.gh, l.cols, bh_grad);
    }
}

/// What every row of a step shares.
struct RowConsts<'a> {
    hp: usize,
    clip: Option<(f32, f32)>,
    /// Head weights `[hp]`.
    head_w: &'a [f32],
}

/// One row's forward values, as the backward pass reads them.
struct RowState<'a> {
    h_prev: &'a [f32],
    h_new: &'a [f32],
    /// `[z | r | n | m]`, `hp` each.
    acts: &'a [f32],
}

/// One row's gradients, written by the backward pass.
struct RowGrads<'a> {
    /// `[dz | dr | dn]`: the input side's gate pre-activations.
    gx: &'a mut [f32],
    /// `[dz | dr | dm]`: the hidden side's.
    gh: &'a mut [f32],
    /// In: the gradient reaching this row's new state from later steps. Out: the
    /// gradient reaching its previous state directly (`d * z`), to which the caller
    /// adds the path through the hidden products.
    dh: &'a mut [f32],
    /// The head weights' gradient, accumulated over rows.
    head_w: &'a mut [f32],
}

/// The `NR` values of `s` from `at` (layouts are padded so they exist).
#[inline(always)]
fn block(s: &[f32], at: usize) -> &[f32; NR] {
    s[at..at + NR].try_into().expect("padded to NR")
}

#[inline(always)]
fn block_mut(s: &mut [f32], at: usize) -> &mut [f32; NR] {
    (&mut s[at..at + NR]).try_into().expect("padded to NR")
}

/// Split a row into its first two `hp`-wide parts and the rest.
#[inline(always)]
fn thirds_mut(s: &mut [f32], hp: usize) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let (a, rest) = s.split_at_mut(hp);
    let (b, c) = rest.split_at_mut(hp);
    (a, b, c)
}

/// The new state before clipping, as burn computes it: `(1 - z) * n + z * h`.
#[inline(always)]
fn blend(z: f32, n: f32, h: f32) -> f32 {
    (1.0 - z) * n + z * h
}

/// One row's gate activations and new state; returns its logit without the head bias.
#[inline(always)]
fn forward_row<M: MulAdd>(
    c: &RowConsts<'_>,
    gx: &[f32],
    gh: &[f32],
    h_prev: &[f32],
    h_new: &mut [f32],
    acts: &mut [f32],
) -> f32 {
    let hp = c.hp;
    let (lo, hi) = c.clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (az, ar, rest) = thirds_mut(acts, hp);
    let (an, am) = rest.split_at_mut(hp);
    let mut logit = [0.0f32; NR];
    for j in (0..hp).step_by(NR) {
        let (xz, xr, xn) = (block(gx, j), block(gx, hp + j), block(gx, 2 * hp + j));
        let (hz, hr, hm) = (block(gh, j), block(gh, hp + j), block(gh, 2 * hp + j));
        let (h, w) = (block(h_prev, j), block(c.head_w, j));
        let (z, r, n, m) = (
            block_mut(az, j),
            block_mut(ar, j),
            block_mut(an, j),
            block_mut(am, j),
        );
        let out = block_mut(h_new, j);
        // Short loops over local arrays: each vectorises (one loop writing five
        // outputs through references did not).
        let (mut zv, mut rv, mut nv, mut hv) =
            ([0.0f32; NR], [0.0f32; NR], [0.0f32; NR], [0.0f32; NR]);
        for k in 0..NR {
            zv[k] = sigmoid::<M>(xz[k] + hz[k]);
            rv[k] = sigmoid::<M>(xr[k] + hr[k]);
        }
        for k in 0..NR {
            nv[k] = tanh::<M>(M::mul_add(rv[k], hm[k], xn[k]));
        }
        for k in 0..NR {
            // max/min, not `clamp`, whose bounds assertion kept the loop scalar.
            hv[k] = blend(zv[k], nv[k], h[k]).max(lo).min(hi);
            logit[k] = M::mul_add(hv[k], w[k], logit[k]);
        }
        (*z, *r, *n, *m, *out) = (zv, rv, nv, *hm, hv);
    }
    lane_sum(logit)
}

/// One row's gradients (see the module's doc for the formulas).
#[inline(always)]
fn backward_row<M: MulAdd>(c: &RowConsts<'_>, dlogit: f32, st: RowState<'_>, g: RowGrads<'_>) {
    let hp = c.hp;
    let (lo, hi) = c.clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (gxz, gxr, gxn) = thirds_mut(g.gx, hp);
    let (ghz, ghr, ghm) = thirds_mut(g.gh, hp);
    for j in (0..hp).step_by(NR) {
        let (z, r) = (block(st.acts, j), block(st.acts, hp + j));
        let (n, m) = (block(st.acts, 2 * hp + j), block(st.acts, 3 * hp + j));
        let (h, h_new, w) = (block(st.h_prev, j), block(st.h_new, j), block(c.head_w, j));
        let (dh, dw) = (block_mut(g.dh, j), block_mut(g.head_w, j));
        let (dxz, dxr, dxn) = (block_mut(gxz, j), block_mut(gxr, j), block_mut(gxn, j));
        let (dhz, dhr, dhm) = (block_mut(ghz, j), block_mut(ghr, j), block_mut(ghm, j));
        let mut gz = [0.0f32; NR];
        let mut gr = [0.0f32; NR];
        let mut gn = [0.0f32; NR];
        let mut direct = [0.0f32; NR];
        for k in 0..NR {
            dw[k] = M::mul_add(dlogit, h_new[k], dw[k]);
            // Clamping passes the gradient only where the value was inside the range
            // (burn's clamp is two masked fills). A select, so the loop vectorises.
            let pre = blend(z[k], n[k], h[k]);
            let d = M::mul_add(dlogit, w[k], dh[k]);
            let d = if pre >= lo && pre <= hi { d } else { 0.0 };
            gz[k] = d * (h[k] - n[k]) * (z[k] * (1.0 - z[k]));
            gn[k] = d * (1.0 - z[k]) * (1.0 - n[k] * n[k]);
            gr[k] = gn[k] * m[k] * (r[k] * (1.0 - r[k]));
            direct[k] = d * z[k];
        }
        for k in 0..NR {
            dhm[k] = gn[k] * r[k];
        }
        (*dxz, *dhz, *dxr, *dhr, *dxn, *dh) = (gz, gz, gr, gr, gn, direct);
    }
}

#[cfg(test)]
mod tests;
