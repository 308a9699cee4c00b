//! Rotary position embeddings (RoPE), rotate-half (NeoX) layout, on the dqk dims of each head.
//!
//! `inv_freq_k = base^(−2k/dqk)` for k < dqk/2; the angle for position p is `p · inv_freq`,
//! duplicated over both halves; `x' = x·cos + [−x₂, x₁]·sin` with x₁, x₂ the two halves.
//! The base depends on `rope_type` (see [`crate::config::RopeConfig::base`]).
//!
//! Precision: like the released code, `inv_freq` and the angle `p · inv_freq` are float32; the
//! cos/sin of that float32 angle are then taken exactly. At long contexts this rounding is part
//! of the model's behaviour, so we reproduce it rather than computing angles in f64.

use super::parallel::for_each_row;
use ndarray::{ArrayViewMut3, Axis};

/// Rotate `x` (T, heads, dqk) in place; row t is at absolute position `positions[t]`.
pub fn apply_rope(x: ArrayViewMut3<f32>, positions: &[usize], base: f64) {
    let head_dim = x.len_of(Axis(2));
    let half = head_dim / 2;
    debug_assert_eq!(x.len_of(Axis(0)), positions.len());
    let inv_freq = |k: usize| (1.0 / base.powf(2.0 * k as f64 / head_dim as f64)) as f32;
    for_each_row(x, |t, mut row| {
        let p = positions[t];
        for k in 0..half {
            let angle = (p as f32 * inv_freq(k)) as f64; // float32 angle, as the released code
            let (cos, sin) = (angle.cos() as f32, angle.sin() as f32);
            // Every head rotates its pair (k, k + half) by the same angle.
            for mut head in row.axis_iter_mut(Axis(0)) {
                let (x1, x2) = (head[k], head[k + half]);
                head[k] = x1 * cos - x2 * sin;
                head[k + half] = x2 * cos + x1 * sin;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn position_zero_is_identity_and_rotation_is_by_angle() {
        let mut x = Array3::from_shape_vec((2, 1, 4), vec![1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        apply_rope(x.view_mut(), &[0, 1], 10000.0);
        assert_eq!(x.slice(ndarray::s![0, 0, ..]).to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
        // Position 1, pair k=0 rotates (x0, x2) = (1, 0) by angle 1 rad.
        assert!((x[[1, 0, 0]] - 1f32.cos()).abs() < 1e-6 && (x[[1, 0, 2]] - 1f32.sin()).abs() < 1e-6);
    }
}
