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

use crate::state::cache_plan::CacheSize;
use crate::config::{AttentionSpan, HymbaConfig, LayerPlan};
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis, ShapeBuilder};

/// Keys a block of [`KeyBlocks`] holds, and that attention scores at a time (`model::attention`).
pub const KEY_BLOCK: usize = 64;

/// Keys stored the way attention reads them: in blocks of [`KEY_BLOCK`] consecutive rows, each
/// block (nkv, dqk, KEY_BLOCK). For one K/V head and one dimension d, the d-th components of a
/// block's keys are contiguous, so scoring one query against a block is `Σ_d q[d]·Kᵀ[d, block]`:
/// vector operations over keys, with no sum across a vector (see `attention::attend`).
///
/// Why blocks rather than one transposed array (nkv, dqk, capacity): appending one key writes
/// its nkv·dqk values. Transposed, they lie a whole row of slots apart (5.2 KB for the 1.5B),
/// each on a page of its own: 320 pages, whose address translations a decode step finds cold
/// (it streams its weights between two layers). In blocks they lie 256 bytes apart, on 20 pages.
/// In a window cache of the 1.5B's shape with the CPU's caches flushed (`cargo bench --bench
/// decode_kernels`), an append took 28–32 µs transposed and 7 µs in blocks, the eviction after it
/// 8–14 µs and 6 µs. Attention reads a block of a head as 16 KB in one piece.
#[derive(Debug, Clone)]
pub struct KeyBlocks {
    num_kv_heads: usize,
    head_dim: usize,
    len: usize,
    /// (blocks, nkv, dqk, KEY_BLOCK); at least len.div_ceil(KEY_BLOCK) blocks, slots ≥ len unused
    data: Vec<f32>,
}

impl KeyBlocks {
    pub fn new(nkv: usize, dqk: usize) -> KeyBlocks {
        KeyBlocks { num_kv_heads: nkv, head_dim: dqk, len: 0, data: Vec::new() }
    }

    /// The keys of `rows` (S, nkv, dqk) in blocks.
    pub fn from_rows(rows: ArrayView3<f32>) -> KeyBlocks {
        let (s_len, nkv, dqk) = rows.dim();
        let mut keys = KeyBlocks::new(nkv, dqk);
        keys.reserve(s_len);
        for row in rows.outer_iter() {
            keys.push(row.iter().copied());
        }
        keys
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (S, nkv, dqk)
    pub fn dim(&self) -> (usize, usize, usize) {
        (self.len, self.num_kv_heads, self.head_dim)
    }

    /// Scalars in one block: nkv · dqk · KEY_BLOCK.
    fn block_size(&self) -> usize {
        self.num_kv_heads * self.head_dim * KEY_BLOCK
    }

    /// Where component `gd` (= g·dqk + d) of key `row` lies in `data`.
    fn index(&self, row: usize, gd: usize) -> usize {
        row / KEY_BLOCK * self.block_size() + gd * KEY_BLOCK + row % KEY_BLOCK
    }

    /// Make room for `rows` more keys, so that pushing them does not reallocate.
    pub fn reserve(&mut self, rows: usize) {
        let blocks = (self.len + rows).div_ceil(KEY_BLOCK);
        self.data.reserve_exact((blocks * self.block_size()).saturating_sub(self.data.len()));
    }

    /// Append one key, its nkv·dqk components in (g, d) order.
    pub fn push(&mut self, key: impl ExactSizeIterator<Item = f32>) {
        debug_assert_eq!(key.len(), self.num_kv_heads * self.head_dim);
        if self.index(self.len, 0) >= self.data.len() {
            self.data.resize(self.data.len() + self.block_size(), 0.0); // a new block
        }
        for (gd, x) in key.enumerate() {
            let i = self.index(self.len, gd);
            self.data[i] = x;
        }
        self.len += 1;
    }

    /// Move the last key into slot `row` (dropping the key that was there) and shorten by one.
    /// The blocks stay allocated: a window cache hovers about one length.
    pub fn swap_remove(&mut self, row: usize) {
        let last = self.len - 1;
        if row != last {
            for gd in 0..self.num_kv_heads * self.head_dim {
                let (to, from) = (self.index(row, gd), self.index(last, gd));
                self.data[to] = self.data[from];
            }
        }
        self.len = last;
    }

    /// K/V head `g`'s keys as attention reads them.
    pub fn head(&self, g: usize) -> HeadKeys<'_> {
        let (nkv, dqk) = (self.num_kv_heads, self.head_dim);
        let blocks = self.len.div_ceil(KEY_BLOCK);
        debug_assert!(g < nkv);
        let blocks = match blocks {
            0 => ArrayView3::from_shape((0, dqk, KEY_BLOCK), &[]).expect("empty"),
            _ => {
                let shape = (blocks, dqk, KEY_BLOCK).strides((self.block_size(), KEY_BLOCK, 1));
                ArrayView3::from_shape(shape, &self.data[g * dqk * KEY_BLOCK..]).expect("consistent")
            }
        };
        HeadKeys { blocks, len: self.len }
    }

