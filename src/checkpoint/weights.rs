//! The model's weights, named as the checkpoint keys, and the one loader that fills them.
//!
//! [`expected_tensors`] lists every tensor the config implies with its shape (SPEC, "Weights");
//! [`HymbaWeights::load`] checks a checkpoint against that list, reporting every missing,
//! unexpected or mis-shaped tensor by name, before converting anything.

use super::shards::Checkpoint;
use super::{check_elements_finite, check_finite, TensorSource};
use crate::config::{HymbaConfig, KqNorm, LayerPlan, MlpActivation};
use crate::error::{Error, ErrorKind, Result};
use crate::matrix::{Matrix, Rows};
use ndarray::{Array1, Array2, ArrayView2, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

/// A linear map `y = x · Wᵀ (+ b)`, weight in PyTorch's `[out, in]` layout, kept in its stored
/// dtype (see [`Matrix`]).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Array1<f32>>,
}

impl Linear {
    /// (T, in) → (T, out); `rows` says what the rows are ([`Matrix::matmul_t_of`]).
    pub fn forward<'o>(&self, x: ArrayView2<f32>, rows: Rows, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        debug_assert_eq!(x.ncols(), self.weight.cols());
        self.weight.matmul_t_of(x, rows, out);
        if let Some(b) = &self.bias {
            *out += b;
        }
        out.view()
    }
}

/// `model.layers.{i}.mamba.*`: the hybrid-head mixer (attention heads + SSM heads + fusion).
#[derive(Debug, Clone)]
pub struct MambaWeights {
    /// `in_proj` `[P, H]`: columns q | k | v (K/V producers only) | x | z.
    pub in_proj: Linear,
    /// `conv1d.weight` `[D, 1, K]`, stored here as `[D, K]`.
    pub conv1d_weight: Array2<f32>,
    /// `conv1d.bias` `[D]` (if `mamba_conv_bias`).
    pub conv1d_bias: Option<Array1<f32>>,
    /// `x_proj.0.weight` `[R + 2N, D]`.
    pub x_proj: Matrix,
    /// `dt_proj.0.weight` `[D, R]` and `.bias` `[D]`.
    pub dt_proj: Linear,
    /// A = −exp(`A_log.0`) `[D, N]`: the state matrix (diagonal per channel), computed once at load.
    pub a: Array2<f32>,
    /// `D.0` `[D]`: the skip connection.
    pub d: Array1<f32>,
    /// `dt_layernorm`, `B_layernorm`, `C_layernorm` `[R]`, `[N]`, `[N]` (if `mamba_inner_layernorms`).
    pub dt_layernorm: Option<Array1<f32>>,
    pub b_layernorm: Option<Array1<f32>>,
    pub c_layernorm: Option<Array1<f32>>,
    /// β1, β2 of the fusion `[D]`.
    pub pre_avg_layernorm1: Array1<f32>,
    pub pre_avg_layernorm2: Array1<f32>,
    /// `out_proj` `[H, D]`.
    pub out_proj: Linear,
    /// `self_attn.q_norm.weight` as (1 or nh, dqk): one row shared, or one per head.
    pub q_norm: Option<Array2<f32>>,
    /// `self_attn.k_norm.weight` as (1 or nkv, dqk); `None` in reusing layers (never used there).
    pub k_norm: Option<Array2<f32>>,
}

/// `model.layers.{i}.moe.experts.0.*`: the one MLP the released model builds.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// `gate_proj` `[F, H]` (silu only).
    pub gate_proj: Option<Matrix>,
    /// `up_proj` `[F, H]`.
    pub up_proj: Matrix,
    /// `down_proj` `[H, F]`.
    pub down_proj: Matrix,
}

/// `model.layers.{i}.*`
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_layernorm: Array1<f32>,
    pub mamba: MambaWeights,
    pub pre_moe_layernorm: Array1<f32>,
    pub moe_expert0: MlpWeights,
}

/// Every weight of a Hymba model: matrices in their stored dtype, vectors in f32.
#[derive(Debug, Clone)]
pub struct HymbaWeights {
    /// `model.embed_tokens.weight` `[V, H]`.
    pub embed_tokens: Matrix,
    /// `model.memory_tokens` `[M, H]`: the learned meta tokens.
    pub memory_tokens: Array2<f32>,
    pub layers: Vec<LayerWeights>,
    /// `model.final_layernorm.weight` `[H]`.
    pub final_layernorm: Array1<f32>,
    /// `lm_head.weight` `[V, H]`; `None` when tied to the embedding.
    pub lm_head: Option<Matrix>,
}

