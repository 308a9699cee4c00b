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
//! [`generate_batch`] (and [`text::generate_text_batch`]) run several prompts together in one
//! [`Batch`] (continuous batching: each prompt joins after its own prefill and leaves when it
//! stops), each with its own cache and sampler: a prompt's result is exactly what [`generate`]
//! gives for it alone. Its decode step (`Decoding`: one step of every member, each sampling
//! from its row and feeding its next id or leaving) is the server's too ([`crate::features::serve`]).

pub mod conversation;
pub mod sampling;
pub mod stop;
pub mod text;

use crate::state::cache_plan::{CachePlan, ScalarType};
use crate::base::error::{Error, Result};
use crate::model::{Batch, Hymba, LayerObserver, Sequence, SequenceId};
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

/// The most tokens [`generate`] reserves K/V room for before it starts.
pub(crate) const RESERVE_TOKENS_LIMIT: usize = 1 << 16;

/// What to do after a step's logits.
pub(crate) enum Next {
    /// Feed this id in one more decode step.
    Feed(u32),
    Stop(StopReason),
}

/// One sequence's side of the loop, the same alone ([`generate`]) and in a batch
/// ([`generate_batch`], and the server's scheduler, [`crate::features::serve`]): sampling, the stop rules,
/// the callback, the counts.
pub(crate) struct Decoder<C> {
    sampler: Sampler,
    eos: Option<u32>,
    max_new_tokens: usize,
    /// History + prompt + generated: what the repetition penalty sees.
    seen: Vec<u32>,
    tokens: Vec<u32>,
    on_token: C,
    prompt_tokens: usize,
    prefill_seconds: f64,
    decode_steps: usize,
    /// When the prefill ended.
    decode_start: Instant,
}

impl<C: FnMut(u32) -> Result<Flow>> Decoder<C> {
    /// For `prompt` fed after `history`, its prefill took `prefill_seconds` and just ended.
    pub(crate) fn new(
        model: &Hymba,
        history: &[u32],
        prompt: &[u32],
        options: &GenerateOptions,
        prefill_seconds: f64,
        on_token: C,
    ) -> Result<Decoder<C>> {
        Ok(Decoder {
            sampler: Sampler::new(options.sampling)?,
            eos: model.config.eos_token_id.filter(|_| options.stop_at_eos),
            max_new_tokens: options.max_new_tokens,
            seen: [history, prompt].concat(),
            tokens: Vec::new(),
            on_token,
            prompt_tokens: prompt.len(),
            prefill_seconds,
            decode_steps: 0,
            decode_start: Instant::now(),
        })
    }

    /// Given the logits after the last fed id: sample the next id, hand it to the callback, and
    /// say whether to feed it or stop (and why).
    pub(crate) fn next(&mut self, logits: &[f32]) -> Result<Next> {
        if self.tokens.len() >= self.max_new_tokens {
            return Ok(Next::Stop(StopReason::MaxNewTokens));
        }
        let id = self.sampler.sample(logits, &self.seen);
        if Some(id) == self.eos {
            return Ok(Next::Stop(StopReason::Eos));
        }
        self.tokens.push(id);
        self.seen.push(id);
        if (self.on_token)(id)? == Flow::Stop {
            return Ok(Next::Stop(StopReason::Callback));
        }
        if self.tokens.len() >= self.max_new_tokens {
            return Ok(Next::Stop(StopReason::MaxNewTokens)); // no step for a token nobody reads
        }
        self.decode_steps += 1;
        Ok(Next::Feed(id))
    }

    pub(crate) fn finish(self, stop_reason: StopReason, seq: &Sequence) -> Generation {
        let stats = GenerationStats {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.tokens.len(),
            prefill_seconds: self.prefill_seconds,
            decode_steps: self.decode_steps,
            decode_seconds: self.decode_start.elapsed().as_secs_f64(),
            cache_bytes: seq.cache.allocated_scalars().bytes(ScalarType::F32),
        };
        Generation { tokens: self.tokens, stop_reason, stats }
    }
}

/// Sequences decoding together in one [`Batch`], each with its [`Decoder`], what its owner keeps
/// beside it (`T`), and the id it is fed at the next step: the decode loop of [`generate_batch`]
/// and of the server's scheduler ([`crate::features::serve`]), one step at a time.
pub(crate) struct Decoding<T, C> {
    batch: Batch,
    /// In the batch's order: member i reads row i of a step's logits.
    members: Vec<Member<T, C>>,
    next_ids: Vec<u32>,
}

struct Member<T, C> {
    owner: T,
    id: SequenceId,
    decoder: Decoder<C>,
}

/// A member that left the batch: its owner's part, its decoder and sequence (for
/// [`Decoder::finish`]), and why it stopped, or the error that ended it.
pub(crate) struct Left<T, C> {
    pub owner: T,
    pub decoder: Decoder<C>,
    pub seq: Sequence,
    pub outcome: Result<StopReason>,
}

impl<T, C: FnMut(u32) -> Result<Flow>> Decoding<T, C> {
    pub(crate) fn new() -> Self {
        Decoding { batch: Batch::new(), members: Vec::new(), next_ids: Vec::new() }
    }

