//! The hybrid cache: everything a sequence carries from one chunk of tokens to the next.
//!
//! - Per K/V-producing layer, a [`KvCache`]: rotated keys and values, each row tagged with its
//!   absolute position. Global producers keep every row; sliding-window producers keep the M meta
//!   rows plus only the last W positions, so their memory is bounded by M + W (+ the chunk being
//!   processed). A producer keeps what its most demanding reuser needs
//!   ([`LayerPlan::kv_retention`]); reusing layers hold nothing.
//! - Per layer, an [`SsmState`]: the last K−1 conv inputs and the D × N scan state (O(1) in the
//!   sequence length).
//!
//! The cache is a plain value passed `&mut` to the model; a full forward pass is the same code
//! run on a fresh cache.

use crate::cache_plan::CacheSize;
use crate::config::{AttentionSpan, HymbaConfig, LayerPlan};
use crate::model::ssm::SsmState;
use ndarray::{ArrayView2, ArrayView3};

/// Keys and values of one K/V-producing layer. Rows are unordered: each carries its position,
/// and eviction moves the last row into the freed slot (no shifting, no reallocation).
#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    num_kv_heads: usize,
    head_dim_qk: usize,
    head_dim_v: usize,
    /// (S, nkv, dqk), row-major
    keys: Vec<f32>,
    /// (S, nkv, dv), row-major
    values: Vec<f32>,
    positions: Vec<usize>,
    retention: AttentionSpan,
}

impl KvCache {
    pub fn new(nkv: usize, dqk: usize, dv: usize, retention: AttentionSpan) -> KvCache {
        KvCache {
            num_kv_heads: nkv,
            head_dim_qk: dqk,
            head_dim_v: dv,
            keys: Vec::new(),
            values: Vec::new(),
            positions: Vec::new(),
            retention,
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The cached keys (S, nkv, dqk).
    pub fn keys(&self) -> ArrayView3<'_, f32> {
        ArrayView3::from_shape((self.len(), self.num_kv_heads, self.head_dim_qk), &self.keys).expect("consistent")
    }

    /// The cached values (S, nkv, dv).
    pub fn values(&self) -> ArrayView3<'_, f32> {
        ArrayView3::from_shape((self.len(), self.num_kv_heads, self.head_dim_v), &self.values).expect("consistent")
    }

    /// The absolute position of each cached row.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Append rows: keys (T, nkv·dqk), values (T, nkv·dv) at `positions`.
    pub fn append(&mut self, keys: ArrayView2<f32>, values: ArrayView2<f32>, positions: &[usize]) {
        debug_assert_eq!(keys.dim(), (positions.len(), self.num_kv_heads * self.head_dim_qk));
        debug_assert_eq!(values.dim(), (positions.len(), self.num_kv_heads * self.head_dim_v));
        self.keys.extend(keys.iter());
        self.values.extend(values.iter());
        self.positions.extend_from_slice(positions);
    }

    /// Drop the rows no future query can see, given that the next token is at `next_position`:
    /// for a window W, future queries see positions ≥ next − W, and always the meta tokens.
    pub fn evict(&mut self, next_position: usize, num_meta: usize) {
        let AttentionSpan::SlidingWindow(w) = self.retention else { return };
        let oldest_needed = next_position.saturating_sub(w);
        let (kw, vw) = (self.num_kv_heads * self.head_dim_qk, self.num_kv_heads * self.head_dim_v);
        let mut row = 0;
        while row < self.positions.len() {
            let p = self.positions[row];
            if p >= num_meta && p < oldest_needed {
                let last = self.positions.len() - 1;
                self.positions.swap_remove(row);
                swap_remove_row(&mut self.keys, row, last, kw);
                swap_remove_row(&mut self.values, row, last, vw);
            } else {
                row += 1;
            }
        }
    }

    /// The number of scalars held (keys and values).
    pub fn scalars(&self) -> usize {
        self.keys.len() + self.values.len()
    }
}

/// Move row `last` of a row-major buffer into row `row` and truncate.
fn swap_remove_row(buf: &mut Vec<f32>, row: usize, last: usize, width: usize) {
    if row != last {
        buf.copy_within(last * width..(last + 1) * width, row * width);
    }
    buf.truncate(last * width);
}

/// Everything one sequence carries between chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridCache {
    /// Per layer: `Some` for K/V producers, `None` for layers that reuse another layer's K/V.
    pub kv: Vec<Option<KvCache>>,
    /// Per layer: conv and scan state of the SSM heads.
    pub ssm: Vec<SsmState>,
    /// The position of the next token (meta tokens included).
    pub next_position: usize,
}

impl HybridCache {
    /// An empty cache for a new sequence, before the meta tokens.
    pub fn new(cfg: &HymbaConfig) -> HybridCache {
        let kv = cfg
            .layers
            .iter()
            .map(|plan: &LayerPlan| {
                plan.kv_retention.map(|span| {
                    KvCache::new(cfg.num_key_value_heads, cfg.head_dim_qk(), cfg.head_dim_v(), span)
                })
            })
            .collect();
        let ssm = (0..cfg.num_hidden_layers)
            .map(|_| SsmState::zeros(cfg.d_inner(), cfg.mamba_d_conv, cfg.mamba_d_state))
            .collect();
        HybridCache { kv, ssm, next_position: 0 }
    }

    /// The scalars this cache holds now, split as [`crate::cache_plan::CachePlan`] predicts them.
    pub fn allocated_scalars(&self) -> CacheSize {
        CacheSize {
            kv_cache_elements: self.kv.iter().flatten().map(KvCache::scalars).sum(),
            ssm_state_elements: self.ssm.iter().map(|s| s.scan.len()).sum(),
            conv_state_elements: self.ssm.iter().map(|s| s.conv.len()).sum(),
        }
    }

    /// After a chunk: advance the position and evict K/V rows no future query can see.
    pub fn finish_chunk(&mut self, chunk_len: usize, num_meta: usize) {
        self.next_position += chunk_len;
        for kv in self.kv.iter_mut().flatten() {
            kv.evict(self.next_position, num_meta);
        }
    }
}
