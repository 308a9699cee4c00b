//! One Hymba layer, reading like the paper's figure:
//!
//! ```text
//! h = RMSNorm(hidden)  →  in_proj, its rows split: q | k | v  and  x | z
//!        attention heads (q, k, v)  ─┐  side by side
//!        SSM heads (x, z)           ─┴→ fuse_heads → out_proj → + hidden
//! hidden → RMSNorm → MLP → + hidden
//! ```
//!
//! A layer processes the T rows of a pass (see [`super::pass`]): consecutive rows of one or more
//! sequences at known absolute positions. Everything row-wise (norms, projections, fusion, MLP)
//! runs over all T rows at once; attention and the SSM's conv and scan run per sequence, against
//! that sequence's own [`crate::state::cache::HybridCache`]. A full forward pass is one sequence on a fresh cache;
//! decoding is a prefill followed by one-row passes — the same code.

use super::attention::{attention_heads, Mask};
use super::fusion::fuse_heads;
use super::mlp::{mlp, MlpBuffers};
use super::norm::{rms_norm, rms_norm_in_place};
use super::parallel::{for_each_row, zip_with};
use super::profile::{Phase, Profile};
use super::segment::Pass;
use super::rope::apply_rope;
use super::ssm::{ssm_heads, SsmBuffers};
use crate::base::buffer::shaped;
use crate::checkpoint::weights::LayerWeights;
use crate::config::{HymbaConfig, LayerPlan};
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut3, Axis};
use std::ops::Range;

/// Split `in_proj`'s rows (its output's columns, in checkpoint order) between the two kinds of
/// heads: the attention heads' q `[H]`, then k `[nkv·dqk]` and v `[nkv·dv]` unless the layer
/// reuses K/V; then the SSM heads' x `[D]` and gate z `[D]`. → (attention rows, SSM rows)
pub fn split_in_proj(cfg: &HymbaConfig, plan: &LayerPlan) -> (Range<usize>, Range<usize>) {
    let rows = cfg.in_proj_rows(plan); // P
    let attention = rows - 2 * cfg.d_inner(); // x and z come last
    (0..attention, attention..rows)
}

/// The attention heads' columns of `in_proj`'s output. Each is (T, width).
pub struct AttentionInputs<'a> {
    /// (T, H)
    pub q: ArrayView2<'a, f32>,
    /// (T, nkv·dqk), `None` in a layer that reuses K/V
    pub k: Option<ArrayView2<'a, f32>>,
    /// (T, nkv·dv), `None` in a layer that reuses K/V
    pub v: Option<ArrayView2<'a, f32>>,
}

/// The attention heads' part of `in_proj`'s output, (T, H [+ nkv·dqk + nkv·dv]), as q, and k and
/// v unless the layer reuses K/V.
fn attention_inputs<'a>(cfg: &HymbaConfig, plan: &LayerPlan, qkv: ArrayView2<'a, f32>) -> AttentionInputs<'a> {
    let (q, kv) = qkv.split_at(Axis(1), cfg.hidden_size); // (T, H), (T, nkv·dqk + nkv·dv or 0)
    let (k, v) = match plan.owns_kv() {
        true => {
            let (k, v) = kv.split_at(Axis(1), cfg.k_width()); // (T, nkv·dqk), (T, nkv·dv)
            (Some(k), Some(v))
        }
        false => (None, None),
    };
    AttentionInputs { q, k, v }
}

