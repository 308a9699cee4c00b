//! `tokenize` and `detokenize`: text → ids and ids → text with a checkpoint's tokenizer.

use crate::args::parse_id_list;
use clap::Args;
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Checkpoint directory (only the tokenizer files are read).
    #[arg(long)]
    model: PathBuf,
    /// Text to encode.
    #[arg(long)]
    text: String,
    /// Do not prepend the BOS id (by default it is prepended when the tokenizer asks for it).
    #[arg(long)]
    no_bos: bool,
}

#[derive(Args)]
pub struct DetokenizeArgs {
    /// Checkpoint directory (only the tokenizer files are read).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, e.g. `1,15043,3186`.
    #[arg(long, allow_hyphen_values = true)]
    ids: String,
}

/// Print the ids of `--text` as a JSON array.
pub fn run_tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let ids = tokenizer.encode(&args.text, tokenizer.add_bos_token() && !args.no_bos);
    let json = serde_json::to_string(&ids).map_err(|e| Error::input(format!("cannot print ids: {e}")))?;
    println!("{json}");
    Ok(())
}

/// Print the text of `--ids`.
pub fn run_detokenize(args: DetokenizeArgs) -> Result<()> {
    let ids = parse_id_list(&args.ids)?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    println!("{}", tokenizer.decode(&ids)?);
    Ok(())
}
