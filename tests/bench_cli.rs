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
        .args(["--threads", "1", "--bandwidth-mib", "64", "--json"])
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
    let contexts = small["contexts"].as_array().expect("contexts");
    assert_eq!(contexts.len(), 1);
    let c = &contexts[0];
    assert_eq!(c["context"], 16);
    assert_eq!(c["runs"], 1);
    for key in ["prefill_tok_per_s", "decode_tok_per_s", "decode_ms_per_token", "cache_bytes", "roofline_fraction"] {
        positive(&c[key], key);
    }
    if cfg!(target_os = "linux") {
        let weights = positive(&small["weight_bytes"], "weight_bytes");
        let peak = positive(&c["peak_rss_bytes"], "peak_rss_bytes");
        assert!(peak > weights, "the peak ({peak}) includes the weights ({weights})");
    }
}

#[test]
fn bench_profile_reports_every_phase_at_one_and_two_threads() {
    let out = Command::new(env!("CARGO_BIN_EXE_hymba-ref"))
        .args(["bench", "--configs", "small", "--contexts", "40", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "2", "--bandwidth-mib", "0", "--profile", "--json"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let profile = &report["configs"][0]["contexts"][0]["profile"];
    assert_eq!(profile["threads"], 2);
    for (kind, rows) in [("prefill", 40), ("decode", 1)] {
        let p = &profile[kind];
        assert_eq!(p["rows_per_pass"], rows, "{kind}");
        let (one, two) = (positive(&p["seconds_1_thread"], kind), positive(&p["seconds_n_threads"], kind));
        let speedup = positive(&p["speedup"], kind);
        assert!((speedup - one / two).abs() < 1e-9, "{kind}: speed-up {speedup} is t1 / t2 = {one} / {two}");
        assert!(p["serial_share"].is_number(), "{kind}: a serial share from 2 threads");
        let phases: Vec<&str> = p["phases"].as_array().expect("phases").iter().map(|x| x["phase"].as_str().unwrap()).collect();
        for phase in ["weights", "attention", "conv", "scan", "elementwise", "output"] {
            assert!(phases.contains(&phase), "{kind}: no {phase} in {phases:?}");
        }
        let parts: f64 = p["phases"].as_array().unwrap().iter().map(|x| x["seconds_1_thread"].as_f64().unwrap()).sum();
        assert!((parts - one).abs() < 1e-6, "{kind}: the phases and `other` add up to the call ({parts} vs {one})");
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
