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
use crate::base::buffer::shaped;
use ndarray::{Array2, ArrayView2, ArrayViewMut3, Axis};
use std::ops::Range;

/// cos and sin of every row's angles, (T, dqk/2) each. They depend only on a row's position and
/// its call's base, so a pass computes them once ([`RopeAngles::compute`]) for all its layers,
/// where each layer's queries and keys computed them again (about a fifth of decode's one-thread
/// element-wise work).
#[derive(Debug, Clone, Default)]
pub struct RopeAngles {
    cos: Array2<f32>,
    sin: Array2<f32>,
}

impl RopeAngles {
    /// Room for `t` rows of heads `head_dim` wide; [`RopeAngles::compute`] then fills rows.
    pub fn shape(&mut self, t: usize, head_dim: usize) {
        shaped(&mut self.cos, (t, head_dim / 2));
        shaped(&mut self.sin, (t, head_dim / 2));
    }

    /// The angles of rows `rows`, at absolute `positions` (one a row), with RoPE base `base`.
    pub fn compute(&mut self, rows: Range<usize>, positions: &[usize], base: f64) {
        debug_assert_eq!(rows.len(), positions.len());
        let half = self.cos.ncols();
        for k in 0..half {
            let inv_freq = (1.0 / base.powf(2.0 * k as f64 / (2 * half) as f64)) as f32; // once a frequency
            for (t, &p) in rows.clone().zip(positions) {
                let angle = (p as f32 * inv_freq) as f64; // float32 angle, as the released code
                (self.cos[[t, k]], self.sin[[t, k]]) = (angle.cos() as f32, angle.sin() as f32);
            }
        }
    }

    /// cos and sin of rows `rows`. (T_s, dqk/2) each
    pub fn rows(&self, rows: Range<usize>) -> (ArrayView2<'_, f32>, ArrayView2<'_, f32>) {
        (self.cos.slice(ndarray::s![rows.clone(), ..]), self.sin.slice(ndarray::s![rows, ..]))
    }
}

/// Rotate `x` (T, heads, dqk) in place by the angles of its rows, `cos` and `sin` (T, dqk/2).
pub fn apply_rope(x: ArrayViewMut3<f32>, cos: ArrayView2<f32>, sin: ArrayView2<f32>) {
    let half = x.len_of(Axis(2)) / 2;
    debug_assert_eq!((cos.dim(), sin.dim()), ((x.len_of(Axis(0)), half), (x.len_of(Axis(0)), half)));
    for_each_row(x, |t, mut row| {
        let (cos, sin) = (cos.row(t), sin.row(t)); // (dqk/2)
        let (cos, sin) = (cos.as_slice().expect("standard layout"), sin.as_slice().expect("standard layout"));
        // Every head rotates each pair (k, k + half) by the same angle.
        for mut head in row.axis_iter_mut(Axis(0)) {
            let (x1, x2) = head.as_slice_mut().expect("contiguous heads").split_at_mut(half); // (dqk/2) each
            for k in 0..half {
                let (a, b) = (x1[k], x2[k]);
                x1[k] = a * cos[k] - b * sin[k];
                x2[k] = b * cos[k] + a * sin[k];
            }
        }
    });
}

/// RoPE of the rows of x (T, heads, dqk) at `positions`, all with one `base`: their angles, then
/// the rotation, as a pass does for the rows of one part (with angles of its own, allocated here).
pub fn rotate(x: ArrayViewMut3<f32>, positions: &[usize], base: f64) {
    let mut angles = RopeAngles::default();
    angles.shape(positions.len(), x.dim().2);
    angles.compute(0..positions.len(), positions, base);
    let (cos, sin) = angles.rows(0..positions.len());
    apply_rope(x, cos, sin);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn position_zero_is_identity_and_rotation_is_by_angle() {
        let mut x = Array3::from_shape_vec((2, 1, 4), vec![1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        rotate(x.view_mut(), &[0, 1], 10000.0);
        assert_eq!(x.slice(ndarray::s![0, 0, ..]).to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
        // Position 1, pair k=0 rotates (x0, x2) = (1, 0) by angle 1 rad.
        assert!((x[[1, 0, 0]] - 1f32.cos()).abs() < 1e-6 && (x[[1, 0, 2]] - 1f32.sin()).abs() < 1e-6);
    }

    /// Each row of a pass gets its own part's base: rows computed together equal rows computed
    /// alone, and pair k of position p is rotated by p · base^(−2k/dqk).
    #[test]
    fn angles_of_a_pass_are_each_rows_own() {
        let mut angles = RopeAngles::default();
        angles.shape(5, 8);
        angles.compute(0..3, &[7, 8, 9], 10000.0);
        angles.compute(3..5, &[40, 41], 500.0);
        let (cos, sin) = angles.rows(3..5);
        let want = (41.0f32 * (1.0 / 500f64.powf(2.0 * 2.0 / 8.0)) as f32) as f64;
        assert_eq!((cos[[1, 2]], sin[[1, 2]]), (want.cos() as f32, want.sin() as f32));
        let mut alone = RopeAngles::default();
        alone.shape(1, 8);
        alone.compute(0..1, &[8], 10000.0);
        assert_eq!(angles.rows(1..2).0, alone.rows(0..1).0);
        assert_eq!(angles.rows(1..2).1, alone.rows(0..1).1);
    }
}
