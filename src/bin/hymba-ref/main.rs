//! `hymba-ref`: the command-line front end. One module per subcommand.

mod tokenize;

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
    /// Encode text to token ids (printed as a JSON array).
    Tokenize(tokenize::TokenizeArgs),
    /// Decode comma-separated token ids to text.
    Detokenize(tokenize::DetokenizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with code 2
    let result: hymba_ref::Result<()> = match cli.command {
        Command::Tokenize(args) => tokenize::run_tokenize(args),
        Command::Detokenize(args) => tokenize::run_detokenize(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
