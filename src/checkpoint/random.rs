//! Random weights for any config, generated in memory: for property tests and benchmarks (e.g.
//! the released 1.5B shape without downloading it). Deterministic for a given seed.
//!
//! Scales follow the usual initialisation so activations stay O(1): norm weights near 1, linear
//! maps uniform with std ≈ 1/sqrt(fan_in), `A_log = log(1..=N)` (Mamba's S4D-real init), and a
//! `dt_proj` bias that makes Δ = softplus(…) lie roughly in [0.001, 0.1].

use super::TensorSource;
use crate::config::HymbaConfig;
use crate::error::{Error, Result};
use crate::matrix::Elements;
use crate::rng::SplitMix64;
use std::collections::BTreeMap;

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
        let (shape, data) = self.to_f32(name)?;
        Ok((shape, Elements::Bf16(data.into_iter().map(half::bf16::from_f32).collect())))
    }
}
