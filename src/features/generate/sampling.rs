//! Choosing the next token from a row of logits.
//!
//! The steps and their order are those of HF transformers' `generate`:
//!
//! 1. **Repetition penalty** (a logits processor, so also applied when greedy): every id already
//!    in the sequence (prompt and generated tokens, each id once) has its logit divided by the
//!    penalty if positive, multiplied by it if negative.
//! 2. **Greedy** when `temperature == 0`: the argmax, ties going to the lowest id. Steps 3–6
//!    are skipped (none of them can remove the argmax anyway).
//! 3. **Temperature**: logits / temperature.
//! 4. **Top-k** (0 = off): keep the k largest logits, plus any tied with the k-th, as HF does.
//! 5. **Top-p** (1 = off): on the softmax of what is left, keep the smallest set of most likely
//!    tokens whose probability sums to at least p (always at least one token).
//! 6. **Min-p** (0 = off): drop tokens whose probability is below `min_p` × the largest one.
//! 7. **Sample** from the softmax of the kept logits with the sampler's own PRNG (SplitMix64),
//!    so the same seed gives the same tokens.
//!
//! Tokens are ranked by logit, highest first, ties to the lower id. Steps 4–6 each keep a prefix
//! of that ranking, so the kept set is always a prefix of it.

use crate::base::error::{Error, Result};
use std::path::Path;
use crate::base::rng::SplitMix64;

/// How to pick each token. [`SamplingParams::default`] is greedy with no penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise logits are divided by it before sampling. Must be finite and ≥ 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens until their probability reaches p, in (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one, in [0, 1].
    pub min_p: f32,
    /// Penalty > 0 on ids already in the sequence (1 = none; > 1 discourages repeats).
    pub repetition_penalty: f32,
    /// Seed of the sampler's PRNG.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// The defaults a checkpoint asks for in its `generation_config.json`, read as Hugging Face's
    /// `generate` reads them: greedy unless `do_sample` is true, then `temperature` (default 1),
    /// `top_k` (default 50), `top_p` (default 1) and `min_p`; `repetition_penalty` (default 1)
    /// applies either way. No file means greedy; a malformed file is an error naming it.
    pub fn from_generation_config(dir: &Path) -> Result<SamplingParams> {
        let path = dir.join("generation_config.json");
        match crate::base::files::read_optional(&path, crate::base::files::CONFIG)? {
            None => Ok(SamplingParams::default()),
            Some(bytes) => {
                let origin = path.display().to_string();
                let text = crate::base::files::utf8(bytes, &origin)?;
                SamplingParams::from_generation_config_text(&text, &origin)
            }
        }
    }

    /// Parse the text of a `generation_config.json`; `origin` names it in errors. Every field we
    /// read must have its type (`do_sample` true or false, `top_k` a whole number ≥ 0, the rest
    /// numbers) whether or not `do_sample` puts it to use; a repeated key is an error.
    pub fn from_generation_config_text(text: &str, origin: &str) -> Result<SamplingParams> {
        let bad = |what: String| Error::input(format!("{origin}: {what}"));
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if let Some(key) = crate::base::json_scan::first_duplicate_key(text) {
            return Err(bad(format!("the key `{key}` appears twice in one object")));
        }
        let serde_json::Value::Object(fields) = &json else {
            return Err(bad(format!("must be a JSON object of generation settings, found {}", crate::checkpoint::json_text::brief(&json))));
        };
        let field = |key: &str| fields.get(key).filter(|v| !v.is_null());
        let number = |key: &str, default: f32| -> Result<f32> {
            match field(key) {
                None => Ok(default),
                Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| bad(format!("`{key}` must be a number, found {v}"))),
            }
        };
        let do_sample = match field("do_sample") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| bad(format!("`do_sample` must be true or false, found {v}")))?,
        };
        let top_k = match field("top_k") {
            None => 50,
            Some(v) => v
                .as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| bad(format!("`top_k` must be a whole number ≥ 0 (0 = off), found {v}")))?,
        };
        let sampled = SamplingParams {
            temperature: number("temperature", 1.0)?,
            top_k,
            top_p: number("top_p", 1.0)?,
            min_p: number("min_p", 0.0)?,
            repetition_penalty: number("repetition_penalty", 1.0)?,
            seed: 0,
        };
        let params = if do_sample {
            sampled
        } else {
            SamplingParams { repetition_penalty: sampled.repetition_penalty, ..Default::default() }
        };
        params.validate().map_err(|e| bad(e.message))?;
        Ok(params)
    }

    /// Refuse values outside their ranges, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: f32, range: &str| {
            Err(Error::input(format!("{name} = {value} is out of range: it must be {range}")))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "a finite number ≥ 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1] (1 = off)");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "in [0, 1] (0 = off)");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", self.repetition_penalty, "a finite number > 0 (1 = off)");
        }
        Ok(())
    }

    /// Whether tokens are chosen by argmax rather than drawn.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Picks tokens according to [`SamplingParams`], with its own seeded PRNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler whose PRNG starts from `params.seed`; refuses invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler { params, rng: SplitMix64(params.seed) })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Choose the next token from `logits` (V), given the ids `seen` so far in the sequence
    /// (for the repetition penalty; ids outside the vocabulary are ignored).
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        apply_repetition_penalty(&mut logits, seen, self.params.repetition_penalty);
        if self.params.is_greedy() {
            return argmax(&logits);
        }
        let kept = kept_tokens(&logits, &self.params);
        draw(&kept, self.rng.unit_f64())
    }
}

