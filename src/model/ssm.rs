//! The SSM heads of a Hymba layer: Mamba-1's selective state-space model, per channel c of D.
//!
//! ```text
//! u  = SiLU(conv(x) + conv_bias)            causal depthwise conv over time, kernel K
//! [dt | B | C] = u · x_projᵀ                widths R, N, N (then RMSNorm each, if configured)
//! Δ  = softplus(dt · dt_projᵀ + dt_bias)    (T, D)
//! A  = −exp(A_log)                          (D, N)
//! s_c ← exp(Δ_t,c · A_c) ⊙ s_c + Δ_t,c · u_t,c · B_t      state s_c ∈ ℝᴺ, starts at 0
//! y_t,c = C_t · s_c + D_c · u_t,c
//! y  = y ⊙ SiLU(z)
//! ```
//!
//! The state carried between calls is explicit ([`crate::state::cache::SsmState`]): the last K−1 conv inputs and the
//! D × N scan state, so a sequence can be processed in chunks (prefill, then single steps).

use super::norm::rms_norm;
use super::parallel::{for_each_row, map_rows};
use crate::base::tasks::items_per_task;
use super::layer::Layer;
use super::segment::{for_each_part, row_kind, Part};
use crate::state::cache::SsmState;
use crate::base::buffer::shaped;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};
use crate::kernels::simd::{array_of, best_simd, exp, silu_in_place, softplus_in_place, times_silu};
use rayon::prelude::*;
use std::ops::Range;

/// Causal depthwise conv: `out[t, c] = bias[c] + Σ_k w[k, c] · x[t − K + 1 + k, c]`, where rows
/// before `x` come from `history` (the previous K−1 inputs). Updates `history` to the last K−1
/// rows. x: (T, D), w: (K, D) (tap-major: a tap's weights for all channels are one row),
/// history: (K−1, D) → out (T, D)
pub fn causal_conv1d(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    history: &mut Array2<f32>,
    mut out: ArrayViewMut2<f32>,
) {
    let (t, d) = x.dim();
    let k = w.nrows();
    debug_assert_eq!((w.ncols(), history.dim(), out.dim()), (d, (k - 1, d), (t, d)));
    // Each output row reads only x and the history as they were: rows can go to any thread.
    let old_history: &Array2<f32> = history;
    // The padded input is [history; x] (K−1+T, D): output row ti reads its rows ti..ti+K.
    for_each_row(out.view_mut(), |ti, mut row| {
        // Σ_j w[c, j] · padded[ti + j, c], a tap at a time, from −0.0 as `Iterator::sum` (D)
        row.fill(-0.0);
        for j in 0..k {
            let input = match ti + j < k - 1 {
                true => old_history.row(ti + j),
                false => x.row(ti + j - (k - 1)),
            }; // (D)
            Zip::from(&mut row).and(w.row(j)).and(input).for_each(|acc, &w, &v| *acc += w * v);
        }
        // + bias[c], or + 0.0 without one (so an all-zero sum is +0.0 either way)
        match bias {
            Some(b) => Zip::from(&mut row).and(b).for_each(|acc, &b| *acc += b),
            None => row.map_inplace(|acc| *acc += 0.0),
        }
    });
    // history ← padded rows T..T+K−1. Row r reads padded row T + r > r: not yet overwritten.
    for r in 0..k - 1 {
        match t + r < k - 1 {
            true => {
                let (mut to, from) = history.multi_slice_mut((s![r, ..], s![t + r, ..]));
                to.assign(&from);
            }
            false => history.row_mut(r).assign(&x.row(t + r - (k - 1))),
        }
    }
}

/// What the selective scan reads (docs/MODEL.md §3.6): the input u and step sizes Δ of every
/// row and channel, the decay rates A and skip weights D of every channel, and B and C of every
/// row. u, Δ: (T, D); A: (D, N); B, C: (T, N); D: (D)
#[derive(Debug, Clone, Copy)]
pub struct ScanInputs<'a> {
    pub u: ArrayView2<'a, f32>,
    pub delta: ArrayView2<'a, f32>,
    pub a: ArrayView2<'a, f32>,
    pub b: ArrayView2<'a, f32>,
    pub c: ArrayView2<'a, f32>,
    pub d: ArrayView1<'a, f32>,
}

