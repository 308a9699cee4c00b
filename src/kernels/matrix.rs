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
//! - many rows (prefill): `matrixmultiply`'s GEMM (through ndarray) on tiles of the product,
//!   chunks of x's rows by blocks of weight rows, about two a thread, as square as the thread
//!   count allows (each tile packs its rows of x and of the weights); the weights are converted
//!   to f32 a slab of columns at a time, just before GEMM packs them.
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
//!
//! A product's tasks can also finish their own part of it ([`Matrix::matmul_t_then`]): each
//! task, having computed a block of columns of `out`, hands that block to a function (a bias, an
//! activation), so element-wise work on a product runs spread over the threads inside the
//! product's parallel region instead of on one thread after it. [`Matrix::pair_matmul_t_then`]
//! computes two products of one shape in one region, the same columns of both in each task
//! (a gated MLP's up and gate, gated there).

use crate::kernels::simd::{accumulate_dot_tile, array_of, best_simd, bf16_to_f32, dot, dots_bf16, finish_dot_bf16, sum_lanes, Lanes};
use crate::kernels::quant::{self, QuantType, Quantized, QuantizedRow};
use crate::base::values::Values;
use half::{bf16, f16};
use crate::base::buffer::shaped;
use crate::base::tasks::items_per_task;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Tensor elements in their stored dtype, owned or read in place from a mapped checkpoint
/// ([`Values`]), or quantized in blocks ([`Quantized`]: a whole matrix, which knows its shape).
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    F32(Values<f32>),
    Bf16(Values<bf16>),
    F16(Values<f16>),
    Quantized(Quantized),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(v) => v.len(),
            Elements::Bf16(v) => v.len(),
            Elements::F16(v) => v.len(),
            Elements::Quantized(q) => q.rows() * q.cols(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory (a quantized matrix's values and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Elements::F32(v) => 4 * v.len(),
            Elements::Bf16(v) => 2 * v.len(),
            Elements::F16(v) => 2 * v.len(),
            Elements::Quantized(q) => q.bytes(),
        }
    }

    /// Convert `self[start..start + out.len()]` to f32 into `out`.
    pub fn copy_to_f32(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Elements::F32(v) => out.copy_from_slice(&v[start..end]),
            Elements::Bf16(v) => out.iter_mut().zip(&v[start..end]).for_each(|(o, w)| *o = bf16_to_f32(*w)),
            Elements::F16(v) => out.iter_mut().zip(&v[start..end]).for_each(|(o, w)| *o = w.to_f32()),
            Elements::Quantized(q) => {
                // the range may span rows: each row's part dequantized in turn
                let (mut at, mut out) = (start, out);
                while !out.is_empty() {
                    let (r, c) = (at / q.cols(), at % q.cols());
                    let n = (q.cols() - c).min(out.len());
                    q.dequantize_row_into(r, c, &mut out[..n]);
                    (at, out) = (at + n, &mut out[n..]);
                }
            }
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
pub enum RowKind {
    /// Consecutive rows of one sequence (a prompt, or one decode step): [`Matrix::matmul_t`].
    #[default]
    Chunk,
    /// One row of each of several sequences (a batched decode step): [`Matrix::matmul_t_rowwise`],
    /// so that every sequence gets bit for bit what it gets decoding alone.
    OnePerSequence,
}

/// A one-row product's task reads at least this many bytes of weights when the matrix has that
/// much for every thread (tens of µs of memory traffic, far more than handing out a task costs):
/// 82 rows of the 1.5B's 1,600 columns in bf16.
const MIN_TASK_BYTES: usize = 256 << 10;
/// A smaller matrix is spread over every thread while each task still reads at least this many
/// bytes (a few µs): on 16 threads the 1.5B's x_proj (845 KiB) makes 15 tasks and its dt_proj
/// (625 KiB) 16, where [`MIN_TASK_BYTES`] alone made 4 and 3, leaving most threads idle.
const MIN_SHARED_TASK_BYTES: usize = 32 << 10;
/// A prefill product cuts `x` and the weights in parts of about this many rows at least
/// ([`gemm_tiles`]: `matrixmultiply` packs x in blocks of 64 rows).
const MIN_GEMM_ROWS: usize = 64;
/// A chunk of at most this many rows (a short prompt) is multiplied as a decoding batch is, by
/// the row-wise kernel, which reads each weight once for all the rows, rather than by GEMM, which
/// first widens every weight to f32 and packs it: the 1.5B's products of one pass on the Zen 2
/// (bf16, `cargo bench --bench decode_kernels`) took 153 ms row-wise against 702 by GEMM for 4
/// rows, 635 against 861 for 16, and 2,385 against 1,872 for 64 (GEMM ahead from about 30).
/// Quantized weights keep GEMM for every chunk: their row-wise kernels quantize the inputs to
/// int8, as decoding does, where a prompt's products multiply f32 inputs by the dequantized
/// weights (which the plain pass checks to f32 rounding).
const MAX_ROWWISE_CHUNK: usize = 24;

impl Matrix {
    /// `None` if `data` does not hold `rows · cols` elements.
    pub fn new(rows: usize, cols: usize, data: Elements) -> Option<Matrix> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(Matrix { rows, cols, data: Arc::new(data) })
    }

    /// A matrix of quantized blocks.
    pub fn from_quantized(q: Quantized) -> Matrix {
        Matrix { rows: q.rows(), cols: q.cols(), data: Arc::new(Elements::Quantized(q)) }
    }

    /// This matrix quantized to `kind` (from whatever it holds; a quantized matrix is
    /// dequantized first). Fails, naming the block, if a scale does not fit an f16.
    pub fn quantize(&self, kind: QuantType) -> std::result::Result<Matrix, String> {
        Quantized::quantize(kind, self.rows, self.cols, |r, out| self.row_into(r, out)).map(Matrix::from_quantized)
    }

    /// The quantized blocks, if this matrix holds them.
    pub fn quantized(&self) -> Option<&Quantized> {
        match &*self.data {
            Elements::Quantized(q) => Some(q),
            _ => None,
        }
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
        self.data.bytes()
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

    /// How a product of x with `t` rows (as `kind` says) and `rows` of the weight rows splits into
    /// tasks on `threads` threads, for `matrices` products of this shape computed together
    /// ([`Matrix::pair_matmul_t_then`]).
    fn split(&self, rows: usize, t: usize, kind: RowKind, matrices: usize, threads: usize) -> Split {
        // One-row and row-wise tasks: at least MIN_TASK_BYTES of weights, in whole rounds, or,
        // where the weights are fewer than that a thread, a share for every thread (at least
        // MIN_SHARED_TASK_BYTES).
        let row_bytes = (matrices * self.data.bytes() / self.rows.max(1)).max(1);
        let min_bytes = (rows * row_bytes / threads.max(1)).clamp(MIN_SHARED_TASK_BYTES, MIN_TASK_BYTES);
        // Quantized weights in whole groups of 8 rows, the tiles their kernels compute.
        let whole = if self.quantized().is_some() { quant::GROUP } else { 1 };
        let streamed = || items_per_task(rows, min_bytes.div_ceil(row_bytes), threads).next_multiple_of(whole);
        match (t, kind) {
            (1, _) => Split::OneRow { block: streamed() },
            (_, RowKind::OnePerSequence) => Split::RowWise { block: streamed() },
            (..=MAX_ROWWISE_CHUNK, RowKind::Chunk) if self.quantized().is_none() => Split::RowWise { block: streamed() },
            (_, RowKind::Chunk) => gemm_tiles(t, rows, threads),
        }
    }

    /// `x · Wᵀ` into `out`: (T, cols) → (T, rows). One row: a dot product per weight row, weight
    /// rows split across threads, so the weights stream from memory once; up to 24 rows
    /// (`MAX_ROWWISE_CHUNK`; weights not quantized): the same for every row, the weights still
    /// read once; more rows: GEMM.
    pub fn matmul_t<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        self.matmul_t_of(x, RowKind::Chunk, out)
    }

    /// `x · Wᵀ` with every row of `x` computed exactly as [`Matrix::matmul_t`] computes a single
    /// row: bit-identical to calling it row by row, but each block of weight rows is read from
    /// memory once for all B rows (a batch of sequences decoding together). (B, cols) → (B, rows)
    pub fn matmul_t_rowwise<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        self.matmul_t_of(x, RowKind::OnePerSequence, out)
    }

    /// `x · Wᵀ` computed as `kind` asks. (T, cols) → (T, rows)
    pub fn matmul_t_of<'o>(&self, x: ArrayView2<f32>, kind: RowKind, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        self.matmul_t_then(x, kind, out, |_, _| {})
    }

    /// [`Matrix::matmul_t_of`], each task then calling `then(c, block)` on the block of `out` it
    /// computed, columns `c..c + block.ncols()` (all or some rows): element-wise work on the
    /// product (a bias, an activation) runs in the product's tasks, in parallel, instead of on
    /// one thread after it. Every column of every row is in exactly one block. (T, cols) → (T, rows)
    pub fn matmul_t_then<'o>(
        &self,
        x: ArrayView2<f32>,
        kind: RowKind,
        out: &'o mut Array2<f32>,
        then: impl Fn(usize, ArrayViewMut2<f32>) + Sync + Send,
    ) -> ArrayView2<'o, f32> {
        self.rows_matmul_t_then(0..self.rows, x, kind, out, then)
    }

    /// [`Matrix::matmul_t_then`] with the weight rows `rows` only: the output's columns `rows`
    /// of the whole product, each computed as the whole product computes it (the same bits);
    /// `then(c, block)` gets the weight row c its block starts at. (T, cols) → (T, rows.len())
    pub fn rows_matmul_t_then<'o>(
        &self,
        rows: Range<usize>,
        x: ArrayView2<f32>,
        kind: RowKind,
        out: &'o mut Array2<f32>,
        then: impl Fn(usize, ArrayViewMut2<f32>) + Sync + Send,
    ) -> ArrayView2<'o, f32> {
        debug_assert!(rows.end <= self.rows);
        let out = shaped(out, (x.nrows(), rows.len())); // (T, rows)
        let one = out.view_mut().insert_axis(Axis(0)); // (1, T, rows)
        products_then([self], rows, x, kind, one, |first, block| then(first, block.index_axis_move(Axis(0), 0)));
        out.view()
    }

    /// `x · Aᵀ` into `out[0]` and `x · Bᵀ` into `out[1]` (A and B of one shape) in one parallel
    /// region, each task computing the same columns of both and then calling `then(a, b)` on
    /// those blocks: the two halves of a gated MLP, gated in the products' tasks.
    /// (T, cols) → (2, T, rows)
    pub fn pair_matmul_t_then(
        a: &Matrix,
        b: &Matrix,
        x: ArrayView2<f32>,
        kind: RowKind,
        out: &mut Array3<f32>,
        then: impl Fn(ArrayViewMut2<f32>, ArrayViewMut2<f32>) + Sync + Send,
    ) {
        let out = shaped(out, (2, x.nrows(), a.rows)); // (2, T, rows)
        products_then([a, b], 0..a.rows, x, kind, out.view_mut(), |_, block| {
            let (a, b) = block.split_at(Axis(0), 1); // (1, T, block) each
            then(a.index_axis_move(Axis(0), 0), b.index_axis_move(Axis(0), 0));
        });
    }

    /// One tile of a prefill product, on this thread: `out` (m, n) = x (m, cols) · (weight rows
    /// `first..first + n`)ᵀ. The weights are widened to f32 a slab of [`GEMM_SLAB`] columns at a
    /// time, just before the GEMM that packs them, so the slab is still in cache when packed (a
    /// whole block widened first, megabytes, went out to memory and was read back). Each slab's
    /// GEMM adds into `out` as one GEMM over all the columns would, slab after slab: same bits.
    fn gemm_tile(&self, x: ArrayView2<f32>, first: usize, mut out: ArrayViewMut2<f32>) {
        let (n, cols) = (out.ncols(), self.cols);
        debug_assert_eq!((x.ncols(), out.nrows()), (cols, x.nrows()));
        let mut slab = Array2::zeros((n, GEMM_SLAB.min(cols))); // (n, slab)
        for k in (0..cols).step_by(GEMM_SLAB) {
            let width = GEMM_SLAB.min(cols - k);
            let mut slab = slab.slice_mut(s![.., ..width]); // (n, width)
            self.widen_into(first..first + n, k..k + width, slab.view_mut());
            let beta = if k == 0 { 0.0 } else { 1.0 }; // the first slab sets out, the others add
            general_mat_mul(1.0, &x.slice(s![.., k..k + width]), &slab.t(), beta, &mut out); // (m, n)
        }
    }

    /// Weights `cols` of the rows `rows` in f32, into `out`: a quantized matrix tile by tile
    /// ([`Quantized::dequantize_into`]), the others row by row. (rows.len(), cols.len())
    fn widen_into(&self, rows: Range<usize>, cols: Range<usize>, mut out: ArrayViewMut2<f32>) {
        match &*self.data {
            Elements::Quantized(q) => q.dequantize_into(rows, cols, out),
            data => {
                for (r, mut row) in rows.zip(out.rows_mut()) {
                    data.copy_to_f32(r * self.cols + cols.start, row.as_slice_mut().expect("a row of a slab"));
                }
            }
        }
    }

    /// A one-row or row-wise task's part of the product, on this thread: weight rows
    /// `first..first + out.ncols()` against every row of `xs` (T·cols, row after row), into
    /// `out` (T, those rows).
    fn streamed_block(&self, xs: &[f32], qx: &[QuantizedRow], split: Split, first: usize, out: ArrayViewMut2<f32>) {
        let weights = first * self.cols..(first + out.ncols()) * self.cols;
        match (split, &*self.data) {
            (_, Elements::Quantized(q)) => quant::dots(q, qx, first, out), // (B, block)
            (Split::RowWise { .. }, Elements::Bf16(v)) => matvecs_bf16(xs, &v[weights], out),
            (_, Elements::Bf16(v)) => {
                debug_assert_eq!(out.nrows(), 1, "one row: the row-wise and GEMM splits go elsewhere");
                dots_bf16(xs, &v[weights], out.index_axis_move(Axis(0), 0).into_slice().expect("one contiguous row"))
            }
            (_, Elements::F32(v)) => each_pair(xs, &v[weights], out, dot),
            (_, Elements::F16(v)) => each_pair(xs, &v[weights], out, dot_f16),
        }
    }
}

