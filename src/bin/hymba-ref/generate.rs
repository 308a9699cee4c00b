//! `hymba-ref generate`: continue a prompt, streaming the text to stdout as it is decoded.
//!
//! The prompt comes from `--prompt`, `--ids` (token ids, no tokenizer involved), stdin, or
//! `--prompts-file` (one prompt per line, decoded together as one batch: continuous batching,
//! `--batch-size` sequences at once within `--max-cache-gb` of cache; printed in input order).
//! `--chat` / `--system` wrap a text prompt in the Instruct chat format first. Timings and the
//! cache size go to stderr, so stdout holds only the generated text (or, with `--print-ids`, the
//! generated ids as JSON arrays, one line per prompt).

use crate::args::parse_id_list;
use clap::{ArgAction, Args};
use hymba_ref::generate::sampling::SamplingParams;
use hymba_ref::generate::text::{generate_text, generate_text_batch};
use hymba_ref::generate::{generate, BatchOptions, BatchStats, Flow, GenerateOptions, Generation, GenerationStats, StopReason};
use hymba_ref::files;
use hymba_ref::model::Hymba;
use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use hymba_ref::{Error, ErrorKind, Result};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the bundled model lives (the demo model, `reference/demo-model`): used when `--model`
/// is not given.
const DEFAULT_MODEL_DIR: &str = hymba_ref::DEFAULT_MODEL_DIR;

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, safetensors weights, tokenizer files).
    /// Default: the bundled model.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The prompt text. Without --prompt, --prompts-file or --ids, the prompt is read from stdin.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["prompts_file", "ids"])]
    prompt: Option<String>,
    /// A file with one prompt per line, decoded together as one batch; outputs in input order.
    #[arg(long, value_name = "FILE", conflicts_with = "ids")]
    prompts_file: Option<PathBuf>,
    /// With --prompts-file: the most prompts decoding at once (default: all of them). Each
    /// prompt joins after its own prefill and leaves when it stops.
    #[arg(long, value_name = "N", value_parser = at_least_one, requires = "prompts_file", conflicts_with_all = ["prompt", "ids"])]
    batch_size: Option<usize>,
    /// With --prompts-file: the most cache memory the batch may reach, in GB (10⁹ bytes, f32
    /// cache); a prompt joins only when its cache at prompt + --max-new-tokens tokens fits
    /// (one prompt always runs). Default: no bound.
    #[arg(long, value_name = "GB", value_parser = positive, allow_negative_numbers = true, requires = "prompts_file", conflicts_with_all = ["prompt", "ids"])]
    max_cache_gb: Option<f32>,
    /// Wrap each prompt as a user message in the Instruct chat format.
    #[arg(long, conflicts_with = "ids")]
    chat: bool,
    /// A system message for the chat format (implies --chat).
    #[arg(long, value_name = "TEXT", conflicts_with = "ids")]
    system: Option<String>,
    /// Comma-separated prompt token ids (e.g. 1,415,2936), fed as they are.
    #[arg(long, value_name = "IDS")]
    ids: Option<String>,
    /// Print the generated ids as a JSON array (one line per prompt) instead of the text.
    #[arg(long)]
    print_ids: bool,
    /// The most tokens to generate per prompt.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_new_tokens: usize,
    // Sampling: each flag overrides the model's generation_config.json (greedy if it has none).
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, value_name = "T", value_parser = non_negative, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample among the K most likely tokens only (0 = all).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probability sums to P (1 = all).
    #[arg(long, value_name = "P", value_parser = probability_above_zero, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, value_name = "P", value_parser = probability, allow_negative_numbers = true)]
    min_p: Option<f32>,
    /// Penalise tokens already in the sequence (> 1 discourages repeats; 1 = off).
    #[arg(long, value_name = "R", value_parser = positive, allow_negative_numbers = true)]
    repetition_penalty: Option<f32>,
    /// Seed of the sampler (the same seed gives the same output).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (not printed); give several after one flag or repeat it.
    #[arg(long, value_name = "STR", num_args = 1.., action = ArgAction::Append)]
    stop: Vec<String>,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    no_eos_stop: bool,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    threads: Option<usize>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if let Some(n) = args.threads {
        crate::args::check_threads(n)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::input(format!("--threads {n}: cannot start the thread pool: {e}")))?;
    }
    let ids = args.ids.as_deref().map(parse_id_list).transpose()?;
    let dir = model_dir(args.model.as_deref())?;
    let model = Hymba::from_dir(&dir)?;
    let defaults = SamplingParams::from_generation_config(&dir)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_at_eos: !args.no_eos_stop,
        sampling: SamplingParams {
            temperature: args.temperature.unwrap_or(defaults.temperature),
            top_k: args.top_k.unwrap_or(defaults.top_k),
            top_p: args.top_p.unwrap_or(defaults.top_p),
            min_p: args.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: args.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            seed: args.seed,
        },
    };
    // Ids in and ids out need no tokenizer; anything with text does.
    if let Some(ids) = ids.as_deref().filter(|_| args.print_ids && args.stop.is_empty()) {
        let generation = generate(&model, ids, &options, |_| Ok(Flow::Continue))?;
        finish_output(&mut io::stdout().lock(), &generation, true)?;
        eprintln!("{}", stats_line(&generation.stats, generation.stop_reason));
        return Ok(());
    }
    let tokenizer = Tokenizer::from_dir(&dir)?;
    tokenizer.check_model_vocab(model.config.vocab_size, &dir)?;
    let prompts = match ids {
        Some(ids) => Prompts::One(ids),
        None => text_prompts(&args, &tokenizer)?,
    };
    match prompts {
        Prompts::One(prompt) => {
            let mut out = io::stdout().lock();
            let generation = generate_text(&model, &tokenizer, &prompt, &options, &args.stop, |text| {
                if !args.print_ids {
                    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(stdout_error)?;
                }
                Ok(())
            })?;
            finish_output(&mut out, &generation, args.print_ids)?;
            eprintln!("{}", stats_line(&generation.stats, generation.stop_reason));
            Ok(())
        }
        Prompts::Many(prompts) => {
            let batching = BatchOptions {
                max_batch: args.batch_size.unwrap_or(usize::MAX),
                max_cache_bytes: args.max_cache_gb.map(|gb| (gb as f64 * 1e9) as usize),
            };
            let (results, stats) = generate_text_batch(&model, &tokenizer, &prompts, &options, &batching, &args.stop);
            print_batch(&results, args.print_ids, &stats)
        }
    }
}

