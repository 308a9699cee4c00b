//! The whole Hymba forward pass in one plain file. Read it top to bottom with the paper
//! ("Hymba: A Hybrid-head Architecture for Small Language Models", Dong et al., arXiv 2411.13676)
//! and `docs/MODEL.md` beside it; comments marked "§3.3" are that page's sections.
//!
//! Plain means: f32 `Vec`s and simple loops, a fresh allocation for every intermediate, one
//! thread, every row of a pass at once, the caches as plain vectors. It is slow (the fast path in
//! the files beside this one is what the commands run) and it is the truth that fast path is
//! tested against: `tests/plain_forward.rs` checks both against each other and against the
//! PyTorch goldens, on every fixture, the demo model and the conformance sets.
//!
//! In order:
//! - [`Weights`]: the loaded weights as plain vectors, named as the checkpoint keys.
//! - [`forward`] / [`prefill`] / [`step`]: meta tokens + embeddings → layers → final norm → lm_head,
//!   and the same pass run a token at a time on a [`Cache`].
//! - `layer`: RMSNorm → in_proj → q | k | v | x | z → attention heads ∥ SSM heads → fusion →
//!   out_proj → residual → MLP → residual.
//! - `attention_heads`: q/k norms, RoPE, GQA, K/V shared between layers, causal mask with a
//!   sliding window and meta tokens always visible.
//! - `ssm_heads`: causal conv1d, x_proj → Δ, B, C, the selective scan, D skip, SiLU(z) gate.
//! - Small math: RMSNorm, linear maps, activations.
//!
//! Shapes: `T` rows in this pass, `S` positions seen so far (meta tokens included), the other
//! symbols as in docs/MODEL.md §1 (H, D, nh, nkv, dqk, dv, N, K, R, F, M, W, V).

use crate::checkpoint::weights::{HymbaWeights, Linear as LoadedLinear};
use crate::config::{AttentionSpan, HymbaConfig, KqNorm, KvSource, LayerPlan, MlpActivation, RopeScaling};
use crate::kernels::matrix::Matrix;
use ndarray::Array2;

/// A matrix as a list of vectors, one per row: `x[t]` is row `t`. The shape is in a comment where
/// it is made.
pub type Vectors = Vec<Vec<f32>>;

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// A linear map `y = W·x (+ b)`, the weight in PyTorch's `[out, in]` layout.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Vectors,
    /// `[out]`
    pub bias: Option<Vec<f32>>,
}

/// `model.layers.{i}.*`, named as the checkpoint keys (without `mamba.` / `moe.experts.0.`).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `input_layernorm.weight` `[H]`
    pub input_layernorm: Vec<f32>,
    /// `mamba.in_proj` `[P, H]`: rows q `[H]` | k `[nkv·dqk]` | v `[nkv·dv]` (K/V producers only) | x `[D]` | z `[D]`
    pub in_proj: Linear,
    /// `mamba.self_attn.q_norm.weight`, `[dqk]` (`rms`) or one row per query head (`perhead-rms`)
    pub q_norm: Option<Vectors>,
    /// `mamba.self_attn.k_norm.weight`, `[dqk]` or one row per K/V head; unused in reusing layers
    pub k_norm: Option<Vectors>,
    /// `mamba.conv1d.weight` `[D, 1, K]` as `[D, K]`
    pub conv1d_weight: Vectors,
    /// `mamba.conv1d.bias` `[D]` (if `mamba_conv_bias`)
    pub conv1d_bias: Option<Vec<f32>>,
    /// `mamba.x_proj.0.weight` `[R + 2N, D]`, no bias
    pub x_proj: Linear,
    /// `mamba.dt_layernorm`, `B_layernorm`, `C_layernorm` `[R]`, `[N]`, `[N]` (if `mamba_inner_layernorms`)
    pub dt_layernorm: Option<Vec<f32>>,
    pub b_layernorm: Option<Vec<f32>>,
    pub c_layernorm: Option<Vec<f32>>,
    /// `mamba.dt_proj.0` `[D, R]` + bias `[D]`
    pub dt_proj: Linear,
    /// A = −exp(`mamba.A_log.0`) `[D, N]` (the loader computes it)
    pub a: Vectors,
    /// `mamba.D.0` `[D]`: the skip connection
    pub d: Vec<f32>,
    /// `mamba.pre_avg_layernorm1.weight`, `…2.weight` `[D]`: the paper's β1, β2
    pub pre_avg_layernorm1: Vec<f32>,
    pub pre_avg_layernorm2: Vec<f32>,
    /// `mamba.out_proj` `[H, D]`
    pub out_proj: Linear,
    /// `pre_moe_layernorm.weight` `[H]`
    pub pre_moe_layernorm: Vec<f32>,
    /// `moe.experts.0.gate_proj` `[F, H]` (silu only), `up_proj` `[F, H]`, `down_proj` `[H, F]`
    pub gate_proj: Option<Linear>,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// Every weight of the model in f32.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `model.embed_tokens.weight` `[V, H]`
    pub embed_tokens: Vectors,
    /// `model.memory_tokens` `[M, H]`: the learned meta tokens
    pub memory_tokens: Vectors,
    pub layers: Vec<LayerWeights>,
    /// `model.final_layernorm.weight` `[H]`
    pub final_layernorm: Vec<f32>,
    /// `lm_head.weight` `[V, H]`; a copy of the embedding when `tie_word_embeddings`
    pub lm_head: Vectors,
}

