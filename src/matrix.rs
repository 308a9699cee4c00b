//! Weight matrices kept in memory as they were stored, and the one product the model needs.
//!
//! Released Hymba weights are bf16. Converting them to f32 at load would double the memory and
//! the bytes read per decoded token, and decoding one token is bound by exactly those bytes. So
//! a [`Matrix`] keeps its elements in the stored dtype (bf16 stays bf16: 2 bytes per weight)
//! and every product converts to f32 on the fly and accumulates in f32, so results are those
//! of an f32 model with the same weights.
//!
//! [`Matrix::matmul_t`] computes `x · Wᵀ` two ways, chosen by the number of rows of `x`:
//! - one row (decoding): a dot product per weight row, weight rows split across threads, so
//!   the weights are streamed from memory once;
//! - many rows (prefill): blocks of weight rows converted to f32 and multiplied with
//!   `matrixmultiply`'s GEMM (through ndarray), blocks split across threads.
//!
//! Both are tested against [`matmul_t_reference`], the plain triple loop.
//!
//! [`Matrix::matmul_t_rowwise`] is the third way, for a batch of sequences decoding together
//! (one row each): every row gets exactly the one-row product, bit for bit, while each block of
//! weight rows is read from memory once for all rows. GEMM would be faster per row at large
//! batches but adds in another order, so a sequence's logits would depend on its batch.
//! For bf16 weights a register-tiled kernel keeps the one-row summation order (see
//! [`accumulate_dot_tile`]): 2 weight rows × 4 inputs per tile, weights widened to f32 a block
//! at a time for a panel of up to 32 inputs (in registers, as each tile loads them, for a panel
//! of 8 inputs or fewer). Both it and the one-row product accumulate with
//! fused multiply-adds (one rounding per term, the same in both). Chosen by measurement (one
//! thread, a 384 × 1600 block in cache, GFLOP/s, on this project's 2-core AMD EPYC, Zen 1 at
//! 2 GHz: 16 flops a cycle at best): with a separate multiply and add, 16 rows ran at 17 and GEMM
//! at 11; with FMA, 1 row (the one-row product) 11, 4 rows 22 (GEMM 3), 16 rows 23 (GEMM 11),
//! 64 rows 23 (GEMM 27). Zen 1 multiplies and adds as fast as it fuses them, but the tile's
//! loop was bound by instruction dispatch: an FMA is half the micro-ops. Tiles of 3×4, 4×3,
//! 2×6 and 2×8 measured 10–45 % slower than 2×4, which keeps its 8 partial sums, 2 weight
//! vectors and an input vector in registers. At the batch sizes that fit a decode cache it
//! matches or beats GEMM and, unlike GEMM, leaves every sequence's logits exactly as they are
//! alone.

use crate::simd::{accumulate_dot_tile, best_simd, bf16_to_f32, dot, dot_bf16, finish_dot_bf16, sum_lanes, Lanes};
use crate::values::Values;
use half::{bf16, f16};
use crate::buffer::shaped;
use crate::model::parallel::items_per_task;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::sync::Arc;

/// Tensor elements in their stored dtype, owned or read in place from a mapped checkpoint
/// ([`Values`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    F32(Values<f32>),
    Bf16(Values<bf16>),
    F16(Values<f16>),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(v) => v.len(),
            Elements::Bf16(v) => v.len(),
            Elements::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes_per_element(&self) -> usize {
        match self {
            Elements::F32(_) => 4,
            Elements::Bf16(_) | Elements::F16(_) => 2,
        }
    }

    /// Convert `self[start..start + out.len()]` to f32 into `out`.
    pub fn copy_to_f32(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Elements::F32(v) => out.copy_from_slice(&v[start..end]),
            Elements::Bf16(v) => out.iter_mut().zip(&v[start..end]).for_each(|(o, w)| *o = bf16_to_f32(*w)),
            Elements::F16(v) => out.iter_mut().zip(&v[start..end]).for_each(|(o, w)| *o = w.to_f32()),
        }
    }
}

