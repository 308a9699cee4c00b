//! Quantized weights on the bundled demo model: the decode path (one token at a time through the
//! cache, the integer kernels) against the f32 model on the held-out text: the next-token
//! distributions stay close (mean KL divergence) and mostly pick the same token.

use hymba_ref::model::Hymba;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::tokenizer::Tokenizer;
use ndarray::{Array2, ArrayView1};
use std::path::PathBuf;

fn log_softmax(row: ArrayView1<f32>) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let log_z = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

/// (mean KL(p ‖ q) over the rows, share of rows whose argmax agrees, max |Δ logit|)
fn compare(p: &Array2<f32>, q: &Array2<f32>) -> (f64, f64, f32) {
    let argmax = |r: ArrayView1<f32>| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
    let (mut kl, mut agree) = (0.0, 0);
    for (a, b) in p.rows().into_iter().zip(q.rows()) {
        let (lp, lq) = (log_softmax(a), log_softmax(b));
        kl += lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum::<f64>();
        agree += (argmax(a) == argmax(b)) as usize;
    }
    let max_delta = (p - q).iter().fold(0f32, |m, v| m.max(v.abs()));
    (kl / p.nrows() as f64, agree as f64 / p.nrows() as f64, max_delta)
}

#[test]
fn quantized_demo_model_stays_close_to_f32() {
    let dir = PathBuf::from(hymba_ref::DEFAULT_MODEL_DIR);
    let model = Hymba::from_dir(&dir).unwrap();
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo/heldout.txt")).unwrap();
    let ids: Vec<u32> = Tokenizer::from_dir(&dir).unwrap().encode(&text, true).into_iter().take(160).collect();
    let want = model.forward_incremental(&ids, 1).unwrap(); // (n, V), f32 weights
    for (kind, max_kl, min_agree) in [(QuantType::Q8_0, 5e-4, 0.98), (QuantType::Q4_0, 0.03, 0.85)] {
        let weights = model.weights.quantized(kind).unwrap();
        let quantized = Hymba::new(model.config.clone(), weights);
        let got = quantized.forward_incremental(&ids, 1).unwrap(); // (n, V)
        let (kl, agree, max_delta) = compare(&want, &got);
        eprintln!("{kind}: mean KL {kl:.2e}, top-1 agreement {agree:.3}, max |Δ logit| {max_delta:.3}");
        assert!(kl < max_kl && agree >= min_agree, "{kind}: mean KL {kl:.2e} (at most {max_kl:.0e}), agreement {agree:.3} (at least {min_agree})");
    }
}
