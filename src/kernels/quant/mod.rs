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

use crate::kernels::simd::{array_of, best_simd};
use half::f16;
use ndarray::ArrayViewMut2;
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;

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

/// Weight rows the kernels compute at once (one f32 lane each of a 256-bit register), and so the
/// rows a tile of [`Quantized`] holds.
pub const GROUP: usize = 8;

/// Bytes at the start of a tile: the 8 rows' scales, f16.
pub const TILE_SCALE_BYTES: usize = 2 * GROUP;

/// A `[rows, cols]` matrix in blocks, laid out in memory in the order the kernels read it.
///
/// The rows are taken 8 at a time (a *group*; the last one padded with rows of zeros), and a
/// group's blocks are stored one after another as *tiles*. Tile (g, b) holds block b of rows
/// `8g..8g + 8`: first their 8 scales, then their packed values interleaved 4 bytes at a time,
/// bytes 0..4 of each of the 8 rows, then bytes 4..8 of each, and so on:
///
/// ```text
/// tile (g, b) = [ d0 d1 … d7 | r0[0..4] r1[0..4] … r7[0..4] | r0[4..8] … r7[4..8] | … ]
///                 16 bytes     32 bytes                       32 bytes
/// ```
///
/// (272 bytes a tile in q8_0, 144 in q4_0.) Two things follow. A group is one run of memory read
/// front to back, which the CPU's prefetchers follow best (8 rows read side by side are 16
/// streams, values and scales, that they lose track of). And one 32-byte load holds 4 bytes of
/// each of the 8 rows, so an instruction that adds up 4 adjacent byte products into a 32-bit
/// lane (`vpdpbusd`), given the input's 4 matching bytes in every lane, leaves row r's partial
/// sum in lane r: no shuffling to add a block up. llama.cpp repacks its Q4_0 for x86 and Arm the
/// same way for the same reason.
///
/// Files keep the plain row-major layout of [`QuantType`]'s blocks: [`Quantized::from_parts`]
/// packs it into tiles and [`Quantized::to_parts`] unpacks it; [`Quantized::block`] reads one
/// row's block in its plain order, for the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    kind: QuantType,
    rows: usize,
    cols: usize,
    /// (groups, blocks_per_row, tile_bytes): every tile, group after group.
    tiles: Vec<u8>,
}

impl Quantized {
    /// Blocks in a row of `cols` weights (the last one padded with zeros).
    pub fn blocks_per_row(cols: usize) -> usize {
        cols.div_ceil(BLOCK)
    }

    /// Bytes of one tile of `kind`: 8 scales and 8 blocks of values.
    pub fn tile_bytes(kind: QuantType) -> usize {
        TILE_SCALE_BYTES + GROUP * kind.block_bytes()
    }

    /// The parts of a stored quantized matrix, checked and packed into tiles: `values` must hold
    /// `rows · blocks · block_bytes` bytes (block b of row r at `(r · blocks + b) · block_bytes`)
    /// and `scales` `rows · blocks` finite values.
    pub fn from_parts(kind: QuantType, rows: usize, cols: usize, values: &[u8], scales: &[f16]) -> Result<Quantized, String> {
        let per_row = Self::blocks_per_row(cols);
        let blocks = rows.checked_mul(per_row).ok_or("the shape overflows")?;
        if scales.len() != blocks {
            return Err(format!("{kind} [{rows}, {cols}] needs {blocks} scales (one per block of {BLOCK}), found {}", scales.len()));
        }
        let bytes = blocks * kind.block_bytes();
        if values.len() != bytes {
            return Err(format!("{kind} [{rows}, {cols}] needs {bytes} bytes of values ({blocks} blocks), found {}", values.len()));
        }
        // All scales tested first without stopping early, on the vector unit (as
        // `checkpoint::check_elements_finite`), then the first bad one found for the message.
        if !scales.iter().fold(true, |ok, d| ok & d.is_finite()) {
            let i = scales.iter().position(|d| !d.is_finite()).expect("a scale is not finite");
            return Err(format!("scale {i} (row {}, block {}) is {}, not a finite number", i / per_row, i % per_row, scales[i]));
        }
        let row_bytes = per_row * kind.block_bytes();
        Ok(Self::packed(kind, rows, cols, |group, tiles| {
            let values: Vec<&[u8]> = group.clone().map(|r| &values[r * row_bytes..(r + 1) * row_bytes]).collect();
            let scales: Vec<&[f16]> = group.map(|r| &scales[r * per_row..(r + 1) * per_row]).collect();
            pack_group(kind, &values, &scales, tiles);
            Ok(())
        })
        .expect("packing checked parts cannot fail"))
    }