/// The SSM heads' part of `in_proj`'s output, x | z (T, 2D): still to compute on the SSM branch
/// (into this buffer), or computed.
enum SsmInputs<'a> {
    Later(&'a mut Array2<f32>),
    Ready(ArrayView2<'a, f32>),
}

/// Reshape (T, heads·dim) → (T, heads, dim) into `out`, and RMS-normalise each head if a norm is
/// given (`norm` is (1 or heads, dim)). RoPE comes after, per sequence (see [`attention_branch`]).
fn split_heads<'o>(
    flat: ArrayView2<f32>,
    heads: usize,
    norm: Option<&Array2<f32>>,
    eps: f32,
    out: &'o mut Array3<f32>,
) -> ArrayViewMut3<'o, f32> {
    let (t, dim) = (flat.nrows(), flat.ncols() / heads);
    let out = shaped(out, (t, heads, dim)); // (T, heads, dim)
    for_each_row(out.view_mut(), |t, mut row| {
        row.iter_mut().zip(flat.row(t)).for_each(|(o, &v)| *o = v); // (heads, dim), row-major
        if let Some(w) = norm {
            for (h, head) in row.axis_iter_mut(Axis(0)).enumerate() {
                rms_norm_in_place(head, w.row(if w.nrows() == 1 { 0 } else { h }), eps);
            }
        }
    });
    out.view_mut()
}

/// One layer of the model, as a layer function reads it: the config, the layer's plan (global or
/// window; owns K/V or reuses layer j) and its weights.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'l> {
    pub cfg: &'l HymbaConfig,
    pub plan: &'l LayerPlan,
    pub w: &'l LayerWeights,
}

/// What the attention heads write (see [`crate::base::buffer`]).
#[derive(Debug, Clone, Default)]
pub struct AttentionBuffers {
    /// (T, nh, dqk): queries after q_norm and RoPE
    pub(crate) q: Array3<f32>,
    /// (T, nkv, dqk): new keys after k_norm and RoPE (K/V producers)
    k: Array3<f32>,
    /// (T, D): the attention heads, concatenated
    pub(crate) attn: Array2<f32>,
}

/// Everything one layer pass writes besides the caches and the residual stream (see
/// [`crate::base::buffer`]). One set serves every layer, since layers run one after another.
#[derive(Debug, Clone, Default)]
pub struct LayerBuffers {
    /// (T, H): the normalised input of the mixer, then of the MLP
    h: Array2<f32>,
    /// (T, P): `in_proj`'s output, columns q | k | v | x | z; or, decoding one token, only
    /// the attention heads' q | k | v (T, H [+ nkv·dqk + nkv·dv])
    projected: Array2<f32>,
    /// (T, 2D): decoding one token, the SSM heads' part of `in_proj`'s output, x | z
    ssm_projected: Array2<f32>,
    /// The attention heads' queries, new keys and output
    pub(crate) attention: AttentionBuffers,
    /// The SSM heads' activations, the states they hold during the layer, and their output
    pub(crate) ssm_buffers: SsmBuffers,
    /// (T, D): `fuse_heads(attn, ssm)`
    pub(crate) fused_heads: Array2<f32>,
    /// (T, H): the mixer's residual contribution, `fused_heads · out_projᵀ (+ bias)`
    pub(crate) mixer_output: Array2<f32>,
    mlp_buffers: MlpBuffers,
    /// (T, H)
    mlp: Array2<f32>,
}

