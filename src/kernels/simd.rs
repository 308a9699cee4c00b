//! The inner loops that decoding spends its time in, written so the compiler vectorises them,
//! and compiled for the widest vector unit the CPU has.
//!
//! A portable build targets baseline x86-64 (SSE2: 4 f32 lanes). `best_simd!` compiles one
//! plain Rust function twice more, for AVX-512 (16 lanes) and AVX2 (8 lanes), and picks at run
//! time. The source, and so the order of every addition, is the same in all three: the results
//! are bit-identical (tested), only the speed differs. Nothing here reassociates sums. The bf16
//! dot products accumulate with `f32::mul_add` (a fused multiply-add, one rounding), the one-row
//! product and the batched tiles alike; the AVX-512 and AVX2 builds are chosen only where the
//! CPU has FMA (every x86-64 CPU with AVX2 in practice), and the baseline build computes the same
//! fused result in software (slowly).

use half::bf16;

/// Define `$vis fn $name(args) -> ret` that runs `$body` (an `#[inline(always)]` function with
/// the same arguments) compiled for AVX-512 or AVX2 (each with FMA) when the CPU has them, else
/// as built.
macro_rules! best_simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use best_simd;

/// `[f(0), f(1), …, f(N − 1)]`, for a kernel's small arrays (of slices, of lanes), by a loop
/// inlined wherever it is used. `std::array::from_fn` is not always inlined: once the compiler
/// left it out of line in the row-wise product's tile kernel, which then widened the weights by
/// a function call per chunk and ran 5–40 % slower.
#[inline(always)]
pub fn array_of<T: Copy + Default, const N: usize>(f: impl Fn(usize) -> T) -> [T; N] {
    let mut array = [T::default(); N];
    for (i, a) in array.iter_mut().enumerate() {
        *a = f(i);
    }
    array
}

