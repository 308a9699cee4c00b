//! `hymba-ref generate`: continue a prompt given as token ids, printing the generated ids as a
//! JSON array on stdout; timings and the cache size go to stderr. (Text prompts, chat, stop
//! strings and text output come with the tokenizer.)

use crate::args::parse_id_list;
use clap::Args;
use hymba_ref::generate::sampling::SamplingParams;
use hymba_ref::generate::{generate, Flow, GenerateOptions, Generation, GenerationStats, StopReason};
use hymba_ref::model::Hymba;
use hymba_ref::{Error, ErrorKind, Result};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the bundled model lives: used when `--model` is not given.
const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default");

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json and safetensors weights). Default: the bundled model.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Comma-separated prompt token ids (e.g. 1,415,2936), fed as they are.
    #[arg(long, value_name = "IDS")]
    ids: String,
    /// Print the generated ids as a JSON array (the only output until the tokenizer lands).
    #[arg(long, required = true)]
    print_ids: bool,
    /// The most tokens to generate per prompt.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, value_name = "T", default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample among the K most likely tokens only (0 = all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probability sums to P (1 = all).
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = probability_above_zero, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = probability, allow_negative_numbers = true)]
    min_p: f32,
    /// Penalise tokens already in the sequence (> 1 discourages repeats; 1 = off).
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = positive, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Seed of the sampler (the same seed gives the same output).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    no_eos_stop: bool,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    threads: Option<usize>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::input(format!("--threads {n}: cannot start the thread pool: {e}")))?;
    }
    let ids = parse_id_list(&args.ids)?;
    let dir = model_dir(args.model.as_deref())?;
    let model = Hymba::from_dir(&dir)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_at_eos: !args.no_eos_stop,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
    };
    let generation = generate(&model, &ids, &options, |_| Ok(Flow::Continue))?;
    finish_output(&mut io::stdout().lock(), &generation, args.print_ids)?;
    eprintln!("{}", stats_line(&generation.stats, generation.stop_reason));
    Ok(())
}

/// The checkpoint directory: `--model`, else the bundled model; it must exist.
fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    let dir = model.map_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR), Path::to_path_buf);
    if dir.is_dir() {
        return Ok(dir);
    }
    let what = if model.is_some() { "model directory" } else { "bundled model directory (pass --model DIR)" };
    Err(Error::new(ErrorKind::Io, format!("{what} {} does not exist", dir.display())))
}

/// After a streamed generation: the final newline, or the ids as JSON.
fn finish_output(out: &mut impl Write, generation: &Generation, print_ids: bool) -> Result<()> {
    let line = if print_ids { ids_json(&generation.tokens) } else { String::new() };
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(stdout_error)
}

fn ids_json(ids: &[u32]) -> String {
    serde_json::to_string(ids).expect("a list of integers serialises")
}

/// `prefill: 12 tokens in 0.031 s (387.1 tok/s) | decode: 30 tokens in 0.402 s (74.6 tok/s) | ...`
fn stats_line(s: &GenerationStats, reason: StopReason) -> String {
    let reason = match reason {
        StopReason::Eos => "end of sequence",
        StopReason::MaxNewTokens => "max new tokens",
        StopReason::Callback => "stop string",
    };
    format!(
        "prefill: {} tokens in {:.3} s ({:.1} tok/s) | decode: {} steps in {:.3} s ({:.1} tok/s) | \
         generated {} tokens, stopped by {reason} | cache: {} bytes ({:.2} MB)",
        s.prompt_tokens,
        s.prefill_seconds,
        s.prefill_tokens_per_second(),
        s.decode_steps,
        s.decode_seconds,
        s.decode_tokens_per_second(),
        s.generated_tokens,
        s.cache_bytes,
        s.cache_bytes as f64 / 1e6
    )
}

fn stdout_error(e: io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("cannot write to stdout: {e}"))
}

// Value checks for the sampling flags: a bad value is a usage error (exit code 2).

fn number(text: &str) -> std::result::Result<f32, String> {
    text.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| "not a finite number".to_string())
}

fn non_negative(text: &str) -> std::result::Result<f32, String> {
    number(text).and_then(|v| if v >= 0.0 { Ok(v) } else { Err("must be ≥ 0".into()) })
}

fn positive(text: &str) -> std::result::Result<f32, String> {
    number(text).and_then(|v| if v > 0.0 { Ok(v) } else { Err("must be > 0".into()) })
}

fn probability(text: &str) -> std::result::Result<f32, String> {
    number(text).and_then(|v| if (0.0..=1.0).contains(&v) { Ok(v) } else { Err("must be in [0, 1]".into()) })
}

fn probability_above_zero(text: &str) -> std::result::Result<f32, String> {
    number(text).and_then(|v| if v > 0.0 && v <= 1.0 { Ok(v) } else { Err("must be in (0, 1]".into()) })
}

fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number ≥ 1".into()),
    }
}
