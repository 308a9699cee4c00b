//! The per-layer MLP (`moe.experts.0`: the released model builds exactly one expert).

use crate::kernels::simd::times_silu;
use crate::checkpoint::weights::MlpWeights;
use crate::kernels::matrix::{Matrix, RowKind};
use ndarray::{Array2, Array3, ArrayView2, ArrayViewMut2, Axis};

/// The MLP's intermediate activations (see [`crate::base::buffer`]).
#[derive(Debug, Clone, Default)]
pub struct MlpBuffers {
    /// (2, T, F): up(h) and gate(h) (silu); up becomes up ⊙ SiLU(gate)
    up_gate: Array3<f32>,
    /// (T, F): relu(up(h))² (relu2)
    up: Array2<f32>,
}

/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
/// `kind` says what the rows are ([`crate::kernels::matrix::Matrix::matmul_t_of`]). The tasks of a
/// product apply its activation to the block they computed ([`Matrix::matmul_t_then`]).
pub fn mlp<'o>(
    h: ArrayView2<f32>,
    kind: RowKind,
    w: &MlpWeights,
    buf: &mut MlpBuffers,
    out: &'o mut Array2<f32>,
) -> ArrayView2<'o, f32> {
    let act = match &w.gate_proj {
        Some(gate) => {
            // up and gate read the same input: both products in one parallel region, each task
            // computing the same columns of both, then gating them: up ⊙ SiLU(gate)
            Matrix::pair_matmul_t_then(&w.up_proj, gate, h, kind, &mut buf.up_gate, |mut up, gate| {
                for (mut up, gate) in up.rows_mut().into_iter().zip(gate.rows()) {
                    times_silu(up.as_slice_mut().expect("contiguous"), gate.as_slice().expect("contiguous"));
                }
            });
            buf.up_gate.index_axis(Axis(0), 0) // (T, F)
        }
        None => {
            let relu2 = |_, mut up: ArrayViewMut2<f32>| up.mapv_inplace(|v| v.max(0.0).powi(2));
            w.up_proj.matmul_t_then(h, kind, &mut buf.up, relu2) // (T, F)
        }
    }; // (T, F)
    w.down_proj.matmul_t_of(act, kind, out) // (T, H)
}