/// Columns of the weights a prefill tile widens at a time ([`Matrix::gemm_tile`]):
/// `matrixmultiply`'s depth of a packed panel for f32 (its `KC`), so that a slab's GEMM does
/// what one GEMM over all the columns does for those columns, in the same order.
const GEMM_SLAB: usize = 256;
/// Tasks a prefill product makes a thread, about: two, so that work stealing evens out a thread
/// that falls behind (the others take its second tile) while tiles stay large.
const GEMM_TASKS_PER_THREAD: usize = 2;
/// What packing one row of x or of the widened weights into GEMM's panels costs, in
/// multiply-adds of the tile, per column (x rows and weight rows are both packed whole, for each
/// tile: a tile of m rows of x by n weight rows packs (m + n)·cols values for m·n·cols
/// multiply-adds). About 10–17 measured on this project's 2-core machine (perf samples in
/// `matrixmultiply`'s packing against its kernel).
const PACK_COST: usize = 12;
/// `matrixmultiply`'s register tile for f32 (8 × 8): a tile whose sides are not multiples of it
/// computes the remainder as a whole, mostly wasted, register tile.
const KERNEL_TILE: usize = 8;

/// The tiles of a prefill product `x · Wᵀ`, x (T, cols) by W (rows, cols): chunks of `x_rows`
/// rows of x by blocks of `block` weight rows, each a GEMM call on one task. About
/// [`GEMM_TASKS_PER_THREAD`] tiles a thread; among the ways to cut x into chunks, the one whose
/// slowest thread does least: whole rounds of tiles, each tile's multiply-adds and its packing
/// ([`PACK_COST`]), which favours square tiles (a tile packs all of its x rows and all of its
/// weight rows). x and the weights are each cut in even parts, a part per [`MIN_GEMM_ROWS`]
/// rows at most, rounded up to whole [`KERNEL_TILE`]s. Which tile computes an element never
/// changes the element.
fn gemm_tiles(t: usize, rows: usize, threads: usize) -> Split {
    let tasks = GEMM_TASKS_PER_THREAD * threads.max(1);
    // `parts` even parts of `n` (at most one per MIN_GEMM_ROWS), rounded up to whole kernel tiles
    let side = |n: usize, parts: usize| n.div_ceil(parts.clamp(1, n.div_ceil(MIN_GEMM_ROWS))).next_multiple_of(KERNEL_TILE);
    (1..=tasks)
        .map(|chunks| {
            let (x_rows, block) = (side(t, chunks), side(rows, tasks.div_ceil(chunks)));
            let tiles = t.div_ceil(x_rows) * rows.div_ceil(block);
            let slowest = tiles.div_ceil(threads.max(1)) * (x_rows * block + PACK_COST * (x_rows + block));
            (slowest, Split::Gemm { block, x_rows })
        })
        .min_by_key(|(slowest, _)| *slowest)
        .map(|(_, split)| split)
        .expect("at least one way to cut x")
}

