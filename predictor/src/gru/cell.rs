//! A hand-written GRU inference cell: the [`AccessModel`]'s GRU -> linear -> sigmoid,
//! in plain Rust f32, with no burn at inference: ~70-190 ns per row on this host
//! (8->16 to 16->32, AVX-512) and ~0.35 us for a single row, where burn's `step`
//! costs ~10 us per call plus 0.4-1.9 us per row.
//!
//! It computes exactly burn 0.22's `Gru` (reset gate applied after the hidden
//! product, as in PyTorch):
//!
//! ```text
//! z  = sigmoid(Wxz x + bxz + Whz h + bhz)
//! r  = sigmoid(Wxr x + bxr + Whr h + bhr)
//! n  = tanh(Wxn x + bxn + r * (Whn h + bhn))
//! h' = (1 - z) * n + z * h            (then clamped to +-clip if the GRU clips)
//! p  = sigmoid(head_w . h' + head_b)
//! ```
//!
//! Layout: the three gates' weights are concatenated column-wise (`[z | r | n]`, padded
//! to a multiple of [`NR`] columns) and stored in column panels of `NR` columns, each
//! panel `[k][NR]` contiguous, so the inner loop is a fixed-width multiply-add over
//! contiguous memory that LLVM vectorises, with an `MR`-row tile of accumulators kept
//! in registers. The same code is compiled three times: portable (baseline x86-64
//! SSE2, or whatever the target has), AVX2+FMA and AVX-512, picked at run time with
//! `is_x86_feature_detected!`. Measurements: docs/predictor-cost.md.

use std::cell::RefCell;

use burn::nn::activation::Activation;
use burn::nn::{Gru, Linear};
use burn::tensor::{Tensor, TensorData};

use super::model::AccessModel;

/// Columns per weight panel: the width of the inner multiply-add loop (two AVX2
/// vectors, one AVX-512 vector).
pub const NR: usize = 16;

/// Why a GRU cannot be turned into a [`GruCell`].
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("GRU cell: the model's {what}; the inference cell implements burn's default GRU (sigmoid gates, tanh candidate, reset after the hidden product) with a one-logit linear head")]
    Unsupported { what: String },
    #[error("GRU cell: {what} has {found} values, expected {expected}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("GRU cell: cannot read the weights of {what} from burn: {reason}")]
    Read { what: &'static str, reason: String },
}

/// A GRU + head's weights as plain row-major `f32` arrays (burn's `[d_in, d_out]`
/// layout), gates in the order update (z), reset (r), new (n).
#[derive(Debug, Clone, PartialEq)]
pub struct GruWeights {
    pub d_input: usize,
    pub d_hidden: usize,
    /// `[d_input][3 * d_hidden]`
    pub input_weight: Vec<f32>,
    /// `[3 * d_hidden]`
    pub input_bias: Vec<f32>,
    /// `[d_hidden][3 * d_hidden]`
    pub hidden_weight: Vec<f32>,
    /// `[3 * d_hidden]`
    pub hidden_bias: Vec<f32>,
    /// `[d_hidden]`
    pub head_weight: Vec<f32>,
    pub head_bias: f32,
    /// Hidden states are clamped to `[-clip, clip]` after each step.
    pub clip: Option<f32>,
}

fn tensor_values<const D: usize>(t: Tensor<D>, what: &'static str) -> Result<Vec<f32>, CellError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| CellError::Read {
            what,
            reason: format!("{e:?}"),
        })
}

/// A linear layer's weight `[d_in, d_out]` and bias `[d_out]` (zeros without bias).
fn linear_values(lin: &Linear, what: &'static str) -> Result<(Vec<f32>, Vec<f32>), CellError> {
    let [_, d_out] = lin.weight.val().dims();
    let w = tensor_values(lin.weight.val(), what)?;
    let b = match &lin.bias {
        Some(b) => tensor_values(b.val(), what)?,
        None => vec![0.0; d_out],
    };
    Ok((w, b))
}

