//! `hymba-ref`: the command-line front end. One module per subcommand.
//!
//! Exit codes: 0 on success, 2 for every usage error (unknown flags, missing arguments, bad or
//! out-of-range flag values, negative numbers included: reported by clap's value parsers in
//! `args.rs`, naming the flag and the range; or an [`ErrorKind::Usage`] error for a value wrong
//! only next to something else: `--prefill` past the ids, a layer the model does not have, a
//! bench context too large for this machine's memory), 1 for every other failure; messages go
//! to stderr.

mod args;
mod available_memory;
mod bench;
mod chat;
mod configs;
mod explain;
mod generate;
mod generation_args;
mod inspect;
mod load;
mod logits;
mod perplexity;
mod serve;
mod quantize;
mod tokenize;

use clap::{Parser, Subcommand};
use hymba_ref::ErrorKind;
use std::process::ExitCode;

/// The examples `--help` ends with (each runs as written from the repository's directory:
/// `tests/readme.rs` runs them).
const EXAMPLES: &str = "\
Examples (every command that needs a model uses the bundled demo model unless -m names one):
  hymba-ref generate -p \"Once upon a time\" -n 48
  printf 'Tell me a fortune.\\n/quit\\n' | hymba-ref chat -n 24
  hymba-ref tokenize --text \"Hello, 世界\" | hymba-ref detokenize --skip-special
  hymba-ref explain -p \"Two kinds of people\" --layers 0 --heads 0,1
  hymba-ref inspect -m 1.5b
  hymba-ref bench --configs small --contexts 128 --runs 1 -t 2

Short flags as in llama.cpp: -m model, -p prompt, -n max new tokens, -t threads, -f file, -s seed,
-c context, -h help. Exit codes: 0 success, 2 a usage error (an unknown flag, a bad or
out-of-range value: the message names the flag and the range), 1 any other failure.";

#[derive(Parser)]
#[command(name = "hymba-ref", version, about = "A pure-Rust CPU reference engine for Hymba models", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Full-sequence (or --prefill incremental) logits for token ids, saved as safetensors.
    Logits(logits::LogitsArgs),
    /// Prefill and decode speed, peak memory and the decode roofline on random weights.
    Bench(bench::BenchArgs),
    /// Layer plan, parameter count and cache size at a context, from config.json alone.
    Inspect(inspect::InspectArgs),
    /// Continue a prompt (text, chat or ids), streaming the generated text.
    Generate(generate::GenerateArgs),
    /// Multi-turn chat in the Instruct format: one user turn per line of stdin; /reset, /quit, /help.
    Chat(chat::ChatArgs),
    /// Encode text (--text, else stdin) to token ids, printed as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Decode token ids (1,2,3 or the [1,2,3] tokenize prints; stdin without --ids) to text.
    Detokenize(tokenize::DetokenizeArgs),
    /// Token-level NLL and perplexity of a text file (sliding windows over long files).
    Perplexity(perplexity::PerplexityArgs),
    /// An OpenAI-compatible local HTTP server (completions, chat, streaming) with continuous batching.
    Serve(serve::ServeArgs),
    /// Watch one forward pass of a prompt: attention maps and shares, branch balance, SSM memory, the cache.
    Explain(explain::ExplainArgs),
    /// Write a q8_0 or q4_0 copy of a bf16/f32 checkpoint (a new directory that loads like any other).
    Quantize(quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with code 2
    let result = match cli.command {
        Command::Logits(args) => logits::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Tokenize(args) => tokenize::run_tokenize(args),
        Command::Detokenize(args) => tokenize::run_detokenize(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Quantize(args) => quantize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.kind == ErrorKind::Usage { 2 } else { 1 })
        }
    }
}
