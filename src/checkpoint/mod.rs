//! Model checkpoints: the safetensors format, sharded checkpoint directories, random weights for
//! tests and benchmarks, and the loader that turns named tensors into the model's weights.
//!
//! * [`safetensors`]: one `.safetensors` file — the format, a validating reader (memory-mapped)
//!   and an atomic writer.
//! * [`shards`]: a checkpoint directory, either one `model.safetensors` or several shards listed
//!   in `model.safetensors.index.json`, cross-checked against each other.
//! * [`weights`]: the model's weights named as checkpoint keys, and the one loader that checks
//!   every name and shape against the config.
//! * [`random`]: random weights for any config, generated in memory.
//!
//! Everything read here is untrusted: corrupt or malicious files produce an [`Error`] naming the
//! file, the tensor and the offending numbers, never a panic or an out-of-bounds read.

mod json_text;
pub mod random;
pub mod safetensors;
pub mod shards;
pub mod weights;

pub use safetensors::{
    write_f32, write_tensors, Dtype, NamedTensor, SafetensorsFile, TensorData, TensorInfo,
};
pub use shards::{parse_index, Checkpoint, ShardIndex};

use crate::error::{Error, ErrorKind, Result};
use crate::matrix::Elements;

/// Ok if every value is finite; else a [`ErrorKind::NonFiniteWeight`] error naming tensor `name`,
/// the first NaN or infinity (its flat row-major index and value) and how many there are.
pub fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    let Some(first) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let count = values[first..].iter().filter(|v| !v.is_finite()).count();
    let message = format!(
        "tensor '{name}' holds {count} non-finite value(s) among {}; the first is {} at flat index {first}",
        values.len(),
        values[first]
    );
    Err(Error::new(ErrorKind::NonFiniteWeight, message))
}

/// Anything that can hand out named tensors: a checkpoint on disk, or random weights.
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// A tensor converted to f32: (shape, row-major data).
    fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// A tensor in its stored dtype (bf16 stays bf16): (shape, row-major data).
    fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)>;
}

impl TensorSource for Checkpoint {
    fn names(&self) -> Vec<String> {
        Checkpoint::names(self).into_iter().map(str::to_string).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|t| t.shape.clone())
    }
    fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        Checkpoint::to_f32(self, name)
    }
    fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)> {
        Checkpoint::to_elements(self, name)
    }
}