impl Weights {
    /// The loaded weights (kept by the fast path in their stored dtype) converted to f32; a
    /// quantized checkpoint's matrices are dequantized (`w = d·q` per block, see `crate::kernels::quant`),
    /// so the plain pass runs it with the very weights the fast path multiplies.
    pub fn from_loaded(w: &HymbaWeights) -> Weights {
        Weights {
            embed_tokens: matrix_rows(&w.embed_tokens),
            memory_tokens: array_rows(&w.memory_tokens),
            layers: w
                .layers
                .iter()
                .map(|l| {
                    let (m, mlp) = (&l.mamba, &l.moe_expert0);
                    LayerWeights {
                        input_layernorm: l.input_layernorm.to_vec(),
                        in_proj: linear(&m.in_proj),
                        q_norm: m.self_attn.q_norm.as_ref().map(array_rows),
                        k_norm: m.self_attn.k_norm.as_ref().map(array_rows),
                        conv1d_weight: array_rows(&m.conv1d_weight.t().to_owned()), // loaded as [K, D]
                        conv1d_bias: m.conv1d_bias.as_ref().map(|b| b.to_vec()),
                        x_proj: Linear { weight: matrix_rows(&m.x_proj), bias: None },
                        dt_layernorm: m.dt_layernorm.as_ref().map(|v| v.to_vec()),
                        b_layernorm: m.b_layernorm.as_ref().map(|v| v.to_vec()),
                        c_layernorm: m.c_layernorm.as_ref().map(|v| v.to_vec()),
                        dt_proj: linear(&m.dt_proj),
                        a: array_rows(&m.a),
                        d: m.d.to_vec(),
                        pre_avg_layernorm1: m.pre_avg_layernorm1.to_vec(),
                        pre_avg_layernorm2: m.pre_avg_layernorm2.to_vec(),
                        out_proj: linear(&m.out_proj),
                        pre_moe_layernorm: l.pre_moe_layernorm.to_vec(),
                        gate_proj: mlp.gate_proj.as_ref().map(|g| Linear { weight: matrix_rows(g), bias: None }),
                        up_proj: Linear { weight: matrix_rows(&mlp.up_proj), bias: None },
                        down_proj: Linear { weight: matrix_rows(&mlp.down_proj), bias: None },
                    }
                })
                .collect(),
            final_layernorm: w.final_layernorm.to_vec(),
            lm_head: matrix_rows(w.lm_head()),
        }
    }
}

fn matrix_rows(m: &Matrix) -> Vectors {
    array_rows(&m.to_f32())
}

fn array_rows(a: &Array2<f32>) -> Vectors {
    a.rows().into_iter().map(|row| row.to_vec()).collect()
}

fn linear(l: &LoadedLinear) -> Linear {
    Linear { weight: matrix_rows(&l.weight), bias: l.bias.as_ref().map(|b| b.to_vec()) }
}

// ---------------------------------------------------------------------------------------------
// The model: full forward pass, and the same pass a token at a time
// ---------------------------------------------------------------------------------------------

