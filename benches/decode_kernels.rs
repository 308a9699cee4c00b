//! The two kernels a decode step of the 1.5B shape spends its time in, timed alone:
//!
//!     cargo bench --bench decode_kernels
//!
//! - the bf16 product `x · Wᵀ` of each weight matrix of a layer and of `lm_head`, streamed from
//!   memory, for x of 1, 4, 16 and 64 rows (a batch of sequences decoding together): the
//!   row-wise kernel decoding uses (bit-identical to one row at a time) against the prefill GEMM,
//!   as µs, GB/s of weights read and GFLOP/s, and summed over a whole decode step;
//! - attention of one query (25 heads, 5 K/V heads, dqk 64, dv 128) over M + W = 1,152 keys,
//!   as µs per layer, and the same with 256 keys (context 128) for comparison;
//! - a decode step's K/V upkeep in one window layer of that shape: appending one key and value,
//!   and the eviction after it, with the CPU's caches flushed before (as a step's weights flush
//!   them between two visits of a layer) and warm.
//!
//! - the quantized products (q8_0, q4_0) against bf16 at four of the 1.5B's shapes, one row
//!   and a batch of 4 row-wise, through `Matrix` on all threads, and each quantized kernel
//!   this CPU has (`quant::Kernel`) alone on one thread: GB/s of weight bytes read and the
//!   share of this machine's read bandwidth (measured first, all threads and one). Only this
//!   part: `cargo bench --bench decode_kernels -- quantized`.
//!
//! Only the attention and the K/V upkeep: `cargo bench --bench decode_kernels -- attention`.
//!
//! - prefill's products (512 rows of x: GEMM over weights widened to f32 a slab at a time) in
//!   bf16, q8_0 and q4_0 at two of the 1.5B's shapes, on every thread, the formats taken in turn
//!   round after round: `cargo bench --bench decode_kernels -- prefill`.
//!
//! - quantizing bf16 weights to q8_0 and q4_0, as `--weights` does at load, at two of the 1.5B's
//!   shapes, on every thread: millions of weights a second, and the seconds the 1.5B's matrices
//!   would take at that rate: `cargo bench --bench decode_kernels -- quantize`.
//!
//! Medians of repeated calls on the current rayon pool (`RAYON_NUM_THREADS` sets its size).

use half::bf16;
use hymba_ref::state::cache::KvCache;
use hymba_ref::config::AttentionSpan;
use hymba_ref::kernels::matrix::{Elements, Matrix};
use hymba_ref::model::attention::{attention_heads, Mask};
use hymba_ref::kernels::quant::{self, Kernel, QuantType, QuantizedRow};
use ndarray::{Array2, Array3};
use rayon::prelude::*;
use std::time::Instant;

/// The median time of `f` over up to 200 calls or about half a second (at least 5 calls).
fn median_seconds(f: impl FnMut()) -> f64 {
    median_and_fastest(f).0
}

