//! Evaluation: token-level negative log-likelihood (NLL) and perplexity of a token sequence.
//!
//! Every token after the first (the BOS) is scored once: its NLL is `-log softmax(logits)[token]`
//! (nats), the logits being the model's prediction from the previous position. Perplexity is
//! `exp(mean NLL)`.
//!
//! A sequence longer than the context is scored in **sliding windows** of `context` tokens whose
//! starts are `stride` apart (the `hymba-ref perplexity` default is `context / 2`). Each window is
//! fed as a fresh sequence (meta tokens first) and scores only the tokens the previous window did
//! not reach, so every token after the first window is predicted from at least
//! `context − stride` tokens of left context, and no token is scored twice.
//! `reference/perplexity.py` computes the same windows and numbers with the PyTorch reference.

use crate::base::error::{Error, Result};
use crate::model::Hymba;
use ndarray::{s, ArrayView1};

/// One window: the tokens `begin..end` are fed as a sequence, the tokens `first_scored..end` are
/// scored (`begin < first_scored`, so each scored token has at least one token before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub begin: usize,
    pub end: usize,
    pub first_scored: usize,
}

/// The windows that score tokens `1..n` of an `n`-token sequence, each exactly once.
/// Needs `context ≥ 2` and `1 ≤ stride < context` (so consecutive windows overlap).
pub fn windows(n: usize, context: usize, stride: usize) -> Result<Vec<Window>> {
    if context < 2 {
        return Err(Error::input(format!("the perplexity context must be at least 2 tokens, got {context}")));
    }
    if stride == 0 || stride >= context {
        return Err(Error::input(format!(
            "the perplexity stride must be between 1 and context − 1 = {} (windows must overlap), got {stride}",
            context - 1
        )));
    }
    let (mut result, mut begin, mut scored_until) = (Vec::new(), 0, 1); // token 0 (BOS) is never scored
    while scored_until < n {
        let end = (begin + context).min(n);
        result.push(Window { begin, end, first_scored: scored_until });
        scored_until = end;
        begin += stride;
    }
    Ok(result)
}

/// `-log softmax(logits)[target]` in nats: log-sum-exp (shifted by the maximum, summed in f64)
/// minus the target's logit.
pub fn token_nll(logits: ArrayView1<f32>, target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    f64::from(max) + sum.ln() - f64::from(logits[target as usize])
}

/// The result of a perplexity run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Number of tokens scored (all but the first).
    pub tokens: usize,
    /// Sum of their NLLs, in nats.
    pub total_nll: f64,
}

impl Perplexity {
    /// Mean NLL in nats per token.
    pub fn mean_nll(&self) -> f64 {
        self.total_nll / self.tokens as f64
    }

    /// `exp(mean NLL)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// Score `ids` (normally BOS + the encoded text) with sliding windows of `context` tokens,
/// `stride` apart. `progress(windows done, windows total, tokens scored so far)` is called after
/// each window.
pub fn perplexity(
    model: &Hymba,
    ids: &[u32],
    context: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize, usize),
) -> Result<Perplexity> {
    if ids.len() < 2 {
        return Err(Error::input(format!(
            "perplexity needs at least 2 tokens (the first is only context), got {}",
            ids.len()
        )));
    }
    model.check_ids(ids)?;
    let plan = windows(ids.len(), context, stride)?;
    let mut result = Perplexity { tokens: 0, total_nll: 0.0 };
    for (k, w) in plan.iter().enumerate() {
        let mut seq = model.new_sequence(); // meta tokens already in
        let hidden = model.hidden_states(&ids[w.begin..w.end], &mut seq)?; // (len, H)
        // Row r predicts token begin + r + 1: project only the rows that predict scored tokens.
        let rows = hidden.slice(s![w.first_scored - 1 - w.begin..w.end - 1 - w.begin, ..]);
        let logits = model.logits(rows)?; // (scored, V)
        for (row, &target) in logits.rows().into_iter().zip(&ids[w.first_scored..w.end]) {
            result.total_nll += token_nll(row, target);
        }
        result.tokens += w.end - w.first_scored;
        progress(k + 1, plan.len(), result.tokens);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Every token 1..n is scored exactly once, in order, with a window that starts before it and
    /// is at most `context` long; later windows leave at least context − stride tokens of context.
    #[test]
    fn windows_score_each_token_once() {
        for n in 2..40 {
            for context in 2..12 {
                for stride in 1..context {
                    let plan = windows(n, context, stride).unwrap();
                    let mut next = 1;
                    for (k, w) in plan.iter().enumerate() {
                        assert_eq!(w.first_scored, next, "n {n} context {context} stride {stride}");
                        assert!(w.begin < w.first_scored && w.first_scored < w.end && w.end <= n);
                        assert!(w.end - w.begin <= context);
                        if k > 0 {
                            assert!(w.first_scored - w.begin >= context - stride);
                        }
                        next = w.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }

    #[test]
    fn windows_of_a_short_text_is_one_window() {
        assert_eq!(windows(5, 512, 256).unwrap(), vec![Window { begin: 0, end: 5, first_scored: 1 }]);
        assert!(windows(1, 512, 256).unwrap().is_empty());
        assert_eq!(
            windows(10, 6, 3).unwrap(),
            vec![
                Window { begin: 0, end: 6, first_scored: 1 },
                Window { begin: 3, end: 9, first_scored: 6 },
                Window { begin: 6, end: 10, first_scored: 9 }
            ]
        );
    }

    #[test]
    fn bad_window_settings_are_refused() {
        assert!(windows(10, 1, 1).is_err());
        assert!(windows(10, 8, 0).is_err());
        assert!(windows(10, 8, 8).is_err());
    }

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = array![1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        for t in 0..3 {
            let want = -(f64::from(t as u8 + 1).exp() / z).ln();
            assert!((token_nll(logits.view(), t) - want).abs() < 1e-6);
        }
        // Shift invariance: large logits do not overflow.
        let big = array![1000.0f32, 1001.0, 1002.0];
        assert!((token_nll(big.view(), 2) - token_nll(logits.view(), 2)).abs() < 1e-6);
        let p = Perplexity { tokens: 4, total_nll: 4.0 * 2f64.ln() };
        assert!((p.perplexity() - 2.0).abs() < 1e-12);
    }
}