impl GruWeights {
    /// The `(d_input, d_hidden)` of a burn GRU and head of the architecture these
    /// weights describe, or why they are another.
    fn burn_shape(gru: &Gru, head: &Linear) -> Result<(usize, usize), CellError> {
        let unsupported = |what: String| Err(CellError::Unsupported { what });
        if !gru.reset_after {
            return unsupported("GRU applies the reset gate before the hidden product".into());
        }
        if !matches!(gru.gate_activation, Activation::Sigmoid(_)) {
            return unsupported("GRU gate activation is not sigmoid".into());
        }
        if !matches!(gru.hidden_activation, Activation::Tanh(_)) {
            return unsupported("GRU candidate activation is not tanh".into());
        }
        let [d_input, d_hidden] = gru.update_gate.input_transform.weight.val().dims();
        let [head_in, head_out] = head.weight.val().dims();
        if head_in != d_hidden || head_out != 1 {
            return unsupported(format!(
                "head maps {head_in} -> {head_out} values, not {d_hidden} -> 1"
            ));
        }
        Ok((d_input, d_hidden))
    }

    /// Copy the weights out of a burn GRU and its linear head.
    pub fn from_burn(gru: &Gru, head: &Linear) -> Result<GruWeights, CellError> {
        let (d_input, d_hidden) = Self::burn_shape(gru, head)?;
        let gates = [&gru.update_gate, &gru.reset_gate, &gru.new_gate];
        let mut input_weight = vec![0.0; d_input * 3 * d_hidden];
        let mut hidden_weight = vec![0.0; d_hidden * 3 * d_hidden];
        let mut input_bias = Vec::with_capacity(3 * d_hidden);
        let mut hidden_bias = Vec::with_capacity(3 * d_hidden);
        for (g, gate) in gates.iter().enumerate() {
            let (wx, bx) = linear_values(&gate.input_transform, "a GRU input transform")?;
            let (wh, bh) = linear_values(&gate.hidden_transform, "a GRU hidden transform")?;
            interleave_gate(&mut input_weight, &wx, d_input, d_hidden, g);
            interleave_gate(&mut hidden_weight, &wh, d_hidden, d_hidden, g);
            input_bias.extend_from_slice(&bx);
            hidden_bias.extend_from_slice(&bh);
        }
        let (head_weight, head_b) = linear_values(head, "the head")?;
        Ok(GruWeights {
            d_input,
            d_hidden,
            input_weight,
            input_bias,
            hidden_weight,
            hidden_bias,
            head_weight,
            head_bias: head_b.first().copied().unwrap_or(0.0),
            clip: gru.clip.map(|c| c as f32),
        })
    }

    /// Write these weights into a burn GRU and head of the same shape: the inverse of
    /// [`GruWeights::from_burn`]. Each parameter keeps its id and save mapping (only its
    /// value changes), so the module saves to the same model file format.
    pub fn write_burn(&self, gru: &mut Gru, head: &mut Linear) -> Result<(), CellError> {
        let (f_burn, h_burn) = Self::burn_shape(gru, head)?;
        if (f_burn, h_burn) != (self.d_input, self.d_hidden) {
            return Err(CellError::Unsupported {
                what: format!(
                    "GRU is {f_burn}->{h_burn}, the weights are {}->{}",
                    self.d_input, self.d_hidden
                ),
            });
        }
        self.check_shapes()?;
        let (f, h) = (self.d_input, self.d_hidden);
        let gates = [&mut gru.update_gate, &mut gru.reset_gate, &mut gru.new_gate];
        for (g, gate) in gates.into_iter().enumerate() {
            let bias = |b: &[f32]| b[g * h..(g + 1) * h].to_vec();
            let wx = deinterleave_gate(&self.input_weight, f, h, g);
            let wh = deinterleave_gate(&self.hidden_weight, h, h, g);
            set_linear(&mut gate.input_transform, wx, bias(&self.input_bias))?;
            set_linear(&mut gate.hidden_transform, wh, bias(&self.hidden_bias))?;
        }
        set_linear(head, self.head_weight.clone(), vec![self.head_bias])
    }