/// What a sequence carries from one pass to the next, as plain vectors. The plain cache keeps
/// every position; the fast path's cache keeps only what the window lets a later query see
/// (docs/MODEL.md §5), which the mask makes equivalent.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Positions processed so far, meta tokens included: the position of the next row.
    pub len: usize,
    /// Per layer, the rotated keys of every position (S, nkv, dqk); empty in a layer that reuses K/V.
    pub keys: Vec<Vec<Vectors>>,
    /// Per layer, the values of every position (S, nkv, dv); empty in a layer that reuses K/V.
    pub values: Vec<Vec<Vectors>>,
    /// Per layer, the last K−1 inputs of the conv (K−1, D): zeros before the first row.
    pub conv: Vec<Vectors>,
    /// Per layer, the selective scan's state (D, N): zeros before the first row.
    pub ssm: Vec<Vectors>,
}

impl Cache {
    /// The cache of a sequence before its first row.
    pub fn new(cfg: &HymbaConfig) -> Cache {
        let (l, d) = (cfg.num_hidden_layers, cfg.d_inner());
        Cache {
            len: 0,
            keys: vec![Vec::new(); l],
            values: vec![Vec::new(); l],
            conv: vec![vec![vec![0.0; d]; cfg.mamba_d_conv - 1]; l], // (L, K−1, D)
            ssm: vec![vec![vec![0.0; cfg.mamba_d_state]; d]; l],     // (L, D, N)
        }
    }
}

/// The full forward pass: logits for every token of `ids`. ids → (n, V)
///
/// Panics if an id is not below the vocabulary size (the fast path checks user input first).
pub fn forward(cfg: &HymbaConfig, w: &Weights, ids: &[u32]) -> Vectors {
    prefill(cfg, w, ids).1
}

/// The full forward pass that starts a sequence: returns its cache (for [`step`]) and the logits
/// of every token of `ids`. ids → (Cache, (n, V))
pub fn prefill(cfg: &HymbaConfig, w: &Weights, ids: &[u32]) -> (Cache, Vectors) {
    let m = cfg.num_memory_tokens;
    // §3.1 X = [memory_tokens ; embed[ids]]: the M meta tokens take positions 0..M, the first
    //    token position M. They do not depend on the prompt; the fast path runs them once per
    //    model, here they go through the layers with every prompt, as in the released code.
    let mut x = w.memory_tokens.clone(); // (M, H)
    x.extend(ids.iter().map(|&id| embed(cfg, w, id))); // (M+n, H)
    let mut cache = Cache::new(cfg);
    // dynamic_ntk picks the RoPE base from the largest position of the call (docs/MODEL.md §4).
    let base = rope_base(cfg, m + ids.len());
    let x = layers(cfg, w, &mut cache, x, base); // (M+n, H)
    // §3.9 Drop the meta rows, final norm, lm_head.
    (cache, lm_head(cfg, w, &x[m..])) // (n, V)
}

/// One more token of the sequence in `cache` (from [`prefill`]): its logits. id → (V)
/// Panics if `id` is not below the vocabulary size.
///
/// As the released cached decode, the new token is rotated with the RoPE base for its own
/// position and the cached keys keep theirs: past `orig_max_position_embeddings`, a
/// `dynamic_ntk` model's steps therefore differ from its full forward pass (docs/MODEL.md §4, §8).
pub fn step(cfg: &HymbaConfig, w: &Weights, cache: &mut Cache, id: u32) -> Vec<f32> {
    let x = vec![embed(cfg, w, id)]; // (1, H)
    let base = rope_base(cfg, cache.len + 1);
    let x = layers(cfg, w, cache, x, base); // (1, H)
    lm_head(cfg, w, &x).remove(0) // (V)
}

/// Row `id` of the embedding. → (H)
fn embed(cfg: &HymbaConfig, w: &Weights, id: u32) -> Vec<f32> {
    let v = cfg.vocab_size;
    assert!((id as usize) < v, "token id {id} is not below the vocabulary size {v}");
    w.embed_tokens[id as usize].clone() // (H)
}

/// §3.2–3.8 Every layer in turn on the rows `x`, the next rows of the sequence in `cache`: they
/// take positions `cache.len`, `cache.len + 1`, … (T, H) → (T, H)
fn layers(cfg: &HymbaConfig, w: &Weights, cache: &mut Cache, mut x: Vectors, base: Option<f64>) -> Vectors {
    let t = x.len();
    for (plan, w) in cfg.layers.iter().zip(&w.layers) {
        x = layer(Layer { cfg, plan, w }, x, base, cache); // (T, H)
    }
    cache.len += t;
    x
}

