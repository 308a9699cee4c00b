//! The plain forward pass (`src/model/plain.rs`) against the PyTorch goldens and against the fast
//! path, on every fixture, the demo model and the conformance sets; and its own incremental
//! decoding (prefill, then one token at a time) against its full pass.
//!
//! Tolerances, `|got − want| ≤ atol + rtol·|want|`: against the goldens 1e-4 absolute, as
//! `conformance.rs` asks of the fast path (measured: at most 6.5e-6); plain against fast and
//! plain steps against the plain full pass to `SAME`, since both compute in f32 and differ only
//! in the order of their sums (measured: at most 1e-5, on the demo model's logits).

mod common;
use common::{assert_close, fixtures_dir, shared_dir, Goldens};
use hymba_ref::config::{HymbaConfig, RopeScaling};
use hymba_ref::model::plain::{self, Vectors, Weights};
use hymba_ref::model::Hymba;
use ndarray::{s, Array2, ArrayD};
use std::path::Path;

/// (atol, rtol) against the PyTorch goldens.
const GOLDEN: (f32, f32) = (1e-4, 0.0);
/// (atol, rtol) between two f32 computations of the same pass.
const SAME: (f32, f32) = (2e-5, 1e-5);

fn array(rows: &Vectors) -> Array2<f32> {
    let width = rows.first().map_or(0, Vec::len);
    Array2::from_shape_vec((rows.len(), width), rows.concat()).expect("rows of equal width")
}

/// Plain prefill of `ids[..prefill]`, then one plain step per remaining id. → (n, V)
fn plain_incremental(cfg: &HymbaConfig, w: &Weights, ids: &[u32], prefill: usize) -> Vectors {
    let (mut cache, mut logits) = plain::prefill(cfg, w, &ids[..prefill]);
    for &id in &ids[prefill..] {
        logits.push(plain::step(cfg, w, &mut cache, id));
    }
    logits
}

/// Whether a pass over `ids` goes past a `dynamic_ntk` model's orig_max, where a cached decode
/// cannot equal the full pass (docs/MODEL.md §8) and the fast path's meta prefix, rotated on its own,
/// differs from the plain prefill of meta + prompt together.
fn past_dynamic_ntk(cfg: &HymbaConfig, len: usize) -> bool {
    matches!(cfg.rope.map(|r| r.scaling),
        Some(RopeScaling::DynamicNtk { orig_max_position_embeddings: o }) if cfg.num_memory_tokens + len > o)
}

/// Plain full pass vs `want` (goldens for its last rows, `GOLDEN`) and vs the fast full pass
/// (`SAME`); plain prefill of `ids[..prefill]` + steps vs the plain full pass and vs the fast
/// prefill + steps (`SAME`). Returns the max errors (vs goldens, vs fast).
fn check_ids(name: &str, model: &Hymba, w: &Weights, ids: &[u32], prefill: usize, want: Option<&ArrayD<f32>>) -> (f32, f32) {
    let cfg = &model.config;
    let got = array(&plain::forward(cfg, w, ids)); // (n, V)
    let golden_err = want.map_or(0.0, |want| {
        let last = got.slice(s![got.nrows() - want.shape()[0].., ..]);
        assert_close(&format!("{name}: plain logits vs golden"), last, want, GOLDEN.0, GOLDEN.1)
    });
    let fast = model.forward(ids).unwrap().into_dyn();
    let fast_err = assert_close(&format!("{name}: plain logits vs fast"), got.view(), &fast, SAME.0, SAME.1);
    if !past_dynamic_ntk(cfg, ids.len()) {
        let steps = array(&plain_incremental(cfg, w, ids, prefill));
        assert_close(&format!("{name}: plain prefill {prefill} + steps vs plain full"), steps.view(), &got.clone().into_dyn(), SAME.0, SAME.1);
        let fast_steps = model.forward_incremental(ids, prefill).unwrap().into_dyn();
        assert_close(&format!("{name}: plain prefill {prefill} + steps vs fast prefill + steps"), steps.view(), &fast_steps, SAME.0, SAME.1);
    }
    (golden_err, fast_err)
}

