//! Block-quantized weights: 8- and 4-bit integers with one scale per block of 32, in the manner
//! of llama.cpp's `Q8_0` and `Q4_0`.
//!
//! Decoding one token reads every weight once, so its speed is the bytes of the weights over the
//! memory bandwidth. bf16 spends 16 bits a weight; these formats spend 8.5 and 4.5:
//!
//! - **q8_0**: each row of a weight matrix is cut into blocks of [`BLOCK`] = 32 consecutive
//!   weights along the input dimension. A block keeps one scale `d = max|w| / 127` (an f16) and
//!   32 signed bytes `q = round(w / d)`; the weights are read back as `w ≈ d · q`. The error of a
//!   weight is at most d/2, 1/254 of the block's largest magnitude.
//! - **q4_0**: the same blocks, with 4-bit values 0..=15 and `w ≈ d · (q − 8)`. `d = m / −8`,
//!   where m is the block's weight of largest magnitude (with its sign), so that m itself is
//!   exact (q = 0) and the rest land on 16 evenly spaced levels. Two values share a byte: byte j
//!   of a block holds weight j in its low nibble and weight j + 16 in its high nibble.
//!
//! A row whose length is not a multiple of 32 (the 1.5B's dt_proj has 100 columns) ends in a
//! block padded with zeros; the padding is never read back as a weight.
//!
//! The product `x · wᵀ` does not widen the weights to f32. Instead the input row is quantized to
//! int8 too, per block of 32 ([`QuantizedRow`], `x ≈ dx · qx`), and each block's 32 products are
//! summed in exact integer arithmetic: `x · w ≈ Σ_blocks (dw · dx) · Σ_i qw_i · qx_i`. The
//! integer sums have no rounding, so the only rounding is in the f32 sum over blocks, which
//! [`dot_reference`] does in block order; a fast kernel that sums the same way gives the same bits.
//!
//! [`dots`] computes these products with the fastest kernel this CPU has (AVX2 or AVX-512 VNNI
//! byte products, 8 weight rows at a time; [`kernels`] explains how, and why their
//! bits are the reference's); [`dots_with`] takes the [`Kernel`] to use, so the tests and
//! benches/decode_kernels.rs can run each one. Every kernel takes a batch of input rows and
//! reads the weights once for all of them.

pub mod kernels;

pub use kernels::{dots, dots_with, Kernel};

use crate::values::Values;
use half::f16;
use rayon::prelude::*;
use std::fmt;

/// Weights per block (and input values per activation block).
pub const BLOCK: usize = 32;

/// Which block format a quantized matrix uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32 int8 values and an f16 scale: 8.5 bits a weight.
    Q8_0,
    /// 32 4-bit values (offset by 8) and an f16 scale: 4.5 bits a weight.
    Q4_0,
}

impl QuantType {
    pub const ALL: [QuantType; 2] = [QuantType::Q8_0, QuantType::Q4_0];

    /// The name used on the command line and in config.json: `q8_0`, `q4_0`.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
        }
    }

    /// The type named `name` (as [`QuantType::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes of packed values in one block: 32 for q8_0, 16 for q4_0.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => BLOCK,
            QuantType::Q4_0 => BLOCK / 2,
        }
    }

    /// Bits a weight costs, the scale included: 8.5 or 4.5.
    pub fn bits_per_weight(self) -> f64 {
        (8 * self.block_bytes() + 16) as f64 / BLOCK as f64
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `[rows, cols]` matrix in blocks: `rows · blocks_per_row` scales and, per block,
/// [`QuantType::block_bytes`] bytes of values, row after row (block b of row r at
/// `(r · blocks_per_row + b) · block_bytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    kind: QuantType,
    rows: usize,
    cols: usize,
    /// The packed values: q8_0's are `i8` stored as their two's-complement bytes.
    values: Values<u8>,
    /// One scale a block. (rows, blocks_per_row)
    scales: Values<f16>,
}

impl Quantized {
    /// Blocks in a row of `cols` weights (the last one padded with zeros).
    pub fn blocks_per_row(cols: usize) -> usize {
        cols.div_ceil(BLOCK)
    }

