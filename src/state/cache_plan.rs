//! Cache-size accounting from the config alone: how many scalars a sequence's [`HybridCache`]
//! holds once it has seen a given context, and what a dense-attention cache would hold instead.
//!
//! "Context N" counts prompt and generated tokens; the M meta tokens come on top. After a
//! sequence has processed N tokens (docs/MODEL.md §5):
//!
//! - a K/V-producing layer keeps the M meta rows plus, if it must retain every position (it is
//!   global, or a global layer reuses its K/V: [`LayerPlan::kv_retention`]), all N token rows, or
//!   for a window W, the last min(N, W) rows. A row is nkv·(dqk + dv) scalars: keys and values;
//! - a layer that reuses another layer's K/V keeps no K/V;
//! - every layer keeps its SSM scan state, D × N scalars, and its conv state, (K − 1) × D
//!   scalars, whatever the context.
//!
//! [`HybridCache::allocated_scalars`] counts what a real cache holds; the tests check that it
//! equals [`CachePlan::new`]'s prediction after every chunk.
//!
//! [`HybridCache`]: crate::state::cache::HybridCache
//! [`HybridCache::allocated_scalars`]: crate::state::cache::HybridCache::allocated_scalars

use crate::config::{AttentionSpan, HymbaConfig, LayerPlan};
use crate::base::error::{Error, Result};

/// A storage type for cached scalars (the engine itself keeps f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    /// 2 bytes, as the released weights.
    Bf16,
    /// 4 bytes, as this engine computes.
    F32,
}

impl ScalarType {
    pub const ALL: [ScalarType; 2] = [ScalarType::Bf16, ScalarType::F32];

    pub const fn bytes(self) -> usize {
        match self {
            ScalarType::Bf16 => 2,
            ScalarType::F32 => 4,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ScalarType::Bf16 => "bf16",
            ScalarType::F32 => "f32",
        }
    }
}

/// Scalars in a cache, split by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSize {
    /// Keys and values of every K/V-producing layer.
    pub kv_cache_elements: usize,
    /// SSM scan states, D × N per layer.
    pub ssm_state_elements: usize,
    /// Conv states, (K − 1) × D per layer.
    pub conv_state_elements: usize,
}

impl CacheSize {
    pub fn total_elements(&self) -> usize {
        self.kv_cache_elements + self.ssm_state_elements + self.conv_state_elements
    }

    /// Bytes of the whole cache stored as `dtype`. Sizes from [`CachePlan::new`] are checked to
    /// fit in f32 bytes, and a real cache's size fits by existing.
    pub fn bytes(&self, dtype: ScalarType) -> usize {
        self.total_elements() * dtype.bytes()
    }
}

/// One layer's share of the K/V cache at the plan's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCache {
    pub plan: LayerPlan,
    /// K/V rows kept, meta rows included: M + N (retains all), M + min(N, W) (window W), or 0
    /// (reuses another layer's K/V).
    pub kv_rows: usize,
}

/// The cache of one sequence at a given context, predicted from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePlan {
    /// N: prompt + generated tokens, meta tokens excluded.
    pub context: usize,
    /// M: meta rows every K/V producer keeps in addition to the context.
    pub num_meta_tokens: usize,
    /// Scalars per K/V row: nkv·(dqk + dv).
    pub kv_row_elements: usize,
    pub layers: Vec<LayerCache>,
    /// What the hybrid cache holds at this context.
    pub size: CacheSize,
    /// The dense-attention equivalent, for comparison: the same dimensions with every one of the
    /// L layers projecting its own K/V and attending globally, no meta tokens and no SSM heads,
    /// i.e. a plain transformer's cache, L · N · nkv·(dqk + dv) scalars (only
    /// `kv_cache_elements` is nonzero).
    pub dense_equivalent: CacheSize,
}

impl CachePlan {
    /// The cache of a sequence of `cfg`'s model after `context` tokens. Fails only when a size
    /// (in f32 bytes) does not fit in a `usize`.
    pub fn new(cfg: &HymbaConfig, context: usize) -> Result<CachePlan> {
        plan(cfg, context).ok_or_else(|| {
            Error::input(format!("context {context}: the cache size does not fit in {} bits", usize::BITS))
        })
    }

    /// K/V scalars spent on meta-token rows (M per producer), included in `size`.
    pub fn kv_meta_elements(&self) -> usize {
        let producers = self.layers.iter().filter(|l| l.plan.owns_kv()).count();
        producers * self.num_meta_tokens * self.kv_row_elements
    }

    /// Scalars of this cache one decode step reads, besides the weights: each layer's attention
    /// reads the K/V rows of the layer whose cache it uses (a shared cache is read once per
    /// layer that uses it), and each layer's SSM heads read their scan and conv states.
    /// Saturates rather than overflow (a figure for reports only).
    pub fn decode_read_elements(&self) -> usize {
        let kv_rows = self.layers.iter().fold(0usize, |sum, l| sum.saturating_add(self.layers[l.plan.kv_producer()].kv_rows));
        let states = self.size.ssm_state_elements.saturating_add(self.size.conv_state_elements);
        kv_rows.saturating_mul(self.kv_row_elements).saturating_add(states)
    }

