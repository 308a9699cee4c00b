//! Smoke test of `hymba-ref bench`: it runs end to end on a tiny setting and its JSON has every
//! field the report script reads, with positive numbers. No timing is asserted.

mod common;

use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x} is not positive");
    x
}

#[test]
fn bench_json_has_every_field() {
    let out = common::cli_command()
        .args(["bench", "--configs", "small", "--contexts", "16", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "1", "--bandwidth-mib", "64", "--json", "--batch-sizes", "1,3,max", "--cache-budget-gb", "0.1"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");

    assert_eq!(report["threads"], 1);
    assert_eq!(report["decode_tokens"], 2);
    positive(&report["bandwidth"]["read_bytes_per_second"], "bandwidth");
    assert!(report["machine"]["scaling"].is_null(), "the machine's scaling is measured with --profile only");
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
fn bench_profile_reports_every_phase_at_one_and_two_threads_of_the_timed_prefill_and_batch() {
    let out = common::cli_command()
        .args(["bench", "--configs", "small", "--contexts", "40", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "2", "--bandwidth-mib", "0", "--batch-sizes", "2", "--profile", "--json"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let context = &report["configs"][0]["contexts"][0];
    let profile = &context["profile"];
    assert_eq!(profile["threads"], 2);
    // What the machine alone gains from the 2 threads; no bandwidth measured, so no reads.
    let scaling = &report["machine"]["scaling"];
    assert_eq!(scaling["threads"], 2, "{scaling}");
    positive(&scaling["gemm_speedup"], "the machine's GEMM speed-up");
    assert!(scaling["gemm_serial_share"].is_number() && scaling["read_speedup"].is_null(), "{scaling}");
    // Prefill: one sequence of 40 rows; decode: the batch of 2, one row per sequence a step.
    for (kind, rows) in [("prefill", 40), ("decode", 2)] {
        let p = &profile[kind];
        assert_eq!(p["rows_per_pass"], rows, "{kind}");
        let (one, two) = (positive(&p["seconds_1_thread"], kind), positive(&p["seconds_n_threads"], kind));
        let speedup = positive(&p["speedup"], kind);
        assert!((speedup - one / two).abs() < 1e-9, "{kind}: speed-up {speedup} is t1 / t2 = {one} / {two}");
        assert!(p["serial_share"].is_number(), "{kind}: a serial share from 2 threads");
        let phases = p["phases"].as_array().expect("phases");
        let names: Vec<&str> = phases.iter().map(|x| x["phase"].as_str().unwrap()).collect();
        for phase in ["projections", "attention", "kv cache", "ssm", "mlp", "elementwise", "output"] {
            let at = names.iter().position(|n| *n == phase).unwrap_or_else(|| panic!("{kind}: no {phase} in {names:?}"));
            positive(&phases[at]["seconds_1_thread"], &format!("{kind} {phase} at 1 thread"));
            positive(&phases[at]["seconds_n_threads"], &format!("{kind} {phase} at 2 threads"));
        }
        let parts: f64 = phases.iter().map(|x| x["seconds_1_thread"].as_f64().unwrap()).sum();
        assert!((parts - one).abs() < 1e-6, "{kind}: the phases and `other` add up to the call ({parts} vs {one})");
        // Per pass, per layer (small has 4): 2 projections (in_proj, out_proj), one attention
        // region, the SSM heads and the MLP, each timed whole; then the output's norm and lm_head.
        // The K/V upkeep: an append in each of the 3 producers (layer 2 reuses layer 1's K/V), and
        // the evictions after the pass.
        let sections = |phase: &str| phases[names.iter().position(|n| *n == phase).unwrap()]["sections_per_call"].as_f64();
        for (phase, per_pass) in [("projections", 8.0), ("attention", 4.0), ("kv cache", 4.0), ("ssm", 4.0), ("mlp", 4.0), ("output", 1.0)] {
            assert_eq!(sections(phase), Some(per_pass), "{kind}: {phase} sections a call (one pass)");
        }
        let regions = positive(&p["parallel_regions_per_call"], kind);
        // At least the projections' 8, attention's 4, the SSM heads' 3 a layer (x_proj, dt_proj, the
        // scan), the MLP's 2 a layer and lm_head's 1.
        assert!(regions >= 33.0, "{kind}: at least the parallel phases' {regions} regions");
        let after_long = p["parallel_regions_after_long_stretch_per_call"].as_f64().expect("regions after a long stretch");
        assert!((0.0..=regions).contains(&after_long), "{kind}: {after_long} of {regions} regions");
        let (low, high) = (p["synchronisation_share"].as_f64().unwrap(), p["synchronisation_share_after_idle"].as_f64().unwrap());
        let estimate = p["synchronisation_share_estimate"].as_f64().expect("an estimate");
        assert!(low.min(high) - 1e-12 <= estimate && estimate <= low.max(high) + 1e-12, "{kind}: {estimate} outside {low}..{high}");
        for (cost, share) in [("parallel_region_seconds", "synchronisation_share"), ("parallel_region_seconds_after_idle", "synchronisation_share_after_idle")] {
            let region_seconds = positive(&p[cost], kind);
            let share = p[share].as_f64().expect("a synchronisation share");
            assert!((share - regions * region_seconds * p["calls"].as_f64().unwrap() / two).abs() < 1e-9, "{kind}: {share}");
        }
    }
    // The profile at 2 threads is of the timed calls themselves.
    let prefill_seconds = context["prefill_seconds"][0].as_f64().expect("one timed prefill");
    assert_eq!(profile["prefill"]["seconds_n_threads"].as_f64(), Some(prefill_seconds));
    assert_eq!(profile["decode"]["seconds_n_threads"], context["decode_seconds"][0]);
    // The CPU the timed runs used (counted by the kernel in 10 ms ticks: a short run may read 0).
    if cfg!(target_os = "linux") {
        for kind in ["prefill_cpu", "decode_cpu"] {
            let cpu = &context[kind];
            for key in ["user_seconds", "system_seconds", "threads_busy"] {
                let v = cpu[key].as_f64().unwrap_or_else(|| panic!("{kind}.{key}: {cpu}"));
                assert!(v >= 0.0 && v.is_finite(), "{kind}.{key} = {v}");
            }
            assert!(cpu["minor_page_faults"].is_u64(), "{kind}: {cpu}");
        }
    }
}

#[test]
fn bench_profile_with_a_synthetic_cache_has_no_prefill_profile() {
    let out = common::cli_command()
        .args(["bench", "--configs", "small", "--contexts", "40", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "2", "--bandwidth-mib", "0", "--batch-sizes", "3", "--synthetic-cache", "--profile"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("profile small ctx 40 decode of a batch of 3 (3 rows a pass)"), "{table}");
    assert!(!table.contains("prefill of one sequence"), "{table}");
    assert!(table.contains("the machine alone at 2 threads (measured apart from the engine): GEMM tiles "), "{table}");
    assert!(table.contains("memory reads not measured"), "{table}");
}

#[test]
fn bench_refuses_unknown_config() {
    let out = common::cli_command()
        .args(["bench", "--configs", "no-such-config", "--bandwidth-mib", "0"])
        .output()
        .expect("run hymba-ref");
    assert_eq!(out.status.code(), Some(2), "a bad --configs value is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-config"));
}

/// `bench --from-disk` on the small config, 2 runs, with its temporary files under `tmp`: the report.
fn bench_from_disk(tmp: &common::TempDir, extra: &[&str]) -> Value {
    let out = common::cli_command()
        .args(["bench", "--from-disk", "--configs", "small", "--runs", "2", "--threads", "1", "--json"])
        .args(extra)
        .env("TMPDIR", &tmp.0)
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn bench_from_disk_reports_the_split_and_removes_its_checkpoint() {
    let tmp = common::TempDir::new("bench-from-disk");
    let report = bench_from_disk(&tmp, &[]);
    let small = &report["configs"][0];
    assert_eq!(small["name"], "small");
    assert_eq!(small["shards"], 2);
    positive(&small["weight_bytes_on_disk"], "weight_bytes_on_disk");
    // The first run computes the meta prefix and caches it; the second reads it.
    for (summary, runs) in [("prefix_computed", 1), ("prefix_cached", 1)] {
        let s = &small[summary];
        assert_eq!(s["runs"], runs, "{summary}");
        for key in ["start_to_first_token_seconds", "load_seconds", "meta_prefix_seconds", "prefill_seconds", "cache_bytes"] {
            positive(&s[key], key);
        }
        // The split is part of the process's time.
        let wall = s["start_to_first_token_seconds"].as_f64().unwrap();
        let split: f64 = ["load_seconds", "meta_prefix_seconds", "prefill_seconds"].iter().map(|k| s[k].as_f64().unwrap()).sum();
        assert!(split < wall, "{summary}: {split} ≥ {wall}");
        if cfg!(target_os = "linux") {
            positive(&s["peak_rss_bytes"], "peak_rss_bytes");
        }
    }
    let runs = small["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((&runs[0]["child"]["prefix_from_cache"], &runs[1]["child"]["prefix_from_cache"]), (&Value::Bool(false), &Value::Bool(true)));
    assert_eq!(runs[0]["child"]["first_token"], runs[1]["child"]["first_token"], "the cached prefix gives the same token");
    assert_eq!(tmp.entries(), Vec::<String>::new(), "left behind");
}

/// `bash benches/many_cores.sh OUT_DIR` with this build's binary, on the small config and 2
/// threads (its prefix cache under target/, as `common::cli_command`'s).
#[cfg(unix)]
fn many_core_script(out_dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("bash");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/many_cores.sh"))
        .arg(out_dir)
        .env("BIN", env!("CARGO_BIN_EXE_hymba-ref"))
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .envs([("CONFIG", "small"), ("THREADS", "2")]);
    command
}

/// benches/many_cores.sh, the prepared run for a machine with many cores, on the small config:
/// every bench it makes succeeds (so its flags stay those `bench` takes) and its summary holds
/// each profile it asks for.
#[test]
#[cfg(unix)]
fn the_many_core_script_runs_each_of_its_benches() {
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("many_cores");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = many_core_script(&out_dir).envs([("BANDWIDTH_MIB", "64"), ("LIMIT", "120")]).output().expect("run bash");
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).expect("a summary");
    assert!(out.status.success(), "the script failed: {}\n{summary}", String::from_utf8_lossy(&out.stderr));
    for run in ["decode-profile", "prefill-2-threads", "prefill-profile"] {
        assert!(summary.contains(&format!("-- {run}: exit 0 ")), "{run}: {summary}");
    }
    for profile in ["profile small ctx 1024 decode of a batch of 1", "profile small ctx 4096 decode of a batch of 1", "profile small ctx 512 prefill of one sequence"] {
        assert!(summary.contains(profile), "{profile}: {summary}");
    }
    assert!(summary.contains("the machine alone at 2 threads"), "{summary}");
}

/// The script refuses a directory that already holds files, and leaves them as they were.
#[test]
#[cfg(unix)]
fn the_many_core_script_overwrites_no_earlier_results() {
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("many_cores_not_empty");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("summary.txt"), "an earlier run\n").unwrap();
    let out = many_core_script(&out_dir).output().expect("run bash");
    assert!(!out.status.success(), "a directory with files is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not empty") && stderr.contains("nothing was run"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out_dir.join("summary.txt")).unwrap(), "an earlier run\n");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1, "nothing written beside it");
}

/// `--weights bf16,q8_0,q4_0`: one row per format, side by side, each with the bytes its format
/// holds and reads (q8_0 and q4_0 matrices at 8.5 and 4.5 bits a weight, the rest in f32), and
/// the time quantizing took. `--from-disk --weights q4_0` loads a quantized checkpoint.
#[test]
fn bench_weights_measures_each_format_as_a_row() {
    let out = common::cli_command()
        .args(["bench", "--configs", "small", "--contexts", "8", "--runs", "1", "--decode-tokens", "2"])
        .args(["--threads", "1", "--bandwidth-mib", "16", "--weights", "bf16,q8_0,q4_0", "--json"])
        .output()
        .expect("run hymba-ref");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = report["configs"].as_array().expect("configs");
    let formats: Vec<&str> = rows.iter().map(|r| r["weights"].as_str().unwrap()).collect();
    assert_eq!(formats, ["bf16", "q8_0", "q4_0"]);
    let bytes: Vec<f64> = rows.iter().map(|r| positive(&r["decode_bytes_per_token"], "decode_bytes_per_token")).collect();
    for (row, bits) in rows[1..].iter().zip([8.5, 4.5]) {
        positive(&row["quantize_seconds"], "quantize_seconds");
        positive(&row["weight_bytes"], "weight_bytes");
        // The matrices are nearly all of the bytes: the ratio to bf16 is close to bits / 16.
        let ratio = row["decode_bytes_per_token"].as_f64().unwrap() / bytes[0];
        assert!((ratio - bits / 16.0).abs() < 0.03, "{}: {ratio}", row["weights"]);
        let roofline = row["roofline_decode_tok_per_s"].as_f64().unwrap() / rows[0]["roofline_decode_tok_per_s"].as_f64().unwrap();
        assert!((roofline * ratio - 1.0).abs() < 1e-9, "the roofline is the bandwidth over the bytes read");
        for c in row["contexts"].as_array().unwrap() {
            positive(&c["decode_tok_per_s"], "decode_tok_per_s");
            positive(&c["prefill_tok_per_s"], "prefill_tok_per_s");
        }
    }
    assert!(rows[0]["quantize_seconds"].is_null());

    let tmp = common::TempDir::new("bench-from-disk-q4");
    let report = bench_from_disk(&tmp, &["--weights", "q4_0"]);
    let small = &report["configs"][0];
    assert_eq!(small["weights"], "q4_0");
    positive(&small["prefix_cached"]["start_to_first_token_seconds"], "start_to_first_token_seconds");
    assert!(tmp.entries().is_empty(), "left behind: {:?}", tmp.entries());

    let out = common::cli_command().args(["bench", "--configs", "small", "--weights", "q3_k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights q3_k"));
}
