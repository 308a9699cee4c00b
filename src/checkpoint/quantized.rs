//! Quantized checkpoints on disk: how a block-quantized matrix ([`Quantized`]) is stored as
//! ordinary safetensors tensors, and [`write_quantized`], which makes such a checkpoint from a
//! float one (`hymba-ref quantize`). The format is explained in `docs/QUANTIZATION.md`.
//!
//! A quantized checkpoint's config.json carries `"quantization": {"type": "q8_0", "block_size": 32}`.
//! Every matrix of the weight table ([`Storage::Matrix`]) `<name>` of shape `[rows, cols]` is then
//! two tensors:
//!
//! - `<name>`: the packed values, `[rows, blocks · block_bytes]` with `blocks = ⌈cols / 32⌉`:
//!   `I8` for q8_0 (one signed value a weight), `U8` for q4_0 (two 4-bit values a byte);
//! - `<name>.scales`: `F16` `[rows, blocks]`, one scale a block.
//!
//! Every other tensor (norms, conv, A_log, D, biases, meta tokens) is stored as in the float
//! checkpoint, byte for byte.

use super::{Dtype, TensorData, TensorSource};
use crate::config::{HymbaConfig, Storage, TensorSpec};
use crate::base::error::{Error, ErrorKind, Result};
use crate::kernels::matrix::Matrix;
use crate::kernels::quant::{QuantType, Quantized, BLOCK};
use std::path::{Path, PathBuf};

/// The name of a quantized matrix's scales tensor.
pub fn scales_name(name: &str) -> String {
    format!("{name}.scales")
}

/// The dtype a quantized matrix's packed values are stored in: `I8` for q8_0, `U8` for q4_0.
pub fn values_dtype(kind: QuantType) -> Dtype {
    match kind {
        QuantType::Q8_0 => Dtype::I8,
        QuantType::Q4_0 => Dtype::U8,
    }
}

/// The stored shapes of a `[rows, cols]` matrix in `kind`: (values, scales).
pub fn stored_shapes(kind: QuantType, rows: usize, cols: usize) -> (Vec<usize>, Vec<usize>) {
    let blocks = Quantized::blocks_per_row(cols);
    (vec![rows, blocks * kind.block_bytes()], vec![rows, blocks])
}

/// Every tensor a checkpoint of `cfg` stores, with its shape: the weight table's, with each
/// matrix split into values and scales when the config says the checkpoint is quantized.
pub fn stored_tensors(cfg: &HymbaConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for t in cfg.tensors() {
        match cfg.quantization {
            Some(kind) if t.spec.storage == Storage::Matrix => {
                let (values, scales) = stored_shapes(kind, t.shape[0], t.shape[1]);
                out.push((scales_name(&t.name), scales));
                out.push((t.name, values));
            }
            _ => out.push((t.name, t.shape)),
        }
    }
    out
}

/// Read the quantized matrix `t` of a checkpoint whose config says `kind`, checking the dtypes,
/// the counts and that every scale is finite; errors name the tensor.
pub fn read_matrix(ckpt: &dyn TensorSource, kind: QuantType, t: &TensorSpec) -> Result<Matrix> {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let scales_name = scales_name(&t.name);
    let mismatch = |name: &str, found: Dtype, want: Dtype| {
        Error::new(
            ErrorKind::ShapeMismatch,
            format!("tensor '{name}' is {found}, but config.json says the checkpoint is {kind}, which stores it as {want}"),
        )
    };
    // The values are copied into tiles ([`Quantized`]'s layout), not read in place: brought in
    // at once before, and let go of after, so the load peaks near one copy of the weights.
    ckpt.about_to_copy(&t.name);
    let (_, dtype, values) = ckpt.to_bytes(&t.name)?;
    if dtype != values_dtype(kind) {
        return Err(mismatch(&t.name, dtype, values_dtype(kind)));
    }
    let scales = match ckpt.to_elements(&scales_name)? {
        (_, crate::kernels::matrix::Elements::F16(scales)) => scales,
        _ => {
            let (_, dtype, _) = ckpt.to_bytes(&scales_name)?;
            return Err(mismatch(&scales_name, dtype, Dtype::F16));
        }
    };
    let q = Quantized::from_parts(kind, rows, cols, &values, &scales)
        .map_err(|e| Error::new(ErrorKind::NonFiniteWeight, format!("tensor '{}' ({kind}): {e}", t.name)))?;
    drop((values, scales));
    ckpt.done_with(&t.name);
    ckpt.done_with(&scales_name);
    Ok(Matrix::from_quantized(q))
}

