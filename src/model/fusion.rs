//! Fusing the two head types (paper eq. 3): each branch is RMS-normalised with its own learned
//! scale (β1, β2 = `pre_avg_layernorm1/2`), the two are averaged, then projected back to H.

use super::norm::inv_rms;
use super::parallel::for_each_row;
use crate::base::buffer::shaped;
use super::layer::Layer;
use ndarray::{Array2, ArrayView2, Zip};

/// `(RMSNorm(attn; β1) + RMSNorm(ssm; β2)) / 2`, over the full width D, β1 and β2 being `layer`'s
/// `pre_avg_layernorm1/2`. (T, D), (T, D) → (T, D)
///
/// One pass over each row: the RMS of both branches' rows first, then the average, element by
/// element, with the arithmetic of [`super::norm::rms_norm`] on each branch (the same results as
/// normalising each branch on its own, without writing one out and reading it back).
pub fn fuse_heads<'o>(layer: Layer, attn: ArrayView2<f32>, ssm: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
    let (w, eps) = (&layer.w.mamba, layer.cfg.rms_norm_eps);
    let (beta1, beta2) = (w.pre_avg_layernorm1.view(), w.pre_avg_layernorm2.view()); // (D) each
    debug_assert_eq!((attn.dim(), beta1.len(), beta2.len()), (ssm.dim(), attn.ncols(), attn.ncols()));
    let out = shaped(out, attn.dim()); // (T, D)
    for_each_row(out.view_mut(), |t, out_row| {
        let (a, s) = (attn.row(t), ssm.row(t)); // (D) each
        let (inv_rms_a, inv_rms_s) = (inv_rms(a, eps), inv_rms(s, eps));
        Zip::from(out_row).and(a).and(s).and(beta1).and(beta2).for_each(|o, &a, &s, &b1, &b2| {
            *o = (a * inv_rms_a * b1 + s * inv_rms_s * b2) * 0.5;
        });
    });
    out.view()
}
