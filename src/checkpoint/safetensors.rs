//! Reading and writing the safetensors format, validating everything a file claims.
//!
//! # The format
//!
//! A safetensors file (<https://github.com/huggingface/safetensors>) has three parts:
//!
//! ```text
//! +----------------+--------------------------+------------------------------------+
//! | N: u64, LE     | header: N bytes of JSON  | data buffer: the rest of the file  |
//! +----------------+--------------------------+------------------------------------+
//! 0                8                          8 + N                                end
//! ```
//!
//! The header is one UTF-8 JSON object. Every key but one names a tensor:
//!
//! ```json
//! {
//!   "__metadata__": {"format": "pt"},
//!   "model.norm.weight": {"dtype": "BF16", "shape": [64], "data_offsets": [0, 128]}
//! }
//! ```
//!
//! * `dtype` is the element type, spelled as in [`Dtype::name`] (`F32`, `BF16`, `I64`, ...).
//! * `shape` lists the dimensions; the elements are stored row-major ("C order"), little-endian.
//!   An empty shape is a scalar (one element); a zero dimension makes an empty tensor.
//! * `data_offsets` is `[begin, end)` in bytes, **relative to the start of the data buffer**
//!   (not to the start of the file).
//! * The optional `__metadata__` maps strings to strings (free-form; PyTorch writes `format`).
//!
//! Writers pad the header with spaces to a multiple of 8 bytes so that the data buffer, and with it
//! every tensor, starts suitably aligned for memory-mapped access.
//!
//! # Validation
//!
//! A file is untrusted input. [`SafetensorsFile::open`] checks, before handing out a single byte,
//! the same rules as the reference implementation (`safetensors` crate, `read_metadata` and
//! `Metadata::validate`): the header length is at most 100 MB and fits in the file; the header is
//! UTF-8 JSON; each tensor's byte length equals `product(shape) * dtype size` (computed without
//! overflow); and the tensors, sorted by offset, tile the data buffer exactly — the first starts
//! at 0, each starts where the previous ended, the last ends at the end of the file. Header order
//! does not matter, and unknown fields inside an entry are ignored, as there. We additionally
//! reject repeated keys, which JSON parsers (the reference's included) silently merge.
//! After that every slice we take is in bounds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::ops::Deref;
use std::path::Path;

use half::{bf16, f16};

use crate::kernels::matrix::Elements;
use memmap2::Mmap;
use std::sync::Arc;
use crate::base::values::{Plain, Values};
#[cfg(unix)]
use memmap2::UncheckedAdvice;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::json_text::{brief, brief_text};
use crate::base::json_scan::{count_keys, first_duplicate_key};
use crate::base::error::{Error, ErrorKind, Result};

/// The largest header accepted, as in the reference implementation: 100 MB.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The most tensors one file, or one sharded checkpoint, may hold (Hymba-1.5B has a few hundred; the limit
/// keeps a header of millions of tiny entries from costing memory and time before it is refused).
pub const MAX_TENSORS: usize = 100_000;

/// The most bytes of JSON one tensor's entry may take (a real one takes about 80).
pub const MAX_ENTRY_BYTES: usize = 64 << 10;

/// The most entries `__metadata__` may hold (PyTorch writes one).
pub const MAX_METADATA_ENTRIES: usize = 4096;

/// The key of the free-form string map in the header; every other key is a tensor.
pub const METADATA_KEY: &str = "__metadata__";

/// Element types a safetensors file may declare, spelled as in the file.
///
/// Only `F32`, `F16` and `BF16` convert to `f32` and only `I64` and `I32` to `i64`; the others are
/// recognised so that an error can say which dtype a tensor has. The sub-byte types of newer
/// files (`F4`, `F6_E2M3`, `F6_E3M2`) are reported as unknown.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// Every dtype, in the reference implementation's order (increasing alignment).
    pub const ALL: [Dtype; 16] = [
        Dtype::BOOL,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The dtype spelled `name` in a header, e.g. `"BF16"`.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The spelling in a header.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Dtype::BOOL | Dtype::U8 | Dtype::I8 => 1,
            Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F8_E8M0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One header entry, validated: `data_offsets` lie in the data buffer and match dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// `[begin, end)` in bytes, relative to the start of the data buffer.
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Number of elements of a validated entry: the product of the shape (1 for a scalar).
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of data bytes of a validated entry.
    pub fn byte_len(&self) -> usize {
        self.data_offsets.1 - self.data_offsets.0
    }
}

