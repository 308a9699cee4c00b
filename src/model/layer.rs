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
use super::mlp::{mlp, MlpBuffers};
use super::norm::{rms_norm, rms_norm_in_place};
use super::rope::apply_rope;
use super::shaped;
use super::ssm::{ssm_heads, SsmBuffers};
use crate::cache::HybridCache;
use crate::checkpoint::weights::LayerWeights;
use crate::config::{HymbaConfig, KvSource, LayerPlan};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

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
    let mut rest = zxbc;
    let mut next = |width: usize| {
        let (block, tail) = rest.split_at(Axis(1), width);
        rest = tail;
        block
    };
    let q = next(cfg.hidden_size);
    let (k, v) = match plan.owns_kv() {
        true => (Some(next(cfg.k_width())), Some(next(cfg.v_width()))),
        false => (None, None),
    };
    let (x, z) = (next(cfg.d_inner()), next(cfg.d_inner()));
    InProjSplit { q, k, v, x, z }
}

/// Reshape (T, heads·dim) → (T, heads, dim) into `out`, RMS-normalise each head if a norm is
/// given (`norm` is (1 or heads, dim)), and rotate by RoPE if a base is given.
fn prepare_heads<'o>(
    flat: ArrayView2<f32>,
    heads: usize,
    norm: Option<&Array2<f32>>,
    positions: &[usize],
    rope_base: Option<f64>,
    eps: f32,
    out: &'o mut Array3<f32>,
) -> ArrayView3<'o, f32> {
    let (t, dim) = (flat.nrows(), flat.ncols() / heads);
    let out = shaped(out, (t, heads, dim)); // (T, heads, dim)
    for (mut row, flat_row) in out.outer_iter_mut().zip(flat.rows()) {
        row.iter_mut().zip(flat_row).for_each(|(o, &v)| *o = v); // (heads, dim), row-major
    }
    if let Some(w) = norm {
        for mut row in out.axis_iter_mut(Axis(0)) {
            for (h, head) in row.axis_iter_mut(Axis(0)).enumerate() {
                rms_norm_in_place(head, w.row(if w.nrows() == 1 { 0 } else { h }), eps);
            }
        }
    }
    if let Some(base) = rope_base {
        apply_rope(out.view_mut(), positions, base);
    }
    out.view()
}

/// Everything one layer pass writes besides the cache and the residual stream (see
/// [`super::shaped`]). One set serves every layer, since layers run one after another.
#[derive(Debug, Clone, Default)]
pub struct LayerBuffers {
    /// (T, H): the normalised input of the mixer, then of the MLP
    h: Array2<f32>,
    /// (T, P): `in_proj`'s output
    zxbc: Array2<f32>,
    /// (T, nh, dqk), (T, nkv, dqk)
    q: Array3<f32>,
    k: Array3<f32>,
    /// (T, D): the attention heads, concatenated
    pub attn: Array2<f32>,
    ssm_buffers: SsmBuffers,
    /// (T, D): the SSM heads after the SiLU(z) gate
    pub ssm: Array2<f32>,
    /// (T, D)
    fused_heads: Array2<f32>,
    /// (T, H): the mixer's residual contribution, `fuse_heads(attn, ssm) · out_projᵀ (+ bias)`
    pub fused: Array2<f32>,
    mlp_buffers: MlpBuffers,
    /// (T, H)
    mlp: Array2<f32>,
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

impl LayerOutput {
    /// A copy of what the last layer pass left in `x` (the layer's output) and `buf`.
    pub fn copy(x: &Array2<f32>, buf: &LayerBuffers) -> LayerOutput {
        LayerOutput { hidden: x.clone(), attn: buf.attn.clone(), ssm: buf.ssm.clone(), fused: buf.fused.clone() }
    }
}

/// Run layer `plan.index` on the rows `x` (T, H) at absolute `positions`, in place (x becomes the
/// layer's output), extending `cache`. `rope_base` is `None` when the model has no RoPE.
#[allow(clippy::too_many_arguments)]
pub fn hymba_layer(
    cfg: &HymbaConfig,
    plan: &LayerPlan,
    w: &LayerWeights,
    x: &mut Array2<f32>,
    positions: &[usize],
    rope_base: Option<f64>,
    cache: &mut HybridCache,
    buf: &mut LayerBuffers,
) {
    let (t, eps) = (x.nrows(), cfg.rms_norm_eps);
    debug_assert_eq!(x.dim(), (t, cfg.hidden_size));
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);

    let h = rms_norm(x.view(), w.input_layernorm.view(), eps, &mut buf.h); // (T, H)
    let zxbc = w.mamba.in_proj.forward(h, &mut buf.zxbc); // (T, P)
    let split = split_in_proj(cfg, plan, zxbc);

    // Attention heads. A producer rotates its new keys and appends them to its cache; a
    // reusing layer reads its producer's cache, which already holds this chunk's rows.
    let q = prepare_heads(split.q, nh, w.mamba.q_norm.as_ref(), positions, rope_base, eps, &mut buf.q); // (T, nh, dqk)
    let producer = match plan.kv {
        KvSource::Own => plan.index,
        KvSource::ReuseFrom(j) => j,
    };
    if let (Some(k), Some(v)) = (split.k, split.v) {
        let k = prepare_heads(k, nkv, w.mamba.k_norm.as_ref(), positions, rope_base, eps, &mut buf.k); // (T, nkv, dqk)
        let kv = cache.kv[producer].as_mut().expect("a producer has a K/V cache");
        kv.append(k.into_shape_with_order((t, cfg.k_width())).expect("contiguous"), v, positions);
    }
    let kv = cache.kv[producer].as_ref().expect("K/V of the producer");
    let (keys, values, k_positions) = (kv.keys(), kv.values(), kv.positions());
    let span = plan.attention;
    let attn = attention_heads(q, keys, values, positions, k_positions, span, cfg.num_memory_tokens, &mut buf.attn); // (T, D)

    let state = &mut cache.ssm[plan.index];
    let ssm = ssm_heads(split.x, split.z, &w.mamba, eps, state, &mut buf.ssm_buffers, &mut buf.ssm); // (T, D)

    let (beta1, beta2) = (w.mamba.pre_avg_layernorm1.view(), w.mamba.pre_avg_layernorm2.view());
    let fused_heads = fuse_heads(attn, ssm, beta1, beta2, eps, &mut buf.fused_heads); // (T, D)
    let fused = w.mamba.out_proj.forward(fused_heads, &mut buf.fused); // (T, H)
    *x += &fused; // residual

    let h2 = rms_norm(x.view(), w.pre_moe_layernorm.view(), eps, &mut buf.h); // (T, H)
    *x += &mlp(h2, &w.moe_expert0, &mut buf.mlp_buffers, &mut buf.mlp); // residual
}
