//! Tensor values owned in memory, or read in place from a memory-mapped checkpoint file.
//!
//! A published checkpoint stores its bf16 weights little-endian, each tensor aligned to its
//! element size. On a little-endian machine those bytes already are a `[bf16]`, so the weights
//! can be used straight from the file's mapping instead of being copied (3 GB for Hymba-1.5B).
//! The page cache is then the weight memory: a second start finds it there, and processes that
//! map the same file share it. [`Values`] is either such a view or an owned `Vec` (values that had
//! to be converted, or were made in memory); both read as a slice.

use memmap2::Mmap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Element types that are plain bytes: no padding, every bit pattern a valid value, and on a
/// little-endian machine exactly their little-endian encoding.
///
/// # Safety
/// Implement only for such types: [`Values`] reads them straight from file bytes.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

// SAFETY: IEEE floats of 4 and 2 bytes (half's types are transparent `u16`s): no padding, and
// every bit pattern is a value (NaNs included).
unsafe impl Plain for f32 {}
// SAFETY: a byte: every bit pattern is a value.
unsafe impl Plain for u8 {}
unsafe impl Plain for half::bf16 {}
unsafe impl Plain for half::f16 {}

/// Values of one element type: owned, or `len` of them at byte `offset` of a read-only mapping.
pub enum Values<T> {
    Owned(Vec<T>),
    Mapped { map: Arc<Mmap>, offset: usize, len: usize },
}

impl<T: Plain> Values<T> {
    /// `len` values at byte `offset` of `map`, read in place; `None` when they cannot be: the
    /// range is not inside the map, the offset is not aligned for `T`, or this machine is
    /// big-endian (the file's little-endian bytes would then need converting).
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Values<T>> {
        let end = len.checked_mul(size_of::<T>()).and_then(|bytes| offset.checked_add(bytes))?;
        let aligned = (map.as_ptr() as usize).wrapping_add(offset).is_multiple_of(align_of::<T>());
        (cfg!(target_endian = "little") && end <= map.len() && aligned).then_some(Values::Mapped { map, offset, len })
    }

    /// Whether the values are read from a mapped file rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Values::Mapped { .. })
    }
}

impl<T: Plain> Deref for Values<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Values::Owned(values) => values,
            // SAFETY: `mapped` checked that the range lies inside the mapping and is aligned for
            // `T`, and that the machine is little-endian; `T: Plain` makes any bytes a valid
            // `[T]`. The mapping is read-only and lives as long as `self` holds its `Arc`. (As
            // with every mmap, a process rewriting the file in place could change the values
            // under us; model files are replaced, not rewritten, by their writers.)
            Values::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset).cast::<T>(), *len)
            },
        }
    }
}

impl<T> From<Vec<T>> for Values<T> {
    fn from(values: Vec<T>) -> Values<T> {
        Values::Owned(values)
    }
}

impl<T> FromIterator<T> for Values<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Values<T> {
        Values::Owned(iter.into_iter().collect())
    }
}

/// A mapped clone shares the mapping; an owned one copies.
impl<T: Clone> Clone for Values<T> {
    fn clone(&self) -> Values<T> {
        match self {
            Values::Owned(values) => Values::Owned(values.clone()),
            Values::Mapped { map, offset, len } => Values::Mapped { map: map.clone(), offset: *offset, len: *len },
        }
    }
}

/// Equal when they hold the same values, wherever they are.
impl<T: Plain + PartialEq> PartialEq for Values<T> {
    fn eq(&self, other: &Values<T>) -> bool {
        **self == **other
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Values<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_mapped() { "Mapped" } else { "Owned" };
        write!(f, "{place}({} values)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn mapped_values_read_the_file_bytes_in_place() {
        let path = std::env::temp_dir().join(format!("hymba-ref-values-{}", std::process::id()));
        let values = [1.5f32, -2.0, 3.25];
        let mut bytes = vec![0u8; 2]; // a two-byte prefix: f32s start unaligned at 2
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        let map = Arc::new(unsafe { Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap());
        std::fs::remove_file(&path).unwrap();

        assert!(Values::<f32>::mapped(map.clone(), 2, 3).is_none(), "unaligned for f32");
        let halves = Values::<bf16>::mapped(map.clone(), 2, 6).unwrap();
        assert!(halves.is_mapped());
        assert_eq!(halves[1], bf16::from_bits(u16::from_le_bytes([bytes[4], bytes[5]])));
        assert_eq!(halves.clone(), halves);
        assert!(Values::<bf16>::mapped(map.clone(), 2, 7).is_none(), "past the end");
        assert!(Values::<bf16>::mapped(map, usize::MAX - 1, 2).is_none(), "overflow");

        let owned: Values<f32> = values.to_vec().into();
        assert!(!owned.is_mapped());
        assert_eq!(&owned[..], &values);
    }
}
