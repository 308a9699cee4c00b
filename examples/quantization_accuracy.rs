//! How far q8_0 and q4_0 weights move a model's predictions from its float weights: the raw data
//! of docs/QUANTIZATION.md's accuracy tables, printed as JSON.
//!
//! ```text
//! cargo run --release --example quantization_accuracy > docs/bench/quantization-accuracy.json
//! cargo run --release --example quantization_accuracy -- --with-1.5b   # adds a short 1.5B run
//! ```
//!
//! For each model and format the float model decodes greedily after each prompt; both models are
//! then fed the same tokens (prefill of the prompt, then one decode step a token, as `generate`
//! runs) and their next-token distributions compared at every position: mean KL(float ‖ quantized)
//! in nats, top-1 agreement, max |Δ logit|. Models: the bundled demo model (20 prompts from
//! tests/fixtures/demo/heldout.txt, 256 tokens each, plus the error of each group of matrices
//! quantized alone), the ../shared conformance checkpoints (random ids) and, with --with-1.5b,
//! random weights of the 1.5B shape (one short prompt). Held-out perplexity comes from
//! `hymba-ref perplexity --weights ...` (see docs/QUANTIZATION.md).

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::kernels::matrix::Matrix;
use hymba_ref::model::Hymba;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::base::rng::SplitMix64;
use hymba_ref::tokenizer::Tokenizer;
use ndarray::{Array2, ArrayView1};
use serde_json::{json, Value};
use std::path::Path;

/// (mean KL, top-1 agreement, max |Δ logit|, positions) of `q` against `p`, row by row.
fn compare(p: &Array2<f32>, q: &Array2<f32>) -> (f64, f64, f32, usize) {
    let log_softmax = |row: ArrayView1<f32>| {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        row.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
    };
    let argmax = |row: ArrayView1<f32>| row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
    let (mut kl, mut agree, mut max) = (0.0, 0, 0f32);
    for (a, b) in p.rows().into_iter().zip(q.rows()) {
        let (lp, lq) = (log_softmax(a), log_softmax(b));
        kl += lp.iter().zip(&lq).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
        agree += usize::from(argmax(a) == argmax(b));
        max = a.iter().zip(b).fold(max, |m, (x, y)| m.max((x - y).abs()));
    }
    let n = p.nrows();
    (kl / n as f64, agree as f64 / n as f64, max, n)
}

/// The float model's greedy continuation of `prompt` (`new` tokens), appended to it.
fn greedy(model: &Hymba, prompt: &[u32], new: usize) -> Vec<u32> {
    let mut seq = model.new_sequence();
    let mut ids = prompt.to_vec();
    let mut feed = prompt.to_vec();
    for _ in 0..new {
        let logits = model.next_token_logits(&feed, &mut seq).unwrap();
        let next = logits.iter().enumerate().fold(0, |b, (i, &v)| if v > logits[b] { i } else { b }) as u32;
        ids.push(next);
        feed = vec![next];
    }
    ids
}

/// Logits at every position where a next token is predicted after the prompt: prefill of the
/// prompt, then decode steps. (new, V)
fn decode_logits(model: &Hymba, ids: &[u32], prompt: usize) -> Array2<f32> {
    let all = model.forward_incremental(&ids[..ids.len() - 1], prompt).unwrap(); // (n − 1, V)
    all.slice(ndarray::s![prompt - 1.., ..]).to_owned()
}

/// Compare `quantized` with `float` on `runs` (each: ids, prompt length).
fn measure(float: &Hymba, quantized: &Hymba, runs: &[(Vec<u32>, usize)]) -> Value {
    let (mut kl, mut agree, mut max, mut n) = (0.0, 0.0, 0f32, 0);
    for (ids, prompt) in runs {
        let (k, a, m, rows) = compare(&decode_logits(float, ids, *prompt), &decode_logits(quantized, ids, *prompt));
        kl += k * rows as f64;
        agree += a * rows as f64;
        max = max.max(m);
        n += rows;
    }
    json!({ "positions": n, "mean_kl_nats": kl / n as f64, "top1_agreement": agree / n as f64, "max_abs_logit_delta": max })
}

fn quantized(cfg: &HymbaConfig, w: &HymbaWeights, kind: QuantType) -> Hymba {
    let mut cfg = cfg.clone();
    cfg.quantization = Some(kind);
    Hymba::new(cfg, w.quantized(kind).unwrap())
}

