//! `config.json` → a validated [`HymbaConfig`] and its per-layer plan, resolved once.
//!
//! The released config carries many fields; the engine honours exactly those docs/MODEL.md §9 lists and
//! ignores the bookkeeping ones (`v_head_dim`, `conv_dim`, `layer_type`, `attn_implementation*`,
//! `seq_length`, `use_mamba_kernels`, `calc_logits_for_entire_prompt`, `num_experts*`: the released
//! model always builds exactly one MLP). Everything derived (D, dqk, dv, R, the layer plan) is
//! computed here, so the model code never looks at raw config values again, and the config never
//! changes after it is built.

use crate::base::error::{Error, ErrorKind, Result};
use crate::kernels::quant::QuantType;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::Path;

/// The most layers a config may have. The largest released Hymba has 32; the bound only stops a
/// corrupt `config.json` from making the engine allocate a plan for billions of layers.
pub const MAX_LAYERS: usize = 10_000;

/// The most parameters a config may imply (2⁴⁰ ≈ 1.1·10¹², 4 TiB as f32). Refusing more up front
/// guarantees that no size derived from the config (tensor shapes, element and byte counts, the
/// parameter count) can overflow.
pub const MAX_PARAMETERS: u64 = 1 << 40;

/// The MLP activation (`mlp_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// Gated: `down(SiLU(gate(h)) ⊙ up(h))`.
    Silu,
    /// Squared ReLU, ungated: `down(relu(up(h))²)`.
    Relu2,
}

/// Optional RMSNorm of each query/key head before RoPE (`kq_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KqNorm {
    None,
    /// One weight vector `[dqk]` shared by all heads.
    Rms,
    /// One weight vector per head: `[1, heads, 1, dqk]`.
    PerHeadRms,
}

/// How the RoPE base is chosen (`rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// base = rope_theta.
    Default,
    /// base = rope_theta · (2·max_pos/orig_max − 1)^(dqk/(dqk−2)) at every length.
    Ntk { max_position_embeddings: usize, orig_max_position_embeddings: usize },
    /// base = rope_theta while the forward call's positions fit in orig_max, NTK-scaled beyond.
    DynamicNtk { orig_max_position_embeddings: usize },
}

/// Rotary position embedding settings (absent when `rope` is false).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// The RoPE base for a forward call whose largest position is `seq_len − 1` (docs/MODEL.md §4):
    /// `default`: θ; `ntk`: θ·(2·max/orig − 1)^(dqk/(dqk−2)) always; `dynamic_ntk`: θ while
    /// `seq_len` ≤ orig, the same formula with `seq_len` for max beyond.
    pub fn base(&self, head_dim: usize, seq_len: usize) -> f64 {
        let ntk = |len: usize, orig: usize| {
            let exponent = head_dim as f64 / (head_dim as f64 - 2.0);
            self.theta * (2.0 * len as f64 / orig as f64 - 1.0).powf(exponent)
        };
        match self.scaling {
            RopeScaling::Default => self.theta,
            RopeScaling::Ntk { max_position_embeddings, orig_max_position_embeddings } => {
                ntk(max_position_embeddings, orig_max_position_embeddings)
            }
            RopeScaling::DynamicNtk { orig_max_position_embeddings } => {
                if seq_len <= orig_max_position_embeddings {
                    self.theta
                } else {
                    ntk(seq_len, orig_max_position_embeddings)
                }
            }
        }
    }
}

/// Which keys a layer's queries may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSpan {
    /// Every earlier position (layers in `global_attn_idx`, or all layers when there is no window).
    Global,
    /// Itself, the `W` positions before it, and always the `M` meta tokens.
    SlidingWindow(usize),
}

/// Where a layer's keys and values come from (cross-layer K/V sharing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSource {
    /// The layer projects its own K/V (its `in_proj` has k and v columns).
    Own,
    /// The layer reuses the rotated K/V of this earlier layer (its `in_proj` has no k, v columns).
    ReuseFrom(usize),
}

/// The resolved plan of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPlan {
    pub index: usize,
    pub attention: AttentionSpan,
    pub kv: KvSource,
    /// For a K/V producer: how much of its K/V a cache must keep, the widest span among the layer
    /// itself and every layer that reuses it. `None` for reusing layers (they keep nothing).
    pub kv_retention: Option<AttentionSpan>,
}

impl LayerPlan {
    pub fn owns_kv(&self) -> bool {
        self.kv == KvSource::Own
    }

    /// The layer whose K/V cache this layer attends to: itself, or the layer it reuses.
    pub fn kv_producer(&self) -> usize {
        self.kv.producer(self.index)
    }
}

impl KvSource {
    /// The producing layer, for layer `index` with this source.
    pub fn producer(self, index: usize) -> usize {
        match self {
            KvSource::Own => index,
            KvSource::ReuseFrom(j) => j,
        }
    }
}

/// Where a checkpoint tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScope {
    /// Once in the model, under its own key.
    Model,
    /// In every layer, under `model.layers.{i}.` + key.
    EveryLayer,
    /// In the layers that produce K/V. The released layout carries it in reusing layers too,
    /// where it is never used: there it is accepted and ignored.
    KvProducers,
}

/// How the loader keeps a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A matrix in its stored dtype, bf16 staying bf16 (see `matrix`): the large projections.
    Matrix,
    /// Converted to f32 at load: vectors, the conv kernel, meta tokens, `A_log` (kept as
    /// A = −exp(A_log)).
    F32,
}

/// How much of a tensor one decode step reads (the roofline of `hymba-ref bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeRead {
    All,
    Nothing,
    /// The embedding: one looked-up row, or all of it when it is also the (tied) `lm_head`.
    EmbeddingRow,
}