/// Σ a·b with 16 independent partial sums (one AVX-512 vector, two AVX2, four SSE), so the
/// additions need not wait for each other.
#[inline(always)]
pub fn dot_reference(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16.remainder().iter().zip(b16.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a16.zip(b16) {
        for k in 0..16 {
            acc[k] += ca[k] * cb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// bf16 is the upper half of an f32: widening is a shift, exact for every value.
#[inline(always)]
pub fn bf16_to_f32(w: bf16) -> f32 {
    f32::from_bits((w.to_bits() as u32) << 16)
}

/// [`dot_reference`] with the second operand in bf16, widened on the fly (no copy of the row); 32
/// partial sums, each term added by a fused multiply-add, and the weights 1 KiB ahead requested
/// early, since this loop streams the weights and must keep up with memory.
#[inline(always)]
pub fn dot_bf16_reference(a: &[f32], b: &[bf16]) -> f32 {
    let whole = a.len() / 32 * 32;
    finish_dot_bf16(sum_lanes([&dot_bf16_lanes(a, b)])[0], &a[whole..], &b[whole..])
}

/// The 32 partial sums of [`dot_bf16_reference`] over the whole chunks of 32 columns.
#[inline(always)]
fn dot_bf16_lanes(a: &[f32], b: &[bf16]) -> Lanes {
    debug_assert_eq!(a.len(), b.len());
    let mut acc: Lanes = [0f32; 32];
    for (ca, cb) in a.chunks_exact(32).zip(b.chunks_exact(32)) {
        prefetch(cb.as_ptr().wrapping_add(PREFETCH_AHEAD));
        for k in 0..32 {
            acc[k] = ca[k].mul_add(bf16_to_f32(cb[k]), acc[k]);
        }
    }
    acc
}

/// `out[r]` = [`dot_bf16_reference`]`(x, w_r)` for each row r of `w` (`out.len()` rows of
/// `x.len()` columns), bit for bit, but with the lane sums of 8 rows added together
/// ([`sum_lanes`]), so that their chains of 32 dependent additions overlap. On short rows those
/// chains, not the weights, set the pace: dt_proj's 100 columns ran at a third of the memory speed.
#[inline(always)]
pub fn dots_bf16_reference(x: &[f32], w: &[bf16], out: &mut [f32]) {
    let (cols, whole) = (x.len(), x.len() / 32 * 32);
    debug_assert_eq!(w.len(), out.len() * cols);
    for (eight, out) in out.chunks_mut(8).enumerate() {
        let w_row = |r: usize| &w[(eight * 8 + r) * cols..(eight * 8 + r + 1) * cols]; // (cols)
        let mut acc = [[0f32; 32]; 8]; // rows past the last stay 0 and are not read
        for (r, acc) in acc.iter_mut().enumerate().take(out.len()) {
            *acc = dot_bf16_lanes(x, w_row(r));
        }
        let sums = sum_lanes(acc.each_ref());
        for (r, (out, sum)) in out.iter_mut().zip(sums).enumerate() {
            *out = finish_dot_bf16(sum, &x[whole..], &w_row(r)[whole..]);
        }
    }
}

/// The 32 partial sums of [`dot_bf16_reference`]: lane k sums the products of the columns ≡ k (mod 32).
pub type Lanes = [f32; 32];

/// [`dot_bf16_reference`]'s last step: its partial sums added in lane order ([`sum_lanes`]), then the
/// columns past the last chunk of 32 (`x_tail`, `w_tail`) in column order.
#[inline(always)]
pub fn finish_dot_bf16(lane_sum: f32, x_tail: &[f32], w_tail: &[bf16]) -> f32 {
    let tail: f32 = x_tail.iter().zip(w_tail).map(|(x, y)| x * bf16_to_f32(*y)).sum();
    lane_sum + tail
}

/// `acc[j].iter().sum()` for N sets of partial sums: each a chain of 32 dependent additions in
/// lane order, from −0.0 as `Iterator::sum` starts, interleaved so that N chains proceed at once.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane k of every set, then lane k + 1: the order is the point
pub fn sum_lanes<const N: usize>(acc: [&Lanes; N]) -> [f32; N] {
    let mut sums = [-0.0f32; N];
    for k in 0..32 {
        for j in 0..N {
            sums[j] += acc[j][k];
        }
    }
    sums
}

/// [`dot_bf16_reference`]'s loop for every pair of `R` weight rows and `B` input rows at once, over chunks
/// of 32 columns: `acc[b][r][k] = fma(x[b][c][k], w[r][c][k], acc[b][r][k])` chunk after chunk,
/// the same additions in the same order as `dot_bf16_reference(x_b, w_r)` makes (the weights come as f32,
/// `widen` the identity, or as bf16 with `widen` = [`bf16_to_f32`]: exact either way).
/// Only the schedule differs: the 32 lanes of a pair are independent sums, so they go 8 at a
/// time (one AVX2 register), which keeps the R·B partial sums of a tile in registers while each
/// weight vector is loaded once for B inputs and each input vector once for R weight rows.
#[inline(always)]
pub fn accumulate_dot_tile<const R: usize, const B: usize, W: Copy>(
    x: [&[Lanes]; B],
    w: [&[[W; 32]]; R],
    widen: impl Fn(W) -> f32,
    acc: &mut [[Lanes; R]; B],
) {
    let chunks = w[0].len();
    debug_assert!(x.iter().all(|x| x.len() == chunks) && w.iter().all(|w| w.len() == chunks));
    for group in 0..4 {
        let lanes = group * 8..group * 8 + 8;
        let mut a: [[[f32; 8]; R]; B] = [[[0f32; 8]; R]; B];
        for b in 0..B {
            for r in 0..R {
                a[b][r] = acc[b][r][lanes.clone()].try_into().expect("8 lanes");
            }
        }
        for c in 0..chunks {
            let w8: [[f32; 8]; R] = array_of(|r| array_of(|k| widen(w[r][c][group * 8 + k])));
            for b in 0..B {
                let x8: &[f32; 8] = x[b][c][lanes.clone()].try_into().expect("8 lanes");
                for r in 0..R {
                    a[b][r] = add_products8(a[b][r], x8, &w8[r]);
                }
            }
        }
        for b in 0..B {
            for r in 0..R {
                acc[b][r][lanes.clone()].copy_from_slice(&a[b][r]);
            }
        }
    }
}

/// `acc + x·w`, lane by lane, rounded once (one AVX2 fused multiply-add).
#[inline(always)]
fn add_products8(mut acc: [f32; 8], x: &[f32; 8], w: &[f32; 8]) -> [f32; 8] {
    for k in 0..8 {
        acc[k] = x[k].mul_add(w[k], acc[k]);
    }
    acc
}

/// How far ahead [`dot_bf16_reference`] asks for weights: 512 bf16 = 1 KiB. Matrix rows lie one
/// after another, so near the end of a row this reaches into the next one, which comes next.
/// With the lines asked for as non-temporal ([`prefetch`]), 1 KiB was the fastest distance on the
/// Zen 2 (1.5B bf16 decode at context 1024, 2 threads, two rounds: 114–118 ms a step at 1 KiB,
/// 120–121 at 512 B, 130–132 at 1.5 KiB, 134 at 2 KiB, 120–131 at 4 KiB, 132–133 asking for the
/// line being read); the 4 KiB used before was chosen on the Zen 4 with `prefetcht0`.
const PREFETCH_AHEAD: usize = 512;

/// Ask the CPU to start loading the cache line at `p` now, so it has arrived when the loop gets
/// there (worth ~10–15 % of decode throughput here: the hardware prefetcher alone falls behind).
///
/// As a non-temporal line (`prefetchnta`): a weight is read once a step, and a step reads far
/// more weights than the last-level cache holds, so keeping them there only pushes out what
/// would be read again soon: the K/V cache a layer shares with the next one, the SSM states,
/// the activations. On the Zen 2 (2026-12-06, 1.5B at context 1024) decode attention took 15 %
/// less time, since a layer that reuses its neighbour's keys and values now finds them in the L3
/// cache: q8_0 decode 5 % faster; bf16's own A/B stayed within its noise (4 % faster in a first
/// pair of runs), until [`PREFETCH_AHEAD`] was shortened for these lines.
/// The one place that chooses how weights are asked for: the bf16 products here and the AVX2
/// quantized kernel (`quant::kernels`) both call it.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch is a hint; it never faults and never reads into the program, whatever
    // the address (here it may point past the end of the weights).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_NTA }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// ln 2 = LN2_HI + LN2_LO, in two parts ([`exp`], [`ln_1p`]): n · LN2_HI is exact for |n| ≤ 256.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// eˣ in f32 without branches, so that a loop of it vectorises (libm's `expf` is a call per
/// element). Cephes' `expf`: x = n·ln 2 + r with n an integer and |r| ≤ ln 2 / 2, so
/// eˣ = 2ⁿ · eʳ, and eʳ ≈ 1 + r + r²·p(r) with p of degree 5. Within 1 ulp of the true value
/// (0.96 at worst, tested against f64); ∞ above 88.72, where eˣ overflows f32; 0 below −87.3,
/// where eˣ < 1.2·10⁻³⁸ is subnormal (an absolute error below 10⁻³⁸). No FMA: the same bits
/// at every vector width.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: t + ROUND rounds t to an integer, held in the low bits
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    let xc = x.clamp(-87.3, 89.0); // beyond: 0 (selected below) or ∞ (the scaling overflows)
    let rounded = xc * std::f32::consts::LOG2_E + ROUND;
    // Integer steps wrap (they never overflow here): a checked step's panic branch would keep a
    // build with overflow checks, as the tests', from vectorising the loops that call this.
    let n = (rounded.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32); // round(x / ln 2), in −126..=129
    let nf = rounded - ROUND;
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let p = P[1..].iter().fold(P[0], |p, &c| p * r + c);
    let e_r = p * (r * r) + r + 1.0;
    // 2ⁿ in two normal factors 2^(n/2) · 2^(n − n/2), since 2ⁿ itself may not be a normal f32.
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) << 23) as u32);
    let half = n >> 1;
    let e_x = e_r * pow2(half) * pow2(n.wrapping_sub(half));
    if x < -87.3 { 0.0 } else { e_x }
}

