//! `tokenize` and `detokenize`: text → ids and ids → text with a checkpoint's tokenizer.

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
    let ids = parse_ids(&args.ids)?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    println!("{}", tokenizer.decode(&ids)?);
    Ok(())
}

/// `"1, 2,3"` → `[1, 2, 3]`; the empty string is the empty list. A bad entry is an
/// [`InvalidInput`](hymba_ref::ErrorKind::InvalidInput) error naming it.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .enumerate()
        .map(|(i, entry)| {
            entry.trim().parse::<u32>().map_err(|_| {
                Error::input(format!(
                    "--ids entry {} is {:?}, not a token id (a whole number from 0 to {})",
                    i + 1,
                    entry,
                    u32::MAX
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        assert_eq!(parse_ids("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_ids("").unwrap(), Vec::<u32>::new());
        let e = parse_ids("1,x").unwrap_err();
        assert_eq!(e.kind, hymba_ref::ErrorKind::InvalidInput);
        assert!(e.message.contains("entry 2 is \"x\""), "{e}");
        assert!(parse_ids("1,,2").is_err());
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids("4294967296").is_err());
    }
}