    /// The keys as rows (S, nkv, dqk): a copy, for traces, files and tests.
    pub fn to_rows(&self) -> Array3<f32> {
        Array3::from_shape_fn((self.len, self.num_kv_heads, self.head_dim), |(j, g, d)| {
            self.data[self.index(j, g * self.head_dim + d)]
        })
    }
}

/// One K/V head's S keys, as [`KeyBlocks::head`] shows them: (blocks, dqk, KEY_BLOCK), each
/// block's rows contiguous; slots ≥ S of the last block unused.
#[derive(Debug, Clone, Copy)]
pub struct HeadKeys<'a> {
    blocks: ArrayView3<'a, f32>,
    len: usize,
}

impl<'a> HeadKeys<'a> {
    /// S, the number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// dqk, each key's width.
    pub fn dim(&self) -> usize {
        self.blocks.dim().1
    }

    /// Block b: keys b·KEY_BLOCK.. (at most KEY_BLOCK of them), transposed. (dqk, ≤ KEY_BLOCK)
    pub fn block(&self, b: usize) -> ArrayView2<'a, f32> {
        let keys = self.len.min((b + 1) * KEY_BLOCK) - b * KEY_BLOCK;
        self.blocks.index_axis_move(Axis(0), b).slice_move(s![.., ..keys])
    }

    /// Block b as one slice, (dqk, KEY_BLOCK) row-major: component d of the block's key i at
    /// d·KEY_BLOCK + i, columns past the block's keys unused. What a kernel indexes directly
    /// (a view per row costs more than the row's arithmetic).
    pub fn block_slice(&self, b: usize) -> &'a [f32] {
        self.blocks.index_axis_move(Axis(0), b).to_slice().expect("a block is contiguous") // (dqk·KEY_BLOCK)
    }
}

/// Keys and values of one K/V-producing layer. Rows are unordered: each carries its position,
/// and eviction moves the last row into the freed slot (no shifting, no reallocation).
/// Keys are stored in blocks, as attention reads them ([`KeyBlocks`]).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// nkv and dqk are the keys' ([`KeyBlocks::dim`]); the values share nkv
    keys: KeyBlocks,
    head_dim_v: usize,
    /// (S, nkv, dv), row-major
    values: Vec<f32>,
    positions: Vec<usize>,
    retention: AttentionSpan,
}