    fn check_shapes(&self) -> Result<(), CellError> {
        let (f, h) = (self.d_input, self.d_hidden);
        let expect = [
            ("input_weight", f * 3 * h, self.input_weight.len()),
            ("input_bias", 3 * h, self.input_bias.len()),
            ("hidden_weight", h * 3 * h, self.hidden_weight.len()),
            ("hidden_bias", 3 * h, self.hidden_bias.len()),
            ("head_weight", h, self.head_weight.len()),
        ];
        for (what, expected, found) in expect {
            if expected != found {
                return Err(CellError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        if f == 0 || h == 0 {
            return Err(CellError::Unsupported {
                what: format!("GRU has {f} inputs and {h} hidden units"),
            });
        }
        Ok(())
    }
}

/// Copy gate `g`'s `[rows][h]` weights into columns `g*h..(g+1)*h` of `[rows][3h]`.
fn interleave_gate(dst: &mut [f32], src: &[f32], rows: usize, h: usize, g: usize) {
    for (d, s) in dst
        .chunks_exact_mut(3 * h)
        .zip(src.chunks_exact(h))
        .take(rows)
    {
        d[g * h..(g + 1) * h].copy_from_slice(s);
    }
}

/// Gate `g`'s `[rows][h]` weights out of columns `g*h..(g+1)*h` of `[rows][3h]`.
fn deinterleave_gate(src: &[f32], rows: usize, h: usize, g: usize) -> Vec<f32> {
    src.chunks_exact(3 * h)
        .take(rows)
        .flat_map(|row| &row[g * h..(g + 1) * h])
        .copied()
        .collect()
}

/// Replace a linear layer's weight `[d_in, d_out]` and bias values in place. A layer
/// without bias only accepts all-zero bias values (what `from_burn` reads for it).
fn set_linear(lin: &mut Linear, weight: Vec<f32>, bias: Vec<f32>) -> Result<(), CellError> {
    let dims = lin.weight.val().dims();
    lin.weight = lin
        .weight
        .clone()
        .map(|t| Tensor::from_data(TensorData::new(weight, dims), &t.device()));
    match &mut lin.bias {
        Some(b) => {
            let n = bias.len();
            *b = b
                .clone()
                .map(|t| Tensor::from_data(TensorData::new(bias, [n]), &t.device()));
        }
        None if bias.iter().all(|&v| v == 0.0) => {}
        None => {
            return Err(CellError::Unsupported {
                what: "linear layer has no bias, the weights have one".into(),
            })
        }
    }
    Ok(())
}

/// Instruction set a [`GruCell`] runs its kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the compilation target guarantees (SSE2 on x86-64), no FMA.
    Portable,
    /// AVX2 with fused multiply-add.
    Avx2Fma,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Isa {
    /// Instruction sets this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2Fma);
                if is_x86_feature_detected!("avx512f") {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }

    /// The fastest instruction set this CPU can run.
    pub fn best() -> Isa {
        Isa::available().last().copied().unwrap_or(Isa::Portable)
    }
}

/// The GRU + head as an allocation-free, vectorised inference cell.
#[derive(Debug, Clone)]
pub struct GruCell {
    f: usize,
    h: usize,
    /// `3h` rounded up to a multiple of [`NR`].
    cols: usize,
    /// Input weights in panels: `[cols / NR][f][NR]`.
    wx: Vec<f32>,
    /// Hidden weights in panels: `[cols / NR][h][NR]`.
    wh: Vec<f32>,
    /// Biases padded to `cols`.
    bx: Vec<f32>,
    bh: Vec<f32>,
    head_w: Vec<f32>,
    head_b: f32,
    clip: Option<f32>,
    isa: Isa,
}

thread_local! {
    /// Per-thread scratch (gate pre-activations of one row tile, packed inputs): grows
    /// to the largest model stepped on the thread, then is reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Re-lay `[k][3h]` row-major weights into `[cols / NR][k][NR]` panels, zero padded.
fn panels(w: &[f32], k: usize, h: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; cols * k];
    for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        for (row, dst) in panel.chunks_exact_mut(NR).enumerate() {
            for (c, d) in dst.iter_mut().enumerate() {
                let col = p * NR + c;
                if col < 3 * h {
                    *d = w[row * 3 * h + col];
                }
            }
        }
    }
    out
}

fn padded(b: &[f32], cols: usize) -> Vec<f32> {
    let mut v = b.to_vec();
    v.resize(cols, 0.0);
    v
}

impl GruCell {
    /// The cell for a model.
    ///
    /// # Panics
    /// If the model's GRU is not burn's default GRU with a one-logit head. `AccessModel`
    /// only ever builds that (its architecture is code, not file contents), and the
    /// unit tests compare the cell with it; use [`GruCell::try_from_model`] otherwise.
    pub fn from_model(model: &AccessModel) -> GruCell {
        Self::try_from_model(model).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The cell for a model, or why the model's architecture is not supported.
    pub fn try_from_model(model: &AccessModel) -> Result<GruCell, CellError> {
        Self::from_weights(&model.export_weights()?)
    }

    /// The cell for exported weights, using the fastest instruction set available.
    pub fn from_weights(w: &GruWeights) -> Result<GruCell, CellError> {
        w.check_shapes()?;
        let (f, h) = (w.d_input, w.d_hidden);
        let cols = (3 * h).div_ceil(NR) * NR;
        Ok(GruCell {
            f,
            h,
            cols,
            wx: panels(&w.input_weight, f, h, cols),
            wh: panels(&w.hidden_weight, h, h, cols),
            bx: padded(&w.input_bias, cols),
            bh: padded(&w.hidden_bias, cols),
            head_w: w.head_weight.clone(),
            head_b: w.head_bias,
            clip: w.clip,
            isa: Isa::best(),
        })
    }

    /// The same cell running `isa`, or `None` if this CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Option<GruCell> {
        Isa::available().contains(&isa).then(|| {
            self.isa = isa;
            self
        })
    }

    /// Instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Features per row.
    pub fn d_input(&self) -> usize {
        self.f
    }

    /// Hidden state size.
    pub fn d_hidden(&self) -> usize {
        self.h
    }

    /// Step `n = probs.len()` rows: features `xs` (`n * d_input`), states `hs`
    /// (`n * d_hidden`, updated in place), probabilities of access into `probs`.
    /// Allocation-free once the thread's scratch has grown to this model's size.
    ///
    /// # Panics
    /// If the slice lengths do not agree with `probs.len()` and the model's sizes.
    pub fn step(&self, xs: &[f32], hs: &mut [f32], probs: &mut [f32]) {
        let n = probs.len();
        assert_eq!(xs.len(), n * self.f, "GruCell::step: xs is not n * d_input");
        assert_eq!(
            hs.len(),
            n * self.h,
            "GruCell::step: hs is not n * d_hidden"
        );
        if n == 0 {
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = scratch_len(self);
            if s.len() < need {
                s.resize(need, 0.0);
            }
            self.dispatch(xs, hs, probs, &mut s[..need]);
        });
    }

    /// Step one row: features `x` (`d_input`), state `h` (`d_hidden`, updated in
    /// place); returns the probability of access.
    pub fn step_one(&self, x: &[f32], h: &mut [f32]) -> f32 {
        let mut p = [0.0f32];
        self.step(x, h, &mut p);
        p[0]
    }

    fn dispatch(&self, xs: &[f32], hs: &mut [f32], probs: &mut [f32], scratch: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            Isa::Portable => step_rows::<Unfused, 2, false>(self, xs, hs, probs, scratch),
            // SAFETY: `isa` is only ever set to an instruction set that
            // `Isa::available()` found on this CPU (`from_weights`, `with_isa`).
            Isa::Avx2Fma => unsafe { x86::step_avx2(self, xs, hs, probs, scratch) },
            // SAFETY: as above.
            Isa::Avx512 => unsafe { x86::step_avx512(self, xs, hs, probs, scratch) },
        }
        #[cfg(not(target_arch = "x86_64"))]
        step_rows::<Unfused, 2, false>(self, xs, hs, probs, scratch);
    }
}

