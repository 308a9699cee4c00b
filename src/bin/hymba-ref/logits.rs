//! `hymba-ref logits`: run a forward pass over token ids and save the logits.

use crate::args::{model_dir, token_ids, TokenIds};
use clap::Args;
use hymba_ref::checkpoint::safetensors::write_f32;
use hymba_ref::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct LogitsArgs {
    /// Checkpoint directory (config.json + model.safetensors or shards) or its config.json.
    /// Default: the bundled model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Token ids: 5,17,300 or [5, 17, 300].
    #[arg(long, value_parser = token_ids)]
    ids: TokenIds,
    /// Output file: one f32 tensor `logits` of shape `[n, V]` (meta rows excluded). A regular
    /// file is replaced atomically (through a symbolic link, which is kept); a pipe or character
    /// device such as /dev/stdout is written through; anything else is refused.
    #[arg(long)]
    out: PathBuf,
    /// Prefill the first K ids in one pass, then feed the rest one at a time through the cache.
    /// Without it: one full-sequence forward pass.
    #[arg(long, value_name = "K", value_parser = crate::args::count::<1, { crate::args::MAX_TOKENS }>, allow_negative_numbers = true)]
    prefill: Option<usize>,
    /// Quantize the (bf16 or f32) weights at load to this block format: q8_0 or q4_0 (see
    /// docs/QUANTIZATION.md). The time it takes is shown in the timing line.
    #[arg(long, value_name = "FORMAT", value_parser = crate::load::weights_format)]
    weights: Option<hymba_ref::kernels::quant::QuantType>,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let ids = args.ids.0;
    if let Some(k) = args.prefill.filter(|&k| k > ids.len()) {
        return Err(Error::usage("--prefill", k, format!("must be at most the number of --ids ({})", ids.len())));
    }
    // Refuse an --out that would never be written (a directory, a dangling link) before the work.
    hymba_ref::base::files::output_target(&args.out)?;
    let model = crate::load::load_plain(&model_dir(args.model.as_deref())?, args.weights)?;
    model.check_ids(&ids)?;
    let logits = match args.prefill {
        None => model.forward(&ids)?,
        Some(k) => model.forward_incremental(&ids, k)?,
    }; // (n, V)
    let shape = [logits.nrows(), logits.ncols()];
    let data = logits.as_standard_layout();
    write_f32(&args.out, &[("logits", &shape, data.as_slice().expect("standard layout"))])
}
