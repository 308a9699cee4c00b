//! The vector kernels of the quantized products, chosen at run time by what the CPU has.
//!
//! Every kernel computes, for a weight row `w` and an input row `x` (both in blocks of 32 int8
//! values with one scale a block), exactly what [`dot_reference`](super::dot_reference) computes:
//!
//! ```text
//! sum = 0
//! for each block b, in order:   sum += (dw[b] · dx[b]) · Σ_i qw[b][i] · qx[b][i]     (f32)
//! ```
//!
//! **Why the bits are the same.** The inner sum is over 32 products of two small integers
//! (|q| ≤ 128 and ≤ 127): at most 32 · 255 · 127 ≈ 10⁶ even with the offsets below, so an i32
//! holds it exactly, in any order the vector unit adds. Only the f32 steps round, and the
//! kernels do those steps as the reference does: the same multiplications, then one addition a
//! block, in block order. What the kernels change is the *schedule*: they take the 8 weight rows
//! of a tile of [`Quantized`] at once, and the 8 running sums sit in the 8 f32 lanes of one
//! register, lane r for row r. Each lane sees exactly the sequence of operations the reference
//! makes for its row, so each lane ends with the reference's bits. The tests force every kernel
//! this CPU has and compare bit for bit.
//!
//! **The integer products.** x86 has no instruction that multiplies signed bytes by signed
//! bytes and adds them up, but it has two that take one operand *unsigned*:
//!
//! - `vpmaddubsw` (`_mm256_maddubs_epi16`, AVX2): 32 unsigned bytes times 32 signed bytes,
//!   adjacent pairs of products added into 16 signed 16-bit sums. Then `vpmaddwd`
//!   (`_mm256_madd_epi16`) against a vector of ones adds adjacent 16-bit sums into 8 i32 sums:
//!   each 32-bit lane gets the sum of its 4 byte products.
//! - `vpdpbusd` (`_mm256_dpbusd_epi32`, AVX-512 VNNI; `_mm256_dpbusd_avx_epi32`, AVX-VNNI): the
//!   same 4 products added straight into an i32 lane: one instruction for the two above.
//!
//! A tile's values are interleaved 4 bytes a row ([`Quantized`]), so a 32-byte load holds bytes
//! 4k..4k+4 of each of the 8 rows, lane r row r's. Against the input's bytes 4k..4k+4 repeated
//! in every lane (one `vpbroadcastd`), either instruction leaves row r's 4 products summed in
//! lane r. 8 such loads (4 for q4_0, two halves each) cover a block, and their sums, added lane
//! by lane, are the 8 rows' block sums, already in place for the f32 step.
//!
//! **Signed weights.** Both instructions want the weights unsigned. Two ways, both exact:
//!
//! - *Offset* (q4_0 everywhere, q8_0 with `vpdpbusd`): multiply `u = q + c` (a q4_0 nibble is
//!   already `q − 8 + 8`; a q8_0 byte with its top bit flipped is `q + 128`) and subtract
//!   `c · Σ qx`, the input block's sum ([`QuantizedRow::sums`], computed once per input):
//!   `Σ (q + c) · x − c · Σ x = Σ q · x`.
//! - *Sign trick* (q8_0 with `vpmaddubsw`, whose 16-bit pair sums would overflow with `u` up
//!   to 255: 2 · 255 · 127 > 32,767): `w · x = |w| · (sign(w) · x)`. `|w|` is a valid unsigned
//!   byte (−128 becomes 128), `sign(w) · x` a valid signed byte as long as x is not −128, which
//!   [`QuantizedRow::quantize`] never produces; `vpsignb` does it in one instruction. Two
//!   products are then at most 2 · 128 · 127 = 32,512: no 16-bit sum saturates.
//!
//! **q4_0's sums in 16 bits (AVX2).** With `vpmaddubsw` a product costs two multiplying
//! instructions (`vpmaddubsw`, then `vpmaddwd` to widen), and on CPUs with one vector
//! multiplier (Zen 2) those are what limits the kernel. q4_0's weights are small enough to
//! skip most of the widening: a 16-bit lane of `vpmaddubsw` holds two products of a weight
//! `u = q + 8 ≤ 15` and an input `|x| ≤ 127`, at most 2 · 15 · 127 = 3,810 in magnitude, so
//! the 8 such results of one block (4 loads, low and high nibbles) add up to at most 30,480
//! and fit 16 bits exactly. They are added in 16 bits and widened once a block: 9 multiplying
//! instructions a block where there were 16. (q8_0's sign-trick pairs reach 32,512: they are
//! widened one at a time.)
//!
//! **Prefetching (AVX2).** The weights are one stream, read in order, and the CPU's own
//! prefetcher fetches ahead of it; but where the products are slow to compute (AVX2 on Zen 2:
//! about 27 GB/s for q4_0 with the weights in cache, against 12–14 GB/s a thread from memory)
//! the two did not overlap well: q4_0 streamed 17 GB/s on 2 threads where bf16 streams 25. The
//! AVX2 kernel asks for each tile [`PREFETCH_AVX2`] bytes ahead (every 64-byte line of it):
//! q4_0's products then stream 22–27 GB/s, q8_0's 22–28 (from 21–27). It asks for them as
//! non-temporal lines (`prefetchnta`), through `simd::prefetch` as the bf16 products do: each
//! weight is read once a step, and keeping it in the last-level cache would only push out what is
//! read again soon, above all the keys and values a layer shares with the next one. On the Zen 2 that
//! made a decode step at context 1024 about 5 % faster with q8_0 (72.6–74.6 → 68.5–70.7 ms over
//! three alternating rounds) and with q4_0 (46.3–48.1 → 44.3–45.2 ms), the time going out of
//! decode attention. The VNNI kernels do not prefetch: they were measured (on Zen 4) without
//! it, and not yet with it.
//!
//! **Batches.** For several input rows (sequences decoding together) a tile is taken against up
//! to 4 inputs at a time (then 2, then 1): each 32-byte load of the weights (and for q4_0 its
//! unpacking) serves the 4 inputs. A group of 8 rows is read from memory by the first tile of
//! inputs and from the cache by the next ones, so the weights are streamed once for the whole
//! batch, and every input gets exactly the bits it gets alone: its lanes see the same operations
//! whichever tile of inputs it is in.
//!
//! **Why 256-bit registers only.** On Zen 4 (this project's machine), which runs a 512-bit
//! instruction as two 256-bit halves, a 512-bit kernel measured no faster, and on CPUs that slow
//! their clock for 512-bit work it would cost the rest of the program; decoding is bound by
//! memory long before these kernels are. AVX-512 VNNI is used on 256-bit registers (AVX512VL).

