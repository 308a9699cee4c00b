#![no_main]
//! Fuzz target `shard_index`: the body is `hymba_ref::fuzz_targets::shard_index` (also run by `cargo test`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hymba_ref::fuzz_targets::shard_index(data));
