//! Smoke test of `hymba-ref bench`: it runs end to end on a tiny setting and its JSON has every
//! field the report script reads, with positive numbers. No timing is asserted.

use serde_json::Value;
use std::process::Command;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x} is not positive");
    x
}

#[test]
fn bench_json_has_every_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_hymba-ref"))
        .args(["bench", "--configs", "small", "--contexts", "16", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "1", "--bandwidth-mib", "64", "--json", "--batch-sizes", "1,3,max", "--cache-budget-gb", "0.1"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");

    assert_eq!(report["threads"], 1);
    assert_eq!(report["decode_tokens"], 2);
    positive(&report["bandwidth"]["read_bytes_per_second"], "bandwidth");
    let configs = report["configs"].as_array().expect("configs");
    assert_eq!(configs.len(), 1);
    let small = &configs[0];
    assert_eq!(small["name"], "small");
    for key in ["params", "params_read_per_decode_token", "bytes_per_param", "decode_bytes_per_token",
        "roofline_decode_tok_per_s", "load_seconds"] {
        positive(&small[key], key);
    }
    // One entry per batch size: 1, 3, and the largest whose caches fit 0.1 GB at 16 + 2 tokens.
    let contexts = small["contexts"].as_array().expect("contexts");
    assert_eq!(contexts.len(), 3);
    let per_sequence = positive(&contexts[0]["cache_plan_bytes_per_sequence"], "cache_plan_bytes_per_sequence");
    let largest = (0.1e9 / per_sequence).floor() as u64;
    let batches: Vec<&Value> = contexts.iter().map(|c| &c["batch_size"]).collect();
    assert_eq!(batches, [1, 3, largest]);
    for c in contexts {
        assert_eq!((&c["context"], &c["runs"], &c["largest_batch_in_budget"]), (&16.into(), &1.into(), &largest.into()));
        for key in ["prefill_tok_per_s", "decode_tok_per_s", "decode_ms_per_step", "cache_bytes", "roofline_fraction"] {
            positive(&c[key], key);
        }
    }
    // The batch's caches are B copies of one sequence's.
    assert_eq!(contexts[1]["cache_bytes"].as_f64(), contexts[0]["cache_bytes"].as_f64().map(|b| 3.0 * b));
    let c = &contexts[0];
    if cfg!(target_os = "linux") {
        let weights = positive(&small["weight_bytes"], "weight_bytes");
        let peak = positive(&c["peak_rss_bytes"], "peak_rss_bytes");
        assert!(peak > weights, "the peak ({peak}) includes the weights ({weights})");
    }
}

#[test]
fn bench_refuses_unknown_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_hymba-ref"))
        .args(["bench", "--configs", "no-such-config", "--bandwidth-mib", "0"])
        .output()
        .expect("run hymba-ref");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-config"));
}
