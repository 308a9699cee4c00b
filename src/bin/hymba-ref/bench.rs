//! `hymba-ref bench`: prefill and decode speed, peak memory and the decode roofline, on random
//! weights generated in memory (nothing is downloaded).
//!
//! For each config × context × batch size B: prefill `context` random token ids into a fresh
//! sequence (the meta tokens are already in it: [`Hymba::new`] runs them once per model) and
//! time it, then decode `--decode-tokens` greedy tokens with B such sequences in one [`Batch`]
//! (one step feeds every sequence a token) and time each step. The B sequences are copies of the
//! prefilled one: prefilling each would multiply the run time by B and measure nothing new
//! (a step's work does not depend on the values in the caches, only on their sizes). Each
//! config × context × B is repeated `--runs` times (fewer if `--time-budget` runs out; never
//! fewer than one) and the median time is reported; decode tok/s is summed over the batch.
//!
//! `--cache-budget-gb` reports, per config × context, the cache one sequence holds at that
//! context (plus the decoded tokens; [`CachePlan`], f32 as this engine keeps it) and the largest
//! batch whose caches fit the budget; `--batch-sizes max` runs that batch. `1.5b-dense` is the
//! 1.5B shape with every layer global and no K/V sharing: the dense-attention twin Hymba's cache
//! is compared with.
//!
//! Memory: each config runs in a fresh child process of this binary (`bench --child`), so its
//! peak RSS is its own. Inside the child, the peak is reset after the model is built and again
//! before each context, so every context reports the peak of its own prefill + decode runs
//! (model + cache + scratch); the load peak is reported separately.
//!
//! Roofline: a decode step reads every weight matrix once (`in_proj`, `x_proj`, `dt_proj`,
//! `out_proj`, the MLP, the small per-layer vectors, and `lm_head` — the embedding when tied; an
//! untied embedding contributes one row, the meta tokens nothing). Its bytes are those parameters
//! times the bytes per parameter the weights hold (their bytes, from the weight table: bf16
//! matrices, f32 vectors; the RSS the built model adds is reported beside them). The roofline is
//! the measured read bandwidth divided by those bytes: no decode can be faster, so a share above
//! 100 % is flagged as a bandwidth measurement too low to believe. A second share counts the
//! cache a step reads too (`cache_read_bytes_per_step`: each layer's K/V rows and SSM states at
//! the context, per sequence; [`CachePlan::decode_read_elements`]): at long contexts attention
//! reads a tenth or more of what the quantized weights take.

mod bandwidth;
mod cpu_time;
mod from_disk;
mod limits;
mod machine;
mod memory;
mod profile;
mod regions;