impl HymbaWeights {
    /// The output projection: `lm_head`, or the embedding when tied.
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

/// One tensor the config requires, with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Every tensor `cfg` implies, in checkpoint naming (SPEC, "Weights").
pub fn expected_tensors(cfg: &HymbaConfig) -> Vec<TensorSpec> {
    let (h, d, n, r, f) =
        (cfg.hidden_size, cfg.d_inner(), cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.intermediate_size);
    let mut specs = Vec::new();
    let mut add = |name: String, shape: &[usize]| specs.push(TensorSpec { name, shape: shape.to_vec() });
    add("model.embed_tokens.weight".into(), &[cfg.vocab_size, h]);
    if cfg.num_memory_tokens > 0 {
        add("model.memory_tokens".into(), &[cfg.num_memory_tokens, h]);
    }
    for plan in &cfg.layers {
        let p = |s: &str| format!("model.layers.{}.{s}", plan.index);
        add(p("input_layernorm.weight"), &[h]);
        add(p("mamba.in_proj.weight"), &[cfg.in_proj_rows(plan), h]);
        if cfg.mamba_proj_bias {
            add(p("mamba.in_proj.bias"), &[cfg.in_proj_rows(plan)]);
            add(p("mamba.out_proj.bias"), &[h]);
        }
        add(p("mamba.conv1d.weight"), &[d, 1, cfg.mamba_d_conv]);
        if cfg.mamba_conv_bias {
            add(p("mamba.conv1d.bias"), &[d]);
        }
        add(p("mamba.x_proj.0.weight"), &[r + 2 * n, d]);
        add(p("mamba.dt_proj.0.weight"), &[d, r]);
        add(p("mamba.dt_proj.0.bias"), &[d]);
        add(p("mamba.A_log.0"), &[d, n]);
        add(p("mamba.D.0"), &[d]);
        if cfg.mamba_inner_layernorms {
            add(p("mamba.dt_layernorm.weight"), &[r]);
            add(p("mamba.B_layernorm.weight"), &[n]);
            add(p("mamba.C_layernorm.weight"), &[n]);
        }
        add(p("mamba.pre_avg_layernorm1.weight"), &[d]);
        add(p("mamba.pre_avg_layernorm2.weight"), &[d]);
        add(p("mamba.out_proj.weight"), &[h, d]);
        if let Some(shape) = kq_norm_shape(cfg, cfg.num_attention_heads) {
            add(p("mamba.self_attn.q_norm.weight"), &shape);
        }
        if plan.owns_kv() {
            if let Some(shape) = kq_norm_shape(cfg, cfg.num_key_value_heads) {
                add(p("mamba.self_attn.k_norm.weight"), &shape);
            }
        }
        add(p("pre_moe_layernorm.weight"), &[h]);
        if cfg.mlp_hidden_act == MlpActivation::Silu {
            add(p("moe.experts.0.gate_proj.weight"), &[f, h]);
        }
        add(p("moe.experts.0.up_proj.weight"), &[f, h]);
        add(p("moe.experts.0.down_proj.weight"), &[h, f]);
    }
    add("model.final_layernorm.weight".into(), &[h]);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), &[cfg.vocab_size, h]);
    }
    specs
}

/// The checkpoint shape of a q_norm / k_norm weight for `heads` heads.
fn kq_norm_shape(cfg: &HymbaConfig, heads: usize) -> Option<Vec<usize>> {
    match cfg.kq_norm {
        KqNorm::None => None,
        KqNorm::Rms => Some(vec![cfg.head_dim_qk()]),
        KqNorm::PerHeadRms => Some(vec![1, heads, 1, cfg.head_dim_qk()]),
    }
}

/// Tensors the released layout carries but never uses: a `k_norm` in a layer that reuses K/V.
fn is_ignored(cfg: &HymbaConfig, name: &str) -> bool {
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.strip_suffix(".mamba.self_attn.k_norm.weight"))
        .and_then(|index| index.parse::<usize>().ok());
    cfg.kq_norm != KqNorm::None
        && layer.and_then(|i| cfg.layers.get(i)).is_some_and(|plan: &LayerPlan| {
            !plan.owns_kv() && name == format!("model.layers.{}.mamba.self_attn.k_norm.weight", plan.index)
        })
}