    /// `seq`, prefilled, joins; `first` is the id its decoder chose after the prefill.
    pub(crate) fn join(&mut self, seq: Sequence, decoder: Decoder<C>, first: u32, owner: T) {
        self.members.push(Member { owner, id: self.batch.add(seq), decoder });
        self.next_ids.push(first);
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn owners(&self) -> impl Iterator<Item = &T> {
        self.members.iter().map(|m| &m.owner)
    }

    /// Bytes of K/V and SSM state the members' caches hold (as f32).
    pub(crate) fn cache_bytes(&self) -> usize {
        self.batch.cache_bytes()
    }

    /// One decode step of every member; each reads its row of the logits and feeds its next id,
    /// or leaves (returned, in batch order). A failed step (a non-finite logit) ends every member.
    pub(crate) fn step(&mut self, model: &Hymba) -> Vec<Left<T, C>> {
        let step = self.batch.step(model, &self.next_ids); // (B, V), read in place
        let mut left = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            let next = match &step {
                Ok(logits) => member.decoder.next(logits.row(i).as_slice().expect("contiguous logits")),
                Err(e) => Err(Error::new(e.kind, e.message.clone())),
            };
            match next {
                Ok(Next::Feed(id)) => self.next_ids[i] = id,
                Ok(Next::Stop(reason)) => left.push((i, Ok(reason))),
                Err(e) => left.push((i, Err(e))),
            }
        }
        self.remove_each(left)
    }

    /// The members whose owner `leaves` picks leave now, wherever they are in their reply (their
    /// outcome: stopped from outside, [`StopReason::Callback`]).
    pub(crate) fn remove_where(&mut self, leaves: impl Fn(&T) -> bool) -> Vec<Left<T, C>> {
        let picked: Vec<usize> = (0..self.members.len()).filter(|&i| leaves(&self.members[i].owner)).collect();
        self.remove_each(picked.into_iter().map(|i| (i, Ok(StopReason::Callback))).collect())
    }

    /// The members at `leaving`'s indices (ascending) leave with their outcomes; returned in
    /// batch order, the others keep theirs.
    fn remove_each(&mut self, leaving: Vec<(usize, Result<StopReason>)>) -> Vec<Left<T, C>> {
        let mut gone: Vec<Left<T, C>> = leaving.into_iter().rev().map(|(i, outcome)| self.remove(i, outcome)).collect();
        gone.reverse();
        gone
    }

    /// Member `i` leaves the batch, the others keep their order.
    fn remove(&mut self, i: usize, outcome: Result<StopReason>) -> Left<T, C> {
        let Member { owner, id, decoder } = self.members.remove(i);
        self.next_ids.remove(i);
        let seq = self.batch.remove(id).expect("a member of the batch");
        Left { owner, decoder, seq, outcome }
    }
}

/// Feed `prompt` to `seq` (the prefill, watched by `observer` if any), K/V room reserved for
/// every token it may reach; the logits after the prompt, and the prefill's wall time.
fn prefill(
    model: &Hymba,
    seq: &mut Sequence,
    prompt: &[u32],
    options: &GenerateOptions,
    observer: Option<&mut dyn LayerObserver>,
) -> Result<(Vec<f32>, f64)> {
    // Room for every token up front (untouched pages cost no memory), so that decode steps do
    // not reallocate the global layers' K/V; a huge --max-new-tokens just grows it as it goes.
    seq.reserve((prompt.len() + options.max_new_tokens).min(RESERVE_TOKENS_LIMIT));
    let start = Instant::now();
    let logits = model.next_token_logits_observed(prompt, seq, observer)?.to_vec(); // (V)
    Ok((logits, start.elapsed().as_secs_f64()))
}

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
    on_token: impl FnMut(u32) -> Result<Flow>,
) -> Result<Generation> {
    Sampler::new(options.sampling)?; // invalid parameters fail before the prefill
    let (first_logits, prefill_seconds) = prefill(model, seq, prompt, options, prefill_observer)?;
    let mut decoder = Decoder::new(model, history, prompt, options, prefill_seconds, on_token)?;
    let mut next = decoder.next(&first_logits)?;
    let stop_reason = loop {
        match next {
            Next::Feed(id) => {
                let logits = model.next_token_logits(&[id], seq)?; // (V)
                next = decoder.next(logits.as_slice().expect("contiguous logits"))?;
            }
            Next::Stop(reason) => break reason,
        }
    };
    Ok(decoder.finish(stop_reason, seq))
}

/// How many sequences [`generate_batch`] decodes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// The most sequences in the batch at once.
    pub max_batch: usize,
    /// The most cache bytes (f32) the batch's sequences may reach together: a prompt joins only
    /// when its cache at its longest (prompt + `max_new_tokens`, [`CachePlan`]) fits beside
    /// the members' longest; one sequence always runs. `None`: no bound.
    pub max_cache_bytes: Option<usize>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: usize::MAX, max_cache_bytes: None }
    }
}