/// Every `caseK` (logits of a prompt) and `genK` (a prompt and its greedy continuation, with the
/// full pass's logits of the continuation) of a goldens file.
fn check_goldens(name: &str, model_dir: &Path, goldens: &Path) -> usize {
    let model = Hymba::from_dir(model_dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let w = Weights::from_loaded(&model.weights);
    let goldens = Goldens::open(goldens);
    let mut checked = 0;
    let mut report = |key: String, n: usize, (golden_err, fast_err): (f32, f32)| {
        println!("{key} n={n}: max |Δ| plain vs golden {golden_err:.1e}, plain vs fast {fast_err:.1e}");
        checked += 1;
    };
    for case in (0..).take_while(|k| goldens.has(&format!("case{k}.input_ids"))) {
        let ids = goldens.ids(&format!("case{case}.input_ids"));
        let want = goldens.f32(&format!("case{case}.logits"));
        let key = format!("{name}/case{case}");
        report(key.clone(), ids.len(), check_ids(&key, &model, &w, &ids, ids.len().div_ceil(2), Some(&want)));
    }
    for gen in (0..).take_while(|k| goldens.has(&format!("gen{k}.prompt"))) {
        let prompt = goldens.ids(&format!("gen{gen}.prompt"));
        let ids = [prompt.clone(), goldens.ids(&format!("gen{gen}.tokens"))].concat();
        let want = goldens.f32(&format!("gen{gen}.full_logits"));
        let key = format!("{name}/gen{gen}");
        report(key.clone(), ids.len(), check_ids(&key, &model, &w, &ids, prompt.len(), Some(&want)));
    }
    checked
}

/// Every directory under `dir` holding a `model/` and its `goldens.safetensors`, checked.
/// Returns their names.
fn check_every_set(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("goldens.safetensors").is_file())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let set = dir.join(name);
        let checked = check_goldens(name, &set.join("model"), &set.join("goldens.safetensors"));
        assert!(checked >= 3, "{name}: expected at least 3 cases, found {checked}");
    }
    names
}

#[test]
fn every_fixture() {
    let names = check_every_set(&fixtures_dir());
    for name in ["norope-nometa-nowindow", "perhead-dynamic-sharded", "relu2-every-ntk-f16", "silu-groups-default"] {
        assert!(names.iter().any(|n| n == name), "fixture {name} not found");
    }
}

/// The plain cache of a dynamic_ntk model past orig_max: a step is rotated with the base of its
/// own position, so it differs from the full pass, which rotates every row with the base of the
/// last one. (Guards that the plain steps really pick a base per position.)
#[test]
fn plain_steps_past_dynamic_ntk_orig_max_use_their_own_base() {
    let dir = fixtures_dir().join("perhead-dynamic-sharded/model");
    let model = Hymba::from_dir(&dir).unwrap();
    let w = Weights::from_loaded(&model.weights);
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 % 250) as u32).collect(); // M + 20 = 25 > orig_max 20
    let full = array(&plain::forward(&model.config, &w, &ids));
    let steps = array(&plain_incremental(&model.config, &w, &ids, 10));
    let diff = (&full - &steps).iter().fold(0f32, |m, d| m.max(d.abs()));
    assert!(diff > 1e-3, "steps past orig_max equal the full pass: max |Δ| = {diff}");
    // While the sequence fits in orig_max (M + 15 = 20 rows), every row is rotated with
    // rope_theta on both sides: the steps equal a full pass over those rows.
    let within = array(&plain::forward(&model.config, &w, &ids[..15])).into_dyn();
    assert_close("rows within orig_max", steps.slice(s![..15, ..]), &within, SAME.0, SAME.1);
}

/// The demo model: a short prompt and its reference greedy continuation (past M + W, so the
/// window is exercised), plain vs fast; and the plain greedy decode gives the reference's tokens.
#[test]
fn demo_model() {
    let model = Hymba::from_dir(Path::new(hymba_ref::DEFAULT_MODEL_DIR)).unwrap();
    let w = Weights::from_loaded(&model.weights);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo/expected.json");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let case = expected["greedy"].as_array().unwrap().iter().min_by_key(|c| c["prompt_ids"].as_array().unwrap().len()).unwrap();
    let (prompt, want) = (ids(&case["prompt_ids"]), ids(&case["tokens"]));
    let cfg = &model.config;
    // The last query (position M + n − 1) must be unable to see the first prompt token (position
    // M): n − 1 > W, so the sequence runs past M + W + 1 positions and the window drops keys.
    let (m, w_len) = (cfg.num_memory_tokens, cfg.sliding_window.unwrap());
    assert!(m + prompt.len() + want.len() > m + w_len + 1, "the sequence (meta tokens included) runs past M + W + 1");

    // Plain greedy decoding: prefill the prompt, then feed back the first maximum each step.
    let (mut cache, logits) = plain::prefill(cfg, &w, &prompt);
    let mut next = logits.last().unwrap().clone(); // (V)
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let best = next.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
        got.push(best);
        next = plain::step(cfg, &w, &mut cache, best);
    }
    assert_eq!(got, want, "plain greedy continuation of {:?}", case["prompt"]);

    let all = [prompt.as_slice(), &want].concat();
    let (_, fast_err) = check_ids("demo", &model, &w, &all, prompt.len(), None);
    println!("demo n={}: max |Δ| plain vs fast {fast_err:.1e}", all.len());
}

#[test]
#[ignore = "needs ../shared"]
fn every_conformance_set() {
    let names = check_every_set(&shared_dir().join("conformance"));
    for name in ["perhead-seed3", "switches-seed3", "tiny-seed1"] {
        assert!(names.iter().any(|n| n == name), "conformance set {name} not found");
    }
}
