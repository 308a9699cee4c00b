//! RMSNorm, used everywhere in Hymba: before each layer, inside the SSM heads (on Δ, B, C),
//! on each attention head (`kq_norm`), on each branch before fusion, and at the end.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};

/// `RMSNorm(x; w) = x / sqrt(mean(x²) + eps) * w`, applied to each row of `x`.
pub fn rms_norm(x: ArrayView2<f32>, weight: ArrayView1<f32>, eps: f32) -> Array2<f32> {
    debug_assert_eq!(x.ncols(), weight.len());
    let mut out = x.to_owned(); // (T, width)
    for row in out.axis_iter_mut(Axis(0)) {
        rms_norm_in_place(row, weight, eps);
    }
    out
}

/// RMSNorm of one vector, in place.
pub fn rms_norm_in_place(mut x: ArrayViewMut1<f32>, weight: ArrayView1<f32>, eps: f32) {
    debug_assert_eq!(x.len(), weight.len());
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv_rms = 1.0 / (mean_sq + eps).sqrt();
    x.zip_mut_with(&weight, |v, w| *v = *v * inv_rms * w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn normalises_each_row_to_unit_rms_then_scales() {
        let x = array![[3.0f32, 4.0], [0.0, 0.0]];
        let y = rms_norm(x.view(), array![1.0f32, 2.0].view(), 0.0);
        let r = (12.5f32).sqrt(); // rms of (3, 4)
        assert!((y[[0, 0]] - 3.0 / r).abs() < 1e-6 && (y[[0, 1]] - 8.0 / r).abs() < 1e-6);
        let z = rms_norm(x.view(), array![1.0f32, 1.0].view(), 1e-6);
        assert_eq!(z.row(1).to_vec(), vec![0.0, 0.0]); // eps keeps zero rows finite
    }
}