use super::{dots_reference, QuantType, Quantized, QuantizedRow, BLOCK, GROUP, TILE_SCALE_BYTES};
use crate::kernels::simd::prefetch;
use ndarray::ArrayViewMut2;
use std::sync::OnceLock;

/// How far ahead of the tile it computes the AVX2 kernel asks for the weights, in bytes (about 7
/// q4_0 tiles, 4 q8_0 tiles). On Zen 2, per matrix on 2 threads, 1,024 was faster than 512,
/// 2,048 and 4,096 (`cargo bench --bench decode_kernels -- quantized`).
pub const PREFETCH_AVX2: usize = 1024;

/// A way to compute the quantized products: the plain reference or a vector kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`dot_reference`](super::dot_reference) for each pair of rows: portable, slow.
    Reference,
    /// AVX2: `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-VNNI: `vpdpbusd`, VEX-encoded (Intel from Alder Lake, AMD from Zen 5).
    AvxVnni,
    /// AVX-512 VNNI with AVX512VL: `vpdpbusd` on 256-bit registers.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 4] = [Kernel::Reference, Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Reference => "reference",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("f16c");
            match self {
                Kernel::Reference => true,
                Kernel::Avx2 => avx2,
                Kernel::AvxVnni => avx2 && has!("avxvnni"),
                Kernel::Avx512Vnni => avx2 && has!("avx512vnni") && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Reference
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.runs_here()).collect()
    }

    /// The kernel products use on this CPU (detected once): the last one [`Kernel::available`] lists.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().expect("the reference always runs"))
    }
}

