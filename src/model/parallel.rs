//! Row-wise and element-wise work over the rows of a pass, in parallel when there are enough
//! rows to pay for it (prefill, a batch of sequences decoding together), on the calling thread
//! otherwise (decoding one sequence: a parallel region costs a few microseconds, more than the
//! work of one row).
//!
//! Each element is computed by the same arithmetic either way, so the results are identical;
//! only which thread computes a row changes.

use ndarray::{ArrayView, ArrayViewMut, ArrayViewMut2, Axis, Dimension, RemoveAxis, Zip};
use rayon::prelude::*;

/// Passes of at least this many rows run their row-wise work in parallel. A row of the 1.5B
/// (1,600 to 5,504 values: a norm, a gate, a residual add) takes 1–5 µs, so 8 rows split in two
/// outweigh a parallel region (a batch of 16 sequences decoding together ran them on one thread).
pub const PARALLEL_ROWS: usize = 8;

/// Rows per parallel task, at least.
const ROWS_PER_TASK: usize = 2;

/// `f(t, row t of out)` for every row of `out` (T, ...): over tasks of rows when T ≥ [`PARALLEL_ROWS`].
pub fn for_each_row<D: RemoveAxis>(
    mut out: ArrayViewMut<f32, D>,
    f: impl Fn(usize, ArrayViewMut<f32, D::Smaller>) + Sync + Send,
) {
    if out.len_of(Axis(0)) >= PARALLEL_ROWS {
        out.axis_iter_mut(Axis(0)).into_par_iter().with_min_len(ROWS_PER_TASK).enumerate().for_each(|(t, row)| f(t, row));
    } else {
        out.axis_iter_mut(Axis(0)).enumerate().for_each(|(t, row)| f(t, row));
    }
}

/// `f(row)` for every row of `x` (T, width), each as a slice (for the vectorised functions of
/// [`crate::kernels::simd`]): over tasks of rows when T ≥ [`PARALLEL_ROWS`].
pub fn map_rows(x: ArrayViewMut2<f32>, f: impl Fn(&mut [f32]) + Sync + Send) {
    for_each_row(x, |_, mut row| f(row.as_slice_mut().expect("a row of a standard-layout array")));
}

/// `f(a, b)` for every pair of elements of `a` and `b` (T, width): in parallel when T ≥ [`PARALLEL_ROWS`].
pub fn zip_with<D: Dimension>(a: ArrayViewMut<f32, D>, b: ArrayView<f32, D>, f: impl Fn(&mut f32, f32) + Sync + Send) {
    let parallel = a.shape().first().is_some_and(|&t| t >= PARALLEL_ROWS);
    let zip = Zip::from(a).and(b);
    match parallel {
        true => zip.par_for_each(|a, &b| f(a, b)),
        false => zip.for_each(|a, &b| f(a, b)),
    }
}