    /// The parts of a stored quantized matrix, checked: `values` must hold
    /// `rows · blocks · block_bytes` bytes and `scales` `rows · blocks` finite values.
    pub fn from_parts(kind: QuantType, rows: usize, cols: usize, values: Values<u8>, scales: Values<f16>) -> Result<Quantized, String> {
        let blocks = rows.checked_mul(Self::blocks_per_row(cols)).ok_or("the shape overflows")?;
        if scales.len() != blocks {
            return Err(format!("{kind} [{rows}, {cols}] needs {blocks} scales (one per block of {BLOCK}), found {}", scales.len()));
        }
        let bytes = blocks * kind.block_bytes();
        if values.len() != bytes {
            return Err(format!("{kind} [{rows}, {cols}] needs {bytes} bytes of values ({blocks} blocks), found {}", values.len()));
        }
        if let Some(i) = scales.iter().position(|d| !d.is_finite()) {
            let per_row = Self::blocks_per_row(cols);
            return Err(format!("scale {i} (row {}, block {}) is {}, not a finite number", i / per_row, i % per_row, scales[i]));
        }
        Ok(Quantized { kind, rows, cols, values, scales })
    }

    /// Quantize a `[rows, cols]` matrix whose row r `row(r, out)` writes in f32 (rows in
    /// parallel). Fails if a block's scale does not fit an f16 (a weight beyond about 8·10⁶ in
    /// q8_0) or is not finite (a weight that is not).
    pub fn quantize(kind: QuantType, rows: usize, cols: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Result<Quantized, String> {
        let blocks = Self::blocks_per_row(cols);
        let row_bytes = blocks * kind.block_bytes();
        let mut values = vec![0u8; rows * row_bytes];
        let mut scales = vec![f16::ZERO; rows * blocks];
        let rows_done = values.par_chunks_mut(row_bytes.max(1)).zip(scales.par_chunks_mut(blocks.max(1))).enumerate();
        rows_done.try_for_each_init(
            || vec![0f32; blocks * BLOCK],
            |padded, (r, (values, scales))| {
                row(r, &mut padded[..cols]); // (cols), then zeros to whole blocks
                for b in 0..blocks {
                    let block: &[f32; BLOCK] = padded[b * BLOCK..(b + 1) * BLOCK].try_into().expect("a whole block");
                    let out = &mut values[b * kind.block_bytes()..(b + 1) * kind.block_bytes()];
                    scales[b] = match kind {
                        QuantType::Q8_0 => quantize_block_q8_0(block, out),
                        QuantType::Q4_0 => quantize_block_q4_0(block, out),
                    };
                    if !scales[b].is_finite() {
                        return Err(format!("row {r}, block {b}: the scale {} is not a finite f16 (a weight is too large or not finite)", scales[b]));
                    }
                }
                Ok(())
            },
        )?;
        Ok(Quantized { kind, rows, cols, values: values.into(), scales: scales.into() })
    }

    /// [`Quantized::quantize`] of a row-major f32 matrix.
    pub fn quantize_f32(kind: QuantType, rows: usize, cols: usize, weights: &[f32]) -> Result<Quantized, String> {
        debug_assert_eq!(weights.len(), rows * cols);
        Self::quantize(kind, rows, cols, |r, out| out.copy_from_slice(&weights[r * cols..(r + 1) * cols]))
    }

    pub fn kind(&self) -> QuantType {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed values, block after block. (rows · blocks · block_bytes)
    pub fn values(&self) -> &[u8] {
        &self.values
    }

    /// The scales. (rows · blocks)
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// Bytes held: values and scales.
    pub fn bytes(&self) -> usize {
        self.values.len() + 2 * self.scales.len()
    }

    /// Row `r`'s blocks: (its packed values, its scales).
    pub fn row(&self, r: usize) -> (&[u8], &[f16]) {
        let blocks = Self::blocks_per_row(self.cols);
        let bytes = blocks * self.kind.block_bytes();
        (&self.values[r * bytes..(r + 1) * bytes], &self.scales[r * blocks..(r + 1) * blocks])
    }

    /// Weights `first..first + out.len()` of row `r` in f32 (`d · q` or `d · (q − 8)`).
    pub fn dequantize_row_into(&self, r: usize, first: usize, out: &mut [f32]) {
        debug_assert!(first + out.len() <= self.cols);
        let (values, scales) = self.row(r);
        let mut block = [0f32; BLOCK];
        let mut c = first;
        let mut out = out;
        while !out.is_empty() {
            let (b, k) = (c / BLOCK, c % BLOCK);
            let bytes = &values[b * self.kind.block_bytes()..(b + 1) * self.kind.block_bytes()];
            dequantize_block(self.kind, bytes, scales[b], &mut block);
            let n = (BLOCK - k).min(out.len());
            out[..n].copy_from_slice(&block[k..k + n]);
            out = &mut out[n..];
            c += n;
        }
    }
}

/// One q8_0 block: `d = max|w| / 127`, `q = round(w / d)`; returns d (as stored, f16).
/// (llama.cpp's `quantize_row_q8_0_ref`.)
pub fn quantize_block_q8_0(w: &[f32; BLOCK], q: &mut [u8]) -> f16 {
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, w) in q.iter_mut().zip(w) {
        *q = ((w * id).round() as i8) as u8;
    }
    f16::from_f32(d)
}

/// One q4_0 block: m the weight of largest magnitude, `d = m / −8`, `q = clamp(round(w / d) + 8,
/// 0, 15)`, packed two to a byte (weight j low, weight j + 16 high); returns d (f16).
/// (llama.cpp's `quantize_row_q4_0_ref`.)
pub fn quantize_block_q4_0(w: &[f32; BLOCK], q: &mut [u8]) -> f16 {
    let m = w.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = m / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let level = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8; // + 8.5 then truncate: round to the nearest level
    for j in 0..BLOCK / 2 {
        q[j] = level(w[j]) | (level(w[j + BLOCK / 2]) << 4);
    }
    f16::from_f32(d)
}

/// One block back to f32.
pub fn dequantize_block(kind: QuantType, q: &[u8], d: f16, out: &mut [f32; BLOCK]) {
    let d = d.to_f32();
    match kind {
        QuantType::Q8_0 => out.iter_mut().zip(q).for_each(|(o, &q)| *o = d * (q as i8) as f32),
        QuantType::Q4_0 => {
            for j in 0..BLOCK / 2 {
                out[j] = d * ((q[j] & 0x0F) as i32 - 8) as f32;
                out[j + BLOCK / 2] = d * ((q[j] >> 4) as i32 - 8) as f32;
            }
        }
    }
}

/// An input row quantized for the integer products: per block of 32, `x ≈ d · q` with
/// `d = max|x| / 127` (kept in f32) and q in −127..=127, the row padded with zeros to whole
/// blocks. (The vector kernels rely on q never being −128: they negate it.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizedRow {
    /// (blocks · 32)
    pub q: Vec<i8>,
    /// (blocks)
    pub d: Vec<f32>,
}

