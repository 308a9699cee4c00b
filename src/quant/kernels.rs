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
//! (|q| ≤ 128 and ≤ 127): at most 32 · 128 · 127 = 520,192, so an i32 holds it exactly, in any
//! order the vector unit adds. Only the f32 steps round, and the kernels do those steps as the
//! reference does: the same multiplications, then one addition a block, in block order. What
//! the kernels change is the *schedule*: they handle 8 weight rows at once, and the 8 running
//! sums sit in the 8 f32 lanes of one register, lane r for row r. Each lane sees exactly the
//! sequence of operations the reference makes for its row, so each lane ends with the
//! reference's bits. The tests force every kernel this CPU has and compare bit for bit.
//!
//! **The integer products.** x86 has no instruction that multiplies signed bytes by signed
//! bytes and adds them up, but it has two that take one operand *unsigned*:
//!
//! - `vpmaddubsw` (`_mm256_maddubs_epi16`, AVX2): 32 unsigned bytes times 32 signed bytes,
//!   adjacent pairs of products added into 16 signed 16-bit sums. Then `vpmaddwd`
//!   (`_mm256_madd_epi16`) against a vector of ones adds adjacent 16-bit sums into 8 i32 sums.
//! - `vpdpbusd` (`_mm256_dpbusd_epi32` / `_mm512_dpbusd_epi32`, AVX-512 VNNI or AVX-VNNI):
//!   groups of 4 unsigned-by-signed byte products added straight into i32 lanes: one
//!   instruction for the two above.
//!
//! **The sign trick.** To use them on two signed operands, move w's sign onto x:
//! `w · x = |w| · (sign(w) · x)`. `|w|` is a valid unsigned byte (−128 becomes 128) and
//! `sign(w) · x` a valid signed byte as long as x is not −128, which [`QuantizedRow::quantize`]
//! never produces (its values are in −127..=127). `vpsignb` (`_mm256_sign_epi8(x, w)`) does the
//! second in one instruction (and gives 0 where w is 0, where |w| is 0 too); AVX-512 has no
//! `vpsignb` at 512 bits, so there a mask of w's negative bytes selects `0 − x`. No 16-bit sum
//! of `vpmaddubsw` can saturate: two products are at most 2 · 128 · 127 = 32,512 < 32,767.
//!
//! **q4_0** blocks are unpacked first: the 16 bytes' low nibbles are weights 0..16, the high
//! nibbles weights 16..32. A nibble q in 0..=15 is already an unsigned byte, so the 256-bit
//! kernels need no sign trick for it: `Σ (q − 8) · x = Σ q · x − 8 · Σ x`, the first sum one
//! `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd`) a row, the second once per block of the input for
//! all 8 rows (integers again: exact). The 512-bit kernel subtracts 8 from each nibble and
//! goes on as for q8_0.
//!
//! **Adding up a block.** A block's products end as 8 i32 partial sums (for each of 8 rows);
//! the 8 × 8 partial sums are reduced to one register of 8 totals, lane r row r's total, by
//! horizontal adds and lane shuffles (integers: exact). That register is converted to f32,
//! multiplied by the 8 rows' `dw · dx` and added to the 8 running sums.
//!
//! **Batches.** For several input rows (sequences decoding together) a group of 8 weight rows
//! is taken against a tile of 4 inputs at a time (then 2, then 1): each block of the 8 rows is
//! loaded (and, for q4_0, unpacked) once and multiplied with the 4 inputs' blocks; the next
//! tile of inputs finds the group's weights in the cache (8 rows of the 1.5B's widest matrix,
//! down_proj's 5,504 columns, are 47 KiB in q8_0). So the weights are streamed from memory
//! once for the whole batch, and every input gets exactly the bits it gets alone: its lanes see
//! the same operations whichever tile it is in.

use super::{dots_reference, QuantType, Quantized, QuantizedRow, BLOCK};
use ndarray::ArrayViewMut2;
use std::sync::OnceLock;

