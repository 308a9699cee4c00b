//! The model's weights, named as the checkpoint keys, and the one loader that fills them.
//!
//! The weight table ([`crate::config::weights`], listed for a config by
//! [`HymbaConfig::tensors`]) says which tensors a config implies, with their shapes (docs/MODEL.md
//! §2); [`HymbaWeights::load`] checks a checkpoint against that list, reporting every
//! missing, unexpected or mis-shaped tensor by name, before converting anything, then fills each
//! field from its table row.

use super::shards::Checkpoint;
use super::{check_elements_finite, check_finite, TensorSource};
use crate::config::weights::*;
use crate::config::{HymbaConfig, Storage, TensorSpec, WeightSpec};
use crate::base::error::{Error, ErrorKind, Result};
use crate::kernels::matrix::{Matrix, RowKind};
use crate::kernels::quant::QuantType;
use ndarray::{Array1, Array2, ArrayView2, IxDyn};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// A linear map `y = x · Wᵀ (+ b)`, weight in PyTorch's `[out, in]` layout, kept in its stored
/// dtype (see [`Matrix`]).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Array1<f32>>,
}

impl Linear {
    /// (T, in) → (T, out); `kind` says what the rows are ([`Matrix::matmul_t_of`]).
    pub fn forward<'o>(&self, x: ArrayView2<f32>, kind: RowKind, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        self.forward_then(x, kind, out, |_| {})
    }

    /// [`Linear::forward`], then `f` on each output row's values, in the product's tasks
    /// ([`Matrix::matmul_t_then`]): each task adds the bias to the block it computed and applies
    /// `f` to it, a row at a time (as slices of consecutive outputs). (T, in) → (T, out)
    pub fn forward_then<'o>(
        &self,
        x: ArrayView2<f32>,
        kind: RowKind,
        out: &'o mut Array2<f32>,
        f: impl Fn(&mut [f32]) + Sync + Send,
    ) -> ArrayView2<'o, f32> {
        self.rows_forward_then(0..self.weight.rows(), x, kind, out, f)
    }

    /// The outputs `rows` of [`Linear::forward`] only, each with the same bits as there
    /// ([`Matrix::rows_matmul_t_then`]): (T, in) → (T, rows.len())
    pub fn rows_forward<'o>(&self, rows: Range<usize>, x: ArrayView2<f32>, kind: RowKind, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        self.rows_forward_then(rows, x, kind, out, |_| {})
    }

    fn rows_forward_then<'o>(
        &self,
        rows: Range<usize>,
        x: ArrayView2<f32>,
        kind: RowKind,
        out: &'o mut Array2<f32>,
        f: impl Fn(&mut [f32]) + Sync + Send,
    ) -> ArrayView2<'o, f32> {
        debug_assert_eq!(x.ncols(), self.weight.cols());
        let bias = self.bias.as_ref().map(|b| b.as_slice().expect("a contiguous vector"));
        self.weight.rows_matmul_t_then(rows, x, kind, out, |first, mut block| {
            for mut row in block.rows_mut() {
                let row = row.as_slice_mut().expect("a block of a row is contiguous"); // (block)
                if let Some(bias) = bias {
                    row.iter_mut().zip(&bias[first..]).for_each(|(o, b)| *o += b);
                }
                f(row);
            }
        })
    }
}

/// `model.layers.{i}.mamba.*`: the hybrid-head mixer (attention heads + SSM heads + fusion).
#[derive(Debug, Clone)]
pub struct MambaWeights {
    /// `in_proj` `[P, H]`: columns q | k | v (K/V producers only) | x | z.
    pub in_proj: Linear,
    /// `conv1d.weight` `[D, 1, K]`, stored here transposed, tap-major, as `[K, D]`: the conv
    /// takes one tap at a time over all D channels, so each tap's weights are consecutive.
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
    /// `self_attn.*`: the attention heads' weights (the checkpoint keeps them under `mamba`).
    pub self_attn: SelfAttnWeights,
}

