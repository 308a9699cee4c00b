//! The machine's memory read bandwidth, measured in-process: sum a buffer much larger than the
//! caches with every worker thread, and time it.
//!
//! This is the ceiling for decoding: a single-token step must read every weight matrix once, so
//! `weight bytes per token ÷ read bandwidth` is the fastest a step can possibly be.

use rayon::prelude::*;
use std::time::Instant;

/// What one measurement found.
pub struct Bandwidth {
    /// The buffer size read per pass.
    pub bytes: usize,
    /// Bytes per second of each timed pass.
    pub passes: Vec<f64>,
    /// The median of `passes`.
    pub median: f64,
}

/// Read a `bytes`-sized buffer `passes` times (after one untimed warm-up pass) on the current
/// rayon pool; the median pass in bytes per second.
pub fn measure_read_bandwidth(bytes: usize, passes: usize) -> Bandwidth {
    const CHUNK: usize = 1 << 18; // u32s per task: 1 MiB, large enough to stream, many tasks per thread
    let len = (bytes / 4).max(CHUNK);
    // Written in parallel, so every page is resident (and spread over the threads) before timing.
    let mut buf = vec![0u32; len];
    buf.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        for (j, x) in chunk.iter_mut().enumerate() {
            *x = (i ^ j) as u32;
        }
    });
    let read = |buf: &[u32]| -> u32 {
        // Integer wrapping sums vectorise freely (no float reassociation concerns).
        buf.par_chunks(CHUNK)
            .map(|chunk| chunk.iter().fold(0u32, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u32::wrapping_add)
    };
    std::hint::black_box(read(&buf));
    let rates: Vec<f64> = (0..passes.max(1))
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(read(std::hint::black_box(&buf)));
            (len * 4) as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    let median = super::median(&rates);
    Bandwidth { bytes: len * 4, passes: rates, median }
}
