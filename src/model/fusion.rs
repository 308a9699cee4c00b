//! Fusing the two head types (paper eq. 3): each branch is RMS-normalised with its own learned
//! scale (β1, β2 = `pre_avg_layernorm1/2`), the two are averaged, then projected back to H.

use super::norm::{inv_rms, rms_norm};
use super::parallel::for_each_row;
use ndarray::{Array2, ArrayView1, ArrayView2, Zip};

/// `(RMSNorm(attn; β1) + RMSNorm(ssm; β2)) / 2`, over the full width D. (T, D), (T, D) → (T, D)
pub fn fuse_heads<'o>(
    attn: ArrayView2<f32>,
    ssm: ArrayView2<f32>,
    beta1: ArrayView1<f32>,
    beta2: ArrayView1<f32>,
    eps: f32,
    out: &'o mut Array2<f32>,
) -> ArrayView2<'o, f32> {
    debug_assert_eq!(attn.dim(), ssm.dim());
    rms_norm(attn, beta1, eps, out); // (T, D): RMSNorm(attn; β1)
    for_each_row(out.view_mut(), |t, out_row| {
        let (ssm_row, inv_rms) = (ssm.row(t), inv_rms(ssm.row(t), eps));
        Zip::from(out_row).and(ssm_row).and(beta2).for_each(|o, &s, &b| *o = (*o + s * inv_rms * b) * 0.5);
    });
    out.view()
}