/// Largest row tile any kernel uses.
const MAX_MR: usize = 4;

fn scratch_len(cell: &GruCell) -> usize {
    2 * MAX_MR * cell.cols + MAX_MR * cell.f.max(cell.h)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{step_rows, Fused, GruCell};

    /// [`step_rows`] compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn step_avx2(
        cell: &GruCell,
        xs: &[f32],
        hs: &mut [f32],
        probs: &mut [f32],
        scratch: &mut [f32],
    ) {
        step_rows::<Fused, 4, false>(cell, xs, hs, probs, scratch);
    }

    /// [`step_rows`] compiled for AVX-512.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn step_avx512(
        cell: &GruCell,
        xs: &[f32],
        hs: &mut [f32],
        probs: &mut [f32],
        scratch: &mut [f32],
    ) {
        step_rows::<Fused, 4, true>(cell, xs, hs, probs, scratch);
    }
}

/// How `a * b + c` is computed: fused where the target has FMA (one rounding, one
/// instruction); separately where it does not (`mul_add` would call a slow libm fma).
pub(super) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

pub(super) struct Fused;
pub(super) struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Step all rows in tiles of `MR` rows, the remainder one row at a time.
#[inline(always)]
fn step_rows<M: MulAdd, const MR: usize, const SPLIT: bool>(
    cell: &GruCell,
    xs: &[f32],
    hs: &mut [f32],
    probs: &mut [f32],
    scratch: &mut [f32],
) {
    let (f, h) = (cell.f, cell.h);
    let full = probs.len() / MR * MR;
    let (xs_tiles, xs_rest) = xs.split_at(full * f);
    let (hs_tiles, hs_rest) = hs.split_at_mut(full * h);
    let (p_tiles, p_rest) = probs.split_at_mut(full);
    for ((x, hh), p) in xs_tiles
        .chunks_exact(MR * f)
        .zip(hs_tiles.chunks_exact_mut(MR * h))
        .zip(p_tiles.chunks_exact_mut(MR))
    {
        step_tile::<M, MR, SPLIT>(cell, x, hh, p, scratch);
    }
    for ((x, hh), p) in xs_rest
        .chunks_exact(f)
        .zip(hs_rest.chunks_exact_mut(h))
        .zip(p_rest.chunks_exact_mut(1))
    {
        step_tile::<M, 1, SPLIT>(cell, x, hh, p, scratch);
    }
    // The tiles left logits; one pass over all rows vectorises the head's sigmoid.
    for p in probs.iter_mut() {
        *p = sigmoid::<M>(*p);
    }
}

