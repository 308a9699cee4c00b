//! Reading checkpoints: our own safetensors reader, sharded checkpoints, random weights for tests
//! and benchmarks, and the loader that turns tensors into the model's weights.

mod json_keys;
pub mod random;
pub mod safetensors;
pub mod shards;
pub mod weights;

use crate::error::Result;

/// Anything that can hand out named tensors: a checkpoint on disk, or random weights.
pub trait TensorSource {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// A tensor converted to f32: (shape, row-major data).
    fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
}

impl TensorSource for shards::Checkpoint {
    fn names(&self) -> Vec<String> {
        shards::Checkpoint::names(self).into_iter().map(str::to_string).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|t| t.shape.clone())
    }
    fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        shards::Checkpoint::to_f32(self, name)
    }
}
