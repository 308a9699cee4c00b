//! Random weights for any config, generated in memory: for property tests and benchmarks (e.g.
//! the released 1.5B shape without downloading it). Deterministic for a given seed.
//!
//! Scales follow the usual initialisation so activations stay O(1): norm weights near 1, linear
//! maps uniform with std ≈ 1/sqrt(fan_in), `A_log = log(1..=N)` (Mamba's S4D-real init), and a
//! `dt_proj` bias that makes Δ = softplus(…) lie roughly in [0.001, 0.1].

use super::shards::INDEX_FILE;
use super::{write_tensors, Dtype, NamedTensor, TensorData, TensorSource};
use crate::config::HymbaConfig;
use crate::base::error::{Error, Result};
use crate::kernels::matrix::Elements;
use crate::base::values::Values;
use crate::base::rng::SplitMix64;
use rayon::prelude::*;
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
        self.generate(name, half::bf16::from_f32)
    }

    /// Tensor `name`, each value passed through `convert`: value i from draw i of the tensor's
    /// generator, reached by skipping the draws before it ([`SplitMix64::skipped`]), so that the
    /// values are made in parallel and are those of drawing them one after another.
    fn generate<T: Send + Copy>(&self, name: &str, convert: impl Fn(f32) -> T + Sync) -> Result<(Vec<usize>, Vec<T>)> {
        let shape = self.shapes.get(name).ok_or_else(|| Error::input(format!("no random tensor {name}")))?;
        let (init, rng) = (Init::of(name, shape), SplitMix64(name_seed(self.seed, name)));
        let len: usize = shape.iter().product();
        // A task makes the values of a chunk; the chunks, in order, are the tensor.
        let parts: Vec<Vec<T>> = (0..len.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| (c * CHUNK..len.min((c + 1) * CHUNK)).map(|i| convert(init.value(rng.skipped(i as u64).uniform(), i))).collect())
            .collect();
        Ok((shape.clone(), parts.concat()))
    }
}

/// How a tensor's values are drawn, by its name: value i from draw i of the tensor's generator
/// (`A_log` from none).
enum Init {
    /// `A_log = log(1..=N)` along each row of N (Mamba's S4D-real init).
    ALog { n: usize },
    /// softplus⁻¹(Δ) for Δ log-uniform in [0.001, 0.1].
    DtBias,
    /// Norm weights and D: near 1.
    NearOne,
    /// Other biases: near 0.
    SmallBias,
    /// Uniform on [−a, a].
    Uniform { a: f32 },
}

impl Init {
    fn of(name: &str, shape: &[usize]) -> Init {
        if name.ends_with("A_log.0") {
            Init::ALog { n: shape[1] }
        } else if name.ends_with("dt_proj.0.bias") {
            Init::DtBias
        } else if name.ends_with("norm.weight") || name.ends_with("D.0") {
            Init::NearOne
        } else if name.ends_with(".bias") {
            Init::SmallBias
        } else {
            // Embeddings, meta tokens, linear and conv weights: std ≈ 1/sqrt(fan_in) (uniform
            // on [−a, a] has std a/√3). Embeddings use fan_in = 1 scaled down to std ≈ 0.5.
            let fan_in = if name.contains("embed_tokens") || name.contains("memory_tokens") {
                4
            } else {
                shape[1..].iter().product::<usize>().max(1)
            };
            Init::Uniform { a: (3.0 / fan_in as f32).sqrt() }
        }
    }

    /// Value `i` of the tensor, given its draw `u`, uniform in [−1, 1).
    #[inline(always)]
    fn value(&self, u: f32, i: usize) -> f32 {
        match *self {
            Init::ALog { n } => ((i % n) as f32 + 1.0).ln(),
            Init::DtBias => {
                let dt = (0.001f32.ln() + (u + 1.0) * 0.5 * (0.1f32.ln() - 0.001f32.ln())).exp();
                dt + (-(-dt).exp_m1()).ln()
            }
            Init::NearOne => 1.0 + 0.1 * u,
            Init::SmallBias => 0.02 * u,
            Init::Uniform { a } => a * u,
        }
    }
}

/// Values a task of [`RandomWeights::generate`] makes.
const CHUNK: usize = 1 << 16;

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
        self.generate(name, |v| v)
    }

    /// Matrices come as bf16, like the released weights.
    fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)> {
        let (shape, data) = self.to_bf16(name)?;
        Ok((shape, Elements::Bf16(data.into())))
    }

    /// The bf16 values of [`RandomWeights::to_elements`] as their little-endian bytes.
    fn to_bytes(&self, name: &str) -> Result<(Vec<usize>, Dtype, Values<u8>)> {
        let (shape, data) = self.to_bf16(name)?;
        Ok((shape, Dtype::BF16, data.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect::<Vec<u8>>().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_made_in_parallel_are_those_drawn_one_after_another() {
        // The embedding (3,000 × 64) spans three chunks, the last one partial.
        let config = serde_json::json!({
            "vocab_size": 3000, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24,
            "num_memory_tokens": 3, "sliding_window": 7, "global_attn_idx": [1],
            "mamba_d_state": 4, "mamba_d_conv": 3,
        });
        let cfg = HymbaConfig::from_json_str(&config.to_string()).unwrap();
        let weights = RandomWeights::new(&cfg, 11);
        assert!(weights.shapes["model.embed_tokens.weight"].iter().product::<usize>() > 2 * CHUNK);
        for name in weights.names() {
            let (shape, values) = weights.to_f32(&name).unwrap();
            let init = Init::of(&name, &shape);
            let mut rng = SplitMix64(name_seed(11, &name));
            for (i, &v) in values.iter().enumerate() {
                let one_after_another = init.value(rng.uniform(), i);
                assert_eq!(v.to_bits(), one_after_another.to_bits(), "{name}[{i}]");
            }
            let (_, Elements::Bf16(rounded)) = weights.to_elements(&name).unwrap() else { panic!("{name}: not bf16") };
            assert!(values.iter().zip(rounded.iter()).all(|(&v, &b)| half::bf16::from_f32(v) == b), "{name}");
        }
        let (_, a_log) = weights.to_f32("model.layers.0.mamba.A_log.0").unwrap();
        assert_eq!(&a_log[..5], &[1f32.ln(), 2f32.ln(), 3f32.ln(), 4f32.ln(), 1f32.ln()], "ln(1..=N) per row of N = 4");
    }
}
