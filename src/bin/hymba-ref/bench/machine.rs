//! What the machine itself gains from more threads, apart from the engine: the same compute-bound
//! work (GEMM tiles, the kernel prefill's weight products run) on every thread at once against one
//! thread alone, and the read bandwidth of every thread against one thread's (what decode's weight
//! products need). Where these fall short of the thread count (two vCPUs on one core's hardware
//! threads, a clock that drops as more cores run, caches or a memory bus that the threads share),
//! the profile's serial share holds the machine's part as well as the engine's: a phase that gains
//! about as much as the machine's own figure is held back by the machine, not by serial work.
//! They are a guide, not a bound: they vary from run to run on a shared host, and a phase's own
//! mix of computing and reading can do a little better.

use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use rayon::ThreadPoolBuilder;
use serde_json::{json, Value};
use std::time::Instant;

/// A tile's sides: x (TILE, DEPTH) times w (TILE, DEPTH)ᵀ, half a MiB of f32 each, which stay in
/// each core's caches as a prefill tile's packed panels do.
const TILE: usize = 128;
const DEPTH: usize = 1024;
/// Tiles a timing: about 45 ms on one core of this project's 2-vCPU VM.
const TILES: usize = 48;
/// Alternations of one thread alone and every thread at once; the median speed-up is kept.
const ROUNDS: usize = 7;
/// Passes over the buffer for the one-thread read bandwidth, as for every thread's.
const READ_PASSES: usize = 7;

/// The machine's own speed-ups at `threads`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub threads: usize,
    /// `threads` threads each computing [`TILES`] tiles at once, against one thread computing
    /// them alone: work done per second, all threads over one.
    pub gemm_speedup: f64,
    /// The read bandwidth of one thread alone, in bytes a second (`None` where the bench did not
    /// measure the bandwidth).
    pub read_one_thread: Option<f64>,
}

/// [`TILES`] GEMM tiles on this thread with `x` and `w` (each (TILE, DEPTH)); seconds.
fn gemm_tiles(x: &Array2<f32>, w: &Array2<f32>) -> f64 {
    let mut out = Array2::zeros((TILE, TILE)); // (TILE, TILE)
    let start = Instant::now();
    for _ in 0..TILES {
        general_mat_mul(1.0, x, &w.t(), 0.0, &mut out);
    }
    std::hint::black_box(&out);
    start.elapsed().as_secs_f64()
}

/// Measure the machine at the global pool's thread count: GEMM tiles on every worker at once
/// (`rayon::broadcast`, one call a worker) against the same on this thread alone, and, given
/// `read_bytes` (the buffer of the bench's bandwidth measurement), the read bandwidth of a
/// one-thread pool. `None` on one thread.
pub fn measure(read_bytes: Option<usize>) -> Option<Scaling> {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return None;
    }
    // Read by every thread: shared read-only data sits in each core's caches, as a tile's does.
    let x = Array2::from_shape_fn((TILE, DEPTH), |(r, c)| ((r * 7 + c * 13) % 17) as f32 / 17.0); // (TILE, DEPTH)
    let w = Array2::from_shape_fn((TILE, DEPTH), |(r, c)| ((r * 3 + c * 5) % 19) as f32 / 19.0); // (TILE, DEPTH)
    let speedups: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let one = gemm_tiles(&x, &w);
            let start = Instant::now();
            rayon::broadcast(|_| gemm_tiles(&x, &w));
            threads as f64 * one / start.elapsed().as_secs_f64()
        })
        .collect();
    // A one-thread pool cannot fail to start where the bench's own pool of `threads` started;
    // should it, the bandwidth is left unmeasured rather than the bench stopped.
    let read_one_thread = read_bytes.and_then(|bytes| {
        let pool = ThreadPoolBuilder::new().num_threads(1).build().ok()?;
        Some(pool.install(|| super::bandwidth::measure_read_bandwidth(bytes, READ_PASSES)).median)
    });
    Some(Scaling { threads, gemm_speedup: super::median(&speedups), read_one_thread })
}

/// The serial share that would give `speedup` at `threads` by Amdahl's law (see `profile`).
fn as_serial_share(speedup: f64, threads: usize) -> f64 {
    (threads as f64 / speedup - 1.0) / (threads as f64 - 1.0)
}

/// The scaling as the report's JSON, given the read bandwidth of every thread (bytes a second).
pub fn json(s: &Scaling, read_all_threads: Option<f64>) -> Value {
    let read_speedup = read_all_threads.zip(s.read_one_thread).map(|(all, one)| all / one);
    json!({
        "threads": s.threads,
        "gemm_speedup": s.gemm_speedup,
        "gemm_serial_share": as_serial_share(s.gemm_speedup, s.threads),
        "read_bytes_per_second_1_thread": s.read_one_thread,
        "read_speedup": read_speedup,
        "read_serial_share": read_speedup.map(|r| as_serial_share(r, s.threads)),
    })
}

/// The report's line for the machine's scaling (`json`'s value), to read the profiles by.
pub fn line(s: &Value) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let reads = match s["read_speedup"].as_f64() {
        Some(r) => format!(
            "memory reads {r:.2}× ({:.2} GB/s on 1 thread; as a serial share {:.1}%)",
            num(&s["read_bytes_per_second_1_thread"]) / 1e9,
            100.0 * num(&s["read_serial_share"])
        ),
        None => "memory reads not measured".to_string(),
    };
    format!(
        "the machine alone at {} threads (measured apart from the engine): GEMM tiles {:.2}× one thread (as a serial share {:.1}%), {reads}: about what a compute-bound phase (prefill's products) and a memory-bound one (decode's) can gain here\n",
        s["threads"],
        num(&s["gemm_speedup"]),
        100.0 * num(&s["gemm_serial_share"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedups_read_as_amdahl_serial_shares() {
        let s = Scaling { threads: 4, gemm_speedup: 3.2, read_one_thread: Some(10e9) };
        let v = json(&s, Some(25e9));
        // 4 threads at 3.2×: s = (4 / 3.2 − 1) / 3 = 1/12; reads 2.5×: s = (1.6 − 1) / 3 = 0.2.
        assert!((v["gemm_serial_share"].as_f64().unwrap() - 1.0 / 12.0).abs() < 1e-12, "{v}");
        assert!((v["read_speedup"].as_f64().unwrap() - 2.5).abs() < 1e-12, "{v}");
        assert!((v["read_serial_share"].as_f64().unwrap() - 0.2).abs() < 1e-12, "{v}");
        let text = line(&v);
        assert!(text.contains("at 4 threads"), "{text}");
        assert!(text.contains("GEMM tiles 3.20× one thread (as a serial share 8.3%)"), "{text}");
        assert!(text.contains("memory reads 2.50× (10.00 GB/s on 1 thread; as a serial share 20.0%)"), "{text}");
    }

    #[test]
    fn without_a_bandwidth_the_reads_are_not_measured() {
        let v = json(&Scaling { threads: 2, gemm_speedup: 2.0, read_one_thread: None }, None);
        assert!(v["read_speedup"].is_null() && v["read_serial_share"].is_null(), "{v}");
        assert!((v["gemm_serial_share"].as_f64().unwrap()).abs() < 1e-12, "{v}");
        assert!(line(&v).contains("GEMM tiles 2.00× one thread (as a serial share 0.0%), memory reads not measured"));
    }
}
