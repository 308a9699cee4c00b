//! The attention heads of a Hymba layer: GQA with value heads wider than key heads, a causal
//! mask that is either global or a sliding window, and meta tokens that every query can see.
//!
//! There is no output projection: the heads are concatenated to width nh·dv = D and fused with
//! the SSM heads (see `fusion`).

use crate::state::cache::{HeadKeys, KeyBlocks, KEY_BLOCK};
use crate::config::AttentionSpan;
use crate::kernels::simd::{best_simd, exp};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView3, ArrayViewMut1, ArrayViewMut2, Axis, CowArray, Ix2};
use rayon::prelude::*;
use std::ops::Range;

/// Whether a query at absolute position `i` may attend to a key at absolute position `j`:
/// causal, and for a sliding-window layer only the `W` positions before `i` (plus `i` itself),
/// except that the `num_meta` meta tokens (positions `0..M`) are always visible.
pub fn is_visible(i: usize, j: usize, span: AttentionSpan, num_meta: usize) -> bool {
    j <= i
        && match span {
            AttentionSpan::Global => true,
            AttentionSpan::SlidingWindow(w) => i - j <= w || j < num_meta,
        }
}

/// Which keys each query of a call may see (docs/MODEL.md §3.4): the queries' and the keys'
/// absolute positions, the layer's span (global or a window) and the number M of meta tokens.
#[derive(Debug, Clone, Copy)]
pub struct Mask<'a> {
    /// (T): the position of each query row
    pub q_positions: &'a [usize],
    /// (S): the position of each key row, in cache order
    pub k_positions: &'a [usize],
    pub span: AttentionSpan,
    pub num_meta: usize,
}

impl<'a> Mask<'a> {
    pub fn new(q_positions: &'a [usize], k_positions: &'a [usize], span: AttentionSpan, num_meta: usize) -> Mask<'a> {
        Mask { q_positions, k_positions, span, num_meta }
    }
}

/// Query rows per block in [`attention_heads`].
const QUERY_BLOCK: usize = 64;
/// Up to this many query rows (decoding), [`attention_heads`] serves each (row, head) on its own.
const FEW_QUERIES: usize = 4;

/// Multi-head attention over keys at `k_positions` for queries at `q_positions`.
///
/// q: (T, nh, dqk), k: (S, nkv, dqk) in blocks as a cache holds them, v: (S, nkv, dv) → out (T, nh·dv).
/// Query head h reads K/V head h / (nh/nkv) (grouped-query attention).
///
/// Queries are processed in blocks of consecutive rows; each block gathers only the keys that
/// some query in it can see (for a window layer: the meta tokens and about W + block positions),
/// so a sliding-window layer costs O(T·(M + W)) rather than O(T·S). Blocks and heads run in
/// parallel. A few queries (decoding) go to `attention_each_query` instead. Both are tested
/// against [`attention_heads_reference`].
pub fn attention_heads(q: ArrayView3<f32>, k: &KeyBlocks, v: ArrayView3<f32>, mask: Mask, mut out: ArrayViewMut2<f32>) {
    let Mask { q_positions, k_positions, span, num_meta } = mask;
    let (t, nh, dqk) = q.dim();
    let (s_len, nkv, dv) = v.dim();
    debug_assert_eq!(k.dim(), (s_len, nkv, dqk));
    debug_assert_eq!((q_positions.len(), k_positions.len()), (t, s_len));
    debug_assert_eq!(out.dim(), (t, nh * dv)); // (T, nh·dv) = (T, D)
    if t <= FEW_QUERIES {
        attention_each_query(q, k, v, mask, out);
        return;
    }
    let group = nh / nkv;
    let scale = 1.0 / (dqk as f32).sqrt();

    // For each block of queries: the indices of the keys any of them may see. Queries of a chunk
    // are at consecutive positions, so that is what the first and the last query together see.
    debug_assert!(q_positions.windows(2).all(|p| p[1] == p[0] + 1), "consecutive query positions");
    // With them, their positions (what the mask reads, once for all heads).
    let blocks: Vec<(usize, Vec<usize>, Vec<usize>)> = (0..t)
        .step_by(QUERY_BLOCK)
        .map(|first| {
            let (lo, hi) = (q_positions[first], q_positions[(first + QUERY_BLOCK).min(t) - 1]);
            let seen = |p: usize| p <= hi && (p >= lo || is_visible(lo, p, span, num_meta));
            let keys: Vec<usize> = (0..s_len).filter(|&j| seen(k_positions[j])).collect();
            let positions = keys.iter().map(|&j| k_positions[j]).collect();
            (first, keys, positions)
        })
        .collect();

    // One task per (query block, K/V head) gathers that head's visible keys (a copy, transposed)
    // and values (a view when they are consecutive in the cache: always in a global layer,
    // within the first W positions in a window layer) once, then one task per query head of its
    // group scores and sums them, writing its block of out in place: 25 tasks a block for the
    // 1.5B, where 5 of unequal size (later blocks see more keys) left threads idle on a many-core
    // machine.
    let out_blocks = out.axis_chunks_iter_mut(Axis(0), QUERY_BLOCK).into_par_iter(); // (B, nh·dv) each
    out_blocks.zip(blocks.par_iter()).for_each(|(mut out, (first, keys, key_positions))| {
        let rows = *first..*first + out.nrows();
        out.axis_chunks_iter_mut(Axis(1), group * dv).into_par_iter().enumerate().for_each(|(g, mut out)| {
            let (kg_t, vg) = (gather_keys(k.head(g), keys), gather_head(v, g, keys)); // (dqk, S_b), (S_b, dv)
            out.axis_chunks_iter_mut(Axis(1), dv).into_par_iter().enumerate().for_each(|(i, mut out)| {
                let qh = q.slice(s![rows.clone(), g * group + i, ..]); // (B, dqk)
                let mut probs = qh.dot(&kg_t) * scale; // (B, S_b)
                for (row, r) in probs.axis_iter_mut(Axis(0)).zip(rows.clone()) {
                    masked_softmax(row, |col| is_visible(q_positions[r], key_positions[col], span, num_meta));
                }
                general_mat_mul(1.0, &probs, &vg, 0.0, &mut out); // (B, dv)
            });
        });
    });
}