/// `w` with only some matrices quantized (for where the error comes from).
fn partly_quantized(cfg: &HymbaConfig, w: &HymbaWeights, kind: QuantType, group: &str) -> Hymba {
    let q = |m: &Matrix| m.quantize(kind).unwrap();
    let mut w = w.clone();
    match group {
        "mlp" => w.layers.iter_mut().for_each(|l| {
            let mlp = &mut l.moe_expert0;
            mlp.gate_proj = mlp.gate_proj.as_ref().map(q);
            mlp.up_proj = q(&mlp.up_proj);
            mlp.down_proj = q(&mlp.down_proj);
        }),
        "in_proj" => w.layers.iter_mut().for_each(|l| l.mamba.in_proj.weight = q(&l.mamba.in_proj.weight)),
        "ssm_x_dt_out_proj" => w.layers.iter_mut().for_each(|l| {
            l.mamba.x_proj = q(&l.mamba.x_proj);
            l.mamba.dt_proj.weight = q(&l.mamba.dt_proj.weight);
            l.mamba.out_proj.weight = q(&l.mamba.out_proj.weight);
        }),
        "embedding_lm_head" => {
            w.embed_tokens = q(&w.embed_tokens);
            w.lm_head = w.lm_head.as_ref().map(q);
        }
        _ => unreachable!("{group}"),
    }
    Hymba::new(cfg.clone(), w) // the config stays float: the matrices say their own format
}

fn random_runs(vocab: usize, count: usize, prompt: usize, new: usize, model: &Hymba, seed: u64) -> Vec<(Vec<u32>, usize)> {
    let mut rng = SplitMix64(seed);
    (0..count)
        .map(|_| {
            let p: Vec<u32> = (0..prompt).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            (greedy(model, &p, new), prompt)
        })
        .collect()
}

fn main() {
    let with_15b = std::env::args().any(|a| a == "--with-1.5b");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = json!({
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "threads": rayon::current_num_threads(),
    });

    // The demo model: 20 prompts (the first 8 words of the held-out file's first 20 entries), 256 tokens each.
    let dir = Path::new(hymba_ref::DEFAULT_MODEL_DIR);
    let cfg = HymbaConfig::from_file(&dir.join("config.json")).unwrap();
    let w = HymbaWeights::load(&cfg, dir).unwrap();
    let float = Hymba::new(cfg.clone(), w.clone());
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let text = std::fs::read_to_string(repo.join("tests/fixtures/demo/heldout.txt")).unwrap();
    let prompts: Vec<String> = text
        .split("\n%\n")
        .map(|entry| entry.split_whitespace().take(8).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .take(20)
        .collect();
    assert_eq!(prompts.len(), 20);
    eprintln!("demo: greedy 256 tokens after each of 20 prompts");
    let runs: Vec<(Vec<u32>, usize)> = prompts
        .iter()
        .map(|p| {
            let ids = tokenizer.encode(p, true);
            (greedy(&float, &ids, 256), ids.len())
        })
        .collect();
    let mut demo = json!({ "prompts": prompts, "new_tokens": 256, "stored_dtype": "bf16" });
    for kind in QuantType::ALL {
        eprintln!("demo: {kind}");
        demo[kind.name()] = measure(&float, &quantized(&cfg, &w, kind), &runs);
        let mut alone = json!({});
        for group in ["mlp", "in_proj", "ssm_x_dt_out_proj", "embedding_lm_head"] {
            alone[group] = measure(&float, &partly_quantized(&cfg, &w, kind, group), &runs[..5]);
        }
        demo[format!("{}_one_group_at_a_time_first_5_prompts", kind.name())] = alone;
    }
    report["demo"] = demo;

    // The conformance checkpoints: 4 random prompts of 8 ids, 32 greedy tokens each.
    let conformance = repo.join("../shared/hymba/conformance");
    let mut sets = json!({});
    for name in ["tiny-seed1", "perhead-seed3", "switches-seed3"] {
        let dir = conformance.join(name).join("model");
        let Ok(float) = Hymba::from_dir(&dir) else {
            eprintln!("{}: not found, skipped", dir.display());
            continue;
        };
        eprintln!("conformance {name}");
        let runs = random_runs(float.config.vocab_size, 4, 8, 32, &float, 7);
        let mut set = json!({ "prompts": 4, "prompt_ids": 8, "new_tokens": 32 });
        for kind in QuantType::ALL {
            set[kind.name()] = measure(&float, &quantized(&float.config, &float.weights, kind), &runs);
        }
        sets[name] = set;
    }
    report["conformance"] = sets;

    // Random weights of the 1.5B shape (bf16, as published): one prompt of 8 random ids, 8 greedy tokens.
    if with_15b {
        let text = std::fs::read_to_string(repo.join("src/bin/hymba-ref/bench/configs/1.5b.json")).unwrap();
        let cfg = HymbaConfig::from_json_str(&text).unwrap();
        eprintln!("1.5b: making random weights");
        let w = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 0)).unwrap();
        let float = Hymba::new(cfg.clone(), w);
        let runs = random_runs(cfg.vocab_size, 1, 8, 8, &float, 11);
        let mut big = json!({ "prompts": 1, "prompt_ids": 8, "new_tokens": 8, "weights": "random (RandomWeights seed 0), bf16" });
        for kind in QuantType::ALL {
            eprintln!("1.5b: {kind}");
            big[kind.name()] = measure(&float, &quantized(&cfg, &float.weights, kind), &runs);
        }
        report["random_1.5b"] = big;
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
