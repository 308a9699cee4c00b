//! Cache-size accounting and `hymba-ref inspect`: the cache the engine allocates equals what
//! [`CachePlan`] predicts after every chunk, on random small configs; the released 1.5B config
//! gives the numbers; the CLI reports them and fails cleanly.

mod common;
use common::shared_dir;
use hymba_ref::state::cache_plan::{CachePlan, CacheSize};
use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;

fn inspect(args: &[&str]) -> Output {
    common::cli_command().arg("inspect").args(args).output().expect("run hymba-ref")
}

/// `hymba-ref inspect --model DIR --context N --json`, parsed.
fn inspect_json(dir: &Path, context: usize) -> Value {
    let out = inspect(&["--model", dir.to_str().unwrap(), "--context", &context.to_string(), "--json"]);
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object")
}

/// A fresh directory under the test target dir holding `config` as config.json.
fn config_dir(name: &str, config: &Value) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// The released Hymba-1.5B at 8K: the numbers (docs/MODEL.md §5.5).
#[test]
#[ignore = "needs ../shared"]
fn hymba_1_5b_at_8k() {
    let dir = shared_dir().join("hymba-1.5b");
    let cfg = HymbaConfig::from_file(&dir.join("config.json")).unwrap();
    let (params, kv, ssm, conv) =
        (1_522_797_824, 3 * (8192 + 128) * 960 + 14 * (128 + 1024) * 960, 32 * 3200 * 16, 32 * 3200 * 3);
    assert_eq!(cfg.parameter_count(), params);
    let plan = CachePlan::new(&cfg, 8192).unwrap();
    let want = CacheSize { kv_cache_elements: kv, ssm_state_elements: ssm, conv_state_elements: conv };
    assert_eq!(plan.size, want);
    assert_eq!(plan.dense_equivalent.kv_cache_elements, 32 * 8192 * 960);

    let report = inspect_json(&dir, 8192);
    assert_eq!(report["parameters"], params);
    assert_eq!(report["context"], 8192);
    assert_eq!(report["kv_cache_elements"], kv);
    assert_eq!(report["ssm_state_elements"], ssm);
    assert_eq!(report["conv_state_elements"], conv);
    assert_eq!(report["bytes"], json!({ "bf16": 2 * (kv + ssm + conv), "f32": 4 * (kv + ssm + conv) }));
    assert_eq!(report["layers"][16], json!({
        "index": 16, "attention": "window", "window": 1024, "kv_source": "own", "kv_producer": 16,
        "kv_retention": "window", "kv_rows": 1152, "kv_elements": 1152 * 960,
    }));
    assert_eq!(report["layers"][18]["kv_source"], "reuses");
    assert_eq!(report["layers"][18]["kv_producer"], 16);
    assert_eq!(report["layers"][31]["kv_rows"], 8320);
    // Without the meta rows this is the paper's 78.6 MB ("79 MB") in bf16.
    let paper_bytes = 2 * (kv + ssm + conv - report["kv_meta_elements"].as_u64().unwrap() as usize);
    assert_eq!(paper_bytes, 78_602_240);
}

/// `inspect --model 1.5b`, from a fresh clone: the built-in copy of the released config gives
/// the README's cache claim (K/V 78.9 MB + SSM 3.3 MB + conv 0.6 MB in bf16, 503.3 MB dense, 6.1×).
#[test]
fn the_builtin_1_5b_config_reproduces_the_readme_cache_claim() {
    let out = inspect(&["--model", "1.5b"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("built-in config 1.5b\n"), "{text}");
    let row = |label: &str| text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}: {text}")).to_string();
    assert!(row("K/V ").contains("39,444,480      78.9 MB"), "{text}");
    assert!(row("SSM state").contains("3.3 MB") && row("conv state").contains("0.6 MB"), "{text}");
    assert!(row("without meta").contains("78.6 MB"), "{text}");
    assert!(text.contains("251,658,240     503.3 MB") && text.contains("6.08× the hybrid cache"), "{text}");
    let dense = inspect(&["-m", "1.5b-dense", "--json"]);
    let dense: Value = serde_json::from_slice(&dense.stdout).unwrap();
    assert_eq!(dense["layers"].as_array().unwrap().iter().filter(|l| l["attention"] == "global").count(), 32);
}

/// The built-in `1.5b` is the released config: the same report as its `config.json` in ../shared.
#[test]
#[ignore = "needs ../shared"]
fn the_builtin_1_5b_config_is_the_released_one() {
    let released = inspect_json(&shared_dir().join("hymba-1.5b"), 1000);
    let out = inspect(&["--model", "1.5b", "--context", "1000", "--json"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), released);
}

/// A small config exercising every cache shape: window and global producers, a window producer
/// reused by a global layer, a reusing layer, meta tokens, conv kernel 3.
fn small_config() -> Value {
    json!({
        "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 5,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 8,
        "mamba_expand": 2, "mamba_d_state": 3, "mamba_d_conv": 3, "mamba_dt_rank": "auto",
        "num_memory_tokens": 2, "sliding_window": 4, "global_attn_idx": [0, 4],
        "kv_reuse_group": [[1, 2], [3, 4]], "tie_word_embeddings": false,
    })
}