/// A row-major `[rows, cols]` weight matrix (PyTorch's `[out, in]` for a linear map).
///
/// The elements are shared (`Arc`): a clone costs nothing, so a copy of the weights with a few
/// vectors changed (`explain`'s ablation zeroes a fusion scale) holds only those vectors anew.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Arc<Elements>,
}

/// What the rows of `x` in a product are, which decides how it is computed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    /// Consecutive rows of one sequence (a prompt, or one decode step): [`Matrix::matmul_t`].
    #[default]
    Chunk,
    /// One row of each of several sequences (a batched decode step): [`Matrix::matmul_t_rowwise`],
    /// so that every sequence gets bit for bit what it gets decoding alone.
    OnePerSequence,
}

/// A one-row product's task reads at least this many bytes of weights (a few µs of memory
/// traffic, more than handing out a task costs): 82 rows of the 1.5B's 1,600 columns in bf16.
const MIN_TASK_BYTES: usize = 256 << 10;
/// A prefill product's weight blocks and chunks of `x` have at least this many rows.
const MIN_GEMM_ROWS: usize = 64;

impl Matrix {
    /// `None` if `data` does not hold `rows · cols` elements.
    pub fn new(rows: usize, cols: usize, data: Elements) -> Option<Matrix> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(Matrix { rows, cols, data: Arc::new(data) })
    }

    pub fn from_f32(a: Array2<f32>) -> Matrix {
        let (rows, cols) = a.dim();
        let data = a.as_standard_layout().iter().copied().collect();
        Matrix { rows, cols, data: Arc::new(Elements::F32(data)) }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn elements(&self) -> &Elements {
        &self.data
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.data.len() * self.data.bytes_per_element()
    }

    /// Row `r` converted to f32 into `out` (length `cols`).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        self.data.copy_to_f32(r * self.cols, out);
    }

    /// Rows `first..first + n` as an f32 array. (n, cols)
    pub fn rows_f32(&self, first: usize, n: usize) -> Array2<f32> {
        let mut out = Array2::zeros((n, self.cols));
        self.data.copy_to_f32(first * self.cols, out.as_slice_mut().expect("standard layout"));
        out
    }

    /// The whole matrix in f32. (rows, cols)
    pub fn to_f32(&self) -> Array2<f32> {
        self.rows_f32(0, self.rows)
    }

    /// Weight rows per task of a one-row or row-wise product: at least [`MIN_TASK_BYTES`] of
    /// weights, in whole rounds of the threads ([`items_per_task`]).
    fn rows_per_task(&self) -> usize {
        let row_bytes = (self.cols * self.data.bytes_per_element()).max(1);
        items_per_task(self.rows, MIN_TASK_BYTES.div_ceil(row_bytes), rayon::current_num_threads())
    }

    /// `x · Wᵀ` into `out`: (T, cols) → (T, rows).
    pub fn matmul_t<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        debug_assert_eq!(x.ncols(), self.cols);
        let out = shaped(out, (x.nrows(), self.rows)); // (T, rows)
        if x.nrows() == 1 {
            self.matvec(x.row(0), out.row_mut(0));
        } else {
            self.matmul_t_gemm(x, out);
        }
        out.view()
    }

    /// For one row of `x` (decoding): a dot product per weight row, weight rows split across
    /// threads, so the weights stream from memory once. (cols) → (rows)
    fn matvec(&self, x: ArrayView1<f32>, mut out: ArrayViewMut1<f32>) {
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("contiguous"); // (cols)
        let out = out.as_slice_mut().expect("a row of a standard-layout array"); // (rows)
        let per_task = self.rows_per_task();
        out.par_chunks_mut(per_task).enumerate().for_each(|(task, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let r = task * per_task + i;
                let w_row = r * self.cols..(r + 1) * self.cols;
                *o = match &*self.data {
                    Elements::F32(v) => dot(x, &v[w_row]),
                    Elements::Bf16(v) => dot_bf16(x, &v[w_row]),
                    Elements::F16(v) => dot_f16(x, &v[w_row]),
                };
            }
        });
    }

    /// `x · Wᵀ` computed as `rows` asks. (T, cols) → (T, rows)
    pub fn matmul_t_of<'o>(&self, x: ArrayView2<f32>, rows: Rows, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        match rows {
            Rows::Chunk => self.matmul_t(x, out),
            Rows::OnePerSequence => self.matmul_t_rowwise(x, out),
        }
    }

    /// `x · Wᵀ` with every row of `x` computed exactly as [`Matrix::matmul_t`] computes a single
    /// row: bit-identical to calling it row by row, but each block of weight rows is read from
    /// memory once for all B rows (a batch of sequences decoding together). (B, cols) → (B, rows)
    pub fn matmul_t_rowwise<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        debug_assert_eq!(x.ncols(), self.cols);
        let out = shaped(out, (x.nrows(), self.rows)); // (B, rows)
        match x.nrows() {
            0 => return out.view(),
            1 => {
                self.matvec(x.row(0), out.row_mut(0));
                return out.view();
            }
            _ => {}
        }
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout"); // (B·cols)
        let (cols, per_task) = (self.cols, self.rows_per_task());
        out.axis_chunks_iter_mut(Axis(1), per_task).into_par_iter().enumerate().for_each(|(task, mut out)| {
            let rows = task * per_task * cols..(task * per_task + out.ncols()) * cols;
            match &*self.data {
                Elements::Bf16(v) => matvecs_bf16(xs, &v[rows], out),
                Elements::F32(v) => each_pair(xs, &v[rows], out.view_mut(), dot),
                Elements::F16(v) => each_pair(xs, &v[rows], out.view_mut(), dot_f16),
            }
        });
        out.view()
    }

    /// For many rows of `x` (prefill): blocks of weight rows widened to f32 once, each
    /// multiplied by GEMM straight into its columns of `out`; when there are fewer blocks than a
    /// few per thread (narrow matrices, many threads), the rows of `x` are split too, so the tasks
    /// balance on any number of threads. out: (T, rows)
    fn matmul_t_gemm(&self, x: ArrayView2<f32>, out: &mut Array2<f32>) {
        let threads = rayon::current_num_threads();
        let tasks = 4 * threads;
        // At most 4 blocks a thread (GEMM packs all of x for each block: fewer, larger blocks
        // pack it less often), in whole rounds of the threads.
        let block = items_per_task(self.rows, self.rows.div_ceil(tasks).max(MIN_GEMM_ROWS), threads); // weight rows per block
        let x_rows = x.nrows().div_ceil(tasks.div_ceil(self.rows.div_ceil(block))).max(MIN_GEMM_ROWS); // rows of x per task
        out.axis_chunks_iter_mut(Axis(1), block).into_par_iter().enumerate().for_each(|(b, mut out)| {
            let w = self.rows_f32(b * block, out.ncols()); // (block, cols)
            let x_chunks = x.axis_chunks_iter(Axis(0), x_rows).into_par_iter();
            out.axis_chunks_iter_mut(Axis(0), x_rows).into_par_iter().zip(x_chunks).for_each(|(mut out, x)| {
                general_mat_mul(1.0, &x, &w.t(), 0.0, &mut out); // (x_rows, block)
            });
        });
    }
}

