//! Reusable output buffers: functions that produce a tensor write it into a caller's buffer,
//! shaped here, and return a view of it (`let h = rms_norm(x, w, eps, &mut buf.h); // (T, H)`).
//! A buffer keeps its allocation from call to call, so once the shapes repeat (decoding), a pass
//! allocates nothing.

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
