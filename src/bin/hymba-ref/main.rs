//! `hymba-ref`: the command-line front end. One module per subcommand.
//!
//! Exit codes: 0 on success, 2 for usage errors (unknown flags, missing arguments: reported by
//! clap), 1 for every other failure; messages go to stderr.

mod args;
mod bench;
mod logits;

use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with code 2
    let result = match cli.command {
        Command::Logits(args) => logits::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
