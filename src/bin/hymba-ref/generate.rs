//! `hymba-ref generate`: continue a prompt, streaming the text to stdout as it is decoded.
//!
//! The prompt comes from `--prompt`, `--ids` (token ids, no tokenizer involved), stdin, or
//! `--prompts-file` (one prompt per line, decoded together as one batch: continuous batching,
//! `--batch-size` sequences at once within `--max-cache-gb` of cache, by default within half the
//! memory available; printed in input order).
//! `--chat` / `--system` wrap a text prompt in the Instruct chat format first. Timings and the
//! cache size go to stderr, so stdout holds only the generated text (or, with `--print-ids`, the
//! generated ids as JSON arrays, one line per prompt).

use crate::args::{counted, model_dir, TokenIds};
use crate::available_memory::available_memory;
use crate::generation_args::{warn_past_trained_length, GenerationArgs};
use crate::load::load_model;
use clap::Args;
use hymba_ref::features::generate::text::{generate_text_batch, generate_text_in};
use hymba_ref::model::pass::MAX_ROWS_PER_PASS;
use hymba_ref::model::{Hymba, LayerObserver, LayerTrace};
use hymba_ref::features::generate::{cache_bound, generate_in, BatchOptions, BatchStats, Flow, GenerateOptions, Generation, GenerationStats, StopReason};
use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use hymba_ref::base::files;
use hymba_ref::{Error, ErrorKind, Result};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, safetensors weights, tokenizer files) or its
    /// config.json. Default: the bundled model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The prompt text. Without --prompt, --prompts-file or --ids, the prompt is read from stdin.
    #[arg(short = 'p', long, value_name = "TEXT", conflicts_with_all = ["prompts_file", "ids"])]
    prompt: Option<String>,
    /// A file with one prompt per line, decoded together as one batch; outputs in input order.
    #[arg(long, value_name = "FILE", conflicts_with = "ids")]
    prompts_file: Option<PathBuf>,
    /// With --prompts-file: the most prompts decoding at once (default: all of them, as many as
    /// --max-cache-gb allows). Each prompt joins after its own prefill and leaves when it stops.
    #[arg(long, value_name = "N", value_parser = crate::args::count::<1, { crate::args::MAX_TOKENS }>, allow_negative_numbers = true, requires = "prompts_file", conflicts_with_all = ["prompt", "ids"])]
    batch_size: Option<usize>,
    /// With --prompts-file: the most cache memory the batch may reach, in GB (10⁹ bytes, f32
    /// cache); a prompt joins only when its cache at prompt + --max-new-tokens tokens fits
    /// (one prompt always runs). Default: half of the memory available (MemAvailable in
    /// /proc/meminfo; no bound where it cannot be read), with a note on stderr when that keeps
    /// the first prompts from all decoding at once.
    #[arg(long, value_name = "GB", value_parser = crate::args::positive, allow_negative_numbers = true, requires = "prompts_file", conflicts_with_all = ["prompt", "ids"])]
    max_cache_gb: Option<f64>,
    /// Wrap each prompt as a user message in the Instruct chat format.
    #[arg(long, conflicts_with = "ids")]
    chat: bool,
    /// A system message for the chat format (implies --chat).
    #[arg(long, value_name = "TEXT", conflicts_with = "ids")]
    system: Option<String>,
    /// Prompt token ids, fed as they are: 1,415,2936 or [1, 415, 2936] (as `tokenize` prints).
    #[arg(long, value_name = "IDS", value_parser = crate::args::token_ids)]
    ids: Option<TokenIds>,
    /// Print the generated ids as a JSON array (one line per prompt) instead of the text.
    #[arg(long)]
    print_ids: bool,
    #[command(flatten)]
    generation: GenerationArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    args.generation.start_thread_pool()?;
    let ids = args.ids.as_ref().map(|ids| ids.0.clone());
    let dir = model_dir(args.model.as_deref())?;
    let loaded = load_model(&dir, !args.generation.no_prefix_cache, args.generation.weights)?;
    let model = &loaded.model;
    let options = args.generation.options(&dir)?;
    let stops = &args.generation.stop;
    // Ids in and ids out need no tokenizer; anything with text does.
    if let Some(ids) = ids.as_deref().filter(|_| args.print_ids && stops.is_empty()) {
        warn_past_trained_length(&model.config, ids.len(), options.max_new_tokens);
        let mut progress = PrefillProgress::new(ids.len(), model.config.num_hidden_layers);
        let observer = progress.as_mut().map(|p| p as &mut dyn LayerObserver);
        let generation = generate_in(model, &mut model.new_sequence(), &[], ids, &options, observer, |_| Ok(Flow::Continue))?;
        finish_output(&mut io::stdout().lock(), &generation, true)?;
        eprintln!("{} | {}", loaded.timing(), stats_line(&generation.stats, generation.stop_reason));
        return Ok(());
    }
    let tokenizer = load_tokenizer(&dir)?;
    tokenizer.check_model_vocab(model.config.vocab_size, &dir)?;
    if ids.is_none() && (args.chat || args.system.is_some()) {
        crate::chat::warn_without_chat_template(&dir);
    }
    let prompts = match ids {
        Some(ids) => Prompts::One(ids),
        None => text_prompts(&args, &tokenizer)?,
    };
    match prompts {
        Prompts::One(prompt) => {
            warn_past_trained_length(&model.config, prompt.len(), options.max_new_tokens);
            let mut out = io::stdout().lock();
            let mut progress = PrefillProgress::new(prompt.len(), model.config.num_hidden_layers);
            let observer = progress.as_mut().map(|p| p as &mut dyn LayerObserver);
            let generation = generate_text_in(model, &tokenizer, &mut model.new_sequence(), &[], &prompt, &options, stops, observer, |text| {
                if !args.print_ids {
                    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(stdout_error)?;
                }
                Ok(())
            })?;
            finish_output(&mut out, &generation, args.print_ids)?;
            eprintln!("{} | {}", loaded.timing(), stats_line(&generation.stats, generation.stop_reason));
            Ok(())
        }
        Prompts::Many(prompts) => {
            if let Some(longest) = prompts.iter().map(Vec::len).max() {
                warn_past_trained_length(&model.config, longest, options.max_new_tokens);
            }
            eprintln!("{}", loaded.timing());
            let batching = match args.max_cache_gb {
                Some(gb) => BatchOptions {
                    max_batch: args.batch_size.unwrap_or(usize::MAX),
                    max_cache_bytes: Some((gb * 1e9) as usize),
                },
                None => memory_bounded_batch(model, &prompts, &options, args.batch_size),
            };
            let (results, stats) = generate_text_batch(model, &tokenizer, &prompts, &options, &batching, stops);
            print_batch(&results, args.print_ids, &stats)
        }
    }
}

