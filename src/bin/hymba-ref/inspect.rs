//! `hymba-ref inspect`: what a config implies, without loading weights. Model dimensions, the
//! per-layer plan (global or window attention, own or reused K/V), the parameter count, and the
//! cache a sequence needs at a given context (K/V, SSM and conv state, in scalars and in bf16 /
//! f32 bytes) next to the dense-attention equivalent (docs/MODEL.md §5.5).

use crate::args::{model_dir, print_stdout};
use crate::configs;
use clap::Args;
use hymba_ref::state::cache_plan::{CachePlan, CacheSize, LayerCache, ScalarType};
use hymba_ref::config::{weights, AttentionSpan, HymbaConfig, KvSource, TensorSpec, WeightSpec};
use hymba_ref::Result;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// Model directory or its config.json (only the config is read, no weights needed), or a
    /// built-in config: small, mid, 1.5b (the released Hymba-1.5B), 1.5b-dense (its twin with
    /// dense global attention in every layer). Default: the bundled model.
    #[arg(short = 'm', long, value_name = "DIR|NAME")]
    model: Option<PathBuf>,
    /// Context length T for the cache sizes: prompt + generated tokens, meta tokens excluded.
    #[arg(short = 'c', long, value_name = "T", default_value_t = 8192, value_parser = crate::args::count::<0, { crate::args::MAX_TOKENS }>, allow_negative_numbers = true)]
    context: usize,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let name = args.model.as_deref().and_then(|m| m.to_str());
    let (source, cfg) = match name.and_then(configs::builtin) {
        Some(json) => (format!("built-in config {}", name.unwrap_or_default()), HymbaConfig::from_json_str(&json?)?),
        None => {
            let path = model_dir(args.model.as_deref())?.join("config.json");
            (path.display().to_string(), HymbaConfig::from_file(&path)?)
        }
    };
    let cache = CachePlan::new(&cfg, args.context)?;
    let params = ParameterBreakdown::new(&cfg);
    if args.json {
        print_stdout(&format!("{:#}\n", report_json(&cfg, &params, &cache)))
    } else {
        print_stdout(&report_text(&source, &cfg, &params, &cache))
    }
}

/// Where the parameters are (sums to [`HymbaConfig::parameter_count`]), from the weight table.
struct ParameterBreakdown {
    total: usize,
    embedding: usize,
    meta_tokens: usize,
    /// (number of layers, their parameters)
    own_kv_layers: (usize, usize),
    reusing_layers: (usize, usize),
    final_norm: usize,
    /// `None` when tied to the embedding.
    lm_head: Option<usize>,
}

impl ParameterBreakdown {
    fn new(cfg: &HymbaConfig) -> ParameterBreakdown {
        let tensors = cfg.tensors();
        let count = |keep: &dyn Fn(&TensorSpec) -> bool| -> usize {
            tensors.iter().filter(|t| keep(t)).map(TensorSpec::elements).sum()
        };
        let (mut own_kv_layers, mut reusing_layers) = ((0, 0), (0, 0));
        for plan in &cfg.layers {
            let group = if plan.owns_kv() { &mut own_kv_layers } else { &mut reusing_layers };
            group.0 += 1;
            group.1 += count(&|t| t.layer == Some(plan.index));
        }
        let model_tensor = |w: WeightSpec| move |t: &TensorSpec| t.layer.is_none() && t.spec.key == w.key;
        ParameterBreakdown {
            total: cfg.parameter_count(),
            embedding: count(&model_tensor(weights::EMBED_TOKENS)),
            meta_tokens: count(&model_tensor(weights::MEMORY_TOKENS)),
            own_kv_layers,
            reusing_layers,
            final_norm: count(&model_tensor(weights::FINAL_LAYERNORM)),
            lm_head: (!cfg.tie_word_embeddings).then(|| count(&model_tensor(weights::LM_HEAD))),
        }
    }
}

fn attention_name(span: AttentionSpan) -> &'static str {
    match span {
        AttentionSpan::Global => "global",
        AttentionSpan::SlidingWindow(_) => "window",
    }
}

