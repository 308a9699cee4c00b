//! The inner loops that decoding spends its time in, written so the compiler vectorises them,
//! and compiled for the widest vector unit the CPU has.
//!
//! A portable build targets baseline x86-64 (SSE2: 4 f32 lanes). `best_simd!` compiles one
//! plain Rust function twice more, for AVX-512 (16 lanes) and AVX2 (8 lanes), and picks at run
//! time. The source, and so the order of every addition, is the same in all three: the results
//! are bit-identical (tested), only the speed differs. Nothing here uses FMA or reassociates sums.

use half::bf16;

/// Define `$vis fn $name(args) -> ret` that runs `$body` (an `#[inline(always)]` function with
/// the same arguments) compiled for AVX-512 or AVX2 when the CPU has them, else as built.
macro_rules! best_simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use best_simd;

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
/// partial sums, and the weights a page ahead requested early, since this loop streams the
/// weights and must keep up with memory.
#[inline(always)]
pub fn dot_bf16_reference(a: &[f32], b: &[bf16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 32];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = a32.remainder().iter().zip(b32.remainder()).map(|(x, y)| x * bf16_to_f32(*y)).sum();
    for (ca, cb) in a32.zip(b32) {
        prefetch(cb.as_ptr().wrapping_add(PREFETCH_AHEAD));
        for k in 0..32 {
            acc[k] += ca[k] * bf16_to_f32(cb[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How far ahead [`dot_bf16_reference`] asks for weights: 2048 bf16 = 4 KiB, a page. Matrix rows lie one
/// after another, so near the end of a row this reaches into the next one, which comes next.
const PREFETCH_AHEAD: usize = 2048;

/// Ask the CPU to start loading the cache line at `p` now, so it has arrived when the loop gets
/// there (worth ~10–15 % of decode throughput here: the hardware prefetcher alone falls behind).
#[inline(always)]
fn prefetch(p: *const bf16) {
    // SAFETY: a prefetch is a hint; it never faults and never reads into the program, whatever
    // the address (here it may point past the end of the weights).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// y += a·x
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

best_simd! {
    /// [`dot_reference`] on the best vector unit of this CPU.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 = dot_reference
}

best_simd! {
    /// [`dot_bf16_reference`] on the best vector unit of this CPU: the decode matvec's inner loop.
    pub fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 = dot_bf16_reference
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn dot_and_axpy(a: &[f32], b: &[bf16], y: &mut [f32]) -> (f32, f32) {
        axpy(0.5, a, y);
        (dot_reference(a, y), dot_bf16_reference(a, b))
    }
    best_simd! { fn dot_and_axpy_fast(a: &[f32], b: &[bf16], y: &mut [f32]) -> (f32, f32) = dot_and_axpy }

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
