//! The Hymba model, one file per paper concept.
//!
//! Functions that produce a tensor write it into an `out` buffer supplied by the caller and
//! return a view of it: `let h = rms_norm(x, w, eps, &mut buf.h); // (T, H)`. The buffers live
//! with the sequence ([`crate::cache::HybridCache::buffers`]) and are reshaped only when a shape
//! changes ([`shaped`]), so a decode step, whose shapes repeat, allocates nothing.
//!
//! [`plain`] is the exception: the whole forward pass in one plain, allocating file, the one to
//! read first, and the truth the rest is tested against.

pub mod attention;
pub mod fusion;
pub mod hymba;
pub mod layer;
pub mod mlp;
pub mod norm;
pub mod plain;
pub mod rope;
pub mod ssm;

pub use hymba::{ForwardTrace, Hymba};

use ndarray::{Array, Dimension, IntoDimension};

/// `buf` with the shape `shape`. When the shape changes, its allocation is kept if it is large
/// enough (layers that own K/V and layers that reuse it take turns with different widths), and
/// the contents are zeroed; otherwise they are left as they were: every caller overwrites them.
pub fn shaped<D: Dimension>(buf: &mut Array<f32, D>, shape: impl IntoDimension<Dim = D>) -> &mut Array<f32, D> {
    let shape = shape.into_dimension();
    if buf.raw_dim() != shape {
        let (mut data, _) = std::mem::take(buf).into_raw_vec_and_offset();
        data.clear();
        data.resize(shape.size(), 0.0); // reallocates only to grow
        *buf = Array::from_shape_vec(shape, data).expect("as many elements as the shape");
    }
    buf
}