/// `model.layers.{i}.mamba.self_attn.*`: the attention heads have no projection of their own
/// (q, k, v come from `in_proj`, and there is no output projection), only optional norms.
#[derive(Debug, Clone)]
pub struct SelfAttnWeights {
    /// `q_norm.weight` as (1 or nh, dqk): one row shared, or one per head.
    pub q_norm: Option<Array2<f32>>,
    /// `k_norm.weight` as (1 or nkv, dqk); `None` in reusing layers (never used there).
    pub k_norm: Option<Array2<f32>>,
}

/// `model.layers.{i}.moe.experts.0.*`: a dense MLP. The released code names it as expert 0 of a
/// mixture of experts, but builds exactly one expert and always uses it (no routing).
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
    /// `moe.experts.0.*`: the layer's MLP (see [`MlpWeights`]).
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

    /// Every matrix of the model (the embedding, each layer's, lm_head when untied).
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut all = vec![&self.embed_tokens];
        for layer in &self.layers {
            let (m, mlp) = (&layer.mamba, &layer.moe_expert0);
            all.extend([&m.in_proj.weight, &m.x_proj, &m.dt_proj.weight, &m.out_proj.weight]);
            all.extend(mlp.gate_proj.iter().chain([&mlp.up_proj, &mlp.down_proj]));
        }
        all.extend(&self.lm_head);
        all
    }

    /// Every matrix that decoding reads quantized to `kind` (see [`crate::kernels::quant`]): in_proj,
    /// x_proj, dt_proj, out_proj, the MLP, the embedding and lm_head. Norms, the conv, A, D,
    /// biases and the meta tokens stay in f32: they are a few percent of the bytes and the error
    /// would land where the model is most sensitive. Fails naming the tensor whose block scale
    /// does not fit an f16.
    pub fn quantized(&self, kind: QuantType) -> Result<HymbaWeights> {
        let quantize = |m: &Matrix, name: String| {
            m.quantize(kind).map_err(|e| Error::new(ErrorKind::NonFiniteWeight, format!("quantizing {name} to {kind}: {e}")))
        };
        let mut out = self.clone();
        for (i, layer) in out.layers.iter_mut().enumerate() {
            let name = |w: &WeightSpec| w.name(Some(i));
            let mamba = &mut layer.mamba;
            mamba.in_proj.weight = quantize(&mamba.in_proj.weight, name(&IN_PROJ))?;
            mamba.x_proj = quantize(&mamba.x_proj, name(&X_PROJ))?;
            mamba.dt_proj.weight = quantize(&mamba.dt_proj.weight, name(&DT_PROJ))?;
            mamba.out_proj.weight = quantize(&mamba.out_proj.weight, name(&OUT_PROJ))?;
            let mlp = &mut layer.moe_expert0;
            if let Some(gate) = &mlp.gate_proj {
                mlp.gate_proj = Some(quantize(gate, name(&GATE_PROJ))?);
            }
            mlp.up_proj = quantize(&mlp.up_proj, name(&UP_PROJ))?;
            mlp.down_proj = quantize(&mlp.down_proj, name(&DOWN_PROJ))?;
        }
        out.embed_tokens = quantize(&self.embed_tokens, EMBED_TOKENS.name(None))?;
        if let Some(head) = &self.lm_head {
            out.lm_head = Some(quantize(head, LM_HEAD.name(None))?);
        }
        Ok(out)
    }
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