/// `--prompts-file`'s batch without `--max-cache-gb`: [`default_batching`] with this machine's
/// available memory and each prompt's cache at its longest ([`cache_bound`]); a note on stderr
/// when that memory keeps prompts waiting.
fn memory_bounded_batch(model: &Hymba, prompts: &[Vec<u32>], options: &GenerateOptions, batch_size: Option<usize>) -> BatchOptions {
    let bounds: Vec<usize> = prompts.iter().map(|p| cache_bound(model, p, options)).collect();
    let available = available_memory();
    let (batching, over) = default_batching(available, &bounds, batch_size);
    if let (Some(together), Some(available)) = (over, available) {
        eprintln!(
            "note: the first {} prompts do not all decode at once: their caches may reach {:.3} GB together (each at \
             its prompt + --max-new-tokens), and the batch's caches are kept within half of the {:.1} GB of memory \
             available; the others join as prompts finish (one prompt always runs; --max-cache-gb sets another bound)",
            bounds.len().min(batching.max_batch),
            together as f64 / 1e9,
            available as f64 / 1e9
        );
    }
    batching
}

/// The batching of a `--prompts-file` without `--max-cache-gb`: `batch_size` prompts at most
/// (all of them when not given), whose caches (`bounds`, bytes each at its longest) stay within
/// half of `available` bytes (no byte bound where that is not known). With the bytes the first
/// prompts' caches reach together when that keeps them from all decoding at once.
fn default_batching(available: Option<u64>, bounds: &[usize], batch_size: Option<usize>) -> (BatchOptions, Option<usize>) {
    let max_batch = batch_size.unwrap_or(usize::MAX);
    let max_cache_bytes = available.map(|a| usize::try_from(a / 2).unwrap_or(usize::MAX));
    let first: usize = bounds.iter().take(max_batch).fold(0, |sum, b| sum.saturating_add(*b));
    let limited = bounds.len().min(max_batch) > 1 && max_cache_bytes.is_some_and(|max| first > max);
    (BatchOptions { max_batch, max_cache_bytes }, limited.then_some(first))
}

/// The checkpoint's tokenizer; a checkpoint without one is told how to do without.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let has_files = ["tokenizer.json", "tokenizer.model"].iter().any(|f| dir.join(f).exists());
    Tokenizer::from_dir(dir).map_err(|e| match has_files {
        true => e,
        false => Error::new(
            e.kind,
            format!("{e}; without a tokenizer, give token ids and print ids: generate --ids 1,415,2936 --print-ids"),
        ),
    })
}