/// §3.9 `logits = RMSNorm(X; final_layernorm) · lm_headᵀ`. (T, H) → (T, V)
fn lm_head(cfg: &HymbaConfig, w: &Weights, x: &[Vec<f32>]) -> Vectors {
    let normed: Vectors = x.iter().map(|row| rms_norm(row, &w.final_layernorm, cfg.rms_norm_eps)).collect(); // (T, H)
    normed.iter().map(|row| matvec(&w.lm_head, row)).collect() // (T, V)
}

// ---------------------------------------------------------------------------------------------
// One layer
// ---------------------------------------------------------------------------------------------

/// One layer as its functions see it: the config, the layer's plan (global or window; owns K/V or
/// reuses layer j) and its weights.
#[derive(Debug, Clone, Copy)]
struct Layer<'a> {
    cfg: &'a HymbaConfig,
    plan: &'a LayerPlan,
    w: &'a LayerWeights,
}

/// One hybrid-head layer on the rows `x`, the next rows of the sequence in `cache` (positions
/// `cache.len`, … as [`layers`] says), with the call's RoPE `base`, reading and extending
/// `cache`. (T, H) → (T, H)
fn layer(layer: Layer, x: Vectors, base: Option<f64>, cache: &mut Cache) -> Vectors {
    let Layer { cfg, plan, w } = layer;
    let (eps, d) = (cfg.rms_norm_eps, cfg.d_inner());
    debug_assert!(x.iter().all(|row| row.len() == cfg.hidden_size));

    // §3.2 h = RMSNorm(X; input_layernorm); Z = h · in_projᵀ (+ bias)
    let h: Vectors = x.iter().map(|row| rms_norm(row, &w.input_layernorm, eps)).collect(); // (T, H)
    let zxbc = apply(&w.in_proj, &h); // (T, P)

    // §3.2 Split Z's columns in checkpoint order: q, then k and v unless the layer reuses K/V,
    //          then the SSM input x, then the gate z.
    let mut at = 0;
    let mut take = |width: usize| {
        let block: Vectors = zxbc.iter().map(|row| row[at..at + width].to_vec()).collect(); // (T, width)
        at += width;
        block
    };
    let q = take(cfg.hidden_size); // (T, nh·dqk)
    let kv = plan.owns_kv().then(|| (take(cfg.k_width()), take(cfg.v_width()))); // (T, nkv·dqk), (T, nkv·dv)
    let ssm_x = take(d); // (T, D)
    let z = take(d); // (T, D)
    debug_assert_eq!(at, cfg.in_proj_rows(plan));

    // §3.3–3.5 Attention heads ∥ §3.6 SSM heads, on the same input.
    let attn = attention_heads(layer, &q, kv, base, cache); // (T, D)
    let ssm = ssm_heads(layer, &ssm_x, &z, cache); // (T, D)

    // §3.7 Fusion (paper eq. 3): each branch RMS-normalised with its own scale β1, β2, averaged.
    let fused: Vectors = attn
        .iter()
        .zip(&ssm)
        .map(|(a, s)| {
            let a = rms_norm(a, &w.pre_avg_layernorm1, eps); // (D): β1 · norm(attn)
            let s = rms_norm(s, &w.pre_avg_layernorm2, eps); // (D): β2 · norm(ssm)
            a.iter().zip(&s).map(|(a, s)| (a + s) / 2.0).collect()
        })
        .collect(); // (T, D)
    let x = add(&x, &apply(&w.out_proj, &fused)); // (T, H): residual

    // §3.8 MLP, residual.
    let h2: Vectors = x.iter().map(|row| rms_norm(row, &w.pre_moe_layernorm, eps)).collect(); // (T, H)
    add(&x, &mlp(cfg, w, &h2)) // (T, H)
}

/// The one MLP the released model builds (`moe.experts.0`, whatever `num_experts` says).
/// silu: `down(SiLU(gate(h)) ⊙ up(h))`; relu2: `down(relu(up(h))²)`. (T, H) → (T, H)
fn mlp(cfg: &HymbaConfig, w: &LayerWeights, h: &Vectors) -> Vectors {
    let up = apply(&w.up_proj, h); // (T, F)
    let act: Vectors = match cfg.mlp_hidden_act {
        MlpActivation::Silu => {
            let gate = apply(w.gate_proj.as_ref().expect("a silu MLP has gate_proj"), h); // (T, F)
            zip_rows(&gate, &up, |g, u| silu(g) * u) // (T, F)
        }
        MlpActivation::Relu2 => up.iter().map(|row| row.iter().map(|&u| u.max(0.0).powi(2)).collect()).collect(), // (T, F)
    };
    apply(&w.down_proj, &act) // (T, H)
}