use crate::args::{count, counted, positive, print_stdout, MAX_TOKENS};
use crate::configs;
use clap::Args;
use hymba_ref::state::cache::HybridCache;
use hymba_ref::state::cache_plan::{CachePlan, ScalarType};
use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::{DecodeRead, HymbaConfig, Storage};
use hymba_ref::features::generate::sampling::argmax;
use hymba_ref::kernels::matrix::RowKind;
use hymba_ref::model::{Batch, Hymba, Profile, Sequence};
use cpu_time::CpuTime;
use profile::PhaseTimes;
use hymba_ref::base::rng::SplitMix64;
use hymba_ref::{Error, ErrorKind, Result};
use hymba_ref::kernels::quant::QuantType;
use ndarray::Array2;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated configs: `small`, `mid`, `1.5b` (the released Hymba-1.5B shape),
    /// `1.5b-dense` (its dense-attention twin), or paths to config.json files or the checkpoint
    /// directories holding them.
    #[arg(long, value_delimiter = ',', default_value = "small,mid,1.5b")]
    configs: Vec<String>,
    /// Comma-separated prompt lengths to prefill (meta tokens not counted).
    #[arg(long, value_delimiter = ',', default_value = "128,1024,4096", value_parser = count::<1, MAX_TOKENS>, allow_negative_numbers = true)]
    contexts: Vec<usize>,
    /// Worker threads (default: every core).
    #[arg(short = 't', long, value_name = "N", value_parser = crate::args::threads, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Repetitions of each config × context; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = count::<1, MAX_TOKENS>, allow_negative_numbers = true)]
    runs: usize,
    /// Stop repeating a config × context once its runs took this many seconds (at least one
    /// run is always made).
    #[arg(long, value_name = "SECONDS", value_parser = positive, allow_negative_numbers = true)]
    time_budget: Option<f64>,
    /// Greedy tokens decoded after each prefill.
    #[arg(long, default_value_t = 16, value_parser = count::<1, MAX_TOKENS>, allow_negative_numbers = true)]
    decode_tokens: usize,
    /// Comma-separated batch sizes: sequences decoding together (`max`: the largest batch that
    /// fits --cache-budget-gb at each context).
    #[arg(long, value_delimiter = ',', default_value = "1", allow_negative_numbers = true)]
    batch_sizes: Vec<String>,
    /// A cache memory budget in GB (10⁹ bytes): report the largest batch whose caches fit it at
    /// each context.
    #[arg(long, value_name = "GB", value_parser = positive, allow_negative_numbers = true)]
    cache_budget_gb: Option<f64>,
    /// Instead of prefilling each context, fill the caches with random keys and values (no
    /// prefill is timed): for long contexts on slow machines, since a decode step costs the
    /// same whatever the cached values.
    #[arg(long)]
    synthetic_cache: bool,
    /// Seed of the random weights and token ids.
    #[arg(short = 's', long, default_value_t = 0, value_parser = crate::args::seed, allow_negative_numbers = true)]
    seed: u64,
    /// Buffer size for the read-bandwidth measurement (0: skip it).
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = count::<0, MAX_TOKENS>, allow_negative_numbers = true)]
    bandwidth_mib: usize,
    /// Also time each phase of a pass (projections, attention, kv cache, ssm, mlp, elementwise,
    /// output) in the timed prefill and in the timed batch's decode steps, and in the same prefill
    /// and batch decode run on one thread before each run; report each phase's speed-up and the
    /// serial share of the pass (Amdahl). The decode profile is of the batch (one row per
    /// sequence a step); --synthetic-cache has no prefill profile. Adds a one-thread run to
    /// every run. The table also shows how busy the threads were in the timed runs (CPU time
    /// over wall time × threads, system time, minor page faults; in the JSON without --profile
    /// too: `prefill_cpu`, `decode_cpu`), and the synchronisation: the parallel regions a
    /// prefill or step opens, times what one region costs on these threads (measured apart),
    /// with the idle threads still awake and after they have gone to sleep. Before the configs,
    /// it measures what the machine alone gains from the threads: GEMM tiles on every thread at
    /// once against one thread, and the read bandwidth of every thread against one thread's (the
    /// most a compute-bound and a memory-bound phase can gain there).
    #[arg(long)]
    profile: bool,
    /// Comma-separated weight formats, each measured as its own row: `bf16` (the random weights
    /// as made), `q8_0`, `q4_0` (quantized after they are made; see docs/QUANTIZATION.md). The
    /// roofline counts the bytes each format actually reads. With --from-disk, one format: the
    /// checkpoint on disk is written in it.
    #[arg(long, value_delimiter = ',', default_value = "bf16")]
    weights: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Time what a user waits for instead: write each config's random weights as a published
    /// checkpoint (two bf16 shards + index) to a temporary directory, then, in fresh processes,
    /// load it and compute the first token of a one-token prompt (process start → first token,
    /// split into load, meta prefix and prefill; peak RSS). The first run computes the meta
    /// prefix and caches it, the others (--runs, at least 2) read it. The directory is removed
    /// afterwards.
    #[arg(long)]
    from_disk: bool,
    /// Internal: the child side of --from-disk (load this checkpoint, one-token prompt, print JSON).
    #[arg(long, hide = true, value_name = "DIR")]
    child_load: Option<std::path::PathBuf>,
    /// Internal: measure the configs in this process and print their raw JSON (the parent runs
    /// each config this way in a child process, so each gets its own peak memory).
    #[arg(long, hide = true)]
    child: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let batch_sizes = args.batch_sizes.iter().map(|b| parse_batch_size(b, args.cache_budget_gb)).collect::<Result<Vec<_>>>()?;
    let specs = args.configs.iter().map(|name| resolve_config(name)).collect::<Result<Vec<_>>>()?;
    let formats = args.weights.iter().map(|w| weights_format(w)).collect::<Result<Vec<_>>>()?;
    if (args.child || args.from_disk || args.child_load.is_some()) && formats.len() != 1 {
        return Err(Error::usage("--weights", args.weights.join(","), "give one format here (--from-disk writes one checkpoint)"));
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    limits::check_run(&specs, &args)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::input(format!("cannot start {threads} worker threads: {e}")))?;

    if let Some(dir) = &args.child_load {
        return from_disk::child(dir, args.seed);
    }
    if args.from_disk {
        let configs = from_disk::bench_configs(&specs, &args, threads, formats[0])?;
        let report = json!({ "engine": "hymba-ref", "threads": threads, "runs": args.runs, "seed": args.seed, "configs": configs });
        return match args.json {
            true => print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report).expect("JSON"))),
            false => print_stdout(&from_disk::table(threads, &configs)),
        };
    }
    if args.child {
        let configs = specs.iter().map(|spec| bench_config(spec, &args, &batch_sizes, formats[0])).collect::<Result<Vec<_>>>()?;
        print_stdout(&format!("{}\n", json!({ "configs": configs })))?;
        return Ok(());
    }

    let load_start = memory::load_average();
    let bandwidth = (args.bandwidth_mib > 0).then(|| {
        eprintln!("[bench] measuring read bandwidth ({} MiB buffer, {threads} threads)", args.bandwidth_mib);
        bandwidth::measure_read_bandwidth(args.bandwidth_mib << 20, 7)
    });
    // With --profile, what the machine gains from the threads by itself, to read the profiles by.
    let scaling = args.profile.then(|| {
        eprintln!("[bench] measuring what the machine alone gains from {threads} threads (GEMM tiles, memory reads)");
        machine::measure(bandwidth.as_ref().map(|bw| bw.bytes))
    });
    let mut configs = Vec::new();
    for spec in &specs {
        for format in &formats {
            let mut result = run_child(spec, &args, threads, *format)?;
            if let Some(bw) = &bandwidth {
                add_roofline(&mut result, bw.median);
            }
            configs.push(result);
        }
    }
    let report = json!({
        "engine": "hymba-ref",
        "version": env!("CARGO_PKG_VERSION"),
        "threads": threads,
        "runs": args.runs,
        "time_budget_seconds": args.time_budget,
        "decode_tokens": args.decode_tokens,
        "cache_budget_bytes": args.cache_budget_gb.map(|gb| gb * 1e9),
        "seed": args.seed,
        "machine": {
            "cpu": memory::cpu_model(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "load_average_start": load_start,
            "load_average_end": memory::load_average(),
            "scaling": scaling.flatten().map(|s| machine::json(&s, bandwidth.as_ref().map(|bw| bw.median))),
        },
        "bandwidth": bandwidth.as_ref().map(|bw| json!({
            "buffer_bytes": bw.bytes,
            "passes_bytes_per_second": bw.passes,
            "read_bytes_per_second": bw.median,
        })),
        "configs": configs,
    });
    if args.json {
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report).expect("JSON")))
    } else {
        print_stdout(&table(&report))
    }
}