/// Run `layer` on the rows `hidden` (T, H) of a pass (at the pass's absolute positions), in place
/// (`hidden` becomes the layer's output), extending each sequence's cache. Each step is timed as
/// its [`Phase`] here, at its boundary, when `profile` records; the steps themselves never see it.
pub fn hymba_layer(layer: Layer, hidden: &mut Array2<f32>, pass: &mut Pass, buf: &mut LayerBuffers, profile: &mut Profile) {
    let Layer { cfg, plan, w } = layer;
    let (t, eps, kind) = (hidden.nrows(), cfg.rms_norm_eps, pass.kind);
    debug_assert_eq!((hidden.dim(), pass.positions.len()), ((t, cfg.hidden_size), t));
    use Phase::{Elementwise, Mlp, Projections, Ssm};

    let h = profile.time(Elementwise, || rms_norm(hidden.view(), w.input_layernorm.view(), eps, &mut buf.h)); // (T, H)
    // in_proj. Where one sequence decodes a token, only the attention heads' rows here: the SSM
    // heads' rows stream from memory on the SSM branch below while the attention heads (one query:
    // little work to share between threads) compute (1.5B at context 1024 on the Zen 2: a step
    // 3–4.5 % faster in q4_0 and bf16, q8_0 within its noise). A prompt or a batch computes all
    // of it here, on every thread (a batch of 16 decoded 2–3 % slower with the SSM rows beside
    // attention).
    let (attention_rows, ssm_rows) = split_in_proj(cfg, plan);
    let in_proj = &w.mamba.in_proj;
    let (qkv, ssm_inputs) = match t {
        1 => {
            let qkv = profile.time(Projections, || in_proj.rows_forward(attention_rows, h, kind, &mut buf.projected));
            (qkv, SsmInputs::Later(&mut buf.ssm_projected))
        }
        _ => {
            let all = profile.time(Projections, || in_proj.forward(h, kind, &mut buf.projected)); // (T, P)
            let (qkv, xz) = all.split_at(Axis(1), attention_rows.end);
            (qkv, SsmInputs::Ready(xz))
        }
    }; // (T, H [+ nkv·dqk + nkv·dv]), and (T, 2D) now or later
    let inputs = attention_inputs(cfg, plan, qkv);

    // The attention heads and the SSM heads run side by side, as the figure draws them: the
    // attention branch extends and reads the sequences' K/V caches while the SSM branch advances
    // this layer's SSM states, which it holds meanwhile (moved out of the caches, and back after).
    // Each branch's one-thread work (RoPE and the K/V append; the conv) then overlaps the other's
    // work, and fewer parallel regions come after a stretch long enough for idle threads to sleep.
    let parts = pass.parts;
    pass.take_ssm_states(plan.index, &mut buf.ssm_buffers.states);
    let mut ssm_profile = profile.fork();
    let (attn, ssm) = rayon::join(
        || attention_branch(layer, &inputs, pass, &mut buf.attention, profile), // (T, D)
        || {
            let xz = match ssm_inputs {
                SsmInputs::Later(out) => ssm_profile.time(Projections, || in_proj.rows_forward(ssm_rows, h, kind, out)), // (T, 2D)
                SsmInputs::Ready(xz) => xz,
            };
            let (x, z) = xz.split_at(Axis(1), cfg.d_inner()); // (T, D) each
            ssm_profile.time(Ssm, || ssm_heads(layer, x, z, parts, &mut buf.ssm_buffers)) // (T, D)
        },
    );
    profile.join(ssm_profile);

    let fused_heads = profile.time(Elementwise, || fuse_heads(layer, attn, ssm, &mut buf.fused_heads)); // (T, D)
    // The SSM states go back to their sequences once the fusion has read the SSM heads' output.
    pass.put_back_ssm_states(plan.index, &mut buf.ssm_buffers.states);
    let mixer_output = profile.time(Projections, || w.mamba.out_proj.forward(fused_heads, kind, &mut buf.mixer_output)); // (T, H)
    profile.time(Elementwise, || zip_with(hidden.view_mut(), mixer_output, |h, m| *h += m)); // residual

    let h2 = profile.time(Elementwise, || rms_norm(hidden.view(), w.pre_moe_layernorm.view(), eps, &mut buf.h)); // (T, H)
    let mlp = profile.time(Mlp, || mlp(h2, kind, &w.moe_expert0, &mut buf.mlp_buffers, &mut buf.mlp)); // (T, H)
    profile.time(Elementwise, || zip_with(hidden.view_mut(), mlp, |h, m| *h += m)); // residual
}

