//! Property tests of the numeric kernels, against their definitions: the matmul of
//! `Linear::forward` against a naive triple loop, masked softmax, RMSNorm, RoPE and masked
//! attention.

use half::{bf16, f16};
use hymba_ref::state::cache::KeyBlocks;
use hymba_ref::checkpoint::weights::Linear;
use hymba_ref::kernels::matrix::{Elements, Matrix, RowKind};
use hymba_ref::config::AttentionSpan;
use hymba_ref::model::attention::{attention_heads, attention_heads_reference, is_visible, masked_softmax, Mask};
use hymba_ref::model::norm::rms_norm;
use hymba_ref::model::rope::rotate;
use ndarray::{Array1, Array2, Array3, ArrayView3, Axis};
use proptest::prelude::*;

/// Whether the query at position `i` may see the key at position `j`, written out here from
/// docs/MODEL.md §3.4 rather than taken from the library (whose `is_visible` is what is tested):
/// causal, and in a window layer within W positions or a meta token.
fn visible_oracle(i: usize, j: usize, span: AttentionSpan, num_meta: usize) -> bool {
    if j > i {
        return false;
    }
    match span {
        AttentionSpan::Global => true,
        AttentionSpan::SlidingWindow(w) => i - j <= w || j < num_meta,
    }
}

/// A (rows, cols) matrix of values in [-4, 4].
fn matrix(rows: impl Strategy<Value = usize>, cols: impl Strategy<Value = usize>) -> impl Strategy<Value = Array2<f32>> {
    (rows, cols).prop_flat_map(|(r, c)| {
        prop::collection::vec(-4.0f32..4.0, r * c).prop_map(move |v| Array2::from_shape_vec((r, c), v).unwrap())
    })
}

fn vector(len: usize, range: std::ops::Range<f32>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(range, len)
}