/// At most this many names are listed in one error message; the rest are counted.
const LISTED_NAMES: usize = 12;

/// `a, b, c` or `a, b, c, ... and 40 more`.
fn name_list<S: AsRef<str>>(names: &[S], separator: &str) -> String {
    let shown: Vec<&str> = names.iter().take(LISTED_NAMES).map(|n| n.as_ref()).collect();
    let mut text = shown.join(separator);
    if names.len() > LISTED_NAMES {
        text += &format!("{separator}... and {} more", names.len() - LISTED_NAMES);
    }
    text
}

/// The number of parameters the config implies (what the loader will read).
pub fn parameter_count(cfg: &HymbaConfig) -> usize {
    expected_tensors(cfg).iter().map(|t| t.shape.iter().product::<usize>()).sum()
}

/// Compare the checkpoint's tensors with `expected`; report every problem by name.
fn check_names_and_shapes(cfg: &HymbaConfig, ckpt: &dyn TensorSource, expected: &[TensorSpec]) -> Result<()> {
    let wanted: BTreeMap<&str, &[usize]> = expected.iter().map(|t| (t.name.as_str(), &t.shape[..])).collect();
    let missing: Vec<&str> = wanted.keys().copied().filter(|name| ckpt.shape(name).is_none()).collect();
    let unexpected: Vec<String> =
        ckpt.names().into_iter().filter(|name| !wanted.contains_key(name.as_str()) && !is_ignored(cfg, name)).collect();
    let mismatched: Vec<String> = wanted
        .iter()
        .filter_map(|(name, shape)| {
            let found = ckpt.shape(name)?;
            (found[..] != **shape).then(|| format!("{name}: expected {shape:?}, found {found:?}"))
        })
        .collect();
    if !missing.is_empty() {
        let mut msg = format!("{} tensor(s) the config requires are missing: {}", missing.len(), name_list(&missing, ", "));
        if !unexpected.is_empty() {
            msg += &format!(" (the checkpoint has unexpected tensors: {})", name_list(&unexpected, ", "));
        }
        return Err(Error::new(ErrorKind::MissingTensor, msg));
    }
    if !mismatched.is_empty() {
        return Err(Error::new(ErrorKind::ShapeMismatch, format!("tensor shape mismatch: {}", name_list(&mismatched, "; "))));
    }
    if !unexpected.is_empty() {
        return Err(Error::new(
            ErrorKind::UnexpectedTensor,
            format!("the checkpoint has {} tensor(s) the config does not use: {}", unexpected.len(), name_list(&unexpected, ", ")),
        ));
    }
    Ok(())
}

impl HymbaWeights {
    /// Load the weights of `cfg` from the safetensors checkpoint in `dir`.
    pub fn load(cfg: &HymbaConfig, dir: &Path) -> Result<HymbaWeights> {
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(cfg, &ckpt).map_err(|e| e.context(dir.display()))
    }

