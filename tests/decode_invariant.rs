//! The decoding invariant (docs/MODEL.md §5.4): prefill of any prefix followed by
//! single-token steps gives the full-forward logits at every position, far past M + W, on random
//! small configs covering meta tokens or none, a window or none, GQA, both K/V-sharing forms and
//! every RoPE type (dynamic_ntk only within orig_max, where docs/MODEL.md §5.4 says decode can equal forward).

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::{AttentionSpan, HymbaConfig};
use hymba_ref::model::Hymba;
use proptest::prelude::*;
use serde_json::json;

/// A random small config as `config.json` would hold it.
fn config_strategy() -> impl Strategy<Value = serde_json::Value> {
    (
        (1usize..=4, prop_oneof![Just((2usize, 1usize)), Just((2, 2)), Just((4, 2)), Just((4, 1))], 1usize..=2),
        (0usize..=3, prop_oneof![Just(None), (1usize..=5).prop_map(Some)], 0usize..=3),
        (0usize..3, 2usize..=4, 1usize..=4, prop_oneof![Just("default"), Just("ntk"), Just("dynamic_ntk"), Just("off")]),
        (prop_oneof![Just("none"), Just("rms"), Just("perhead-rms")], prop_oneof![Just("silu"), Just("relu2")], any::<bool>()),
    )
        .prop_map(|((layers, (nh, nkv), dqk_mult), (m, window, global_mask), (sharing, d_conv, d_state, rope), (kq, act, flags))| {
            let hidden = nh * 4 * dqk_mult; // dqk = 4 or 8 (even, for RoPE)
            // RMSNorm over B and C of width N = 1 is sign(v)·w with slope 1/√eps ≈ 1000 near v = 0:
            // the ~1e-7 rounding difference between the decode and prefill kernels would come out
            // as ~1e-4 in the logits. With the inner norms on, N ≥ 4 (the released model: 16).
            let d_state = if flags { 4 } else { d_state };
            let global: Vec<usize> = (0..layers).filter(|i| global_mask >> i & 1 == 1).collect();
            let (groups, every) = match sharing {
                0 => (json!(null), json!(-1)),
                1 => (json!((0..layers / 2).map(|g| vec![2 * g, 2 * g + 1]).collect::<Vec<_>>()), json!(-1)),
                _ => (json!(null), json!(2)),
            };
            json!({
                "vocab_size": 40, "hidden_size": hidden, "num_hidden_layers": layers,
                "num_attention_heads": nh, "num_key_value_heads": nkv, "intermediate_size": 24,
                "mamba_expand": 2, "mamba_d_state": d_state, "mamba_d_conv": d_conv, "mamba_dt_rank": "auto",
                "num_memory_tokens": m, "sliding_window": window, "global_attn_idx": global,
                "kv_reuse_group": groups, "kv_reuse_every_i_layer": every,
                "rope": rope != "off", "rope_type": if rope == "off" { "default" } else { rope },
                "rope_theta": 10000.0, "max_position_embeddings": 256, "orig_max_position_embeddings": 128,
                "kq_norm": kq, "mlp_hidden_act": act, "rms_norm_eps": 1e-6,
                "mamba_conv_bias": flags, "mamba_proj_bias": !flags, "mamba_inner_layernorms": flags,
                "tie_word_embeddings": flags,
            })
        })
}

fn random_model(config: &serde_json::Value, seed: u64) -> Hymba {
    let cfg = HymbaConfig::from_json_str(&config.to_string()).expect("valid random config");
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, seed)).expect("random weights load");
    Hymba::new(cfg, weights)
}

fn max_abs_diff(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f32 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prefill_then_steps_equals_full_forward(
        config in config_strategy(),
        seed in any::<u64>(),
        ids_seed in proptest::collection::vec(0u32..40, 1..=64),
        prefill_frac in 0.0f64..1.0,
    ) {
        let model = random_model(&config, seed);
        let c = &model.config;
        // Lengths up to 3·(M + W), and at least a few steps past M + W when there is a window.
        let span = c.num_memory_tokens + c.sliding_window.unwrap_or(4);
        let n = ids_seed.len().min(3 * span).max(1);
        let ids = &ids_seed[..n];
        let k = 1 + ((n - 1) as f64 * prefill_frac) as usize; // 1 ≤ K ≤ n

        let full = model.forward(ids).unwrap(); // (n, V)
        let mut seq = model.new_sequence();
        let mut rows = vec![model.forward_chunk(&ids[..k], &mut seq).unwrap()];
        for &id in &ids[k..] {
            rows.push(model.forward_chunk(&[id], &mut seq).unwrap());
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let incremental = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
        let err = max_abs_diff(full.view(), incremental.view());
        prop_assert!(err <= 1e-4, "max |Δ| = {err} (n = {n}, K = {k}, config {config})");

        // Window eviction never drops a meta row, and keeps at most M + W rows.
        for (plan, kv) in c.layers.iter().zip(&seq.cache.kv) {
            let Some(kv) = kv else { continue };
            let meta = kv.positions().iter().filter(|&&p| p < c.num_memory_tokens).count();
            prop_assert_eq!(meta, c.num_memory_tokens, "layer {} lost meta rows", plan.index);
            if let Some(AttentionSpan::SlidingWindow(w)) = plan.kv_retention {
                prop_assert!(kv.len() <= c.num_memory_tokens + w, "layer {} keeps {} rows", plan.index, kv.len());
            }
        }
    }
}