/// A way to compute the quantized products: the plain reference or a vector kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`dot_reference`](super::dot_reference) for each pair of rows: portable, slow.
    Reference,
    /// AVX2 (`vpmaddubsw` + `vpmaddwd`), 8 weight rows at once in 256-bit registers.
    Avx2,
    /// AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX-encoded: Intel from Alder Lake, AMD from Zen 5).
    AvxVnni,
    /// AVX-512 VNNI with AVX512VL: `vpdpbusd` on 256-bit registers.
    Avx512Vnni256,
    /// AVX-512 VNNI: `vpdpbusd` on 512-bit registers, two weight rows a register.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 5] = [Kernel::Reference, Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni256, Kernel::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Reference => "reference",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni256 => "avx512-vnni-256",
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
                Kernel::Avx512Vnni256 => avx2 && has!("avx512vnni") && has!("avx512vl"),
                Kernel::Avx512Vnni => avx2 && has!("avx512vnni") && has!("avx512vl") && has!("avx512bw"),
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

    /// The kernel products use on this CPU (detected once). The 256-bit VNNI kernel before the
    /// 512-bit one: on Zen 4, which splits 512-bit work in two halves, the 512-bit kernel
    /// measured no faster (benches/decode_kernels.rs), and on CPUs that slow their clock for
    /// 512-bit work it would cost the rest of the program.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Kernel::Avx512Vnni256, Kernel::AvxVnni, Kernel::Avx2].into_iter().find(|k| k.runs_here()).unwrap_or(Kernel::Reference)
        })
    }
}

