//! The per-layer MLP (`moe.experts.0`: the released model builds exactly one expert).

use super::profile::{Phase, Profile};
use crate::simd::times_silu;
use crate::checkpoint::weights::MlpWeights;
use crate::matrix::Rows;
use super::parallel::{map_in_place, zip_rows};
use ndarray::{Array2, ArrayView2};

/// The MLP's intermediate activations (see [`crate::buffer`]).
#[derive(Debug, Clone, Default)]
pub struct MlpBuffers {
    /// (T, F)
    up: Array2<f32>,
    /// (T, F)
    gate: Array2<f32>,
}

/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
/// `rows` says what the rows are ([`crate::matrix::Matrix::matmul_t_of`]); `profile` times the
/// products and the activation when it records.
pub fn mlp<'o>(
    h: ArrayView2<f32>,
    rows: Rows,
    w: &MlpWeights,
    buf: &mut MlpBuffers,
    out: &'o mut Array2<f32>,
    profile: &mut Profile,
) -> ArrayView2<'o, f32> {
    let act = match &w.gate_proj {
        Some(gate) => {
            // up and gate read the same input: both products in one parallel region, so the
            // threads go from one to the other without waiting for the slowest task in between.
            profile.time(Phase::Weights, || {
                let (up, gate_out) = (&mut buf.up, &mut buf.gate);
                rayon::join(|| w.up_proj.matmul_t_of(h, rows, up), || gate.matmul_t_of(h, rows, gate_out))
            }); // (T, F) each
            profile.time(Phase::Elementwise, || zip_rows(buf.up.view_mut(), buf.gate.view(), times_silu)); // up ⊙ SiLU(gate)
            &buf.up
        }
        None => {
            profile.time(Phase::Weights, || w.up_proj.matmul_t_of(h, rows, &mut buf.up)); // (T, F)
            profile.time(Phase::Elementwise, || map_in_place(buf.up.view_mut(), |v| v.max(0.0).powi(2)));
            &buf.up
        }
    }; // (T, F)
    profile.time(Phase::Weights, || w.down_proj.matmul_t_of(act.view(), rows, out)) // (T, H)
}
