//! Per-component and end-to-end golden tests on the project's own fixtures (`tests/fixtures/`,
//! made by `reference/make_fixtures.py` with the PyTorch reference). Every case checks, for every
//! layer, the attention heads, the SSM heads, the fused mixer output and the layer output, then
//! the logits; the cached path (prefill + steps) must give the same logits.

mod common;
use common::{assert_close, fixtures_dir, Goldens};
use hymba_ref::model::Hymba;
use hymba_ref::config::RopeScaling;

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn check_fixture(name: &str) {
    let dir = fixtures_dir().join(name);
    let model = Hymba::from_dir(&dir.join("model")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let goldens = Goldens::open(&dir.join("goldens.safetensors"));
    let layers = model.config.num_hidden_layers;
    let mut case = 0;
    while goldens.has(&format!("case{case}.input_ids")) {
        let g = |s: String| goldens.f32(&format!("case{case}.{s}"));
        let key = |s: String| format!("{name}/case{case}.{s}");
        let ids = goldens.ids(&format!("case{case}.input_ids"));
        let trace = model.forward_traced(&ids).unwrap();
        for (i, layer) in trace.layers.iter().enumerate() {
            for (part, got) in [("attn", &layer.attn), ("ssm", &layer.ssm), ("fused", &layer.mixer_output)] {
                let s = format!("layer{i}.{part}");
                assert_close(&key(s.clone()), got.view(), &g(s), ATOL, RTOL);
            }
        }
        for i in 0..=layers {
            assert_close(&key(format!("hidden.{i}")), trace.hidden[i].view(), &g(format!("hidden.{i}")), ATOL, RTOL);
        }
        let want = g("logits".into());
        assert_close(&key("logits".into()), trace.logits.view(), &want, ATOL, RTOL);

        // Cached decoding: prefill half, then one token at a time. dynamic_ntk past orig_max is
        // the one case where decode cannot equal the full forward (docs/MODEL.md §8).
        let past_dynamic = matches!(model.config.rope.map(|r| r.scaling),
            Some(RopeScaling::DynamicNtk { orig_max_position_embeddings: o }) if model.config.num_memory_tokens + ids.len() > o);
        if !past_dynamic {
            let k = ids.len().div_ceil(2);
            let incremental = model.forward_incremental(&ids, k).unwrap();
            assert_close(&key("logits via prefill + steps".into()), incremental.view(), &want, ATOL, RTOL);
        }
        case += 1;
    }
    assert!(case >= 3, "{name}: expected at least 3 cases, found {case}");
}

#[test]
fn silu_groups_default() {
    check_fixture("silu-groups-default");
}

#[test]
fn relu2_every_ntk_f16() {
    check_fixture("relu2-every-ntk-f16");
}

#[test]
fn perhead_dynamic_sharded() {
    check_fixture("perhead-dynamic-sharded");
}

#[test]
fn norope_nometa_nowindow() {
    check_fixture("norope-nometa-nowindow");
}
