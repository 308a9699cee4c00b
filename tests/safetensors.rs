//! Tests for `hymba_ref::checkpoint`: safetensors round trips and conversions, one test per
//! class of corrupt file or shard index (asserting the error kind and that the message names the
//! culprit), robustness against truncation, bit flips and arbitrary bytes, and atomic writing.

use std::fs;
mod common;
use common::TempDir;
use std::path::PathBuf;

use hymba_ref::checkpoint::{
    check_elements_finite, check_finite, parse_index, write_f32, write_tensors, Checkpoint, Dtype,
    SafetensorsFile, TensorData,
};
use hymba_ref::kernels::matrix::Elements;
use hymba_ref::{Error, ErrorKind, Result};
use proptest::prelude::*;

const ORIGIN: &str = "bad.safetensors";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------


/// A file from a header text and a data buffer.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn u16_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn expect_err<T>(result: Result<T>) -> Error {
    match result {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

fn rejected(bytes: Vec<u8>) -> Error {
    expect_err(SafetensorsFile::from_bytes(bytes, ORIGIN))
}

/// The error has `kind` and its message contains every needle.
fn assert_error(err: &Error, kind: ErrorKind, needles: &[&str]) {
    assert_eq!(err.kind, kind, "wrong kind for message: {}", err.message);
    for needle in needles {
        assert!(err.message.contains(needle), "message {:?} lacks {:?}", err.message, needle);
    }
}

fn assert_corrupt(bytes: Vec<u8>, needles: &[&str]) {
    let mut needles = needles.to_vec();
    needles.push(ORIGIN);
    assert_error(&rejected(bytes), ErrorKind::CorruptSafetensors, &needles);
}

/// Reading everything a parsed file offers must not panic.
fn exercise(file: &SafetensorsFile) {
    for info in file.tensors() {
        let _ = file.bytes_of(&info.name);
        let _ = file.to_f32(&info.name);
        let _ = file.to_i64(&info.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and conversions
// ---------------------------------------------------------------------------------------------

#[test]
fn write_f32_then_open_round_trips() {
    let dir = TempDir::new("roundtrip");
    let path = dir.join("model.safetensors");
    let weight = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let bias = [-1.5, 0.0, f32::MAX];
    write_f32(&path, &[("b.weight", &[2, 3], &weight), ("a.bias", &[3], &bias)]).unwrap();

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.to_f32("b.weight").unwrap(), (vec![2, 3], weight.to_vec()));
    assert_eq!(file.to_f32("a.bias").unwrap(), (vec![3], bias.to_vec()));
    let names: Vec<&str> = file.tensors().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.bias", "b.weight"], "same dtype: sorted by name");
    let info = file.get("a.bias").unwrap();
    assert_eq!((info.dtype, info.data_offsets, info.num_elements()), (Dtype::F32, (0, 12), 3));
    assert!(file.metadata().is_empty());
    assert_eq!(file.origin(), path.display().to_string());

    let bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(header_len % 8, 0, "header padded to a multiple of 8");
    assert_eq!(dir.entries(), ["model.safetensors"], "no temporary file left behind");
}

#[test]
fn write_tensors_mixes_dtypes_scalars_empty_tensors_and_metadata() {
    let dir = TempDir::new("mixed");
    let path = dir.join("goldens.safetensors");
    let ids = [28102, 1956, -1, i64::MAX, 0];
    let tensors = [
        ("logits", &[2usize, 2][..], TensorData::F32(&[0.5, -0.5, 1e-30, 3.0])),
        ("ids", &[5][..], TensorData::I64(&ids)),
        ("scalar", &[][..], TensorData::F32(&[7.0])),
        ("empty", &[0, 4][..], TensorData::F32(&[])),
    ];
    write_tensors(&path, &tensors, &[("format", "pt"), ("seed", "1")]).unwrap();

    let file = SafetensorsFile::open(&path).unwrap();
    let names: Vec<&str> = file.tensors().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ids", "empty", "logits", "scalar"], "8-byte elements first, then by name");
    assert_eq!(file.to_i64("ids").unwrap(), (vec![5], ids.to_vec()));
    assert_eq!(file.to_f32("scalar").unwrap(), (vec![], vec![7.0]));
    assert_eq!(file.to_f32("empty").unwrap(), (vec![0, 4], vec![]));
    assert_eq!(file.to_f32("logits").unwrap().1, [0.5, -0.5, 1e-30, 3.0]);
    assert_eq!(file.get("ids").unwrap().dtype, Dtype::I64);
    assert_eq!(file.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(file.metadata().len(), 2);
    assert_eq!(file.bytes_of("scalar").unwrap(), 7.0f32.to_le_bytes());
}

#[test]
fn half_precision_converts_exactly() {
    // F16 0x3C00 = 1, 0xC000 = -2, 0x3555 = 2^-2 * (1 + 341/1024) = 1365/4096 (nearest to 1/3),
    // 0x7BFF = 65504 (largest finite), 0x0001 = 2^-24 (smallest subnormal).
    // BF16 0x3F80 = 1, 0xC000 = -2, 0x3EAB = 2^-2 * (1 + 43/128) = 171/512, 0x7F80 = +infinity.
    let header = r#"{"h":{"dtype":"F16","shape":[5],"data_offsets":[0,10]},
                     "b":{"dtype":"BF16","shape":[2,2],"data_offsets":[10,18]}}"#;
    let data = u16_bytes(&[0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0001, 0x3F80, 0xC000, 0x3EAB, 0x7F80]);
    let file = SafetensorsFile::from_bytes(raw(header, &data), "half").unwrap();
    let (shape, h) = file.to_f32("h").unwrap();
    assert_eq!(shape, [5]);
    assert_eq!(h, [1.0, -2.0, 1365.0 / 4096.0, 65504.0, 1.0 / 16777216.0]);
    let (shape, b) = file.to_f32("b").unwrap();
    assert_eq!(shape, [2, 2]);
    assert_eq!(b, [1.0, -2.0, 171.0 / 512.0, f32::INFINITY]);
}

#[test]
fn i32_widens_to_i64() {
    let header = r#"{"ids":{"dtype":"I32","shape":[3],"data_offsets":[0,12]}}"#;
    let data: Vec<u8> = [-1i32, 7, i32::MIN].iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = SafetensorsFile::from_bytes(raw(header, &data), "ids").unwrap();
    assert_eq!(file.to_i64("ids").unwrap(), (vec![3], vec![-1, 7, i64::from(i32::MIN)]));
}

#[test]
fn conversion_refuses_other_dtypes_and_missing_names() {
    let header = r#"{"q":{"dtype":"I8","shape":[2],"data_offsets":[0,2]},
                     "w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#;
    let file = SafetensorsFile::from_bytes(raw(header, &[1, 2, 0, 0, 0, 0]), ORIGIN).unwrap();
    let err = expect_err(file.to_f32("q"));
    assert_error(&err, ErrorKind::UnknownDtype, &[ORIGIN, "'q'", "I8", "f32"]);
    let err = expect_err(file.to_i64("w"));
    assert_error(&err, ErrorKind::UnknownDtype, &[ORIGIN, "'w'", "F32", "i64"]);
    let err = expect_err(file.to_f32("nope"));
    assert_error(&err, ErrorKind::MissingTensor, &[ORIGIN, "'nope'"]);
    assert!(file.get("nope").is_none() && file.bytes_of("nope").is_none());
}

#[test]
fn header_order_is_free_and_tensors_come_in_data_order() {
    let header = r#"{"late":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},
                     "__metadata__":{"k":"v"},
                     "early":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}}"#;
    let file = SafetensorsFile::from_bytes(raw(header, &[1, 2, 3]), "order").unwrap();
    let names: Vec<&str> = file.tensors().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["early", "late"]);
    assert_eq!(file.bytes_of("late").unwrap(), [3]);
}

