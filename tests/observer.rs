//! A `LayerObserver` sees what every layer of every pass computed, from the same path as
//! `forward`: the attention output recomputed from the trace's queries and K/V equals the trace's
//! attention output, the rows are where the passes put them, and observing changes nothing.

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::attention::{attention_heads_reference, Mask};
use hymba_ref::model::{Hymba, Keep, LayerTrace, Scratch, Segment};
use ndarray::s;

fn model() -> Hymba {
    let config = serde_json::json!({
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24,
        "num_memory_tokens": 3, "sliding_window": 5, "global_attn_idx": [1],
        "kv_reuse_group": [[0, 2]], "rope": true, "mamba_d_state": 4, "mamba_d_conv": 3,
    });
    let cfg = HymbaConfig::from_json_str(&config.to_string()).unwrap();
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 3)).unwrap();
    Hymba::new(cfg, weights)
}

/// Every part's attention output, recomputed from the trace's q and K/V: its largest difference.
fn attention_mismatch(model: &Hymba, t: &LayerTrace) -> f32 {
    let mut worst = 0f32;
    for (part, kv) in t.parts.iter().zip(&t.kv) {
        let rows = part.rows.clone();
        let q = t.q.slice(s![rows.clone(), .., ..]);
        let mask = Mask::new(&t.positions[rows.clone()], kv.positions, t.plan.attention, model.config.num_memory_tokens);
        let want = attention_heads_reference(q, kv.keys.view(), kv.values, mask);
        let got = t.attn.slice(s![rows, ..]);
        worst = worst.max(got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
    }
    worst
}

#[test]
fn the_trace_of_a_forward_pass_is_what_the_layers_computed() {
    let model = model();
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 1) % 50).collect();
    let (mut calls, mut worst) = (Vec::new(), 0f32);
    let mut observer = |t: &LayerTrace| {
        calls.push((t.plan.index, t.positions.to_vec()));
        worst = worst.max(attention_mismatch(&model, t));
        assert!(t.delta.iter().all(|&d| d > 0.0), "Δ = softplus(…) > 0");
        assert_eq!((t.input.dim(), t.output.dim(), t.mixer_output.dim()), ((23, 16), (23, 16), (23, 16)));
    };
    let observed = model.forward_observed(&ids, &mut observer).unwrap();
    assert!(worst <= 1e-5, "attention from the trace's q and K/V differs by {worst}");
    let want: Vec<(usize, Vec<usize>)> = (0..3).map(|layer| (layer, (0..23).collect())).collect();
    assert_eq!(calls, want, "one call per layer, rows at positions 0..M+n");
    assert_eq!(observed, model.forward(&ids).unwrap(), "observing changes nothing");
}

#[test]
fn a_batch_is_observed_per_segment() {
    let model = model();
    let (mut a, mut b) = (model.new_sequence(), model.new_sequence());
    model.next_token_logits(&[1, 2, 3, 4, 5, 6, 7, 8], &mut a).unwrap();
    model.next_token_logits(&[9, 10], &mut b).unwrap();
    let (mut parts, mut worst) = (Vec::new(), 0f32);
    let mut observer = |t: &LayerTrace| {
        parts.push(t.parts.iter().map(|p| (p.segment, p.rows.clone(), t.kv.len())).collect::<Vec<_>>());
        worst = worst.max(attention_mismatch(&model, t));
        assert_eq!(t.positions, &[11, 12, 5][..], "each segment at its own positions");
    };
    let mut segments = [Segment::new(&mut a.cache, &[11, 12], Keep::LastRow), Segment::new(&mut b.cache, &[13], Keep::LastRow)];
    model.run(&mut segments, &mut Scratch::default(), Some(&mut observer)).unwrap();
    assert!(worst <= 1e-5, "attention from the trace's q and K/V differs by {worst}");
    assert_eq!(parts, vec![vec![(0, 0..2, 2), (1, 2..3, 2)]; 3]);
}