// ---------------------------------------------------------------------------------------------
// Attention heads
// ---------------------------------------------------------------------------------------------

/// The attention heads of one layer: q (T, nh·dqk) and, in a K/V producer, k (T, nkv·dqk) and
/// v (T, nkv·dv) → the heads concatenated (T, nh·dv) = (T, D). There is no output projection.
/// The rows are the next of the sequence in `cache`; `base` is the call's RoPE base.
fn attention_heads(layer: Layer, q: &Vectors, kv: Option<(Vectors, Vectors)>, base: Option<f64>, cache: &mut Cache) -> Vectors {
    let Layer { cfg, plan, w } = layer;
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let (dqk, dv, m) = (cfg.head_dim_qk(), cfg.head_dim_v(), cfg.num_memory_tokens);
    let positions: Vec<usize> = (cache.len..cache.len + q.len()).collect(); // (T)

    // Queries: split into heads, q_norm, RoPE.
    let q: Vec<Vectors> = q
        .iter()
        .zip(&positions)
        .map(|(row, &p)| prepare_heads(cfg, row, w.q_norm.as_ref(), p, base)) // (nh, dqk)
        .collect(); // (T, nh, dqk)

    // A K/V producer: k_norm and RoPE on its new keys, which go with its values into its cache.
    if let Some((k, v)) = kv {
        for ((k_row, v_row), &p) in k.iter().zip(&v).zip(&positions) {
            let keys = prepare_heads(cfg, k_row, w.k_norm.as_ref(), p, base); // (nkv, dqk)
            cache.keys[plan.index].push(keys);
            cache.values[plan.index].push(split_heads(v_row, nkv)); // (nkv, dv)
        }
    }
    // K/V sharing: a reusing layer reads its producer's rotated keys and values unchanged (the
    // producer is an earlier layer, so they already hold this pass's rows).
    let producer = match plan.kv {
        KvSource::Own => plan.index,
        KvSource::ReuseFrom(j) => j,
    };
    let (keys, values) = (&cache.keys[producer], &cache.values[producer]); // (S, nkv, dqk), (S, nkv, dv)
    debug_assert!(positions.last().is_none_or(|&p| keys.len() == p + 1), "key row j is position j");

    // Every query against the keys its mask allows. Whether a layer is global is its own
    // index's property, also when it reuses a window layer's K/V.
    let group = nh / nkv; // query heads per K/V head (GQA)
    let mut out = Vec::with_capacity(q.len());
    for (q_heads, &i) in q.iter().zip(&positions) {
        let visible: Vec<usize> = (0..=i).filter(|&j| allowed(plan.attention, i, j, m)).collect(); // (S_i): the keys query i sees
        let mut row = Vec::with_capacity(nh * dv); // (nh·dv)
        for (head, q_head) in q_heads.iter().enumerate() {
            let g = head / group; // the K/V head this query head reads
            let scores: Vec<f32> = visible.iter().map(|&j| dot(q_head, &keys[j][g]) / (dqk as f32).sqrt()).collect(); // (S_i)
            let probs = softmax(&scores); // (S_i)
            let mut o = vec![0.0; dv]; // (dv)
            for (&j, &p) in visible.iter().zip(&probs) {
                o.iter_mut().zip(&values[j][g]).for_each(|(o, &v)| *o += p * v);
            }
            row.extend(o);
        }
        debug_assert_eq!(row.len(), cfg.d_inner());
        out.push(row);
    }
    out // (T, nh·dv) = (T, D)
}

/// Allowed(i, j) = `j ≤ i` and (the layer is global, or `i − j ≤ W`, or `j < M`): a sliding-window
/// query sees itself, the W positions before it, and always every meta token. (The released
/// cached decode keeps one window position fewer; docs/MODEL.md §8: we follow the
/// prefill and training mask everywhere.)
fn allowed(span: AttentionSpan, i: usize, j: usize, m: usize) -> bool {
    j <= i
        && match span {
            AttentionSpan::Global => true,
            AttentionSpan::SlidingWindow(window) => i - j <= window || j < m,
        }
}