#[test]
fn empty_header_with_no_data_is_valid() {
    let file = SafetensorsFile::from_bytes(raw("{}      ", &[]), "empty").unwrap();
    assert_eq!(file.tensors().count(), 0);
}

#[test]
fn dtype_names_and_sizes() {
    for dtype in Dtype::ALL {
        assert_eq!(Dtype::from_name(dtype.name()), Some(dtype));
    }
    assert_eq!(Dtype::from_name("bf16"), None, "names are case-sensitive");
    let sizes = [Dtype::BOOL, Dtype::F8_E4M3, Dtype::BF16, Dtype::U32, Dtype::I64];
    assert_eq!(sizes.map(Dtype::size_in_bytes), [1, 1, 2, 4, 8]);
}

// ---------------------------------------------------------------------------------------------
// One test per class of corrupt file
// ---------------------------------------------------------------------------------------------

#[test]
fn file_shorter_than_length_prefix() {
    assert_corrupt(vec![1, 2, 3, 4, 5], &["5 bytes"]);
    assert_corrupt(vec![], &["0 bytes"]);
}

#[test]
fn header_length_past_end_of_file() {
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_corrupt(bytes, &["1000", "only 2 bytes"]);
}

#[test]
fn absurd_header_length() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_corrupt(bytes, &["18446744073709551615", "100000000"]);
}