/// The sizes a shape is made of, in u128 so that an absurd config can be measured (and refused)
/// without overflow.
#[derive(Debug, Clone, Copy)]
pub struct ShapeDims {
    pub v: u128,
    pub h: u128,
    pub d: u128,
    pub n: u128,
    pub k: u128,
    pub r: u128,
    pub f: u128,
    pub m: u128,
    pub nh: u128,
    pub nkv: u128,
    pub dqk: u128,
    pub dv: u128,
}

impl ShapeDims {
    /// Output rows of `in_proj`: q `[H]` + k `[nkv·dqk]` + v `[nkv·dv]` (a K/V producer) + x, z `[D]`.
    fn in_proj(&self, owns_kv: bool) -> u128 {
        self.h + if owns_kv { self.nkv * (self.dqk + self.dv) } else { 0 } + 2 * self.d
    }
}

/// One row of the weight table: a checkpoint key, where it is, when the config has it, its shape.
#[derive(Debug, Clone, Copy)]
pub struct WeightSpec {
    pub key: &'static str,
    pub scope: WeightScope,
    pub storage: Storage,
    pub decode_read: DecodeRead,
    /// Whether `cfg` has this tensor.
    pub present: fn(&HymbaConfig) -> bool,
    /// Its checkpoint shape; `owns_kv` tells a layer that produces K/V from one that reuses.
    pub shape: fn(&HymbaConfig, &ShapeDims, bool) -> Vec<u128>,
}

impl WeightSpec {
    /// The checkpoint name, in layer `layer` for a per-layer tensor.
    pub fn name(&self, layer: Option<usize>) -> String {
        match layer {
            Some(i) => format!("model.layers.{i}.{}", self.key),
            None => self.key.to_string(),
        }
    }
}

/// `[dqk]` (`rms`) or `[1, heads, 1, dqk]` (`perhead-rms`): a q_norm / k_norm weight.
fn kq_norm_shape(cfg: &HymbaConfig, heads: u128, dqk: u128) -> Vec<u128> {
    match cfg.kq_norm {
        KqNorm::PerHeadRms => vec![1, heads, 1, dqk],
        KqNorm::Rms | KqNorm::None => vec![dqk],
    }
}

macro_rules! weight {
    ($name:ident, $key:literal, $scope:ident, $storage:ident, $read:ident, $present:expr, $shape:expr) => {
        #[doc = concat!("`", $key, "`")]
        pub const $name: WeightSpec = WeightSpec {
            key: $key,
            scope: WeightScope::$scope,
            storage: Storage::$storage,
            decode_read: DecodeRead::$read,
            present: $present,
            shape: $shape,
        };
    };
}

/// The weight table (docs/MODEL.md §2): every tensor a Hymba checkpoint can hold, named as its
/// checkpoint key. It drives the config's size check, the loader's name and shape checks
/// (`checkpoint::weights`), the parameter counts of `inspect` and `bench`, and random weights.
pub mod weights {
    use super::{DecodeRead, KqNorm, MlpActivation, Storage, WeightScope, WeightSpec};

    weight!(EMBED_TOKENS, "model.embed_tokens.weight", Model, Matrix, EmbeddingRow, |_| true, |_, d, _| vec![d.v, d.h]);
    weight!(MEMORY_TOKENS, "model.memory_tokens", Model, F32, Nothing, |c| c.num_memory_tokens > 0, |_, d, _| vec![d.m, d.h]);
    weight!(FINAL_LAYERNORM, "model.final_layernorm.weight", Model, F32, All, |_| true, |_, d, _| vec![d.h]);
    weight!(LM_HEAD, "lm_head.weight", Model, Matrix, All, |c| !c.tie_word_embeddings, |_, d, _| vec![d.v, d.h]);
    weight!(INPUT_LAYERNORM, "input_layernorm.weight", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.h]);
    weight!(IN_PROJ, "mamba.in_proj.weight", EveryLayer, Matrix, All, |_| true, |_, d, own| vec![d.in_proj(own), d.h]);
    weight!(IN_PROJ_BIAS, "mamba.in_proj.bias", EveryLayer, F32, All, |c| c.mamba_proj_bias, |_, d, own| vec![d.in_proj(own)]);
    weight!(CONV1D, "mamba.conv1d.weight", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d, 1, d.k]);
    weight!(CONV1D_BIAS, "mamba.conv1d.bias", EveryLayer, F32, All, |c| c.mamba_conv_bias, |_, d, _| vec![d.d]);
    weight!(X_PROJ, "mamba.x_proj.0.weight", EveryLayer, Matrix, All, |_| true, |_, d, _| vec![d.r + 2 * d.n, d.d]);
    weight!(DT_PROJ, "mamba.dt_proj.0.weight", EveryLayer, Matrix, All, |_| true, |_, d, _| vec![d.d, d.r]);
    weight!(DT_PROJ_BIAS, "mamba.dt_proj.0.bias", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d]);
    weight!(A_LOG, "mamba.A_log.0", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d, d.n]);
    weight!(D, "mamba.D.0", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d]);
    weight!(DT_LAYERNORM, "mamba.dt_layernorm.weight", EveryLayer, F32, All, |c| c.mamba_inner_layernorms, |_, d, _| vec![d.r]);
    weight!(B_LAYERNORM, "mamba.B_layernorm.weight", EveryLayer, F32, All, |c| c.mamba_inner_layernorms, |_, d, _| vec![d.n]);
    weight!(C_LAYERNORM, "mamba.C_layernorm.weight", EveryLayer, F32, All, |c| c.mamba_inner_layernorms, |_, d, _| vec![d.n]);
    weight!(PRE_AVG_LAYERNORM1, "mamba.pre_avg_layernorm1.weight", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d]);
    weight!(PRE_AVG_LAYERNORM2, "mamba.pre_avg_layernorm2.weight", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.d]);
    weight!(OUT_PROJ, "mamba.out_proj.weight", EveryLayer, Matrix, All, |_| true, |_, d, _| vec![d.h, d.d]);
    weight!(OUT_PROJ_BIAS, "mamba.out_proj.bias", EveryLayer, F32, All, |c| c.mamba_proj_bias, |_, d, _| vec![d.h]);
    weight!(Q_NORM, "mamba.self_attn.q_norm.weight", EveryLayer, F32, All, |c| c.kq_norm != KqNorm::None, |c, d, _| super::kq_norm_shape(c, d.nh, d.dqk));
    weight!(K_NORM, "mamba.self_attn.k_norm.weight", KvProducers, F32, All, |c| c.kq_norm != KqNorm::None, |c, d, _| super::kq_norm_shape(c, d.nkv, d.dqk));
    weight!(PRE_MOE_LAYERNORM, "pre_moe_layernorm.weight", EveryLayer, F32, All, |_| true, |_, d, _| vec![d.h]);
    weight!(GATE_PROJ, "moe.experts.0.gate_proj.weight", EveryLayer, Matrix, All, |c| c.mlp_hidden_act == MlpActivation::Silu, |_, d, _| vec![d.f, d.h]);
    weight!(UP_PROJ, "moe.experts.0.up_proj.weight", EveryLayer, Matrix, All, |_| true, |_, d, _| vec![d.f, d.h]);
    weight!(DOWN_PROJ, "moe.experts.0.down_proj.weight", EveryLayer, Matrix, All, |_| true, |_, d, _| vec![d.h, d.f]);

    /// Every row of the table.
    pub const ALL: [WeightSpec; 27] = [
        EMBED_TOKENS, MEMORY_TOKENS, FINAL_LAYERNORM, LM_HEAD, INPUT_LAYERNORM, IN_PROJ, IN_PROJ_BIAS, CONV1D,
        CONV1D_BIAS, X_PROJ, DT_PROJ, DT_PROJ_BIAS, A_LOG, D, DT_LAYERNORM, B_LAYERNORM, C_LAYERNORM,
        PRE_AVG_LAYERNORM1, PRE_AVG_LAYERNORM2, OUT_PROJ, OUT_PROJ_BIAS, Q_NORM, K_NORM, PRE_MOE_LAYERNORM,
        GATE_PROJ, UP_PROJ, DOWN_PROJ,
    ];
}