/// A `--weights` entry: `bf16` (None) or a block format to quantize to; anything else is a usage
/// error naming the flag.
fn weights_format(text: &str) -> Result<Option<QuantType>> {
    match text.trim() {
        "bf16" => Ok(None),
        other => crate::load::weights_format(other)
            .map(Some)
            .map_err(|_| Error::usage("--weights", text, "expected bf16, q8_0 or q4_0")),
    }
}

/// The name of a weight format in reports: `bf16`, `q8_0`, `q4_0`.
pub fn format_name(format: Option<QuantType>) -> &'static str {
    format.map_or("bf16", QuantType::name)
}

/// (bytes the weights hold, bytes one decode step reads), counted from what the model holds:
/// each matrix in its own format (bf16, or a quantized one's values and scales), every other
/// tensor in f32. A step reads every tensor but the meta tokens, and of an untied embedding one row.
fn weight_bytes(cfg: &HymbaConfig, w: &HymbaWeights) -> (u64, f64) {
    let held = w.matrices();
    let matrix_params: usize = held.iter().map(|m| m.rows() * m.cols()).sum();
    let matrix_bytes: usize = held.iter().map(|m| m.bytes()).sum();
    let matrix_read: usize = (cfg.tensors().iter())
        .filter(|t| t.spec.storage == Storage::Matrix)
        .map(|t| match t.spec.decode_read {
            DecodeRead::EmbeddingRow if !cfg.tie_word_embeddings => cfg.hidden_size,
            _ => t.elements(),
        })
        .sum();
    let (params, params_read) = (cfg.parameter_count(), cfg.decode_read_parameters());
    let per_matrix_param = matrix_bytes as f64 / matrix_params as f64;
    let total = matrix_bytes + 4 * (params - matrix_params);
    (total as u64, matrix_read as f64 * per_matrix_param + 4.0 * (params_read - matrix_read) as f64)
}

/// A config to benchmark: its display name and the text of its `config.json`.
struct ConfigSpec {
    name: String,
    json: String,
}

fn resolve_config(name: &str) -> Result<ConfigSpec> {
    if let Some(json) = configs::builtin(name) {
        return Ok(ConfigSpec { name: name.to_string(), json: json? });
    }
    let given = Path::new(name);
    // A checkpoint directory stands for its config.json, as everywhere --model is taken.
    let path = if given.is_dir() { given.join("config.json") } else { given.to_path_buf() };
    let path = path.as_path();
    if !path.exists() {
        let problem = format!("neither a built-in config ({}) nor an existing config.json file", configs::NAMES.join(", "));
        return Err(Error::usage("--configs", name, problem));
    }
    let text = hymba_ref::base::files::read_text_capped(path, hymba_ref::base::files::CONFIG)?;
    HymbaConfig::from_json_str(&text).map_err(|e| e.context(path.display()))?;
    Ok(ConfigSpec { name: name.to_string(), json: text })
}

/// Run one config in a fresh child process of this binary; its JSON result.
fn run_child(spec: &ConfigSpec, args: &BenchArgs, threads: usize, format: Option<QuantType>) -> Result<Value> {
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find this program: {e}")))?;
    let contexts: Vec<String> = args.contexts.iter().map(|c| c.to_string()).collect();
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "--child", "--configs", &spec.name, "--contexts", &contexts.join(",")])
        .args(["--threads", &threads.to_string(), "--runs", &args.runs.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string(), "--seed", &args.seed.to_string()])
        .args(["--batch-sizes", &args.batch_sizes.join(",")])
        .args(["--weights", format_name(format)])
        .args(args.synthetic_cache.then_some("--synthetic-cache"))
        // Any library thread pool that sizes itself from the environment gets the same count.
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("MATMUL_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(budget) = args.time_budget {
        cmd.args(["--time-budget", &budget.to_string()]);
    }
    if args.profile {
        cmd.arg("--profile");
    }
    if let Some(gb) = args.cache_budget_gb {
        cmd.args(["--cache-budget-gb", &gb.to_string()]);
    }
    let out = cmd.output().map_err(|e| Error::io(&exe, "run", e))?;
    if !out.status.success() {
        let hint = if out.status.code().is_none() { "; killed by a signal, perhaps out of memory" } else { "" };
        return Err(Error::input(format!("benchmarking config {} ({}) failed ({}{hint})", spec.name, format_name(format), out.status)));
    }
    let value: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::input(format!("config {}: the child printed no valid JSON: {e}", spec.name)))?;
    value["configs"][0].as_object().map(|o| Value::Object(o.clone())).ok_or_else(|| {
        Error::input(format!("config {}: the child's JSON has no result", spec.name))
    })
}