impl QuantizedRow {
    /// Quantize `x` (any length) into `self`, reusing its memory. Rounds half to even, as vector
    /// units do, so every kernel can quantize the same way.
    pub fn quantize(&mut self, x: &[f32]) {
        let blocks = x.len().div_ceil(BLOCK);
        self.q.clear();
        self.q.resize(blocks * BLOCK, 0);
        self.d.clear();
        for (b, chunk) in x.chunks(BLOCK).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, v) in self.q[b * BLOCK..].iter_mut().zip(chunk) {
                *q = (v * id).round_ties_even() as i8;
            }
            self.d.push(d);
        }
    }

    pub fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// `x · w` for one weight row `w` (its packed values and scales) and an input row quantized by
/// [`QuantizedRow::quantize`]: per block the exact integer sum `Σ qw·qx`, then over the blocks,
/// in order, `sum += (dw · dx) · Σ` in f32. The plain truth every fast kernel is tested against.
pub fn dot_reference(kind: QuantType, x: &QuantizedRow, values: &[u8], scales: &[f16]) -> f32 {
    debug_assert_eq!(x.blocks(), scales.len());
    let mut sum = 0f32;
    for (b, &dw) in scales.iter().enumerate() {
        let qx = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let qw = &values[b * kind.block_bytes()..(b + 1) * kind.block_bytes()];
        let isum: i32 = match kind {
            QuantType::Q8_0 => qx.iter().zip(qw).map(|(&x, &w)| x as i32 * (w as i8) as i32).sum(),
            QuantType::Q4_0 => (0..BLOCK / 2)
                .map(|j| {
                    let (lo, hi) = ((qw[j] & 0x0F) as i32 - 8, (qw[j] >> 4) as i32 - 8);
                    qx[j] as i32 * lo + qx[j + BLOCK / 2] as i32 * hi
                })
                .sum(),
        };
        sum += (dw.to_f32() * x.d[b]) * isum as f32;
    }
    sum
}