fn span() -> impl Strategy<Value = AttentionSpan> {
    prop_oneof![Just(AttentionSpan::Global), (1usize..6).prop_map(AttentionSpan::SlidingWindow)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// y = x · Wᵀ + b, element by element, for weights kept in f32, bf16 or f16, through both
    /// the decode (few rows) and the prefill (many rows) paths of `Matrix::matmul_t`.
    #[test]
    fn linear_forward_matches_a_naive_loop(
        (x, w) in (1usize..9, 1usize..40, 1usize..150).prop_flat_map(|(t, i, o)| (matrix(Just(t), Just(i)), matrix(Just(o), Just(i)))),
        dtype in 0usize..3,
        with_bias in any::<bool>(),
        bias_seed in vector(150, -2.0..2.0),
    ) {
        let (t, inner, out) = (x.nrows(), x.ncols(), w.nrows());
        let bias = with_bias.then(|| Array1::from(bias_seed[..out].to_vec()));
        let weight = match dtype {
            0 => Matrix::from_f32(w.clone()),
            1 => Matrix::new(out, inner, Elements::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>().into())).unwrap(),
            _ => Matrix::new(out, inner, Elements::F16(w.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>().into())).unwrap(),
        };
        let w = weight.to_f32(); // the values actually stored
        let linear = Linear { weight, bias: bias.clone() };
        let mut y = Array2::zeros((0, 0));
        linear.forward(x.view(), RowKind::Chunk, &mut y);
        prop_assert_eq!(y.dim(), (t, out));
        for r in 0..t {
            for c in 0..out {
                let mut acc = 0.0f64;
                let mut magnitude = 0.0f64;
                for k in 0..inner {
                    let p = x[[r, k]] as f64 * w[[c, k]] as f64;
                    acc += p;
                    magnitude += p.abs();
                }
                if let Some(b) = &bias {
                    acc += b[c] as f64;
                    magnitude += (b[c] as f64).abs();
                }
                let err = (y[[r, c]] as f64 - acc).abs();
                prop_assert!(err <= 1e-5 * (1.0 + magnitude), "y[{r},{c}] = {} vs {acc}", y[[r, c]]);
            }
        }
    }

    /// Visible entries are probabilities summing to 1; hidden entries are exactly 0.
    #[test]
    fn masked_softmax_rows_are_distributions(
        row in prop::collection::vec(-30.0f32..30.0, 1..40),
        mask_bits in any::<u64>(),
    ) {
        let n = row.len();
        let visible = |j: usize| j == n - 1 || mask_bits >> (j % 64) & 1 == 1; // at least one visible
        let mut probs = Array1::from(row);
        masked_softmax(probs.view_mut(), visible);
        let sum: f32 = probs.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        for (j, &p) in probs.iter().enumerate() {
            if visible(j) {
                prop_assert!((0.0..=1.0).contains(&p), "p[{j}] = {p}");
            } else {
                prop_assert_eq!(p, 0.0);
            }
        }
    }

    /// softmax(x + c) = softmax(x), however large c, and whatever the hidden entries hold.
    #[test]
    fn masked_softmax_is_invariant_to_adding_a_constant(
        row in prop::collection::vec(-30.0f32..30.0, 1..40),
        shift in -1.0e4f32..1.0e4,
        mask_bits in any::<u64>(),
        hidden_value in prop_oneof![Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(f32::NAN), Just(f32::MAX), -1e30f32..1e30],
    ) {
        let n = row.len();
        let visible = |j: usize| j == 0 || mask_bits >> (j % 64) & 1 == 1;
        let mut a = Array1::from(row.clone());
        masked_softmax(a.view_mut(), visible);
        let mut b = Array1::from_iter(row.iter().enumerate().map(|(j, &x)| if visible(j) { x + shift } else { hidden_value }));
        masked_softmax(b.view_mut(), visible);
        for j in 0..n {
            // Adding `shift` rounds each input by up to ulp(shift)/2, which moves exp() by that much.
            let tol = 1e-5 + 2.0 * a[j] * (shift.abs() * f32::EPSILON);
            prop_assert!((a[j] - b[j]).abs() <= tol, "j = {j}: {} vs {}", a[j], b[j]);
        }
    }

    /// RMSNorm(c·x) = sign(c)·RMSNorm(x), and with weight 1 each row has RMS 1 (eps = 0).
    #[test]
    fn rms_norm_is_scale_invariant(
        x in matrix(1usize..5, 1usize..33),
        scale in prop_oneof![1e-3f32..1e3, -1e3f32..-1e-3],
        weight_seed in vector(32, 0.1..3.0),
    ) {
        prop_assume!(x.rows().into_iter().all(|r| r.iter().any(|v| v.abs() > 1e-3)));
        let width = x.ncols();
        let weight = Array1::from(weight_seed[..width].to_vec());
        let (mut a, mut b, mut unit) = (Array2::zeros((0, 0)), Array2::zeros((0, 0)), Array2::zeros((0, 0)));
        let a = rms_norm(x.view(), weight.view(), 0.0, &mut a);
        let b = rms_norm((&x * scale).view(), weight.view(), 0.0, &mut b);
        for (p, q) in a.iter().zip(b.iter()) {
            prop_assert!((p * scale.signum() - q).abs() <= 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
        }
        let unit = rms_norm(x.view(), Array1::ones(width).view(), 0.0, &mut unit);
        for row in unit.rows() {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / width as f32).sqrt();
            prop_assert!((rms - 1.0).abs() < 1e-4, "rms {rms}");
        }
    }

    /// RoPE rotates pairs: it preserves each head's norm.
    #[test]
    fn rope_preserves_norms(
        (heads, half) in (1usize..4, 2usize..9),
        values in vector(3 * 16, -3.0..3.0),
        positions in prop::collection::vec(0usize..5000, 1..4),
        base in prop_oneof![Just(10000.0f64), Just(74535.0), 10.0f64..1e6],
    ) {
        let (t, dim) = (positions.len(), 2 * half);
        let x = Array3::from_shape_fn((t, heads, dim), |(i, h, k)| values[(i * 7 + h * 5 + k) % values.len()]);
        let mut y = x.clone();
        rotate(y.view_mut(), &positions, base);
        for i in 0..t {
            for h in 0..heads {
                let n0: f32 = x.slice(ndarray::s![i, h, ..]).iter().map(|v| v * v).sum::<f32>().sqrt();
                let n1: f32 = y.slice(ndarray::s![i, h, ..]).iter().map(|v| v * v).sum::<f32>().sqrt();
                prop_assert!((n0 - n1).abs() <= 1e-5 * (1.0 + n0), "{n0} vs {n1}");
            }
        }
    }

    /// RoPE is relative: q(p)·k(p') depends only on p − p'.
    #[test]
    fn rope_scores_depend_only_on_the_offset(
        half in 2usize..9,
        q in vector(16, -2.0..2.0),
        k in vector(16, -2.0..2.0),
        (p, p2) in (0usize..400, 0usize..400),
        shift in 0usize..400,
        base in prop_oneof![Just(10000.0f64), 100.0f64..1e5],
    ) {
        let dim = 2 * half;
        let score = |a: usize, b: usize| {
            let mut qa = Array3::from_shape_vec((1, 1, dim), q[..dim].to_vec()).unwrap();
            let mut kb = Array3::from_shape_vec((1, 1, dim), k[..dim].to_vec()).unwrap();
            rotate(qa.view_mut(), &[a], base);
            rotate(kb.view_mut(), &[b], base);
            qa.iter().zip(kb.iter()).map(|(x, y)| x * y).sum::<f32>()
        };
        let (s0, s1) = (score(p, p2), score(p + shift, p2 + shift));
        let scale: f32 = q[..dim].iter().map(|v| v * v).sum::<f32>().sqrt() * k[..dim].iter().map(|v| v * v).sum::<f32>().sqrt();
        // The released code rounds each angle p·θ to f32, so the offset is exact only up to that.
        prop_assert!((s0 - s1).abs() <= 2e-3 * (1.0 + scale), "{s0} vs {s1}");
    }

    /// Changing the keys and values that no query may see leaves the attention output unchanged,
    /// for global and sliding-window layers, with meta tokens and GQA.
    #[test]
    fn masked_attention_ignores_invisible_keys(
        (nh, nkv) in prop_oneof![Just((1usize, 1usize)), Just((2, 1)), Just((2, 2)), Just((4, 2))],
        (dqk, dv) in (1usize..5, 1usize..5),
        span in span(),
        num_meta in 0usize..3,
        first_query in 0usize..12,
        t in prop_oneof![1usize..4, 60usize..140],
        reference in any::<bool>(),
        extra_keys in prop::collection::vec(0usize..20, 0..6),
        seed in vector(64, -2.0..2.0),
        garbage in prop_oneof![Just(1e30f32), Just(-1e30), -1e3f32..1e3],
    ) {
        let q_positions: Vec<usize> = (first_query..first_query + t).collect();
        // Keys: every position up to the last query (so each query sees itself), plus extras,
        // some of them in the future.
        let mut k_positions: Vec<usize> = (0..first_query + t).collect();
        k_positions.extend(extra_keys.iter().map(|e| first_query + t + e));
        let s_len = k_positions.len();
        let fill = |shape: (usize, usize, usize), salt: usize| {
            Array3::from_shape_fn(shape, |(a, b, c)| seed[(a * 31 + b * 17 + c * 7 + salt) % seed.len()])
        };
        let q = fill((t, nh, dqk), 1);
        let k = fill((s_len, nkv, dqk), 2);
        let v = fill((s_len, nkv, dv), 3);
        // The blocked kernel the model runs, or the plain one it is tested against.
        let attend = if reference { attention_heads_reference } else { attention_heads_owned };
        let mask = Mask::new(&q_positions, &k_positions, span, num_meta);
        let out = attend(q.view(), k.view(), v.view(), mask);
        prop_assert_eq!(out.dim(), (t, nh * dv));

        let hidden_from_all = |j: usize| q_positions.iter().all(|&i| !visible_oracle(i, k_positions[j], span, num_meta));
        let (mut k2, mut v2) = (k.clone(), v.clone());
        let mut changed = 0;
        for j in 0..s_len {
            if hidden_from_all(j) {
                k2.index_axis_mut(Axis(0), j).fill(garbage);
                v2.index_axis_mut(Axis(0), j).fill(-garbage);
                changed += 1;
            }
        }
        let out2 = attend(q.view(), k2.view(), v2.view(), mask);
        for (a, b) in out.iter().zip(out2.iter()) {
            prop_assert!((a - b).abs() <= 1e-6, "{a} vs {b} after changing {changed} hidden keys");
        }
        // And the output is a convex combination of the visible values: within their range.
        let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        prop_assert!(out.iter().all(|&o| o >= lo - 1e-5 && o <= hi + 1e-5));
    }
}

