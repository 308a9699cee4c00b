//! Branch balance: how large each head type's term is in a layer's fusion (paper eq. 3,
//! docs/MODEL.md §3.7): `o = (β1 ⊙ RMSNorm(attn) + β2 ⊙ RMSNorm(ssm)) / 2`. Both branches are normalised to
//! unit RMS first, so the learned scales β1, β2 (and where they put weight) decide which head type
//! carries the layer; the magnitude of each term, token by token, shows it.

use super::stats::Summary;
use crate::model::norm::inv_rms;
use ndarray::ArrayView1;

/// RMS over the D channels of `β ⊙ RMSNorm(x)`: the size of one branch's term in the fusion
/// (before the /2). (D), (D) → scalar
pub fn term_magnitude(x: ArrayView1<f32>, beta: ArrayView1<f32>, eps: f32) -> f64 {
    debug_assert_eq!(x.len(), beta.len());
    let inv_rms = f64::from(inv_rms(x, eps));
    let mean_sq = x.iter().zip(beta).map(|(&x, &b)| f64::from(x * b).powi(2)).sum::<f64>() / x.len() as f64;
    mean_sq.sqrt() * inv_rms
}

/// The terms' magnitudes over a layer's prompt tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BranchBalance {
    /// `RMS(β1 ⊙ RMSNorm(attn))` per token.
    pub attention: Summary,
    /// `RMS(β2 ⊙ RMSNorm(ssm))` per token.
    pub ssm: Summary,
    /// attention / (attention + ssm) per token: above 0.5, the attention heads carry the token.
    pub attention_share: Summary,
}

/// The magnitudes of both terms, token after token, for one layer.
#[derive(Debug, Clone, Default)]
pub struct BranchMagnitudes {
    attention: Vec<f64>,
    ssm: Vec<f64>,
}

impl BranchMagnitudes {
    /// One token's attention and SSM outputs (D each), with the layer's β1, β2 (D each).
    pub fn add(&mut self, attn: ArrayView1<f32>, ssm: ArrayView1<f32>, beta1: ArrayView1<f32>, beta2: ArrayView1<f32>, eps: f32) {
        self.attention.push(term_magnitude(attn, beta1, eps));
        self.ssm.push(term_magnitude(ssm, beta2, eps));
    }

    pub fn summary(mut self) -> BranchBalance {
        let mut share: Vec<f64> = self.attention.iter().zip(&self.ssm).map(|(a, s)| a / (a + s)).collect();
        BranchBalance {
            attention: Summary::of(&mut self.attention),
            ssm: Summary::of(&mut self.ssm),
            attention_share: Summary::of(&mut share),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn magnitude_is_the_rms_of_the_scaled_normalised_branch() {
        // x has RMS 1 already, β = (2, 0): β ⊙ x = (2, 0), RMS √2.
        let m = term_magnitude(array![1.0f32, -1.0].view(), array![2.0f32, 0.0].view(), 0.0);
        assert!((m - 2f64.sqrt()).abs() < 1e-6, "{m}");
        // Scaling x changes nothing: RMSNorm removes it.
        let m10 = term_magnitude(array![10.0f32, -10.0].view(), array![2.0f32, 0.0].view(), 0.0);
        assert!((m10 - m).abs() < 1e-6);
        let mut b = BranchMagnitudes::default();
        b.add(array![1.0f32, 1.0].view(), array![1.0f32, 1.0].view(), array![3.0f32, 3.0].view(), array![1.0f32, 1.0].view(), 0.0);
        let s = b.summary();
        assert!((s.attention_share.mean - 0.75).abs() < 1e-6);
    }
}