/// `out[b][r] = x_b · w_{first + r}` for every input row `xs[b]` and the weight rows
/// `first..first + out.ncols()`, on `kernel` (which must run here: [`Kernel::runs_here`]).
/// Bit for bit [`dot_reference`](super::dot_reference) of each pair, whatever the kernel. A
/// block of rows that starts and ends on whole groups of 8 ([`GROUP`]) is fastest: the vector
/// kernels compute whole groups and keep the rows asked for. out: (B, rows)
pub fn dots_with(kernel: Kernel, w: &Quantized, xs: &[QuantizedRow], first: usize, mut out: ArrayViewMut2<f32>) {
    let (batch, rows) = out.dim();
    assert!(kernel.runs_here(), "the {} kernel does not run on this CPU", kernel.name());
    assert!(xs.len() == batch && first + rows <= w.rows(), "{batch} inputs, rows {first}..{} of {}", first + rows, w.rows());
    assert!(xs.iter().all(|x| x.blocks() == Quantized::blocks_per_row(w.cols())), "an input of {} columns", w.cols());
    if rows == 0 {
        return;
    }
    match kernel {
        Kernel::Reference => {
            for (x, mut out) in xs.iter().zip(out.rows_mut()) {
                dots_reference(w, x, first, out.as_slice_mut().expect("a row of the output is contiguous"));
            }
        }
        // SAFETY (all three): the CPU has the kernel's features (asserted above), and the
        // shapes were checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::dots_avx2(w, xs, first, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { x86::dots_avx_vnni(w, xs, first, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { x86::dots_avx512_vnni(w, xs, first, &mut out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the reference runs here"),
    }
}