    /// Check every name and shape, then convert every tensor to f32 (checking it is finite).
    pub fn from_checkpoint(cfg: &HymbaConfig, ckpt: &dyn TensorSource) -> Result<HymbaWeights> {
        check_names_and_shapes(cfg, ckpt, &expected_tensors(cfg))?;
        let get = |name: &str| -> Result<ndarray::ArrayD<f32>> {
            let (shape, data) = ckpt.to_f32(name)?;
            check_finite(name, &data)?;
            ndarray::ArrayD::from_shape_vec(IxDyn(&shape), data)
                .map_err(|e| Error::new(ErrorKind::CorruptSafetensors, format!("{name}: {e}")))
        };
        // Shapes were checked above, so these reshapes cannot fail on a consistent checkpoint;
        // they still return errors rather than panicking.
        let vec1 = |name: &str| -> Result<Array1<f32>> { into_shape1(get(name)?, name) };
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Array2<f32>> {
            into_shape2(get(name)?, name, rows, cols)
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
            let (_, data) = ckpt.to_elements(name)?;
            check_elements_finite(name, &data)?;
            Matrix::new(rows, cols, data).ok_or_else(|| {
                Error::new(ErrorKind::ShapeMismatch, format!("{name}: cannot view as [{rows}, {cols}]"))
            })
        };
        let opt = |present: bool, name: &str| -> Result<Option<Array1<f32>>> {
            present.then(|| vec1(name)).transpose()
        };
        let (h, d, dqk) = (cfg.hidden_size, cfg.d_inner(), cfg.head_dim_qk());
        let (n, r, f, k) = (cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.intermediate_size, cfg.mamba_d_conv);
        let kq = |name: &str, heads: usize| -> Result<Option<Array2<f32>>> {
            match cfg.kq_norm {
                KqNorm::None => Ok(None),
                KqNorm::Rms => mat(name, 1, dqk).map(Some),
                KqNorm::PerHeadRms => mat(name, heads, dqk).map(Some),
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for plan in &cfg.layers {
            let p = |s: &str| format!("model.layers.{}.{s}", plan.index);
            let bias = cfg.mamba_proj_bias;
            let mamba = MambaWeights {
                in_proj: Linear {
                    weight: matrix(&p("mamba.in_proj.weight"), cfg.in_proj_rows(plan), h)?,
                    bias: opt(bias, &p("mamba.in_proj.bias"))?,
                },
                conv1d_weight: mat(&p("mamba.conv1d.weight"), d, k)?,
                conv1d_bias: opt(cfg.mamba_conv_bias, &p("mamba.conv1d.bias"))?,
                x_proj: matrix(&p("mamba.x_proj.0.weight"), r + 2 * n, d)?,
                dt_proj: Linear {
                    weight: matrix(&p("mamba.dt_proj.0.weight"), d, r)?,
                    bias: Some(vec1(&p("mamba.dt_proj.0.bias"))?),
                },
                a: mat(&p("mamba.A_log.0"), d, n)?.mapv(|v| -v.exp()),
                d: vec1(&p("mamba.D.0"))?,
                dt_layernorm: opt(cfg.mamba_inner_layernorms, &p("mamba.dt_layernorm.weight"))?,
                b_layernorm: opt(cfg.mamba_inner_layernorms, &p("mamba.B_layernorm.weight"))?,
                c_layernorm: opt(cfg.mamba_inner_layernorms, &p("mamba.C_layernorm.weight"))?,
                pre_avg_layernorm1: vec1(&p("mamba.pre_avg_layernorm1.weight"))?,
                pre_avg_layernorm2: vec1(&p("mamba.pre_avg_layernorm2.weight"))?,
                out_proj: Linear {
                    weight: matrix(&p("mamba.out_proj.weight"), h, d)?,
                    bias: opt(bias, &p("mamba.out_proj.bias"))?,
                },
                q_norm: kq(&p("mamba.self_attn.q_norm.weight"), cfg.num_attention_heads)?,
                k_norm: if plan.owns_kv() {
                    kq(&p("mamba.self_attn.k_norm.weight"), cfg.num_key_value_heads)?
                } else {
                    None
                },
            };
            let silu = cfg.mlp_hidden_act == MlpActivation::Silu;
            let moe_expert0 = MlpWeights {
                gate_proj: silu.then(|| matrix(&p("moe.experts.0.gate_proj.weight"), f, h)).transpose()?,
                up_proj: matrix(&p("moe.experts.0.up_proj.weight"), f, h)?,
                down_proj: matrix(&p("moe.experts.0.down_proj.weight"), h, f)?,
            };
            layers.push(LayerWeights {
                input_layernorm: vec1(&p("input_layernorm.weight"))?,
                mamba,
                pre_moe_layernorm: vec1(&p("pre_moe_layernorm.weight"))?,
                moe_expert0,
            });
        }
        let m = cfg.num_memory_tokens;
        Ok(HymbaWeights {
            embed_tokens: matrix("model.embed_tokens.weight", cfg.vocab_size, h)?,
            memory_tokens: if m > 0 { mat("model.memory_tokens", m, h)? } else { Array2::zeros((0, h)) },
            layers,
            final_layernorm: vec1("model.final_layernorm.weight")?,
            lm_head: (!cfg.tie_word_embeddings).then(|| matrix("lm_head.weight", cfg.vocab_size, h)).transpose()?,
        })
    }
}

fn into_shape1(a: ndarray::ArrayD<f32>, name: &str) -> Result<Array1<f32>> {
    let len = a.len();
    a.into_shape_with_order(len)
        .map_err(|e| Error::new(ErrorKind::ShapeMismatch, format!("{name}: {e}")))
}

fn into_shape2(a: ndarray::ArrayD<f32>, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
    a.into_shape_with_order((rows, cols)).map_err(|e| {
        Error::new(ErrorKind::ShapeMismatch, format!("{name}: cannot view as [{rows}, {cols}]: {e}"))
    })
}