impl KvCache {
    pub fn new(nkv: usize, dqk: usize, dv: usize, retention: AttentionSpan) -> KvCache {
        KvCache {
            keys: KeyBlocks::new(nkv, dqk),
            head_dim_v: dv,
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

    /// The cached keys, in blocks as attention reads them.
    pub fn keys(&self) -> &KeyBlocks {
        &self.keys
    }

    /// The cached values (S, nkv, dv).
    pub fn values(&self) -> ArrayView3<'_, f32> {
        ArrayView3::from_shape((self.len(), self.keys.num_kv_heads, self.head_dim_v), &self.values).expect("consistent")
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
        self.keys.reserve(rows);
        // Exact: on a full cache (a copy) a plain reserve would double the values.
        self.values.reserve_exact(rows * self.keys.num_kv_heads * self.head_dim_v);
        self.positions.reserve_exact(rows);
    }

    /// Append rows: keys (T, nkv·dqk), values (T, nkv·dv) at `positions`.
    pub fn append(&mut self, keys: ArrayView2<f32>, values: ArrayView2<f32>, positions: &[usize]) {
        debug_assert_eq!(keys.dim(), (positions.len(), self.keys.num_kv_heads * self.keys.head_dim));
        debug_assert_eq!(values.dim(), (positions.len(), self.keys.num_kv_heads * self.head_dim_v));
        self.keys.reserve(positions.len());
        for key in keys.rows() {
            self.keys.push(key.iter().copied());
        }
        self.values.extend(values.iter());
        self.positions.extend_from_slice(positions);
    }

    /// Drop the rows no future query can see, given that the next token is at `next_position`:
    /// for a window W, future queries see positions ≥ next − W, and always the meta tokens.
    pub fn evict(&mut self, next_position: usize, num_meta: usize) {
        let AttentionSpan::SlidingWindow(w) = self.retention else { return };
        let oldest_needed = next_position.saturating_sub(w);
        let vw = self.keys.num_kv_heads * self.head_dim_v;
        let mut row = 0;
        while row < self.positions.len() {
            let p = self.positions[row];
            if p >= num_meta && p < oldest_needed {
                let last = self.positions.len() - 1;
                self.positions.swap_remove(row);
                self.keys.swap_remove(row);
                swap_remove_row(&mut self.values, row, last, vw);
            } else {
                row += 1;
            }
        }
    }

    /// The number of scalars held (keys and values).
    pub fn scalars(&self) -> usize {
        self.len() * self.keys.num_kv_heads * (self.keys.head_dim + self.head_dim_v)
    }
}

/// Equal when they hold the same rows in the same order (unused key slots do not count).
impl PartialEq for KvCache {
    fn eq(&self, other: &KvCache) -> bool {
        (self.retention, &self.positions, &self.values) == (other.retention, &other.positions, &other.values)
            && self.keys.to_rows() == other.keys.to_rows()
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

    /// The scalars this cache holds now, split as [`crate::state::cache_plan::CachePlan`] predicts them.
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
    fn keys_read_back_as_rows_through_growth_and_eviction() {
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
                let k: Vec<f32> = kv.keys().to_rows().index_axis(Axis(0), row).iter().copied().collect();
                assert_eq!(k, key(p), "key of position {p}");
                assert_eq!(kv.values()[[row, 1, 0]], (p * 10 + 1) as f32);
            }
            assert_eq!(kv.scalars(), kv.len() * 2 * (3 + 1));
        }
    }

    #[test]
    fn key_blocks_hold_each_key_where_attention_reads_it() {
        // nkv = 2, dqk = 3; key j = [j, j + 0.1, …, j + 0.5]; 150 keys span 3 blocks.
        let key = |j: usize| (0..6).map(move |i| j as f32 + i as f32 * 0.1);
        let mut keys = KeyBlocks::new(2, 3);
        keys.reserve(150);
        let room = keys.data.capacity();
        let mut want: Vec<usize> = (0..150).collect();
        for j in 0..150 {
            keys.push(key(j));
        }
        assert_eq!(keys.data.capacity(), room, "reserved room: no reallocation");
        for row in [3, 70, 0, 146] {
            keys.swap_remove(row); // as Vec::swap_remove
            want.swap_remove(row);
        }
        assert_eq!(keys.len(), want.len());
        let rows = keys.to_rows(); // (S, nkv, dqk)
        for (row, &j) in want.iter().enumerate() {
            assert_eq!(rows.index_axis(Axis(0), row).iter().copied().collect::<Vec<_>>(), key(j).collect::<Vec<_>>());
        }
        // Head g's block b: (dqk, keys of the block), the last block short.
        for g in 0..2 {
            let head = keys.head(g);
            assert_eq!((head.len(), head.dim()), (146, 3));
            for (b, width) in [(0, 64), (1, 64), (2, 18)] {
                let block = head.block(b);
                assert_eq!(block.dim(), (3, width), "head {g}, block {b}");
                for ((d, i), &x) in block.indexed_iter() {
                    assert_eq!(x, rows[[b * KEY_BLOCK + i, g, d]], "head {g}, block {b}, d {d}, key {i}");
                }
            }
        }
        assert_eq!(KeyBlocks::from_rows(rows.view()).to_rows(), rows);
        assert!(KeyBlocks::new(2, 3).head(1).is_empty());
    }
}