impl<'a> ScanInputs<'a> {
    /// The same rows, only the channels `channels`: u, Δ (T, D_block); A (D_block, N); D (D_block).
    fn channels(&self, channels: Range<usize>) -> ScanInputs<'a> {
        ScanInputs {
            u: self.u.slice_move(s![.., channels.clone()]),
            delta: self.delta.slice_move(s![.., channels.clone()]),
            a: self.a.slice_move(s![channels.clone(), ..]),
            b: self.b,
            c: self.c,
            d: self.d.slice_move(s![channels]),
        }
    }
}

/// The selective scan, sequentially over time: the plain reference every faster variant is
/// tested against. `x` as [`ScanInputs`]; state: (D, N) → y (T, D)
pub fn selective_scan_reference(x: ScanInputs, state: &mut Array2<f32>) -> Array2<f32> {
    let ScanInputs { u, delta, a, b, c, d } = x;
    let (t, d_inner) = u.dim();
    let n = a.ncols();
    debug_assert_eq!((delta.dim(), b.dim(), c.dim(), state.dim()), ((t, d_inner), (t, n), (t, n), (d_inner, n)));
    let mut y = Array2::zeros((t, d_inner)); // (T, D)
    for ti in 0..t {
        for ch in 0..d_inner {
            let (dt, ut) = (delta[[ti, ch]], u[[ti, ch]]);
            let mut acc = 0.0;
            for j in 0..n {
                let s = (dt * a[[ch, j]]).exp() * state[[ch, j]] + dt * ut * b[[ti, j]];
                state[[ch, j]] = s;
                acc += c[[ti, j]] * s;
            }
            y[[ti, ch]] = acc + d[ch] * ut;
        }
    }
    y
}

/// The same scan, fused per channel and run in parallel over blocks of channels: each channel
/// keeps its N-dimensional state in its row of `state` and walks through time once. Per channel
/// the arithmetic is that of [`selective_scan_reference`], in the same order, except that the
/// decays `exp(Δ·A)` come from [`crate::kernels::simd::exp`] (within 1 ulp, vectorised) rather than
/// libm's: tested equal to the reference within 1e-6. Each task then calls `then(channels, y)`
/// on the columns of y it scanned (the SSM heads gate them there, in parallel).
/// `x` as [`ScanInputs`]; state: (D, N) → y (T, D)
pub fn selective_scan(
    x: ScanInputs,
    state: &mut Array2<f32>,
    mut y: ArrayViewMut2<f32>,
    then: impl Fn(Range<usize>, ArrayViewMut2<f32>) + Sync + Send,
) {
    let ScanInputs { u, delta, a, b, c, .. } = x;
    let (t, d_inner) = u.dim();
    let n = a.ncols();
    debug_assert_eq!((delta.dim(), b.dim(), c.dim(), state.dim()), ((t, d_inner), (t, n), (t, n), (d_inner, n)));
    debug_assert_eq!(y.dim(), (t, d_inner)); // (T, D), filled a block of columns (channels) per task
    // At least 64 channels a task, whole groups of SCAN_GROUP, in whole rounds of the threads.
    let per_task = items_per_task(d_inner, 64, rayon::current_num_threads()).next_multiple_of(SCAN_GROUP);
    y.axis_chunks_iter_mut(Axis(1), per_task)
        .into_par_iter()
        .zip(state.axis_chunks_iter_mut(Axis(0), per_task))
        .enumerate()
        .for_each(|(task, (mut y, state))| {
            let channels = task * per_task..task * per_task + y.ncols();
            scan_channels(x.channels(channels.clone()), state, y.view_mut());
            then(channels, y);
        });
}

best_simd! {
    /// [`selective_scan`] of a block of channels, on the best vector unit of this CPU.
    /// `x` for a block of channels (u, Δ: (T, D_block); A: (D_block, N); D: (D_block));
    /// state: (D_block, N) → y (T, D_block)
    fn scan_channels(x: ScanInputs, state: ArrayViewMut2<f32>, y: ArrayViewMut2<f32>) = scan_channels_body
}