/// The bytes of a file: memory-mapped, or owned (for tests and fuzzing).
enum Bytes {
    /// Shared with the tensors read in place from it ([`Values::Mapped`]).
    Mapped(Arc<Mmap>),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

/// A validated safetensors file: its bytes and its parsed header.
pub struct SafetensorsFile {
    origin: String,
    bytes: Bytes,
    /// Where the data buffer starts in `bytes`: 8 + header length.
    data_start: usize,
    /// Sorted by `data_offsets`, i.e. in the order the data lies in the file.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

/// Shows the origin and tensor count, not the bytes.
impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tensors = self.tensors.len();
        f.debug_struct("SafetensorsFile")
            .field("origin", &self.origin)
            .field("tensors", &tensors)
            .finish()
    }
}

/// What the header says, once validated.
struct Header {
    data_start: usize,
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Memory-map and validate the file at `path`; errors name the path.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, _) = crate::base::files::open_regular(path, crate::base::files::WEIGHTS)?;
        // SAFETY: the mapping is read-only. As with every mmap, another process truncating or
        // rewriting the file while we hold it could change or remove the bytes under us; model
        // files are not modified in place (our own writer replaces files by renaming).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "memory-map", e))?;
        Self::validate(Bytes::Mapped(Arc::new(map)), path.display().to_string())
    }

    /// Validate a file held in memory; `origin` names it in error messages.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Self> {
        Self::validate(Bytes::Owned(bytes), origin.to_string())
    }

    fn validate(bytes: Bytes, origin: String) -> Result<Self> {
        let header = parse(&bytes, &origin)?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile {
            origin,
            bytes,
            data_start: header.data_start,
            tensors: header.tensors,
            by_name,
            metadata: header.metadata,
        })
    }

    /// The path or name given when opening, as used in error messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// All tensors in the order their data lies in the file.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.iter()
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` map (empty if the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of tensor `name`.
    pub fn bytes_of(&self, name: &str) -> Option<&[u8]> {
        let (begin, end) = self.get(name)?.data_offsets;
        self.bytes.get(self.data_start + begin..self.data_start + end)
    }

    /// Shape and values of an `F32`, `F16` or `BF16` tensor, as `f32`.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.lookup(name)?;
        let values = match info.dtype {
            Dtype::F32 => decode(bytes, f32::from_le_bytes),
            Dtype::F16 => decode(bytes, |b| f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => decode(bytes, |b| bf16::from_le_bytes(b).to_f32()),
            other => {
                return Err(self.unconvertible(name, other, "f32 (only F32, F16 and BF16 can)"))
            }
        };
        self.release(info);
        Ok((info.shape.clone(), values))
    }

    /// Shape and values of an `F32`, `F16` or `BF16` tensor, kept in that dtype: read in place
    /// from the file's mapping when the file is mapped and the tensor aligned for its dtype
    /// (the writer aligns every tensor; see [`Values`]), else copied.
    pub fn to_elements(&self, name: &str) -> Result<(Vec<usize>, Elements)> {
        let (info, bytes) = self.lookup(name)?;
        let values = match info.dtype {
            Dtype::F32 => Elements::F32(self.values(info, bytes, f32::from_le_bytes)),
            Dtype::F16 => Elements::F16(self.values(info, bytes, f16::from_le_bytes)),
            Dtype::BF16 => Elements::Bf16(self.values(info, bytes, bf16::from_le_bytes)),
            other => {
                return Err(self.unconvertible(name, other, "f32 (only F32, F16 and BF16 can)"))
            }
        };
        Ok((info.shape.clone(), values))
    }

    /// A tensor's values in place in the mapping if they can be, else decoded (and the mapped
    /// pages released).
    fn values<const N: usize, T: Plain>(&self, info: &TensorInfo, bytes: &[u8], convert: impl Fn([u8; N]) -> T) -> Values<T> {
        if let Bytes::Mapped(map) = &self.bytes {
            let offset = self.data_start + info.data_offsets.0;
            if let Some(values) = Values::mapped(map.clone(), offset, info.num_elements()) {
                return values;
            }
        }
        let values = decode(bytes, convert).into();
        self.release(info);
        values
    }

    /// Shape, dtype and stored little-endian bytes of any tensor (a quantized matrix's packed
    /// values): in place in the mapping when the file is mapped, else copied.
    pub fn to_bytes(&self, name: &str) -> Result<(Vec<usize>, Dtype, Values<u8>)> {
        let (info, bytes) = self.lookup(name)?;
        if let Bytes::Mapped(map) = &self.bytes {
            if let Some(values) = Values::mapped(map.clone(), self.data_start + info.data_offsets.0, bytes.len()) {
                return Ok((info.shape.clone(), info.dtype, values));
            }
        }
        Ok((info.shape.clone(), info.dtype, bytes.to_vec().into()))
    }

    /// Shape and values of an `I64` or `I32` tensor, as `i64`.
    pub fn to_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (info, bytes) = self.lookup(name)?;
        let values = match info.dtype {
            Dtype::I64 => decode(bytes, i64::from_le_bytes),
            Dtype::I32 => decode(bytes, |b| i64::from(i32::from_le_bytes(b))),
            other => return Err(self.unconvertible(name, other, "i64 (only I64 and I32 can)")),
        };
        Ok((info.shape.clone(), values))
    }

    /// Tell the kernel we are done with a tensor's mapped pages, once they are copied. They
    /// leave this process's resident memory (the file stays in the page cache), so converting
    /// a checkpoint peaks near the size of the weights, not twice it.
    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = &self.bytes {
            let (begin, end) = info.data_offsets;
            // SAFETY: the mapping is a read-only shared view of a file: a page dropped here is
            // faulted back in from the file, with the same contents, when anything reads it
            // again (a neighbouring tensor read in place may share the range's first or last
            // page). A failure only means the pages stay resident.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, self.data_start + begin, end - begin) };
        }
    }

    /// For a tensor about to be copied out whole (a quantized matrix, packed into tiles): ask
    /// the kernel to map all of its pages at once, far cheaper than a page fault for each 4 KiB
    /// as the copy reaches it. Then [`SafetensorsFile::done_with`] after the copy.
    pub fn about_to_copy(&self, name: &str) {
        #[cfg(target_os = "linux")]
        if let (Bytes::Mapped(map), Some(info)) = (&self.bytes, self.get(name)) {
            let (begin, end) = info.data_offsets;
            // A failure (a kernel before 5.14) only means the pages are faulted in one by one.
            let _ = map.advise_range(memmap2::Advice::PopulateRead, self.data_start + begin, end - begin);
        }
    }

    /// A tensor copied out whole is no longer needed in place: its mapped pages leave this
    /// process's resident memory (see `release`).
    pub fn done_with(&self, name: &str) {
        if let Some(info) = self.get(name) {
            self.release(info);
        }
    }

    fn lookup(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        match (self.get(name), self.bytes_of(name)) {
            (Some(info), Some(bytes)) => Ok((info, bytes)),
            _ => Err(Error::new(
                ErrorKind::MissingTensor,
                format!("{}: no tensor named '{name}'", self.origin),
            )),
        }
    }

    fn unconvertible(&self, name: &str, dtype: Dtype, target: &str) -> Error {
        let message = format!(
            "{}: tensor '{name}' has dtype {dtype}, which cannot be converted to {target}",
            self.origin
        );
        Error::new(ErrorKind::UnknownDtype, message)
    }
}

/// Little-endian elements of `N` bytes each, converted by `convert`.
fn decode<const N: usize, T>(bytes: &[u8], convert: impl Fn([u8; N]) -> T) -> Vec<T> {
    let element = |chunk: &[u8]| {
        let mut array = [0u8; N];
        array.copy_from_slice(chunk);
        convert(array)
    };
    bytes.chunks_exact(N).map(element).collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

fn corrupt(origin: &str, message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::CorruptSafetensors, format!("{origin}: {message}"))
}

fn parse(bytes: &[u8], origin: &str) -> Result<Header> {
    let (text, data_start) = split_header(bytes, origin)?;
    let (mut tensors, metadata) = parse_entries(text, origin)?;
    let data_len = bytes.len() - data_start;
    for tensor in &tensors {
        check_in_buffer(tensor, data_len, origin)?;
    }
    tensors.sort_by_key(|t| t.data_offsets);
    check_tiling(&tensors, data_len, origin)?;
    Ok(Header { data_start, tensors, metadata })
}

/// The header text and the offset of the data buffer.
fn split_header<'a>(bytes: &'a [u8], origin: &str) -> Result<(&'a str, usize)> {
    let Some(prefix) = bytes.first_chunk::<8>() else {
        let why =
            format!("file is {} bytes long, too short for the 8-byte header length", bytes.len());
        return Err(corrupt(origin, why));
    };
    let claimed = u64::from_le_bytes(*prefix);
    if claimed > MAX_HEADER_LEN {
        let why = format!("header length {claimed} exceeds the limit of {MAX_HEADER_LEN} bytes");
        return Err(corrupt(origin, why));
    }
    let header_len = claimed as usize; // at most MAX_HEADER_LEN, so it fits
    let available = bytes.len() - 8;
    if header_len > available {
        let why = format!(
            "header length {header_len} runs past the end of the file: only {available} bytes follow the length"
        );
        return Err(corrupt(origin, why));
    }
    let text = std::str::from_utf8(&bytes[8..8 + header_len]).map_err(|e| {
        corrupt(
            origin,
            format!("header is not valid UTF-8 (bad byte at header offset {})", e.valid_up_to()),
        )
    })?;
    Ok((text, 8 + header_len))
}

/// The header's entries: tensors and the `__metadata__` map. Bounded before anything is built:
/// at most [`MAX_TENSORS`] entries (counted by a scan that allocates nothing), each tensor entry
/// at most [`MAX_ENTRY_BYTES`] of JSON, at most [`MAX_METADATA_ENTRIES`] metadata strings. The
/// top level is read as raw JSON slices of the mapped file and each entry parsed on its own, so
/// memory stays within a small multiple of the entries' count, never of the header's bytes.
fn parse_entries(text: &str, origin: &str) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>)> {
    if !text.trim_start().starts_with('{') {
        let found = brief_text(text.trim());
        return Err(corrupt(origin, format!("header must be a JSON object, found {found}")));
    }
    let entries = count_keys(text, Some(1));
    if entries > MAX_TENSORS + 1 {
        let why = format!("header holds {entries} entries; at most {MAX_TENSORS} tensors are accepted");
        return Err(corrupt(origin, why));
    }
    let object: BTreeMap<String, &RawValue> = serde_json::from_str(text)
        .map_err(|e| corrupt(origin, format!("header is not valid JSON: {e}")))?;
    if let Some(key) = first_duplicate_key(text) {
        return Err(corrupt(origin, format!("header repeats the key '{key}' within one object")));
    }
    let mut tensors = Vec::with_capacity(object.len());
    let mut metadata = BTreeMap::new();
    for (key, raw) in object {
        if key == METADATA_KEY {
            metadata = parse_metadata(raw.get(), origin)?;
        } else if raw.get().len() > MAX_ENTRY_BYTES {
            let why = format!(
                "tensor '{key}': its entry is {} bytes of JSON, over the limit of {MAX_ENTRY_BYTES}",
                raw.get().len()
            );
            return Err(corrupt(origin, why));
        } else {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| corrupt(origin, format!("tensor '{key}': {e}")))?;
            tensors.push(parse_tensor(key, &value, origin)?);
        }
    }
    Ok((tensors, metadata))
}

fn parse_metadata(raw: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    let bad = |what: String| {
        corrupt(origin, format!("{METADATA_KEY} must map strings to strings, but {what}"))
    };
    if !raw.starts_with('{') {
        return Err(bad(format!("it is {}", brief_text(raw))));
    }
    let entries = count_keys(raw, Some(1));
    if entries > MAX_METADATA_ENTRIES {
        return Err(bad(format!("it holds {entries} entries, over the limit of {MAX_METADATA_ENTRIES}")));
    }
    let map: BTreeMap<String, &RawValue> =
        serde_json::from_str(raw).map_err(|e| bad(format!("it is not an object: {e}")))?;
    map.into_iter()
        .map(|(k, v)| match serde_json::from_str::<String>(v.get()) {
            Ok(s) => Ok((k, s)),
            Err(_) => Err(bad(format!("\"{k}\" maps to {}", brief_text(v.get())))),
        })
        .collect()
}

/// One tensor entry; checks types, dtype and that the offsets span exactly the tensor's bytes.
fn parse_tensor(name: String, value: &Value, origin: &str) -> Result<TensorInfo> {
    let field = |key: &str| {
        value.get(key).ok_or_else(|| {
            corrupt(origin, format!("tensor '{name}' lacks \"{key}\" (entry: {})", brief(value)))
        })
    };
    let wrong = |key: &str, expected: &str, found: &Value| {
        corrupt(
            origin,
            format!("tensor '{name}': \"{key}\" must be {expected}, found {}", brief(found)),
        )
    };
    if !value.is_object() {
        let why = format!(
            "tensor '{name}': entry must be an object with dtype, shape and data_offsets, found {}",
            brief(value)
        );
        return Err(corrupt(origin, why));
    }
    let dtype_value = field("dtype")?;
    let dtype_name = dtype_value.as_str().ok_or_else(|| wrong("dtype", "a string", dtype_value))?;
    let dtype =
        Dtype::from_name(dtype_name).ok_or_else(|| unknown_dtype(&name, dtype_name, origin))?;
    let shape_value = field("shape")?;
    let shape = usize_array(shape_value)
        .ok_or_else(|| wrong("shape", "an array of non-negative integers", shape_value))?;
    let offsets_value = field("data_offsets")?;
    let offsets = usize_array(offsets_value).filter(|o| o.len() == 2);
    let offsets = offsets.ok_or_else(|| {
        wrong("data_offsets", "two non-negative integers [begin, end]", offsets_value)
    })?;
    let info = TensorInfo { name, dtype, shape, data_offsets: (offsets[0], offsets[1]) };
    check_byte_len(&info, origin)?;
    Ok(info)
}

fn unknown_dtype(name: &str, dtype: &str, origin: &str) -> Error {
    let known: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
    let message = format!(
        "{origin}: tensor '{name}' has unknown dtype \"{dtype}\" (known: {})",
        known.join(", ")
    );
    Error::new(ErrorKind::UnknownDtype, message)
}

/// The array's elements as `usize`, or None if it is not an array of non-negative integers.
fn usize_array(value: &Value) -> Option<Vec<usize>> {
    let items = value.as_array()?;
    items.iter().map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok())).collect()
}

/// `begin <= end` and `end - begin == product(shape) * dtype size`, without overflow.
fn check_byte_len(info: &TensorInfo, origin: &str) -> Result<()> {
    let TensorInfo { name, dtype, shape, data_offsets: (begin, end) } = info;
    if begin > end {
        return Err(corrupt(
            origin,
            format!("tensor '{name}': data_offsets [{begin}, {end}] begin after they end"),
        ));
    }
    let needed = shape.iter().try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d));
    let Some(needed) = needed else {
        return Err(corrupt(
            origin,
            format!("tensor '{name}': shape {shape:?} of {dtype} overflows the byte count"),
        ));
    };
    let spanned = end - begin;
    if spanned != needed {
        let why = format!(
            "tensor '{name}': dtype {dtype} with shape {shape:?} needs {needed} bytes, \
             but data_offsets [{begin}, {end}] span {spanned} bytes"
        );
        return Err(corrupt(origin, why));
    }
    Ok(())
}

fn check_in_buffer(info: &TensorInfo, data_len: usize, origin: &str) -> Result<()> {
    let (begin, end) = info.data_offsets;
    if end > data_len {
        let why = format!(
            "tensor '{}': data_offsets [{begin}, {end}] end past the data buffer, which holds {data_len} bytes",
            info.name
        );
        return Err(corrupt(origin, why));
    }
    Ok(())
}

/// The tensors (sorted by offset) must cover `[0, data_len)` exactly: no gap, no overlap, no
/// trailing bytes. This is the reference implementation's rule (each tensor begins where the
/// previous one ended, the first at 0, and the last ends at the end of the file).
fn check_tiling(sorted: &[TensorInfo], data_len: usize, origin: &str) -> Result<()> {
    let mut covered = 0;
    let mut previous: Option<&TensorInfo> = None;
    for tensor in sorted {
        let (begin, end) = tensor.data_offsets;
        if begin < covered {
            let prev = previous.map_or(String::new(), describe);
            return Err(corrupt(
                origin,
                format!("tensors {prev} and {} overlap", describe(tensor)),
            ));
        }
        if begin > covered {
            let after = previous.map_or("the start of the data buffer".to_string(), describe);
            let why = format!(
                "no tensor covers data bytes [{covered}, {begin}) between {after} and {}",
                describe(tensor)
            );
            return Err(corrupt(origin, why));
        }
        covered = end;
        previous = Some(tensor);
    }
    if covered != data_len {
        let why = format!(
            "the data buffer holds {data_len} bytes but the tensors cover only [0, {covered}): {} bytes unaccounted for",
            data_len - covered
        );
        return Err(corrupt(origin, why));
    }
    Ok(())
}

fn describe(tensor: &TensorInfo) -> String {
    let (begin, end) = tensor.data_offsets;
    format!("'{}' [{begin}, {end})", tensor.name)
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Values of one tensor to write.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    I64(&'a [i64]),
    /// Little-endian bytes of elements of any dtype (a quantized matrix's packed values, a tensor
    /// copied as stored); their count must be a whole number of elements.
    Raw(Dtype, &'a [u8]),
}

impl TensorData<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::Bf16(_) => Dtype::BF16,
            TensorData::I64(_) => Dtype::I64,
            TensorData::Raw(dtype, _) => *dtype,
        }
    }

    fn len(&self) -> usize {
        match self {
            TensorData::F32(values) => values.len(),
            TensorData::Bf16(values) => values.len(),
            TensorData::I64(values) => values.len(),
            TensorData::Raw(dtype, bytes) => bytes.len() / dtype.size_in_bytes(),
        }
    }

    fn write_le(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            TensorData::F32(values) => {
                values.iter().try_for_each(|v| out.write_all(&v.to_le_bytes()))
            }
            TensorData::Bf16(values) => {
                values.iter().try_for_each(|v| out.write_all(&v.to_bits().to_le_bytes()))
            }
            TensorData::I64(values) => {
                values.iter().try_for_each(|v| out.write_all(&v.to_le_bytes()))
            }
            TensorData::Raw(_, bytes) => out.write_all(bytes),
        }
    }
}

/// One tensor to write: name, shape, values.
pub type NamedTensor<'a> = (&'a str, &'a [usize], TensorData<'a>);

/// Write `F32` tensors (name, shape, row-major values) to `path`; see [`write_tensors`].
pub fn write_f32(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let tensors: Vec<NamedTensor> =
        tensors.iter().map(|&(n, s, v)| (n, s, TensorData::F32(v))).collect();
    write_tensors(path, &tensors, &[])
}

/// Write tensors and `__metadata__` entries to a valid safetensors file at `path`.
///
/// A regular file (or a path not yet there) is written atomically: to a temporary file in the same
/// directory, flushed to disk, then renamed over `path` (a symbolic link is resolved first and
/// kept). On failure no partial output is left and an existing `path` is untouched. A pipe or
/// character device (`/dev/stdout`) is written through; anything else is refused (see
/// [`crate::base::files::write_output`]). As in the reference writer, tensors are laid out by decreasing element size, then
/// by name, after a header padded with spaces to a multiple of 8 bytes, so each tensor's data is
/// aligned to its element size.
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &[(&str, &str)],
) -> Result<()> {
    check_writable(path, tensors)?;
    let mut order: Vec<&NamedTensor> = tensors.iter().collect();
    order.sort_by(|a, b| {
        b.2.dtype().size_in_bytes().cmp(&a.2.dtype().size_in_bytes()).then(a.0.cmp(b.0))
    });
    let header = header_bytes(&order, metadata);
    crate::base::files::write_output(path, |mut out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        order.iter().try_for_each(|(_, _, data)| data.write_le(&mut out))
    })
}

/// Names unique and not reserved; each shape's element count equals the number of values.
fn check_writable(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let refuse = |why: String| Error::input(format!("cannot write {}: {why}", path.display()));
    let mut seen = HashSet::new();
    for (name, shape, data) in tensors {
        if *name == METADATA_KEY {
            return Err(refuse(format!("'{METADATA_KEY}' is reserved and cannot name a tensor")));
        }
        if !seen.insert(*name) {
            return Err(refuse(format!("tensor name '{name}' is given twice")));
        }
        if let TensorData::Raw(dtype, bytes) = data {
            if bytes.len() % dtype.size_in_bytes() != 0 {
                return Err(refuse(format!("tensor '{name}' has {} bytes, not a whole number of {dtype} elements", bytes.len())));
            }
        }
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(refuse(format!(
                "tensor '{name}' has shape {shape:?} but {} values",
                data.len()
            )));
        }
    }
    Ok(())
}

/// The JSON header, padded with spaces to a multiple of 8 bytes.
fn header_bytes(order: &[&NamedTensor], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut object = Map::new();
    if !metadata.is_empty() {
        let map: Map<String, Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        object.insert(METADATA_KEY.to_string(), Value::Object(map));
    }
    let mut offset = 0;
    for (name, shape, data) in order {
        let end = offset + data.len() * data.dtype().size_in_bytes();
        let entry =
            json!({"dtype": data.dtype().name(), "shape": shape, "data_offsets": [offset, end]});
        object.insert(name.to_string(), entry);
        offset = end;
    }
    let mut bytes = Value::Object(object).to_string().into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    bytes
}