/// `out[b][r] = dot(x_b, w_r)` for the rows of a block of weights `w` (r outer, so a weight row
/// is read once, from cache for every b). x: (B·cols), w: (rows·cols), out: (B, rows)
fn each_pair<W>(x: &[f32], w: &[W], mut out: ArrayViewMut2<f32>, dot: impl Fn(&[f32], &[W]) -> f32) {
    let cols = x.len() / out.nrows();
    for (r, w) in w.chunks_exact(cols).enumerate() {
        for (b, x) in x.chunks_exact(cols).enumerate() {
            out[[b, r]] = dot(x, w);
        }
    }
}

/// The blocking of [`matvecs_bf16_blocks`]: tiles of 2 weight rows × 4 inputs (8 AVX2
/// registers of partial sums, and room for the operands), panels of up to 32 inputs per widened
/// weight block, blocks of 32 chunks of 32 columns (a widened block of 2 rows is 8 KiB, and with
/// a tile's inputs, 16 KiB, it stays in L1 while the tile's 4 lane groups pass over it; a tile
/// loads and stores its partial sums once per block, so longer blocks do that less: 32 chunks
/// measured 2–7 % faster than 16 at 16 and 64 inputs, 64 chunks slower).
const TILE_ROWS: usize = 2;
const TILE_INPUTS: usize = 4;
const PANEL_INPUTS: usize = 32;
const BLOCK_CHUNKS: usize = 32;