/// Compare the checkpoint's tensors with `expected`; report every problem by name.
/// (A quantized checkpoint's matrices are each a values and a scales tensor:
/// [`super::quantized::stored_tensors`].)
fn check_names_and_shapes(cfg: &HymbaConfig, ckpt: &dyn TensorSource) -> Result<()> {
    let expected = super::quantized::stored_tensors(cfg);
    let wanted: BTreeMap<&str, &[usize]> = expected.iter().map(|(name, shape)| (name.as_str(), &shape[..])).collect();
    let missing: Vec<&str> = wanted.keys().copied().filter(|name| ckpt.shape(name).is_none()).collect();
    let unexpected: Vec<String> =
        ckpt.names().into_iter().filter(|name| !wanted.contains_key(name.as_str()) && !cfg.is_unused_tensor(name)).collect();
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
    /// Load the weights of `cfg` from the safetensors checkpoint in `dir` (float, or quantized
    /// when the config says so: see [`super::quantized`]).
    pub fn load(cfg: &HymbaConfig, dir: &Path) -> Result<HymbaWeights> {
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(cfg, &ckpt).map_err(|e| e.context(dir.display()))
    }

    /// Check every name and shape against the weight table, then convert every tensor (checking it
    /// is finite): matrices kept in their stored dtype, the rest in f32 ([`Storage`]).
    pub fn from_checkpoint(cfg: &HymbaConfig, ckpt: &dyn TensorSource) -> Result<HymbaWeights> {
        let expected = cfg.tensors();
        check_names_and_shapes(cfg, ckpt)?;
        let tensors = Tensors { ckpt, quantization: cfg.quantization, expected: expected.iter().map(|t| (t.name.as_str(), t)).collect() };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for plan in &cfg.layers {
            let at = Some(plan.index);
            let linear = |weight: &WeightSpec, bias: &WeightSpec| -> Result<Linear> {
                Ok(Linear { weight: tensors.matrix(weight, at)?, bias: tensors.optional_vector(bias, at)? })
            };
            let mamba = MambaWeights {
                in_proj: linear(&IN_PROJ, &IN_PROJ_BIAS)?,
                conv1d_weight: tensors.rows(&CONV1D, at)?.reversed_axes().as_standard_layout().into_owned(),
                conv1d_bias: tensors.optional_vector(&CONV1D_BIAS, at)?,
                x_proj: tensors.matrix(&X_PROJ, at)?,
                dt_proj: linear(&DT_PROJ, &DT_PROJ_BIAS)?,
                a: tensors.rows(&A_LOG, at)?.mapv(|v| -v.exp()),
                d: tensors.vector(&D, at)?,
                dt_layernorm: tensors.optional_vector(&DT_LAYERNORM, at)?,
                b_layernorm: tensors.optional_vector(&B_LAYERNORM, at)?,
                c_layernorm: tensors.optional_vector(&C_LAYERNORM, at)?,
                pre_avg_layernorm1: tensors.vector(&PRE_AVG_LAYERNORM1, at)?,
                pre_avg_layernorm2: tensors.vector(&PRE_AVG_LAYERNORM2, at)?,
                out_proj: linear(&OUT_PROJ, &OUT_PROJ_BIAS)?,
                self_attn: SelfAttnWeights { q_norm: tensors.optional_rows(&Q_NORM, at)?, k_norm: tensors.optional_rows(&K_NORM, at)? },
            };
            let moe_expert0 = MlpWeights {
                gate_proj: tensors.optional_matrix(&GATE_PROJ, at)?,
                up_proj: tensors.matrix(&UP_PROJ, at)?,
                down_proj: tensors.matrix(&DOWN_PROJ, at)?,
            };
            layers.push(LayerWeights {
                input_layernorm: tensors.vector(&INPUT_LAYERNORM, at)?,
                mamba,
                pre_moe_layernorm: tensors.vector(&PRE_MOE_LAYERNORM, at)?,
                moe_expert0,
            });
        }
        Ok(HymbaWeights {
            embed_tokens: tensors.matrix(&EMBED_TOKENS, None)?,
            memory_tokens: tensors.optional_rows(&MEMORY_TOKENS, None)?.unwrap_or_else(|| Array2::zeros((0, cfg.hidden_size))),
            layers,
            final_layernorm: tensors.vector(&FINAL_LAYERNORM, None)?,
            lm_head: tensors.optional_matrix(&LM_HEAD, None)?,
        })
    }
}

/// The checkpoint's tensors, read as the weight table says, once their names and shapes are
/// checked. Reading a tensor the config does not have gives `None`.
struct Tensors<'a> {
    ckpt: &'a dyn TensorSource,
    /// The block format the matrices are stored in, if the config says so.
    quantization: Option<QuantType>,
    expected: BTreeMap<&'a str, &'a TensorSpec>,
}