/// [`attention_heads`] for a few queries, as in decoding: one task per (query row, K/V head),
/// whose query heads (the `nh / nkv` of GQA that read this K/V head) score the query against every
/// visible key (see [`attend`]) and sum the values weighted by the softmax, together: each block
/// of keys and values is read once for all of them, where a task per query head read a K/V head's
/// cache once per query head. Over a long cache, the keys are split across tasks
/// ([`attend_split`]). With one query row, a matrix product would spend its time re-packing K and V.
/// Same shapes as [`attention_heads`]; `out` is (T, nh·dv).
fn attention_each_query(q: ArrayView3<f32>, k: &KeyBlocks, v: ArrayView3<f32>, mask: Mask, mut out: ArrayViewMut2<f32>) {
    let Mask { q_positions, k_positions, span, num_meta } = mask;
    let (t, nh, dqk) = q.dim();
    let (s_len, nkv, dv) = v.dim();
    debug_assert_eq!((k.dim(), out.dim()), ((s_len, nkv, dqk), (t, nh * dv)));
    let q = q.as_standard_layout();
    let q = q.as_slice().expect("standard layout"); // (T·nh·dqk)
    let v = v.as_standard_layout(); // the cache's values as they are; other layouts (tests) copied
    let v_rows = v.as_slice().expect("standard layout"); // (S·nkv·dv)
    let out = out.as_slice_mut().expect("consecutive rows of a standard-layout array"); // (T, nh, dv)
    let heads = heads_per_task(nh / nkv, dv); // query heads of one K/V head, consecutive in q and out
    out.par_chunks_mut(heads * dv).enumerate().for_each(|(task, out)| {
        let (first, row) = (task * heads % nh, task * heads / nh); // the task's first query head
        let g = first / (nh / nkv); // GQA: the K/V head its query heads read
        let kv = KvHead { keys: k.head(g), values: HeadValues::of(v_rows, g, nkv, dv) }; // (dqk, S) in blocks, (S, dv)
        let visible = |j: usize| is_visible(q_positions[row], k_positions[j], span, num_meta);
        let q = &q[task * heads * dqk..(task + 1) * heads * dqk]; // (heads, dqk)
        match key_splits(s_len, dv) {
            1 => attend(q, kv, visible, out), // (heads, dv)
            splits => attend_split(q, kv, visible, splits, out), // (heads, dv)
        }
    });
}

/// How many of a K/V head's `group` query heads one task serves: all of them, unless they are
/// more than [`MAX_HEADS`] or their outputs do not fit [`MAX_HEADS_DV`]; then the largest divisor
/// of `group` that fits (so that a task's heads share one K/V head).
fn heads_per_task(group: usize, dv: usize) -> usize {
    (1..=group).rev().find(|h| group.is_multiple_of(*h) && *h <= MAX_HEADS && h * dv <= MAX_HEADS_DV).unwrap_or(1)
}

/// Keys per part, about, when [`attend_split`] splits a long cache (a multiple of
/// [`KEY_BLOCK`]). The 1.5B's 5 K/V heads then make 10 tasks a layer at context 128, 45 at 1,024
/// (the window) and 80 from about 2,000, where parts of 256 keys made 5, 20 and 70: too few for
/// 16 threads. A part costs no more than its keys inside a bigger part, and 2 threads are as fast.
const KEYS_PER_SPLIT: usize = 128;
/// The most parts [`attend_split`] splits the keys into.
const MAX_SPLITS: usize = 16;
/// The most values (heads · dv) of the heads [`attend_split`] serves at once (their partial sums
/// live on the stack), and the most heads.
const MAX_HEADS_DV: usize = 1024;
const MAX_HEADS: usize = 16;

/// Into how many parts to split S keys: one below 2·[`KEYS_PER_SPLIT`] keys. It depends on S
/// only, not on the thread count, so a result never depends on the machine.
fn key_splits(s_len: usize, dv: usize) -> usize {
    if dv > MAX_HEADS_DV { 1 } else { (s_len / KEYS_PER_SPLIT).clamp(1, MAX_SPLITS) }
}

/// The online softmax of each query head over one part of the keys: its running maximum and its
/// sum of exp(sⱼ − max) (`stats`), and Σ exp(sⱼ − max)·vⱼ (`out`, not yet divided by the sum).
#[derive(Clone, Copy)]
struct Partial {
    stats: Stats,
    out: [f32; MAX_HEADS_DV],
}

/// Part p of the keys 0..S cut into `parts` consecutive parts of whole [`KEY_BLOCK`]s (the last
/// may be short), as even as whole blocks go: blocks p·B/parts..(p + 1)·B/parts of the B blocks.
/// `parts` is at most B.
fn key_part(s_len: usize, parts: usize, p: usize) -> Range<usize> {
    let blocks = s_len.div_ceil(KEY_BLOCK);
    debug_assert!(parts <= blocks && p < parts);
    let key = |p: usize| (p * blocks / parts * KEY_BLOCK).min(s_len);
    key(p)..key(p + 1)
}