/// One tensor of a particular config: its checkpoint name and shape, its layer, and its table row.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// `None` for a model-level tensor.
    pub layer: Option<usize>,
    pub spec: WeightSpec,
}

impl TensorSpec {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated Hymba config. Field names follow `config.json`; comments give the symbol of docs/MODEL.md §1.
#[derive(Debug, Clone, PartialEq)]
pub struct HymbaConfig {
    /// V
    pub vocab_size: usize,
    /// H
    pub hidden_size: usize,
    /// L
    pub num_hidden_layers: usize,
    /// nh
    pub num_attention_heads: usize,
    /// nkv
    pub num_key_value_heads: usize,
    /// F
    pub intermediate_size: usize,
    /// D / H
    pub mamba_expand: usize,
    /// N
    pub mamba_d_state: usize,
    /// K
    pub mamba_d_conv: usize,
    /// R (`"auto"` resolved to ceil(H/16))
    pub mamba_dt_rank: usize,
    /// M
    pub num_memory_tokens: usize,
    /// W (`None`: no window anywhere)
    pub sliding_window: Option<usize>,
    pub global_attn_idx: Vec<usize>,
    pub rms_norm_eps: f32,
    pub rope: Option<RopeConfig>,
    pub kq_norm: KqNorm,
    pub mlp_hidden_act: MlpActivation,
    pub mamba_conv_bias: bool,
    pub mamba_proj_bias: bool,
    pub mamba_inner_layernorms: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `"quantization": {"type": "q8_0", "block_size": 32}`: the checkpoint stores every
    /// [`Storage::Matrix`] tensor in that block format (see `docs/QUANTIZATION.md`); `None` for
    /// float weights.
    pub quantization: Option<QuantType>,
    /// One entry per layer, resolved once from `global_attn_idx`, `sliding_window` and the K/V
    /// sharing fields.
    pub layers: Vec<LayerPlan>,
}

impl HymbaConfig {
    /// D: the SSM inner width, also the width of the concatenated attention heads.
    pub fn d_inner(&self) -> usize {
        self.mamba_expand * self.hidden_size
    }
    /// dqk: query/key head dim.
    pub fn head_dim_qk(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// dv: value head dim (values are wider than keys: D / nh).
    pub fn head_dim_v(&self) -> usize {
        self.d_inner() / self.num_attention_heads
    }
    /// Width of the `k` columns of `in_proj`: nkv·dqk.
    pub fn k_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim_qk()
    }
    /// Width of the `v` columns of `in_proj`: nkv·dv.
    pub fn v_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim_v()
    }
    /// Output rows of `in_proj` for a layer: q `[H]` + (k, v unless reusing) + x `[D]` + z `[D]`.
    pub fn in_proj_rows(&self, plan: &LayerPlan) -> usize {
        let kv = if plan.owns_kv() { self.k_width() + self.v_width() } else { 0 };
        self.hidden_size + kv + 2 * self.d_inner()
    }

    /// The sizes the weight shapes are made of (see [`weights`]), in u128.
    fn shape_dims(&self) -> ShapeDims {
        let u = |x: usize| x as u128;
        let (h, nh) = (u(self.hidden_size), u(self.num_attention_heads));
        let d = u(self.mamba_expand) * h;
        ShapeDims {
            v: u(self.vocab_size),
            h,
            d,
            n: u(self.mamba_d_state),
            k: u(self.mamba_d_conv),
            r: u(self.mamba_dt_rank),
            f: u(self.intermediate_size),
            m: u(self.num_memory_tokens),
            nh,
            nkv: u(self.num_key_value_heads),
            dqk: h / nh,
            dv: d / nh,
        }
    }