/// Channels go in groups of [`SCAN_GROUP`] ([`scan_group`]), so that the work of one (its N
/// decays, its C · s: a chain of N dependent additions) overlaps with the others'.
#[inline(always)]
fn scan_channels_body(x: ScanInputs, mut state: ArrayViewMut2<f32>, mut y: ArrayViewMut2<f32>) {
    let ScanInputs { u, delta, a, b, c, d } = x;
    let channels = u.ncols();
    let a = a.to_slice().expect("rows of A, contiguous"); // (D_block·N)
    let s = state.as_slice_mut().expect("rows of the state, contiguous"); // (D_block·N)
    let inputs = GroupInputs { u, delta, a, b, c, d };
    let mut first = 0;
    while first < channels {
        if first + SCAN_GROUP <= channels {
            scan_group::<SCAN_GROUP>(first, &inputs, s, y.view_mut());
            first += SCAN_GROUP;
        } else {
            scan_group::<1>(first, &inputs, s, y.view_mut());
            first += 1;
        }
    }
}

/// Channels scanned together by [`scan_group`].
const SCAN_GROUP: usize = 4;

/// What [`scan_group`] reads: [`ScanInputs`] with A as one slice. u, Δ (T, D_block);
/// A (D_block·N); B, C (T, N); D (D_block).
struct GroupInputs<'a> {
    u: ArrayView2<'a, f32>,
    delta: ArrayView2<'a, f32>,
    a: &'a [f32],
    b: ArrayView2<'a, f32>,
    c: ArrayView2<'a, f32>,
    d: ArrayView1<'a, f32>,
}

/// The scan of the `G` channels `first..first + G` through every row, their state in `s`
/// (D_block·N), into their columns of y (T, D_block).
#[inline(always)]
fn scan_group<const G: usize>(first: usize, x: &GroupInputs, s: &mut [f32], mut y: ArrayViewMut2<f32>) {
    let n = x.b.ncols();
    for ti in 0..x.u.nrows() {
        let (b_t, c_t) = (x.b.row(ti), x.c.row(ti)); // (N)
        let (b_t, c_t) = (b_t.as_slice().expect("a row of B"), c_t.as_slice().expect("a row of C"));
        // s ← exp(Δ·A) ⊙ s + Δ·u·B, channel by channel, all N at once
        for ch in first..first + G {
            let (dt, ut) = (x.delta[[ti, ch]], x.u[[ti, ch]]);
            let (a, s) = (&x.a[ch * n..(ch + 1) * n], &mut s[ch * n..(ch + 1) * n]);
            for ((s, &a), &b) in s.iter_mut().zip(a).zip(b_t) {
                *s = exp(dt * a) * *s + dt * ut * b;
            }
        }
        // y = C · s + D·u: each channel's sum in order (as the reference adds), the G interleaved
        let s: [&[f32]; G] = array_of(|k| &s[(first + k) * n..(first + k + 1) * n]);
        let mut acc = [0f32; G];
        for (j, &c_j) in c_t.iter().enumerate() {
            for k in 0..G {
                acc[k] += c_j * s[k][j];
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            let ch = first + k;
            y[[ti, ch]] = acc + x.d[ch] * x.u[[ti, ch]];
        }
    }
}

/// `part` RMS-normalised into `out` if the config has that norm (`mamba_inner_layernorms`),
/// else `part` itself.
fn maybe_rms_norm<'a>(
    part: ArrayView2<'a, f32>,
    weight: &Option<Array1<f32>>,
    eps: f32,
    out: &'a mut Array2<f32>,
) -> ArrayView2<'a, f32> {
    match weight {
        Some(w) => rms_norm(part, w.view(), eps, out),
        None => part,
    }
}

/// The SSM heads' intermediate activations (see [`crate::base::buffer`]).
#[derive(Debug, Clone, Default)]
pub struct SsmBuffers {
    /// (T, D)
    u: Array2<f32>,
    /// (T, R + 2N)
    dt_b_c: Array2<f32>,
    /// (T, R), (T, N), (T, N): written only when normalised
    dt: Array2<f32>,
    b: Array2<f32>,
    c: Array2<f32>,
    /// (T, D): Δ, after softplus
    pub(crate) delta: Array2<f32>,
    /// This layer's SSM state of each of the pass's sequences, while the SSM heads hold them (else
    /// empty)
    pub(crate) states: Vec<SsmState>,
    /// (T, D): the SSM heads' output, after the SiLU(z) gate
    pub(crate) y: Array2<f32>,
}