/// What a whole [`generate_batch`] run did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchStats {
    pub generated_tokens: usize,
    /// Wall time of the run, prefills included.
    pub seconds: f64,
    /// Batched decode steps.
    pub steps: usize,
    /// The most sequences decoding at once.
    pub peak_batch: usize,
    /// The most bytes the members' caches held at once (f32, measured after each step).
    pub peak_cache_bytes: usize,
}

impl BatchStats {
    /// Generated tokens per second of wall time, over all prompts.
    pub fn tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.seconds
    }
}

/// What [`generate_batch`] keeps beside a prompt's decoder: which prompt it is, and its cache at
/// its longest ([`CachePlan`]), what it counts against the memory bound.
struct Joined {
    prompt: usize,
    cache_bound: usize,
}

/// [`generate`] for several prompts, decoding them together in one [`Batch`] (continuous
/// batching): a prompt joins, in order, after its own prefill, as soon as `batching` allows, and
/// leaves at EOS, a callback stop, or `max_new_tokens`. Every prompt's tokens are exactly what
/// [`generate`] gives it alone (each sequence's logits are bit-identical in the batch; each has
/// its own sampler, seeded with `options.sampling.seed`). `make_on_token(i)` builds the callback
/// of prompt `i`. Results are in prompt order; a prompt's error (its prefill, its callback) fails
/// only that prompt, a failing batch step (a non-finite logit) the prompts in it.
pub fn generate_batch<C: FnMut(u32) -> Result<Flow>>(
    model: &Hymba,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    batching: &BatchOptions,
    mut make_on_token: impl FnMut(usize) -> C,
) -> (Vec<Result<Generation>>, BatchStats) {
    let start = Instant::now();
    let mut results: Vec<Option<Result<Generation>>> = prompts.iter().map(|_| None).collect();
    let mut stats = BatchStats::default();
    let (mut decoding, mut waiting) = (Decoding::<Joined, C>::new(), 0..prompts.len());
    loop {
        // Join: prompts in order, while the batch has room.
        while decoding.len() < batching.max_batch {
            let Some(prompt) = waiting.clone().next() else { break };
            let bound = cache_bound(model, &prompts[prompt], options);
            let reserved: usize = decoding.owners().map(|m| m.cache_bound).sum();
            let fits = batching.max_cache_bytes.is_none_or(|max| reserved.saturating_add(bound) <= max);
            if !fits && !decoding.is_empty() {
                break;
            }
            waiting.next();
            match join(model, &prompts[prompt], options, make_on_token(prompt)) {
                Ok((seq, decoder, Next::Feed(id))) => decoding.join(seq, decoder, id, Joined { prompt, cache_bound: bound }),
                Ok((seq, decoder, Next::Stop(reason))) => results[prompt] = Some(Ok(decoder.finish(reason, &seq))),
                Err(e) => results[prompt] = Some(Err(e)),
            }
        }
        if decoding.is_empty() {
            break;
        }
        stats.peak_batch = stats.peak_batch.max(decoding.len());
        // One step of every member; those that stopped leave.
        let left = decoding.step(model);
        stats.steps += 1;
        // The caches after the step, those of the members that just left included.
        let leaving: usize = left.iter().map(|l| l.seq.cache.allocated_scalars().bytes(ScalarType::F32)).sum();
        stats.peak_cache_bytes = stats.peak_cache_bytes.max(decoding.cache_bytes() + leaving);
        for Left { owner, decoder, seq, outcome } in left {
            results[owner.prompt] = Some(outcome.map(|reason| decoder.finish(reason, &seq)));
        }
    }
    let results: Vec<Result<Generation>> = results.into_iter().map(|r| r.expect("every prompt ran")).collect();
    stats.generated_tokens = results.iter().flatten().map(|g| g.stats.generated_tokens).sum();
    stats.seconds = start.elapsed().as_secs_f64();
    (results, stats)
}

/// A prompt's prefill, alone, and its first sampled id: feed it in the batch, or stop already.
fn join<C: FnMut(u32) -> Result<Flow>>(
    model: &Hymba,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: C,
) -> Result<(Sequence, Decoder<C>, Next)> {
    Sampler::new(options.sampling)?;
    let mut seq = model.new_sequence();
    let (logits, prefill_seconds) = prefill(model, &mut seq, prompt, options, None)?;
    let mut decoder = Decoder::new(model, &[], prompt, options, prefill_seconds, on_token)?;
    let next = decoder.next(&logits)?;
    Ok((seq, decoder, next))
}

/// A prompt's cache bytes (f32) at its longest, prompt + `max_new_tokens` tokens ([`CachePlan`]):
/// what it counts against [`BatchOptions::max_cache_bytes`]; `usize::MAX` if that does not fit
/// in a `usize`.
pub fn cache_bound(model: &Hymba, prompt: &[u32], options: &GenerateOptions) -> usize {
    let longest = prompt.len().saturating_add(options.max_new_tokens);
    CachePlan::new(&model.config, longest).map_or(usize::MAX, |plan| plan.size.bytes(ScalarType::F32))
}