/// One prompt (streamed) or a file's worth (generated in parallel, printed at the end).
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
        if text.lines().next().is_none() {
            return Err(Error::input(format!("{} holds no prompts", path.display())));
        }
        if let Some(k) = text.lines().position(|line| line.trim().is_empty()) {
            let problem = "is empty: every line is one prompt, so a file of prompts has no empty lines";
            return Err(Error::input(format!("{} line {}: the prompt {problem}", path.display(), k + 1)));
        }
        return Ok(Prompts::Many(text.lines().map(encode).collect()));
    }
    let text = match &args.prompt {
        Some(text) if text.trim().is_empty() => {
            return Err(Error::usage("--prompt", format!("{text:?}"), EMPTY_PROMPT));
        }
        Some(text) => text.clone(),
        None => crate::args::read_stdin_text("the prompt")?,
    };
    if text.trim().is_empty() {
        return Err(Error::input(format!("the prompt read from stdin is empty: {EMPTY_PROMPT}")));
    }
    Ok(Prompts::One(encode(&text)))
}

/// What to do about an empty prompt (a model given nothing continues from BOS alone: noise).
pub const EMPTY_PROMPT: &str = "the prompt is empty (or only whitespace); give some text, or --ids 1 to start from BOS alone";

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
    format!(
        "prefill: {} in {:.3} s ({:.1} tok/s) | {}",
        counted(s.prompt_tokens as u64, "token"),
        s.prefill_seconds,
        s.prefill_tokens_per_second(),
        decode_summary(s, reason)
    )
}

/// `decode: 30 steps in 0.402 s (74.6 tok/s) | generated 31 tokens, stopped by ... | cache: ...`
pub fn decode_summary(s: &GenerationStats, reason: StopReason) -> String {
    let reason = match reason {
        StopReason::Eos => "end of sequence",
        StopReason::MaxNewTokens => "max new tokens",
        StopReason::Callback => "stop string",
    };
    format!(
        "decode: {} in {:.3} s ({:.1} tok/s) | generated {}, stopped by {reason} | cache: {} bytes ({:.2} MB)",
        counted(s.decode_steps as u64, "step"),
        s.decode_seconds,
        s.decode_tokens_per_second(),
        counted(s.generated_tokens as u64, "token"),
        s.cache_bytes,
        s.cache_bytes as f64 / 1e6
    )
}

pub fn stdout_error(e: io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("cannot write to stdout: {e}"))
}

/// `prefill: 1024/3000 tokens, 45.2 tok/s` on one line of stderr after each pass of a long
/// prompt, erased once the prompt is in; only when stderr is a terminal.
struct PrefillProgress {
    total: usize,
    done: usize,
    last_layer: usize,
    start: Instant,
}

impl PrefillProgress {
    /// `None` unless stderr is a terminal and the prompt takes more than one pass.
    fn new(total: usize, layers: usize) -> Option<PrefillProgress> {
        let worth_it = total > MAX_ROWS_PER_PASS && io::stderr().is_terminal();
        worth_it.then(|| PrefillProgress { total, done: 0, last_layer: layers - 1, start: Instant::now() })
    }
}

impl LayerObserver for PrefillProgress {
    fn layer(&mut self, trace: &LayerTrace) {
        if trace.plan.index != self.last_layer {
            return;
        }
        self.done += trace.positions.len();
        let seconds = self.start.elapsed().as_secs_f64();
        let line = format!("prefill: {}/{} tokens, {:.1} tok/s", self.done, self.total, self.done as f64 / seconds);
        let end = if self.done >= self.total { format!("\r{}\r", " ".repeat(line.len())) } else { String::new() };
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r{line}{end}");
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_batch_keeps_its_caches_within_half_the_available_memory() {
        const GB: usize = 1_000_000_000;
        let batching = |available: Option<usize>, bounds: &[usize], batch_size| {
            let (b, over) = default_batching(available.map(|a| a as u64), bounds, batch_size);
            (b.max_batch, b.max_cache_bytes, over.is_some())
        };
        // 10 GB available: a 5 GB budget. Eight prompts of 1 GB do not all fit at once.
        assert_eq!(batching(Some(10 * GB), &[GB; 8], None), (usize::MAX, Some(5 * GB), true));
        assert_eq!(default_batching(Some(10 * GB as u64), &[GB; 8], None).1, Some(8 * GB), "what the note reports");
        assert_eq!(batching(Some(10 * GB), &[GB; 8], Some(3)), (3, Some(5 * GB), false), "--batch-size 3: 3 GB fit");
        assert_eq!(batching(Some(10 * GB), &[GB; 5], None), (usize::MAX, Some(5 * GB), false), "every prompt fits");
        // The budget is in bytes: one long prompt and many short ones share it.
        assert!(!batching(Some(10 * GB), &[4 * GB, GB / 4, GB / 4, GB / 4, GB / 4], None).2, "5 GB: all fit");
        assert!(batching(Some(10 * GB), &[4 * GB, GB, GB / 4], None).2, "5.25 GB: not all at once");
        // One prompt always runs, even when its cache alone is over the half: no note.
        assert_eq!(batching(Some(GB), &[GB], None), (usize::MAX, Some(GB / 2), false));
        // Memory unknown: no byte bound.
        assert_eq!(batching(None, &[GB; 1000], None), (usize::MAX, None, false));
        assert_eq!(batching(None, &[GB; 1000], Some(7)), (7, None, false));
    }
}