/// [`attend`] with the keys split into `splits` consecutive parts ([`key_part`]; fewer if there
/// are fewer blocks of keys) scored on different tasks
/// (flash-decoding): a long cache keeps every thread busy even when there are fewer query heads
/// than threads. Each part is [`attend_part`]; each head's parts are merged in order, each
/// rescaled to the common maximum: out = Σ_p e^(m_p − m)·o_p / Σ_p e^(m_p − m)·sum_p. Tested
/// against [`attend_reference`]. q: (heads, dqk), out: (heads, dv)
fn attend_split(q: &[f32], kv: KvHead, visible: impl Fn(usize) -> bool + Sync, splits: usize, out: &mut [f32]) {
    let (s_len, heads) = (kv.keys.len(), q.len() / kv.keys.dim());
    let dv = out.len() / heads;
    debug_assert!(heads <= MAX_HEADS && out.len() <= MAX_HEADS_DV);
    let parts = splits.min(s_len.div_ceil(KEY_BLOCK)).max(1); // no part is empty
    // On the stack: a decode step allocates nothing (tests/decode_allocations.rs).
    let mut partials = [Partial { stats: [(f32::NEG_INFINITY, 0.0); MAX_HEADS], out: [0.0; MAX_HEADS_DV] }; MAX_SPLITS];
    let partials = &mut partials[..parts];
    partials.par_iter_mut().enumerate().for_each(|(p, partial)| {
        let part = key_part(s_len, parts, p);
        partial.stats = attend_part(q, kv, &visible, part, &mut partial.out[..out.len()]);
    });
    for (h, out) in out.chunks_mut(dv).enumerate() {
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        out.fill(0.0);
        for partial in partials.iter().filter(|p| p.stats[h].0 > f32::NEG_INFINITY) {
            let ((part_max, part_sum), part_out) = (partial.stats[h], &partial.out[h * dv..(h + 1) * dv]);
            let new_max = max.max(part_max);
            let (old_scale, scale) = (exp(max - new_max), exp(part_max - new_max)); // 0 for the first
            sum = sum * old_scale + part_sum * scale;
            out.iter_mut().zip(part_out).for_each(|(o, p)| *o = *o * old_scale + p * scale);
            max = new_max;
        }
        out.iter_mut().for_each(|o| *o /= sum); // sum ≥ 1: a query always sees itself
    }
}

/// One K/V head's values, (S, dv), inside all the heads' values (S, nkv, dv) row-major: value j
/// is `data[j·stride..][..dv]`. A slice and plain index arithmetic: the decode kernel reads a
/// value row per key and head, and building an array view for each cost more than using it.
#[derive(Debug, Clone, Copy)]
struct HeadValues<'a> {
    data: &'a [f32],
    stride: usize,
    dv: usize,
}

impl<'a> HeadValues<'a> {
    /// Head g of the values `v` (S, nkv, dv), row-major.
    fn of(v: &'a [f32], g: usize, nkv: usize, dv: usize) -> HeadValues<'a> {
        debug_assert!(g < nkv && v.len().is_multiple_of(nkv * dv));
        HeadValues { data: &v[g * dv..], stride: nkv * dv, dv }
    }

    /// The value of key j. (dv)
    fn row(&self, j: usize) -> &'a [f32] {
        &self.data[j * self.stride..j * self.stride + self.dv]
    }
}

/// One K/V head as the decode kernels read it: its keys, (dqk, S) in blocks, and its values, (S, dv).
#[derive(Debug, Clone, Copy)]
struct KvHead<'a> {
    keys: HeadKeys<'a>,
    values: HeadValues<'a>,
}

/// Per query head, what the online softmax keeps of a part of the keys: (running maximum m,
/// Σ exp(sⱼ − m)); only the first `heads` entries are used.
type Stats = [(f32, f32); MAX_HEADS];

best_simd! {
    /// Query heads that share a K/V head against it: for each head h, `out[h]` = Σⱼ
    /// `softmax(q[h]·kⱼ / √dqk)ⱼ · vⱼ` over the visible keys j. q: (heads, dqk), out: (heads, dv);
    /// rows contiguous.
    fn attend(q: &[f32], kv: KvHead, visible: impl Fn(usize) -> bool, out: &mut [f32]) = attend_reference
}

best_simd! {
    /// [`attend_partial`] on the best vector unit of this CPU.
    fn attend_part(q: &[f32], kv: KvHead, visible: impl Fn(usize) -> bool, part: Range<usize>, out: &mut [f32]) -> Stats = attend_partial
}

/// `out` = Σⱼ softmax(q·kⱼ / √dqk)ⱼ · vⱼ over all visible keys, per head: [`attend_partial`] over
/// every key, divided by the sum. At most [`MAX_HEADS`] heads ([`heads_per_task`]).
#[inline(always)]
fn attend_reference(q: &[f32], kv: KvHead, visible: impl Fn(usize) -> bool, out: &mut [f32]) {
    let heads = q.len() / kv.keys.dim();
    debug_assert!(heads <= MAX_HEADS);
    let stats = attend_partial(q, kv, visible, 0..kv.keys.len(), out);
    for (out, &(_, sum)) in out.chunks_mut(out.len() / heads).zip(&stats) {
        out.iter_mut().for_each(|o| *o /= sum); // sum ≥ 1: a query always sees itself
    }
}