impl Tensors<'_> {
    /// The tensor of `w` (in layer `layer`), if the config has it.
    fn spec(&self, w: &WeightSpec, layer: Option<usize>) -> Option<&TensorSpec> {
        self.expected.get(w.name(layer).as_str()).copied()
    }

    /// A tensor in f32, finite, with its checked shape.
    fn f32(&self, t: &TensorSpec) -> Result<ndarray::ArrayD<f32>> {
        debug_assert_eq!(t.spec.storage, Storage::F32);
        let (shape, data) = self.ckpt.to_f32(&t.name)?;
        check_finite(&t.name, &data)?;
        ndarray::ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| Error::new(ErrorKind::CorruptSafetensors, format!("{}: {e}", t.name)))
    }

    /// A vector (any shape, flattened), if the config has it.
    fn optional_vector(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Option<Array1<f32>>> {
        self.spec(w, layer).map(|t| into_shape1(self.f32(t)?, &t.name)).transpose()
    }

    /// A tensor as rows of its last dimension, if the config has it: `[D, 1, K]` → (D, K),
    /// `[1, nh, 1, dqk]` → (nh, dqk).
    fn optional_rows(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Option<Array2<f32>>> {
        self.spec(w, layer)
            .map(|t| {
                let cols = t.shape.last().copied().unwrap_or(1).max(1);
                into_shape2(self.f32(t)?, &t.name, t.elements() / cols, cols)
            })
            .transpose()
    }

    /// A matrix in its stored dtype, if the config has it.
    fn optional_matrix(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Option<Matrix>> {
        self.spec(w, layer)
            .map(|t| {
                debug_assert_eq!(t.spec.storage, Storage::Matrix);
                if let Some(kind) = self.quantization {
                    return super::quantized::read_matrix(self.ckpt, kind, t);
                }
                let (_, data) = self.ckpt.to_elements(&t.name)?;
                check_elements_finite(&t.name, &data)?;
                Matrix::new(t.shape[0], t.shape[1], data).ok_or_else(|| {
                    Error::new(ErrorKind::ShapeMismatch, format!("{}: cannot view as {:?}", t.name, t.shape))
                })
            })
            .transpose()
    }

    /// The same, for tensors every config has.
    fn vector(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Array1<f32>> {
        self.require(self.optional_vector(w, layer)?, w, layer)
    }

    fn rows(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Array2<f32>> {
        self.require(self.optional_rows(w, layer)?, w, layer)
    }

    fn matrix(&self, w: &WeightSpec, layer: Option<usize>) -> Result<Matrix> {
        self.require(self.optional_matrix(w, layer)?, w, layer)
    }

    /// `value`, which every config has (the names were checked).
    fn require<T>(&self, value: Option<T>, w: &WeightSpec, layer: Option<usize>) -> Result<T> {
        value.ok_or_else(|| Error::new(ErrorKind::MissingTensor, format!("{} is missing", w.name(layer))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn forward_then_adds_the_bias_then_applies_f_to_every_output() {
        let w = Matrix::from_f32(Array2::from_shape_fn((300, 5), |(i, j)| ((i * 5 + j) as f32 * 0.37).sin()));
        let linear = Linear { weight: w.clone(), bias: Some(Array1::from_shape_fn(300, |i| i as f32 * 0.25)) };
        for x in [array![[1.0f32, -2.0, 0.5, 3.0, 0.0]], Array2::from_shape_fn((70, 5), |(t, j)| (t + j) as f32 * 0.1)] {
            let mut want = Array2::zeros((0, 0));
            w.matmul_t(x.view(), &mut want);
            let want = (want + linear.bias.as_ref().unwrap()).mapv(|v| v * v - 1.0); // (T, 300)
            let mut got = Array2::zeros((0, 0));
            linear.forward_then(x.view(), RowKind::Chunk, &mut got, |row| row.iter_mut().for_each(|v| *v = *v * *v - 1.0));
            assert_eq!(got, want, "T = {}", x.nrows());
        }
    }
}