/// `out[b][r] = x_b · w_{first + r}` for every input row `xs[b]` and the weight rows
/// `first..first + out.ncols()`, on `kernel` (which must run here: [`Kernel::runs_here`]).
/// Bit for bit [`dot_reference`](super::dot_reference) of each pair, whatever the kernel. out: (B, rows)
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
        // SAFETY (all four): the CPU has the kernel's features (asserted above), and the
        // shapes were checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::dots_avx2(w, xs, first, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { x86::dots_avx_vnni(w, xs, first, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni256 => unsafe { x86::dots_avx512_vnni_256(w, xs, first, &mut out) },
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

    /// Weight rows a kernel handles at once: one f32 lane each in a 256-bit register.
    const GROUP: usize = 8;

    /// Where a group's rows start: the packed values and the scales of rows `rows[r]`.
    struct Group {
        values: [*const u8; GROUP],
        scales: [*const u16; GROUP],
    }

    impl Group {
        /// Rows `first..first + n` (n ≤ 8) of `w`; past the n-th, the last row again (its lanes
        /// are computed and thrown away).
        fn new(w: &Quantized, first: usize, n: usize) -> Group {
            let (blocks, bytes) = (Quantized::blocks_per_row(w.cols()), w.kind().block_bytes());
            let row = |r: usize| first + r.min(n - 1);
            Group {
                values: std::array::from_fn(|r| w.values()[row(r) * blocks * bytes..].as_ptr()),
                scales: std::array::from_fn(|r| w.scales()[row(r) * blocks..].as_ptr().cast::<u16>()),
            }
        }
    }

    /// Row r's q8_0 block b as 32 signed bytes.
    #[inline(always)]
    unsafe fn load_q8_0(row: *const u8, b: usize) -> __m256i {
        unsafe { _mm256_loadu_si256(row.add(b * BLOCK).cast()) }
    }

    /// Row r's q4_0 block b as 32 unsigned bytes q in 0..=15: the 16 low nibbles, then the 16 high ones.
    #[inline(always)]
    unsafe fn load_q4_0_unsigned(row: *const u8, b: usize) -> __m256i {
        unsafe {
            let packed = _mm_loadu_si128(row.add(b * BLOCK / 2).cast()); // (16) bytes
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed); // (32): low nibbles, high nibbles (and junk above)
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }
    }

    /// Row r's q4_0 block b as 32 signed bytes `q − 8`.
    #[inline(always)]
    unsafe fn load_q4_0(row: *const u8, b: usize) -> __m256i {
        unsafe { _mm256_sub_epi8(load_q4_0_unsigned(row, b), _mm256_set1_epi8(8)) }
    }

    /// The sum of the 8 lanes, in every lane (exact).
    #[inline(always)]
    unsafe fn total_in_every_lane(v: __m256i) -> __m256i {
        unsafe {
            let v = _mm256_add_epi32(v, _mm256_permute2x128_si256::<0x01>(v, v)); // lanes i + (i + 4)
            let v = _mm256_add_epi32(v, _mm256_shuffle_epi32::<0b01_00_11_10>(v)); // + the other pair
            _mm256_add_epi32(v, _mm256_shuffle_epi32::<0b10_11_00_01>(v)) // + the neighbour
        }
    }

    /// The 8 rows' scales of block b, in f32 (exact). (8)
    #[inline(always)]
    unsafe fn scales_of(g: &Group, b: usize) -> __m256 {
        unsafe {
            let s = |r: usize| *g.scales[r].add(b) as i16;
            _mm256_cvtph_ps(_mm_setr_epi16(s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7)))
        }
    }

    /// 8 × 8 i32 partial sums (8 rows' vectors) to one vector of 8 totals, lane r row r's. Exact.
    #[inline(always)]
    unsafe fn totals8(p: [__m256i; 8]) -> __m256i {
        unsafe {
            // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
            let (h01, h23) = (_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            let (h45, h67) = (_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
            let h0123 = _mm256_hadd_epi32(h01, h23); // [rows 0..4: lanes 0..4 | rows 0..4: lanes 4..8]
            let h4567 = _mm256_hadd_epi32(h45, h67); // the same for rows 4..8
            let low = _mm256_permute2x128_si256::<0x20>(h0123, h4567); // lanes 0..4 of rows 0..8
            let high = _mm256_permute2x128_si256::<0x31>(h0123, h4567); // lanes 4..8 of rows 0..8
            _mm256_add_epi32(low, high)
        }
    }

    /// `sums += (dw · dx) · isum`, lane by lane: the reference's f32 steps, in its order (a
    /// multiplication, a multiplication, an addition; no fused multiply-add).
    #[inline(always)]
    unsafe fn add_block(sums: __m256, dw: __m256, dx: f32, isum: __m256i) -> __m256 {
        unsafe { _mm256_add_ps(sums, _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(isum))) }
    }

    /// Define a 256-bit kernel `$name` for the CPU features `$features`, whose products of a
    /// block's 32 signed weight bytes and 32 signed input bytes into 8 i32 partial sums are
    /// `$dot32(w, x)`: a group of 8 weight rows against each input row in turn.
    /// Run `$group::<Q4, N>` (a group of 8 weight rows against N inputs) over the weight rows
    /// `first..first + out.ncols()` of `$w`, 8 at a time, with the inputs `$xs` in tiles of 4,
    /// then 2, then 1, writing each input's sums into its row of `$out`.
    macro_rules! each_group {
        ($group:ident, $w:expr, $xs:expr, $first:expr, $out:expr) => {{
            let (w, xs, first, out): (&Quantized, &[QuantizedRow], usize, &mut ArrayViewMut2<f32>) = ($w, $xs, $first, $out);
            let rows = out.ncols();
            let q4 = w.kind() == QuantType::Q4_0;
            for start in (0..rows).step_by(GROUP) {
                let n = (rows - start).min(GROUP);
                let g = Group::new(w, first + start, n);
                let mut b = 0;
                while b < xs.len() {
                    let tile = if b + 4 <= xs.len() { 4 } else if b + 2 <= xs.len() { 2 } else { 1 };
                    let x = |i: usize| &xs[b + i];
                    let sums: [[f32; GROUP]; 4] = match (q4, tile) {
                        (true, 4) => unsafe { $group::<true, 4>(&g, [x(0), x(1), x(2), x(3)]) },
                        (false, 4) => unsafe { $group::<false, 4>(&g, [x(0), x(1), x(2), x(3)]) },
                        (true, 2) => { let [a, b] = unsafe { $group::<true, 2>(&g, [x(0), x(1)]) }; [a, b, a, b] }
                        (false, 2) => { let [a, b] = unsafe { $group::<false, 2>(&g, [x(0), x(1)]) }; [a, b, a, b] }
                        (true, _) => { let [a] = unsafe { $group::<true, 1>(&g, [x(0)]) }; [a; 4] }
                        (false, _) => { let [a] = unsafe { $group::<false, 1>(&g, [x(0)]) }; [a; 4] }
                    };
                    for (i, sums) in sums.iter().enumerate().take(tile) {
                        for (o, &s) in out.slice_mut(ndarray::s![b + i, start..start + n]).iter_mut().zip(sums) {
                            *o = s;
                        }
                    }
                    b += tile;
                }
            }
        }};
    }

    /// Define a 256-bit kernel `$name` for the CPU features `$features`, whose products of a
    /// block's 32 unsigned bytes and 32 signed bytes into 8 i32 partial sums (each of 4
    /// adjacent products) are `$dot32u(u, x)`: a group of 8 weight rows against a tile of N
    /// inputs, each block of the weights loaded (and unpacked) once for the N inputs.
    macro_rules! ymm_kernel {
        ($name:ident, $features:literal, $dot32u:ident) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &Quantized, xs: &[QuantizedRow], first: usize, out: &mut ArrayViewMut2<f32>) {
                #[target_feature(enable = $features)]
                unsafe fn group<const Q4: bool, const N: usize>(g: &Group, xs: [&QuantizedRow; N]) -> [[f32; GROUP]; N] {
                    unsafe {
                        let mut sums = [_mm256_setzero_ps(); N]; // (N, 8) rows' running sums
                        for b in 0..xs[0].blocks() {
                            // q8_0: signed bytes; q4_0: the nibbles, unsigned (q, not q − 8)
                            let load = |r: usize| if Q4 { load_q4_0_unsigned(g.values[r], b) } else { load_q8_0(g.values[r], b) };
                            let w = [load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7)]; // (8 rows, 32)
                            let dw = scales_of(g, b); // (8)
                            for i in 0..N {
                                let qx = _mm256_loadu_si256(xs[i].q.as_ptr().add(b * BLOCK).cast()); // (32)
                                let d = |r: usize| {
                                    // q4_0: Σ q·x here, − 8·Σx below; q8_0: the sign trick
                                    if Q4 { $dot32u(w[r], qx) } else { $dot32u(_mm256_sign_epi8(w[r], w[r]), _mm256_sign_epi8(qx, w[r])) }
                                }; // (8) partial sums of row r
                                let p = [d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7)]; // (8 rows, 8)
                                let mut isum = totals8(p); // (8)
                                if Q4 {
                                    isum = _mm256_sub_epi32(isum, total_in_every_lane($dot32u(_mm256_set1_epi8(8), qx)));
                                }
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

    /// Σ u·x over each 4 bytes (u unsigned, x signed), AVX2: `vpmaddubsw` (pairs into i16),
    /// `vpmaddwd` against ones (pairs of those into i32).
    #[inline(always)]
    unsafe fn dot32u_avx2(u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)) } // (16) i16 → (8) i32
    }

    /// Σ u·x over each 4 bytes, AVX-512 VNNI on 256 bits: one `vpdpbusd`.
    #[inline(always)]
    unsafe fn dot32u_vnni(u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x) }
    }

    /// Σ u·x over each 4 bytes, AVX-VNNI: one `vpdpbusd`, VEX-encoded.
    #[inline(always)]
    unsafe fn dot32u_avx_vnni(u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, x) }
    }

    ymm_kernel!(dots_avx2, "avx2,f16c", dot32u_avx2);
    ymm_kernel!(dots_avx_vnni, "avx2,f16c,avxvnni", dot32u_avx_vnni);
    ymm_kernel!(dots_avx512_vnni_256, "avx2,f16c,avx512vnni,avx512vl", dot32u_vnni);

    /// The 512-bit kernel: rows r and r + 4 share a register (the input block in both halves),
    /// so a block of 8 rows takes 4 `vpdpbusd`.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dots_avx512_vnni(w: &Quantized, xs: &[QuantizedRow], first: usize, out: &mut ArrayViewMut2<f32>) {
        /// Rows r and r + 4's products with the input (in both halves): [row r's 8 sums | row r + 4's].
        #[inline(always)]
        unsafe fn dot_pair(w: __m512i, x: __m512i) -> __m512i {
            unsafe {
                let negative = _mm512_movepi8_mask(w); // w < 0
                let x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x); // sign(w) · x
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), x)
            }
        }
        /// [rows 0|4, 1|5, 2|6, 3|7] partial sums to the 8 totals (exact).
        #[inline(always)]
        unsafe fn totals(z: [__m512i; 4]) -> __m256i {
            unsafe {
                // per 128 bits: [z0 lanes 0+2, z1 0+2, z0 1+3, z1 1+3], then with z2, z3 ...
                let t = _mm512_add_epi32(_mm512_unpacklo_epi32(z[0], z[1]), _mm512_unpackhi_epi32(z[0], z[1]));
                let u = _mm512_add_epi32(_mm512_unpacklo_epi32(z[2], z[3]), _mm512_unpackhi_epi32(z[2], z[3]));
                // ... per 128 bits the 4 rows' sums of its 4 lanes: [rows 0..4 | rows 0..4 | rows 4..8 | rows 4..8]
                let v = _mm512_add_epi32(_mm512_unpacklo_epi64(t, u), _mm512_unpackhi_epi64(t, u));
                let s = _mm512_add_epi32(v, _mm512_shuffle_i64x2::<0xB1>(v, v)); // 128-bit parts swapped in pairs
                _mm512_castsi512_si256(_mm512_shuffle_i64x2::<0x08>(s, s)) // parts 0 and 2: rows 0..8
            }
        }
        #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn group<const Q4: bool, const N: usize>(g: &Group, xs: [&QuantizedRow; N]) -> [[f32; GROUP]; N] {
            unsafe {
                let mut sums = [_mm256_setzero_ps(); N]; // (N, 8) rows' running sums
                for b in 0..xs[0].blocks() {
                    let load = |r: usize| if Q4 { load_q4_0(g.values[r], b) } else { load_q8_0(g.values[r], b) };
                    let pair = |r: usize| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(r)), load(r + 4)); // (2, 32)
                    let w = [pair(0), pair(1), pair(2), pair(3)]; // (4 pairs of rows, 2, 32)
                    let dw = scales_of(g, b); // (8)
                    for i in 0..N {
                        let qx = _mm512_broadcast_i64x4(_mm256_loadu_si256(xs[i].q.as_ptr().add(b * BLOCK).cast())); // (2, 32)
                        let z = [dot_pair(w[0], qx), dot_pair(w[1], qx), dot_pair(w[2], qx), dot_pair(w[3], qx)]; // (4, 2, 8)
                        sums[i] = add_block(sums[i], dw, xs[i].d[b], totals(z));
                    }
                }
                std::mem::transmute_copy::<[__m256; N], [[f32; GROUP]; N]>(&sums)
            }
        }
        each_group!(group, w, xs, first, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot_reference;
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
                                    let (values, scales) = w.row(first + r);
                                    let want = dot_reference(kind, &qx[b], values, scales);
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
    /// but from_parts accepts), 127, inputs of ±127, large scales; no 16-bit sum saturates.
    #[test]
    fn every_kernel_here_is_exact_at_the_extremes() {
        let cols = 64;
        let values: Vec<u8> = (0..2 * cols).map(|i| if i % 3 == 0 { 0x80 } else if i % 3 == 1 { 127 } else { 0x81 }).collect(); // −128, 127, −127
        let scales = vec![half::f16::from_f32(3.5e4); 8];
        let w = Quantized::from_parts(QuantType::Q8_0, 2, cols, values.clone().into(), scales[..4].to_vec().into()).unwrap();
        let w4 = Quantized::from_parts(QuantType::Q4_0, 4, cols, values.into(), scales.into()).unwrap(); // nibbles 0, 15, 1, 8
        let x: Vec<f32> = (0..cols).map(|i| if i % 2 == 0 { 5.0 } else { -5.0 }).collect();
        let mut qx = QuantizedRow::default();
        qx.quantize(&x);
        assert!(qx.q.iter().all(|&q| q.abs() == 127));
        for w in [w, w4] {
            for kernel in Kernel::available() {
                let mut got = Array2::zeros((1, w.rows()));
                dots_with(kernel, &w, std::slice::from_ref(&qx), 0, got.view_mut());
                for r in 0..w.rows() {
                    let (values, scales) = w.row(r);
                    let want = dot_reference(w.kind(), &qx, values, scales);
                    assert_eq!(got[[0, r]].to_bits(), want.to_bits(), "{} {} row {r}", kernel.name(), w.kind());
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
