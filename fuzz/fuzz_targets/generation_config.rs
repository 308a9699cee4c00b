#![no_main]
//! Fuzz target `generation_config`: the body is `hymba_ref::fuzz_targets::generation_config` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::generation_config(data));