    /// Every (table row, layer, shape) this config has, model-level tensors first, then layer by
    /// layer; shapes in u128.
    fn each_weight(&self, mut visit: impl FnMut(&WeightSpec, Option<usize>, Vec<u128>)) {
        let dims = self.shape_dims();
        let present = weights::ALL.iter().filter(|w| (w.present)(self));
        for w in present.clone().filter(|w| w.scope == WeightScope::Model) {
            visit(w, None, (w.shape)(self, &dims, true));
        }
        for plan in &self.layers {
            for w in present.clone() {
                let here = match w.scope {
                    WeightScope::Model => false,
                    WeightScope::EveryLayer => true,
                    WeightScope::KvProducers => plan.owns_kv(),
                };
                if here {
                    visit(w, Some(plan.index), (w.shape)(self, &dims, plan.owns_kv()));
                }
            }
        }
    }

    /// Every tensor this config implies, named and shaped as in the checkpoint (docs/MODEL.md §2).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut tensors = Vec::new();
        self.each_weight(|w, layer, shape| {
            let shape = shape.into_iter().map(|x| x as usize).collect(); // fits: see `check_size`
            tensors.push(TensorSpec { name: w.name(layer), shape, layer, spec: *w });
        });
        tensors
    }

    /// The number of parameters (what the loader will read).
    pub fn parameter_count(&self) -> usize {
        self.tensors().iter().map(TensorSpec::elements).sum()
    }

    /// The parameters one decode step reads: every tensor but the meta tokens, and of an untied
    /// embedding only the looked-up row.
    pub fn decode_read_parameters(&self) -> usize {
        let read = |t: &TensorSpec| match t.spec.decode_read {
            DecodeRead::All => t.elements(),
            DecodeRead::Nothing => 0,
            DecodeRead::EmbeddingRow if self.tie_word_embeddings => t.elements(),
            DecodeRead::EmbeddingRow => self.hidden_size,
        };
        self.tensors().iter().map(read).sum()
    }

    /// A tensor the released layout carries but this config never uses: a `k_norm` in a layer
    /// that reuses K/V ([`WeightScope::KvProducers`]).
    pub fn is_unused_tensor(&self, name: &str) -> bool {
        let Some((index, key)) = name.strip_prefix("model.layers.").and_then(|rest| rest.split_once('.')) else {
            return false;
        };
        let plan = index.parse::<usize>().ok().and_then(|i| self.layers.get(i));
        weights::ALL.iter().any(|w| w.key == key && w.scope == WeightScope::KvProducers && (w.present)(self))
            && plan.is_some_and(|plan| !plan.owns_kv() && name == format!("model.layers.{}.{key}", plan.index))
    }

    /// Read and validate `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<HymbaConfig> {
        let bytes = crate::base::files::read_capped(path, crate::base::files::CONFIG)?;
        let text = crate::base::files::utf8(bytes, &path.display().to_string()).map_err(|e| Error::config(e.message))?;
        Self::from_json_str(&text).map_err(|e| e.context(path.display()))
    }

    /// Parse and validate the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<HymbaConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("not valid JSON: {e}")))?;
        if let Some(key) = crate::base::json_scan::first_duplicate_key(text) {
            return Err(Error::config(format!("the key `{key}` appears twice in one object (refusing to guess which one is meant)")));
        }
        let obj = value.as_object().ok_or_else(|| Error::config("expected a JSON object"))?;
        parse(&Fields(obj))
    }
}

/// Typed access to the JSON object, with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn bad(key: &str, want: &str, v: &Value) -> Error {
        Error::config(format!("field `{key}` must be {want}, found {v}"))
    }
    fn missing(key: &str) -> Error {
        Error::config(format!("field `{key}` is missing"))
    }
    /// A required integer ≥ `min`.
    fn int(&self, key: &str, min: u64) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| Self::missing(key))?;
        match v.as_u64() {
            Some(n) if n >= min && n <= u32::MAX as u64 => Ok(n as usize),
            _ => Err(Self::bad(key, &format!("an integer ≥ {min}"), v)),
        }
    }
    fn int_or(&self, key: &str, min: u64, default: usize) -> Result<usize> {
        if self.get(key).is_some() { self.int(key, min) } else { Ok(default) }
    }
    /// An optional "derived when −1" integer: −1 or absent → None.
    fn derived_int(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.as_i64() == Some(-1) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n as usize)),
                _ => Err(Self::bad(key, "a positive integer or -1", v)),
            },
        }
    }
    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(Self::bad(key, "a positive number", v)),
            },
        }
    }
    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Self::bad(key, "true or false", v)),
        }
    }
    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(str::to_string).ok_or_else(|| Self::bad(key, "a string", v)),
        }
    }
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(Some(n as u32)),
                _ => Err(Self::bad(key, "a token id", v)),
            },
        }
    }
    /// A list of layer indices, each < `layers`.
    fn layer_list(&self, key: &str, v: &Value, layers: usize) -> Result<Vec<usize>> {
        let arr = v.as_array().ok_or_else(|| Self::bad(key, "a list of layer indices", v))?;
        arr.iter()
            .map(|x| match x.as_u64() {
                Some(i) if (i as usize) < layers => Ok(i as usize),
                _ => Err(Error::config(format!(
                    "field `{key}`: {x} is not a layer index (the model has {layers} layers)"
                ))),
            })
            .collect()
    }
}

fn unsupported(key: &str, value: impl std::fmt::Display, why: &str) -> Error {
    Error::new(ErrorKind::UnsupportedConfig, format!("field `{key}` = {value} is not supported: {why}"))
}