/// SiLU(v) = v · σ(v) = v / (1 + e⁻ᵛ), with [`exp`].
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// ln(1 + y) for y ≥ 0 (up to f32::MAX) without branches, so that a loop of it vectorises
/// (libm's `log1pf` is a call per element). u = 1 + y = 2ᵉ·m with m in [√½, √2), so
/// ln u = e·ln 2 + ln m, and ln m = f − f²/2 + f³·p(f) with f = m − 1 and p of degree 8
/// (Cephes' `logf`); then ln(1 + y) = ln u + r/u, where r is what rounding 1 + y to u lost,
/// found exactly (Knuth's TwoSum), so a tiny y comes out as y. Within 1.5 ulp of the true value
/// (1.25 at worst, tested against f64 on every 61st f32 ≥ 0). No FMA: the same bits at every
/// vector width.
#[inline(always)]
pub fn ln_1p(y: f32) -> f32 {
    const P: [f32; 9] = [
        7.037_683_6e-2, -1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_4e-1,
        -2.499_999_4e-1, 3.333_333e-1,
    ];
    let u = 1.0 + y; // ≥ 1: a normal f32 (or ∞)
    let bits = u.to_bits();
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // u = 2^(e+1) · m, m in [½, 1)
    let e = (((bits >> 23) & 0xff) as i32).wrapping_sub(126); // wrapping: as in [`exp`]
    let small = m < std::f32::consts::FRAC_1_SQRT_2; // then use 2m in [1, √2) and e − 1
    let (f, e) = if small { (m + m - 1.0, e.wrapping_sub(1)) } else { (m - 1.0, e) };
    let ef = e as f32;
    let z = f * f;
    let p = P[1..].iter().fold(P[0], |p, &c| p * f + c);
    let ln_u = (f + (p * f * z + ef * LN2_LO - 0.5 * z)) + ef * LN2_HI;
    let (one, y_part) = (u - y, u - (u - y)); // u = one + y_part exactly
    let lost = (1.0 - one) + (y - y_part); // 1 + y − u, exactly
    if u == f32::INFINITY { u } else { ln_u + lost / u }
}

