#![no_main]
//! Fuzz target `tokenizer_roundtrip`: the body is `hymba_ref::fuzz_targets::tokenizer_roundtrip` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::tokenizer_roundtrip(data));
