//! Model checkpoints on disk: the safetensors format and sharded checkpoint directories.
//!
//! * [`safetensors`]: one `.safetensors` file — the format, a validating reader (memory-mapped)
//!   and an atomic writer.
//! * [`shards`]: a checkpoint directory, either one `model.safetensors` or several shards listed
//!   in `model.safetensors.index.json`, cross-checked against each other.
//!
//! Everything read here is untrusted: corrupt or malicious files produce an [`Error`] naming the
//! file, the tensor and the offending numbers, never a panic or an out-of-bounds read.

mod json_text;
pub mod safetensors;
pub mod shards;

pub use safetensors::{
    write_f32, write_tensors, Dtype, NamedTensor, SafetensorsFile, TensorData, TensorInfo,
};
pub use shards::{parse_index, Checkpoint, ShardIndex};

use crate::error::{Error, ErrorKind, Result};

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
