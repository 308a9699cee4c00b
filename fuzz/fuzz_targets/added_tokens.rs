#![no_main]
//! Fuzz target `added_tokens`: the body is `hymba_ref::fuzz_targets::added_tokens` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::added_tokens(data));