/// What a block of bf16 weights needs besides its inputs: a block of weight rows widened to f32
/// (TILE_ROWS, BLOCK_CHUNKS, 32) and the partial sums of a panel's pairs (≤ PANEL_INPUTS ·
/// TILE_ROWS, 32), pair (b, r) at `b · R + r` for a group of R rows.
struct TileScratch {
    widened: [[Lanes; BLOCK_CHUNKS]; TILE_ROWS],
    pairs: [Lanes; PANEL_INPUTS * TILE_ROWS],
}

/// Weight rows a tile takes when there are only two inputs: 4 × 2 keeps its 8 partial sums, 4
/// weight vectors and an input vector in registers like 2 × 4, and loads each input vector once
/// for 4 weight rows (1.5B, B = 2, 2 threads: 312–322 ms a step against 332–345 with 2 × 2).
const PAIR_TILE_ROWS: usize = 4;
const _: () = assert!(2 * PAIR_TILE_ROWS <= PANEL_INPUTS * TILE_ROWS, "a pair tile's sums fit TileScratch::pairs");

/// [`each_pair`] with [`dot_bf16`](crate::simd::dot_bf16) for bf16 weights, bit-identical, in
/// groups of [`TILE_ROWS`] weight rows ([`PAIR_TILE_ROWS`] for two inputs; single rows at the end).
#[inline(always)]
fn matvecs_bf16_blocks(x: &[f32], w: &[bf16], mut out: ArrayViewMut2<f32>) {
    let rows = out.ncols();
    let cols = w.len() / rows;
    let mut scratch = TileScratch { widened: [[[0.0; 32]; BLOCK_CHUNKS]; TILE_ROWS], pairs: [[0.0; 32]; PANEL_INPUTS * TILE_ROWS] };
    let mut first = 0;
    while first < rows {
        if out.nrows() <= 2 && first + PAIR_TILE_ROWS <= rows {
            row_group::<PAIR_TILE_ROWS>(x, &w[first * cols..(first + PAIR_TILE_ROWS) * cols], first, &mut scratch, &mut out);
            first += PAIR_TILE_ROWS;
        } else if first + TILE_ROWS <= rows {
            row_group::<TILE_ROWS>(x, &w[first * cols..(first + TILE_ROWS) * cols], first, &mut scratch, &mut out);
            first += TILE_ROWS;
        } else {
            row_group::<1>(x, &w[first * cols..(first + 1) * cols], first, &mut scratch, &mut out);
            first += 1;
        }
    }
}

