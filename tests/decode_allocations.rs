//! A decode step allocates nothing: after the first step has shaped the sequence's buffers
//! (and with the K/V caches reserved), `next_token_logits(&[id])` runs entirely in memory that
//! already exists. Counted with a global allocator that tallies every allocation of this test
//! binary, on every thread. The step runs inside the thread pool, as generation does, so that
//! handing work to the pool is not itself counted (a call from outside queues a job).

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The counter is global: the tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model(config_file: &str) -> Hymba {
    let path = format!("{}/{config_file}", env!("CARGO_MANIFEST_DIR"));
    let cfg = HymbaConfig::from_json_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 7)).unwrap();
    Hymba::new(cfg, weights)
}

/// Allocations made by each of `steps` decode steps after a prompt of `prompt_len` ids.
fn allocations_per_step(model: &Hymba, prompt_len: usize, steps: usize, reserve: bool) -> Vec<usize> {
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 37 + 5) % 1000).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let mut cache = model.new_sequence();
        if reserve {
            cache.reserve(prompt_len + steps + 1);
        }
        let mut id = model.next_token_logits(&prompt, &mut cache).unwrap()[0] as u32 % 1000;
        model.next_token_logits(&[id], &mut cache).unwrap(); // the first step shapes the buffers
        (0..steps)
            .map(|_| {
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                let logits = model.next_token_logits(&[id], &mut cache).unwrap();
                let after = ALLOCATIONS.load(Ordering::SeqCst);
                assert!(logits.iter().all(|v| v.is_finite()));
                id = (id + 1) % 1000;
                after - before
            })
            .collect()
    })
}

#[test]
fn a_decode_step_allocates_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The benchmark's small config: meta tokens, sliding-window and global layers, K/V shared
    // between layers. The window (see the config) is passed during these steps, so eviction runs.
    let model = model("src/bin/hymba-ref/bench/configs/small.json");
    let w = model.config.sliding_window.expect("a window config");
    let counts = allocations_per_step(&model, w - 10, 30, true);
    assert!(counts.iter().all(|&n| n == 0), "allocations per decode step: {counts:?}");
}

#[test]
fn a_decode_step_over_a_long_global_cache_allocates_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Over 1,100 keys and more the global layers' attention splits each head's keys into 8 or
    // more parts across tasks (flash-decoding): its partial sums live on the stack.
    let model = model("src/bin/hymba-ref/bench/configs/small.json");
    let counts = allocations_per_step(&model, 1100, 10, true);
    assert!(counts.iter().all(|&n| n == 0), "allocations per decode step: {counts:?}");
}

#[test]
fn without_reserving_only_the_global_caches_grow() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The control: the counter does see allocations, and without `reserve` the only ones left
    // are the global layers' K/V vectors growing (a doubling now and then, not every step).
    let model = model("src/bin/hymba-ref/bench/configs/small.json");
    let counts = allocations_per_step(&model, 200, 300, false);
    let total: usize = counts.iter().sum();
    assert!(total > 0, "the counting allocator saw nothing: {counts:?}");
    assert!(counts.iter().filter(|&&n| n > 0).count() <= 10, "allocations per decode step: {counts:?}");
}