/// Over the keys in `part` only (it starts at a block of [`KEY_BLOCK`] keys), for each query head
/// h of `q` (heads, dqk) that share the K/V head `kv`: scores a block of keys at a time,
/// as the cache stores them ([`block_scores`]), then the online softmax (as in FlashAttention):
/// whenever a block raises a head's running maximum m, what it summed so far is rescaled by
/// exp(m_old − m_new). Leaves `out[h]` = Σ exp(sⱼ − m)·vⱼ and returns (m, Σ exp(sⱼ − m)) per
/// head, without ever holding all the scores; (−∞, 0) and `out[h]` = 0 when no key in `part` is
/// visible. Within a block, first every head scores the block's keys (heads one after another
/// over the same 16 KB), then the heads' values are summed ([`add_values`]), so each block of
/// keys and each value row is fetched once for all the heads. The exponentials are
/// [`crate::kernels::simd::exp`]'s (a block's at once, vectorised); a block's maximum and sum go
/// [`LANES`] keys at a time ([`block_max`], [`block_sum`]), not one long chain.
#[inline(always)]
fn attend_partial(q: &[f32], kv: KvHead, visible: impl Fn(usize) -> bool, part: Range<usize>, out: &mut [f32]) -> Stats {
    let KvHead { keys: head_keys, values } = kv;
    debug_assert!(part.start.is_multiple_of(KEY_BLOCK) && part.end <= head_keys.len());
    let dqk = head_keys.dim();
    let (heads, scale) = (q.len() / dqk, 1.0 / (dqk as f32).sqrt());
    debug_assert!(heads <= MAX_HEADS);
    let dv = out.len() / heads;
    let mut stats: Stats = [(f32::NEG_INFINITY, 0.0); MAX_HEADS];
    out.fill(0.0);
    for first in part.clone().step_by(KEY_BLOCK) {
        let n = (first + KEY_BLOCK).min(part.end) - first; // the block's keys in `part`
        // The block's keys any head may see (the mask is the same for all of them): a flag per
        // slot, and the list of them in order.
        let (mut is_seen, mut seen, mut seen_count) = ([false; KEY_BLOCK], [0usize; KEY_BLOCK], 0);
        for i in (0..n).filter(|&i| visible(first + i)) {
            (is_seen[i], seen[seen_count], seen_count) = (true, i, seen_count + 1);
        }
        let seen = &seen[..seen_count];
        if seen.is_empty() {
            continue;
        }
        // Whole rows of KEY_BLOCK columns: the slots past the block's n keys are scored too (a
        // loop of known length runs in registers) and then masked like any key not seen.
        let k_block = head_keys.block_slice(first / KEY_BLOCK); // (dqk, KEY_BLOCK)
        // 1. Each head's weights for the block's keys (the block, 16 KB for the 1.5B, stays in the
        //    CPU's nearest cache while the heads take turns over it).
        let mut probs = [[0f32; KEY_BLOCK]; MAX_HEADS]; // (heads, KEY_BLOCK), 0 where not seen
        let (mut adding, mut adding_count) = ([0usize; MAX_HEADS], 0); // the heads that add this block's values
        for (h, (q, (max, sum))) in q.chunks(dqk).zip(stats[..heads].iter_mut()).enumerate() {
            let scores = block_scores(q, k_block); // (KEY_BLOCK)
            let mut masked = [f32::NEG_INFINITY; KEY_BLOCK]; // (KEY_BLOCK), −∞ where not seen
            for ((m, &score), &is_seen) in masked.iter_mut().zip(&scores).zip(&is_seen) {
                *m = if is_seen { score * scale } else { f32::NEG_INFINITY };
            }
            let block_max = block_max(&masked);
            if block_max == f32::NEG_INFINITY {
                continue; // every score overflowed to −∞: nothing to add
            }
            if block_max > *max {
                let rescale = exp(*max - block_max); // 0 on the first visible block
                *sum *= rescale;
                out[h * dv..(h + 1) * dv].iter_mut().for_each(|o| *o *= rescale);
                *max = block_max;
            }
            for (p, &score) in probs[h].iter_mut().zip(&masked) {
                *p = exp(score - *max); // the whole block at once
            }
            *sum += block_sum(&probs[h]);
            (adding[adding_count], adding_count) = (h, adding_count + 1);
        }
        // 2. out[h] += p_hj · v_j over the seen keys in order, for the heads that add.
        add_values(&probs, &adding[..adding_count], seen, |i| values.row(first + i), out);
    }
    stats
}

/// The scores of one query head against a block of keys, before scaling: `Σ_d q[d]·K[d, j]` for
/// the [`KEY_BLOCK`] slots j of `k_block` (dqk, KEY_BLOCK), summed in the order of d. The
/// block's sums stay in registers for the whole loop (8 AVX2 registers, 4 AVX-512); adding four
/// dimensions a pass into an array in memory made the decode kernel 3–5 % slower (the Zen 2's
/// kernel bench, warm). q: (dqk) → (KEY_BLOCK)
#[inline(always)]
fn block_scores(q: &[f32], k_block: &[f32]) -> [f32; KEY_BLOCK] {
    debug_assert_eq!(k_block.len(), q.len() * KEY_BLOCK);
    let mut scores = [0f32; KEY_BLOCK];
    for (&q_d, k_row) in q.iter().zip(k_block.chunks_exact(KEY_BLOCK)) {
        for (s, &k) in scores.iter_mut().zip(k_row) {
            *s += q_d * k;
        }
    }
    scores
}

/// Value components a tile of [`add_values`] sums per head: two AVX2 registers, one AVX-512.
const VALUE_TILE: usize = 16;
/// The most heads in one tile: 5 heads' sums are 10 of AVX2's 16 registers, which leaves room
/// for the tile's value row and a weight (the 1.5B has 5 query heads a K/V head).
const TILE_HEADS: usize = 5;
/// The keys a tile sums before its sums go back to `out`. The 1.5B decoding at context 1,024 on
/// the Zen 2 (q4_0, ms a step, five rounds): 4 keys 3 % slower than before the tiles (four keys a
/// pass over each head's whole `out[h]`), 64 (a block) 6 % slower, 16 keys 1.6 % faster. Most
/// layers read their values from memory or the L3 cache, and a tile reads one 64-byte line of
/// each of its keys' value rows: 16 keys reads 16 rows whole in 8 tiles in a row, which the CPU's
/// prefetchers follow; 64 keys' tiles cross 64 rows 8 times.
const TILE_KEYS: usize = 16;