    /// Quantize a `[rows, cols]` matrix whose row r `row(r, out)` writes in f32 (groups of 8 rows
    /// in parallel). Fails if a block's scale does not fit an f16 (a weight beyond about 8·10⁶ in
    /// q8_0) or is not finite (a weight that is not).
    pub fn quantize(kind: QuantType, rows: usize, cols: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Result<Quantized, String> {
        let per_row = Self::blocks_per_row(cols);
        let row_bytes = per_row * kind.block_bytes();
        Self::packed(kind, rows, cols, |group, tiles| {
            let mut values = vec![vec![0u8; row_bytes]; group.len()]; // (rows of the group, blocks · block_bytes)
            let mut scales = vec![vec![f16::ZERO; per_row]; group.len()]; // (rows of the group, blocks)
            let mut padded = vec![0f32; per_row * BLOCK]; // (cols), then zeros to whole blocks
            for (i, r) in group.enumerate() {
                row(r, &mut padded[..cols]);
                quantize_blocks(kind, &padded, &mut values[i], &mut scales[i]);
                if let Some((b, d)) = scales[i].iter().enumerate().find(|(_, d)| !d.is_finite()) {
                    return Err(format!("row {r}, block {b}: the scale {d} is not a finite f16 (a weight is too large or not finite)"));
                }
            }
            let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let scales: Vec<&[f16]> = scales.iter().map(Vec::as_slice).collect();
            pack_group(kind, &values, &scales, tiles);
            Ok(())
        })
    }

    /// A matrix whose tiles of each group `fill(its rows, tiles)` writes (groups in parallel;
    /// the last group's rows stop at `rows`).
    fn packed(kind: QuantType, rows: usize, cols: usize, fill: impl Fn(Range<usize>, &mut [u8]) -> Result<(), String> + Sync) -> Result<Quantized, String> {
        let group_bytes = Self::blocks_per_row(cols) * Self::tile_bytes(kind);
        let mut tiles = vec![0u8; rows.div_ceil(GROUP) * group_bytes];
        tiles.par_chunks_mut(group_bytes.max(1)).enumerate().try_for_each(|(g, tiles)| fill(g * GROUP..((g + 1) * GROUP).min(rows), tiles))?;
        Ok(Quantized { kind, rows, cols, tiles })
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

    /// Group g's tiles (rows `8g..8g + 8`), block after block. (blocks_per_row, tile_bytes)
    pub fn group(&self, g: usize) -> &[u8] {
        let group_bytes = Self::blocks_per_row(self.cols) * Self::tile_bytes(self.kind);
        &self.tiles[g * group_bytes..(g + 1) * group_bytes]
    }

    /// Bytes held: the tiles (the last group's padding rows included, at most 7 rows).
    pub fn bytes(&self) -> usize {
        self.tiles.len()
    }

    /// Row r's block b in the plain order of [`QuantType`] (the first `block_bytes` bytes of the
    /// array; q4_0's byte j holds weights j and j + 16), and its scale.
    pub fn block(&self, r: usize, b: usize) -> ([u8; BLOCK], f16) {
        let (g, lane) = (r / GROUP, r % GROUP);
        let tile = &self.group(g)[b * Self::tile_bytes(self.kind)..][..Self::tile_bytes(self.kind)];
        let d = scale_at(tile, lane);
        let mut bytes = [0u8; BLOCK];
        for (k, run) in bytes[..self.kind.block_bytes()].chunks_exact_mut(4).enumerate() {
            run.copy_from_slice(&tile[value_at(lane, 4 * k)..][..4]); // bytes 4k..4k + 4, side by side in the tile
        }
        (bytes, d)
    }

    /// The plain row-major parts, as files store them (what [`Quantized::from_parts`] takes):
    /// (values (rows · blocks · block_bytes), scales (rows · blocks)).
    pub fn to_parts(&self) -> (Vec<u8>, Vec<f16>) {
        let (per_row, bytes) = (Self::blocks_per_row(self.cols), self.kind.block_bytes());
        let mut values = Vec::with_capacity(self.rows * per_row * bytes);
        let mut scales = Vec::with_capacity(self.rows * per_row);
        for r in 0..self.rows {
            for b in 0..per_row {
                let (block, d) = self.block(r, b);
                values.extend_from_slice(&block[..bytes]);
                scales.push(d);
            }
        }
        (values, scales)
    }

    /// Weights `first..first + out.len()` of row `r` in f32 (`d · q` or `d · (q − 8)`).
    pub fn dequantize_row_into(&self, r: usize, first: usize, out: &mut [f32]) {
        debug_assert!(first + out.len() <= self.cols);
        let mut block = [0f32; BLOCK];
        let mut c = first;
        let mut out = out;
        while !out.is_empty() {
            let (b, k) = (c / BLOCK, c % BLOCK);
            let (bytes, d) = self.block(r, b);
            let n = (BLOCK - k).min(out.len());
            match out.first_chunk_mut::<BLOCK>() {
                Some(whole) if k == 0 => dequantize_block(self.kind, &bytes[..self.kind.block_bytes()], d, whole),
                _ => {
                    dequantize_block(self.kind, &bytes[..self.kind.block_bytes()], d, &mut block);
                    out[..n].copy_from_slice(&block[k..k + n]);
                }
            }
            out = &mut out[n..];
            c += n;
        }
    }

    /// Weights `cols` of the rows `rows` in f32, into `out`: each row what
    /// [`Quantized::dequantize_row_into`] gives (the same bits), but read tile by tile, the 8 rows
    /// of a group together, in the order the tiles lie in memory. What prefill widens, a slab of
    /// columns at a time, for its GEMM (`Matrix::gemm_tile`). Row by row, each block was first
    /// gathered out of its tile: in a profile of a q4_0 prefill that widening took 7.8 % of the
    /// samples where bf16's took 3.8 %, and now about 4 %. `cols` starts on a block.
    /// out: (rows.len(), cols.len())
    pub fn dequantize_into(&self, rows: Range<usize>, cols: Range<usize>, mut out: ArrayViewMut2<f32>) {
        debug_assert!(cols.start.is_multiple_of(BLOCK) && cols.end <= self.cols && rows.end <= self.rows);
        debug_assert_eq!(out.dim(), (rows.len(), cols.len()));
        let tile_bytes = Self::tile_bytes(self.kind);
        let mut out_rows: Vec<&mut [f32]> = out.rows_mut().into_iter().map(|r| r.into_slice().expect("contiguous rows")).collect();
        let mut tile = [[0f32; BLOCK]; GROUP]; // (8 rows, 32)
        for g in rows.start / GROUP..rows.end.div_ceil(GROUP) {
            let group = self.group(g); // (blocks, tile_bytes)
            let lanes = rows.start.max(g * GROUP)..rows.end.min((g + 1) * GROUP); // the group's rows asked for
            for b in cols.start / BLOCK..cols.end.div_ceil(BLOCK) {
                dequantize_tile(self.kind, &group[b * tile_bytes..(b + 1) * tile_bytes], &mut tile);
                let at = b * BLOCK - cols.start; // the block's first column in out
                let n = BLOCK.min(cols.len() - at); // its columns asked for
                for r in lanes.clone() {
                    let (out, tile) = (&mut out_rows[r - rows.start][at..at + n], &tile[r % GROUP]);
                    match out.first_chunk_mut::<BLOCK>() {
                        Some(whole) => *whole = *tile, // a copy of known length: a few vector moves
                        None => out.copy_from_slice(&tile[..n]),
                    }
                }
            }
        }
    }
}

best_simd! {
    /// One tile's 8 rows of 32 weights in f32, row r's block as [`dequantize_block`] gives it:
    /// the same operations, on the best vector unit of this CPU. out: (8 rows, 32)
    fn dequantize_tile(kind: QuantType, tile: &[u8], out: &mut [[f32; BLOCK]; GROUP]) = dequantize_tile_plain
}

/// [`dequantize_tile`]'s work. The values are interleaved 4 bytes a row ([`Quantized`]): run k
/// of 32 bytes holds bytes 4k..4k + 4 of each of the 8 rows, in q8_0 weights 4k..4k + 4, in
/// q4_0 those in the low nibbles and 16 + 4k.. in the high ones.
#[inline(always)]
fn dequantize_tile_plain(kind: QuantType, tile: &[u8], out: &mut [[f32; BLOCK]; GROUP]) {
    let d: [f32; GROUP] = array_of(|r| scale_at(tile, r).to_f32()); // (8)
    for k in 0..kind.block_bytes() / 4 {
        for (r, (out, &d)) in out.iter_mut().zip(&d).enumerate() {
            let bytes: &[u8; 4] = tile[value_at(r, 4 * k)..][..4].try_into().expect("4 bytes"); // bytes 4k..4k + 4 of row r
            match kind {
                QuantType::Q8_0 => {
                    for (i, &q) in bytes.iter().enumerate() {
                        out[4 * k + i] = q8_weight(d, q);
                    }
                }
                QuantType::Q4_0 => {
                    for (i, &q) in bytes.iter().enumerate() {
                        out[4 * k + i] = q4_weight(d, q & 0x0F);
                        out[BLOCK / 2 + 4 * k + i] = q4_weight(d, q >> 4);
                    }
                }
            }
        }
    }
}

/// Row `lane`'s scale in a tile: the tile's first 16 bytes are the 8 rows' f16 scales.
fn scale_at(tile: &[u8], lane: usize) -> f16 {
    f16::from_le_bytes([tile[2 * lane], tile[2 * lane + 1]])
}

/// A q8_0 value back to its weight, d · q: the one formula every dequantization uses.
#[inline(always)]
fn q8_weight(d: f32, q: u8) -> f32 {
    d * (q as i8) as f32
}

/// A q4_0 nibble (0..=15) back to its weight, d · (q − 8).
#[inline(always)]
fn q4_weight(d: f32, nibble: u8) -> f32 {
    d * (nibble as i32 - 8) as f32
}

/// Where in a tile byte j of row `lane`'s block sits: after the 8 scales, in runs of 4 bytes,
/// the 8 rows' bytes 0..4, then their bytes 4..8, and so on. (tile: scales, (block_bytes / 4, 8, 4))
fn value_at(lane: usize, j: usize) -> usize {
    TILE_SCALE_BYTES + ((j / 4) * GROUP + lane) * 4 + j % 4
}

/// Write the tiles of one group: `values[i]` and `scales[i]` are row i's plain blocks (up to 8
/// rows; missing rows are padded with zero scales and zero weights). tiles: (blocks, tile_bytes)
///
/// Each tile is written front to back: the 8 scales, then for each run of 4 bytes the 8 rows'
/// (the order [`value_at`] gives), 4-byte copies from the rows' blocks. Loading a quantized
/// checkpoint is mostly this loop, over every weight.
fn pack_group(kind: QuantType, values: &[&[u8]], scales: &[&[f16]], tiles: &mut [u8]) {
    debug_assert!(values.len() <= GROUP && values.len() == scales.len());
    let (bytes, tile_bytes) = (kind.block_bytes(), Quantized::tile_bytes(kind));
    let zero_weights = match kind {
        QuantType::Q8_0 => [0x00; BLOCK],
        QuantType::Q4_0 => [0x88; BLOCK], // q = 8 in both nibbles: a weight of 0
    };
    for (b, tile) in tiles.chunks_exact_mut(tile_bytes).enumerate() {
        let (tile_scales, runs) = tile.split_at_mut(TILE_SCALE_BYTES); // (8 · 2), (block_bytes / 4, 8, 4)
        for (lane, d) in tile_scales.chunks_exact_mut(2).enumerate() {
            d.copy_from_slice(&scales.get(lane).map_or(f16::ZERO, |s| s[b]).to_le_bytes()); // a padding row's is 0
        }
        let blocks: [&[u8]; GROUP] = std::array::from_fn(|lane| match values.get(lane) {
            Some(v) => &v[b * bytes..(b + 1) * bytes],
            None => &zero_weights[..bytes], // a padding row
        });
        for (k, run) in runs.chunks_exact_mut(4 * GROUP).enumerate() {
            for (four, block) in run.chunks_exact_mut(4).zip(blocks) {
                four.copy_from_slice(&block[4 * k..4 * k + 4]);
            }
        }
    }
}

best_simd! {
    /// [`quantize_blocks_reference`] compiled for the best vector unit of this CPU: the same
    /// operations, but `round` (half away from zero) becomes a few vector instructions where the
    /// baseline x86-64 build calls libm's `roundf` for every weight. The same bits (tested).
    /// With the blocks' steps written for it ([`max_abs`], [`round_to_i8`],
    /// [`truncate_to_level`]), q8_0 quantizes 2.6–2.8× and q4_0 1.8× as fast as llama.cpp's
    /// loops did here (Zen 2, `cargo bench --bench decode_kernels -- quantize`).
    fn quantize_blocks(kind: QuantType, row: &[f32], values: &mut [u8], scales: &mut [f16]) = quantize_blocks_reference
}

/// Each block of 32 of `row` quantized to `kind` ([`quantize_block_q8_0`],
/// [`quantize_block_q4_0`]): its values into `values`, its scale into `scales`.
/// row: (blocks · 32), values: (blocks · block_bytes), scales: (blocks)
#[inline(always)]
fn quantize_blocks_reference(kind: QuantType, row: &[f32], values: &mut [u8], scales: &mut [f16]) {
    debug_assert_eq!((row.len(), values.len()), (scales.len() * BLOCK, scales.len() * kind.block_bytes()));
    for ((block, q), d) in row.chunks_exact(BLOCK).zip(values.chunks_exact_mut(kind.block_bytes())).zip(scales) {
        let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
        *d = match kind {
            QuantType::Q8_0 => quantize_block_q8_0(block, q),
            QuantType::Q4_0 => quantize_block_q4_0(block, q),
        };
    }
}

/// The largest |w| of a block, taken 8 weights at a time: a maximum is the same in any order,
/// and 8 running maxima are one vector register where one would be a chain of 32 steps.
#[inline(always)]
fn max_abs(w: &[f32; BLOCK]) -> f32 {
    let mut lanes = [0f32; 8];
    for eight in w.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(eight) {
            // `m.max(|v|)` as a comparison, which the vector unit does in one instruction (a NaN
            // compares false and is skipped, as `max` skips it)
            *m = if v.abs() > *m { v.abs() } else { *m };
        }
    }
    lanes.into_iter().fold(0.0, f32::max)
}

/// One q8_0 block: `d = max|w| / 127`, `q = round(w / d)`; returns d (as stored, f16).
/// (llama.cpp's `quantize_row_q8_0_ref`.)
#[inline(always)]
pub fn quantize_block_q8_0(w: &[f32; BLOCK], q: &mut [u8]) -> f16 {
    let amax = max_abs(w);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, w) in q.iter_mut().zip(w) {
        *q = round_to_i8(w * id) as u8;
    }
    f16::from_f32(d)
}