/// The median and the fastest time of `f`, as [`median_seconds`] calls it. On a shared machine
/// the fastest call, one that no other process interrupted, compares two kernels best.
fn median_and_fastest(mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm up
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (times.len() < 200 && started.elapsed().as_secs_f64() < 0.5) {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

/// A buffer larger than the CPU's caches: reading every line of it pushes out what they held, as
/// a decode step's weights do between two visits of a layer. `lines_read` counts what was read,
/// so that the reads cannot be optimised away.
struct CacheFlush {
    buffer: Vec<u8>,
    lines_read: u64,
}

impl CacheFlush {
    fn new() -> CacheFlush {
        CacheFlush { buffer: vec![1u8; 64 << 20], lines_read: 0 }
    }

    fn flush(&mut self) {
        self.lines_read += self.buffer.iter().step_by(64).map(|&b| b as u64).sum::<u64>(); // a read of every line
    }

    /// What to print after a measurement if the reads were not made.
    fn warning(&self) -> &'static str {
        if self.lines_read == 0 { " (flush not read)" } else { "" }
    }
}

fn wave(shape: (usize, usize, usize), k: f32) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(a, b, c)| ((a * 7 + b * 3 + c) as f32 * k).sin())
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    if std::env::args().any(|a| a == "attention") {
        decode_attention();
        return;
    }
    if std::env::args().any(|a| a == "prefill") {
        prefill_products();
        return;
    }
    if std::env::args().any(|a| a == "quantize") {
        quantize_weights();
        return;
    }
    quantized_products();
    if std::env::args().any(|a| a == "quantized") {
        return;
    }

    // The matrices of one 1.5B layer (rows × cols), and the vocabulary projection.
    let batches = [1, 4, 16, 64];
    let mut totals = vec![(0.0, 0.0); batches.len()]; // per batch size: seconds of (rowwise, GEMM)
    for (name, rows, cols) in [
        ("in_proj", 8000, 1600),
        ("x_proj", 132, 3200),
        ("dt_proj", 3200, 100),
        ("out_proj", 1600, 3200),
        ("up/gate", 5504, 1600),
        ("down", 1600, 5504),
        ("lm_head", 32001, 1600),
    ] {
        let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(((i % 977) as f32 * 0.01).sin())).collect();
        let w = Matrix::new(rows, cols, Elements::Bf16(w.into())).expect("rows · cols");
        // Copies adding up to ≥ 512 MiB, so each call streams weights that are not in the caches.
        let copies: Vec<Matrix> = (0..(512 << 20) / w.bytes() + 1).map(|_| w.clone()).collect();
        for (i, &batch) in batches.iter().enumerate() {
            let x = Array2::from_shape_fn((batch, cols), |(b, c)| (c as f32 * 0.1 + b as f32).cos());
            let mut out = Array2::zeros((0, 0));
            let mut next = 0;
            let rowwise = median_seconds(|| {
                copies[next % copies.len()].matmul_t_rowwise(x.view(), &mut out);
                next += 1;
            });
            // The prefill path (GEMM) for the same rows; at one row matmul_t is the matvec.
            let gemm = match batch {
                1 => rowwise,
                _ => median_seconds(|| {
                    copies[next % copies.len()].matmul_t(x.view(), &mut out);
                    next += 1;
                }),
            };
            // A decode step: 32 layers of these matrices (two of the up/gate shape), lm_head once.
            let weight = match name {
                "lm_head" => 1.0,
                "up/gate" => 64.0,
                _ => 32.0,
            };
            totals[i].0 += rowwise * weight;
            totals[i].1 += gemm * weight;
            let gflops = |s: f64| 2.0 * (batch * rows * cols) as f64 / s / 1e9;
            println!(
                "bf16 {name} {rows}×{cols}, {batch:>2} rows: rowwise {:8.1} µs, {:5.1} GB/s of weights, {:5.1} GFLOP/s | GEMM {:8.1} µs, {:5.1} GFLOP/s",
                rowwise * 1e6,
                w.bytes() as f64 / rowwise / 1e9,
                gflops(rowwise),
                gemm * 1e6,
                gflops(gemm),
            );
        }
    }
    println!("all products of a 1.5B decode step (32 layers + lm_head), from the times above:");
    for (&batch, (rowwise, gemm)) in batches.iter().zip(&totals) {
        println!(
            "  {batch:>2} rows: rowwise {:6.1} ms ({:6.1} rows/s) | GEMM {:6.1} ms ({:6.1} rows/s)",
            rowwise * 1e3,
            batch as f64 / rowwise,
            gemm * 1e3,
            batch as f64 / gemm
        );
    }

    decode_attention();
}