/// Step 1: divide positive / multiply negative logits of every id in `seen` by `penalty`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let id = id as usize;
        if id < logits.len() && !done[id] {
            done[id] = true;
            let x = &mut logits[id];
            *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
        }
    }
}

/// The index of the largest logit, ties to the lowest index (0 for an empty row).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x.total_cmp(&logits[best]).is_gt() {
            best = i;
        }
    }
    best as u32
}

/// Steps 3–6: the tokens left after temperature, top-k, top-p and min-p, as (id, scaled logit),
/// most likely first (ties: lower id first). Never empty for a non-empty row. Greedy parameters
/// (temperature 0) are treated as temperature 1 here: [`Sampler::sample`] takes the argmax instead.
pub fn kept_tokens(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    let t = if params.is_greedy() { 1.0 } else { params.temperature };
    let mut ranked: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x / t)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

    let mut keep = ranked.len();
    if params.top_k > 0 && params.top_k < keep {
        // As HF: everything at least as large as the k-th logit survives.
        let kth = ranked[params.top_k - 1].1;
        keep = params.top_k + ranked[params.top_k..].iter().take_while(|(_, x)| *x >= kth).count();
    }
    if params.top_p < 1.0 {
        let probs = softmax_weights(&ranked[..keep]);
        let total: f64 = probs.iter().sum();
        let mut cumulative = 0.0;
        // Keep a token while the mass of the tokens ranked above it is still below p.
        keep = probs
            .iter()
            .take_while(|&&w| {
                let before = cumulative;
                cumulative += w / total;
                before < params.top_p as f64
            })
            .count()
            .max(1);
    }
    if params.min_p > 0.0 {
        // prob / max prob = exp(logit − max logit), whatever the normalisation.
        let probs = softmax_weights(&ranked[..keep]);
        keep = probs.iter().take_while(|&&w| w >= params.min_p as f64).count().max(1);
    }
    ranked.truncate(keep);
    ranked
}

/// exp(logit − max logit) for logits ranked highest first: unnormalised probabilities, the first 1.
fn softmax_weights(ranked: &[(u32, f32)]) -> Vec<f64> {
    let max = ranked.first().map_or(0.0, |r| r.1 as f64);
    ranked.iter().map(|&(_, x)| (x as f64 - max).exp()).collect()
}