/// Add the roofline (from the read bandwidth) to a config's result.
fn add_roofline(result: &mut Value, bandwidth: f64) {
    let Some(bytes) = result["decode_bytes_per_token"].as_f64() else { return };
    let roofline = bandwidth / bytes;
    result["roofline_decode_tok_per_s"] = json!(roofline);
    if let Some(contexts) = result["contexts"].as_array_mut() {
        // A step reads the weights once for the whole batch: the roofline bounds steps per second.
        for c in contexts {
            if let Some(ms) = c["decode_ms_per_step"].as_f64() {
                c["roofline_fraction"] = json!(1e3 / ms / roofline);
                if let Some(cache) = c["cache_read_bytes_per_step"].as_f64() {
                    c["roofline_with_cache_fraction"] = json!(1e3 / ms / (bandwidth / (bytes + cache)));
                }
            }
        }
    }
}

/// The median (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A `--batch-sizes` entry: a number of sequences, or `max` (the budget decides).
#[derive(Debug, Clone, Copy, PartialEq)]
enum BatchSize {
    Fixed(usize),
    LargestInBudget,
}

fn parse_batch_size(text: &str, budget_gb: Option<f64>) -> Result<BatchSize> {
    match (text.trim(), budget_gb) {
        ("max", Some(_)) => Ok(BatchSize::LargestInBudget),
        ("max", None) => Err(Error::usage("--batch-sizes", text, "max needs --cache-budget-gb")),
        (n, _) => count::<1, MAX_TOKENS>(n).map(BatchSize::Fixed).map_err(|e| Error::usage("--batch-sizes", text, format!("{e}, or max"))),
    }
}

/// One sequence's cache at `context` tokens (f32, as this engine keeps it: [`CachePlan`]), and
/// the largest batch whose caches fit `budget_bytes` (if given).
fn cache_budget(cfg: &HymbaConfig, context: usize, budget_bytes: Option<f64>) -> Result<(usize, Option<usize>)> {
    let per_sequence = CachePlan::new(cfg, context)?.size.bytes(ScalarType::F32);
    Ok((per_sequence, budget_bytes.map(|b| (b / per_sequence as f64).floor() as usize)))
}

/// The batch sizes to run at `context`.
fn batch_sizes_at(sizes: &[BatchSize], largest: Option<usize>) -> Result<Vec<usize>> {
    (sizes.iter())
        .map(|size| match (size, largest) {
            (BatchSize::Fixed(n), _) => Ok(*n),
            (BatchSize::LargestInBudget, Some(n)) if n > 0 => Ok(n),
            (BatchSize::LargestInBudget, _) => Err(Error::new(ErrorKind::Usage, "--cache-budget-gb is too small for one sequence")),
        })
        .collect()
}

