//! `tokenize` and `detokenize`: text → ids and ids → text with a checkpoint's tokenizer.

use crate::args::{model_dir, print_stdout, read_stdin_text, token_ids, TokenIds};
use clap::Args;
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Checkpoint directory or its config.json (only the tokenizer files are read). Default: the
    /// bundled model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Text to encode. Without it, the text is read from stdin (less the one final newline).
    #[arg(short = 'p', long)]
    text: Option<String>,
    /// Do not prepend the BOS id (by default it is prepended when the tokenizer asks for it).
    #[arg(long)]
    no_bos: bool,
}

#[derive(Args)]
pub struct DetokenizeArgs {
    /// Checkpoint directory or its config.json (only the tokenizer files are read). Default: the
    /// bundled model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Token ids: `1,15043,3186`, or the JSON array `tokenize` prints, `[1,15043,3186]`. Without
    /// it, the ids are read from stdin: `hymba-ref tokenize --text Hi | hymba-ref detokenize`.
    #[arg(long, allow_hyphen_values = true, value_parser = token_ids)]
    ids: Option<TokenIds>,
    /// Leave out special tokens (BOS, EOS, padding), so that `tokenize` then `detokenize`
    /// gives back the text.
    #[arg(long)]
    skip_special: bool,
}

/// Print the ids of `--text` (else stdin) as a JSON array.
pub fn run_tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(&model_dir(args.model.as_deref())?)?;
    let text = match args.text {
        Some(text) => text,
        None => read_stdin_text("the text to tokenize")?,
    };
    let ids = tokenizer.encode(&text, tokenizer.add_bos_token() && !args.no_bos);
    let json = serde_json::to_string(&ids).map_err(|e| Error::input(format!("cannot print ids: {e}")))?;
    print_stdout(&format!("{json}\n"))
}

/// Print the text of `--ids` (else of the ids on stdin).
pub fn run_detokenize(args: DetokenizeArgs) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(&model_dir(args.model.as_deref())?)?;
    let mut ids = match args.ids {
        Some(ids) => ids.0,
        None => token_ids(&read_stdin_text("token ids")?).map_err(|e| Error::input(format!("the ids read from stdin: {e}")))?.0,
    };
    if args.skip_special {
        ids.retain(|&id| !tokenizer.is_special(id));
    }
    print_stdout(&format!("{}\n", tokenizer.decode(&ids)?))
}