/// Step `R` rows: the two gate products, then the element-wise gate update and head.
#[inline(always)]
fn step_tile<M: MulAdd, const R: usize, const SPLIT: bool>(
    cell: &GruCell,
    xs: &[f32],
    hs: &mut [f32],
    probs: &mut [f32],
    scratch: &mut [f32],
) {
    let cols = cell.cols;
    let (gx, rest) = scratch.split_at_mut(MAX_MR * cell.cols);
    let (gh, pack) = rest.split_at_mut(MAX_MR * cell.cols);
    let (gx, gh) = (&mut gx[..R * cols], &mut gh[..R * cols]);
    gate_product::<M, R, SPLIT>(xs, cell.f, &cell.wx, &cell.bx, cols, pack, gx);
    gate_product::<M, R, SPLIT>(hs, cell.h, &cell.wh, &cell.bh, cols, pack, gh);
    for (((h, p), gx), gh) in hs
        .chunks_exact_mut(cell.h)
        .zip(probs.iter_mut())
        .zip(gx.chunks_exact(cols))
        .zip(gh.chunks_exact(cols))
    {
        *p = update_row::<M>(cell, gx, gh, h);
    }
}

/// `out[r][..] = bias + a[r][..k] . w` for `R` rows: `a` is `R x k` row-major, `w`
/// is in `[cols / NR][k][NR]` panels, `out` is `R x cols`.
#[inline(always)]
fn gate_product<M: MulAdd, const R: usize, const SPLIT: bool>(
    a: &[f32],
    k: usize,
    w: &[f32],
    bias: &[f32],
    cols: usize,
    pack: &mut [f32],
    out: &mut [f32],
) {
    // Transpose the tile's inputs to `[k][R]` so the inner loop reads them in order.
    // (Written store-contiguous: the other loop order vectorised into scatters.)
    let pack = &mut pack[..k * R];
    for (kk, dst) in pack.chunks_exact_mut(R).enumerate() {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = a[r * k + kk];
        }
    }
    for (p, (wp, bp)) in w
        .chunks_exact(k * NR)
        .zip(bias.chunks_exact(NR))
        .enumerate()
    {
        let mut acc = [[0.0f32; NR]; R];
        for row in acc.iter_mut() {
            row.copy_from_slice(bp);
        }
        if SPLIT {
            // Even and odd k into separate accumulators: twice the independent
            // multiply-add chains, to cover the FMA latency when R rows of one
            // vector each are too few (AVX-512). Two loops of R rows each, not one
            // of 2R, so LLVM still unrolls them fully.
            let mut odd = [[0.0f32; NR]; R];
            let (wpairs, pairs) = (wp.chunks_exact(2 * NR), pack.chunks_exact(2 * R));
            let (wlast, alast) = (wpairs.remainder(), pairs.remainder());
            for (wk, ak) in wpairs.zip(pairs) {
                mul_add_rows::<M, R>(&mut acc, &ak[..R], &wk[..NR]);
                mul_add_rows::<M, R>(&mut odd, &ak[R..], &wk[NR..]);
            }
            if !alast.is_empty() {
                mul_add_rows::<M, R>(&mut acc, alast, wlast);
            }
            for (a, o) in acc.iter_mut().zip(&odd) {
                for (x, y) in a.iter_mut().zip(o) {
                    *x += y;
                }
            }
        } else {
            for (wk, ak) in wp.chunks_exact(NR).zip(pack.chunks_exact(R)) {
                mul_add_rows::<M, R>(&mut acc, ak, wk);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            out[r * cols + p * NR..r * cols + (p + 1) * NR].copy_from_slice(acc_r);
        }
    }
}

