//! One Hymba layer, reading like the paper's figure:
//!
//! ```text
//! h = RMSNorm(X)  →  in_proj  →  split: q | k | v | x | z
//!        attention heads (q, k, v)  ─┐
//!        SSM heads (x, z)           ─┴→ fuse_heads → out_proj → + X
//! X → RMSNorm → MLP → + X
//! ```
//!
//! A layer processes a chunk of T new rows at known absolute positions, reading and extending
//! the sequence's [`HybridCache`]. A full forward pass is one chunk on a fresh cache; decoding
//! is a prefill chunk followed by one-row chunks — the same code.

use super::attention::attention_heads;
use super::fusion::fuse_heads;
use super::mlp::mlp;
use super::norm::{rms_norm, rms_norm_in_place};
use super::rope::apply_rope;
use super::ssm::ssm_heads;
use crate::cache::HybridCache;
use crate::checkpoint::weights::LayerWeights;
use crate::config::{HymbaConfig, KvSource, LayerPlan};
use ndarray::{Array2, Array3, ArrayView2, Axis};

/// The column blocks of `in_proj`'s output, in checkpoint order. Each is (T, width).
pub struct InProjSplit<'a> {
    /// (T, H)
    pub q: ArrayView2<'a, f32>,
    /// (T, nkv·dqk), `None` in a layer that reuses K/V
    pub k: Option<ArrayView2<'a, f32>>,
    /// (T, nkv·dv), `None` in a layer that reuses K/V
    pub v: Option<ArrayView2<'a, f32>>,
    /// (T, D): the SSM input
    pub x: ArrayView2<'a, f32>,
    /// (T, D): the SSM gate
    pub z: ArrayView2<'a, f32>,
}

/// Split `in_proj`'s output (T, P) into q `[H]`, then k `[nkv·dqk]` and v `[nkv·dv]` unless the layer
/// reuses K/V, then x `[D]`, then z `[D]`.
pub fn split_in_proj<'a>(cfg: &HymbaConfig, plan: &LayerPlan, zxbc: ArrayView2<'a, f32>) -> InProjSplit<'a> {
    debug_assert_eq!(zxbc.ncols(), cfg.in_proj_rows(plan));
    let mut widths = vec![cfg.hidden_size];
    if plan.owns_kv() {
        widths.extend([cfg.k_width(), cfg.v_width()]);
    }
    widths.extend([cfg.d_inner(), cfg.d_inner()]);
    let mut blocks = Vec::with_capacity(widths.len());
    let mut rest = zxbc;
    for w in widths {
        let (block, tail) = rest.split_at(Axis(1), w);
        blocks.push(block);
        rest = tail;
    }
    let z = blocks.pop().expect("z");
    let x = blocks.pop().expect("x");
    let (q, k, v) = match blocks[..] {
        [q, k, v] => (q, Some(k), Some(v)),
        [q] => (q, None, None),
        _ => unreachable!("in_proj has q, optional k and v, x, z"),
    };
    InProjSplit { q, k, v, x, z }
}

/// Reshape (T, heads·dim) → (T, heads, dim), RMS-normalise each head if a norm is given
/// (`norm` is (1 or heads, dim)), and rotate by RoPE if a base is given.
fn prepare_heads(
    flat: ArrayView2<f32>,
    heads: usize,
    norm: Option<&Array2<f32>>,
    positions: &[usize],
    rope_base: Option<f64>,
    eps: f32,
) -> Array3<f32> {
    let t = flat.nrows();
    let dim = flat.ncols() / heads;
    let mut x = flat.to_owned().into_shape_with_order((t, heads, dim)).expect("heads divide the width"); // (T, heads, dim)
    if let Some(w) = norm {
        for mut row in x.axis_iter_mut(Axis(0)) {
            for (h, head) in row.axis_iter_mut(Axis(0)).enumerate() {
                rms_norm_in_place(head, w.row(if w.nrows() == 1 { 0 } else { h }), eps);
            }
        }
    }
    if let Some(base) = rope_base {
        apply_rope(x.view_mut(), positions, base);
    }
    x
}

/// What one layer computes, kept for golden tests and inspection.
pub struct LayerOutput {
    /// The layer's output (its input plus the mixer and MLP residuals). (T, H)
    pub hidden: Array2<f32>,
    /// The concatenated attention heads, before fusion. (T, D)
    pub attn: Array2<f32>,
    /// The SSM heads after the SiLU(z) gate, before fusion. (T, D)
    pub ssm: Array2<f32>,
    /// The mixer's residual contribution: `fuse_heads(attn, ssm) · out_projᵀ (+ bias)`. (T, H)
    pub fused: Array2<f32>,
}

/// Run layer `plan.index` on the rows `x` (T, H) at absolute `positions`, extending `cache`.
/// `rope_base` is `None` when the model has no RoPE.
pub fn hymba_layer(
    cfg: &HymbaConfig,
    plan: &LayerPlan,
    w: &LayerWeights,
    x: ArrayView2<f32>,
    positions: &[usize],
    rope_base: Option<f64>,
    cache: &mut HybridCache,
) -> LayerOutput {
    let (t, eps) = (x.nrows(), cfg.rms_norm_eps);
    debug_assert_eq!(x.dim(), (t, cfg.hidden_size));
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);

    let h = rms_norm(x, w.input_layernorm.view(), eps); // (T, H)
    let zxbc = w.mamba.in_proj.forward(h.view()); // (T, P)
    let split = split_in_proj(cfg, plan, zxbc.view());

    // Attention heads. A producer rotates its new keys and appends them to its cache; a
    // reusing layer reads its producer's cache, which already holds this chunk's rows.
    let q = prepare_heads(split.q, nh, w.mamba.q_norm.as_ref(), positions, rope_base, eps); // (T, nh, dqk)
    let producer = match plan.kv {
        KvSource::Own => plan.index,
        KvSource::ReuseFrom(j) => j,
    };
    if let (Some(k), Some(v)) = (split.k, split.v) {
        let k = prepare_heads(k, nkv, w.mamba.k_norm.as_ref(), positions, rope_base, eps); // (T, nkv, dqk)
        let kv = cache.kv[producer].as_mut().expect("a producer has a K/V cache");
        kv.append(k.view().into_shape_with_order((t, cfg.k_width())).expect("contiguous"), v, positions);
    }
    let kv = cache.kv[producer].as_ref().expect("K/V of the producer");
    let attn = attention_heads(
        q.view(),
        kv.keys(),
        kv.values(),
        positions,
        kv.positions(),
        plan.attention,
        cfg.num_memory_tokens,
    ); // (T, D)

    let ssm = ssm_heads(split.x, split.z, &w.mamba, eps, &mut cache.ssm[plan.index]); // (T, D)

    let fused_heads = fuse_heads(
        attn.view(),
        ssm.view(),
        w.mamba.pre_avg_layernorm1.view(),
        w.mamba.pre_avg_layernorm2.view(),
        eps,
    ); // (T, D)
    let fused = w.mamba.out_proj.forward(fused_heads.view()); // (T, H)
    let mut hidden = &x + &fused; // (T, H)

    let h2 = rms_norm(hidden.view(), w.pre_moe_layernorm.view(), eps); // (T, H)
    hidden += &mlp(h2.view(), &w.moe_expert0);
    LayerOutput { hidden, attn, ssm, fused }
}