/// One q4_0 block: m the weight of largest magnitude, `d = m / −8`, `q = clamp(round(w / d) + 8,
/// 0, 15)`, packed two to a byte (weight j low, weight j + 16 high); returns d (f16).
/// (llama.cpp's `quantize_row_q4_0_ref`, whose loop keeps the first weight of the largest
/// magnitude: found here after that magnitude, so that finding it is not one chain of 32 steps.)
#[inline(always)]
pub fn quantize_block_q4_0(w: &[f32; BLOCK], q: &mut [u8]) -> f16 {
    let amax = max_abs(w);
    let m = match amax {
        0.0 => 0.0, // +0 even where the block holds −0, as llama.cpp's loop leaves it
        _ => w.iter().copied().find(|v| v.abs() == amax).expect("amax is one of the |w|"),
    };
    let d = m / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let level = |v: f32| truncate_to_level(v * id + 8.5); // + 8.5 then truncate: the nearest level
    for j in 0..BLOCK / 2 {
        q[j] = level(w[j]) | (level(w[j + BLOCK / 2]) << 4);
    }
    f16::from_f32(d)
}

/// `x.round() as i8`: x to the nearest whole number (halves away from zero), saturating at −128
/// and 127, NaN to 0. In steps the vector unit takes 8 at a time: the compiler converts with
/// `as`'s saturation one value at a time (2–3× slower quantizing q8_0 on the Zen 2).
#[inline(always)]
fn round_to_i8(x: f32) -> i8 {
    let r = x.round();
    small_int(if r.is_nan() { 0.0 } else { r.clamp(-128.0, 127.0) }) as i8
}