fn window_of(span: AttentionSpan) -> Option<usize> {
    match span {
        AttentionSpan::Global => None,
        AttentionSpan::SlidingWindow(w) => Some(w),
    }
}

fn bytes_json(size: &CacheSize) -> Value {
    ScalarType::ALL.iter().map(|&t| (t.name().to_string(), json!(size.bytes(t)))).collect()
}

fn layer_json(layer: &LayerCache, row_elements: usize) -> Value {
    let plan = &layer.plan;
    let (source, producer) = match plan.kv {
        KvSource::Own => ("own", plan.index),
        KvSource::ReuseFrom(j) => ("reuses", j),
    };
    json!({
        "index": plan.index,
        "attention": attention_name(plan.attention),
        "window": window_of(plan.attention),
        "kv_source": source,
        "kv_producer": producer,
        "kv_retention": plan.kv_retention.map(attention_name),
        "kv_rows": layer.kv_rows,
        "kv_elements": layer.kv_rows * row_elements,
    })
}

fn report_json(cfg: &HymbaConfig, params: &ParameterBreakdown, cache: &CachePlan) -> Value {
    let size = &cache.size;
    json!({
        "dims": {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "d_inner": cfg.d_inner(), "head_dim_qk": cfg.head_dim_qk(), "head_dim_v": cfg.head_dim_v(),
            "d_state": cfg.mamba_d_state, "d_conv": cfg.mamba_d_conv, "dt_rank": cfg.mamba_dt_rank,
            "intermediate_size": cfg.intermediate_size, "num_meta_tokens": cfg.num_memory_tokens,
            "sliding_window": cfg.sliding_window,
        },
        "parameters": params.total,
        "parameters_breakdown": {
            "embedding": params.embedding,
            "meta_tokens": params.meta_tokens,
            "own_kv_layers": { "count": params.own_kv_layers.0, "parameters": params.own_kv_layers.1 },
            "reusing_layers": { "count": params.reusing_layers.0, "parameters": params.reusing_layers.1 },
            "final_norm": params.final_norm,
            "lm_head": params.lm_head,
        },
        "context": cache.context,
        "layers": cache.layers.iter().map(|l| layer_json(l, cache.kv_row_elements)).collect::<Vec<_>>(),
        "kv_row_elements": cache.kv_row_elements,
        "kv_cache_elements": size.kv_cache_elements,
        "kv_meta_elements": cache.kv_meta_elements(),
        "ssm_state_elements": size.ssm_state_elements,
        "conv_state_elements": size.conv_state_elements,
        "total_elements": size.total_elements(),
        "bytes": bytes_json(size),
        "dense_equivalent": {
            "kv_cache_elements": cache.dense_equivalent.kv_cache_elements,
            "bytes": bytes_json(&cache.dense_equivalent),
            "ratio": cache.dense_ratio(),
        },
    })
}

/// `1234567` → `"1,234,567"`.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decimal megabytes, as the paper counts them.
fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// One row of the cache table: scalars, then bytes in each storage type.
fn size_row(label: &str, scalars: usize) -> String {
    let bytes: Vec<String> = ScalarType::ALL.iter().map(|t| format!("{:>11}", megabytes(scalars * t.bytes()))).collect();
    format!("  {label:<14}{:>14}  {}\n", grouped(scalars), bytes.join("  "))
}