    /// How many times larger the dense-attention equivalent is than the hybrid cache (total
    /// scalars, so the same in any storage type).
    pub fn dense_ratio(&self) -> f64 {
        self.dense_equivalent.total_elements() as f64 / self.size.total_elements() as f64
    }
}

/// [`CachePlan::new`] with checked arithmetic: `None` on overflow.
fn plan(cfg: &HymbaConfig, context: usize) -> Option<CachePlan> {
    let m = cfg.num_memory_tokens;
    let row = cfg.num_key_value_heads.checked_mul(cfg.head_dim_qk().checked_add(cfg.head_dim_v())?)?;
    let layers = cfg
        .layers
        .iter()
        .map(|&plan| {
            let kv_rows = match plan.kv_retention {
                None => 0,
                Some(AttentionSpan::Global) => m.checked_add(context)?,
                Some(AttentionSpan::SlidingWindow(w)) => m.checked_add(context.min(w))?,
            };
            Some(LayerCache { plan, kv_rows })
        })
        .collect::<Option<Vec<_>>>()?;
    let kv_rows = layers.iter().try_fold(0usize, |sum, l| sum.checked_add(l.kv_rows))?;
    let l = cfg.num_hidden_layers;
    let size = CacheSize {
        kv_cache_elements: kv_rows.checked_mul(row)?,
        ssm_state_elements: l.checked_mul(cfg.d_inner())?.checked_mul(cfg.mamba_d_state)?,
        conv_state_elements: l.checked_mul(cfg.mamba_d_conv - 1)?.checked_mul(cfg.d_inner())?,
    };
    let dense_equivalent = CacheSize { kv_cache_elements: l.checked_mul(context)?.checked_mul(row)?, ..CacheSize::default() };
    // Every byte count derived later must fit too.
    for s in [size, dense_equivalent] {
        let total = s.kv_cache_elements.checked_add(s.ssm_state_elements)?.checked_add(s.conv_state_elements)?;
        total.checked_mul(ScalarType::F32.bytes())?;
    }
    Some(CachePlan { context, num_meta_tokens: m, kv_row_elements: row, layers, size, dense_equivalent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KvSource;

    /// 5 layers: 0 global, 1 a window producer reused by 2, 3 a window producer reused by the global 4.
    fn config() -> HymbaConfig {
        HymbaConfig::from_json_str(
            &serde_json::json!({
                "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 5,
                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 8,
                "mamba_expand": 2, "mamba_d_state": 3, "mamba_d_conv": 4,
                "num_memory_tokens": 2, "sliding_window": 5, "global_attn_idx": [0, 4],
                "kv_reuse_group": [[1, 2], [3, 4]],
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn rows_follow_retention() {
        let cfg = config();
        // dqk = 4, dv = 8: a row is 2 · (4 + 8) = 24 scalars.
        for (n, rows) in [(0, [2, 2, 0, 2, 0]), (3, [5, 5, 0, 5, 0]), (20, [22, 7, 0, 22, 0])] {
            let p = CachePlan::new(&cfg, n).unwrap();
            assert_eq!(p.layers.iter().map(|l| l.kv_rows).collect::<Vec<_>>(), rows, "context {n}");
            assert_eq!(p.kv_row_elements, 24);
            assert_eq!(p.size.kv_cache_elements, rows.iter().sum::<usize>() * 24);
            assert_eq!(p.size.ssm_state_elements, 5 * 32 * 3);
            assert_eq!(p.size.conv_state_elements, 5 * 3 * 32);
            assert_eq!(p.dense_equivalent, CacheSize { kv_cache_elements: 5 * n * 24, ..CacheSize::default() });
            assert_eq!(p.kv_meta_elements(), 3 * 2 * 24);
        }
        assert_eq!(CachePlan::new(&cfg, 0).unwrap().layers[2].plan.kv, KvSource::ReuseFrom(1));
    }

    #[test]
    fn a_decode_step_reads_each_layers_kv_source_and_every_state() {
        // Context 20: layers 0..5 attend to the rows of layers 0, 1, 1, 3, 3 (22, 7, 7, 22, 22).
        let p = CachePlan::new(&config(), 20).unwrap();
        assert_eq!(p.decode_read_elements(), (22 + 7 + 7 + 22 + 22) * 24 + 5 * 32 * 3 + 5 * 3 * 32);
    }

    #[test]
    fn bytes_and_overflow() {
        let size = CacheSize { kv_cache_elements: 10, ssm_state_elements: 5, conv_state_elements: 1 };
        assert_eq!((size.bytes(ScalarType::Bf16), size.bytes(ScalarType::F32)), (32, 64));
        let err = CachePlan::new(&config(), usize::MAX / 8).unwrap_err();
        assert!(err.message.contains("context"), "{err}");
    }
}
