//! The per-layer MLP (`moe.experts.0`: the released model builds exactly one expert).

use super::ssm::silu;
use crate::checkpoint::weights::MlpWeights;
use ndarray::{Array2, ArrayView2};

/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
pub fn mlp(h: ArrayView2<f32>, w: &MlpWeights) -> Array2<f32> {
    let up = w.up_proj.matmul_t(h); // (T, F)
    let act = match &w.gate_proj {
        Some(gate) => gate.matmul_t(h).mapv(silu) * &up, // (T, F)
        None => up.mapv(|v| v.max(0.0).powi(2)),         // (T, F)
    };
    w.down_proj.matmul_t(act.view()) // (T, H)
}
