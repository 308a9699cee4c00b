//! TEMPORARY shim until the safetensors branch lands.
use super::safetensors::{SafetensorsFile, TensorInfo};
use crate::error::Result;
use std::path::Path;
pub struct Checkpoint { file: SafetensorsFile }
impl Checkpoint {
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> { Ok(Checkpoint { file: SafetensorsFile::open(&dir.join("model.safetensors"))? }) }
    pub fn names(&self) -> Vec<&str> { self.file.tensors().map(|t| t.name.as_str()).collect() }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> { self.file.get(name) }
    pub fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> { self.file.to_f32(name) }
}
