//! Continuous batching is exact: a sequence decoded in a [`Batch`], joining and leaving at any
//! step beside others of other lengths, gets bit for bit the logits (and so the greedy tokens)
//! it gets decoding alone.

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::features::generate::sampling::argmax;
use hymba_ref::model::{Batch, Hymba, SequenceId};
use proptest::prelude::*;
use serde_json::json;

/// Every Hymba feature (meta tokens, a window shorter than the prompts, a global layer, K/V
/// shared across layers), with widths that take every path of the batched bf16 kernel: whole
/// chunks of 32 columns and tails (hidden 48, D 96, MLP 72), weight rows in pairs and alone.
fn model() -> Hymba {
    let config = json!({
        "vocab_size": 50, "hidden_size": 48, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 72,
        "mamba_expand": 2, "mamba_d_state": 4, "mamba_d_conv": 3, "mamba_dt_rank": "auto",
        "num_memory_tokens": 3, "sliding_window": 5, "global_attn_idx": [1],
        "kv_reuse_group": [[1, 2]], "rope": true, "rope_type": "ntk",
        "mamba_inner_layernorms": true, "mamba_conv_bias": true, "tie_word_embeddings": false,
        "max_position_embeddings": 256, "orig_max_position_embeddings": 128, "rope_theta": 10000.0,
    });
    let cfg = HymbaConfig::from_json_str(&config.to_string()).expect("valid config");
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 3)).expect("random weights");
    Hymba::new(cfg, weights)
}

/// One sequence of a schedule: its prompt, the step at which it joins, how many steps it decodes.
#[derive(Debug, Clone)]
struct Plan {
    prompt: Vec<u32>,
    join: usize,
    steps: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    (prop::collection::vec(0u32..50, 1..14), 0usize..5, 1usize..7).prop_map(|(prompt, join, steps)| Plan { prompt, join, steps })
}

/// The logits rows a sequence sees alone: after its prompt, then after each greedy token.
fn alone(model: &Hymba, plan: &Plan) -> Vec<Vec<f32>> {
    let mut seq = model.new_sequence();
    let mut rows = vec![model.next_token_logits(&plan.prompt, &mut seq).unwrap().to_vec()];
    for _ in 0..plan.steps {
        let next = argmax(rows.last().unwrap());
        rows.push(model.next_token_logits(&[next], &mut seq).unwrap().to_vec());
    }
    rows
}

/// The same rows for every sequence of `plans` run as one batch: each prefills alone at its join
/// step, then decodes its steps in the batch, leaving after its last.
fn batched(model: &Hymba, plans: &[Plan]) -> Vec<Vec<Vec<f32>>> {
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); plans.len()];
    let mut batch = Batch::new();
    let mut members: Vec<(SequenceId, usize)> = Vec::new(); // batch order: (id, plan index)
    let mut step = 0;
    while rows.iter().zip(plans).any(|(r, p)| r.len() < p.steps + 1) {
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| p.join == step) {
            let mut seq = model.new_sequence();
            rows[i].push(model.next_token_logits(&plan.prompt, &mut seq).unwrap().to_vec());
            members.push((batch.add(seq), i));
        }
        let next: Vec<u32> = members.iter().map(|&(_, i)| argmax(rows[i].last().unwrap())).collect();
        assert_eq!(batch.ids().collect::<Vec<_>>(), members.iter().map(|m| m.0).collect::<Vec<_>>());
        let logits = batch.step(model, &next).unwrap(); // (B, V)
        for (row, &(_, i)) in logits.rows().into_iter().zip(&members) {
            rows[i].push(row.to_vec());
        }
        for (id, i) in members.clone() {
            if rows[i].len() == plans[i].steps + 1 {
                assert!(batch.remove(id).is_some());
                members.retain(|m| m.0 != id);
            }
        }
        step += 1;
    }
    assert!(batch.is_empty());
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_sequence_in_a_batch_gets_its_logits_alone(plans in prop::collection::vec(plan(), 1..7)) {
        let model = model();
        let together = batched(&model, &plans);
        for (i, (plan, together)) in plans.iter().zip(&together).enumerate() {
            let alone = alone(&model, plan);
            prop_assert_eq!(alone.len(), together.len());
            for (step, (a, t)) in alone.iter().zip(together).enumerate() {
                let first = a.iter().zip(t).position(|(a, t)| a.to_bits() != t.to_bits());
                prop_assert!(first.is_none(), "sequence {} step {}: logit {:?} differs: {} alone, {} batched",
                    i, step, first, a[first.unwrap()], t[first.unwrap()]);
            }
        }
    }
}

#[test]
fn a_step_needs_one_id_per_member_and_refuses_ids_outside_the_vocabulary() {
    let model = model();
    let mut batch = Batch::new();
    let mut seq = model.new_sequence();
    model.next_token_logits(&[1, 2], &mut seq).unwrap();
    let id = batch.add(seq);
    assert!(batch.step(&model, &[]).unwrap_err().message.contains("one id per sequence"));
    assert!(batch.step(&model, &[50]).is_err());
    assert_eq!(batch.step(&model, &[3]).unwrap().dim(), (1, 50));
    assert!(batch.remove(id).is_some() && batch.remove(id).is_none());
    assert_eq!(batch.step(&model, &[]).unwrap().dim(), (0, 50), "an empty batch steps to nothing");
}