/// `(t as i32).clamp(0, 15)`, a q4_0 level: t truncated toward zero, then kept to 0..=15, NaN
/// to 0. As [`round_to_i8`], in steps the vector unit takes 8 at a time.
#[inline(always)]
fn truncate_to_level(t: f32) -> u8 {
    small_int(if t.is_nan() { 0.0 } else { t.clamp(0.0, 15.0).trunc() }) as u8
}

/// `x`, a whole number of magnitude below 2²², as an i32: the low bits of x + 1.5·2²³, where x
/// lands on a whole step of the mantissa ([`crate::kernels::simd::exp`] finds its 2ⁿ the same
/// way). An addition and an integer subtraction, exact, with no saturation to check.
#[inline(always)]
fn small_int(x: f32) -> i32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    debug_assert!(x == x.trunc() && x.abs() < 4_194_304.0, "{x} is not a small whole number");
    ((x + ROUND).to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32)
}

/// One block back to f32.
#[inline]
pub fn dequantize_block(kind: QuantType, q: &[u8], d: f16, out: &mut [f32; BLOCK]) {
    let d = d.to_f32();
    match kind {
        QuantType::Q8_0 => out.iter_mut().zip(q).for_each(|(o, &q)| *o = q8_weight(d, q)),
        QuantType::Q4_0 => {
            // the low nibbles, then the high ones: two plain loops, which the compiler vectorises
            let (low, high) = out.split_at_mut(BLOCK / 2);
            low.iter_mut().zip(q).for_each(|(o, &q)| *o = q4_weight(d, q & 0x0F));
            high.iter_mut().zip(q).for_each(|(o, &q)| *o = q4_weight(d, q >> 4));
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
    /// Σ q over each block, for the kernels that multiply offset weights (`Σ (w + c)·x − c·Σ x`). (blocks)
    pub sums: Vec<i32>,
}

impl QuantizedRow {
    /// Quantize `x` (any length) into `self`, reusing its memory. Rounds half to even, as vector
    /// units do, so every kernel can quantize the same way.
    pub fn quantize(&mut self, x: &[f32]) {
        let blocks = x.len().div_ceil(BLOCK);
        self.q.clear();
        self.q.resize(blocks * BLOCK, 0);
        self.d.clear();
        self.sums.clear();
        quantize_row(x, &mut self.q, &mut self.d, &mut self.sums);
    }

    pub fn blocks(&self) -> usize {
        self.d.len()
    }
}

best_simd! {
    /// [`quantize_row_reference`] compiled for the best vector unit of this CPU: the same
    /// operations, but `round_ties_even` becomes one vector instruction (`vroundps`) where the
    /// baseline x86-64 build calls libm's `rintf` for every value (4 % of a q4_0 decode step on
    /// Zen 2, before).
    fn quantize_row(x: &[f32], q: &mut [i8], d: &mut Vec<f32>, sums: &mut Vec<i32>) = quantize_row_reference
}

/// [`QuantizedRow::quantize`]'s work: each block of `x` into its 32 values in `q` (zeroed, whole
/// blocks), its scale pushed onto `d` and its sum onto `sums`. q: (blocks · 32)
#[inline(always)]
fn quantize_row_reference(x: &[f32], q: &mut [i8], d: &mut Vec<f32>, sums: &mut Vec<i32>) {
    debug_assert_eq!(q.len(), x.len().div_ceil(BLOCK) * BLOCK);
    for (chunk, q) in x.chunks(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for (q, v) in q.iter_mut().zip(chunk) {
            *q = (v * id).round_ties_even() as i8;
        }
        d.push(scale);
        sums.push(q.iter().map(|&q| q as i32).sum());
    }
}

/// `x · w_r` for row `r` of `w` and an input row quantized by [`QuantizedRow::quantize`]: per
/// block the exact integer sum `Σ qw·qx`, then over the blocks, in order, `sum += (dw · dx) · Σ`
/// in f32. The plain truth every fast kernel is tested against.
pub fn dot_reference(w: &Quantized, r: usize, x: &QuantizedRow) -> f32 {
    debug_assert_eq!(x.blocks(), Quantized::blocks_per_row(w.cols()));
    let mut sum = 0f32;
    for b in 0..x.blocks() {
        let (qw, dw) = w.block(r, b); // (32) plain bytes, the scale
        let qx = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let isum: i32 = match w.kind() {
            QuantType::Q8_0 => qx.iter().zip(qw).map(|(&x, w)| x as i32 * (w as i8) as i32).sum(),
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
        *out = dot_reference(w, first + r, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            assert_eq!(q.bytes(), 4 * Quantized::tile_bytes(kind), "one group of 8 rows (3 padding), 4 blocks");
            let mut back = vec![0f32; cols];
            for r in 0..rows {
                q.dequantize_row_into(r, 0, &mut back);
                for (c, (&got, &want)) in back.iter().zip(&w[r * cols..]).enumerate() {
                    let d = q.block(r, c / BLOCK).1.to_f32().abs();
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
        let (values, scales) = zeros.to_parts();
        assert!(scales == [f16::ZERO] && values.iter().all(|&b| b == 0x88));
    }

    /// The tile layout as [`Quantized`] draws it: scales first, then 4 bytes of each of the 8
    /// rows at a time; padding rows of zeros; and back to the plain parts unchanged.
    #[test]
    fn tiles_interleave_8_rows_4_bytes_at_a_time_and_unpack_to_the_parts() {
        let (rows, cols) = (11, 64); // two groups (the second with 5 padding rows), 2 blocks a row
        for kind in QuantType::ALL {
            let bytes = kind.block_bytes();
            let values: Vec<u8> = (0..rows * 2 * bytes).map(|i| (i % 251) as u8).collect();
            let scales: Vec<f16> = (0..rows * 2).map(|i| f16::from_f32(i as f32)).collect();
            let q = Quantized::from_parts(kind, rows, cols, &values, &scales).unwrap();
            assert_eq!(q.bytes(), 2 * 2 * Quantized::tile_bytes(kind));
            let tile = &q.group(0)[Quantized::tile_bytes(kind)..2 * Quantized::tile_bytes(kind)]; // rows 0..8, block 1
            for lane in 0..GROUP {
                assert_eq!(f16::from_le_bytes([tile[2 * lane], tile[2 * lane + 1]]), scales[lane * 2 + 1]);
                for j in 0..bytes {
                    let at = TILE_SCALE_BYTES + (j / 4) * 32 + lane * 4 + j % 4;
                    assert_eq!(tile[at], values[(lane * 2 + 1) * bytes + j], "{kind} row {lane} byte {j}");
                }
            }
            let padding = &q.group(1)[..TILE_SCALE_BYTES]; // rows 8..16, block 0: rows 11.. padded
            assert!(padding[2 * 3..].iter().all(|&b| b == 0), "{kind}: padding rows have zero scales");
            let zero_weight = if kind == QuantType::Q4_0 { 0x88 } else { 0 }; // q = 8, or q = 0
            for (lane, j) in (3..GROUP).flat_map(|lane| (0..bytes).map(move |j| (lane, j))) {
                assert_eq!(q.group(1)[value_at(lane, j)], zero_weight, "{kind}: padding row {lane}, byte {j}");
            }
            assert_eq!(q.to_parts(), (values, scales), "{kind}");
        }
    }

    #[test]
    fn parts_are_checked() {
        let q = Quantized::quantize_f32(QuantType::Q8_0, 2, 40, &sample(80, 0.1)).unwrap();
        let (values, scales) = q.to_parts();
        assert_eq!(Quantized::from_parts(QuantType::Q8_0, 2, 40, &values, &scales), Ok(q));
        assert!(Quantized::from_parts(QuantType::Q4_0, 2, 40, &values, &scales).unwrap_err().contains("bytes"));
        assert!(Quantized::from_parts(QuantType::Q8_0, 3, 40, &values, &scales).unwrap_err().contains("scales"));
        let mut bad = scales.to_vec();
        bad[3] = f16::NAN;
        assert!(Quantized::from_parts(QuantType::Q8_0, 2, 40, &values, &bad).unwrap_err().contains("scale 3"));
        assert!(Quantized::quantize_f32(QuantType::Q8_0, 1, 2, &[1e7, 1.0]).unwrap_err().contains("f16"));
    }

    /// llama.cpp's loops, as written there, one weight after another: the maximum as a chain, and
    /// q4_0's m the first weight of the largest magnitude (a later one of the same magnitude,
    /// even of the other sign, does not replace it).
    fn llama_cpp_block(kind: QuantType, w: &[f32; BLOCK], q: &mut [u8]) -> f16 {
        match kind {
            QuantType::Q8_0 => {
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (q, w) in q.iter_mut().zip(w) {
                    *q = ((w * id).round() as i8) as u8;
                }
                f16::from_f32(d)
            }
            QuantType::Q4_0 => {
                let m = w.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = m / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let level = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..BLOCK / 2 {
                    q[j] = level(w[j]) | (level(w[j + BLOCK / 2]) << 4);
                }
                f16::from_f32(d)
            }
        }
    }

    /// Quantizing weights, on this CPU's vector unit and in the plain build, gives llama.cpp's
    /// loops' values and scales bit for bit: on smooth rows, a block of zeros and one of −0, the
    /// largest magnitude twice with both signs (in both orders), weights whose w / d lands on
    /// k + ½ (q8_0 rounds those away from zero), a block whose scale overflows an f16, and NaN
    /// (which a maximum skips).
    #[test]
    fn quantizing_weights_gives_llama_cpps_loops_values() {
        let mut blocks: Vec<[f32; BLOCK]> = sample(BLOCK * 40, 0.7).chunks_exact(BLOCK).map(|b| b.try_into().unwrap()).collect();
        blocks.push([0.0; BLOCK]);
        blocks.push([-0.0; BLOCK]);
        for (first, second) in [(-3.0, 3.0), (3.0, -3.0)] {
            let mut b = [0.5f32; BLOCK];
            (b[5], b[20]) = (first, second);
            blocks.push(b);
        }
        blocks.push(std::array::from_fn(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 })); // d = 1: every k + ½
        blocks.push(std::array::from_fn(|i| if i == 0 { -8.0 } else { (i % 16) as f32 * 0.5 - 4.0 })); // q4_0: d = 1, halves
        blocks.push(std::array::from_fn(|i| (i as f32 + 1.0) * 1e6)); // q8_0's scale beyond an f16
        blocks.push(std::array::from_fn(|i| if i == 7 { f32::NAN } else { i as f32 }));
        for kind in QuantType::ALL {
            let row: Vec<f32> = blocks.iter().flatten().copied().collect();
            let (mut values, mut scales) = (vec![0u8; blocks.len() * kind.block_bytes()], vec![f16::ZERO; blocks.len()]);
            let (mut plain_values, mut plain_scales) = (values.clone(), scales.clone());
            quantize_blocks(kind, &row, &mut values, &mut scales);
            quantize_blocks_reference(kind, &row, &mut plain_values, &mut plain_scales);
            for (b, w) in blocks.iter().enumerate() {
                let mut want = vec![0u8; kind.block_bytes()];
                let d = llama_cpp_block(kind, w, &mut want);
                let got = b * kind.block_bytes()..(b + 1) * kind.block_bytes();
                assert_eq!((&values[got.clone()], scales[b].to_bits()), (&want[..], d.to_bits()), "{kind}, block {b}: vector unit");
                assert_eq!((&plain_values[got], plain_scales[b].to_bits()), (&want[..], d.to_bits()), "{kind}, block {b}: plain");
            }
        }
    }

    /// [`quantize_blocks`] (on the vector unit) and llama.cpp's loops, on one block, bit for bit.
    fn assert_block_quantizes_as_llama_cpp(kind: QuantType, w: &[f32; BLOCK]) -> Result<(), TestCaseError> {
        let (mut got, mut scale) = (vec![0u8; kind.block_bytes()], [f16::ZERO]);
        quantize_blocks(kind, w, &mut got, &mut scale);
        let mut want = vec![0u8; kind.block_bytes()];
        let d = llama_cpp_block(kind, w, &mut want);
        prop_assert_eq!((got, scale[0].to_bits()), (want, d.to_bits()), "{} of {:?}", kind, w);
        Ok(())
    }

    proptest! {
        /// Any 32 bit patterns (NaN, ±∞, subnormals, the huge and the tiny), and ordinary weights
        /// scaled anywhere from subnormal (where 1/d overflows to ∞) to beyond an f16's range.
        #[test]
        fn any_block_quantizes_as_llama_cpps_loops(
            bits in proptest::array::uniform32(any::<u32>()),
            plain in proptest::array::uniform32(-4.0f32..4.0),
            exponent in -140i32..20,
        ) {
            for kind in QuantType::ALL {
                assert_block_quantizes_as_llama_cpp(kind, &bits.map(f32::from_bits))?;
                assert_block_quantizes_as_llama_cpp(kind, &plain.map(|v| v * 2f32.powi(exponent)))?;
            }
        }
    }

    /// The input row's quantization on this CPU's vector unit gives the plain loop's values,
    /// ties included (x·(1/d) landing on k + ½ rounds to even, as `round_ties_even` does): on
    /// rows of several lengths (a padded last block), a zero block, and blocks built so that
    /// many values are exact halves.
    #[test]
    fn quantizing_an_input_row_on_the_vector_unit_gives_the_plain_loops_values() {
        let mut rows: Vec<Vec<f32>> = [37, 100, 1600].iter().map(|&n| sample(n, 1.5)).collect();
        rows.push(vec![0.0; 64]);
        // max 127 (d = 1): every k + ½ is a tie, both signs.
        rows.push((0..96).map(|i| if i % 32 == 0 { 127.0 } else { (i as f32 - 48.0) + 0.5 }).collect());
        for x in rows {
            let mut got = QuantizedRow::default();
            got.quantize(&x);
            let mut want = QuantizedRow { q: vec![0; x.len().div_ceil(BLOCK) * BLOCK], ..Default::default() };
            quantize_row_reference(&x, &mut want.q, &mut want.d, &mut want.sums);
            assert_eq!(got, want, "a row of {} values", x.len());
        }
        let mut ties = QuantizedRow::default();
        ties.quantize(&[127.0, 0.5, 1.5, -0.5, -2.5]);
        assert_eq!(&ties.q[..5], &[127, 0, 2, 0, -2], "halves round to even");
    }

    /// Dequantizing tile by tile gives every weight the bits row by row gives: both formats, a
    /// width with a padded last block (100) and without (288), a partial last group of rows,
    /// and ranges of rows and of columns that start and end inside groups and blocks (columns
    /// start on a block, as prefill's slabs do).
    #[test]
    fn dequantizing_tile_by_tile_is_dequantizing_row_by_row() {
        for (rows, cols) in [(19, 100), (16, 288)] {
            for kind in QuantType::ALL {
                let w = Quantized::quantize_f32(kind, rows, cols, &sample(rows * cols, 0.25)).unwrap();
                for (r, c) in [(0..rows, 0..cols), (3..rows - 2, 32..cols - 5), (9..10, 64..96), (rows - 1..rows, 96..cols)] {
                    let mut got = ndarray::Array2::from_elem((r.len(), c.len()), f32::NAN); // (rows, cols) asked for
                    w.dequantize_into(r.clone(), c.clone(), got.view_mut());
                    for (i, row) in r.clone().enumerate() {
                        let mut want = vec![0f32; c.len()];
                        w.dequantize_row_into(row, c.start, &mut want);
                        let got_bits: Vec<u32> = got.row(i).iter().map(|v| v.to_bits()).collect();
                        let want_bits: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(got_bits, want_bits, "{kind} [{rows}, {cols}], rows {r:?}, columns {c:?}: row {row}");
                    }
                }
            }
        }
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
            let got = dot_reference(&q, 0, &qx);
            assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{kind}: {got} vs {want}");
            let tolerance = if kind == QuantType::Q8_0 { 0.01 } else { 0.1 };
            assert!((got - exact).abs() <= tolerance * exact.abs().max(10.0), "{kind}: {got} vs exact {exact}");
        }
    }
}
