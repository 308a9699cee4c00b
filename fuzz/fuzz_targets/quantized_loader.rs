#![no_main]
//! Fuzz target `quantized_loader`: the body is `hymba_ref::fuzz_targets::quantized_loader` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::quantized_loader(data));
