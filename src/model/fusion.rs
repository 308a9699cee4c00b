//! Fusing the two head types (paper eq. 3): each branch is RMS-normalised with its own learned
//! scale (β1, β2 = `pre_avg_layernorm1/2`), the two are averaged, then projected back to H.

use super::norm::rms_norm;
use ndarray::{Array2, ArrayView1, ArrayView2};

/// `(RMSNorm(attn; β1) + RMSNorm(ssm; β2)) / 2`, over the full width D. (T, D), (T, D) → (T, D)
pub fn fuse_heads(
    attn: ArrayView2<f32>,
    ssm: ArrayView2<f32>,
    beta1: ArrayView1<f32>,
    beta2: ArrayView1<f32>,
    eps: f32,
) -> Array2<f32> {
    debug_assert_eq!(attn.dim(), ssm.dim());
    (rms_norm(attn, beta1, eps) + rms_norm(ssm, beta2, eps)) * 0.5
}