/// [`attention_heads`] into a new array, the keys in blocks as a cache holds them.
fn attention_heads_owned(q: ArrayView3<f32>, k: ArrayView3<f32>, v: ArrayView3<f32>, mask: Mask) -> Array2<f32> {
    let mut out = Array2::zeros((q.dim().0, q.dim().1 * v.dim().2)); // (T, nh·dv)
    attention_heads(q, &KeyBlocks::from_rows(k), v, mask, out.view_mut());
    out
}

/// Each query of a per-query check: keys hidden from *that* query do not matter to its row.
#[test]
fn each_query_row_ignores_its_own_hidden_keys() {
    let span = AttentionSpan::SlidingWindow(2);
    let (t, s_len, num_meta) = (4usize, 9usize, 1usize);
    let q_positions: Vec<usize> = (5..5 + t).collect();
    let k_positions: Vec<usize> = (0..s_len).collect();
    let q = Array3::from_shape_fn((t, 2, 3), |(a, b, c)| ((a * 3 + b * 5 + c) % 7) as f32 * 0.3 - 1.0);
    let k = Array3::from_shape_fn((s_len, 1, 3), |(a, _, c)| ((a * 5 + c * 3) % 11) as f32 * 0.2 - 1.0);
    let v = Array3::from_shape_fn((s_len, 1, 2), |(a, _, c)| (a * 2 + c) as f32);
    let mask = Mask::new(&q_positions, &k_positions, span, num_meta);
    let out = attention_heads_owned(q.view(), k.view(), v.view(), mask);
    for (row, &i) in q_positions.iter().enumerate() {
        let (mut k2, mut v2) = (k.clone(), v.clone());
        for (j, &p) in k_positions.iter().enumerate() {
            if !visible_oracle(i, p, span, num_meta) {
                k2.index_axis_mut(Axis(0), j).fill(55.0);
                v2.index_axis_mut(Axis(0), j).fill(-1e6);
            }
        }
        let out2 = attention_heads_owned(q.view(), k2.view(), v2.view(), mask);
        let diff = (&out.row(row) - &out2.row(row)).iter().fold(0f32, |m, d| m.max(d.abs()));
        assert!(diff <= 1e-6, "query {i}: {diff}");
    }
}

#[test]
fn is_visible_is_the_mask_of_the_model_page() {
    for span in [AttentionSpan::Global, AttentionSpan::SlidingWindow(0), AttentionSpan::SlidingWindow(3), AttentionSpan::SlidingWindow(7)] {
        for num_meta in [0, 1, 4] {
            for i in 0..24 {
                for j in 0..24 {
                    assert_eq!(is_visible(i, j, span, num_meta), visible_oracle(i, j, span, num_meta), "i {i}, j {j}, {span:?}, M {num_meta}");
                }
            }
        }
    }
    // Spelled out once: window 3, two meta tokens, the query at 9 sees 0, 1 (meta) and 6..=9.
    let seen: Vec<usize> = (0..12).filter(|&j| is_visible(9, j, AttentionSpan::SlidingWindow(3), 2)).collect();
    assert_eq!(seen, [0, 1, 6, 7, 8, 9]);
}