/// One row of q or k (heads·dqk) at position `p` → (heads, dqk): split into heads, RMSNorm each
/// head with `norm` if `kq_norm` is set (before RoPE), then rotate each head by RoPE with `base`
/// if the model has it.
fn prepare_heads(cfg: &HymbaConfig, row: &[f32], norm: Option<&Vectors>, p: usize, base: Option<f64>) -> Vectors {
    let (heads, eps) = (row.len() / cfg.head_dim_qk(), cfg.rms_norm_eps);
    let mut out = split_heads(row, heads); // (heads, dqk)
    for (h, head) in out.iter_mut().enumerate() {
        if let Some(norm) = norm {
            let weight = match cfg.kq_norm {
                KqNorm::PerHeadRms => &norm[h], // one weight row per head
                _ => &norm[0],                  // `rms`: one row shared by every head
            }; // (dqk)
            *head = rms_norm(head, weight, eps);
        }
        if let Some(base) = base {
            rope(head, p, base);
        }
    }
    out
}

/// (heads·dim) → (heads, dim)
fn split_heads(row: &[f32], heads: usize) -> Vectors {
    row.chunks(row.len() / heads).map(|head| head.to_vec()).collect()
}

/// RoPE, rotate-half (NeoX) layout, one head (dqk) at position `p`, in place:
/// `inv_freq_k = base^(−2k/dqk)` for k < dqk/2, angle `p · inv_freq_k` on the pair (k, k + dqk/2),
/// `x' = x·cos + [−x₂, x₁]·sin`. Like the released code, `inv_freq` and the angle are float32;
/// cos and sin of that angle are then taken exactly (docs/MODEL.md §4: the release leaves precision open; at long
/// contexts the float32 angle is part of the model's behaviour).
fn rope(head: &mut [f32], p: usize, base: f64) {
    let dim = head.len();
    let half = dim / 2;
    for k in 0..half {
        let inv_freq = (1.0 / base.powf(2.0 * k as f64 / dim as f64)) as f32;
        let angle = (p as f32 * inv_freq) as f64;
        let (cos, sin) = (angle.cos() as f32, angle.sin() as f32);
        let (x1, x2) = (head[k], head[k + half]);
        head[k] = x1 * cos - x2 * sin;
        head[k + half] = x2 * cos + x1 * sin;
    }
}

/// The RoPE base for a pass whose largest position is `seq_len − 1`; `None` when `rope` is false
/// (q and k are then used as they are).
/// - `default`: rope_theta;
/// - `ntk` (the released models): rope_theta · (2·max_position_embeddings / orig_max − 1)^(dqk/(dqk−2)), at every length;
/// - `dynamic_ntk`: rope_theta while seq_len ≤ orig_max, else the same formula with seq_len for max_position_embeddings.
fn rope_base(cfg: &HymbaConfig, seq_len: usize) -> Option<f64> {
    let rope = cfg.rope?;
    let dqk = cfg.head_dim_qk() as f64;
    let ntk = |len: usize, orig: usize| rope.theta * (2.0 * len as f64 / orig as f64 - 1.0).powf(dqk / (dqk - 2.0));
    Some(match rope.scaling {
        RopeScaling::Default => rope.theta,
        RopeScaling::Ntk { max_position_embeddings, orig_max_position_embeddings } => {
            ntk(max_position_embeddings, orig_max_position_embeddings)
        }
        RopeScaling::DynamicNtk { orig_max_position_embeddings } if seq_len > orig_max_position_embeddings => {
            ntk(seq_len, orig_max_position_embeddings)
        }
        RopeScaling::DynamicNtk { .. } => rope.theta,
    })
}

// ---------------------------------------------------------------------------------------------
// SSM heads (Mamba-1 selective scan)
// ---------------------------------------------------------------------------------------------