/// The config.json of a quantized checkpoint: `config_text` (a float checkpoint's) with the
/// `quantization` key set. Fails if the text is not a JSON object or is already quantized.
pub fn quantized_config_text(config_text: &str, kind: QuantType) -> Result<String> {
    let mut value: serde_json::Value =
        serde_json::from_str(config_text).map_err(|e| Error::config(format!("not valid JSON: {e}")))?;
    let obj = value.as_object_mut().ok_or_else(|| Error::config("expected a JSON object"))?;
    if let Some(q) = obj.get("quantization").filter(|q| !q.is_null()) {
        return Err(Error::input(format!("the checkpoint is already quantized ({q}); quantize a bf16 or f32 checkpoint")));
    }
    obj.insert("quantization".into(), serde_json::json!({"type": kind.name(), "block_size": BLOCK}));
    let mut text = serde_json::to_string_pretty(&value).expect("a JSON value prints");
    text.push('\n');
    Ok(text)
}

/// Files besides the weights that a checkpoint directory may hold and `quantize` copies.
pub const COPIED_FILES: [&str; 6] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "MODEL_CARD.md",
];

/// Quantize the float checkpoint in `src` to `kind` and write it to the new directory `out`:
/// config.json with the `quantization` key, model.safetensors, and the [`COPIED_FILES`] that
/// exist. `out` must not exist; everything is written to a temporary directory beside it, which
/// is renamed to `out` only once complete, and removed on failure (nothing half-written is
/// left). `progress(done, total, name)` is called after each tensor. Returns the bytes of the
/// tensors written.
pub fn write_quantized(src: &Path, out: &Path, kind: QuantType, progress: impl FnMut(usize, usize, &str)) -> Result<u64> {
    if out.symlink_metadata().is_ok() {
        return Err(Error::input(format!("--out {}: already exists (quantize never writes over anything)", out.display())));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::input(format!("--out {}: the directory {} does not exist", out.display(), parent.display())));
    }
    let file_name = out.file_name().ok_or_else(|| Error::input(format!("--out {}: not a directory name", out.display())))?;
    let temp = parent.join(format!(".{}.partial-{}", file_name.to_string_lossy(), std::process::id()));
    std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, "create", e))?;
    let written = fill(src, &temp, kind, progress).and_then(|bytes| {
        std::fs::rename(&temp, out).map_err(|e| Error::io(out, "rename the finished directory to", e))?;
        Ok(bytes)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    written
}

/// Write the quantized checkpoint's files into the (new, empty) directory `dir`.
fn fill(src: &Path, dir: &Path, kind: QuantType, mut progress: impl FnMut(usize, usize, &str)) -> Result<u64> {
    let config_path = src.join("config.json");
    let config_text = crate::base::files::read_text_capped(&config_path, crate::base::files::CONFIG)?;
    let cfg = HymbaConfig::from_json_str(&config_text).map_err(|e| e.context(config_path.display()))?;
    if cfg.quantization.is_some() {
        return Err(Error::input(format!("{}: the checkpoint is already quantized; quantize a bf16 or f32 checkpoint", src.display())));
    }
    let quantized_text = quantized_config_text(&config_text, kind)?;
    // Every name, shape and value checked as a load checks them, before anything is quantized.
    let ckpt = super::Checkpoint::open_dir(src)?;
    let expected = cfg.tensors();
    let weights = super::weights::HymbaWeights::from_checkpoint(&cfg, &ckpt).map_err(|e| e.context(src.display()))?;
    drop(weights);

    // (name, dtype, shape, bytes), in the weight table's order
    let mut stored: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, t) in expected.iter().enumerate() {
        if t.spec.storage == Storage::Matrix {
            let (_, elements) = ckpt.to_elements(&t.name)?;
            let matrix = Matrix::new(t.shape[0], t.shape[1], elements).expect("the shape was checked");
            let q = matrix.quantize(kind).map_err(|e| Error::new(ErrorKind::NonFiniteWeight, format!("quantizing {} to {kind}: {e}", t.name)))?;
            let q = q.quantized().expect("just quantized");
            let (values_shape, scales_shape) = stored_shapes(kind, t.shape[0], t.shape[1]);
            let (values, scales) = q.to_parts(); // the plain row-major layout files keep
            let scales: Vec<u8> = scales.iter().flat_map(|d| d.to_bits().to_le_bytes()).collect();
            stored.push((t.name.clone(), values_dtype(kind), values_shape, values));
            stored.push((scales_name(&t.name), Dtype::F16, scales_shape, scales));
        } else {
            let (shape, dtype, bytes) = ckpt.to_bytes(&t.name)?;
            stored.push((t.name.clone(), dtype, shape, bytes.to_vec()));
        }
        progress(i + 1, expected.len(), &t.name);
    }
    let tensors: Vec<super::NamedTensor> =
        stored.iter().map(|(name, dtype, shape, bytes)| (name.as_str(), &shape[..], TensorData::Raw(*dtype, bytes))).collect();
    super::write_tensors(&dir.join("model.safetensors"), &tensors, &[("format", "pt")])?;
    std::fs::write(dir.join("config.json"), quantized_text).map_err(|e| Error::io(&dir.join("config.json"), "write", e))?;
    for name in COPIED_FILES {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, dir.join(name)).map_err(|e| Error::io(&from, "copy", e))?;
        }
    }
    Ok(stored.iter().map(|t| t.3.len() as u64).sum())
}