/// How the tasks of a product split it (see [`Matrix::split`]): blocks of `block` weight rows,
/// that is columns of the output, each task computing one block for all rows of x, or for a
/// chunk of `x_rows` rows (GEMM).
#[derive(Debug, Clone, Copy)]
enum Split {
    /// One row of x (decoding one sequence): a dot product per weight row.
    OneRow { block: usize },
    /// One row per sequence (a batch decoding together), or a short chunk of one with float
    /// weights (at most [`MAX_ROWWISE_CHUNK`] rows): [`matvecs_bf16`] for bf16 weights and
    /// [`quant::dots`] for quantized ones (batches only), which give each row exactly its one-row
    /// product; a dot per pair otherwise.
    RowWise { block: usize },
    /// More rows of one sequence (prefill): tiles of `x_rows` rows of x by `block` weight rows
    /// ([`gemm_tiles`]), each a GEMM ([`Matrix::gemm_tile`]).
    Gemm { block: usize, x_rows: usize },
}

/// `out[i] = x · Wᵢ[rows]ᵀ` for `N` matrices of one shape (`out` already shaped (N, T,
/// rows.len())): each task computes the same block of columns of every `out[i]`, then calls
/// `then(its first weight row, block)` with the (N, T or a chunk of T, block) it computed.
fn products_then<const N: usize>(
    ws: [&Matrix; N],
    rows: Range<usize>,
    x: ArrayView2<f32>,
    kind: RowKind,
    mut out: ArrayViewMut3<f32>,
    then: impl Fn(usize, ArrayViewMut3<f32>) + Sync + Send,
) {
    let (t, w) = (x.nrows(), ws[0]);
    debug_assert!(ws.iter().all(|m| (m.rows, m.cols) == (w.rows, w.cols)) && x.ncols() == w.cols);
    debug_assert_eq!(out.dim(), (N, t, rows.len()));
    if t == 0 || rows.is_empty() {
        return;
    }
    let split = w.split(rows.len(), t, kind, N, rayon::current_num_threads());
    // Once for every task: a view unless x is strided (a column block of a wider array), as the
    // streamed kernels read x as one slice.
    let x = x.as_standard_layout(); // (T, cols)
    let xs = x.as_slice().expect("standard layout"); // (T·cols)
    // Quantized weights take the input rows quantized too, once for every task.
    let qx = match split {
        Split::OneRow { .. } | Split::RowWise { .. } if ws.iter().any(|w| w.quantized().is_some()) => {
            xs.chunks_exact(w.cols.max(1)).map(|x| { let mut q = QuantizedRow::default(); q.quantize(x); q }).collect()
        }
        _ => Vec::new(),
    }; // (T) rows of (blocks · 32)
    let block = match split {
        Split::OneRow { block } | Split::RowWise { block } | Split::Gemm { block, .. } => block,
    };
    out.axis_chunks_iter_mut(Axis(2), block).into_par_iter().enumerate().for_each(|(task, mut blocks)| {
        let first = rows.start + task * block; // (N, T, block)
        match split {
            Split::Gemm { x_rows, .. } => {
                let x_chunks = x.axis_chunks_iter(Axis(0), x_rows).into_par_iter();
                blocks.axis_chunks_iter_mut(Axis(1), x_rows).into_par_iter().zip(x_chunks).for_each(|(mut outs, x)| {
                    for (w, out) in ws.iter().zip(outs.outer_iter_mut()) {
                        w.gemm_tile(x, first, out); // (x rows, block)
                    }
                    then(first, outs);
                });
            }
            _ => {
                for (w, out) in ws.iter().zip(blocks.outer_iter_mut()) {
                    w.streamed_block(xs, &qx, split, first, out); // (T, block)
                }
                then(first, blocks);
            }
        }
    });
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

/// [`each_pair`] with [`dot_bf16_reference`](crate::kernels::simd::dot_bf16_reference) for bf16 weights, bit-identical, in
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
/// each pair's sum finished as [`dot_bf16_reference`](crate::kernels::simd::dot_bf16_reference) finishes it.
#[inline(always)]
fn row_group<const R: usize>(x: &[f32], w: &[bf16], first: usize, scratch: &mut TileScratch, out: &mut ArrayViewMut2<f32>) {
    let cols = w.len() / R;
    let chunks = cols / 32;
    let w_rows: [&[bf16]; R] = array_of(|r| &w[r * cols..(r + 1) * cols]);
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
                let w_block: [&[[bf16; 32]]; R] = array_of(|r| &w_rows[r].as_chunks::<32>().0[block.clone()]);
                tile_and_rest(panel.start, x_block, w_block, bf16_to_f32, tiles, rest);
            } else {
                for (wide, w) in scratch.widened.iter_mut().zip(w_rows) {
                    for (wide, w) in wide.iter_mut().zip(&w.as_chunks::<32>().0[block.clone()]) {
                        for k in 0..32 {
                            wide[k] = bf16_to_f32(w[k]);
                        }
                    }
                }
                let w_block: [&[Lanes]; R] = array_of(|r| &scratch.widened[r][..block.len()]);
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
        accumulate_dot_tile(array_of(|i| x_block(b + i)), w, widen, tile);
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

    fn sample(rows: usize, cols: usize, salt: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 31 + j * 7) as f32 * 0.37 + salt).sin())
    }

    /// A prefill tile widens its weights a slab of GEMM_SLAB columns at a time: its product is
    /// one GEMM over all the columns of the widened weights, bit for bit.
    #[test]
    fn a_tile_widened_slab_by_slab_equals_one_gemm() {
        let cols = 2 * GEMM_SLAB + 88; // two whole slabs and a short one
        let w = sample(40, cols, 0.3);
        let w = Matrix::new(40, cols, Elements::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect())).unwrap();
        let x = sample(24, cols, 0.9);
        let mut want = Array2::zeros((24, 30));
        general_mat_mul(1.0, &x, &w.rows_f32(5, 30).t(), 0.0, &mut want); // weight rows 5..35
        let mut got = Array2::from_elem((24, 30), f32::NAN); // the first slab sets every element
        w.gemm_tile(x.view(), 5, got.view_mut());
        assert_eq!(got, want);
    }

    /// Prefill tiles are whole kernel tiles; on 1 to 16 threads they split the 1.5B's big
    /// products at 512 rows evenly in at most two rounds, and pack little: the rows of x and of
    /// the weights the tiles pack (per column) are at most 1.3 % of the product's multiply-adds.
    /// The rule before (4 blocks a thread, each with all the rows of x) packed 1.8–1.9 % for
    /// dt_proj, out_proj and down_proj on 16 threads; these tiles pack 0.6–1.3 %.
    #[test]
    fn prefill_tiles_are_whole_kernel_tiles_even_and_square() {
        let shapes = [("in_proj", 8960), ("x_proj", 132), ("dt_proj", 3200), ("out_proj", 1600), ("up ∥ gate", 5504), ("down_proj", 1600)];
        for (name, rows) in shapes {
            for t in [2, 8, 64, 100, 512] {
                for threads in [1, 2, 3, 4, 8, 16, 32] {
                    let Split::Gemm { block, x_rows } = gemm_tiles(t, rows, threads) else { panic!("a prefill split") };
                    let case = format!("{name} ({rows} rows), {t} rows of x, {threads} threads: tiles of {x_rows} × {block}");
                    assert!(block % KERNEL_TILE == 0 && x_rows % KERNEL_TILE == 0, "{case}");
                    assert!(block < rows + KERNEL_TILE && x_rows < t + KERNEL_TILE, "{case}");
                    if rows >= 1600 && t == 512 && threads <= 16 {
                        let tiles = t.div_ceil(x_rows) * rows.div_ceil(block);
                        let rounds = tiles.div_ceil(threads);
                        let even_share = (t * rows) as f64 / threads as f64; // multiply-adds a column
                        assert!(rounds <= GEMM_TASKS_PER_THREAD, "{case}: {tiles} tiles");
                        assert!((rounds * x_rows * block) as f64 <= 1.05 * even_share, "{case}: {tiles} tiles");
                        assert!((tiles * (x_rows + block)) as f64 <= 0.013 * (t * rows) as f64, "{case}: {tiles} tiles");
                    }
                }
            }
        }
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

    /// A short prompt's product ([`RowKind::Chunk`], at most [`MAX_ROWWISE_CHUNK`] rows) is its
    /// rows' one at a time, bit for bit, with float weights; a longer one goes through GEMM and
    /// matches the reference to f32 rounding. Quantized weights keep f32 inputs for any prompt:
    /// a short one matches the dequantized reference too, not the int8 products of decoding.
    #[test]
    fn a_short_prompt_is_its_rows_one_at_a_time() {
        let (rows, cols) = (67, 100);
        let w32 = sample(rows, cols, 0.3);
        let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let float = [Matrix::from_f32(w32.clone()), Matrix::new(rows, cols, Elements::Bf16(as_bf16.into())).unwrap()];
        for w in &float {
            for t in [2, 5, MAX_ROWWISE_CHUNK, MAX_ROWWISE_CHUNK + 1] {
                let x = sample(t, cols, 1.1);
                let mut got = Array2::zeros((0, 0));
                w.matmul_t(x.view(), &mut got);
                let alone = |b: usize| {
                    let mut one = Array2::zeros((0, 0));
                    w.matmul_t(x.slice(s![b..b + 1, ..]), &mut one);
                    one.row(0).to_owned()
                };
                let same = (0..t).all(|b| got.row(b).iter().zip(&alone(b)).all(|(g, a)| g.to_bits() == a.to_bits()));
                assert_eq!(same, t <= MAX_ROWWISE_CHUNK, "{t} rows: row by row {same}");
                let err = (&got - &matmul_t_reference(x.view(), w)).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "{t} rows: max |Δ| = {err}");
            }
        }
        for kind in QuantType::ALL {
            let w = Matrix::from_f32(w32.clone()).quantize(kind).unwrap();
            let x = sample(3, cols, 1.1);
            let mut got = Array2::zeros((0, 0));
            w.matmul_t(x.view(), &mut got);
            let err = (&got - &matmul_t_reference(x.view(), &w)).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err < 1e-5, "{kind}, 3 rows: max |Δ| = {err} from the dequantized product");
        }
    }

    /// A function that is not idempotent and depends on the column: applying it twice, to the
    /// wrong column or not at all shows in the result.
    fn finish(first: usize, mut block: ArrayViewMut2<f32>) {
        for mut row in block.rows_mut() {
            row.iter_mut().enumerate().for_each(|(j, v)| *v = *v * 3.0 + (first + j) as f32);
        }
    }

    #[test]
    fn each_task_finishes_its_block_once() {
        let w32 = sample(150, 37, 0.2);
        let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        for w in [Matrix::from_f32(w32.clone()), Matrix::new(150, 37, Elements::Bf16(as_bf16.into())).unwrap()] {
            // One row, a batch row-wise, GEMM, and GEMM with the rows of x split too.
            for (t, kind) in [(1, RowKind::Chunk), (1, RowKind::OnePerSequence), (5, RowKind::OnePerSequence), (70, RowKind::Chunk), (200, RowKind::Chunk)] {
                let x = sample(t, 37, 0.9);
                let (mut want, mut got) = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
                w.matmul_t_of(x.view(), kind, &mut want);
                finish(0, want.view_mut());
                w.matmul_t_then(x.view(), kind, &mut got, finish);
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "T = {t}, {kind:?}: the product then the function differs from the tasks finishing their blocks");
            }
        }
    }

    #[test]
    fn a_pair_of_products_is_each_product_then_the_function() {
        let (a32, b32) = (sample(150, 37, 0.4), sample(150, 37, 1.3));
        let bf = |m: &Array2<f32>| Matrix::new(150, 37, Elements::Bf16(m.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>().into())).unwrap();
        for (a, b) in [(Matrix::from_f32(a32.clone()), Matrix::from_f32(b32.clone())), (bf(&a32), bf(&b32))] {
            for (t, kind) in [(1, RowKind::Chunk), (3, RowKind::OnePerSequence), (70, RowKind::Chunk), (200, RowKind::Chunk)] {
                let x = sample(t, 37, 0.5);
                let (mut want_a, mut want_b) = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
                a.matmul_t_of(x.view(), kind, &mut want_a);
                b.matmul_t_of(x.view(), kind, &mut want_b);
                want_a.zip_mut_with(&want_b, |a, &b| *a = *a * 2.0 - b * b);
                let mut got = Array3::zeros((0, 0, 0));
                Matrix::pair_matmul_t_then(&a, &b, x.view(), kind, &mut got, |mut a, b| {
                    a.zip_mut_with(&b, |a, &b| *a = *a * 2.0 - b * b);
                });
                let same = got.index_axis(Axis(0), 0).iter().zip(&want_a).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same && got.index_axis(Axis(0), 1) == want_b, "T = {t}, {kind:?}: the pair differs from the products apart");
            }
        }
    }

    /// A decode step's products of the 1.5B, on 2 to 32 threads: every task reads about
    /// MIN_SHARED_TASK_BYTES or more, and up to 16 threads the slowest thread reads at most one
    /// weight row a round more than an even share (x_proj and dt_proj once made 4 and 3 tasks on
    /// 16 threads); beyond, a matrix too small for every thread makes one round of tasks.
    #[test]
    fn decode_products_balance_on_many_threads() {
        let shapes = [("in_proj", 8000, 1600, 1), ("x_proj", 132, 3200, 1), ("dt_proj", 3200, 100, 1), ("out_proj", 1600, 3200, 1)];
        let shapes = shapes.into_iter().chain([("up ∥ gate", 5504, 1600, 2), ("down_proj", 1600, 5504, 1), ("lm_head", 32001, 1600, 1)]);
        for (name, rows, cols, matrices) in shapes {
            let w = Matrix::new(rows, cols, Elements::Bf16(vec![bf16::ZERO; rows * cols].into())).unwrap();
            for threads in [2, 3, 4, 8, 16, 32] {
                for (t, kind) in [(1, RowKind::Chunk), (4, RowKind::OnePerSequence)] {
                    let (Split::OneRow { block } | Split::RowWise { block }) = w.split(rows, t, kind, matrices, threads) else {
                        panic!("{name}: a decode step's product is one-row or row-wise")
                    };
                    let (tasks, task_bytes) = (rows.div_ceil(block), block * cols * 2 * matrices);
                    let rounds = tasks.div_ceil(threads);
                    let case = format!("{name} on {threads} threads, {t} rows: {tasks} tasks of {block} rows");
                    assert!(task_bytes > MIN_SHARED_TASK_BYTES / 2, "{case}"); // evened out, so a little less
                    // Up to 16 threads even dt_proj (625 KiB) has 39 KiB a thread: all balance.
                    let even = rounds * block <= rows.div_ceil(threads) + rounds;
                    assert!(even || (threads > 16 && rounds == 1), "{case}");
                }
            }
        }
    }

    /// A quantized matrix: one-row and row-wise products are the integer kernel's
    /// ([`quant::dots_reference`] on the input quantized per block), bit for bit, for every row of
    /// a batch; prefill (GEMM) multiplies the dequantized weights, as the plain reference does.
    #[test]
    fn quantized_products_are_the_integer_reference_and_prefill_the_dequantized_one() {
        for (rows, cols) in [(150, 37), (67, 100), (7, 288)] {
            let w32 = sample(rows, cols, 0.3);
            for kind in QuantType::ALL {
                let w = Matrix::from_f32(w32.clone()).quantize(kind).unwrap();
                let q = w.quantized().unwrap();
                assert_eq!(w.bytes(), rows.div_ceil(8) * Quantized::blocks_per_row(cols) * Quantized::tile_bytes(kind));
                for batch in [1, 3, 16] {
                    let x = sample(batch, cols, 1.1);
                    let mut got = Array2::zeros((0, 0));
                    w.matmul_t_of(x.view(), if batch == 1 { RowKind::Chunk } else { RowKind::OnePerSequence }, &mut got);
                    for (b, got) in got.rows().into_iter().enumerate() {
                        let mut qx = QuantizedRow::default();
                        qx.quantize(x.row(b).as_slice().unwrap());
                        let mut want = vec![0f32; rows];
                        quant::dots_reference(q, &qx, 0, &mut want);
                        let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                        assert!(same, "{kind} {rows}×{cols}, batch {batch}, row {b}: differs from the integer reference");
                    }
                }
                let x = sample(70, cols, 0.7);
                let want = matmul_t_reference(x.view(), &w);
                let mut got = Array2::zeros((0, 0));
                w.matmul_t(x.view(), &mut got);
                let err = (&got - &want).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "{kind} {rows}×{cols}, prefill: max |Δ| = {err}");
            }
        }
    }

    /// A product over some of the weight rows (a layer's in_proj, split between its attention
    /// and SSM heads) is those columns of the whole product, bit for bit, in every dtype and for
    /// one row, a batch and a prompt; ranges that start inside a quantized group of 8 rows too.
    #[test]
    fn a_product_over_some_rows_is_those_columns_of_the_whole() {
        let (rows, cols) = (150, 100);
        let w32 = sample(rows, cols, 0.3);
        let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let as_f16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let mut matrices = vec![
            ("f32", Matrix::from_f32(w32.clone())),
            ("bf16", Matrix::new(rows, cols, Elements::Bf16(as_bf16.into())).unwrap()),
            ("f16", Matrix::new(rows, cols, Elements::F16(as_f16.into())).unwrap()),
        ];
        matrices.extend(QuantType::ALL.map(|kind| (kind.name(), Matrix::from_f32(w32.clone()).quantize(kind).unwrap())));
        let bias = ndarray::Array1::from_shape_fn(rows, |i| i as f32 * 0.25 - 3.0);
        for (dtype, w) in matrices {
            let linear = crate::checkpoint::weights::Linear { weight: w, bias: Some(bias.clone()) };
            for (t, kind) in [(1, RowKind::Chunk), (5, RowKind::OnePerSequence), (70, RowKind::Chunk)] {
                let x = sample(t, cols, 1.1);
                let mut whole = Array2::zeros((0, 0));
                linear.forward(x.view(), kind, &mut whole);
                for part in [0..40, 40..150, 13..101, 0..150, 149..150, 7..7] {
                    let mut got = Array2::zeros((0, 0));
                    let got = linear.rows_forward(part.clone(), x.view(), kind, &mut got); // (t, part)
                    let want = whole.slice(s![.., part.clone()]);
                    assert_eq!(got.dim(), want.dim());
                    let same = got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{dtype}, {t} rows: weight rows {part:?} differ from the whole product's");
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
