//! Random weights for any config, generated in memory: for property tests and benchmarks (e.g.
//! the released 1.5B shape without downloading it). Deterministic for a given seed.
//!
//! Scales follow the usual initialisation so activations stay O(1): norm weights near 1, linear
//! maps uniform with std ≈ 1/sqrt(fan_in), `A_log = log(1..=N)` (Mamba's S4D-real init), and a
//! `dt_proj` bias that makes Δ = softplus(…) lie roughly in [0.001, 0.1].

use super::shards::INDEX_FILE;
use super::{write_tensors, NamedTensor, TensorData, TensorSource};
use crate::config::HymbaConfig;
use crate::error::{Error, Result};
use crate::matrix::Elements;
use crate::rng::SplitMix64;
use std::collections::BTreeMap;
use std::path::Path;

/// A [`TensorSource`] that makes every tensor `cfg` requires, on demand.
pub struct RandomWeights {
    shapes: BTreeMap<String, Vec<usize>>,
    seed: u64,
}

impl RandomWeights {
    pub fn new(cfg: &HymbaConfig, seed: u64) -> RandomWeights {
        RandomWeights { shapes: cfg.tensors().into_iter().map(|t| (t.name, t.shape)).collect(), seed }
    }
}

impl RandomWeights {
    /// Write these weights as a published checkpoint is laid out: `shards` bf16 safetensors
    /// files `model-0000i-of-0000n.safetensors` of about equal size (tensors in name order) and
    /// `model.safetensors.index.json`. Holds one shard in memory at a time. → bytes of weights
    pub fn write_sharded(&self, dir: &Path, shards: usize) -> Result<u64> {
        let names = self.names();
        let bytes_of = |name: &str| 2 * self.shapes[name].iter().product::<usize>() as u64;
        let total: u64 = names.iter().map(|n| bytes_of(n)).sum();
        let shards = shards.clamp(1, names.len().max(1));
        let file_name = |i: usize| format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        // Tensor i goes to the shard its first byte falls in.
        let (mut weight_map, mut groups) = (serde_json::Map::new(), vec![Vec::new(); shards]);
        let mut offset = 0;
        for name in &names {
            let shard = ((offset * shards as u64) / total.max(1)) as usize;
            groups[shard.min(shards - 1)].push(name.as_str());
            offset += bytes_of(name);
        }
        for (i, group) in groups.iter().enumerate() {
            let tensors = group.iter().map(|&n| self.to_bf16(n).map(|(shape, v)| (n, shape, v))).collect::<Result<Vec<_>>>()?;
            let named: Vec<NamedTensor> =
                tensors.iter().map(|(n, shape, v)| (*n, shape.as_slice(), TensorData::Bf16(v))).collect();
            write_tensors(&dir.join(file_name(i)), &named, &[("format", "pt")])?;
            weight_map.extend(group.iter().map(|&n| (n.to_string(), file_name(i).into())));
        }
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join(INDEX_FILE);
        std::fs::write(&path, format!("{index:#}\n")).map_err(|e| Error::io(&path, "write", e))?;
        Ok(total)
    }

    /// A tensor rounded to bf16, as the released weights are stored.
    fn to_bf16(&self, name: &str) -> Result<(Vec<usize>, Vec<half::bf16>)> {
        let (shape, data) = self.to_f32(name)?;
        Ok((shape, data.into_iter().map(half::bf16::from_f32).collect()))
    }
}

/// A stable per-tensor seed, so a tensor's values do not depend on which others were made.
fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

impl TensorSource for RandomWeights {
    fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = self.shapes.get(name).ok_or_else(|| Error::input(format!("no random tensor {name}")))?;
        let len: usize = shape.iter().product();
        let mut rng = SplitMix64(name_seed(self.seed, name));
        let data: Vec<f32> = if name.ends_with("A_log.0") {
            let n = shape[1];
            (0..len).map(|i| ((i % n) as f32 + 1.0).ln()).collect()
        } else if name.ends_with("dt_proj.0.bias") {
            // softplus⁻¹(Δ) for Δ log-uniform in [0.001, 0.1]
            (0..len).map(|_| {
                let dt = (0.001f32.ln() + (rng.uniform() + 1.0) * 0.5 * (0.1f32.ln() - 0.001f32.ln())).exp();
                dt + (-(-dt).exp_m1()).ln()
            }).collect()
        } else if name.ends_with("norm.weight") || name.ends_with("D.0") {
            (0..len).map(|_| 1.0 + 0.1 * rng.uniform()).collect()
        } else if name.ends_with(".bias") {
            (0..len).map(|_| 0.02 * rng.uniform()).collect()
        } else {
            // Embeddings, meta tokens, linear and conv weights: std ≈ 1/sqrt(fan_in) (uniform
            // on [−a, a] has std a/√3). Embeddings use fan_in = 1 scaled down to std ≈ 0.5.
            let fan_in = if name.contains("embed_tokens") || name.contains("memory_tokens") {
                4
            } else {
                shape[1..].iter().product::<usize>().max(1)
            };
            let a = (3.0 / fan_in as f32).sqrt();
            (0..len).map(|_| a * rng.uniform()).collect()
        };
        Ok((shape.clone(), data))
    }

    /// Matrices come as bf16, like the released weights.
    fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)> {
        let (shape, data) = self.to_bf16(name)?;
        Ok((shape, Elements::Bf16(data.into())))
    }
}
