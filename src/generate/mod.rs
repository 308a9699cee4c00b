//! Text generation over token ids: prefill the prompt, then sample and step one token at a time.
//!
//! ```text
//! seq    = model.new_sequence()                 (meta tokens already in it)
//! logits = next_token_logits(prompt, seq)       prefill: one pass over the whole prompt
//! loop:  id = sampler.sample(logits, seen)      see [`sampling`]
//!        stop on EOS / max_new_tokens / the callback asking to stop
//!        logits = next_token_logits([id], seq)  one decode step
//! ```
//!
//! Each generated id goes to a callback as soon as it is chosen, so a caller can stream it;
//! the callback can also end generation ([`Flow::Stop`]). That is how the text layer plugs in
//! on top of the id loop: [`text::generate_text`] decodes the ids as they come and ends at the
//! first stop string ([`stop::StopChecker`]).
//!
//! [`generate_batch`] (and [`text::generate_text_batch`]) run several prompts in parallel
//! (rayon), each with its own cache and sampler: a prompt's result is exactly what
//! [`generate`] gives for it alone.

pub mod conversation;
pub mod sampling;
pub mod stop;
pub mod text;

use crate::model::{LayerObserver, Sequence};
use crate::cache_plan::ScalarType;
use crate::error::Result;
use crate::model::Hymba;
use rayon::prelude::*;
use sampling::{Sampler, SamplingParams};
use std::time::Instant;

/// When to stop and how to choose tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// The most tokens to generate (the EOS token, if it ends generation, is not counted).
    pub max_new_tokens: usize,
    /// Stop when the model picks its EOS token (`config.eos_token_id`).
    pub stop_at_eos: bool,
    pub sampling: SamplingParams,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 128, stop_at_eos: true, sampling: SamplingParams::default() }
    }
}

/// What the token callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model chose EOS (not included in the tokens).
    Eos,
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// The callback returned [`Flow::Stop`] (e.g. a stop string appeared).
    Callback,
}

/// Sizes and timings of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Wall time of the prompt pass.
    pub prefill_seconds: f64,
    /// Single-token forward passes after the prefill (one fewer than the generated tokens when
    /// the last token is not fed back).
    pub decode_steps: usize,
    /// Wall time after the prefill: every sampling and every decode step.
    pub decode_seconds: f64,
    /// Bytes of K/V and SSM state the sequence's cache holds at the end.
    pub cache_bytes: usize,
}

impl GenerationStats {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        self.decode_steps as f64 / self.decode_seconds
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated ids, in order (without the prompt, without a final EOS).
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    pub stats: GenerationStats,
}

/// The most tokens [`generate`] reserves K/V room for before it starts.
const RESERVE_TOKENS_LIMIT: usize = 1 << 16;

/// Generate a continuation of `prompt`, calling `on_token` with each new id as it is chosen.
/// Fails on an empty prompt, ids outside the vocabulary, invalid sampling parameters, a
/// non-finite logit, or an error returned by `on_token`.
pub fn generate(
    model: &Hymba,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32) -> Result<Flow>,
) -> Result<Generation> {
    generate_in(model, &mut model.new_sequence(), &[], prompt, options, None, on_token)
}

/// [`generate`] continuing a sequence: `seq` already holds `history` (the ids fed into it
/// after the meta tokens, which the repetition penalty sees too); `prompt` is fed next and the
/// continuation generated; `prefill_observer`, if any, watches the prompt's passes (e.g. to
/// report the progress of a long prompt). On return the sequence holds `history`, `prompt` and
/// [`Generation::tokens_in_sequence`]: a conversation goes on from there
/// ([`conversation::Conversation`]).
pub fn generate_in(
    model: &Hymba,
    seq: &mut Sequence,
    history: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    prefill_observer: Option<&mut dyn LayerObserver>,
    mut on_token: impl FnMut(u32) -> Result<Flow>,
) -> Result<Generation> {
    let mut sampler = Sampler::new(options.sampling)?;
    let eos = model.config.eos_token_id.filter(|_| options.stop_at_eos);
    // Room for every token up front (untouched pages cost no memory), so that decode steps do
    // not reallocate the global layers' K/V; a huge --max-new-tokens just grows it as it goes.
    seq.reserve((prompt.len() + options.max_new_tokens).min(RESERVE_TOKENS_LIMIT));

    let start = Instant::now();
    let mut logits = model.next_token_logits_observed(prompt, seq, prefill_observer)?; // (V)
    let prefill_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut seen = [history, prompt].concat(); // what the repetition penalty sees
    let mut tokens = Vec::new();
    let mut decode_steps = 0;
    let stop_reason = loop {
        if tokens.len() >= options.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        let id = sampler.sample(logits.as_slice().expect("contiguous logits"), &seen);
        if Some(id) == eos {
            break StopReason::Eos;
        }
        tokens.push(id);
        seen.push(id);
        if on_token(id)? == Flow::Stop {
            break StopReason::Callback;
        }
        if tokens.len() < options.max_new_tokens {
            logits = model.next_token_logits(&[id], seq)?;
            decode_steps += 1;
        }
    };
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        prefill_seconds,
        decode_steps,
        decode_seconds: start.elapsed().as_secs_f64(),
        cache_bytes: seq.cache.allocated_scalars().bytes(ScalarType::F32),
    };
    Ok(Generation { tokens, stop_reason, stats })
}

impl Generation {
    /// The generated ids the sequence was fed: every one after the prompt was fed back except
    /// the last (generation had ended), unless the EOS ended it (the EOS is neither in
    /// [`Generation::tokens`] nor fed).
    pub fn tokens_in_sequence(&self) -> &[u32] {
        let fed = match self.stop_reason {
            StopReason::Eos => self.tokens.len(),
            StopReason::MaxNewTokens | StopReason::Callback => self.tokens.len().saturating_sub(1),
        };
        &self.tokens[..fed]
    }
}

/// [`generate`] for several prompts in parallel, each with its own cache and sampler (all
/// seeded with `options.sampling.seed`). `make_on_token(i)` builds the callback of prompt `i`.
/// Results are in prompt order; one prompt failing does not stop the others.
pub fn generate_batch<F, C>(
    model: &Hymba,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    make_on_token: F,
) -> Vec<Result<Generation>>
where
    F: Fn(usize) -> C + Sync,
    C: FnMut(u32) -> Result<Flow>,
{
    prompts
        .par_iter()
        .enumerate()
        .map(|(i, prompt)| generate(model, prompt, options, make_on_token(i)))
        .collect()
}
