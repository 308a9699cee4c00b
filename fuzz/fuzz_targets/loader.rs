#![no_main]
//! Fuzz target `loader`: the body is `hymba_ref::fuzz_targets::loader` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::loader(data));