/// The checkpoint directory: `--model`, else the bundled model; it must exist.
fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    let dir = model.map_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR), Path::to_path_buf);
    if dir.is_dir() {
        return Ok(dir);
    }
    let message = match model {
        Some(_) => format!("model directory {} does not exist", dir.display()),
        None => format!("the bundled model directory {} does not exist; pass --model DIR", dir.display()),
    };
    Err(Error::new(ErrorKind::Io, message))
}

/// One prompt (streamed) or a file's worth (decoded together as one batch, printed at the end).
enum Prompts {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// The text prompts (from --prompts-file, --prompt or stdin), chat-wrapped if asked, encoded.
fn text_prompts(args: &GenerateArgs, tokenizer: &Tokenizer) -> Result<Prompts> {
    let encode = |text: &str| {
        let text = if args.chat || args.system.is_some() { chat_prompt(args.system.as_deref(), text) } else { text.to_string() };
        tokenizer.encode(&text, tokenizer.add_bos_token())
    };
    if let Some(path) = &args.prompts_file {
        let text = files::read_text_capped(path, files::TEXT)?;
        let prompts: Vec<Vec<u32>> = text.lines().map(encode).collect();
        if prompts.is_empty() {
            return Err(Error::input(format!("{} holds no prompts", path.display())));
        }
        return Ok(Prompts::Many(prompts));
    }
    let text = match &args.prompt {
        Some(text) => text.clone(),
        None => {
            let text = files::utf8(files::read_stdin_capped(files::TEXT)?, "stdin")?;
            // `echo text |` adds a newline that is not part of the prompt.
            let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            text.to_string()
        }
    };
    Ok(Prompts::One(encode(&text)))
}

/// The Instruct chat format for one user message, with the assistant header to reply after.
fn chat_prompt(system: Option<&str>, user: &str) -> String {
    let mut messages: Vec<ChatMessage> = system.map(|s| ChatMessage::new(Role::System, s)).into_iter().collect();
    messages.push(ChatMessage::new(Role::User, user));
    render_chat(&messages, true)
}

/// After a streamed generation: the final newline, or the ids as JSON.
fn finish_output(out: &mut impl Write, generation: &Generation, print_ids: bool) -> Result<()> {
    let line = if print_ids { ids_json(&generation.tokens) } else { String::new() };
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(stdout_error)
}

/// Every output in prompt order (text under a `=== prompt i ===` header, or one JSON line), the
/// errors of failed prompts, and the stats on stderr.
fn print_batch(results: &[Result<(Generation, String)>], print_ids: bool, stats: &BatchStats) -> Result<()> {
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for (i, result) in results.iter().enumerate() {
        let n = i + 1;
        match result {
            Ok((generation, text)) => {
                let shown = if print_ids { ids_json(&generation.tokens) } else { format!("=== prompt {n} ===\n{text}") };
                writeln!(out, "{shown}").map_err(stdout_error)?;
                eprintln!("prompt {n}: {}", stats_line(&generation.stats, generation.stop_reason));
            }
            Err(e) => {
                failed += 1;
                if print_ids {
                    writeln!(out, "null").map_err(stdout_error)?;
                } else {
                    writeln!(out, "=== prompt {n} ===\n(failed)").map_err(stdout_error)?;
                }
                eprintln!("prompt {n}: error: {e}");
            }
        }
    }
    out.flush().map_err(stdout_error)?;
    eprintln!(
        "batch: {} prompts, {} tokens generated in {:.3} s ({:.1} tok/s overall) | {} steps, up to {} \
         sequences at once | peak cache: {} bytes ({:.2} MB)",
        results.len(),
        stats.generated_tokens,
        stats.seconds,
        stats.tokens_per_second(),
        stats.steps,
        stats.peak_batch,
        stats.peak_cache_bytes,
        stats.peak_cache_bytes as f64 / 1e6
    );
    if failed > 0 {
        return Err(Error::input(format!("{failed} of {} prompts failed (see above)", results.len())));
    }
    Ok(())
}

fn ids_json(ids: &[u32]) -> String {
    serde_json::to_string(ids).expect("a list of integers serialises")
}

/// `prefill: 12 tokens in 0.031 s (387.1 tok/s) | decode: 30 steps in 0.402 s (74.6 tok/s) | ...`
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
