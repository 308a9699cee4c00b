#![no_main]
//! Fuzz target `safetensors_bytes`: the body is `hymba_ref::fuzz_targets::safetensors_bytes` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::safetensors_bytes(data));