/// `R` weight rows (`w`, R·cols) against every input row, into columns `first..first + R` of
/// `out`: per panel of inputs, the weights widened to f32 a block at a time (or in registers,
/// for a small panel), then [`accumulate_dot_tile`] over tiles of inputs ([`tile_and_rest`]), then
/// each pair's sum finished as [`dot_bf16`](crate::simd::dot_bf16) finishes it.
#[inline(always)]
fn row_group<const R: usize>(x: &[f32], w: &[bf16], first: usize, scratch: &mut TileScratch, out: &mut ArrayViewMut2<f32>) {
    let cols = w.len() / R;
    let chunks = cols / 32;
    let w_rows: [&[bf16]; R] = std::array::from_fn(|r| &w[r * cols..(r + 1) * cols]);
    let x_row = |b: usize| &x[b * cols..(b + 1) * cols];
    for panel in (0..out.nrows()).step_by(PANEL_INPUTS) {
        let panel = panel..(panel + PANEL_INPUTS).min(out.nrows());
        let pairs = &mut scratch.pairs[..panel.len() * R];
        pairs.fill([0.0; 32]);
        // With a tile or two per panel, widening a block into memory for them costs more than
        // widening in registers as each tile loads the weights (one thread, 384 × 1600: 4 inputs
        // 16 → 22 GFLOP/s, 8 inputs 20 → 22); from 3 tiles on, the widened block pays (16 inputs
        // 23 against 22, 64 inputs 23 against 21).
        let in_registers = panel.len() <= 2 * TILE_INPUTS;
        for block in (0..chunks).step_by(BLOCK_CHUNKS) {
            let block = block..(block + BLOCK_CHUNKS).min(chunks);
            let x_block = |b: usize| &x_row(b).as_chunks::<32>().0[block.clone()];
            let (tiles, rest) = pairs.as_chunks_mut::<R>().0.as_chunks_mut::<TILE_INPUTS>();
            if in_registers {
                let w_block: [&[[bf16; 32]]; R] = std::array::from_fn(|r| &w_rows[r].as_chunks::<32>().0[block.clone()]);
                tile_and_rest(panel.start, x_block, w_block, bf16_to_f32, tiles, rest);
            } else {
                for (wide, w) in scratch.widened.iter_mut().zip(w_rows) {
                    for (wide, w) in wide.iter_mut().zip(&w.as_chunks::<32>().0[block.clone()]) {
                        for k in 0..32 {
                            wide[k] = bf16_to_f32(w[k]);
                        }
                    }
                }
                let w_block: [&[Lanes]; R] = std::array::from_fn(|r| &scratch.widened[r][..block.len()]);
                tile_and_rest(panel.start, x_block, w_block, |w| w, tiles, rest);
            }
        }
        // Each pair's partial sums added up, 8 pairs at a time, then its tail columns.
        let mut sums = [0.0; PANEL_INPUTS * TILE_ROWS];
        let (eights, rest) = pairs.as_chunks::<8>();
        for (sums, eight) in sums.as_chunks_mut::<8>().0.iter_mut().zip(eights) {
            *sums = sum_lanes(eight.each_ref());
        }
        for (p, one) in rest.iter().enumerate() {
            sums[eights.len() * 8 + p] = sum_lanes([one])[0];
        }
        let tail = chunks * 32..;
        for (b, sums) in panel.zip(sums.as_chunks::<R>().0) {
            for r in 0..R {
                out[[b, first + r]] = finish_dot_bf16(sums[r], &x_row(b)[tail.clone()], &w_rows[r][tail.clone()]);
            }
        }
    }
}

/// [`accumulate_dot_tile`] over tiles of [`TILE_INPUTS`] inputs from `first` on, then the inputs
/// left over: three in one tile, else two at a time, then one: inputs `x_block(b)`, weights `w`
/// widened by `widen`.
#[inline(always)]
fn tile_and_rest<'x, const R: usize, W: Copy>(
    first: usize,
    x_block: impl Fn(usize) -> &'x [Lanes],
    w: [&[[W; 32]]; R],
    widen: impl Fn(W) -> f32 + Copy,
    tiles: &mut [[[Lanes; R]; TILE_INPUTS]],
    rest: &mut [[Lanes; R]],
) {
    let mut b = first;
    for tile in tiles {
        accumulate_dot_tile(std::array::from_fn(|i| x_block(b + i)), w, widen, tile);
        b += TILE_INPUTS;
    }
    // Three left over: one tile of 3, one pass over the weights where a pair and a single took two.
    if let Ok(three) = <&mut [[Lanes; R]; 3]>::try_from(&mut *rest) {
        accumulate_dot_tile([x_block(b), x_block(b + 1), x_block(b + 2)], w, widen, three);
        return;
    }
    let (twos, one) = rest.as_chunks_mut::<2>();
    for two in twos {
        accumulate_dot_tile([x_block(b), x_block(b + 1)], w, widen, two);
        b += 2;
    }
    for one in one {
        accumulate_dot_tile([x_block(b)], w, widen, std::array::from_mut(one));
        b += 1;
    }
}