/// `log(1 + eᵛ)`, and `v` itself for v > 20 (as PyTorch's softplus threshold), with [`exp`] and
/// [`ln_1p`].
#[inline(always)]
pub fn softplus(v: f32) -> f32 {
    if v > 20.0 { v } else { ln_1p(exp(v)) }
}

// Plain `for` loops: an iterator's `for_each` may stay a call, compiled without the vector unit.
#[inline(always)]
fn each_silu(x: &mut [f32]) {
    for v in x {
        *v = silu(*v);
    }
}

#[inline(always)]
fn each_softplus(x: &mut [f32]) {
    for v in x {
        *v = softplus(*v);
    }
}

#[inline(always)]
fn each_times_silu(y: &mut [f32], z: &[f32]) {
    debug_assert_eq!(y.len(), z.len());
    for (y, &z) in y.iter_mut().zip(z) {
        *y *= silu(z);
    }
}

best_simd! {
    /// x ← SiLU(x), element by element, vectorised ([`silu`]: the same bits at every width).
    pub fn silu_in_place(x: &mut [f32]) = each_silu
}

best_simd! {
    /// x ← softplus(x), element by element, vectorised ([`softplus`]).
    pub fn softplus_in_place(x: &mut [f32]) = each_softplus
}

best_simd! {
    /// y ← y · SiLU(z), element by element, vectorised: a gate.
    pub fn times_silu(y: &mut [f32], z: &[f32]) = each_times_silu
}

best_simd! {
    /// [`dot_reference`] on the best vector unit of this CPU.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 = dot_reference
}