/// `out[h] += Σⱼ probs[h][j] · v_j`, over the `seen` keys j of a block in their order, for each
/// head h of `heads` (`value(j)`: key j's value row, (dv); out: (heads, dv)). Each out[h, c] is
/// summed in the same order as one pass per key would (the same bits), but a tile at a time:
/// [`VALUE_TILE`] components of up to [`TILE_HEADS`] heads over [`TILE_KEYS`] keys, whose sums
/// stay in registers while each value row's components are loaded once for all the tile's heads
/// ([`add_values_tile`]), where four keys a pass loaded and stored every head's whole `out[h]`.
/// With [`block_scores`], the decode kernel runs 8 % faster (1,152 keys, warm, one thread, on the
/// Zen 2; docs/bench/quantized-speed-2026-12-06-zen2/value-tiles/).
#[inline(always)]
fn add_values<'v>(probs: &[[f32; KEY_BLOCK]; MAX_HEADS], heads: &[usize], seen: &[usize], value: impl Fn(usize) -> &'v [f32], out: &mut [f32]) {
    let (Some(&j), false) = (seen.first(), heads.is_empty()) else { return };
    let dv = value(j).len();
    debug_assert!(out.len().is_multiple_of(dv) && heads.iter().all(|&h| h < out.len() / dv));
    let whole = dv / VALUE_TILE * VALUE_TILE; // the columns in whole tiles
    for keys in seen.chunks(TILE_KEYS) {
        for tile_heads in heads.chunks(TILE_HEADS) {
            for c in (0..whole).step_by(VALUE_TILE) {
                match *tile_heads {
                    [a] => add_values_tile::<1, VALUE_TILE>([a], probs, keys, &value, out, c),
                    [a, b] => add_values_tile::<2, VALUE_TILE>([a, b], probs, keys, &value, out, c),
                    [a, b, d] => add_values_tile::<3, VALUE_TILE>([a, b, d], probs, keys, &value, out, c),
                    [a, b, d, e] => add_values_tile::<4, VALUE_TILE>([a, b, d, e], probs, keys, &value, out, c),
                    [a, b, d, e, f] => add_values_tile::<5, VALUE_TILE>([a, b, d, e, f], probs, keys, &value, out, c),
                    _ => unreachable!("chunks of 1 to TILE_HEADS heads"),
                }
            }
            // The last dv mod VALUE_TILE columns (none in the 1.5B), a column and a head at a time.
            for c in whole..dv {
                for &h in tile_heads {
                    add_values_tile::<1, 1>([h], probs, keys, &value, out, c);
                }
            }
        }
    }
}

/// The sums of one tile of [`add_values`]: columns c..c + W of the heads `heads`, over the keys
/// `keys` in order, in registers.
#[inline(always)]
fn add_values_tile<'v, const H: usize, const W: usize>(
    heads: [usize; H],
    probs: &[[f32; KEY_BLOCK]; MAX_HEADS],
    keys: &[usize],
    value: &impl Fn(usize) -> &'v [f32],
    out: &mut [f32],
    c: usize,
) {
    let dv = value(keys[0]).len();
    // A plain loop, not `heads.map(..)`: for 5 heads that stayed a call out of the vector code,
    // once a tile.
    let mut weights = [&probs[0]; H]; // (H, KEY_BLOCK)
    for (weights, &h) in weights.iter_mut().zip(&heads) {
        *weights = &probs[h];
    }
    let mut sums = [[0f32; W]; H]; // (H, W)
    for (sums, &h) in sums.iter_mut().zip(&heads) {
        sums.copy_from_slice(&out[h * dv + c..][..W]);
    }
    for &j in keys {
        let v: &[f32; W] = value(j)[c..c + W].try_into().expect("W columns"); // (W)
        for (sums, weights) in sums.iter_mut().zip(&weights) {
            let p = weights[j];
            for (s, &v) in sums.iter_mut().zip(v) {
                *s += p * v;
            }
        }
    }
    for (sums, &h) in sums.iter().zip(&heads) {
        out[h * dv + c..][..W].copy_from_slice(sums);
    }
}

/// How many partial results [`block_max`] and [`block_sum`] keep: one AVX-512 register's worth.
const LANES: usize = 16;

/// The largest of a block's scores, LANES at a time (the maximum does not depend on the order).
#[inline(always)]
fn block_max(scores: &[f32; KEY_BLOCK]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in scores.chunks_exact(LANES) {
        for (m, &s) in lanes.iter_mut().zip(chunk) {
            *m = m.max(s);
        }
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of a block's probabilities: lane l sums the keys ≡ l (mod LANES) in order, then the
/// lanes are added in lane order: the same bits at every vector width.
#[inline(always)]
fn block_sum(probs: &[f32; KEY_BLOCK]) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in probs.chunks_exact(LANES) {
        for (l, &p) in lanes.iter_mut().zip(chunk) {
            *l += p;
        }
    }
    lanes.into_iter().fold(0.0, |sum, l| sum + l)
}

/// Keys `keys` (ascending) of one K/V head, transposed for the product q·Kᵀ: (dqk, S_b), copied
/// from the blocks a run of consecutive keys at a time.
fn gather_keys(head: HeadKeys, keys: &[usize]) -> Array2<f32> {
    let mut out = Array2::zeros((head.dim(), keys.len())); // (dqk, S_b)
    let mut col = 0;
    while col < keys.len() {
        let (first, block) = (keys[col], keys[col] / KEY_BLOCK);
        let run = keys[col..].iter().enumerate().take_while(|&(i, &j)| j == first + i && j / KEY_BLOCK == block).count();
        let at = first % KEY_BLOCK;
        out.slice_mut(s![.., col..col + run]).assign(&head.block(block).slice(s![.., at..at + run]));
        col += run;
    }
    out
}

/// Rows `keys` (ascending) of K/V head `g` of x (S, nkv, dim) → (S_b, dim); a view when they
/// are consecutive rows, a copy otherwise.
fn gather_head<'a>(x: ArrayView3<'a, f32>, g: usize, keys: &[usize]) -> CowArray<'a, f32, Ix2> {
    let head = x.index_axis_move(Axis(1), g); // (S, dim)
    match (keys.first(), keys.last()) {
        (Some(&a), Some(&b)) if b - a + 1 == keys.len() => head.slice_move(s![a..=b, ..]).into(),
        _ => head.select(Axis(0), keys).into(),
    }
}

