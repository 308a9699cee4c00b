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
//! The cache is a plain value passed `&mut` to the model (inside a [`crate::model::Sequence`],
//! beside the sequence's scratch buffers); a full forward pass is the same code run on a fresh
//! cache. This module depends on the config alone.

use crate::cache_plan::CacheSize;
use crate::config::{AttentionSpan, HymbaConfig, LayerPlan};
use ndarray::{Array2, ArrayView2, ArrayView3, ShapeBuilder};

/// Keys and values of one K/V-producing layer. Rows are unordered: each carries its position,
/// and eviction moves the last row into the freed slot (no shifting, no reallocation).
///
/// Keys are stored transposed, (nkv, dqk, capacity): for one K/V head and one dimension d, the
/// d-th components of consecutive keys are contiguous. Scoring one query against many keys is
/// then `Σ_d q[d]·Kᵀ[d, j..j+16]`: vector operations over keys, with no sum across a vector
/// (see `attention::attend`). [`KvCache::keys`] still shows them as (S, nkv, dqk).
#[derive(Debug, Clone)]
pub struct KvCache {
    num_kv_heads: usize,
    head_dim_qk: usize,
    head_dim_v: usize,
    /// (nkv, dqk, capacity); slots len..capacity of each row unused
    keys_t: Vec<f32>,
    capacity: usize,
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
            keys_t: Vec::new(),
            capacity: 0,
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

    /// The cached keys (S, nkv, dqk), a strided view of the transposed storage.
    pub fn keys(&self) -> ArrayView3<'_, f32> {
        let (dqk, cap) = (self.head_dim_qk, self.capacity);
        let shape = (self.len(), self.num_kv_heads, dqk).strides((1, dqk * cap, cap));
        ArrayView3::from_shape(shape, &self.keys_t).expect("consistent")
    }

    /// The cached values (S, nkv, dv).
    pub fn values(&self) -> ArrayView3<'_, f32> {
        ArrayView3::from_shape((self.len(), self.num_kv_heads, self.head_dim_v), &self.values).expect("consistent")
    }

    /// The absolute position of each cached row.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Make room for `tokens` more tokens, so that appending them does not reallocate: all of
    /// them in a global cache; at most W + 1 in a window cache, which never holds more than
    /// M + W rows (+ the one-token chunk being decoded).
    pub fn reserve(&mut self, tokens: usize) {
        let rows = match self.retention {
            AttentionSpan::Global => tokens,
            AttentionSpan::SlidingWindow(w) => tokens.min(w + 1),
        };
        self.grow_keys_to(self.len() + rows);
        // Exact: on a full cache (a copy) a plain reserve would double the values.
        self.values.reserve_exact(rows * self.num_kv_heads * self.head_dim_v);
        self.positions.reserve_exact(rows);
    }

    /// Give the transposed keys room for at least `rows` slots (doubling, like a Vec).
    fn grow_keys_to(&mut self, rows: usize) {
        if rows <= self.capacity {
            return;
        }
        let (len, old_cap, new_cap) = (self.len(), self.capacity, rows.max(2 * self.capacity));
        let mut grown = vec![0f32; self.num_kv_heads * self.head_dim_qk * new_cap];
        for (new_row, old_row) in grown.chunks_exact_mut(new_cap).zip(self.keys_t.chunks_exact(old_cap.max(1))) {
            new_row[..len].copy_from_slice(&old_row[..len]);
        }
        (self.keys_t, self.capacity) = (grown, new_cap);
    }

    /// Append rows: keys (T, nkv·dqk), values (T, nkv·dv) at `positions`.
    pub fn append(&mut self, keys: ArrayView2<f32>, values: ArrayView2<f32>, positions: &[usize]) {
        debug_assert_eq!(keys.dim(), (positions.len(), self.num_kv_heads * self.head_dim_qk));
        debug_assert_eq!(values.dim(), (positions.len(), self.num_kv_heads * self.head_dim_v));
        let len = self.len();
        self.grow_keys_to(len + positions.len());
        let cap = self.capacity;
        for (i, key) in keys.rows().into_iter().enumerate() {
            for (gd, &x) in key.iter().enumerate() {
                self.keys_t[gd * cap + len + i] = x; // (g, d, slot)
            }
        }
        self.values.extend(values.iter());
        self.positions.extend_from_slice(positions);
    }

    /// Drop the rows no future query can see, given that the next token is at `next_position`:
    /// for a window W, future queries see positions ≥ next − W, and always the meta tokens.
    pub fn evict(&mut self, next_position: usize, num_meta: usize) {
        let AttentionSpan::SlidingWindow(w) = self.retention else { return };
        let oldest_needed = next_position.saturating_sub(w);
        let vw = self.num_kv_heads * self.head_dim_v;
        let mut row = 0;
        while row < self.positions.len() {
            let p = self.positions[row];
            if p >= num_meta && p < oldest_needed {
                let last = self.positions.len() - 1;
                self.positions.swap_remove(row);
                for slots in self.keys_t.chunks_exact_mut(self.capacity) {
                    slots[row] = slots[last];
                }
                swap_remove_row(&mut self.values, row, last, vw);
            } else {
                row += 1;
            }
        }
    }

    /// The number of scalars held (keys and values).
    pub fn scalars(&self) -> usize {
        self.len() * self.num_kv_heads * (self.head_dim_qk + self.head_dim_v)
    }
}

