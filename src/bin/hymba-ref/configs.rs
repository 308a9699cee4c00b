//! The configs `bench` and `inspect` take by name instead of a path: `small` and `mid` (made up
//! for benchmarking), `1.5b` (the released Hymba-1.5B) and `1.5b-dense` (its dense twin). A
//! config is enough to benchmark on random weights or to count parameters and cache sizes, so
//! these reproduce the README's 1.5B figures from a fresh clone.

use hymba_ref::{Error, Result};
use serde_json::{json, Value};

/// The built-in configs: `small` and `mid` are made up for benchmarking (released-style configs
/// with every Hymba feature: meta tokens, a sliding window, global layers, K/V groups, the
/// released vocabulary); `1.5b` is a copy of the released Hymba-1.5B `config.json`; `1.5b-dense`
/// is [`dense_twin`] of it.
pub const BUILTIN_CONFIGS: [(&str, &str); 3] = [
    ("small", include_str!("bench/configs/small.json")),
    ("mid", include_str!("bench/configs/mid.json")),
    ("1.5b", include_str!("bench/configs/1.5b.json")),
];

/// The name of the dense twin of the `1.5b` config.
pub const DENSE_1_5B: &str = "1.5b-dense";

/// The same model with every layer global (no sliding window) and every layer projecting its
/// own K/V (no sharing): what Hymba's cache would be without its two cache savings.
fn dense_twin(config_json: &str) -> Result<String> {
    let mut config: Value = serde_json::from_str(config_json).map_err(|e| Error::input(format!("config JSON: {e}")))?;
    config["sliding_window"] = Value::Null;
    config["kv_reuse_group"] = Value::Null;
    config["kv_reuse_every_i_layer"] = json!(-1);
    Ok(config.to_string())
}

/// Every built-in name, for help and error messages.
pub const NAMES: [&str; 4] = ["small", "mid", "1.5b", DENSE_1_5B];

/// The `config.json` text of the built-in config `name`; `None` if `name` is not one.
pub fn builtin(name: &str) -> Option<Result<String>> {
    if name == DENSE_1_5B {
        return Some(dense_twin(BUILTIN_CONFIGS[2].1));
    }
    BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name).map(|(_, text)| Ok(text.to_string()))
}
