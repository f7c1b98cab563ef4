//! The matrix products of the training step, over row-major arrays whose column
//! counts are multiples of [`NR`]: each output panel of `NR` columns is a fixed-width
//! multiply-add that LLVM vectorises, with a tile of rows' accumulators in registers.
//! `#[inline(always)]` so each is compiled into the caller's instruction set.

use super::{block, MulAdd, NR};

/// `out[i] = init[i] + a[i] . w` for every row `i`: `a` is `rows x k`, `w` is
/// `k x cols`, `out` is `rows x cols`; `init` is `bias` (one row, `cols`) for every
/// row, or `out`'s current values when `bias` is `None`. `MR` rows per register
/// tile.
#[inline(always)]
pub(super) fn gemm<M: MulAdd, const MR: usize>(
    a: &[f32],
    k: usize,
    w: &[f32],
    cols: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let rows = out.len() / cols;
    debug_assert_eq!(a.len(), rows * k);
    debug_assert_eq!(w.len(), k * cols);
    let full = rows / MR * MR;
    let (a_tiles, a_rest) = a.split_at(full * k);
    let (out_tiles, out_rest) = out.split_at_mut(full * cols);
    for (a, out) in a_tiles
        .chunks_exact(MR * k)
        .zip(out_tiles.chunks_exact_mut(MR * cols))
    {
        gemm_tile::<M, MR>(a, k, w, cols, bias, out);
    }
    for (a, out) in a_rest.chunks_exact(k).zip(out_rest.chunks_exact_mut(cols)) {
        gemm_tile::<M, 1>(a, k, w, cols, bias, out);
    }
}

/// [`gemm`] for `R` rows.
#[inline(always)]
fn gemm_tile<M: MulAdd, const R: usize>(
    a: &[f32],
    k: usize,
    w: &[f32],
    cols: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let a_rows: [&[f32]; R] = std::array::from_fn(|r| &a[r * k..(r + 1) * k]);
    for c0 in (0..cols).step_by(NR) {
        let mut acc = [[0.0f32; NR]; R];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            *acc_r = *block(bias.unwrap_or(&out[r * cols..]), c0);
        }
        for (kk, w_row) in w.chunks_exact(cols).enumerate() {
            let wk = block(w_row, c0);
            for (acc_r, a_r) in acc.iter_mut().zip(&a_rows) {
                let av = a_r[kk];
                for (x, &wv) in acc_r.iter_mut().zip(wk) {
                    *x = M::mul_add(av, wv, *x);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            out[r * cols + c0..r * cols + c0 + NR].copy_from_slice(acc_r);
        }
    }
}

/// `out = a^T . g`: `a` is `rows x k`, `g` is `rows x cols`, `out` is `k x cols` (the
/// weight gradient of a product `a . w` whose output gradient is `g`). `MR` output
/// rows per register tile.
#[inline(always)]
pub(super) fn gemm_at<M: MulAdd, const MR: usize>(
    a: &[f32],
    k: usize,
    g: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(a.len() / k, g.len() / cols);
    debug_assert_eq!(out.len(), k * cols);
    let full = k / MR * MR;
    let (tiles, rest) = out.split_at_mut(full * cols);
    for (t, out) in tiles.chunks_exact_mut(MR * cols).enumerate() {
        gemm_at_tile::<M, MR>(a, k, t * MR, g, cols, out);
    }
    for (r, out) in rest.chunks_exact_mut(cols).enumerate() {
        gemm_at_tile::<M, 1>(a, k, full + r, g, cols, out);
    }
}

/// Rows `k0..k0 + R` of [`gemm_at`]'s output.
#[inline(always)]
fn gemm_at_tile<M: MulAdd, const R: usize>(
    a: &[f32],
    k: usize,
    k0: usize,
    g: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    for c0 in (0..cols).step_by(NR) {
        let mut acc = [[0.0f32; NR]; R];
        for (a_i, g_i) in a.chunks_exact(k).zip(g.chunks_exact(cols)) {
            let gb = block(g_i, c0);
            let a_k: &[f32; R] = a_i[k0..k0 + R].try_into().expect("R values");
            for (acc_r, &av) in acc.iter_mut().zip(a_k) {
                for (x, &gv) in acc_r.iter_mut().zip(gb) {
                    *x = M::mul_add(av, gv, *x);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            out[r * cols + c0..r * cols + c0 + NR].copy_from_slice(acc_r);
        }
    }
}

/// `out[c] = sum over rows of g[.][c]` (a bias's gradient).
#[inline(always)]
pub(super) fn col_sums(g: &[f32], cols: usize, out: &mut [f32]) {
    for c0 in (0..cols).step_by(NR) {
        let mut acc = [0.0f32; NR];
        for g_i in g.chunks_exact(cols) {
            for (x, &v) in acc.iter_mut().zip(block(g_i, c0)) {
                *x += v;
            }
        }
        out[c0..c0 + NR].copy_from_slice(&acc);
    }
}