/// Fill `seq` (holding only the meta tokens) as if `context` tokens had been fed, without running
/// them: every K/V cache gets random keys and values at those positions, kept as a prefill keeps
/// them (windows evicted), and the position advances; the SSM states stay as they are. Returns
/// a token id to decode next.
fn fill_with_random_rows(seq: &mut Sequence, cfg: &HymbaConfig, context: usize, seed: u64) -> u32 {
    let mut rng = SplitMix64(seed);
    let mut random = |rows: usize, cols: usize| {
        Array2::from_shape_simple_fn((rows, cols), || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
    };
    let start = seq.cache.next_position;
    for chunk in (start..start + context).collect::<Vec<_>>().chunks(512) {
        let (keys, values) = (random(chunk.len(), cfg.k_width()), random(chunk.len(), cfg.v_width()));
        for kv in seq.cache.kv.iter_mut().flatten() {
            kv.append(keys.view(), values.view(), chunk);
        }
        seq.cache.finish_chunk(chunk.len(), cfg.num_memory_tokens);
    }
    (rng.next_u64() % cfg.vocab_size as u64) as u32
}

/// Reproducible random token ids.
fn random_ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Bytes a sequence's cache holds, counted as f32 (K/V rows, conv and scan state).
fn cache_bytes(cache: &HybridCache) -> u64 {
    cache.allocated_scalars().bytes(ScalarType::F32) as u64
}

/// RSS growth since `base`, if both readings exist.
fn rss_growth(base: Option<u64>) -> Option<u64> {
    memory::release_free_memory();
    Some(memory::rss_bytes()?.saturating_sub(base?))
}

/// Build one config's model from random weights and time it at every context (child side).
fn bench_config(spec: &ConfigSpec, args: &BenchArgs, batch_sizes: &[BatchSize], format: Option<QuantType>) -> Result<Value> {
    let cfg = HymbaConfig::from_json_str(&spec.json)?;
    let source = RandomWeights::new(&cfg, args.seed);
    let (params, params_read) = (cfg.parameter_count() as u64, cfg.decode_read_parameters() as u64);

    eprintln!("[bench] {}: generating {:.1}M random parameters", spec.name, params as f64 / 1e6);
    memory::release_free_memory();
    let rss_base = memory::rss_bytes();
    let start = Instant::now();
    let weights = HymbaWeights::from_checkpoint(&cfg, &source)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (cfg, weights) = match format {
        Some(kind) => {
            eprintln!("[bench] {}: quantizing to {kind}", spec.name);
            crate::load::quantize_at_load(cfg, weights, kind, Path::new(&spec.name))?
        }
        None => (cfg, weights),
    };
    let quantize_seconds = format.map(|_| start.elapsed().as_secs_f64());
    let weights_rss = rss_growth(rss_base);
    let (weight_bytes, decode_bytes) = weight_bytes(&cfg, &weights);
    let start = Instant::now();
    let model = Hymba::new(cfg.clone(), weights);
    let meta_seconds = start.elapsed().as_secs_f64();
    let model_rss = rss_growth(rss_base);
    let load_peak = memory::peak_rss_bytes();
    let meta_cache = cache_bytes(&model.new_sequence().cache);
    // The memory the built model took, less its meta-token cache: the weights' bytes and whatever
    // the allocator adds (it moves between runs; the weights' bytes do not).
    let model_rss = model_rss.map(|m| m.saturating_sub(meta_cache));
    let bytes_per_param = weight_bytes as f64 / params as f64;

    // Warm-up: first-touch page faults and lazily built tables, outside the timed runs.
    let mut warm = model.new_sequence();
    let logits = model.next_token_logits(&random_ids(cfg.vocab_size, 8, args.seed), &mut warm)?;
    model.next_token_logits(&[argmax(logits.as_slice().expect("contiguous"))], &mut warm)?;
    drop(warm);

    let mut contexts = Vec::new();
    for &context in &args.contexts {
        let budget = args.cache_budget_gb.map(|gb| gb * 1e9);
        let (per_sequence, largest) = cache_budget(&cfg, context + args.decode_tokens, budget)?;
        for batch in batch_sizes_at(batch_sizes, largest)? {
            let mut result = bench_context(&model, spec, args, context, batch)?;
            result["cache_plan_bytes_per_sequence"] = json!(per_sequence);
            result["largest_batch_in_budget"] = json!(largest);
            contexts.push(result);
        }
    }
    Ok(json!({
        "name": spec.name,
        "weights": format_name(format),
        "config": {
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "num_memory_tokens": cfg.num_memory_tokens,
            "sliding_window": cfg.sliding_window,
            "global_attn_idx": cfg.global_attn_idx,
            "kv_producing_layers": cfg.layers.iter().filter(|p| p.owns_kv()).count(),
        },
        "params": params,
        "params_read_per_decode_token": params_read,
        "weight_bytes": weight_bytes,
        "model_rss_bytes": model_rss,
        "weights_only_rss_bytes": weights_rss,
        "bytes_per_param": bytes_per_param,
        "decode_bytes_per_token": decode_bytes,
        "quantize_seconds": quantize_seconds,
        "meta_cache_bytes": meta_cache,
        "load_seconds": load_seconds,
        "meta_tokens_seconds": meta_seconds,
        "load_peak_rss_bytes": load_peak,
        "contexts": contexts,
    }))
}

/// What one run measured: the prefill's seconds (NaN with `--synthetic-cache`: nothing is
/// prefilled), the decode steps' seconds, the batch's cache, and, when profiling, the time per
/// phase of the prefill (none with `--synthetic-cache`) and of the decode steps.
struct Run {
    prefill_seconds: f64,
    decode_seconds: f64,
    /// The CPU the process used during the prefill and during the decode steps (none without `/proc`).
    prefill_cpu: Option<CpuTime>,
    decode_cpu: Option<CpuTime>,
    cache_bytes: u64,
    prefill_profile: Option<PhaseTimes>,
    decode_profile: Option<PhaseTimes>,
}

/// One run: prefill `ids` into a fresh sequence (or fill its cache at random with
/// `--synthetic-cache`), then `--decode-tokens` greedy steps of a [`Batch`] of `batch_size`
/// copies of it, timing the prefill and each step; with `profile`, also per phase.
fn run_once(model: &Hymba, args: &BenchArgs, ids: &[u32], batch_size: usize, profile: bool) -> Result<Run> {
    let context = ids.len();
    let mut seq = model.new_sequence();
    seq.reserve(context + args.decode_tokens);
    if profile {
        *seq.scratch.profile_mut() = Profile::recording();
    }
    let (start, cpu_start) = (Instant::now(), CpuTime::now());
    let first = match args.synthetic_cache {
        true => fill_with_random_rows(&mut seq, &model.config, context, args.seed),
        false => argmax(model.next_token_logits(ids, &mut seq)?.as_slice().expect("contiguous")),
    };
    let prefill_seconds = if args.synthetic_cache { f64::NAN } else { start.elapsed().as_secs_f64() };
    let prefill_cpu = CpuTime::now().zip(cpu_start).filter(|_| !args.synthetic_cache).map(|(end, start)| end - start);
    let prefill_profile = (profile && !args.synthetic_cache).then(|| PhaseTimes::of(prefill_seconds, seq.scratch.profile(), 1));
    // The batch: B − 1 copies of the prefilled cache, then the cache itself. The prefill's
    // scratch is dropped first and the cache moved, not copied, so that the peak memory counts
    // what decoding B sequences holds: one cache per sequence. (Copying all B, with the scratch
    // still held, put a second cache and the prefill's activations in the peak of B = 1: 1.93 GB
    // for the 1.5B with q8_0 at context 1024, where generating holds at most one of each.)
    let Sequence { cache, scratch } = seq;
    drop(scratch);
    let mut batch = Batch::new();
    for _ in 1..batch_size {
        let mut copy = Sequence { cache: cache.clone(), scratch: Default::default() };
        copy.reserve(args.decode_tokens); // a copy holds no spare room
        batch.add(copy);
    }
    batch.add(Sequence { cache, scratch: Default::default() }); // reserved before the prefill
    if profile {
        *batch.profile_mut() = Profile::recording();
    }
    let mut next = vec![first; batch_size];
    let (mut decode_seconds, cpu_start) = (0.0, CpuTime::now()); // CPU counted in ticks of 10 ms: over all steps
    for _ in 0..args.decode_tokens {
        let start = Instant::now();
        let logits = batch.step(model, &next)?; // (B, V)
        decode_seconds += start.elapsed().as_secs_f64();
        for (next, row) in next.iter_mut().zip(logits.rows()) {
            *next = argmax(row.as_slice().expect("contiguous"));
        }
    }
    let decode_cpu = CpuTime::now().zip(cpu_start).map(|(end, start)| end - start);
    Ok(Run {
        prefill_seconds,
        decode_seconds,
        prefill_cpu,
        decode_cpu,
        cache_bytes: batch.cache_bytes() as u64,
        prefill_profile,
        decode_profile: profile.then(|| PhaseTimes::of(decode_seconds, batch.profile(), args.decode_tokens)),
    })
}

/// Time `runs` × (prefill `context` tokens, decode `decode_tokens` steps of `batch_size` such
/// sequences) on `model` (child side). With `--profile`, the timed prefill and steps are also
/// timed per phase, and before each run the same run is made inside a one-thread pool, for the
/// one-thread side of the profile.
fn bench_context(model: &Hymba, spec: &ConfigSpec, args: &BenchArgs, context: usize, batch_size: usize) -> Result<Value> {
    let ids = random_ids(model.config.vocab_size, context, args.seed ^ (context as u64).wrapping_mul(0x9E37));
    memory::release_free_memory();
    let peak_reset = memory::reset_peak();
    let rss_before = memory::rss_bytes();
    let (mut prefill, mut decode, mut cache_size) = (Vec::new(), Vec::new(), 0);
    // The CPU used by the timed runs, summed: (prefill, decode), none once a reading fails.
    let (mut prefill_cpu, mut decode_cpu) = (Some(CpuTime::default()), Some(CpuTime::default()));
    let one_thread = match args.profile {
        true => Some(rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| Error::input(format!("cannot start a worker thread: {e}")))?),
        false => None,
    };
    // Per run: the profiles at 1 thread and at N, for prefill and decode.
    let [mut prefill_1, mut decode_1, mut prefill_n, mut decode_n] = [(); 4].map(|_| Vec::new());
    let started = Instant::now();
    for run in 1..=args.runs {
        if let Some(pool) = &one_thread {
            let one = pool.install(|| run_once(model, args, &ids, batch_size, true))?;
            prefill_1.extend(one.prefill_profile);
            decode_1.extend(one.decode_profile);
        }
        let timed = run_once(model, args, &ids, batch_size, args.profile)?;
        prefill_n.extend(timed.prefill_profile);
        decode_n.extend(timed.decode_profile);
        let (prefill_seconds, decode_seconds) = (timed.prefill_seconds, timed.decode_seconds);
        cache_size = timed.cache_bytes;
        prefill_cpu = prefill_cpu.zip(timed.prefill_cpu).map(|(sum, run)| sum + run);
        decode_cpu = decode_cpu.zip(timed.decode_cpu).map(|(sum, run)| sum + run);
        eprintln!(
            "[bench] {} context {context} batch {batch_size} run {run}/{}: prefill {prefill_seconds:.3} s ({:.1} tok/s), decode {:.2} ms/step ({:.2} tok/s)",
            spec.name,
            args.runs,
            context as f64 / prefill_seconds,
            decode_seconds * 1e3 / args.decode_tokens as f64,
            (batch_size * args.decode_tokens) as f64 / decode_seconds,
        );
        prefill.push(prefill_seconds);
        decode.push(decode_seconds);
        if args.time_budget.is_some_and(|b| started.elapsed().as_secs_f64() >= b) {
            break;
        }
    }
    let threads = rayon::current_num_threads();
    let rows = hymba_ref::model::pass::rows_per_pass(context, hymba_ref::model::pass::MAX_ROWS_PER_PASS);
    // A decode step is one pass of one row per sequence. With --synthetic-cache nothing was
    // prefilled: no prefill profile.
    let profile = args.profile.then(|| {
        let region = regions::region_cost();
        let decode = profile::summary(&decode_1, &decode_n, threads, RowKind::OnePerSequence, batch_size, region);
        let mut summaries = json!({ "threads": threads, "decode": decode });
        if !prefill_n.is_empty() {
            summaries["prefill"] = profile::summary(&prefill_1, &prefill_n, threads, RowKind::Chunk, rows, region);
        }
        summaries
    });
    let (p, d) = (median(&prefill), median(&decode));
    let prefill_seconds: Vec<Option<f64>> = prefill.iter().map(|s| s.is_finite().then_some(*s)).collect();
    Ok(json!({
        "context": context,
        "batch_size": batch_size,
        "synthetic_cache": args.synthetic_cache,
        "runs": prefill.len(),
        "prefill_seconds": prefill_seconds,
        "decode_seconds": decode,
        "prefill_tok_per_s": (context as f64 / p).is_finite().then_some(context as f64 / p),
        "decode_tok_per_s": (batch_size * args.decode_tokens) as f64 / d,
        "decode_ms_per_step": d * 1e3 / args.decode_tokens as f64,
        "cache_bytes": cache_size,
        "cache_read_bytes_per_step": CachePlan::new(&model.config, context)?.decode_read_elements().saturating_mul(ScalarType::F32.bytes() * batch_size),
        "prefill_cpu": prefill_cpu.map(|cpu| cpu.json(prefill.iter().sum(), threads)),
        "decode_cpu": decode_cpu.map(|cpu| cpu.json(decode.iter().sum(), threads)),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": if peak_reset { memory::peak_rss_bytes() } else { None },
        "profile": profile,
    }))
}