best_simd! {
    /// [`matvecs_bf16_blocks`] on the best vector unit of this CPU.
    fn matvecs_bf16(x: &[f32], w: &[bf16], out: ArrayViewMut2<f32>) = matvecs_bf16_blocks
}

/// Σ a·b with `b` in f16, converted on the fly (f16 checkpoints are rare: no vector variant).
fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(x, w)| x * w.to_f32()).sum()
}

/// The plain triple loop `x · Wᵀ`, the truth the fast paths are tested against.
pub fn matmul_t_reference(x: ArrayView2<f32>, w: &Matrix) -> Array2<f32> {
    let weights = w.to_f32(); // (rows, cols)
    Array2::from_shape_fn((x.nrows(), w.rows()), |(t, o)| (0..w.cols()).map(|i| x[[t, i]] * weights[[o, i]]).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;

    fn sample(rows: usize, cols: usize, salt: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 31 + j * 7) as f32 * 0.37 + salt).sin())
    }

    #[test]
    fn both_paths_match_the_reference_in_every_dtype() {
        let w32 = sample(150, 37, 0.1); // rows not a multiple of a task, cols not of 8
        let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let as_f16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        for w in [
            Matrix::from_f32(w32.clone()),
            Matrix::new(150, 37, Elements::Bf16(as_bf16.into())).unwrap(),
            Matrix::new(150, 37, Elements::F16(as_f16.into())).unwrap(),
        ] {
            for t in [1, 3, 4, 5, 70, 200] { // 200: the rows of x split across tasks too
                let x = sample(t, 37, 0.7);
                let want = matmul_t_reference(x.view(), &w);
                let mut got = Array2::zeros((0, 0));
                w.matmul_t(x.view(), &mut got);
                let err = (&got - &want).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "T = {t}, {:?}: max |Δ| = {err}", std::mem::discriminant(w.elements()));
            }
        }
    }

    #[test]
    fn rowwise_product_is_bit_identical_to_one_row_at_a_time() {
        // Widths with and without a tail past the last 32 columns and past the last column
        // block, weight rows that leave partial tiles and a partial task, inputs that leave a
        // partial tile.
        for (rows, cols) in [(150, 37), (67, 100), (7, 288), (130, 600)] {
            let w32 = sample(rows, cols, 0.3);
            let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let as_f16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            for w in [
                Matrix::from_f32(w32.clone()),
                Matrix::new(rows, cols, Elements::Bf16(as_bf16.into())).unwrap(),
                Matrix::new(rows, cols, Elements::F16(as_f16.into())).unwrap(),
            ] {
                for batch in [1, 2, 3, 4, 5, 6, 7, 16, 21, 35] {
                    let x = sample(batch, cols, 1.1);
                    let mut got = Array2::zeros((0, 0));
                    w.matmul_t_rowwise(x.view(), &mut got);
                    for (b, got) in got.rows().into_iter().enumerate() {
                        let mut alone = Array2::zeros((0, 0));
                        w.matmul_t(x.slice(s![b..b + 1, ..]), &mut alone);
                        let same = got.iter().zip(alone.row(0)).all(|(g, a)| g.to_bits() == a.to_bits());
                        assert!(same, "{rows}×{cols}, batch {batch}, row {b}: differs from the row alone");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_is_kept_at_two_bytes_and_converts_exactly() {
        let w = Matrix::new(1, 2, Elements::Bf16(vec![bf16::from_bits(0x3F80), bf16::from_bits(0xC000)].into())).unwrap();
        assert_eq!(w.bytes(), 4);
        assert_eq!(w.to_f32().row(0).to_vec(), vec![1.0, -2.0]);
        assert!(Matrix::new(2, 2, Elements::F32(vec![0.0; 3].into())).is_none());
    }
}