/// Equal when they hold the same rows in the same order (unused key slots do not count).
impl PartialEq for KvCache {
    fn eq(&self, other: &KvCache) -> bool {
        (self.retention, &self.positions, &self.values) == (other.retention, &other.positions, &other.values)
            && self.keys() == other.keys()
    }
}

/// Move row `last` of a row-major buffer into row `row` and truncate.
fn swap_remove_row(buf: &mut Vec<f32>, row: usize, last: usize, width: usize) {
    if row != last {
        buf.copy_within(last * width..(last + 1) * width, row * width);
    }
    buf.truncate(last * width);
}

/// The recurrent state of one layer's SSM heads (`model::ssm`). The default is empty (no
/// allocation): what a cache holds while a layer's SSM heads hold its state
/// (`model::segment::Pass::take_ssm_states`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SsmState {
    /// The last K−1 rows of the SSM input `x` before the conv (zeros before the first token). (K−1, D)
    pub conv: Array2<f32>,
    /// The selective-scan state. (D, N)
    pub scan: Array2<f32>,
}

impl SsmState {
    pub fn zeros(d_inner: usize, d_conv: usize, d_state: usize) -> SsmState {
        SsmState { conv: Array2::zeros((d_conv - 1, d_inner)), scan: Array2::zeros((d_inner, d_state)) }
    }
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

    /// Make room in every K/V cache for `tokens` more tokens (e.g. the prompt and the most
    /// tokens a generation may add), so that decoding them never reallocates the cache.
    pub fn reserve(&mut self, tokens: usize) {
        for kv in self.kv.iter_mut().flatten() {
            kv.reserve(tokens);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_keys_read_back_as_rows_through_growth_and_eviction() {
        // nkv = 2, dqk = 3, dv = 1; key of position p is [p, p + 0.1, …]; window 2, 1 meta token.
        let mut kv = KvCache::new(2, 3, 1, AttentionSpan::SlidingWindow(2));
        let key = |p: usize| (0..6).map(|i| p as f32 + i as f32 * 0.1).collect::<Vec<f32>>();
        let mut want: Vec<(usize, Vec<f32>)> = Vec::new();
        for chunk in [vec![0, 1, 2], vec![3], vec![4, 5, 6, 7, 8], vec![9]] {
            let keys = Array2::from_shape_vec((chunk.len(), 6), chunk.iter().flat_map(|&p| key(p)).collect()).unwrap();
            let values = Array2::from_shape_fn((chunk.len(), 2), |(i, g)| (chunk[i] * 10 + g) as f32);
            kv.append(keys.view(), values.view(), &chunk);
            want.extend(chunk.iter().map(|&p| (p, key(p))));
            let next = chunk.last().unwrap() + 1;
            kv.evict(next, 1);
            want.retain(|(p, _)| *p < 1 || *p + 2 >= next);
            // Same set of rows, each row's key and value where its position is.
            let mut got: Vec<usize> = kv.positions().to_vec();
            got.sort();
            assert_eq!(got, want.iter().map(|(p, _)| *p).collect::<Vec<_>>());
            for (row, &p) in kv.positions().iter().enumerate() {
                let k: Vec<f32> = kv.keys().index_axis(ndarray::Axis(0), row).iter().copied().collect();
                assert_eq!(k, key(p), "key of position {p}");
                assert_eq!(kv.values()[[row, 1, 0]], (p * 10 + 1) as f32);
            }
            assert_eq!(kv.scalars(), kv.len() * 2 * (3 + 1));
        }
        assert!(kv.capacity >= kv.len());
    }
}