/// The plain version of [`attention_heads`]: every query against every key, then the mask.
/// The truth the blocked version is tested against. Same shapes, but k as plain rows (S, nkv, dqk).
pub fn attention_heads_reference(q: ArrayView3<f32>, k: ArrayView3<f32>, v: ArrayView3<f32>, mask: Mask) -> Array2<f32> {
    let Mask { q_positions, k_positions, span, num_meta } = mask;
    let (t, nh, dqk) = q.dim();
    let dv = v.dim().2;
    let group = nh / k.dim().1;
    let mut out = Array2::zeros((t, nh * dv)); // (T, nh·dv)
    for h in 0..nh {
        let kh = k.index_axis(Axis(1), h / group); // (S, dqk)
        let mut probs = q.index_axis(Axis(1), h).dot(&kh.t()) / (dqk as f32).sqrt(); // (T, S)
        for (row, &i) in probs.axis_iter_mut(Axis(0)).zip(q_positions) {
            masked_softmax(row, |col| is_visible(i, k_positions[col], span, num_meta));
        }
        out.slice_mut(s![.., h * dv..(h + 1) * dv]).assign(&probs.dot(&v.index_axis(Axis(1), h / group)));
    }
    out
}

/// Softmax of `row` over the columns where `visible(col)`; the other columns become 0.
/// At least one column must be visible (a query always sees itself).
pub fn masked_softmax(mut row: ArrayViewMut1<f32>, visible: impl Fn(usize) -> bool) {
    // Hidden columns become −∞ first, so that `visible` is asked once a column: exp(−∞) = 0,
    // and −∞ never raises the maximum.
    for (j, x) in row.iter_mut().enumerate() {
        if !visible(j) {
            *x = f32::NEG_INFINITY;
        }
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The exponentials, then their sum in column order.
    row.map_inplace(|x| *x = (*x - max).exp());
    let sum = row.iter().fold(0.0f32, |sum, &x| sum + x);
    row.mapv_inplace(|x| x / sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn sliding_window_mask_keeps_meta_tokens_visible() {
        // M = 2 meta tokens, W = 3: query 9 sees meta 0, 1 and positions 6..=9.
        let span = AttentionSpan::SlidingWindow(3);
        let visible: Vec<usize> = (0..12).filter(|&j| is_visible(9, j, span, 2)).collect();
        assert_eq!(visible, vec![0, 1, 6, 7, 8, 9]);
        let global: Vec<usize> = (0..12).filter(|&j| is_visible(4, j, AttentionSpan::Global, 2)).collect();
        assert_eq!(global, vec![0, 1, 2, 3, 4]);
        // Without meta tokens, a window query sees exactly W + 1 keys.
        assert_eq!((0..12).filter(|&j| is_visible(9, j, span, 0)).count(), 4);
    }

    #[test]
    fn one_key_visible_copies_its_value() {
        // Query at position 0 sees only key 0: output = v[0] for every head.
        let q = Array3::from_elem((1, 2, 2), 1.0f32);
        let k = Array3::from_shape_vec((2, 1, 2), vec![1.0, 0.0, 5.0, 5.0]).unwrap();
        let v = Array3::from_shape_vec((2, 1, 3), vec![1.0, 2.0, 3.0, 9.0, 9.0, 9.0]).unwrap();
        let mut out = Array2::zeros((1, 6));
        attention_heads(q.view(), &KeyBlocks::from_rows(k.view()), v.view(), Mask::new(&[0], &[0, 1], AttentionSpan::Global, 0), out.view_mut());
        assert_eq!(out.row(0).to_vec(), vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn blocked_attention_equals_the_reference() {
        // 150 queries (3 blocks) over a cache of 10 older rows in shuffled order plus the chunk.
        let (t, nh, nkv, dqk, dv) = (150, 4, 2, 8, 6);
        let f = |shape: (usize, usize, usize), k: f32| {
            Array3::from_shape_fn(shape, |(i, j, l)| ((i * 7 + j * 3 + l) as f32 * k).sin())
        };
        let q = f((t, nh, dqk), 0.31);
        let (k, v) = (f((t + 10, nkv, dqk), 0.17), f((t + 10, nkv, dv), 0.23));
        let q_pos: Vec<usize> = (20..20 + t).collect();
        let mut k_pos: Vec<usize> = vec![3, 0, 19, 1, 18, 17, 2, 16, 15, 14];
        k_pos.extend(q_pos.iter());
        for span in [AttentionSpan::Global, AttentionSpan::SlidingWindow(5), AttentionSpan::SlidingWindow(70)] {
            // All 150 queries (the blocked path), and the last 1..=4 alone (the per-query path).
            for rows in [t, 4, 3, 1] {
                let (q, q_pos) = (q.slice(s![t - rows.., .., ..]), &q_pos[t - rows..]);
                let (k, v, k_pos) = (k.slice(s![..10 + t, .., ..]), v.slice(s![..10 + t, .., ..]), &k_pos[..]);
                let mut fast = Array2::zeros((rows, nh * dv));
                attention_heads(q, &KeyBlocks::from_rows(k), v, Mask::new(q_pos, k_pos, span, 3), fast.view_mut());
                let slow = attention_heads_reference(q, k, v, Mask::new(q_pos, k_pos, span, 3));
                let err = (&fast - &slow).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(err < 1e-5, "{span:?}, {rows} queries: max |Δ| = {err}");
            }
        }
    }

    /// The split decode path (long caches) equals [`attend_reference`] and the plain reference, on
    /// random shapes, windows and shuffled key positions.
    #[test]
    fn split_keys_equal_the_reference() {
        let mut rng = crate::base::rng::SplitMix64(13);
        let mut below = |n: usize| (rng.next_u64() % n as u64) as usize;
        for case in 0..12 {
            let (nh, nkv, dqk, dv) = ([2, 4][below(2)], 1 + below(2), 4 * (1 + below(3)), 1 + below(40));
            let (nkv, num_meta) = (nkv.min(nh), below(5));
            let s_len = KEYS_PER_SPLIT * 2 + below(KEYS_PER_SPLIT * 3); // 2 to 4 parts
            let f = |shape: (usize, usize, usize), k: f32| {
                Array3::from_shape_fn(shape, |(i, j, l)| ((i * 7 + j * 3 + l) as f32 * k + case as f32).sin() * 2.0)
            };
            let (q, k, v) = (f((1, nh, dqk), 0.31), f((s_len, nkv, dqk), 0.17), f((s_len, nkv, dv), 0.23));
            let mut k_pos: Vec<usize> = (0..s_len).collect();
            for i in (1..s_len).rev() {
                k_pos.swap(i, below(i + 1)); // the cache's rows in any order
            }
            let q_pos = [s_len - 1 - below(10)];
            for span in [AttentionSpan::Global, AttentionSpan::SlidingWindow(1 + below(s_len)), AttentionSpan::SlidingWindow(3)] {
                let mut fast = Array2::zeros((1, nh * dv));
                attention_heads(q.view(), &KeyBlocks::from_rows(k.view()), v.view(), Mask::new(&q_pos, &k_pos, span, num_meta), fast.view_mut());
                let slow = attention_heads_reference(q.view(), k.view(), v.view(), Mask::new(&q_pos, &k_pos, span, num_meta));
                let err = (&fast - &slow).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(err < 1e-5, "case {case}, {span:?}, S = {s_len}: max |Δ| vs the plain reference = {err}");
                // And against the unsplit online softmax, head 0.
                let keys = KeyBlocks::from_rows(k.view());
                let v_rows = v.as_standard_layout().into_owned().into_raw_vec_and_offset().0; // (S·nkv·dv)
                let kv = KvHead { keys: keys.head(0), values: HeadValues::of(&v_rows, 0, nkv, dv) }; // (dqk, S), (S, dv)
                let visible = |j: usize| is_visible(q_pos[0], k_pos[j], span, num_meta);
                let (mut whole, mut split) = (vec![0.0; dv], vec![0.0; dv]);
                attend_reference(q.slice(s![0, 0, ..]).as_slice().unwrap(), kv, visible, &mut whole);
                attend_split(q.slice(s![0, 0, ..]).as_slice().unwrap(), kv, visible, key_splits(s_len, dv), &mut split);
                let err = whole.iter().zip(&split).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err < 1e-5, "case {case}, {span:?}: max |Δ| vs attend_reference = {err}");
            }
        }
    }

    /// Query heads served together (sharing their K/V head's reads) get, bit for bit, what each
    /// gets alone; and a task never takes more heads than the split path holds.
    #[test]
    fn heads_attended_together_equal_each_head_alone() {
        let (heads, dqk, dv, s_len) = (5, 8, 12, KEYS_PER_SPLIT * 3 + 17);
        let f = |rows: usize, cols: usize, k: f32| Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3) as f32 * k).sin() * 2.0);
        let (q, keys, values) = (f(heads, dqk, 0.31), f(s_len, dqk, 0.17), f(s_len, dv, 0.23));
        let values = HeadValues::of(values.as_slice().unwrap(), 0, 1, dv); // (S, dv)
        let keys = KeyBlocks::from_rows(keys.view().insert_axis(Axis(1))); // (S, 1, dqk)
        let kv = KvHead { keys: keys.head(0), values };
        let visible = |j: usize| j % 7 != 3;
        let q_rows = |h: std::ops::Range<usize>| q.view().slice_move(s![h, ..]).to_slice().unwrap();
        for splits in [1, key_splits(s_len, dv)] {
            let mut together = vec![0.0; heads * dv];
            match splits {
                1 => attend(q_rows(0..heads), kv, visible, &mut together),
                _ => attend_split(q_rows(0..heads), kv, visible, splits, &mut together),
            }
            for h in 0..heads {
                let mut alone = vec![0.0; dv];
                match splits {
                    1 => attend(q_rows(h..h + 1), kv, visible, &mut alone),
                    _ => attend_split(q_rows(h..h + 1), kv, visible, splits, &mut alone),
                }
                assert_eq!(&together[h * dv..(h + 1) * dv], &alone[..], "head {h}, {splits} parts");
            }
        }
        assert_eq!((heads_per_task(5, 128), heads_per_task(6, 256), heads_per_task(32, 8), heads_per_task(3, 2000)), (5, 3, 16, 1));
    }

    // The block kernels as the decode kernel compiles them: plain, and on this CPU's vector unit.
    #[inline(always)]
    fn scores_plain(q: &[f32], k_block: &[f32]) -> [f32; KEY_BLOCK] {
        block_scores(q, k_block)
    }
    best_simd! { fn scores_fast(q: &[f32], k_block: &[f32]) -> [f32; KEY_BLOCK] = scores_plain }
    /// [`add_values`] with the values (KEY_BLOCK, dv) in one slice.
    #[inline(always)]
    fn add_values_plain(probs: &[[f32; KEY_BLOCK]; MAX_HEADS], heads: &[usize], seen: &[usize], values: &[f32], out: &mut [f32]) {
        let dv = values.len() / KEY_BLOCK;
        add_values(probs, heads, seen, |j| &values[j * dv..(j + 1) * dv], out)
    }
    best_simd! {
        fn add_values_fast(probs: &[[f32; KEY_BLOCK]; MAX_HEADS], heads: &[usize], seen: &[usize], values: &[f32], out: &mut [f32]) = add_values_plain
    }

    /// A block's scores are each key's Σ_d q[d]·K[d, j] summed in the order of d, bit for bit.
    #[test]
    fn block_scores_sum_the_dimensions_in_order() {
        for dqk in [1, 5, 8, 64] {
            let q: Vec<f32> = (0..dqk).map(|d| (d as f32 * 0.71).sin() * 3.0).collect();
            let k: Vec<f32> = (0..dqk * KEY_BLOCK).map(|i| (i as f32 * 0.37).cos() * 1e3).collect(); // (dqk, KEY_BLOCK)
            let want: Vec<u32> = (0..KEY_BLOCK).map(|j| (0..dqk).fold(0f32, |s, d| s + q[d] * k[d * KEY_BLOCK + j]).to_bits()).collect();
            for (build, got) in [("plain", scores_plain(&q, &k)), ("vector", scores_fast(&q, &k))] {
                assert_eq!(got.map(f32::to_bits).to_vec(), want, "dqk {dqk}, {build} build");
            }
        }
    }

    /// The value sums, a tile at a time, are one pass per seen key in order, out[h] += p_hj·v_j,
    /// bit for bit: 1 to 7 heads (tiles of up to TILE_HEADS), some heads not adding, dv with and
    /// without a last partial tile, more seen keys than a tile's.
    #[test]
    fn value_tiles_add_each_key_in_order() {
        let seen: Vec<usize> = (0..KEY_BLOCK).filter(|j| j % 5 != 2).collect(); // 51 keys
        for (heads, dv) in [(1, 16), (5, 128), (7, 37), (3, 5), (6, 48)] {
            let values: Vec<f32> = (0..KEY_BLOCK * dv).map(|i| (i as f32 * 0.37).sin() * 3.0).collect(); // (KEY_BLOCK, dv)
            let probs: [[f32; KEY_BLOCK]; MAX_HEADS] = std::array::from_fn(|h| std::array::from_fn(|j| ((h * 64 + j) as f32 * 0.11).cos().abs()));
            let adding: Vec<usize> = (0..heads).filter(|h| h % 4 != 2).collect();
            let start: Vec<f32> = (0..heads * dv).map(|i| (i as f32 * 0.53).cos()).collect(); // (heads, dv)
            let mut want = start.clone();
            for &j in &seen {
                for &h in &adding {
                    for c in 0..dv {
                        want[h * dv + c] += probs[h][j] * values[j * dv + c];
                    }
                }
            }
            let (mut plain, mut fast) = (start.clone(), start.clone());
            add_values_plain(&probs, &adding, &seen, &values, &mut plain);
            add_values_fast(&probs, &adding, &seen, &values, &mut fast);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain), bits(&want), "{heads} heads, dv {dv}, plain build");
            assert_eq!(bits(&fast), bits(&want), "{heads} heads, dv {dv}, vector build");
        }
    }

    #[test]
    fn key_parts_cover_the_keys_in_even_whole_blocks() {
        for s_len in 1..3000usize {
            for parts in 1..=MAX_SPLITS.min(s_len.div_ceil(KEY_BLOCK)) {
                let parts: Vec<Range<usize>> = (0..parts).map(|p| key_part(s_len, parts, p)).collect();
                let case = format!("{s_len} keys: {parts:?}");
                assert!(parts[0].start == 0 && parts.last().unwrap().end == s_len, "{case}");
                assert!(parts.windows(2).all(|p| p[0].end == p[1].start && p[0].end % KEY_BLOCK == 0), "{case}");
                let blocks = |r: &Range<usize>| r.len().div_ceil(KEY_BLOCK);
                let (least, most) = (parts.iter().map(blocks).min().unwrap(), parts.iter().map(blocks).max().unwrap());
                assert!(least >= 1 && most - least <= 1, "{case}");
            }
        }
        // The 1.5B decoding at context 1,024 (1,168 keys): 9 parts of 2 or 3 blocks each.
        assert_eq!(key_splits(1168, 128), 9);
    }

    #[test]
    fn two_equal_scores_average_values() {
        let q = Array3::from_elem((1, 1, 2), 0.0f32); // all scores 0 → uniform weights
        let k = Array3::from_elem((2, 1, 2), 1.0f32);
        let v = Array3::from_shape_vec((2, 1, 1), vec![2.0, 4.0]).unwrap();
        let mut out = Array2::zeros((1, 1));
        attention_heads(q.view(), &KeyBlocks::from_rows(k.view()), v.view(), Mask::new(&[5], &[4, 5], AttentionSpan::Global, 0), out.view_mut());
        assert!((out[[0, 0]] - 3.0).abs() < 1e-6);
    }
}
