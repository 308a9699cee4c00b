//! `hymba-ref perplexity`: token-level NLL and perplexity of a text file.

use crate::args::{count, model_dir, print_stdout, MAX_TOKENS};
use clap::Args;
use hymba_ref::base::files;
use hymba_ref::features::eval::{perplexity, windows};
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, Result};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PerplexityArgs {
    /// Checkpoint directory with its tokenizer, or its config.json. Default: the bundled demo model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// UTF-8 text file to score (encoded as one text, BOS first).
    #[arg(short = 'f', long, value_name = "FILE")]
    file: PathBuf,
    /// Tokens per window: longer texts are scored in overlapping windows of this many tokens.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 512, value_parser = count::<2, MAX_TOKENS>, allow_negative_numbers = true)]
    context: usize,
    /// Distance between window starts (default: context / 2). Each token is scored once, with at
    /// least context − stride tokens before it (except in the first window).
    #[arg(long, value_name = "S", value_parser = count::<1, MAX_TOKENS>, allow_negative_numbers = true)]
    stride: Option<usize>,
    /// Quantize the (bf16 or f32) weights at load to this block format: q8_0 or q4_0 (see
    /// docs/QUANTIZATION.md). The time it takes is shown in the timing line.
    #[arg(long, value_name = "FORMAT", value_parser = crate::load::weights_format)]
    weights: Option<hymba_ref::kernels::quant::QuantType>,
}

/// Print the number of scored tokens, the mean NLL (nats/token) and the perplexity.
pub fn run(args: PerplexityArgs) -> Result<()> {
    let stride = args.stride.unwrap_or(args.context / 2);
    if stride >= args.context {
        let problem = format!("must be below --context ({}), so that windows overlap", args.context);
        return Err(Error::usage("--stride", stride, problem));
    }
    let dir = model_dir(args.model.as_deref())?;
    let text = files::read_text_capped(&args.file, files::TEXT)?;
    let model = crate::load::load_plain(&dir, args.weights)?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    tokenizer.check_model_vocab(model.config.vocab_size, &dir)?;
    let ids = tokenizer.encode(&text, true);
    if ids.len() < 2 {
        return Err(Error::input(format!("{} has no tokens to score", args.file.display())));
    }
    let total_windows = windows(ids.len(), args.context, stride)?.len();
    let show_progress = total_windows > 1 && std::io::stderr().is_terminal();
    let start = Instant::now();
    let result = perplexity(&model, &ids, args.context, stride, |done, total, tokens| {
        if show_progress {
            progress_bar(done, total, tokens, ids.len() - 1, start);
        }
    })?;
    if show_progress {
        eprintln!();
    }
    print_stdout(&format!(
        "file: {}\ntokens scored: {} (context {}, stride {stride}, {total_windows} windows)\nmean NLL: {:.6} nats/token\nperplexity: {:.4}\n",
        args.file.display(),
        result.tokens,
        args.context,
        result.mean_nll(),
        result.perplexity()
    ))
}

/// `[########............] 12/27 windows, 3072/6852 tokens, 4.1 s` on one line of stderr.
fn progress_bar(done: usize, total: usize, tokens: usize, all_tokens: usize, start: Instant) {
    const WIDTH: usize = 30;
    let filled = WIDTH * done / total;
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "\r[{}{}] {done}/{total} windows, {tokens}/{all_tokens} tokens, {:.1} s",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        start.elapsed().as_secs_f64()
    );
    let _ = stderr.flush();
}