fn parse(f: &Fields) -> Result<HymbaConfig> {
    let vocab_size = f.int("vocab_size", 1)?;
    let hidden_size = f.int("hidden_size", 1)?;
    let num_hidden_layers = f.int("num_hidden_layers", 1)?;
    if num_hidden_layers > MAX_LAYERS {
        return Err(Error::config(format!(
            "field `num_hidden_layers` = {num_hidden_layers} exceeds the limit of {MAX_LAYERS} layers"
        )));
    }
    let num_attention_heads = f.int("num_attention_heads", 1)?;
    let num_key_value_heads = f.int_or("num_key_value_heads", 1, num_attention_heads)?;
    let intermediate_size = f.int("intermediate_size", 1)?;
    let mamba_expand = f.int_or("mamba_expand", 1, 2)?;
    let mamba_d_state = f.int_or("mamba_d_state", 1, 16)?;
    let mamba_d_conv = f.int_or("mamba_d_conv", 1, 4)?;
    let num_memory_tokens = f.int_or("num_memory_tokens", 0, 0)?;
    let rms_norm_eps = f.float("rms_norm_eps", 1e-6)? as f32;
    if !rms_norm_eps.is_finite() {
        return Err(Error::config("field `rms_norm_eps` is too large to be a float32"));
    }

    if hidden_size % num_attention_heads != 0 {
        return Err(Error::config(format!(
            "`num_attention_heads` = {num_attention_heads} must divide `hidden_size` = {hidden_size}"
        )));
    }
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(Error::config(format!(
            "`num_key_value_heads` = {num_key_value_heads} must divide `num_attention_heads` = {num_attention_heads}"
        )));
    }
    // The released code builds q with `attn_hidden_size` columns, k/v from it, and concatenates
    // attention heads to width D: it only runs when attn_hidden_size = H and kq_head_dim = H/nh.
    if let Some(a) = f.derived_int("attn_hidden_size")? {
        if a != hidden_size {
            return Err(unsupported("attn_hidden_size", a, "the released model needs it equal to hidden_size (or -1)"));
        }
    }
    if let Some(d) = f.derived_int("kq_head_dim")? {
        if d != hidden_size / num_attention_heads {
            return Err(unsupported("kq_head_dim", d, "the released model needs hidden_size / num_attention_heads (or -1)"));
        }
    }
    let mamba_dt_rank = match f.get("mamba_dt_rank") {
        None => hidden_size.div_ceil(16),
        Some(Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
        Some(_) => f.int("mamba_dt_rank", 1)?,
    };

    let interspersed = f.int_or("memory_tokens_interspersed_every", 0, 0)?;
    if interspersed > 0 {
        return Err(unsupported("memory_tokens_interspersed_every", interspersed, "no released model intersperses meta tokens"));
    }
    if f.bool("kv_weight_reuse", false)? {
        return Err(unsupported("kv_weight_reuse", true, "no released model shares K/V projection weights"));
    }
    let hidden_act = f.string("hidden_act", "silu")?;
    if hidden_act != "silu" {
        return Err(unsupported("hidden_act", format!("{hidden_act:?}"), "the SSM heads use silu"));
    }
    let mlp_hidden_act = match f.string("mlp_hidden_act", "silu")?.as_str() {
        "silu" => MlpActivation::Silu,
        "relu2" => MlpActivation::Relu2,
        other => return Err(unsupported("mlp_hidden_act", format!("{other:?}"), "expected \"silu\" or \"relu2\"")),
    };
    let kq_norm = match f.string("kq_norm", "none")?.as_str() {
        "none" => KqNorm::None,
        "rms" => KqNorm::Rms,
        "perhead-rms" => KqNorm::PerHeadRms,
        other => return Err(unsupported("kq_norm", format!("{other:?}"), "expected \"none\", \"rms\" or \"perhead-rms\"")),
    };

    let Some(d_inner) = mamba_expand.checked_mul(hidden_size) else {
        return Err(Error::config(format!(
            "`mamba_expand` = {mamba_expand} times `hidden_size` = {hidden_size} overflows"
        )));
    };
    if d_inner % num_attention_heads != 0 {
        return Err(Error::config(format!(
            "`num_attention_heads` = {num_attention_heads} must divide the SSM width D = mamba_expand·hidden_size = {d_inner}"
        )));
    }
    let head_dim_qk = hidden_size / num_attention_heads;
    let rope = parse_rope(f, head_dim_qk)?;

    let sliding_window = match f.get("sliding_window") {
        None => None,
        Some(_) => Some(f.int("sliding_window", 1)?),
    };
    let global_attn_idx = match f.get("global_attn_idx") {
        None => Vec::new(),
        Some(v) => f.layer_list("global_attn_idx", v, num_hidden_layers)?,
    };
    if let Some(dup) = first_repeat(&global_attn_idx) {
        return Err(Error::config(format!("field `global_attn_idx` lists layer {dup} twice")));
    }
    let kv_sources = parse_kv_sharing(f, num_hidden_layers)?;
    let layers = resolve_plan(&kv_sources, &global_attn_idx, sliding_window);

    let cfg = HymbaConfig {
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        intermediate_size,
        mamba_expand,
        mamba_d_state,
        mamba_d_conv,
        mamba_dt_rank,
        num_memory_tokens,
        sliding_window,
        global_attn_idx,
        rms_norm_eps,
        rope,
        kq_norm,
        mlp_hidden_act,
        mamba_conv_bias: f.bool("mamba_conv_bias", true)?,
        mamba_proj_bias: f.bool("mamba_proj_bias", false)?,
        mamba_inner_layernorms: f.bool("mamba_inner_layernorms", true)?,
        tie_word_embeddings: f.bool("tie_word_embeddings", true)?,
        bos_token_id: f.token_id("bos_token_id")?,
        eos_token_id: f.token_id("eos_token_id")?,
        quantization: parse_quantization(f)?,
        layers,
    };
    check_size(&cfg)?;
    Ok(cfg)
}

