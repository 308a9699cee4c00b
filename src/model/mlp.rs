//! The per-layer MLP (`moe.experts.0`: the released model builds exactly one expert).

use super::ssm::silu;
use crate::checkpoint::weights::MlpWeights;
use ndarray::{Array2, ArrayView2, Zip};

/// The MLP's intermediate activations (see [`crate::buffer`]).
#[derive(Debug, Clone, Default)]
pub struct MlpBuffers {
    /// (T, F)
    up: Array2<f32>,
    /// (T, F)
    gate: Array2<f32>,
}

/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
pub fn mlp<'o>(h: ArrayView2<f32>, w: &MlpWeights, buf: &mut MlpBuffers, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
    w.up_proj.matmul_t(h, &mut buf.up); // (T, F)
    let act = match &w.gate_proj {
        Some(gate) => {
            gate.matmul_t(h, &mut buf.gate); // (T, F)
            Zip::from(&mut buf.gate).and(&buf.up).for_each(|g, &u| *g = silu(*g) * u);
            &buf.gate
        }
        None => {
            buf.up.mapv_inplace(|v| v.max(0.0).powi(2));
            &buf.up
        }
    }; // (T, F)
    w.down_proj.matmul_t(act.view(), out) // (T, H)
}
