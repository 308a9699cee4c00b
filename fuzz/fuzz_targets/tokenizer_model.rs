#![no_main]
//! Fuzz target `tokenizer_model`: the body is `hymba_ref::fuzz_targets::tokenizer_model` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::tokenizer_model(data));
