//! Attention weights recomputed from what a layer attended with: its queries (after q_norm and
//! RoPE) and the keys of its producer's cache, scored and masked exactly as the model does
//! (docs/MODEL.md §3.3–3.4: `q·k / √dqk`, softmax over the keys [`is_visible`] allows, the model's own
//! [`masked_softmax`]). From them: where each query's attention mass goes ([`Shares`]) and, for
//! the heads asked for, the map of queries × keys ([`AttentionMap`]).

use crate::config::AttentionSpan;
use crate::model::attention::{is_visible, masked_softmax};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// The attention weights of one query head over the keys `keys` (S, dqk) at `key_positions`
/// (S), for a query at `query_position`: softmax of `q·k_j / √dqk` over the visible keys, exactly
/// 0 for the others. q (dqk) → (S)
pub fn attention_weights(
    q: ArrayView1<f32>,
    keys: ArrayView2<f32>,
    query_position: usize,
    key_positions: &[usize],
    span: AttentionSpan,
    num_meta: usize,
) -> Array1<f32> {
    debug_assert_eq!((keys.ncols(), keys.nrows()), (q.len(), key_positions.len()));
    let scale = 1.0 / (q.len() as f32).sqrt();
    let mut weights = keys.dot(&q) * scale; // (S)
    masked_softmax(weights.view_mut(), |j| is_visible(query_position, key_positions[j], span, num_meta));
    weights
}

/// Where one query's attention mass lands (or, summed over queries, its mean). The parts
/// overlap: the first token is usually inside the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shares {
    /// On the M meta tokens (positions 0..M).
    pub meta: f64,
    /// On the first real token (position M: the BOS, for a tokenised prompt).
    pub first_token: f64,
    /// On real tokens at most W positions back (what a sliding window of W keeps besides the meta
    /// tokens; in a global layer, how much of its attention a window would have kept).
    pub window: f64,
}

impl Shares {
    /// The shares of `weights` (S) over keys at `key_positions` (S), for a query at `query_position`;
    /// `window` is W (`None`: no window, every real token counts as inside).
    pub fn of(weights: ArrayView1<f32>, key_positions: &[usize], query_position: usize, num_meta: usize, window: Option<usize>) -> Shares {
        let mut shares = Shares::default();
        for (&w, &p) in weights.iter().zip(key_positions) {
            let w = f64::from(w);
            if p < num_meta {
                shares.meta += w;
            } else if p <= query_position && window.is_none_or(|w| query_position - p <= w) {
                shares.window += w;
            }
            if p == num_meta {
                shares.first_token += w;
            }
        }
        shares
    }

    pub(super) fn add(&mut self, other: Shares) {
        self.meta += other.meta;
        self.first_token += other.first_token;
        self.window += other.window;
    }

    pub(super) fn scaled(self, factor: f64) -> Shares {
        Shares { meta: self.meta * factor, first_token: self.first_token * factor, window: self.window * factor }
    }
}

/// The attention map of one layer's head: prompt tokens (rows) × every position, meta tokens
/// included (columns), averaged into bins so that a long prompt stays small.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMap {
    pub layer: usize,
    pub head: usize,
    /// The layer's mask: its window shows as the band the weights stay in.
    pub span: AttentionSpan,
    /// M and n: the columns cover positions 0..M+n, the rows the n prompt tokens (positions M..M+n).
    pub num_meta: usize,
    pub tokens: usize,
    /// Prompt tokens per row bin and positions per column bin (1 and 1 for a short prompt).
    pub query_bin: usize,
    pub key_bin: usize,
    /// (row bins, column bins): cell (a, b) is the mean, over the prompt tokens of row bin a, of
    /// the attention mass on the positions of column bin b; each row sums to 1.
    pub cells: Array2<f32>,
}

impl AttentionMap {
    /// An empty map for a prompt of `tokens` tokens after `num_meta` meta tokens, with at most
    /// `max_bins` rows and columns.
    pub fn new(layer: usize, head: usize, span: AttentionSpan, num_meta: usize, tokens: usize, max_bins: usize) -> AttentionMap {
        let positions = num_meta + tokens;
        let (query_bin, key_bin) = (tokens.div_ceil(max_bins), positions.div_ceil(max_bins));
        let cells = Array2::zeros((tokens.div_ceil(query_bin), positions.div_ceil(key_bin))); // (row bins, column bins)
        AttentionMap { layer, head, span, num_meta, tokens, query_bin, key_bin, cells }
    }

    /// One query's weights (S) over keys at `key_positions` (S), summed into the column bins.
    pub fn bin(&self, weights: ArrayView1<f32>, key_positions: &[usize]) -> Array1<f32> {
        let mut row = Array1::zeros(self.cells.ncols()); // (column bins)
        for (&w, &p) in weights.iter().zip(key_positions) {
            row[p / self.key_bin] += w;
        }
        row
    }

    /// Add the binned row (from [`AttentionMap::bin`]) of prompt token `token` (0 = the first).
    pub fn add_row(&mut self, token: usize, binned: ArrayView1<f32>) {
        let row_bin = token / self.query_bin;
        let tokens_in_bin = (self.tokens - row_bin * self.query_bin).min(self.query_bin); // the last bin may be short
        self.cells.row_mut(row_bin).scaled_add(1.0 / tokens_in_bin as f32, &binned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn weights_follow_the_mask_and_shares_split_them() {
        // M = 2 meta keys, W = 2: query 6 sees 0, 1 (meta) and 4, 5, 6; keys in shuffled order.
        let positions = [5, 0, 6, 2, 1, 3, 4];
        let keys = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0], [0.5, 0.5], [9.0, 0.0], [0.0, 0.0]];
        let q = array![2.0f32, 0.0];
        let w = attention_weights(q.view(), keys.view(), 6, &positions, AttentionSpan::SlidingWindow(2), 2);
        for (&wj, &p) in w.iter().zip(&positions) {
            assert_eq!(wj == 0.0, p == 2 || p == 3, "position {p}: {wj}");
        }
        assert!((w.sum() - 1.0).abs() < 1e-6);
        // Scores q·k/√2: key 5 → √2, key 0 → 0, key 6 → √2, key 1 → √2/2, key 4 → 0.
        let e = |s: f32| s.exp();
        let z = 2.0 * e(2f32.sqrt()) + e(0.5 * 2f32.sqrt()) + 2.0;
        assert!((w[0] - e(2f32.sqrt()) / z).abs() < 1e-6);
        let s = Shares::of(w.view(), &positions, 6, 2, Some(2));
        assert!((s.meta - f64::from(w[1] + w[4])).abs() < 1e-7);
        assert!((s.meta + s.window - 1.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.first_token, 0.0); // position 2 is outside the window
    }

    #[test]
    fn binned_map_rows_keep_their_mass() {
        // M = 1, 5 tokens, at most 2 bins: rows of 3 and 2 tokens, columns of 3 positions.
        let mut map = AttentionMap::new(0, 0, AttentionSpan::Global, 1, 5, 2);
        assert_eq!((map.query_bin, map.key_bin, map.cells.dim()), (3, 3, (2, 2)));
        let positions = [0, 1, 2, 3, 4, 5];
        for token in 0..5 {
            let mut w = Array1::zeros(6);
            w[0] = 0.5;
            w[1 + token] = 0.5;
            map.add_row(token, map.bin(w.view(), &positions).view());
        }
        for row in map.cells.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6, "{row}");
        }
        // Tokens 3 and 4 (positions 4, 5) put 0.5 each on column 1 besides 0.5 on the meta token.
        assert_eq!(map.cells.row(1).to_vec(), vec![0.5, 0.5]);
    }
}