#[test]
fn cli_json_matches_the_library() {
    let config = small_config();
    let dir = config_dir("inspect-small", &config);
    let cfg = HymbaConfig::from_json_str(&config.to_string()).unwrap();
    for context in [0, 3, 50] {
        let plan = CachePlan::new(&cfg, context).unwrap();
        let report = inspect_json(&dir, context);
        assert_eq!(report["context"], context);
        assert_eq!(report["parameters"], cfg.parameter_count());
        assert_eq!(report["kv_cache_elements"], plan.size.kv_cache_elements);
        assert_eq!(report["ssm_state_elements"], plan.size.ssm_state_elements);
        assert_eq!(report["conv_state_elements"], plan.size.conv_state_elements);
        assert_eq!(report["dense_equivalent"]["kv_cache_elements"], plan.dense_equivalent.kv_cache_elements);
        let rows: Vec<u64> = report["layers"].as_array().unwrap().iter().map(|l| l["kv_rows"].as_u64().unwrap()).collect();
        let want: Vec<u64> = plan.layers.iter().map(|l| l.kv_rows as u64).collect();
        assert_eq!(rows, want, "context {context}");

        let b = &report["parameters_breakdown"];
        let parts = ["embedding", "meta_tokens", "final_norm", "lm_head"].iter().map(|k| b[k].as_u64().unwrap());
        let layers = ["own_kv_layers", "reusing_layers"].iter().map(|k| b[k]["parameters"].as_u64().unwrap());
        assert_eq!(parts.chain(layers).sum::<u64>(), cfg.parameter_count() as u64);
    }
    // The readable report runs too, and shows the plan.
    let out = inspect(&["--model", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("reuses layer 3") && text.contains("Dense-attention equivalent"), "{text}");
}

#[test]
fn cli_errors() {
    // A directory without config.json: exit 1, naming the file.
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect-no-such-dir");
    let out = inspect(&["--model", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json"), "{stderr}");

    // An invalid config: exit 1, naming the file and the field.
    let mut bad = small_config();
    bad["num_attention_heads"] = json!(3);
    let dir = config_dir("inspect-bad", &bad);
    let out = inspect(&["--model", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json") && stderr.contains("num_attention_heads"), "{stderr}");

    // A context past the range (whose cache size would overflow): exit 2, naming the flag.
    let dir = config_dir("inspect-ok", &small_config());
    let out = inspect(&["--model", dir.to_str().unwrap(), "--context", &(usize::MAX / 2).to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--context"));

    // Usage errors: exit 2. Without --model: the bundled model.
    assert_eq!(inspect(&["--model", dir.to_str().unwrap(), "--bogus"]).status.code(), Some(2));
    assert_eq!(inspect(&["--model", dir.to_str().unwrap(), "--context", "-1"]).status.code(), Some(2));
    assert_eq!(inspect(&[]).status.code(), Some(0));
}

/// A random small config: meta tokens or none, a window or none, any set of global layers,
/// no K/V sharing, groups (of 2 or 3, so a global layer may reuse a window producer) or
/// every-i-layer sharing, and conv kernels from 1 (no conv state) to 4.
fn config_strategy() -> impl Strategy<Value = Value> {
    (1usize..=5, 0usize..=3, prop_oneof![Just(None), (1usize..=6).prop_map(Some)], 0usize..32, 0usize..4, 1usize..=4, 1usize..=3)
        .prop_map(|(layers, m, window, global_mask, sharing, d_conv, d_state)| {
            let global: Vec<usize> = (0..layers).filter(|i| global_mask >> i & 1 == 1).collect();
            let chunks = |size: usize| (0..layers).step_by(size).map(|g| (g..(g + size).min(layers)).collect()).collect::<Vec<Vec<usize>>>();
            let (groups, every) = match sharing {
                0 => (json!(null), json!(-1)),
                1 => (json!(chunks(2)), json!(-1)),
                2 => (json!(chunks(3)), json!(-1)),
                _ => (json!(null), json!(2)),
            };
            json!({
                "vocab_size": 20, "hidden_size": 8, "num_hidden_layers": layers,
                "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8,
                "mamba_expand": 2, "mamba_d_state": d_state, "mamba_d_conv": d_conv,
                "num_memory_tokens": m, "sliding_window": window, "global_attn_idx": global,
                "kv_reuse_group": groups, "kv_reuse_every_i_layer": every, "rope": true,
            })
        })
}

/// The cache after `context` tokens holds exactly what the plan predicts, layer by layer.
fn check_cache(model: &Hymba, cache: &hymba_ref::state::cache::HybridCache, context: usize) -> Result<(), TestCaseError> {
    let plan = CachePlan::new(&model.config, context).unwrap();
    prop_assert_eq!(cache.allocated_scalars(), plan.size, "context {}", context);
    let rows: Vec<usize> = cache.kv.iter().map(|kv| kv.as_ref().map_or(0, |kv| kv.len())).collect();
    let want: Vec<usize> = plan.layers.iter().map(|l| l.kv_rows).collect();
    prop_assert_eq!(rows, want, "K/V rows per layer at context {}", context);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Prefill and steps (chunks of any length): after every chunk, and for a new sequence
    /// (context 0), the allocated cache equals the plan.
    #[test]
    fn allocated_cache_equals_plan(
        config in config_strategy(),
        chunks in proptest::collection::vec(1usize..=7, 1..=8),
        ids_seed in proptest::collection::vec(0u32..20, 56),
    ) {
        let cfg = HymbaConfig::from_json_str(&config.to_string()).expect("valid random config");
        let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 7)).expect("random weights");
        let model = Hymba::new(cfg, weights);
        let mut seq = model.new_sequence();
        check_cache(&model, &seq.cache, 0)?;
        let mut context = 0;
        for len in chunks {
            model.forward_chunk(&ids_seed[context..context + len], &mut seq).unwrap();
            context += len;
            check_cache(&model, &seq.cache, context)?;
        }
    }
}
