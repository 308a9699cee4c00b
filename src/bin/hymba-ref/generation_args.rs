//! The flags `generate` and `chat` share: how many tokens, how to sample them, when to stop,
//! how many threads. A bad value is refused by its value parser (exit code 2, flag and range
//! named); negative numbers reach the parser (`allow_negative_numbers`), so `-n -3` is refused
//! as a value, not as an unknown flag.

use crate::args::{count, number_where, MAX_TOKENS};
use clap::{ArgAction, Args};
use hymba_ref::config::{HymbaConfig, RopeScaling};
use hymba_ref::features::generate::sampling::SamplingParams;
use hymba_ref::features::generate::GenerateOptions;
use hymba_ref::{Error, Result};
use std::path::Path;

#[derive(Args)]
pub struct GenerationArgs {
    /// The most tokens to generate per prompt (or chat turn).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 128, value_parser = count::<0, MAX_TOKENS>, allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    // Sampling: each flag overrides the model's generation_config.json (greedy if it has none).
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, value_name = "T", value_parser = non_negative, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens only (0 = all).
    #[arg(long, value_name = "K", value_parser = count::<0, MAX_TOKENS>, allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probability sums to P (1 = all).
    #[arg(long, value_name = "P", value_parser = probability_above_zero, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, value_name = "P", value_parser = probability, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Penalise tokens already in the sequence (> 1 discourages repeats; 1 = off).
    #[arg(long, value_name = "R", value_parser = positive, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (the same seed gives the same output).
    #[arg(short = 's', long, value_name = "S", default_value_t = 0, value_parser = crate::args::seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Stop when this text appears (not printed); give several after one flag or repeat it.
    #[arg(long, value_name = "STR", num_args = 1.., action = ArgAction::Append)]
    pub stop: Vec<String>,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub no_eos_stop: bool,
    /// Worker threads (default: one per core).
    #[arg(short = 't', long, value_name = "N", value_parser = crate::args::threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Compute the meta-token prefix instead of reading it from the cache directory
    /// ($XDG_CACHE_HOME/hymba-ref, else ~/.cache/hymba-ref), and do not write it there.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Quantize the (bf16 or f32) weights at load to this block format: q8_0 or q4_0 (see
    /// docs/QUANTIZATION.md). The time it takes is shown in the timing line.
    #[arg(long, value_name = "FORMAT", value_parser = crate::load::weights_format)]
    pub weights: Option<hymba_ref::kernels::quant::QuantType>,
}

impl GenerationArgs {
    /// Start the global thread pool with `--threads` workers (rayon's default otherwise).
    pub fn start_thread_pool(&self) -> Result<()> {
        let Some(n) = self.threads else { return Ok(()) };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::input(format!("--threads {n}: cannot start the thread pool: {e}")))
    }

    /// The options: each sampling flag given, else the model's `generation_config.json`.
    pub fn options(&self, dir: &Path) -> Result<GenerateOptions> {
        let defaults = SamplingParams::from_generation_config(dir)?;
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            stop_at_eos: !self.no_eos_stop,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(defaults.temperature),
                top_k: self.top_k.unwrap_or(defaults.top_k),
                top_p: self.top_p.unwrap_or(defaults.top_p),
                min_p: self.min_p.unwrap_or(defaults.min_p),
                repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
                seed: self.seed,
            },
        })
    }
}

/// A sampling parameter's value parser: a finite number accepted by `ok` (described by `range`).
fn sampling(text: &str, ok: impl Fn(f64) -> bool, range: &str) -> std::result::Result<f32, String> {
    number_where(text, |v| ok(v) && (v as f32).is_finite(), range).map(|v| v as f32)
}

fn non_negative(text: &str) -> std::result::Result<f32, String> {
    sampling(text, |v| v >= 0.0, "≥ 0")
}

fn positive(text: &str) -> std::result::Result<f32, String> {
    sampling(text, |v| v > 0.0, "> 0")
}

fn probability(text: &str) -> std::result::Result<f32, String> {
    sampling(text, |v| (0.0..=1.0).contains(&v), "in [0, 1]")
}

fn probability_above_zero(text: &str) -> std::result::Result<f32, String> {
    sampling(text, |v| v > 0.0 && v <= 1.0, "in (0, 1]")
}

/// Warn on stderr when a prompt of `prompt_tokens` plus `max_new_tokens` reaches positions past
/// the length the model is configured for, saying what happens there.
pub fn warn_past_trained_length(cfg: &HymbaConfig, prompt_tokens: usize, max_new_tokens: usize) {
    if let Some(warning) = past_trained_length(cfg, prompt_tokens + max_new_tokens) {
        eprintln!("warning: the prompt ({prompt_tokens} tokens) + --max-new-tokens {max_new_tokens} {warning}");
    }
}

/// What happens to a sequence of `tokens` (meta tokens not counted) past the configured length;
/// `None` when it fits or the config names no length (`rope_type` default, or no RoPE).
pub fn past_trained_length(cfg: &HymbaConfig, tokens: usize) -> Option<String> {
    let m = cfg.num_memory_tokens;
    let positions = m + tokens;
    match cfg.rope?.scaling {
        RopeScaling::Ntk { max_position_embeddings: max, .. } if positions > max => Some(format!(
            "+ {m} meta tokens make {positions} positions, past max_position_embeddings = {max}. \
             Generation goes on, but positions from {max} on are rotated (RoPE, fixed NTK base) by \
             angles the model was not trained on: expect the text to degrade there."
        )),
        RopeScaling::DynamicNtk { orig_max_position_embeddings: orig } if positions > orig => Some(format!(
            "+ {m} meta tokens make {positions} positions, past orig_max_position_embeddings = {orig}. \
             Generation goes on; from there the RoPE base grows with the length (dynamic NTK) while \
             cached keys keep the rotation they got, so tokens past it differ from what one full \
             forward pass over the same text would give (docs/MODEL.md §4 and §8)."
        )),
        _ => None,
    }
}