/// Step 7: pick from `kept` (ranked highest first) with probability ∝ exp(logit), using a
/// uniform `u` in [0, 1).
fn draw(kept: &[(u32, f32)], u: f64) -> u32 {
    let weights = softmax_weights(kept);
    let mut target = u * weights.iter().sum::<f64>();
    for (&(id, _), w) in kept.iter().zip(&weights) {
        if target < *w {
            return id;
        }
        target -= w;
    }
    // Rounding can leave a sliver of `target`: it belongs to the last kept token.
    kept.last().map_or(0, |&(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_defaults_follow_hugging_face() {
        let dir = std::env::temp_dir().join(format!("hymba-genconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(SamplingParams::from_generation_config(&dir).unwrap(), SamplingParams::default());
        let write = |text: &str| std::fs::write(dir.join("generation_config.json"), text).unwrap();
        write(r#"{"do_sample": false, "temperature": 0.5, "repetition_penalty": 1.1}"#);
        let p = SamplingParams::from_generation_config(&dir).unwrap();
        assert_eq!((p.temperature, p.repetition_penalty), (0.0, 1.1));
        write(r#"{"do_sample": true, "temperature": 0.8, "top_k": 40}"#);
        let p = SamplingParams::from_generation_config(&dir).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.8, 40, 1.0));
        write(r#"{"do_sample": true, "top_p": 7}"#);
        let err = SamplingParams::from_generation_config(&dir).unwrap_err();
        assert!(err.message.contains("generation_config.json") && err.message.contains("top_p"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use proptest::prelude::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, min_p, ..SamplingParams::default() }
    }

    fn ids(kept: &[(u32, f32)]) -> Vec<u32> {
        kept.iter().map(|&(id, _)| id).collect()
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0, 1.9], &[]), 1);
        assert_eq!(s.sample(&[-3.0, -3.0], &[]), 0);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -1e30, 5.0], &[]), 2);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_id() {
        let mut logits = [2.0, -1.0, 4.0, 0.5];
        apply_repetition_penalty(&mut logits, &[0, 1, 1, 0, 9], 2.0);
        assert_eq!(logits, [1.0, -2.0, 4.0, 0.5]);
        // Greedy applies it too: token 0 (3.0 → 1.0) loses to token 3.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 3.0, ..SamplingParams::default() }).unwrap();
        assert_eq!(s.sample(&[3.0, -1.0, 0.0, 1.5], &[]), 0);
        assert_eq!(s.sample(&[3.0, -1.0, 0.0, 1.5], &[0]), 3);
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_with_the_kth() {
        let logits = [1.0, 3.0, 2.0, 2.0, 0.0];
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 1, 1.0, 0.0))), vec![1]);
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 2, 1.0, 0.0))), vec![1, 2, 3]);
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 4, 1.0, 0.0))), vec![1, 2, 3, 0]);
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 0, 1.0, 0.0))), vec![1, 2, 3, 0, 4]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs).
        let logits = [0.125f32.ln(), 0.5f32.ln(), 0.125f32.ln(), 0.25f32.ln()];
        let kept = |p| ids(&kept_tokens(&logits, &params(1.0, 0, p, 0.0)));
        assert_eq!(kept(0.3), vec![1]);
        assert_eq!(kept(0.45), vec![1]);
        assert_eq!(kept(0.6), vec![1, 3]);
        assert_eq!(kept(0.74), vec![1, 3]);
        assert_eq!(kept(0.8), vec![1, 3, 0]);
        assert_eq!(kept(0.9), vec![1, 3, 0, 2]);
        assert_eq!(kept(1e-9), vec![1]); // always at least one
    }

    #[test]
    fn top_p_uses_the_probabilities_left_by_top_k() {
        // Probabilities 0.5, 0.3, 0.2. After top-k 2 they are renormalised to 0.625 and 0.375,
        // so p = 0.6 keeps one token; without top-k it needs two.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 2, 0.6, 0.0))), vec![0]);
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 0, 0.6, 0.0))), vec![0, 1]);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Probability ratios to the best: 1, 0.5, 0.2, 0.1.
        let logits = [0.2f32.ln(), 0.0, 0.1f32.ln(), 0.5f32.ln()];
        let kept = |m| ids(&kept_tokens(&logits, &params(1.0, 0, 1.0, m)));
        assert_eq!(kept(0.6), vec![1]);
        assert_eq!(kept(0.3), vec![1, 3]);
        assert_eq!(kept(0.15), vec![1, 3, 0]);
        assert_eq!(kept(0.05), vec![1, 3, 0, 2]);
        assert_eq!(kept(1.0), vec![1]);
    }

    #[test]
    fn temperature_scales_before_the_filters() {
        // Ratio of token 1 to token 0 is e^-1 at T = 1 (kept by min_p 0.3), e^-2 at T = 0.5 (dropped).
        let logits = [1.0, 0.0];
        assert_eq!(ids(&kept_tokens(&logits, &params(1.0, 0, 1.0, 0.3))), vec![0, 1]);
        assert_eq!(ids(&kept_tokens(&logits, &params(0.5, 0, 1.0, 0.3))), vec![0]);
        assert_eq!(kept_tokens(&logits, &params(0.5, 0, 1.0, 0.0))[0].1, 2.0);
    }

    #[test]
    fn draw_follows_the_cumulative_probabilities() {
        let kept = [(5, 2f32.ln()), (7, 0.0), (3, 0.0)]; // probabilities 1/2, 1/4, 1/4
        assert_eq!(draw(&kept, 0.0), 5);
        assert_eq!(draw(&kept, 0.49), 5);
        assert_eq!(draw(&kept, 0.51), 7);
        assert_eq!(draw(&kept, 0.74), 7);
        assert_eq!(draw(&kept, 0.76), 3);
        assert_eq!(draw(&kept, 0.999_999), 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed, ..SamplingParams::default() }).unwrap();
            (0..40).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn invalid_parameters_are_refused_by_name() {
        let cases = [
            (SamplingParams { temperature: -1.0, ..SamplingParams::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..SamplingParams::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..SamplingParams::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..SamplingParams::default() }, "top_p"),
            (SamplingParams { min_p: -0.1, ..SamplingParams::default() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..SamplingParams::default() }, "repetition_penalty"),
        ];
        for (p, name) in cases {
            let err = Sampler::new(p).unwrap_err();
            assert!(err.message.starts_with(name), "{}", err.message);
        }
    }

    proptest! {
        #[test]
        fn sampled_id_is_kept_and_greedy_is_argmax(
            logits in proptest::collection::vec(-20.0f32..20.0, 1..60),
            temperature in 0.05f32..3.0,
            top_k in 0usize..8,
            top_p in 0.01f32..=1.0,
            min_p in 0.0f32..=1.0,
            seed in any::<u64>(),
        ) {
            let p = SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty: 1.0, seed };
            let kept = ids(&kept_tokens(&logits, &p));
            prop_assert!(!kept.is_empty());
            let mut sampler = Sampler::new(p).unwrap();
            for _ in 0..5 {
                let id = sampler.sample(&logits, &[]);
                prop_assert!(kept.contains(&id), "sampled {} outside the kept set {:?}", id, kept);
            }
            let best = argmax(&logits);
            prop_assert_eq!(logits[kept[0] as usize], logits[best as usize]);
            prop_assert!(logits.iter().all(|&x| x <= logits[best as usize]));
            prop_assert!(logits[..best as usize].iter().all(|&x| x < logits[best as usize]));
            let mut greedy = Sampler::new(SamplingParams { temperature: 0.0, ..p }).unwrap();
            prop_assert_eq!(greedy.sample(&logits, &[]), best);
        }
    }
}