fn report_text(path: &str, cfg: &HymbaConfig, params: &ParameterBreakdown, cache: &CachePlan) -> String {
    let mut out = format!("{path}\n\nDimensions\n");
    let window = cfg.sliding_window.map_or("none".to_string(), |w| w.to_string());
    let dims = [
        ("V   vocabulary", cfg.vocab_size.to_string()),
        ("H   width", cfg.hidden_size.to_string()),
        ("L   layers", cfg.num_hidden_layers.to_string()),
        ("nh  query heads", cfg.num_attention_heads.to_string()),
        ("nkv key/value heads", cfg.num_key_value_heads.to_string()),
        ("D   SSM width", cfg.d_inner().to_string()),
        ("dqk query/key head dim", cfg.head_dim_qk().to_string()),
        ("dv  value head dim", cfg.head_dim_v().to_string()),
        ("N   SSM state", cfg.mamba_d_state.to_string()),
        ("K   conv kernel", cfg.mamba_d_conv.to_string()),
        ("R   Δ rank", cfg.mamba_dt_rank.to_string()),
        ("F   MLP width", cfg.intermediate_size.to_string()),
        ("M   meta tokens", cfg.num_memory_tokens.to_string()),
        ("W   sliding window", window),
    ];
    for (name, value) in dims {
        out += &format!("  {name:<24}{value}\n");
    }

    let t = cache.context;
    out += &format!("\nLayer plan (K/V rows kept at context T = {t}, meta rows included)\n");
    out += "  layer  attention     K/V               keeps                 rows\n";
    for layer in &cache.layers {
        let plan = &layer.plan;
        let attention = match plan.attention {
            AttentionSpan::Global => "global".to_string(),
            AttentionSpan::SlidingWindow(w) => format!("window {w}"),
        };
        let source = match plan.kv {
            KvSource::Own => "own".to_string(),
            KvSource::ReuseFrom(j) => format!("reuses layer {j}"),
        };
        let (keeps, rows) = match plan.kv_retention {
            None => ("-".to_string(), "-".to_string()),
            Some(AttentionSpan::Global) => ("M + T".to_string(), grouped(layer.kv_rows)),
            Some(AttentionSpan::SlidingWindow(w)) => (format!("M + min(T, {w})"), grouped(layer.kv_rows)),
        };
        out += &format!("  {:>5}  {attention:<12}  {source:<16}  {keeps:<16}  {rows:>7}\n", plan.index);
    }

    out += &format!("\nParameters: {}\n", grouped(params.total));
    let layers_line = |(count, total): (usize, usize), what: &str| {
        let each = total.checked_div(count).map_or(String::new(), |each| format!(" ({} each)", grouped(each)));
        format!("  {:<26}{:>16}{each}\n", format!("{count} layers {what}"), grouped(total))
    };
    out += &format!("  {:<26}{:>16}\n", "embedding (V × H)", grouped(params.embedding));
    out += &format!("  {:<26}{:>16}\n", "meta tokens (M × H)", grouped(params.meta_tokens));
    out += &layers_line(params.own_kv_layers, "with own K/V");
    out += &layers_line(params.reusing_layers, "reusing K/V");
    out += &format!("  {:<26}{:>16}\n", "final norm", grouped(params.final_norm));
    match params.lm_head {
        Some(p) => out += &format!("  {:<26}{:>16}\n", "lm_head (V × H)", grouped(p)),
        None => out += &format!("  {:<26}{:>16}\n", "lm_head", "tied"),
    }

    let size = &cache.size;
    out += &format!("\nCache at context T = {t} (prompt + generated tokens; MB = 10^6 bytes)\n");
    out += &format!("  {:<14}{:>14}  {:>11}  {:>11}\n", "", "scalars", "bf16", "f32");
    out += &size_row("K/V", size.kv_cache_elements);
    out += &size_row("SSM state", size.ssm_state_elements);
    out += &size_row("conv state", size.conv_state_elements);
    out += &size_row("total", size.total_elements());
    out += &size_row("without meta", size.total_elements() - cache.kv_meta_elements());
    let producers = cache.layers.iter().filter(|l| l.plan.owns_kv()).count();
    out += &format!(
        "  K/V counts the {} meta rows of each of the {producers} K/V-producing layers, {} scalars per row\n  \
         (nkv·(dqk + dv)); the paper's cache sizes leave the meta rows out (\"without meta\").\n",
        cache.num_meta_tokens,
        grouped(cache.kv_row_elements),
    );

    out += "\nDense-attention equivalent (every layer its own global K/V, no meta tokens, no SSM)\n";
    out += &size_row("K/V", cache.dense_equivalent.kv_cache_elements);
    out += &format!("  {:.2}× the hybrid cache\n", cache.dense_ratio());
    out
}