#[test]
fn header_not_utf8() {
    let mut bytes = 3u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{', 0xFF, b'}']);
    assert_corrupt(bytes, &["UTF-8", "offset 1"]);
}

#[test]
fn header_not_json() {
    assert_corrupt(raw(r#"{"w": "#, &[]), &["not valid JSON"]);
}

#[test]
fn header_not_an_object() {
    assert_corrupt(raw("[1,2]", &[]), &["JSON object", "[1,2]"]);
}

#[test]
fn entry_missing_a_field() {
    let entries = [
        r#"{"shape":[1],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[1]}"#,
    ];
    for (entry, field) in entries.iter().zip(["dtype", "shape", "data_offsets"]) {
        let header = format!(r#"{{"w":{entry}}}"#);
        assert_corrupt(raw(&header, &[0; 4]), &["'w'", &format!("\"{field}\"")]);
    }
}

#[test]
fn entry_field_of_wrong_json_type() {
    let cases = [
        (r#"3"#, "entry"),
        (r#"{"dtype":3,"shape":[1],"data_offsets":[0,4]}"#, "\"dtype\""),
        (r#"{"dtype":"F32","shape":"1","data_offsets":[0,4]}"#, "\"shape\""),
        (r#"{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}"#, "[-1]"),
        (r#"{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}"#, "[1.5]"),
        (r#"{"dtype":"F32","shape":[1],"data_offsets":[4]}"#, "\"data_offsets\""),
        (r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}"#, "[0,4,8]"),
    ];
    for (entry, culprit) in cases {
        let header = format!(r#"{{"w":{entry}}}"#);
        assert_corrupt(raw(&header, &[0; 4]), &["'w'", culprit]);
    }
}

#[test]
fn unknown_dtype_string() {
    for dtype in ["Q4", "F4", "float32"] {
        let header = format!(r#"{{"w":{{"dtype":"{dtype}","shape":[1],"data_offsets":[0,1]}}}}"#);
        let err = rejected(raw(&header, &[0]));
        assert_error(&err, ErrorKind::UnknownDtype, &[ORIGIN, "'w'", dtype]);
    }
}

#[test]
fn shape_times_dtype_size_overflows() {
    let header = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#;
    assert_corrupt(raw(header, &[]), &["'w'", "4294967296", "overflows"]);
}

#[test]
fn data_length_differs_from_shape_times_dtype_size() {
    let header = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
    assert_corrupt(raw(header, &[0; 20]), &["'w'", "[2, 3]", "24 bytes", "span 20"]);
}

#[test]
fn begin_after_end() {
    let header = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#;
    assert_corrupt(raw(header, &[0; 8]), &["'w'", "[8, 4]"]);
}

#[test]
fn end_past_data_buffer() {
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_corrupt(raw(header, &[0; 4]), &["'w'", "[0, 8]", "4 bytes"]);
}

#[test]
fn overlapping_tensors() {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_corrupt(raw(header, &[0; 12]), &["'a' [0, 8)", "'b' [4, 12)", "overlap"]);
}

#[test]
fn gap_between_tensors() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                     "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    assert_corrupt(raw(header, &[0; 12]), &["[4, 8)", "'a'", "'b'"]);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert_corrupt(raw(header, &[0; 8]), &["[0, 4)", "start", "'a'"]);
}

#[test]
fn trailing_bytes_after_last_tensor() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_corrupt(raw(header, &[0; 8]), &["8 bytes", "[0, 4)", "4 bytes unaccounted"]);
}

#[test]
fn duplicate_tensor_names() {
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                     "w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert_corrupt(raw(header, &[0; 8]), &["'w'", "repeats"]);
}

#[test]
fn metadata_must_map_strings_to_strings() {
    assert_corrupt(raw(r#"{"__metadata__":{"n":1}}"#, &[]), &["__metadata__", "\"n\" maps to 1"]);
    assert_corrupt(raw(r#"{"__metadata__":[]}"#, &[]), &["__metadata__", "[]"]);
}

#[test]
fn open_reports_missing_file_as_io() {
    let dir = TempDir::new("missing");
    let path = dir.join("absent.safetensors");
    let err = expect_err(SafetensorsFile::open(&path));
    assert_error(&err, ErrorKind::Io, &["absent.safetensors"]);
}

#[test]
fn open_names_the_path_in_format_errors() {
    let dir = TempDir::new("named");
    let path = dir.join("broken.safetensors");
    fs::write(&path, [1, 2, 3]).unwrap();
    let err = expect_err(SafetensorsFile::open(&path));
    assert_error(&err, ErrorKind::CorruptSafetensors, &[&path.display().to_string(), "3 bytes"]);
}

// ---------------------------------------------------------------------------------------------
// Writing: validation and atomicity
// ---------------------------------------------------------------------------------------------

#[test]
fn write_into_missing_directory_fails_and_creates_nothing() {
    let dir = TempDir::new("nodir");
    let path = dir.join("missing").join("model.safetensors");
    let err = expect_err(write_f32(&path, &[("w", &[1], &[1.0])]));
    assert_error(&err, ErrorKind::Io, &[&path.display().to_string()]);
    assert!(dir.entries().is_empty());
}

#[test]
fn failed_write_leaves_existing_file_untouched() {
    let dir = TempDir::new("keep");
    let path = dir.join("model.safetensors");
    write_f32(&path, &[("w", &[2], &[1.0, 2.0])]).unwrap();
    let before = fs::read(&path).unwrap();

    let err = expect_err(write_f32(&path, &[("v", &[2, 2], &[1.0, 2.0, 3.0])]));
    assert_error(
        &err,
        ErrorKind::InvalidInput,
        &["model.safetensors", "'v'", "[2, 2]", "3 values"],
    );
    let err = expect_err(write_f32(&path, &[("w", &[1], &[1.0]), ("w", &[1], &[2.0])]));
    assert_error(&err, ErrorKind::InvalidInput, &["'w'", "twice"]);
    let err = expect_err(write_f32(&path, &[("__metadata__", &[1], &[1.0])]));
    assert_error(&err, ErrorKind::InvalidInput, &["__metadata__", "reserved"]);

    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir.entries(), ["model.safetensors"]);
}

#[test]
fn write_replaces_an_existing_file() {
    let dir = TempDir::new("replace");
    let path = dir.join("model.safetensors");
    write_f32(&path, &[("old", &[1], &[1.0])]).unwrap();
    write_f32(&path, &[("new", &[2], &[2.0, 3.0])]).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert!(file.get("old").is_none());
    assert_eq!(file.to_f32("new").unwrap().1, [2.0, 3.0]);
    assert_eq!(dir.entries(), ["model.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// check_finite
// ---------------------------------------------------------------------------------------------

/// The whole-tensor check in each stored dtype (chunks of 65,536 tested whole, on the vector
/// unit): finite extremes pass; one NaN or infinity is found wherever it lies (the first value, a
/// chunk's last, past the last whole vector of the last chunk) and reported at its index.
#[test]
fn check_elements_finite_finds_one_bad_value_anywhere() {
    let len = 3 * 65_536 + 13;
    let finite = |i: usize| match i % 4 {
        0 => 0.0,
        1 => -0.0,
        2 => 1e-40, // subnormal in f32 (0 in f16)
        _ => 65_000.0 * if i % 8 == 3 { -1.0 } else { 1.0 },
    };
    let elements = |values: &[f32]| {
        [
            Elements::F32(values.to_vec().into()),
            Elements::Bf16(values.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>().into()),
            Elements::F16(values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>().into()),
        ]
    };
    let good: Vec<f32> = (0..len).map(finite).collect();
    for e in elements(&good) {
        check_elements_finite("w", &e).unwrap();
    }
    for at in [0, 65_535, 65_536 + 4_097, len - 1] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut values = good.clone();
            values[at] = bad;
            for e in elements(&values) {
                let err = check_elements_finite("w", &e).expect_err("a bad value");
                assert_error(&err, ErrorKind::NonFiniteWeight, &["'w'", &format!("index {at}"), "1 non-finite"]);
            }
        }
    }
}

#[test]
fn check_finite_names_the_first_bad_value() {
    assert!(check_finite("w", &[0.0, -1.0, f32::MAX]).is_ok());
    let err = expect_err(check_finite("model.norm.weight", &[1.0, f32::NAN, 2.0, f32::INFINITY]));
    let needles = ["'model.norm.weight'", "NaN", "index 1", "2 non-finite", "among 4"];
    assert_error(&err, ErrorKind::NonFiniteWeight, &needles);
    let err = expect_err(check_finite("b", &[f32::NEG_INFINITY]));
    assert_error(&err, ErrorKind::NonFiniteWeight, &["'b'", "-inf", "index 0"]);
}

// ---------------------------------------------------------------------------------------------
// Robustness: truncation, bit flips, arbitrary bytes
// ---------------------------------------------------------------------------------------------

/// A small valid file with several dtypes, metadata and a scalar.
fn small_valid_file(dir: &TempDir) -> Vec<u8> {
    let path = dir.join("small.safetensors");
    let tensors = [
        ("ids", &[3usize][..], TensorData::I64(&[1, 2, 3])),
        ("w", &[2, 2][..], TensorData::F32(&[1.0, -2.0, 0.5, 8.0])),
        ("s", &[][..], TensorData::F32(&[3.0])),
    ];
    write_tensors(&path, &tensors, &[("format", "pt")]).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn every_truncation_is_rejected_without_panicking() {
    let dir = TempDir::new("truncate");
    let bytes = small_valid_file(&dir);
    assert!(SafetensorsFile::from_bytes(bytes.clone(), "whole").is_ok());
    let path = dir.join("truncated.safetensors");
    for len in 0..bytes.len() {
        let err = rejected(bytes[..len].to_vec());
        assert_eq!(err.kind, ErrorKind::CorruptSafetensors, "length {len}: {}", err.message);
        fs::write(&path, &bytes[..len]).unwrap();
        let err = expect_err(SafetensorsFile::open(&path));
        assert_eq!(err.kind, ErrorKind::CorruptSafetensors, "length {len}: {}", err.message);
    }
}

#[test]
fn every_header_bit_flip_is_handled_without_panicking() {
    let dir = TempDir::new("bitflip");
    let bytes = small_valid_file(&dir);
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut accepted = 0;
    for bit in 0..header_end * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if let Ok(file) = SafetensorsFile::from_bytes(flipped, "flipped") {
            exercise(&file);
            accepted += 1;
        }
    }
    // Flips inside names and metadata values (and in the padding) still give valid files.
    assert!(accepted > 0);
}

/// A length prefix, then JSON-looking text, then a few data bytes.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    let text = r#"[{}\[\]",:0-9FIUBOLdtypshaeof_ -]{0,160}"#;
    (text, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(text, data)| raw(&text, &data))
}

/// A valid file with a few bytes overwritten.
fn mutated_valid_file() -> impl Strategy<Value = Vec<u8>> {
    let header = r#"{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},
                     "b":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}}"#;
    let valid = raw(header, &[7; 12]);
    let edits = prop::collection::vec((0..valid.len(), any::<u8>()), 1..4);
    edits.prop_map(move |edits| {
        let mut bytes = valid.clone();
        edits.into_iter().for_each(|(at, byte)| bytes[at] = byte);
        bytes
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(file) = SafetensorsFile::from_bytes(bytes, "arbitrary") {
            exercise(&file);
        }
    }

    #[test]
    fn header_like_bytes_never_panic(bytes in header_like()) {
        if let Ok(file) = SafetensorsFile::from_bytes(bytes, "header-like") {
            exercise(&file);
        }
    }

    #[test]
    fn mutated_files_never_panic(bytes in mutated_valid_file()) {
        if let Ok(file) = SafetensorsFile::from_bytes(bytes, "mutated") {
            exercise(&file);
        }
    }

    #[test]
    fn arbitrary_index_text_never_panics(text in r#"[{}\[\]",:a-z0-9_./ -]{0,200}"#) {
        let _ = parse_index(&text, "index");
    }

    #[test]
    fn arbitrary_index_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_index(&String::from_utf8_lossy(&bytes), "index");
    }
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints
// ---------------------------------------------------------------------------------------------

const SHARD_A: &str = "model-00001-of-00002.safetensors";
const SHARD_B: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn index_json(entries: &[(&str, &str)]) -> String {
    let map: Vec<String> = entries.iter().map(|(t, s)| format!("\"{t}\": \"{s}\"")).collect();
    format!(r#"{{"metadata": {{"total_size": 24}}, "weight_map": {{{}}}}}"#, map.join(", "))
}

/// Shard A holds `a` [2] and `b` [1]; shard B holds `c` [3]; plus the given index text.
fn sharded_dir(tag: &str, index: &str) -> TempDir {
    let dir = TempDir::new(tag);
    write_f32(&dir.join(SHARD_A), &[("a", &[2], &[1.0, 2.0]), ("b", &[1], &[3.0])]).unwrap();
    write_f32(&dir.join(SHARD_B), &[("c", &[3], &[4.0, 5.0, 6.0])]).unwrap();
    fs::write(dir.join(INDEX), index).unwrap();
    dir
}

fn good_index() -> String {
    index_json(&[("a", SHARD_A), ("b", SHARD_A), ("c", SHARD_B)])
}

fn shard_error(dir: &TempDir, needles: &[&str]) {
    let err = expect_err(Checkpoint::open_dir(&dir.0));
    let mut needles = needles.to_vec();
    let index_path = dir.join(INDEX).display().to_string();
    needles.push(&index_path);
    assert_error(&err, ErrorKind::ShardIndex, &needles);
}

#[test]
fn sharded_checkpoint_reads_across_shards() {
    let dir = sharded_dir("shards", &good_index());
    let checkpoint = Checkpoint::open_dir(&dir.0).unwrap();
    assert_eq!(checkpoint.names(), ["a", "b", "c"]);
    assert_eq!(checkpoint.to_f32("c").unwrap(), (vec![3], vec![4.0, 5.0, 6.0]));
    assert_eq!(checkpoint.to_f32("a").unwrap().1, [1.0, 2.0]);
    assert_eq!(checkpoint.info("b").unwrap().shape, [1]);
    assert!(checkpoint.info("z").is_none());
    assert_eq!(checkpoint.total_bytes(), 24);
    assert_eq!(checkpoint.dir(), dir.0);
    let err = expect_err(checkpoint.to_f32("z"));
    assert_error(&err, ErrorKind::MissingTensor, &["'z'", &dir.0.display().to_string()]);
}

#[test]
fn single_file_is_preferred_over_index() {
    let dir = sharded_dir("single", "not even JSON");
    write_f32(&dir.join("model.safetensors"), &[("only", &[1], &[9.0])]).unwrap();
    let checkpoint = Checkpoint::open_dir(&dir.0).unwrap();
    assert_eq!(checkpoint.names(), ["only"]);
    assert_eq!(checkpoint.total_bytes(), 4);
}

#[test]
fn directory_without_checkpoint_is_an_io_error() {
    let dir = TempDir::new("nockpt");
    let err = expect_err(Checkpoint::open_dir(&dir.0));
    assert_error(&err, ErrorKind::Io, &[&dir.0.display().to_string(), "model.safetensors"]);
}

#[test]
fn index_not_json() {
    shard_error(&sharded_dir("badjson", r#"{"weight_map": "#), &["not valid JSON"]);
}

#[test]
fn index_without_weight_map() {
    shard_error(&sharded_dir("nomap", r#"{"metadata": {}}"#), &["weight_map"]);
    shard_error(&sharded_dir("mapnotobj", r#"{"weight_map": []}"#), &["weight_map"]);
}

#[test]
fn index_names_a_missing_shard() {
    let index = index_json(&[("a", SHARD_A), ("b", SHARD_A), ("c", "model-00003.safetensors")]);
    shard_error(&sharded_dir("noshard", &index), &["model-00003.safetensors", "does not exist"]);
}

#[test]
fn index_maps_tensor_to_the_wrong_shard() {
    let index = index_json(&[("a", SHARD_A), ("b", SHARD_B), ("c", SHARD_B)]);
    shard_error(&sharded_dir("wrongshard", &index), &["'b'", SHARD_A, SHARD_B]);
}

#[test]
fn index_maps_tensor_that_no_shard_holds() {
    let index = index_json(&[("a", SHARD_A), ("b", SHARD_A), ("c", SHARD_B), ("d", SHARD_B)]);
    shard_error(&sharded_dir("ghost", &index), &["'d'", "no shard"]);
}

#[test]
fn index_omits_a_stored_tensor() {
    let index = index_json(&[("a", SHARD_A), ("c", SHARD_B)]);
    shard_error(&sharded_dir("unlisted", &index), &["'b'", SHARD_A]);
}

#[test]
fn same_tensor_in_two_shards() {
    let dir = sharded_dir("twice", &good_index());
    write_f32(&dir.join(SHARD_B), &[("a", &[2], &[0.0, 0.0]), ("c", &[3], &[0.0; 3])]).unwrap();
    let err = expect_err(Checkpoint::open_dir(&dir.0));
    assert_error(&err, ErrorKind::ShardIndex, &["'a'", SHARD_A, SHARD_B, "both"]);
}

#[test]
fn index_cannot_point_outside_the_directory() {
    for shard in ["../elsewhere.safetensors", "/etc/passwd", "", "sub/x.safetensors"] {
        let index = index_json(&[("a", SHARD_A), ("b", SHARD_A), ("c", shard)]);
        shard_error(&sharded_dir("escape", &index), &["'c'", "not a file name"]);
    }
}

#[test]
fn index_repeats_a_tensor() {
    let index = index_json(&[("a", SHARD_A), ("b", SHARD_A), ("c", SHARD_B), ("a", SHARD_B)]);
    shard_error(&sharded_dir("dupkey", &index), &["'a'", "twice"]);
}

#[test]
fn corrupt_shard_reports_the_shard() {
    let dir = sharded_dir("corrupt", &good_index());
    fs::write(dir.join(SHARD_B), raw("{}", &[0; 4])).unwrap();
    let err = expect_err(Checkpoint::open_dir(&dir.0));
    let shard_path = dir.join(SHARD_B).display().to_string();
    assert_error(&err, ErrorKind::CorruptSafetensors, &[&shard_path, "4 bytes unaccounted"]);
}

#[test]
fn parse_index_returns_metadata_and_shards() {
    let index = parse_index(&good_index(), "index").unwrap();
    assert_eq!(index.shard_files(), [SHARD_A, SHARD_B]);
    assert_eq!(index.weight_map.len(), 3);
    assert_eq!(index.metadata.get("total_size").and_then(|v| v.as_u64()), Some(24));
    let err = expect_err(parse_index("[]", "my-index.json"));
    assert_error(&err, ErrorKind::ShardIndex, &["my-index.json", "weight_map"]);
}

// ---------------------------------------------------------------------------------------------
// The shared conformance checkpoint (run with `cargo test -- --ignored`)
// ---------------------------------------------------------------------------------------------

fn tiny_seed1(relative: &str) -> PathBuf {
    common::shared_dir().join("conformance/tiny-seed1").join(relative)
}

#[test]
#[ignore = "needs ../shared"]
fn tiny_seed1_checkpoint_and_goldens() {
    let checkpoint = Checkpoint::open_dir(&tiny_seed1("model")).unwrap();
    assert_eq!(checkpoint.names().len(), 155);
    let info = checkpoint.info("model.layers.0.mamba.in_proj.weight").unwrap();
    assert_eq!((info.dtype, info.shape.as_slice()), (Dtype::BF16, &[416, 64][..]));
    for name in checkpoint.names() {
        let (shape, values) = checkpoint.to_f32(name).unwrap();
        assert_eq!(values.len(), shape.iter().product::<usize>());
        check_finite(name, &values).unwrap();
    }

    let goldens = SafetensorsFile::open(&tiny_seed1("goldens.safetensors")).unwrap();
    assert_eq!(goldens.get("case1.input_ids").unwrap().dtype, Dtype::I64);
    let (shape, ids) = goldens.to_i64("case1.input_ids").unwrap();
    assert_eq!(shape, [5]);
    assert_eq!(ids, [28102, 1956, 30499, 7252, 1272]);
}

#[test]
fn random_weights_written_in_the_published_layout_read_back_exactly() {
    use hymba_ref::checkpoint::random::RandomWeights;
    use hymba_ref::checkpoint::TensorSource;
    use hymba_ref::config::HymbaConfig;
    let config = common::fixtures_dir().join("silu-groups-default/model/config.json");
    let cfg = HymbaConfig::from_file(&config).unwrap();
    let dir = TempDir::new("published-layout");
    let random = RandomWeights::new(&cfg, 7);
    let bytes = random.write_sharded(&dir.0, 2).unwrap();
    assert_eq!(
        dir.entries(),
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    );
    let index = parse_index(&fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(), "index").unwrap();
    assert_eq!(index.metadata["total_size"], bytes);
    let checkpoint = Checkpoint::open_dir(&dir.0).unwrap();
    assert_eq!(checkpoint.total_bytes() as u64, bytes);
    assert_eq!(TensorSource::names(&checkpoint), random.names());
    let mut per_shard = [0, 0];
    for name in random.names() {
        assert_eq!(checkpoint.info(&name).unwrap().dtype, Dtype::BF16, "{name}");
        let (shape, elements) = random.to_elements(&name).unwrap();
        let mut want = vec![0f32; elements.len()];
        elements.copy_to_f32(0, &mut want);
        assert_eq!(checkpoint.to_f32(&name).unwrap(), (shape, want), "{name}");
        per_shard[usize::from(index.weight_map[&name].contains("00002-of"))] += 1;
    }
    assert!(per_shard[0] > 0 && per_shard[1] > 0, "both shards hold tensors: {per_shard:?}");
}