/// The SSM heads of `layer` over the rows of a pass: x, z (T, D) → y (T, D) in `buf.y`,
/// advancing the layer's [`SsmState`] of each part's sequence (`buf.states`: one per segment of
/// the pass, as [`for_each_part`] walks them). The conv and the scan run per sequence, on its
/// rows and its state; the projections between them run over all rows at once, as the products
/// of a pass of those parts ([`row_kind`]).
pub fn ssm_heads<'o>(
    layer: Layer,
    x: ArrayView2<f32>,
    z: ArrayView2<f32>,
    parts: &[Part],
    buf: &'o mut SsmBuffers,
) -> ArrayView2<'o, f32> {
    let (w, eps, kind) = (&layer.w.mamba, layer.cfg.rms_norm_eps, row_kind(parts));
    let SsmBuffers { states, y: out, .. } = buf;
    let (r, n) = (w.dt_proj.weight.cols(), w.a.ncols());

    // u = SiLU(conv(x) + conv_bias), each sequence's conv continuing from its history
    let bias = w.conv1d_bias.as_ref().map(|b| b.view());
    let u = shaped(&mut buf.u, x.dim()); // (T, D)
    for_each_part(parts, kind, states, u.view_mut(), |part, state, u| {
        let x = x.slice(s![part.rows.clone(), ..]); // (T_s, D)
        causal_conv1d(x, w.conv1d_weight.view(), bias, &mut state.conv, u) // (T_s, D)
    });
    map_rows(u.view_mut(), silu_in_place);
    let u = buf.u.view(); // (T, D)

    // [dt | B | C] = u · x_projᵀ, each normalised if the config says so
    let dt_b_c = w.x_proj.matmul_t_of(u, kind, &mut buf.dt_b_c); // (T, R + 2N)
    let dt = maybe_rms_norm(dt_b_c.slice_move(s![.., ..r]), &w.dt_layernorm, eps, &mut buf.dt); // (T, R)
    let b = maybe_rms_norm(dt_b_c.slice_move(s![.., r..r + n]), &w.b_layernorm, eps, &mut buf.b); // (T, N)
    let c = maybe_rms_norm(dt_b_c.slice_move(s![.., r + n..]), &w.c_layernorm, eps, &mut buf.c); // (T, N)

    // Δ = softplus(dt · dt_projᵀ + dt_bias), each task of the product finishing its channels
    let delta = w.dt_proj.forward_then(dt, kind, &mut buf.delta, softplus_in_place); // (T, D)

    // The scan, per sequence from its state: y = (C·s + D·u) ⊙ SiLU(z)
    let y = shaped(out, x.dim()); // (T, D)
    for_each_part(parts, kind, states, y.view_mut(), |part, state, y| {
        let rows = part.rows.clone();
        let (u, delta) = (u.slice(s![rows.clone(), ..]), delta.slice(s![rows.clone(), ..])); // (T_s, D)
        let (b, c) = (b.slice(s![rows.clone(), ..]), c.slice(s![rows.clone(), ..])); // (T_s, N)
        let z = z.slice(s![rows, ..]); // (T_s, D)
        // each task gating the channels it scanned
        let gate = |channels: Range<usize>, mut y: ArrayViewMut2<f32>| {
            for (mut y, z) in y.rows_mut().into_iter().zip(z.slice(s![.., channels]).rows()) {
                times_silu(y.as_slice_mut().expect("contiguous"), z.as_slice().expect("contiguous"));
            }
        };
        let x = ScanInputs { u, delta, a: w.a.view(), b, c, d: w.d.view() };
        selective_scan(x, &mut state.scan, y, gate) // (T_s, D)
    });
    y.view()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::softplus;
    use ndarray::array;

    #[test]
    fn conv_is_causal_and_carries_history() {
        // D = 1, K = 3, w = [1, 10, 100] (as (K, D)): out_t = x_{t−2} + 10 x_{t−1} + 100 x_t.
        let w = array![[1.0f32], [10.0], [100.0]];
        let mut hist = Array2::zeros((2, 1));
        let (mut out, mut next) = (Array2::zeros((3, 1)), Array2::zeros((1, 1)));
        causal_conv1d(array![[1.0f32], [2.0], [3.0]].view(), w.view(), None, &mut hist, out.view_mut());
        assert_eq!(out.column(0).to_vec(), vec![100.0, 210.0, 321.0]);
        assert_eq!(hist.column(0).to_vec(), vec![2.0, 3.0]);
        // Continuing with the carried history equals the unsplit sequence.
        causal_conv1d(array![[4.0f32]].view(), w.view(), Some(array![0.5f32].view()), &mut hist, next.view_mut());
        assert_eq!(next[[0, 0]], 2.0 + 30.0 + 400.0 + 0.5);
        assert_eq!(hist.column(0).to_vec(), vec![3.0, 4.0]); // a chunk shorter than K−1 shifts it
    }

    #[test]
    fn scan_matches_hand_computation() {
        // D = 1, N = 1, A = −1, Δ = ln 2 → decay e^{−ln 2} = 0.5; B = C = 1, D = 0.
        let ln2 = 2f32.ln();
        let u = array![[1.0f32], [1.0], [0.0]];
        let delta = Array2::from_elem((3, 1), ln2);
        let ones = Array2::from_elem((3, 1), 1.0f32);
        let mut state = Array2::zeros((1, 1));
        let (a, d) = (array![[-1.0f32]], array![0.0f32]);
        let x = ScanInputs { u: u.view(), delta: delta.view(), a: a.view(), b: ones.view(), c: ones.view(), d: d.view() };
        let y = selective_scan_reference(x, &mut state);
        // s1 = ln2, s2 = 0.5 ln2 + ln2, s3 = 0.5 s2
        let want = [ln2, 1.5 * ln2, 0.75 * ln2];
        for (got, want) in y.column(0).iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!((state[[0, 0]] - 0.75 * ln2).abs() < 1e-6);
    }

    #[test]
    fn parallel_scan_equals_sequential_scan() {
        let (t, d, n) = (7, 5, 3);
        let f = |r: usize, c: usize, k: f32| Array2::from_shape_fn((r, c), |(i, j)| ((i * 13 + j * 5) as f32 * k).sin());
        let (u, delta) = (f(t, d, 0.3), f(t, d, 0.7).mapv(|v| softplus(v) * 0.5));
        let (a, b, c) = (f(d, n, 0.2).mapv(|v| -v.exp()), f(t, n, 0.9), f(t, n, 1.1));
        let dd = Array1::from_shape_fn(d, |i| i as f32 * 0.1);
        let mut s1 = f(d, n, 0.4);
        let mut s2 = s1.clone();
        let x = ScanInputs { u: u.view(), delta: delta.view(), a: a.view(), b: b.view(), c: c.view(), d: dd.view() };
        let y1 = selective_scan_reference(x, &mut s1);
        let mut y2 = Array2::zeros((t, d));
        selective_scan(x, &mut s2, y2.view_mut(), |_, _| {});
        // The same order of operations; only exp differs (≤ 1 ulp per decay).
        let close = |x: &Array2<f32>, y: &Array2<f32>| x.iter().zip(y).all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + x.abs()));
        assert!(close(&y1, &y2), "y: {y1} vs {y2}");
        assert!(close(&s1, &s2), "state: {s1} vs {s2}");
        // Each task hands the channels it scanned to `then`, once: here y·(c + 1) for channel c.
        let (mut s3, mut y3) = (f(d, n, 0.4), Array2::zeros((t, d)));
        selective_scan(x, &mut s3, y3.view_mut(), |channels, mut y| {
            y.columns_mut().into_iter().zip(channels).for_each(|(mut y, ch)| y *= (ch + 1) as f32);
        });
        let scaled = Array2::from_shape_fn((t, d), |(i, ch)| y2[[i, ch]] * (ch + 1) as f32);
        assert_eq!(y3, scaled);
    }

    #[test]
    fn skip_connection_and_softplus() {
        let mut state = Array2::zeros((2, 1));
        let zeros = Array2::zeros((1, 2));
        let (u, a, bc, d) = (array![[2.0f32, 3.0]], array![[-1.0f32], [-1.0]], Array2::zeros((1, 1)), array![0.5f32, -1.0]);
        let x = ScanInputs { u: u.view(), delta: zeros.view(), a: a.view(), b: bc.view(), c: bc.view(), d: d.view() };
        let y = selective_scan_reference(x, &mut state);
        assert_eq!(y.row(0).to_vec(), vec![1.0, -3.0]);
        assert_eq!(softplus(30.0), 30.0);
        assert!((softplus(0.0) - 2f32.ln()).abs() < 1e-7);
    }
}
