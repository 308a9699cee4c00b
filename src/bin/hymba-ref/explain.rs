//! `hymba-ref explain`: one forward pass of a prompt, watched layer by layer (see
//! [`hymba_ref::features::explain`]): attention shares and maps, branch balance, SSM memory, the cache,
//! and with `--ablate` each branch's importance. A text summary, `--json` for every number,
//! `--html FILE` for a page with the maps and charts.

use crate::args::{model_dir, print_stdout};
use clap::Args;
use hymba_ref::features::explain::html::{to_html, PageInfo};
use hymba_ref::base::files::write_output;
use hymba_ref::features::explain::json::to_json;
use hymba_ref::features::explain::{explain, span_name, Options, Report};
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, Result};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExplainArgs {
    /// Checkpoint directory with its tokenizer, or its config.json. Default: the bundled demo model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The prompt (encoded with BOS first when the tokenizer asks for it).
    #[arg(short = 'p', long)]
    prompt: String,
    /// Layers to draw attention maps of, e.g. 0,3 (default: the global layers and the first window layer).
    #[arg(long, value_name = "LIST", allow_negative_numbers = true)]
    layers: Option<String>,
    /// Heads to draw in those layers, e.g. 0,1 (default: the first four).
    #[arg(long, value_name = "LIST", allow_negative_numbers = true)]
    heads: Option<String>,
    /// Print every number as JSON instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write a self-contained page with the maps and charts to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Also score the prompt with each layer's attention, then SSM, branch removed (2 passes per layer).
    #[arg(long)]
    ablate: bool,
    /// Quantize the (bf16 or f32) weights at load to this block format: q8_0 or q4_0 (see
    /// docs/QUANTIZATION.md).
    #[arg(long, value_name = "FORMAT", value_parser = crate::load::weights_format)]
    weights: Option<hymba_ref::kernels::quant::QuantType>,
}

pub fn run(args: ExplainArgs) -> Result<()> {
    if args.prompt.trim().is_empty() {
        return Err(Error::usage("--prompt", format!("{:?}", args.prompt), "the prompt is empty (or only whitespace); explain needs some text"));
    }
    let options = Options {
        layers: args.layers.as_deref().map(|list| parse_indices(list, "--layers")).transpose()?,
        heads: args.heads.as_deref().map(|list| parse_indices(list, "--heads")).transpose()?,
        ablate: args.ablate,
        ..Options::default()
    };
    let dir = model_dir(args.model.as_deref())?;
    let model = crate::load::load_plain(&dir, args.weights)?;
    let cfg = &model.config;
    check_in_model("--layers", options.layers.as_deref(), cfg.num_hidden_layers, "layer")?;
    check_in_model("--heads", options.heads.as_deref(), cfg.num_attention_heads, "attention head")?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let ids = tokenizer.encode(&args.prompt, tokenizer.add_bos_token());
    let tokens: Vec<String> = ids.iter().map(|&id| tokenizer.id_to_piece(id).unwrap_or("?").to_string()).collect();
    let report = explain(&model, &ids, &options)?;
    if let Some(path) = &args.html {
        let model_name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let page = to_html(&report, &PageInfo { model: &model_name, prompt: &args.prompt, tokens: &tokens });
        write_output(path, |out| out.write_all(page.as_bytes()))?; // never replaces a non-regular file
    }
    match args.json {
        true => print_stdout(&format!("{}\n", to_json(&report, &tokens))),
        false => print_stdout(&summary(&report)),
    }
}

/// `"0, 3,5"` → `[0, 3, 5]`; a bad entry is a usage error naming `flag`.
fn parse_indices(list: &str, flag: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|entry| {
            entry.trim().parse::<usize>().map_err(|_| {
                Error::usage(flag, list, format!("{entry:?} is not an index (a whole number from 0)"))
            })
        })
        .collect()
}

/// A usage error naming `flag` if an index in `indices` is not below `count` (`what`s in the model).
fn check_in_model(flag: &str, indices: Option<&[usize]>, count: usize, what: &str) -> Result<()> {
    match indices.into_iter().flatten().find(|&&i| i >= count) {
        Some(bad) => Err(Error::usage(flag, bad, format!("there is no {what} {bad}: the model has {count} {what}s (0 to {})", count - 1))),
        None => Ok(()),
    }
}

/// The report as a few lines of text: one per layer.
fn summary(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} tokens after {} meta tokens; mean log-prob {:.4} nats/token (perplexity {:.2})",
        r.ids.len(),
        r.num_meta,
        r.mean_log_prob,
        (-r.mean_log_prob).exp()
    );
    let _ = writeln!(out, "shares: mean over heads and tokens of the attention on meta tokens / the first token / the last W tokens");
    let _ = writeln!(out, "terms: median size of β1·norm(attention) and β2·norm(SSM) in the fusion; SSM half-life: median, in tokens");
    let _ = writeln!(out, "layer  attention   meta  first window   attn term  SSM term  SSM half-life  >W");
    for l in &r.layers {
        let (shares, span) = (l.mean_shares(), span_name(l.span));
        let _ = writeln!(
            out,
            "{:>5}  {span:<10} {:>5.1}% {:>5.1}% {:>5.1}%  {:>9.3} {:>9.3}  {:>13.1} {:>4.0}%",
            l.index,
            100.0 * shares.meta,
            100.0 * shares.first_token,
            100.0 * shares.window,
            l.branches.attention.p50,
            l.branches.ssm.p50,
            l.memory.half_life.p50,
            100.0 * l.memory.beyond_window
        );
    }
    let (hybrid, dense) = (r.cache.size.total_elements(), r.cache.dense_equivalent.total_elements());
    let _ = writeln!(
        out,
        "cache after the prompt: {hybrid} scalars (K/V {}, SSM {}, conv {}); dense attention: {dense} ({:.2}x)",
        r.cache.size.kv_cache_elements,
        r.cache.size.ssm_state_elements,
        r.cache.size.conv_state_elements,
        r.cache.dense_ratio()
    );
    if let Some(ablation) = &r.ablation {
        let _ = writeln!(out, "ablation: mean log-prob without each branch (baseline {:.4})", r.mean_log_prob);
        for a in ablation {
            let _ = writeln!(out, "  layer {:>2}: without attention {:.4}, without SSM {:.4}", a.layer, a.without_attention, a.without_ssm);
        }
    }
    out
}