/// The SSM heads of one layer: the input x (T, D) and gate z (T, D) → y (T, D), advancing the
/// layer's conv state (K−1, D) and scan state (D, N) in `cache`.
fn ssm_heads(layer: Layer, x: &Vectors, z: &Vectors, cache: &mut Cache) -> Vectors {
    let Layer { cfg, plan, w } = layer;
    let (conv_state, scan) = (&mut cache.conv[plan.index], &mut cache.ssm[plan.index]); // (K−1, D), (D, N)
    let (d, n, r, k) = (cfg.d_inner(), cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.mamba_d_conv);
    let eps = cfg.rms_norm_eps;
    let t = x.len();

    // u = SiLU(conv(x) + conv_bias): causal depthwise conv over time, kernel K, reading the K−1
    // inputs before this pass from the conv state.
    let mut padded = conv_state.clone(); // (K−1, D)
    padded.extend(x.iter().cloned()); // (K−1+T, D): row K−1+t is x_t
    let u: Vectors = (0..t)
        .map(|ti| {
            (0..d)
                .map(|c| {
                    let conv: f32 = (0..k).map(|j| w.conv1d_weight[c][j] * padded[ti + j][c]).sum();
                    silu(conv + w.conv1d_bias.as_ref().map_or(0.0, |b| b[c]))
                })
                .collect()
        })
        .collect(); // (T, D)
    *conv_state = padded[t..].to_vec(); // (K−1, D): the last K−1 inputs

    // [dt | B | C] = u · x_projᵀ, widths R, N, N; each RMS-normalised with inner layernorms.
    let dt_b_c = apply(&w.x_proj, &u); // (T, R + 2N)
    let inner_norm = |part: &[f32], weight: &Option<Vec<f32>>| match weight {
        Some(weight) => rms_norm(part, weight, eps),
        None => part.to_vec(),
    };

    let mut y = Vec::with_capacity(t);
    for ti in 0..t {
        let dt = inner_norm(&dt_b_c[ti][..r], &w.dt_layernorm); // (R)
        let b = inner_norm(&dt_b_c[ti][r..r + n], &w.b_layernorm); // (N)
        let c = inner_norm(&dt_b_c[ti][r + n..], &w.c_layernorm); // (N)
        // Δ = softplus(dt · dt_projᵀ + dt_bias)
        let delta: Vec<f32> = affine(&w.dt_proj, &dt).into_iter().map(softplus).collect(); // (D)
        // The selective scan, one step, per channel ch with its state s_ch ∈ ℝᴺ and A = −exp(A_log):
        //   s_ch ← exp(Δ_ch · A_ch) ⊙ s_ch + Δ_ch · u_ch · B;   y_ch = C · s_ch + D_ch · u_ch
        // then the gate: y ⊙ SiLU(z).
        let mut y_t = vec![0.0; d]; // (D)
        for ch in 0..d {
            let (dt_ch, u_ch) = (delta[ch], u[ti][ch]);
            let mut acc = 0.0;
            for j in 0..n {
                let s = (dt_ch * w.a[ch][j]).exp() * scan[ch][j] + dt_ch * u_ch * b[j];
                scan[ch][j] = s;
                acc += c[j] * s;
            }
            y_t[ch] = (acc + w.d[ch] * u_ch) * silu(z[ti][ch]);
        }
        y.push(y_t);
    }
    y // (T, D)
}

// ---------------------------------------------------------------------------------------------
// Small math
// ---------------------------------------------------------------------------------------------

/// `RMSNorm(x; w) = x / sqrt(mean(x²) + eps) * w`. (width) → (width)
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    debug_assert_eq!(x.len(), weight.len());
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv_rms = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv_rms * w).collect()
}

/// `y = W·x (+ b)` for one row. (in) → (out)
fn affine(l: &Linear, x: &[f32]) -> Vec<f32> {
    let mut y = matvec(&l.weight, x); // (out)
    if let Some(bias) = &l.bias {
        y.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
    }
    y
}

/// A linear map on every row: `x · Wᵀ (+ b)`. (T, in) → (T, out)
fn apply(l: &Linear, x: &Vectors) -> Vectors {
    x.iter().map(|row| affine(l, row)).collect()
}

/// `W·x`, W `[out, in]`. (in) → (out)
fn matvec(weight: &Vectors, x: &[f32]) -> Vec<f32> {
    weight.iter().map(|w_row| dot(w_row, x)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Elementwise `a + b`. (T, width), (T, width) → (T, width)
fn add(a: &Vectors, b: &Vectors) -> Vectors {
    zip_rows(a, b, |a, b| a + b)
}

/// Elementwise `f(a, b)`. (T, width), (T, width) → (T, width)
fn zip_rows(a: &Vectors, b: &Vectors, f: impl Fn(f32, f32) -> f32) -> Vectors {
    a.iter().zip(b).map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()).collect()
}

/// `exp(sᵢ − max) / Σⱼ exp(sⱼ − max)`. (S) → (S)
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// `log(1 + eᵛ)`, and `v` itself for v > 20 (PyTorch's softplus threshold, as the released code).
fn softplus(v: f32) -> f32 {
    if v > 20.0 { v } else { v.exp().ln_1p() }
}