best_simd! {
    /// [`dots_bf16_reference`] on the best vector unit of this CPU: the decode matvec's inner loop.
    pub fn dots_bf16(x: &[f32], w: &[bf16], out: &mut [f32]) = dots_bf16_reference
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn dot_and_axpy(a: &[f32], b: &[bf16], y: &mut [f32]) -> (f32, f32) {
        y.iter_mut().zip(a).for_each(|(y, a)| *y += 0.5 * a);
        (dot_reference(a, y), dot_bf16_reference(a, b))
    }
    best_simd! { fn dot_and_axpy_fast(a: &[f32], b: &[bf16], y: &mut [f32]) -> (f32, f32) = dot_and_axpy }

    // Plain `for` loops, as in the library's element-wise functions, so the vector builds vectorise.
    #[inline(always)]
    fn exps(x: &[f32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = exp(x);
        }
    }
    best_simd! { fn exps_fast(x: &[f32], out: &mut [f32]) = exps }

    #[inline(always)]
    fn ln_1ps(y: &[f32], out: &mut [f32]) {
        for (o, &y) in out.iter_mut().zip(y) {
            *o = ln_1p(y);
        }
    }
    best_simd! { fn ln_1ps_fast(y: &[f32], out: &mut [f32]) = ln_1ps }

    /// Every f32 in [lo, hi) whose bits are a multiple of `step`.
    fn sweep(lo: f32, hi: f32, step: u32) -> Vec<f32> {
        let mut xs = Vec::new();
        for bits in (0..u32::MAX).step_by(step as usize) {
            let x = f32::from_bits(bits);
            if x.is_finite() && x >= lo && x < hi {
                xs.push(x);
            }
        }
        xs
    }

    /// |got − want| in units of the last place of the f32 nearest `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let near = (want as f32).to_bits();
        (got as f64 - want).abs() / (f32::from_bits(near + 1) - f32::from_bits(near)) as f64
    }

    /// The largest error of `fast` (the vector build of `plain`) against `truth` over `xs`, in
    /// ulps, and where; checking on the way that `fast` and `plain` agree bit for bit.
    fn worst_ulps(xs: &[f32], fast: fn(&[f32], &mut [f32]), plain: fn(f32) -> f32, truth: fn(f64) -> f64) -> (f64, f32) {
        let mut got = vec![0.0; xs.len()];
        fast(xs, &mut got);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &got) in xs.iter().zip(&got) {
            assert_eq!(got.to_bits(), plain(x).to_bits(), "at {x}: vector and plain builds differ");
            let err = ulps(got, truth(x as f64));
            if err > worst.0 {
                worst = (err, x);
            }
        }
        worst
    }

    #[test]
    fn exp_is_within_one_ulp_and_the_same_at_every_width() {
        // ~85 million f32 in range, every 97th
        let worst = worst_ulps(&sweep(-87.3, 88.72, 97), exps_fast, exp, f64::exp);
        assert!(worst.0 <= 1.0, "exp({}) is {} ulp off", worst.1, worst.0);
        // Outside the range: 0 below (true value < 1.2e-38), ∞ above, NaN stays NaN.
        for (x, want) in [(-87.31f32, 0.0f32), (-1e4, 0.0), (f32::NEG_INFINITY, 0.0), (88.73, f32::INFINITY), (f32::INFINITY, f32::INFINITY)] {
            assert_eq!(exp(x), want, "exp({x})");
        }
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn ln_1p_is_within_one_and_a_half_ulp_and_the_same_at_every_width() {
        // every 61st f32 ≥ 0 (subnormals included)
        let worst = worst_ulps(&sweep(0.0, f32::MAX, 61), ln_1ps_fast, ln_1p, f64::ln_1p);
        assert!(worst.0 <= 1.5, "ln_1p({}) is {} ulp off", worst.1, worst.0);
        assert_eq!((ln_1p(0.0), ln_1p(1e-30), ln_1p(f32::INFINITY)), (0.0, 1e-30, f32::INFINITY));
        assert!(ln_1p(f32::NAN).is_nan());
        // softplus, as it is used: within 2 ulp of log(1 + eᵛ) in f64 over v in [−87.3, 20]
        for v in sweep(-87.3, 20.0, 4099) {
            let (got, want) = (softplus(v), (v as f64).exp().ln_1p());
            assert!(ulps(got, want) <= 2.0, "softplus({v}) = {got}, want {want}");
        }
    }

    #[test]
    fn rows_dotted_together_equal_each_row_alone_bit_for_bit() {
        for cols in [0, 1, 31, 32, 100, 131, 1600] {
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            for rows in [1, 7, 8, 9, 17] {
                let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32((i as f32 * 0.91).cos())).collect();
                let (mut plain, mut fast) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
                dots_bf16_reference(&x, &w, &mut plain);
                dots_bf16(&x, &w, &mut fast);
                for r in 0..rows {
                    let alone = dot_bf16_reference(&x, &w[r * cols..(r + 1) * cols]);
                    let case = format!("{rows} rows of {cols}, row {r}");
                    assert_eq!((plain[r].to_bits(), fast[r].to_bits()), (alone.to_bits(), alone.to_bits()), "{case}");
                }
            }
        }
    }

    #[test]
    fn every_vector_width_gives_bit_identical_results() {
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 64, 100, 1000] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let b: Vec<bf16> = (0..n).map(|i| bf16::from_f32((i as f32 * 0.91).cos())).collect();
            let (mut y_plain, mut y_fast) = (vec![0.25f32; n], vec![0.25f32; n]);
            let plain = dot_and_axpy(&a, &b, &mut y_plain);
            let fast = dot_and_axpy_fast(&a, &b, &mut y_fast);
            assert_eq!((plain.0.to_bits(), plain.1.to_bits()), (fast.0.to_bits(), fast.1.to_bits()), "n = {n}");
            assert_eq!(y_plain, y_fast, "n = {n}");
            // And they are dot products.
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            assert!((plain.1 as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "n = {n}: {} vs {want}", plain.1);
        }
    }
}
