//! Results do not depend on the number of threads: how a parallel region splits its work
//! (weight rows, channels, query blocks, keys) changes only which thread computes what, never
//! the arithmetic. A prompt's logits, the decode steps after it and a batch step are the same,
//! bit for bit, in pools of 1 to 16 threads.

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::{Batch, Hymba};

/// The benchmark's small config (bf16 weights, meta tokens, window and global layers, K/V
/// shared): wide enough that its products and scan split differently on each thread count.
fn model() -> Hymba {
    let path = format!("{}/src/bin/hymba-ref/bench/configs/small.json", env!("CARGO_MANIFEST_DIR"));
    let cfg = HymbaConfig::from_json_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 11)).unwrap();
    Hymba::new(cfg, weights)
}

/// Logits rows of: a 150-token prompt, 3 decode steps after it, and one step of a batch of that
/// sequence and two shorter ones.
fn logits_rows(model: &Hymba) -> Vec<Vec<f32>> {
    let prompt = |len: u32, salt: u32| (0..len).map(|i| (i * 37 + salt) % 1000).collect::<Vec<u32>>();
    let mut rows = Vec::new();
    let mut seq = model.new_sequence();
    rows.push(model.next_token_logits(&prompt(150, 5), &mut seq).unwrap().to_vec());
    for id in [3, 500, 77] {
        rows.push(model.next_token_logits(&[id], &mut seq).unwrap().to_vec());
    }
    let mut batch = Batch::new();
    batch.add(seq);
    for (len, salt) in [(20, 9), (45, 1)] {
        let mut other = model.new_sequence();
        model.next_token_logits(&prompt(len, salt), &mut other).unwrap();
        batch.add(other);
    }
    rows.extend(batch.step(model, &[8, 13, 21]).unwrap().rows().into_iter().map(|r| r.to_vec()));
    rows
}

#[test]
fn logits_are_the_same_on_any_number_of_threads() {
    let model = model();
    let in_pool = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| logits_rows(&model))
    };
    let one = in_pool(1);
    assert_eq!(one.len(), 7);
    for threads in [2, 3, 5, 16] {
        let many = in_pool(threads);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "logits row {i}: {differ} of {} values differ between 1 and {threads} threads", a.len());
        }
    }
}