/// Refuse a config implying more than [`MAX_PARAMETERS`] parameters (counted from the weight
/// table in u128, so nothing overflows): then every tensor shape, element and byte count, and
/// every intermediate product of them, fits.
fn check_size(cfg: &HymbaConfig) -> Result<()> {
    let mut total = 0u128;
    cfg.each_weight(|_, _, shape| total = total.saturating_add(shape.iter().fold(1u128, |p, &x| p.saturating_mul(x))));
    if total > MAX_PARAMETERS as u128 {
        let (v, h, l, f) = (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size);
        let (n, k, r, m) = (cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_dt_rank, cfg.num_memory_tokens);
        return Err(Error::config(format!(
            "sizes too large: the config implies {total} parameters, more than the limit of {MAX_PARAMETERS} \
             (vocab_size {v}, hidden_size {h}, num_hidden_layers {l}, intermediate_size {f}, \
             mamba_expand {}, mamba_d_state {n}, mamba_d_conv {k}, mamba_dt_rank {r}, num_memory_tokens {m})",
            cfg.mamba_expand
        )));
    }
    Ok(())
}

/// The `quantization` object a quantized checkpoint's config.json carries: `type` must name a
/// [`QuantType`] and `block_size` be [`crate::kernels::quant::BLOCK`]; any other key is refused (a format
/// we do not know is never guessed at).
fn parse_quantization(f: &Fields) -> Result<Option<QuantType>> {
    const KEY: &str = "quantization";
    let Some(v) = f.get(KEY) else { return Ok(None) };
    let obj = v.as_object().ok_or_else(|| Fields::bad(KEY, r#"an object like {"type": "q8_0", "block_size": 32}"#, v))?;
    if let Some(other) = obj.keys().find(|k| *k != "type" && *k != "block_size") {
        return Err(unsupported(&format!("{KEY}.{other}"), obj[other].clone(), "only `type` and `block_size` are known"));
    }
    let names = QuantType::ALL.map(QuantType::name).join(", ");
    let kind = match obj.get("type") {
        None => return Err(Fields::missing(&format!("{KEY}.type"))),
        Some(t) => t.as_str().and_then(QuantType::from_name).ok_or_else(|| unsupported(&format!("{KEY}.type"), t, &format!("expected one of {names}")))?,
    };
    match obj.get("block_size") {
        None => return Err(Fields::missing(&format!("{KEY}.block_size"))),
        Some(b) if b.as_u64() == Some(crate::kernels::quant::BLOCK as u64) => {}
        Some(b) => return Err(unsupported(&format!("{KEY}.block_size"), b, &format!("{kind} blocks hold {} weights", crate::kernels::quant::BLOCK))),
    }
    Ok(Some(kind))
}

fn parse_rope(f: &Fields, head_dim_qk: usize) -> Result<Option<RopeConfig>> {
    if !f.bool("rope", false)? {
        return Ok(None);
    }
    if !head_dim_qk.is_multiple_of(2) || head_dim_qk < 4 {
        return Err(Error::config(format!(
            "RoPE needs an even query/key head dim ≥ 4 (hidden_size / num_attention_heads), found {head_dim_qk}"
        )));
    }
    let theta = f.float("rope_theta", 10000.0)?;
    let scaling = match f.string("rope_type", "default")?.as_str() {
        "default" => RopeScaling::Default,
        "ntk" => {
            let max_position_embeddings = f.int("max_position_embeddings", 1)?;
            let orig_max_position_embeddings = f.int("orig_max_position_embeddings", 1)?;
            RopeScaling::Ntk { max_position_embeddings, orig_max_position_embeddings }
        }
        "dynamic_ntk" => {
            RopeScaling::DynamicNtk { orig_max_position_embeddings: f.int("orig_max_position_embeddings", 1)? }
        }
        other => return Err(unsupported("rope_type", format!("{other:?}"), "expected \"default\", \"ntk\" or \"dynamic_ntk\"")),
    };
    let rope = RopeConfig { theta, scaling };
    // NTK scales the base by (2·max/orig − 1)^(dqk/(dqk−2)): that factor must be positive, and
    // the base a finite number, or every rotation angle is NaN.
    if let RopeScaling::Ntk { max_position_embeddings: max, orig_max_position_embeddings: orig } = scaling {
        let base = rope.base(head_dim_qk, 1);
        if !(base.is_finite() && base > 0.0) {
            return Err(Error::config(format!(
                "rope_type \"ntk\" with `max_position_embeddings` = {max} and `orig_max_position_embeddings` = {orig} \
                 gives the RoPE base {base}; max_position_embeddings must exceed orig_max_position_embeddings / 2"
            )));
        }
    }
    Ok(Some(rope))
}

/// Each layer's K/V source, from `kv_reuse_group` (lists whose first layer produces K/V for the
/// rest) or `kv_reuse_every_i_layer` = k (layer i reuses when i % k ≠ 0, from layer i − i % k).
fn parse_kv_sharing(f: &Fields, layers: usize) -> Result<Vec<KvSource>> {
    let mut sources = vec![KvSource::Own; layers];
    let every = match f.get("kv_reuse_every_i_layer") {
        Some(v) if v.as_i64().is_some_and(|k| k <= 0) => None,
        Some(_) => Some(f.int("kv_reuse_every_i_layer", 1)?),
        None => None,
    };
    let groups = match f.get("kv_reuse_group") {
        None => None,
        Some(v) => {
            let arr = v.as_array().ok_or_else(|| Fields::bad("kv_reuse_group", "a list of layer lists", v))?;
            Some(arr.iter().map(|g| f.layer_list("kv_reuse_group", g, layers)).collect::<Result<Vec<_>>>()?)
        }
    };
    // When both are set, the released code uses the groups (and ignores the every-i rule).
    match (every, groups) {
        (Some(k), None) => {
            for (i, s) in sources.iter_mut().enumerate() {
                if i % k != 0 {
                    *s = KvSource::ReuseFrom(i - i % k);
                }
            }
            Ok(sources)
        }
        (_, groups) => {
            let groups = groups.unwrap_or_default();
            if let Some(dup) = first_repeat(&groups.concat()) {
                return Err(Error::config(format!("field `kv_reuse_group` lists layer {dup} more than once")));
            }
            for group in &groups {
                let Some((&producer, reusers)) = group.split_first() else {
                    return Err(Error::config("field `kv_reuse_group` has an empty group"));
                };
                for &r in reusers {
                    if r < producer {
                        return Err(Error::config(format!(
                            "field `kv_reuse_group`: layer {r} cannot reuse K/V from the later layer {producer}"
                        )));
                    }
                    sources[r] = KvSource::ReuseFrom(producer);
                }
            }
            Ok(sources)
        }
    }
}

/// Combine K/V sources with each layer's attention span, and work out how much K/V each producer
/// must retain for itself and its reusers. Linear in the number of layers.
fn resolve_plan(sources: &[KvSource], global: &[usize], window: Option<usize>) -> Vec<LayerPlan> {
    let mut is_global = vec![window.is_none(); sources.len()];
    for &g in global {
        is_global[g] = true;
    }
    let span = |i: usize| match window {
        Some(w) if !is_global[i] => AttentionSpan::SlidingWindow(w),
        _ => AttentionSpan::Global,
    };
    // A producer read by any global layer (itself or a reuser) must keep every position.
    let mut read_globally = vec![false; sources.len()];
    for (i, source) in sources.iter().enumerate() {
        read_globally[source.producer(i)] |= is_global[i];
    }
    (0..sources.len())
        .map(|i| {
            let kv_retention = (sources[i] == KvSource::Own)
                .then(|| if read_globally[i] { AttentionSpan::Global } else { span(i) });
            LayerPlan { index: i, attention: span(i), kv: sources[i], kv_retention }
        })
        .collect()
}

fn first_repeat(xs: &[usize]) -> Option<usize> {
    let mut seen = HashSet::new();
    xs.iter().copied().find(|&x| !seen.insert(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
            "mamba_expand": 2, "mamba_d_state": 4, "mamba_d_conv": 3, "mamba_dt_rank": "auto",
            "num_memory_tokens": 2, "sliding_window": 5, "global_attn_idx": [0, 3],
            "kv_reuse_group": [[1, 2]], "kv_reuse_every_i_layer": -1,
            "rope": true, "rope_type": "default", "rope_theta": 10000.0
        })
    }
    fn parse_value(v: &Value) -> Result<HymbaConfig> {
        HymbaConfig::from_json_str(&v.to_string())
    }
    fn with(key: &str, value: Value) -> Result<HymbaConfig> {
        let mut v = base();
        v[key] = value;
        parse_value(&v)
    }

    #[test]
    fn plan_from_groups() {
        let c = parse_value(&base()).unwrap();
        assert_eq!(c.mamba_dt_rank, 2);
        assert_eq!((c.d_inner(), c.head_dim_qk(), c.head_dim_v()), (64, 8, 16));
        let kinds: Vec<_> = c.layers.iter().map(|l| (l.attention, l.kv, l.kv_retention)).collect();
        use AttentionSpan::*;
        assert_eq!(
            kinds,
            vec![
                (Global, KvSource::Own, Some(Global)),
                (SlidingWindow(5), KvSource::Own, Some(SlidingWindow(5))),
                (SlidingWindow(5), KvSource::ReuseFrom(1), None),
                (Global, KvSource::Own, Some(Global)),
            ]
        );
        assert_eq!(c.in_proj_rows(&c.layers[1]), 32 + 16 + 32 + 128);
        assert_eq!(c.in_proj_rows(&c.layers[2]), 32 + 128);
    }

    #[test]
    fn every_i_layer_and_global_reuser_widens_retention() {
        let mut v = base();
        v["kv_reuse_group"] = Value::Null;
        v["kv_reuse_every_i_layer"] = 2.into();
        v["global_attn_idx"] = serde_json::json!([3]);
        let c = parse_value(&v).unwrap();
        let kv: Vec<_> = c.layers.iter().map(|l| l.kv).collect();
        assert_eq!(kv, vec![KvSource::Own, KvSource::ReuseFrom(0), KvSource::Own, KvSource::ReuseFrom(2)]);
        // Layer 3 is global and reuses window layer 2, so layer 2 must keep all positions.
        assert_eq!(c.layers[2].kv_retention, Some(AttentionSpan::Global));
        assert_eq!(c.layers[0].kv_retention, Some(AttentionSpan::SlidingWindow(5)));
    }

    #[test]
    fn groups_take_precedence_over_every_i_layer() {
        let c = with("kv_reuse_every_i_layer", 2.into()).unwrap(); // base has groups [[1, 2]]
        let kv: Vec<_> = c.layers.iter().map(|l| l.kv).collect();
        assert_eq!(kv, vec![KvSource::Own, KvSource::Own, KvSource::ReuseFrom(1), KvSource::Own]);
    }

    #[test]
    fn no_window_makes_every_layer_global() {
        let c = with("sliding_window", Value::Null).unwrap();
        assert!(c.layers.iter().all(|l| l.attention == AttentionSpan::Global));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("num_attention_heads", 0.into(), "num_attention_heads"),
            ("num_attention_heads", 5.into(), "num_attention_heads"),
            ("num_key_value_heads", 3.into(), "num_key_value_heads"),
            ("sliding_window", 0.into(), "sliding_window"),
            ("hidden_size", (-4).into(), "hidden_size"),
            ("global_attn_idx", serde_json::json!([0, 9]), "global_attn_idx"),
            ("global_attn_idx", serde_json::json!([1, 1]), "global_attn_idx"),
            ("kv_reuse_group", serde_json::json!([[1, 7]]), "kv_reuse_group"),
            ("kv_reuse_group", serde_json::json!([[1, 2], [2, 3]]), "kv_reuse_group"),
            ("kv_reuse_group", serde_json::json!([[2, 1]]), "kv_reuse_group"),
            ("kv_reuse_group", serde_json::json!([[]]), "kv_reuse_group"),
            ("rms_norm_eps", (-1.0).into(), "rms_norm_eps"),
        ];
        for (key, value, culprit) in cases {
            let err = with(key, value.clone()).expect_err(&format!("{key} = {value} accepted"));
            assert_eq!(err.kind, ErrorKind::InvalidConfig, "{key} = {value}: {err}");
            assert!(err.message.contains(culprit), "{key} = {value}: message {:?}", err.message);
        }
    }

    #[test]
    fn unsupported_switches_are_refused_by_name() {
        let cases: Vec<(&str, Value)> = vec![
            ("memory_tokens_interspersed_every", 4.into()),
            ("rope_type", "yarn".into()),
            ("kq_norm", "layer".into()),
            ("mlp_hidden_act", "gelu".into()),
            ("hidden_act", "relu".into()),
            ("attn_hidden_size", 64.into()),
            ("kv_weight_reuse", true.into()),
        ];
        for (key, value) in cases {
            let err = with(key, value.clone()).expect_err(key);
            assert_eq!(err.kind, ErrorKind::UnsupportedConfig, "{key}: {err}");
            assert!(err.message.contains(key), "{err}");
        }
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        // Found by reading for the fuzz targets: a billion layers made the plan allocate tens of
        // GB (abort), and huge widths overflowed `in_proj_rows` / `parameter_count` (panic).
        let cases: Vec<(&str, Value, &str)> = vec![
            ("num_hidden_layers", 4_000_000_000u64.into(), "num_hidden_layers"),
            ("num_hidden_layers", (MAX_LAYERS as u64 + 1).into(), "num_hidden_layers"),
            ("hidden_size", 4_294_967_288u64.into(), "parameters"),
            ("intermediate_size", 4_000_000_000u64.into(), "parameters"),
            ("mamba_expand", u32::MAX.into(), "parameters"),
            ("mamba_d_state", u32::MAX.into(), "parameters"),
            ("rms_norm_eps", 1e300.into(), "rms_norm_eps"),
        ];
        for (key, value, culprit) in cases {
            let err = with(key, value.clone()).expect_err(&format!("{key} = {value} accepted"));
            assert_eq!(err.kind, ErrorKind::InvalidConfig, "{key} = {value}: {err}");
            assert!(err.message.contains(culprit), "{key} = {value}: message {:?}", err.message);
        }
        // Large but addressable configs are still accepted.
        assert!(with("vocab_size", 1_000_000.into()).is_ok());
    }

    #[test]
    fn many_layers_resolve_in_linear_time() {
        // The plan used to be resolved in O(L² · |global_attn_idx|): this took hours.
        let mut v = base();
        v["num_hidden_layers"] = MAX_LAYERS.into();
        v["global_attn_idx"] = (0..MAX_LAYERS).step_by(2).collect::<Vec<_>>().into();
        v["kv_reuse_group"] = Value::Null;
        v["kv_reuse_every_i_layer"] = 3.into();
        let c = parse_value(&v).unwrap();
        assert_eq!(c.layers.len(), MAX_LAYERS);
        // Layer 1 (window) and 2 (global) reuse layer 0, so it keeps every position.
        assert_eq!(c.layers[0].kv_retention, Some(AttentionSpan::Global));
        assert_eq!(c.layers[1].attention, AttentionSpan::SlidingWindow(5));
    }

    #[test]
    fn ntk_with_a_non_positive_scale_factor_is_refused() {
        let mut v = base();
        v["rope_type"] = "ntk".into();
        v["max_position_embeddings"] = 512.into();
        v["orig_max_position_embeddings"] = 2048.into();
        let err = parse_value(&v).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
        assert!(err.message.contains("max_position_embeddings"), "{err}");
        v["max_position_embeddings"] = 8192.into();
        assert!(parse_value(&v).is_ok());
    }

    #[test]
    fn sizes_that_cannot_fit_are_refused() {
        let mut v = base();
        v["vocab_size"] = 4_000_000_000u64.into();
        v["hidden_size"] = 4_000_000_000u64.into();
        v["num_attention_heads"] = 1.into();
        v["num_key_value_heads"] = 1.into();
        let err = parse_value(&v).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
        assert!(err.message.contains("sizes too large"), "{err}");
    }

    #[test]
    fn ntk_base_of_the_released_model() {
        let rope = RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Ntk { max_position_embeddings: 8192, orig_max_position_embeddings: 2048 },
        };
        let base = rope.base(64, 1);
        assert!((base - 74_535.0).abs() < 1.0, "{base}"); // docs/MODEL.md §4: ≈ 74,535 for Hymba-1.5B
    }

    #[test]
    fn dynamic_ntk_switches_past_orig_max() {
        let rope = RopeConfig { theta: 100.0, scaling: RopeScaling::DynamicNtk { orig_max_position_embeddings: 32 } };
        assert_eq!(rope.base(8, 32), 100.0);
        let expected = 100.0 * (2.0f64 * 40.0 / 32.0 - 1.0).powf(8.0 / 6.0);
        assert!((rope.base(8, 40) - expected).abs() < 1e-9);
    }

    #[test]
    fn missing_field_and_bad_json() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse_value(&v).unwrap_err().message.contains("hidden_size"));
        assert_eq!(HymbaConfig::from_json_str("{").unwrap_err().kind, ErrorKind::InvalidConfig);
    }
}