/// `out[r] = x · w_r` for consecutive weight rows `first..first + out.len()` of `w`.
pub fn dots_reference(w: &Quantized, x: &QuantizedRow, first: usize, out: &mut [f32]) {
    for (r, out) in out.iter_mut().enumerate() {
        let (values, scales) = w.row(first + r);
        *out = dot_reference(w.kind, x, values, scales);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, salt: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 0.37 + salt).sin() * 3.0) * (1.0 + (i % 7) as f32)).collect()
    }

    #[test]
    fn names_round_trip_and_sizes_are_llama_cpps() {
        for t in QuantType::ALL {
            assert_eq!(QuantType::from_name(t.name()), Some(t));
        }
        assert_eq!(QuantType::from_name("q5_k"), None);
        assert_eq!(QuantType::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(QuantType::Q4_0.bits_per_weight(), 4.5);
    }

    /// Each weight comes back within half a step (d/2) of itself, except in q4_0 where the levels
    /// reach −8·d on the side of the block's largest weight and only +7·d on the other, so a
    /// weight there near −m is clipped by up to one step; all-zero blocks stay zero.
    #[test]
    fn dequantized_weights_are_within_half_a_step() {
        let (rows, cols) = (5, 100); // 4 blocks a row, the last padded
        let w = sample(rows * cols, 0.3);
        for kind in QuantType::ALL {
            let q = Quantized::quantize_f32(kind, rows, cols, &w).unwrap();
            assert_eq!(q.values().len(), rows * 4 * kind.block_bytes());
            let mut back = vec![0f32; cols];
            for r in 0..rows {
                q.dequantize_row_into(r, 0, &mut back);
                for (c, (&got, &want)) in back.iter().zip(&w[r * cols..]).enumerate() {
                    let d = q.row(r).1[c / BLOCK].to_f32().abs();
                    let step = if kind == QuantType::Q8_0 { 0.5 } else { 1.0 };
                    assert!((got - want).abs() <= d * step + want.abs() * 1e-3, "{kind} row {r} col {c}: {got} for {want}, d = {d}");
                }
                // a range starting inside a block equals the same slice of the whole row
                let mut part = vec![0f32; 45];
                q.dequantize_row_into(r, 17, &mut part);
                assert_eq!(&part[..], &back[17..62]);
            }
        }
        let zeros = Quantized::quantize_f32(QuantType::Q4_0, 1, 32, &[0.0; 32]).unwrap();
        assert!(zeros.scales()[0] == f16::ZERO && zeros.values().iter().all(|&b| b == 0x88));
    }

    #[test]
    fn parts_are_checked() {
        let q = Quantized::quantize_f32(QuantType::Q8_0, 2, 40, &sample(80, 0.1)).unwrap();
        let values: Values<u8> = q.values().to_vec().into();
        let scales: Values<f16> = q.scales().to_vec().into();
        assert_eq!(Quantized::from_parts(QuantType::Q8_0, 2, 40, values.clone(), scales.clone()), Ok(q));
        assert!(Quantized::from_parts(QuantType::Q4_0, 2, 40, values.clone(), scales.clone()).unwrap_err().contains("bytes"));
        assert!(Quantized::from_parts(QuantType::Q8_0, 3, 40, values.clone(), scales.clone()).unwrap_err().contains("scales"));
        let mut bad = scales.to_vec();
        bad[3] = f16::NAN;
        assert!(Quantized::from_parts(QuantType::Q8_0, 2, 40, values, bad.into()).unwrap_err().contains("scale 3"));
        assert!(Quantized::quantize_f32(QuantType::Q8_0, 1, 2, &[1e7, 1.0]).unwrap_err().contains("f16"));
    }

    /// The integer product equals the f32 product of the dequantized weights and inputs up to
    /// float rounding, and approximates the exact product within the quantization errors.
    #[test]
    fn the_integer_dot_is_the_dot_of_the_dequantized_rows() {
        let cols = 100;
        let (w, x) = (sample(cols, 0.5), sample(cols, 2.0));
        let mut qx = QuantizedRow::default();
        qx.quantize(&x);
        let x_back: Vec<f32> = (0..cols).map(|i| qx.d[i / BLOCK] * qx.q[i] as f32).collect();
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        for kind in QuantType::ALL {
            let q = Quantized::quantize_f32(kind, 1, cols, &w).unwrap();
            let mut w_back = vec![0f32; cols];
            q.dequantize_row_into(0, 0, &mut w_back);
            let want: f64 = w_back.iter().zip(&x_back).map(|(&a, &b)| a as f64 * b as f64).sum();
            let (values, scales) = q.row(0);
            let got = dot_reference(kind, &qx, values, scales);
            assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{kind}: {got} vs {want}");
            let tolerance = if kind == QuantType::Q8_0 { 0.01 } else { 0.1 };
            assert!((got - exact).abs() <= tolerance * exact.abs().max(10.0), "{kind}: {got} vs exact {exact}");
        }
    }
}