/// `acc[r][..] += a[r] * w[..]` for the `R` rows of a tile.
#[inline(always)]
fn mul_add_rows<M: MulAdd, const R: usize>(acc: &mut [[f32; NR]; R], a: &[f32], w: &[f32]) {
    for (acc_r, &av) in acc.iter_mut().zip(a) {
        for (x, &wv) in acc_r.iter_mut().zip(w) {
            *x = M::mul_add(av, wv, *x);
        }
    }
}

/// Gate non-linearities and the state update for one row; returns the head's logit.
/// Works in fixed blocks of [`NR`] units (the last one zero-padded through a copy):
/// a loop over a runtime `h` lets LLVM pick a vector width times unroll larger than
/// `h` itself and run everything in its scalar remainder loop.
#[inline(always)]
fn update_row<M: MulAdd>(cell: &GruCell, gx: &[f32], gh: &[f32], h: &mut [f32]) -> f32 {
    let n = cell.h;
    let clip = cell.clip.map_or((f32::MIN, f32::MAX), |c| (-c, c));
    let mut logit = [0.0f32; NR];
    let mut j = 0;
    while j < n {
        let len = NR.min(n - j);
        // Gate inputs z, r, n from both products, and the head's weights.
        let sources = [
            &gx[j..j + len],
            &gh[j..j + len],
            &gx[n + j..n + j + len],
            &gh[n + j..n + j + len],
            &gx[2 * n + j..2 * n + j + len],
            &gh[2 * n + j..2 * n + j + len],
            &cell.head_w[j..j + len],
        ];
        let full = match (
            <&mut [f32; NR]>::try_from(&mut h[j..j + len]),
            sources.map(<&[f32; NR]>::try_from),
        ) {
            // A full block is used in place (fixed-size references, no copies).
            (Ok(state), [Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f), Ok(g)]) => {
                update_lanes::<M>([a, b, c, d, e, f, g], state, &mut logit, clip);
                true
            }
            _ => false,
        };
        if !full {
            // The last, partial block goes through zero-padded copies (padded units
            // have zero head weight, so they add nothing to the logit).
            let mut lanes = [[0.0f32; NR]; 7];
            for (lane, src) in lanes.iter_mut().zip(sources) {
                lane[..len].copy_from_slice(src);
            }
            let mut padded = [0.0f32; NR];
            padded[..len].copy_from_slice(&h[j..j + len]);
            let [a, b, c, d, e, f, g] = &lanes;
            update_lanes::<M>([a, b, c, d, e, f, g], &mut padded, &mut logit, clip);
            h[j..j + len].copy_from_slice(&padded[..len]);
        }
        j += len;
    }
    lane_sum(logit) + cell.head_b
}

