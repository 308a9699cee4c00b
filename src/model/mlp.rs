//! The per-layer MLP (`moe.experts.0`: the released model builds exactly one expert).

use super::ssm::silu;
use crate::checkpoint::weights::MlpWeights;
use ndarray::{Array2, ArrayView2};

/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
pub fn mlp(h: ArrayView2<f32>, w: &MlpWeights) -> Array2<f32> {
    let up = h.dot(&w.up_proj.t()); // (T, F)
    let act = match &w.gate_proj {
        Some(gate) => h.dot(&gate.t()).mapv(silu) * &up, // (T, F)
        None => up.mapv(|v| v.max(0.0).powi(2)),         // (T, F)
    };
    act.dot(&w.down_proj.t()) // (T, H)
}