/// [`dots_with`] on [`Kernel::best`]. out: (B, rows)
pub fn dots(w: &Quantized, xs: &[QuantizedRow], first: usize, out: ArrayViewMut2<f32>) {
    dots_with(Kernel::best(), w, xs, first, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The input's 4 bytes at `at`, repeated in every 32-bit lane. (8 lanes, 4 bytes)
    #[inline(always)]
    unsafe fn broadcast4(x: &QuantizedRow, at: usize) -> __m256i {
        debug_assert!(at + 4 <= x.q.len());
        unsafe { _mm256_set1_epi32(x.q.as_ptr().add(at).cast::<i32>().read_unaligned()) }
    }

    /// `sums += (dw · dx) · isum`, lane by lane: the reference's f32 steps, in its order (a
    /// multiplication, a multiplication, an addition; no fused multiply-add).
    #[inline(always)]
    unsafe fn add_block(sums: __m256, dw: __m256, dx: f32, isum: __m256i) -> __m256 {
        unsafe { _mm256_add_ps(sums, _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(isum))) }
    }

    /// Run `$tile::<Q4, N>` (one group's tiles against N inputs) over the groups that hold the
    /// weight rows `first..first + out.ncols()` of `$w`, with the inputs `$xs` in fours, then
    /// twos, then one, writing each input's sums of the rows asked for into its row of `$out`.
    macro_rules! each_group {
        ($tile:ident, $w:expr, $xs:expr, $first:expr, $out:expr) => {{
            let (w, xs, first, out): (&Quantized, &[QuantizedRow], usize, &mut ArrayViewMut2<f32>) = ($w, $xs, $first, $out);
            let end = first + out.ncols();
            let q4 = w.kind() == QuantType::Q4_0;
            for g in first / GROUP..end.div_ceil(GROUP) {
                let tiles = w.group(g); // (blocks, tile_bytes)
                let lanes = first.max(g * GROUP) - g * GROUP..end.min((g + 1) * GROUP) - g * GROUP; // the rows asked for
                let mut b = 0;
                while b < xs.len() {
                    let n = if b + 4 <= xs.len() { 4 } else if b + 2 <= xs.len() { 2 } else { 1 };
                    let x = |i: usize| &xs[b + i];
                    let sums: [[f32; GROUP]; 4] = match (q4, n) {
                        (true, 4) => unsafe { $tile::<true, 4>(tiles, [x(0), x(1), x(2), x(3)]) },
                        (false, 4) => unsafe { $tile::<false, 4>(tiles, [x(0), x(1), x(2), x(3)]) },
                        (true, 2) => { let [a, c] = unsafe { $tile::<true, 2>(tiles, [x(0), x(1)]) }; [a, c, a, c] }
                        (false, 2) => { let [a, c] = unsafe { $tile::<false, 2>(tiles, [x(0), x(1)]) }; [a, c, a, c] }
                        (true, _) => { let [a] = unsafe { $tile::<true, 1>(tiles, [x(0)]) }; [a; 4] }
                        (false, _) => { let [a] = unsafe { $tile::<false, 1>(tiles, [x(0)]) }; [a; 4] }
                    };
                    for (i, sums) in sums.iter().enumerate().take(n) {
                        for lane in lanes.clone() {
                            out[[b + i, g * GROUP + lane - first]] = sums[lane];
                        }
                    }
                    b += n;
                }
            }
        }};
    }

    /// Define a kernel `$name` for the CPU features `$features`, given
    /// - `$dot(acc, u, x)`: `acc` plus, in each 32-bit lane, the sum of its 4 products of
    ///   unsigned bytes `u` and signed bytes `x`;
    /// - `$q8(q, x) -> (u, x′)`: the operands for q8_0's signed weight bytes `q`, and
    ///   `$q8_offset` the c with `u · x′ = (q + c) · x` (0 for the sign trick);
    /// - `$q4_dot(acc, u, x)` and `$q4_sum(acc0, acc1)`: how q4_0 adds a block's products into
    ///   its two chains of partial sums, and the block's sum (8 i32 lanes) from the two chains
    ///   (`$dot` and an addition, or 16-bit sums widened once a block);
    /// - `$prefetch`: how many bytes ahead to ask for the weights (0: not at all).
    ///
    /// Its inner function computes one group of 8 weight rows against a tile of N inputs.
    macro_rules! kernel {
        ($name:ident, $features:literal, $dot:ident, $q8:ident, $q8_offset:literal, $q4_dot:ident, $q4_sum:ident, $prefetch:expr) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &Quantized, xs: &[QuantizedRow], first: usize, out: &mut ArrayViewMut2<f32>) {
                #[target_feature(enable = $features)]
                unsafe fn group<const Q4: bool, const N: usize>(tiles: &[u8], xs: [&QuantizedRow; N]) -> [[f32; GROUP]; N] {
                    unsafe {
                        let (kind, offset) = if Q4 { (QuantType::Q4_0, 8) } else { (QuantType::Q8_0, $q8_offset) };
                        let mut sums = [_mm256_setzero_ps(); N]; // (N, 8 rows) running sums
                        for (b, tile) in tiles.chunks_exact(Quantized::tile_bytes(kind)).enumerate() {
                            if $prefetch > 0 {
                                // A hint: the address may lie past the weights (it is never read).
                                for line in (0..Quantized::tile_bytes(kind)).step_by(64) {
                                    prefetch(tile.as_ptr().wrapping_add($prefetch + line));
                                }
                            }
                            let dw = _mm256_cvtph_ps(_mm_loadu_si128(tile.as_ptr().cast())); // (8) the rows' scales
                            let values = tile[TILE_SCALE_BYTES..].as_ptr(); // (chunks, 8 rows, 4 bytes)
                            let at = b * BLOCK; // the block's first input byte
                            // Two chains of sums an input, so that one input's products do not
                            // wait on each other's additions; added at the end (integers: exact).
                            let mut acc = [[_mm256_setzero_si256(); 2]; N]; // (N, 2, 8)
                            if Q4 {
                                for k in 0..4 {
                                    let packed = _mm256_loadu_si256(values.add(32 * k).cast()); // (8, 4): weights 4k.. low, 16 + 4k.. high
                                    let low = _mm256_and_si256(packed, _mm256_set1_epi8(0x0F)); // (8, 4) q + 8 of weights 4k..4k+4
                                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), _mm256_set1_epi8(0x0F)); // of 16 + 4k..
                                    for i in 0..N {
                                        acc[i][0] = $q4_dot(acc[i][0], low, broadcast4(xs[i], at + 4 * k));
                                        acc[i][1] = $q4_dot(acc[i][1], high, broadcast4(xs[i], at + BLOCK / 2 + 4 * k));
                                    }
                                }
                            } else {
                                for k in 0..BLOCK / 4 {
                                    let q = _mm256_loadu_si256(values.add(32 * k).cast()); // (8, 4): weights 4k..4k+4
                                    for i in 0..N {
                                        let (u, x) = $q8(q, broadcast4(xs[i], at + 4 * k));
                                        acc[i][k % 2] = $dot(acc[i][k % 2], u, x);
                                    }
                                }
                            }
                            for i in 0..N {
                                let isum = if Q4 { $q4_sum(acc[i][0], acc[i][1]) } else { sum32(acc[i][0], acc[i][1]) }; // (8) Σ (q + c)·x
                                let isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(offset * xs[i].sums[b])); // (8) Σ q·x
                                sums[i] = add_block(sums[i], dw, xs[i].d[b], isum);
                            }
                        }
                        std::mem::transmute_copy::<[__m256; N], [[f32; GROUP]; N]>(&sums)
                    }
                }
                each_group!(group, w, xs, first, out)
            }
        };
    }

    /// `acc` + Σ u·x over each 4 bytes, AVX2: `vpmaddubsw` (pairs into i16), `vpmaddwd` against
    /// ones (pairs of those into i32). u·x pairs must fit an i16: u ≤ 128 with |x| ≤ 127.
    #[inline(always)]
    unsafe fn dot_avx2(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))) }
    }

    /// q4_0 on AVX2: `acc` + `vpmaddubsw(u, x)`, in 16-bit lanes: each lane adds the sum of two
    /// products, |u·x + u′·x′| ≤ 2 · 15 · 127; a block adds 8 of them into its two chains.
    #[inline(always)]
    unsafe fn dot16_avx2(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, x)) }
    }

    /// q4_0 on AVX2: a block's sum from its two chains of 16-bit sums (added in 16 bits: at most
    /// 8 · 2 · 15 · 127 = 30,480 in magnitude, exact), widened into 8 i32 lanes by `vpmaddwd`
    /// against ones.
    #[inline(always)]
    unsafe fn sum16_avx2(acc0: __m256i, acc1: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_add_epi16(acc0, acc1), _mm256_set1_epi16(1)) }
    }

    /// A block's sum from two chains of i32 sums (q8_0 everywhere, q4_0 with `vpdpbusd`).
    #[inline(always)]
    unsafe fn sum32(acc0: __m256i, acc1: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc0, acc1) }
    }

    /// `acc` + Σ u·x over each 4 bytes, AVX-512 VNNI on 256 bits: one `vpdpbusd`.
    #[inline(always)]
    unsafe fn dot_vnni(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(acc, u, x) }
    }

    /// `acc` + Σ u·x over each 4 bytes, AVX-VNNI: one `vpdpbusd`, VEX-encoded.
    #[inline(always)]
    unsafe fn dot_avx_vnni(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, x) }
    }

    /// The sign trick: (|q|, sign(q)·x), offset 0.
    #[inline(always)]
    unsafe fn q8_sign(q: __m256i, x: __m256i) -> (__m256i, __m256i) {
        unsafe { (_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)) }
    }

    /// The offset: (q + 128, x), q's top bit flipped.
    #[inline(always)]
    unsafe fn q8_offset(q: __m256i, x: __m256i) -> (__m256i, __m256i) {
        unsafe { (_mm256_xor_si256(q, _mm256_set1_epi8(i8::MIN)), x) }
    }

    kernel!(dots_avx2, "avx2,f16c", dot_avx2, q8_sign, 0, dot16_avx2, sum16_avx2, PREFETCH_AVX2);
    kernel!(dots_avx_vnni, "avx2,f16c,avxvnni", dot_avx_vnni, q8_offset, 128, dot_avx_vnni, sum32, 0);
    kernel!(dots_avx512_vnni, "avx2,f16c,avx512vnni,avx512vl", dot_vnni, q8_offset, 128, dot_vnni, sum32, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::dot_reference;
    use ndarray::Array2;

    fn sample(n: usize, salt: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 0.37 + salt).sin() * 3.0) * (1.0 + (i % 7) as f32)).collect()
    }

    /// Every kernel this CPU has, on both formats, on widths with a padded last block (37, 100)
    /// and without (288), weight rows that leave a partial group of 8 and a block of rows that
    /// does not start at row 0, batches of 1 to 7 (every way to tile the inputs): the reference's bits, for every pair.
    #[test]
    fn every_kernel_here_gives_the_reference_bits() {
        let kernels = Kernel::available();
        println!("kernels on this CPU: {:?}", kernels.iter().map(|k| k.name()).collect::<Vec<_>>());
        for (rows, cols) in [(19, 37), (67, 100), (8, 288), (3, 1600)] {
            let x: Vec<Vec<f32>> = (0..7).map(|b| sample(cols, 2.0 + b as f32)).collect();
            let qx: Vec<QuantizedRow> = x.iter().map(|x| { let mut q = QuantizedRow::default(); q.quantize(x); q }).collect();
            for kind in QuantType::ALL {
                let w = Quantized::quantize_f32(kind, rows, cols, &sample(rows * cols, 0.5)).unwrap();
                for (first, n) in [(0, rows), (1, rows - 1), (rows - 1, 1)] {
                    for batch in [1, 2, 3, 7] { // tiles of 4 inputs, then 2, then 1
                        for &kernel in &kernels {
                            let mut got = Array2::from_elem((batch, n), f32::NAN); // (B, n)
                            dots_with(kernel, &w, &qx[..batch], first, got.view_mut());
                            for b in 0..batch {
                                for r in 0..n {
                                    let want = dot_reference(&w, first + r, &qx[b]);
                                    let case = format!("{} {kind} {rows}×{cols}, rows {first}.., batch {batch}: input {b}, row {}", kernel.name(), first + r);
                                    assert_eq!(got[[b, r]].to_bits(), want.to_bits(), "{case}: {} vs {want}", got[[b, r]]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The extremes of the formats: weights of −128 (a stored q8_0 byte quantize never makes
    /// but from_parts accepts), 127, inputs of ±127, large scales; no 16-bit sum saturates or
    /// wraps, not even q4_0's block of 16-bit sums at its largest (every nibble 15, every input
    /// 127 or every input −127: ±30,480 a lane).
    #[test]
    fn every_kernel_here_is_exact_at_the_extremes() {
        let cols = 64;
        let values: Vec<u8> = (0..2 * cols).map(|i| if i % 3 == 0 { 0x80 } else if i % 3 == 1 { 127 } else { 0x81 }).collect(); // −128, 127, −127
        let scales = vec![half::f16::from_f32(3.5e4); 8];
        let w = Quantized::from_parts(QuantType::Q8_0, 2, cols, &values, &scales[..4]).unwrap();
        let w4 = Quantized::from_parts(QuantType::Q4_0, 4, cols, &values, &scales).unwrap(); // nibbles 0, 15, 1, 8
        let w4_max = Quantized::from_parts(QuantType::Q4_0, 4, cols, &vec![0xFF; 2 * cols], &scales).unwrap(); // every nibble 15
        for x in [
            (0..cols).map(|i| if i % 2 == 0 { 5.0 } else { -5.0 }).collect::<Vec<f32>>(),
            vec![5.0; cols],
            vec![-5.0; cols],
        ] {
            let mut qx = QuantizedRow::default();
            qx.quantize(&x);
            assert!(qx.q.iter().all(|&q| q.abs() == 127));
            for w in [&w, &w4, &w4_max] {
                for kernel in Kernel::available() {
                    let mut got = Array2::zeros((1, w.rows()));
                    dots_with(kernel, w, std::slice::from_ref(&qx), 0, got.view_mut());
                    for r in 0..w.rows() {
                        let want = dot_reference(w, r, &qx);
                        assert_eq!(got[[0, r]].to_bits(), want.to_bits(), "{} {} row {r}, input {:?}..", kernel.name(), w.kind(), &x[..2]);
                    }
                }
            }
        }
    }

    #[test]
    fn the_best_kernel_runs_here_and_the_reference_always_does() {
        assert!(Kernel::best().runs_here());
        assert_eq!(Kernel::available()[0], Kernel::Reference);
    }
}
