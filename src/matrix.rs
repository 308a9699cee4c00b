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

use crate::simd::{bf16_to_f32, dot, dot_bf16};
use half::{bf16, f16};
use crate::buffer::shaped;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};
use rayon::prelude::*;
use std::sync::Arc;

/// Tensor elements in their stored dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
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

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

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
        out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let r = task * ROWS_PER_TASK + i;
                let w_row = r * self.cols..(r + 1) * self.cols;
                *o = match &*self.data {
                    Elements::F32(v) => dot(x, &v[w_row]),
                    Elements::Bf16(v) => dot_bf16(x, &v[w_row]),
                    Elements::F16(v) => dot_f16(x, &v[w_row]),
                };
            }
        });
    }

    /// For many rows of `x` (prefill): blocks of weight rows widened to f32 once, each
    /// multiplied by GEMM straight into its columns of `out`; when there are fewer blocks than a
    /// few per thread (narrow matrices, many threads), the rows of `x` are split too, so the tasks
    /// balance on any number of threads. out: (T, rows)
    fn matmul_t_gemm(&self, x: ArrayView2<f32>, out: &mut Array2<f32>) {
        let tasks = 4 * rayon::current_num_threads();
        let block = self.rows.div_ceil(tasks).max(ROWS_PER_TASK); // weight rows per block
        let x_rows = x.nrows().div_ceil(tasks.div_ceil(self.rows.div_ceil(block))).max(ROWS_PER_TASK); // rows of x per task
        out.axis_chunks_iter_mut(Axis(1), block).into_par_iter().enumerate().for_each(|(b, mut out)| {
            let w = self.rows_f32(b * block, out.ncols()); // (block, cols)
            let x_chunks = x.axis_chunks_iter(Axis(0), x_rows).into_par_iter();
            out.axis_chunks_iter_mut(Axis(0), x_rows).into_par_iter().zip(x_chunks).for_each(|(mut out, x)| {
                general_mat_mul(1.0, &x, &w.t(), 0.0, &mut out); // (x_rows, block)
            });
        });
    }
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

    #[test]
    fn both_paths_match_the_reference_in_every_dtype() {
        let w32 = sample(150, 37, 0.1); // rows not a multiple of a task, cols not of 8
        let as_bf16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let as_f16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        for w in [
            Matrix::from_f32(w32.clone()),
            Matrix::new(150, 37, Elements::Bf16(as_bf16)).unwrap(),
            Matrix::new(150, 37, Elements::F16(as_f16)).unwrap(),
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
    fn bf16_is_kept_at_two_bytes_and_converts_exactly() {
        let w = Matrix::new(1, 2, Elements::Bf16(vec![bf16::from_bits(0x3F80), bf16::from_bits(0xC000)])).unwrap();
        assert_eq!(w.bytes(), 4);
        assert_eq!(w.to_f32().row(0).to_vec(), vec![1.0, -2.0]);
        assert!(Matrix::new(2, 2, Elements::F32(vec![0.0; 3])).is_none());
    }
}