/// Attention of one query of the 1.5B shape over 256 and 1,152 keys, then the K/V upkeep.
fn decode_attention() {
    let (nh, nkv, dqk, dv, meta) = (25, 5, 64, 128, 128);
    for keys in [256, 1152] {
        let q = wave((1, nh, dqk), 0.31);
        let (k, v) = (wave((keys, nkv, dqk), 0.17), wave((keys, nkv, dv), 0.23));
        let span = AttentionSpan::SlidingWindow(1024);
        // Through a K/V cache, so the keys are in the layout decoding reads.
        let mut cache = KvCache::new(nkv, dqk, dv, span);
        let positions: Vec<usize> = (0..keys).collect();
        let k_rows = k.view().into_shape_with_order((keys, nkv * dqk)).unwrap();
        let v_rows = v.view().into_shape_with_order((keys, nkv * dv)).unwrap();
        cache.append(k_rows, v_rows, &positions);
        let q_positions = [keys - 1];
        let mut out = Array2::zeros((1, nh * dv));
        let (seconds, fastest) = median_and_fastest(|| {
            let (k, v, k_positions) = (cache.keys(), cache.values(), cache.positions());
            attention_heads(q.view(), k, v, Mask::new(&q_positions, k_positions, span, meta), out.view_mut());
        });
        println!("decode attention over {keys} keys: {:.1} µs per layer (fastest {:.1})", seconds * 1e6, fastest * 1e6);
        // As decoding meets it: the step's weights have pushed the cache out of the CPU's caches.
        let (mut flush, mut cold) = (CacheFlush::new(), Vec::new());
        for _ in 0..60 {
            flush.flush();
            let (k, v, k_positions) = (cache.keys(), cache.values(), cache.positions());
            let start = Instant::now();
            attention_heads(q.view(), k, v, Mask::new(&q_positions, k_positions, span, meta), out.view_mut());
            cold.push(start.elapsed().as_secs_f64());
        }
        cold.sort_by(f64::total_cmp);
        let bytes = (keys * nkv * (dqk + dv) * 4) as f64; // the keys and values read
        println!(
            "  with the caches flushed: {:.1} µs (fastest {:.1}), {:.1} GB/s of keys and values{}",
            cold[cold.len() / 2] * 1e6,
            cold[0] * 1e6,
            bytes / cold[cold.len() / 2] / 1e9,
            flush.warning()
        );
    }
    kv_upkeep(nkv, dqk, dv, meta);
}

/// One decode step's append and eviction in a window cache of M + W = 1,152 rows, medians of 150.
fn kv_upkeep(nkv: usize, dqk: usize, dv: usize, meta: usize) {
    let (window, rows) = (1024, 1152);
    let mut cache = KvCache::new(nkv, dqk, dv, AttentionSpan::SlidingWindow(window));
    cache.reserve(rows + 1);
    let (k, v) = (wave((rows, 1, nkv * dqk), 0.17), wave((rows, 1, nkv * dv), 0.23));
    let (k, v) = (k.index_axis_move(ndarray::Axis(1), 0), v.index_axis_move(ndarray::Axis(1), 0)); // (S, nkv·dqk), (S, nkv·dv)
    let positions: Vec<usize> = (0..rows).collect();
    cache.append(k.view(), v.view(), &positions);
    let (key, value) = (k.slice(ndarray::s![..1, ..]), v.slice(ndarray::s![..1, ..])); // (1, nkv·dqk), (1, nkv·dv)
    let mut flush = CacheFlush::new();
    let mut next = rows;
    let (mut cold, mut evict, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..150 {
        flush.flush();
        let start = Instant::now();
        cache.append(key, value, &[next]);
        let appended = Instant::now();
        cache.evict(next + 1, meta);
        cold.push((appended - start).as_secs_f64());
        evict.push(appended.elapsed().as_secs_f64());
        next += 1;
        let start = Instant::now();
        cache.append(key, value, &[next]);
        warm.push(start.elapsed().as_secs_f64());
        cache.evict(next + 1, meta);
        next += 1;
    }
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2] * 1e6
    };
    println!(
        "K/V upkeep of a window layer ({} rows): append {:.1} µs with the caches flushed, {:.1} µs warm; eviction after it {:.1} µs{}",
        cache.len(),
        median(cold),
        median(warm),
        median(evict),
        flush.warning()
    );
}

/// GB/s of reading a 256 MiB buffer (summing its words): on all threads of the pool, and on one.
fn read_bandwidth() -> (f64, f64) {
    let words = vec![1u64; 32 << 20]; // 256 MiB
    let bytes = (words.len() * 8) as f64;
    let mut sink = 0u64;
    let all = median_seconds(|| sink += words.par_chunks(1 << 16).map(|c| c.iter().sum::<u64>()).sum::<u64>());
    let one = median_seconds(|| sink += words.iter().sum::<u64>());
    assert!(sink > 0);
    (bytes / all / 1e9, bytes / one / 1e9)
}