const MIB: f64 = 1024.0 * 1024.0;

/// The human-readable report.
fn table(report: &Value) -> String {
    let mut out = String::new();
    let bw = report["bandwidth"]["read_bytes_per_second"].as_f64();
    let count = |key: &str, word: &str| counted(report[key].as_u64().unwrap_or(0), word);
    let runs = match report["runs"].as_u64() {
        Some(1) => "1 run".to_string(),
        _ => format!("median of up to {}", count("runs", "run")),
    };
    out += &format!(
        "hymba-ref bench: {}, {runs}, {}; read bandwidth {}\n",
        count("threads", "thread"),
        count("decode_tokens", "decode token"),
        bw.map_or("not measured".to_string(), |b| format!("{:.2} GB/s", b / 1e9)),
    );
    if let Some(load) = report["machine"]["load_average_start"].as_array() {
        out += &format!("load average at start: {}\n", load.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
    }
    if report["machine"]["scaling"].is_object() {
        out += &machine::line(&report["machine"]["scaling"]);
    }
    out += &format!(
        "{:<10} {:>9} {:>11} {:>9} {:>6} {:>5} {:>5} {:>13} {:>12} {:>9} {:>10} {:>10} {:>9} {:>14} {:>10} {:>10} {:>9}\n",
        "config", "params", "weights MiB", "RSS MiB", "ctx", "batch", "runs", "prefill tok/s", "decode tok/s", "ms/step",
        "cache MiB", "peak MiB", "peak/(w+c)", "roofline tok/s", "% roofline", "% w+cache", "max batch"
    );
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut above_roofline = false;
    for cfg in report["configs"].as_array().into_iter().flatten() {
        let weights = num(&cfg["weight_bytes"]);
        for c in cfg["contexts"].as_array().into_iter().flatten() {
            let peak = num(&c["peak_rss_bytes"]);
            // Missing figures (no bandwidth measured, no /proc) print as "-".
            let f = |x: f64, digits: usize| if x.is_finite() { format!("{x:.digits$}") } else { "-".into() };
            let percent = |x: f64| f(100.0 * x, 1) + if x.is_finite() { "%" } else { "" };
            out += &format!(
                "{:<10} {:>8.1}M {:>11} {:>9} {:>6} {:>5} {:>5} {:>13} {:>12} {:>9} {:>10} {:>10} {:>10} {:>14} {:>10} {:>10} {:>9}\n",
                match cfg["weights"].as_str() {
                    Some(w) if w != "bf16" => format!("{} {w}", cfg["name"].as_str().unwrap_or("?")),
                    _ => cfg["name"].as_str().unwrap_or("?").to_string(),
                },
                num(&cfg["params"]) / 1e6,
                f(weights / MIB, 1),
                f(num(&cfg["model_rss_bytes"]) / MIB, 1),
                c["context"].as_u64().unwrap_or(0),
                c["batch_size"].as_u64().unwrap_or(0),
                c["runs"].as_u64().unwrap_or(0),
                f(num(&c["prefill_tok_per_s"]), 1),
                f(num(&c["decode_tok_per_s"]), 2),
                f(num(&c["decode_ms_per_step"]), 2),
                f(num(&c["cache_bytes"]) / MIB, 1),
                f(peak / MIB, 1),
                f(peak / (weights + num(&c["cache_bytes"])), 3),
                f(num(&cfg["roofline_decode_tok_per_s"]), 2),
                match num(&c["roofline_fraction"]) {
                    x if x > 1.0 => {
                        above_roofline = true;
                        format!("{:.1}%!", 100.0 * x)
                    }
                    x => percent(x),
                },
                percent(num(&c["roofline_with_cache_fraction"])),
                f(num(&c["largest_batch_in_budget"]), 0),
            );
        }
    }
    out += "weights MiB: the bytes the weights hold; RSS MiB: the memory the built model took (it moves between runs)\n";
    out += "% roofline: of the weights' bytes alone; % w+cache: of the weights' and the cache's bytes a step reads\n";
    if above_roofline {
        out += &format!(
            "! above 100 %: decode read the weights faster than the measured read bandwidth ({}) allows, so that \
             measurement is implausibly low (a machine busy while it ran, or a small --bandwidth-mib); rerun it\n",
            bw.map_or("-".to_string(), |b| format!("{:.2} GB/s", b / 1e9))
        );
    }
    for cfg in report["configs"].as_array().into_iter().flatten() {
        for c in cfg["contexts"].as_array().into_iter().flatten().filter(|c| c["profile"].is_object()) {
            let name = cfg["name"].as_str().unwrap_or("?");
            out += &profile::table(name, c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configs::{BUILTIN_CONFIGS, DENSE_1_5B};
    use hymba_ref::config::AttentionSpan;

    #[test]
    fn builtin_configs_parse() {
        for (name, text) in BUILTIN_CONFIGS {
            HymbaConfig::from_json_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_dense_twin_has_every_layer_global_and_its_own_kv_and_a_far_larger_cache() {
        let hymba = HymbaConfig::from_json_str(BUILTIN_CONFIGS[2].1).unwrap();
        let dense = HymbaConfig::from_json_str(&resolve_config(DENSE_1_5B).unwrap().json).unwrap();
        assert!(dense.layers.iter().all(|l| l.owns_kv() && l.attention == AttentionSpan::Global));
        assert_eq!((dense.hidden_size, dense.num_hidden_layers, dense.vocab_size), (1600, 32, 32001));
        // At 8192 tokens: 32 layers × (128 + 8192) rows × 5 K/V heads × (64 + 128) against 3 global
        // and 14 windowed producers (1024 + 128 rows), plus the same SSM state in both.
        let ssm = 32 * 3200 * (16 + 3) * 4;
        let (hymba_seq, hymba_max) = cache_budget(&hymba, 8192, Some(12e9)).unwrap();
        let (dense_seq, dense_max) = cache_budget(&dense, 8192, Some(12e9)).unwrap();
        assert_eq!(hymba_seq, (3 * 8320 + 14 * 1152) * 960 * 4 + ssm);
        assert_eq!(dense_seq, 32 * 8320 * 960 * 4 + ssm);
        assert_eq!((hymba_max, dense_max), (Some(72), Some(11)));
    }

    #[test]
    fn a_synthetic_cache_holds_what_a_prefill_would() {
        let cfg = HymbaConfig::from_json_str(BUILTIN_CONFIGS[0].1).unwrap();
        let model = Hymba::new(cfg.clone(), HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 0)).unwrap());
        let window = cfg.sliding_window.expect("small has a window");
        for context in [3, window + 700] {
            let mut seq = model.new_sequence();
            let next = fill_with_random_rows(&mut seq, &cfg, context, 1);
            assert!((next as usize) < cfg.vocab_size);
            assert_eq!(seq.cache.next_position, cfg.num_memory_tokens + context);
            assert_eq!(seq.cache.allocated_scalars(), CachePlan::new(&cfg, context).unwrap().size);
        }
    }

    #[test]
    fn batch_sizes_are_numbers_or_the_largest_in_the_budget() {
        assert_eq!(parse_batch_size("16", None).unwrap(), BatchSize::Fixed(16));
        assert_eq!(parse_batch_size("max", Some(12.0)).unwrap(), BatchSize::LargestInBudget);
        assert!(parse_batch_size("max", None).unwrap_err().message.contains("--cache-budget-gb"));
        assert!(parse_batch_size("0", None).is_err() && parse_batch_size("x", None).is_err());
        let sizes = [BatchSize::Fixed(4), BatchSize::LargestInBudget];
        assert_eq!(batch_sizes_at(&sizes, Some(9)).unwrap(), [4, 9]);
        assert!(batch_sizes_at(&sizes, Some(0)).is_err());
    }

    #[test]
    fn the_table_counts_in_words_and_flags_a_roofline_share_above_100_percent() {
        let context = |fraction: f64| json!({ "context": 8, "batch_size": 1, "runs": 1, "roofline_fraction": fraction });
        let report = |runs: u64, fractions: &[f64]| json!({
            "threads": 1, "runs": runs, "decode_tokens": 1, "bandwidth": { "read_bytes_per_second": 1e9 },
            "configs": [{ "name": "small", "params": 1e6, "weight_bytes": 2e6, "model_rss_bytes": 3e6,
                          "contexts": fractions.iter().map(|&f| context(f)).collect::<Vec<_>>() }],
        });
        let plain = table(&report(1, &[0.5]));
        assert!(plain.starts_with("hymba-ref bench: 1 thread, 1 run, 1 decode token; read bandwidth 1.00 GB/s\n"), "{plain}");
        assert!(plain.contains(" 50.0%") && !plain.contains("above 100 %"), "{plain}");
        let over = table(&report(3, &[0.5, 1.117]));
        assert!(over.starts_with("hymba-ref bench: 1 thread, median of up to 3 runs, 1 decode token;"), "{over}");
        assert!(over.contains("111.7%!") && over.contains("! above 100 %: decode read the weights faster than the measured read bandwidth (1.00 GB/s)"), "{over}");
        // The weights column is the weights' bytes (2e6 B), RSS its own column (3e6 B).
        assert!(over.contains("        1.9       2.9 "), "{over}");
    }

    #[test]
    fn the_roofline_shares_count_the_weights_and_then_the_cache_too() {
        // 1 GB of weights and 0.1 GB of cache a step at 20 GB/s: at most 20 steps/s on the weights
        // alone, 18.2 with the cache; 100 ms a step is 50 % and 55 % of those.
        let mut result = json!({ "decode_bytes_per_token": 1e9, "contexts": [
            { "decode_ms_per_step": 100.0, "cache_read_bytes_per_step": 1e8 }, { "decode_ms_per_step": 100.0 } ] });
        add_roofline(&mut result, 20e9);
        let c = &result["contexts"];
        assert_eq!(result["roofline_decode_tok_per_s"], json!(20.0));
        assert!((c[0]["roofline_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        assert!((c[0]["roofline_with_cache_fraction"].as_f64().unwrap() - 0.55).abs() < 1e-12);
        assert!(c[1]["roofline_with_cache_fraction"].is_null(), "no cache figure, no second share");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn released_shape_parameter_count() {
        // docs/MODEL.md §2: Hymba-1.5B has 1,522.8M parameters; the meta tokens are not read when
        // decoding (their K/V and states are computed once, §5.1).
        let cfg = HymbaConfig::from_json_str(BUILTIN_CONFIGS[2].1).unwrap();
        let (total, read) = (cfg.parameter_count(), cfg.decode_read_parameters());
        assert_eq!((total as f64 / 1e5).round() / 10.0, 1522.8);
        assert_eq!(total - read, 128 * 1600);
    }
}