/// [`NR`] units of the GRU update, and their part of the head's dot product.
#[inline(always)]
fn update_lanes<M: MulAdd>(
    [xz, hz, xr, hr, xn, hn, head]: [&[f32; NR]; 7],
    state: &mut [f32; NR],
    logit: &mut [f32; NR],
    (lo, hi): (f32, f32),
) {
    for j in 0..NR {
        let z = sigmoid::<M>(xz[j] + hz[j]);
        let r = sigmoid::<M>(xr[j] + hr[j]);
        let cand = tanh::<M>(M::mul_add(r, hn[j], xn[j]));
        // (1 - z) * n + z * h, as burn computes it.
        let new = ((1.0 - z) * cand + z * state[j]).clamp(lo, hi);
        state[j] = new;
        logit[j] = M::mul_add(new, head[j], logit[j]);
    }
}

/// `e^x` for the gate non-linearities: Cephes' `expf` (range reduction by ln 2, degree
/// 5 polynomial, ~1 ulp), written without branches or libm calls so loops over it
/// vectorise. Inputs are clamped to where the result is a normal float.
#[inline(always)]
pub(super) fn exp<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `x - n ln 2` stays exact for |n| <= 127.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = M::mul_add(p, r, 1.398_2e-3);
    p = M::mul_add(p, r, 8.333_452e-3);
    p = M::mul_add(p, r, 4.166_579_6e-2);
    p = M::mul_add(p, r, 0.166_666_65);
    p = M::mul_add(p, r, 0.5);
    let y = M::mul_add(p, r2, r) + 1.0;
    // 2^n: n (in -126..=127) sits in the low bits of `t`'s mantissa.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    y * scale
}

#[inline(always)]
pub(super) fn sigmoid<M: MulAdd>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<M>(-x))
}

#[inline(always)]
pub(super) fn tanh<M: MulAdd>(x: f32) -> f32 {
    2.0 / (1.0 + exp::<M>(-2.0 * x)) - 1.0
}

/// Sum of `NR` lanes by halving, so the adds are 4 deep rather than 16.
#[inline(always)]
pub(super) fn lane_sum(mut v: [f32; NR]) -> f32 {
    let mut width = NR / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests;