/// Prefill's product `x · Wᵀ` for x of 512 rows in bf16, q8_0 and q4_0 (each widened to f32 for
/// the GEMM, a slab of columns at a time): seven rounds, each timing every format once, so that
/// the machine's drift falls on all of them alike; the median and the fastest round per format.
fn prefill_products() {
    let t = 512;
    for (name, rows, cols) in [("in_proj", 8000, 1600), ("down", 1600, 5504)] {
        let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(((i % 977) as f32 * 0.01).sin())).collect();
        let bf16_matrix = Matrix::new(rows, cols, Elements::Bf16(w.into())).expect("rows · cols");
        let quantized = |kind| bf16_matrix.quantize(kind).expect("finite weights");
        let formats = [("bf16", bf16_matrix.clone()), ("q8_0", quantized(QuantType::Q8_0)), ("q4_0", quantized(QuantType::Q4_0))];
        let x = Array2::from_shape_fn((t, cols), |(r, c)| (c as f32 * 0.1 + r as f32).cos()); // (T, cols)
        let mut out = Array2::zeros((0, 0));
        let mut times = vec![Vec::new(); formats.len()];
        for round in 0..8 {
            for ((_, w), times) in formats.iter().zip(&mut times) {
                let start = Instant::now();
                w.matmul_t(x.view(), &mut out);
                if round > 0 {
                    times.push(start.elapsed().as_secs_f64()); // round 0 warms up
                }
            }
        }
        let bf16_median = median_of(&mut times[0]);
        for ((label, _), times) in formats.iter().zip(&mut times) {
            let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
            let median = median_of(times);
            println!("prefill {label:>5} {name} {rows}×{cols}, {t} rows: {:7.1} ms (fastest {:7.1}), {:4.2}× bf16's time", median * 1e3, fastest * 1e3, median / bf16_median);
        }
    }
}

