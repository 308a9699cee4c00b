//! SSM memory: how fast each SSM channel forgets. At every step, state dimension n of channel c
//! is multiplied by `exp(Δ_t,c · A_c,n)` (docs/MODEL.md §3.6; A < 0, so a decay in (0, 1)); after k steps
//! of decay a, a contribution is down to aᵏ, half gone after `ln 2 / −ln a` steps: its half-life.
//!
//! Δ depends on the token, A does not. Over a prompt, the product of a channel's decays is
//! `exp(Σ_t Δ_t,c · A_c,n)`, so its typical per-step decay is `exp(mean_t Δ_t,c · A_c,n)` (the
//! geometric mean). The distribution reported is that of the D × N (channel, state) pairs.

use super::stats::Summary;
use ndarray::{Array1, ArrayView1, ArrayView2};

/// Half-life boundaries, in tokens, of [`SsmMemory::half_life_histogram`]'s buckets.
pub const HALF_LIFE_BUCKETS: [f64; 6] = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0];

/// One layer's SSM memory over a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SsmMemory {
    /// The per-step decay `exp(mean Δ · A)` of the (channel, state) pairs.
    pub decay: Summary,
    /// Their half-lives in tokens, `ln 2 / (mean Δ · −A)`.
    pub half_life: Summary,
    /// The share of pairs whose half-life is longer than the sliding window W (they remember
    /// past what a window layer's attention sees); 0 without a window.
    pub beyond_window: f64,
    /// Shares of pairs by half-life: below 1 token, 1–4, 4–16, …, 256–1024, 1024 and more
    /// ([`HALF_LIFE_BUCKETS`]).
    pub half_life_histogram: Vec<f64>,
}

/// The sum of Δ per channel over the prompt tokens seen so far in one layer.
#[derive(Debug, Clone)]
pub struct DeltaSums {
    /// (D)
    sum: Array1<f64>,
    tokens: usize,
}

impl DeltaSums {
    pub fn new(d_inner: usize) -> DeltaSums {
        DeltaSums { sum: Array1::zeros(d_inner), tokens: 0 }
    }

    /// Add one token's Δ (D).
    pub fn add(&mut self, delta: ArrayView1<f32>) {
        self.sum.zip_mut_with(&delta, |s, &d| *s += f64::from(d));
        self.tokens += 1;
    }

    /// The memory of the layer whose `A` (D, N) these sums went through; `window` is W.
    pub fn summary(&self, a: ArrayView2<f32>, window: Option<usize>) -> SsmMemory {
        debug_assert_eq!(a.nrows(), self.sum.len());
        let mean_delta = &self.sum / self.tokens.max(1) as f64; // (D)
        let rates: Vec<f64> = a
            .rows()
            .into_iter()
            .zip(&mean_delta)
            .flat_map(|(a_c, &delta)| a_c.iter().map(move |&a| delta * -f64::from(a)).collect::<Vec<_>>())
            .collect(); // (D·N): −ln(decay) per step
        let mut decay: Vec<f64> = rates.iter().map(|r| (-r).exp()).collect();
        let mut half_life: Vec<f64> = rates.iter().map(|r| std::f64::consts::LN_2 / r).collect();
        let pairs = half_life.len().max(1) as f64;
        let beyond_window = window.map_or(0.0, |w| half_life.iter().filter(|&&h| h > w as f64).count() as f64 / pairs);
        let mut histogram = vec![0.0; HALF_LIFE_BUCKETS.len() + 1];
        for &h in &half_life {
            histogram[HALF_LIFE_BUCKETS.iter().take_while(|&&b| h >= b).count()] += 1.0 / pairs;
        }
        SsmMemory {
            decay: Summary::of(&mut decay),
            half_life: Summary::of(&mut half_life),
            beyond_window,
            half_life_histogram: histogram,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn half_life_of_a_known_decay() {
        // One channel, Δ = ln 2 on average, A = (−1/2, −1/8): decays 2^(−1/2) and 2^(−1/8),
        // half-lives 2 and 8 tokens.
        let mut sums = DeltaSums::new(1);
        for delta in [0.5 * 2f32.ln(), 1.5 * 2f32.ln()] {
            sums.add(array![delta].view());
        }
        let m = sums.summary(array![[-0.5f32, -0.125]].view(), Some(4));
        assert!((m.decay.min - 0.5f64.sqrt()).abs() < 1e-6 && (m.half_life.min - 2.0).abs() < 1e-5, "{m:?}");
        assert!((m.half_life.max - 8.0).abs() < 1e-5);
        assert_eq!(m.beyond_window, 0.5); // 8 > W = 4
        assert_eq!(m.half_life_histogram, vec![0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    }
}