/// The attention heads over the rows of a pass, each step timed as its [`Phase`]: q (and, in a
/// producer, k) split into heads and normalised, and q rotated, for all rows (each row by its
/// sequence's RoPE angles); a producer's new keys and values appended to each sequence's cache
/// ([`append_keys_values`]); then each sequence's queries attend to its cache
/// ([`attend_caches`]). → (T, D)
fn attention_branch<'o>(
    layer: Layer,
    inputs: &AttentionInputs,
    pass: &mut Pass,
    buf: &'o mut AttentionBuffers,
    profile: &mut Profile,
) -> ArrayView2<'o, f32> {
    let Layer { cfg, w, .. } = layer;
    let AttentionBuffers { q: q_buf, k: k_buf, attn: out } = buf;
    let (nh, nkv, eps) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps);
    let (norms, elementwise) = (&w.mamba.self_attn, Phase::Elementwise);
    let mut q = profile.time(elementwise, || split_heads(inputs.q, nh, norms.q_norm.as_ref(), eps, q_buf)); // (T, nh, dqk)
    let k = profile.time(elementwise, || inputs.k.map(|k| split_heads(k, nkv, norms.k_norm.as_ref(), eps, k_buf))); // (T, nkv, dqk)
    // RoPE: every row of q is rotated by its own angles (its sequence's base), all rows at once.
    if cfg.rope.is_some() {
        let (cos, sin) = pass.rope.rows(0..inputs.q.nrows()); // (T, dqk/2) each
        profile.time(elementwise, || apply_rope(q.view_mut(), cos, sin));
    }
    if let (Some(k), Some(v)) = (k, inputs.v) {
        profile.time(Phase::KvCache, || append_keys_values(layer, k, v, pass));
    }
    profile.time(Phase::Attention, || attend_caches(layer, q.view(), pass, out)) // (T, D)
}

/// A producer's new keys and values: per sequence, its rows of k rotated by their RoPE angles and
/// appended, with their values, to the sequence's cache (in parallel across the sequences of a
/// batched decode step: one thread's work each). k: (T, nkv, dqk), v: (T, nkv·dv)
fn append_keys_values(layer: Layer, k: ArrayViewMut3<f32>, v: ArrayView2<f32>, pass: &mut Pass) {
    let (Layer { cfg, plan, .. }, positions, rope) = (layer, pass.positions, pass.rope);
    let producer = plan.kv_producer();
    pass.for_each_part(k, |part, cache, mut k| {
        let (rows, at) = (part.rows.clone(), &positions[part.rows.clone()]);
        if cfg.rope.is_some() {
            let (cos, sin) = rope.rows(rows.clone()); // (T_s, dqk/2) each
            apply_rope(k.view_mut(), cos, sin); // (T_s, nkv, dqk)
        }
        let k = k.into_shape_with_order((rows.len(), cfg.k_width())).expect("contiguous"); // (T_s, nkv·dqk)
        let kv = cache.kv[producer].as_mut().expect("a producer has a K/V cache");
        kv.append(k.view(), v.slice(s![rows, ..]), at); // (T_s, nkv·dqk), (T_s, nkv·dv)
    })
}

/// Each sequence's queries q (T, nh, dqk) against its cache (its producer's, which already holds
/// this pass's rows), under the layer's mask. → (T, D)
fn attend_caches<'o>(layer: Layer, q: ArrayView3<f32>, pass: &mut Pass, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
    let (Layer { cfg, plan, .. }, positions) = (layer, pass.positions);
    let producer = plan.kv_producer();
    let out = shaped(out, (q.dim().0, cfg.d_inner())); // (T, D)
    pass.for_each_part(out.view_mut(), |part, cache, out| {
        let kv = cache.kv[producer].as_ref().expect("K/V of the producer");
        let (q, at) = (q.slice(s![part.rows.clone(), .., ..]), &positions[part.rows.clone()]); // (T_s, nh, dqk)
        let mask = Mask::new(at, kv.positions(), plan.attention, cfg.num_memory_tokens);
        attention_heads(q, kv.keys(), kv.values(), mask, out) // (T_s, D)
    });
    out.view()
}