/// The median of `times` (sorted in place).
fn median_of(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// bf16, q8_0 and q4_0 products at four of the 1.5B's shapes: through `Matrix` (one row, and 4
/// rows row-wise) on every thread, and each quantized kernel alone on one thread.
fn quantized_products() {
    let (bandwidth, bandwidth_one) = read_bandwidth();
    println!("read bandwidth: {bandwidth:.1} GB/s on {} threads, {bandwidth_one:.1} GB/s on one", rayon::current_num_threads());
    // Each kernel's own speed, weights in the cache (512 × 1600, 435 KiB in q8_0: in L2): what
    // it could stream at most, on one thread.
    let (rows, cols) = (512, 1600);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i % 977) as f32 * 0.01).sin()).collect();
    let mut qx = QuantizedRow::default();
    qx.quantize(&w[..cols]);
    for kind in QuantType::ALL {
        let q = quant::Quantized::quantize_f32(kind, rows, cols, &w).expect("finite weights");
        for kernel in Kernel::available().into_iter().skip(1) {
            let mut out = Array2::zeros((1, rows)); // (1, rows)
            let seconds = median_seconds(|| quant::dots_with(kernel, &q, std::slice::from_ref(&qx), 0, out.view_mut()));
            println!("{kind} kernel {:>15}, one thread, weights in cache ({rows}×{cols}): {:5.1} GB/s", kernel.name(), q.bytes() as f64 / seconds / 1e9);
        }
    }
    for (name, rows, cols) in [("dt_proj", 3200, 100), ("in_proj", 8000, 1600), ("down", 1600, 5504), ("lm_head", 32001, 1600)] {
        let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(((i % 977) as f32 * 0.01).sin())).collect();
        let bf16_matrix = Matrix::new(rows, cols, Elements::Bf16(w.into())).expect("rows · cols");
        let mut bf16_seconds = [0.0; 2];
        for kind in [None, Some(QuantType::Q8_0), Some(QuantType::Q4_0)] {
            let w = match kind {
                None => bf16_matrix.clone(),
                Some(kind) => bf16_matrix.quantize(kind).expect("finite weights"),
            };
            // Copies (each its own memory) of ≥ 256 MiB in all, so each call streams weights that
            // are not in the caches.
            let copy = |_| match (w.quantized(), w.elements()) {
                (Some(q), _) => Matrix::from_quantized(q.clone()),
                (None, Elements::Bf16(v)) => Matrix::new(rows, cols, Elements::Bf16(v.clone())).expect("the same shape"),
                _ => unreachable!("bf16 or quantized"),
            };
            let copies: Vec<Matrix> = (0..(256 << 20) / w.bytes() + 1).map(copy).collect();
            let label = kind.map_or("bf16".to_string(), |k| k.name().to_string());
            for (i, batch) in [1, 4].into_iter().enumerate() {
                let x = Array2::from_shape_fn((batch, cols), |(b, c)| (c as f32 * 0.1 + b as f32).cos());
                let mut out = Array2::zeros((0, 0));
                let mut next = 0;
                let seconds = median_seconds(|| {
                    copies[next % copies.len()].matmul_t_rowwise(x.view(), &mut out);
                    next += 1;
                });
                if kind.is_none() {
                    bf16_seconds[i] = seconds;
                }
                let gbs = w.bytes() as f64 / seconds / 1e9;
                println!(
                    "{label:>5} {name} {rows}×{cols}, {batch} row{}: {:8.1} µs, {gbs:5.1} GB/s of weights ({:3.0} % of the read bandwidth), {:4.2}× bf16",
                    if batch == 1 { " " } else { "s" },
                    seconds * 1e6,
                    100.0 * gbs / bandwidth,
                    bf16_seconds[i] / seconds,
                );
            }
            let Some(q) = w.quantized() else { continue };
            for kernel in Kernel::available() {
                for batch in [1, 4] {
                    let xs: Vec<QuantizedRow> = (0..batch)
                        .map(|b| {
                            let mut qx = QuantizedRow::default();
                            qx.quantize(&(0..cols).map(|c| (c as f32 * 0.1 + b as f32).cos()).collect::<Vec<_>>());
                            qx
                        })
                        .collect();
                    let mut out = Array2::zeros((batch, rows)); // (B, rows)
                    let mut next = 0;
                    let seconds = median_seconds(|| {
                        let q = copies[next % copies.len()].quantized().expect("quantized");
                        quant::dots_with(kernel, q, &xs, 0, out.view_mut());
                        next += 1;
                    });
                    let gbs = q.bytes() as f64 / seconds / 1e9;
                    println!(
                        "        {label} kernel {:>15}, one thread, {batch} row{}: {:8.1} µs, {gbs:5.1} GB/s ({:3.0} % of one thread's read bandwidth)",
                        kernel.name(),
                        if batch == 1 { " " } else { "s" },
                        seconds * 1e6,
                        100.0 * gbs / bandwidth_one,
                    );
                }
            }
        }
    }
}

/// Quantizing bf16 matrices of two 1.5B shapes to each format (`Matrix::quantize`, every thread),
/// as `--weights` does for each matrix at load.
fn quantize_weights() {
    // The 1.5B's matrix weights: in_proj 435.7 M, out_proj 163.8 M, x_proj 13.5 M, dt_proj
    // 10.2 M, the MLP 845.4 M, the embedding (tied to lm_head) 51.2 M.
    const WEIGHTS_1_5B: f64 = 1.5198e9;
    for (name, rows, cols) in [("in_proj", 8960, 1600), ("down", 1600, 5504)] {
        let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(((i % 977) as f32 * 0.01).sin())).collect();
        let w = Matrix::new(rows, cols, Elements::Bf16(w.into())).expect("rows · cols");
        for kind in QuantType::ALL {
            let (median, fastest) = median_and_fastest(|| {
                std::hint::black_box(w.quantize(kind).expect("finite weights"));
            });
            let rate = (rows * cols) as f64 / median;
            println!(
                "quantize {kind} {name} {rows}×{cols}: {:7.2} ms (fastest {:7.2}), {:6.0} M weights/s: the 1.5B's weights in {:.2} s",
                median * 1e3,
                fastest * 1e3,
                rate / 1e6,
                WEIGHTS_1_5B / rate
            );
        }
    }
}
