//! `hymba-ref`: the command-line front end. One module per subcommand.
//!
//! Exit codes: 0 on success, 2 for usage errors (unknown flags, missing arguments, bad flag
//! values: reported by clap, or an [`ErrorKind::Usage`] error for values that conflict), 1 for
//! every other failure; messages go to stderr.

mod args;
mod available_memory;
mod bench;
mod chat;
mod explain;
mod generate;
mod generation_args;
mod inspect;
mod load;
mod logits;
mod perplexity;
mod quantize;
mod tokenize;

use clap::{Parser, Subcommand};
use hymba_ref::ErrorKind;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "hymba-ref", version, about = "A pure-Rust CPU reference engine for Hymba models")]
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
    /// Multi-turn chat in the Instruct format: one user turn per line of stdin, /reset, Ctrl-D ends.
    Chat(chat::ChatArgs),
    /// Encode text to token ids (printed as a JSON array).
    Tokenize(tokenize::TokenizeArgs),
    /// Decode token ids (1,2,3 or [1, 2, 3]) to text.
    Detokenize(tokenize::DetokenizeArgs),
    /// Token-level NLL and perplexity of a text file (sliding windows over long files).
    Perplexity(perplexity::PerplexityArgs),
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
