//! `hymba-ref bench`: prefill and decode speed, peak memory and the decode roofline, on random
//! weights generated in memory (nothing is downloaded).
//!
//! For each config × context: prefill `context` random token ids into a fresh sequence (the meta
//! tokens are already in it: [`Hymba::new`] runs them once per model) and time it, then decode
//! `--decode-tokens` greedy tokens one at a time and time each step. Each config × context is
//! repeated `--runs` times (fewer if `--time-budget` runs out; never fewer than one) and the
//! median time is reported.
//!
//! Memory: each config runs in a fresh child process of this binary (`bench --child`), so its
//! peak RSS is its own. Inside the child, the peak is reset after the model is built and again
//! before each context, so every context reports the peak of its own prefill + decode runs
//! (model + cache + scratch); the load peak is reported separately.
//!
//! Roofline: a decode step reads every weight matrix once (`in_proj`, `x_proj`, `dt_proj`,
//! `out_proj`, the MLP, the small per-layer vectors, and `lm_head` — the embedding when tied; an
//! untied embedding contributes one row, the meta tokens nothing). Its bytes are those parameters
//! times the bytes per parameter the model holds in memory (measured: the RSS the built model
//! adds, less its meta-token cache). The roofline is the measured read bandwidth divided by those
//! bytes: no decode can be faster. K/V cache reads are not counted.

mod bandwidth;
mod limits;
mod memory;
mod profile;

use crate::args::print_stdout;
use clap::Args;
use hymba_ref::cache::HybridCache;
use hymba_ref::cache_plan::ScalarType;
use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::HymbaConfig;
use hymba_ref::generate::sampling::argmax;
use hymba_ref::model::{Hymba, Profile};
use profile::PhaseTimes;
use hymba_ref::rng::SplitMix64;
use hymba_ref::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The built-in configs: `small` and `mid` are made up for benchmarking (released-style configs
/// with every Hymba feature: meta tokens, a sliding window, global layers, K/V groups, the
/// released vocabulary); `1.5b` is a copy of the released Hymba-1.5B `config.json`.
const BUILTIN_CONFIGS: [(&str, &str); 3] = [
    ("small", include_str!("bench/configs/small.json")),
    ("mid", include_str!("bench/configs/mid.json")),
    ("1.5b", include_str!("bench/configs/1.5b.json")),
];

#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated configs: `small`, `mid`, `1.5b` (the released Hymba-1.5B shape), or paths
    /// to config.json files.
    #[arg(long, value_delimiter = ',', default_value = "small,mid,1.5b")]
    configs: Vec<String>,
    /// Comma-separated prompt lengths to prefill (meta tokens not counted).
    #[arg(long, value_delimiter = ',', default_value = "128,1024,4096")]
    contexts: Vec<usize>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Repetitions of each config × context; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Stop repeating a config × context once its runs took this many seconds (at least one
    /// run is always made).
    #[arg(long, value_name = "SECONDS")]
    time_budget: Option<f64>,
    /// Greedy tokens decoded after each prefill.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// Seed of the random weights and token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Buffer size for the read-bandwidth measurement (0: skip it).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    bandwidth_mib: usize,
    /// Also time each phase of a pass (weights, attention, conv, scan, elementwise, output) at
    /// one thread and at --threads, run alternately, and report each phase's speed-up and the
    /// serial share of the pass (Amdahl). Doubles the running time.
    #[arg(long)]
    profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: measure the configs in this process and print their raw JSON (the parent runs
    /// each config this way in a child process, so each gets its own peak memory).
    #[arg(long, hide = true)]
    child: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 || args.decode_tokens == 0 {
        return Err(Error::input("--runs and --decode-tokens must be at least 1"));
    }
    if args.contexts.contains(&0) {
        return Err(Error::input("--contexts: every context must be at least 1 token"));
    }
    let specs = args.configs.iter().map(|name| resolve_config(name)).collect::<Result<Vec<_>>>()?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    limits::check_run(&specs, &args, threads)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::input(format!("cannot start {threads} worker threads: {e}")))?;

    if args.child {
        let configs = specs.iter().map(|spec| bench_config(spec, &args)).collect::<Result<Vec<_>>>()?;
        print_stdout(&format!("{}\n", json!({ "configs": configs })))?;
        return Ok(());
    }

    let load_start = memory::load_average();
    let bandwidth = (args.bandwidth_mib > 0).then(|| {
        eprintln!("[bench] measuring read bandwidth ({} MiB buffer, {threads} threads)", args.bandwidth_mib);
        bandwidth::measure_read_bandwidth(args.bandwidth_mib << 20, 7)
    });
    let mut configs = Vec::new();
    for spec in &specs {
        let mut result = run_child(spec, &args, threads)?;
        if let Some(bw) = &bandwidth {
            add_roofline(&mut result, bw.median);
        }
        configs.push(result);
    }
    let report = json!({
        "engine": "hymba-ref",
        "version": env!("CARGO_PKG_VERSION"),
        "threads": threads,
        "runs": args.runs,
        "time_budget_seconds": args.time_budget,
        "decode_tokens": args.decode_tokens,
        "seed": args.seed,
        "machine": {
            "cpu": memory::cpu_model(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "load_average_start": load_start,
            "load_average_end": memory::load_average(),
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

/// A config to benchmark: its display name and the text of its `config.json`.
struct ConfigSpec {
    name: String,
    json: String,
}

fn resolve_config(name: &str) -> Result<ConfigSpec> {
    if let Some((_, text)) = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name) {
        return Ok(ConfigSpec { name: name.to_string(), json: text.to_string() });
    }
    let path = Path::new(name);
    if !path.exists() {
        let known: Vec<&str> = BUILTIN_CONFIGS.iter().map(|(n, _)| *n).collect();
        return Err(Error::input(format!(
            "--configs: {name:?} is neither a built-in config ({}) nor an existing config.json file",
            known.join(", ")
        )));
    }
    let text = hymba_ref::files::read_text_capped(path, hymba_ref::files::CONFIG)?;
    HymbaConfig::from_json_str(&text).map_err(|e| e.context(path.display()))?;
    Ok(ConfigSpec { name: name.to_string(), json: text })
}

/// Run one config in a fresh child process of this binary; its JSON result.
fn run_child(spec: &ConfigSpec, args: &BenchArgs, threads: usize) -> Result<Value> {
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find this program: {e}")))?;
    let contexts: Vec<String> = args.contexts.iter().map(|c| c.to_string()).collect();
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "--child", "--configs", &spec.name, "--contexts", &contexts.join(",")])
        .args(["--threads", &threads.to_string(), "--runs", &args.runs.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string(), "--seed", &args.seed.to_string()])
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
    let out = cmd.output().map_err(|e| Error::io(&exe, "run", e))?;
    if !out.status.success() {
        let hint = if out.status.code().is_none() { "; killed by a signal, perhaps out of memory" } else { "" };
        return Err(Error::input(format!("benchmarking config {} failed ({}{hint})", spec.name, out.status)));
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
        for c in contexts {
            if let Some(tps) = c["decode_tok_per_s"].as_f64() {
                c["roofline_fraction"] = json!(tps / roofline);
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
fn bench_config(spec: &ConfigSpec, args: &BenchArgs) -> Result<Value> {
    let cfg = HymbaConfig::from_json_str(&spec.json)?;
    let source = RandomWeights::new(&cfg, args.seed);
    let (params, params_read) = (cfg.parameter_count() as u64, cfg.decode_read_parameters() as u64);

    eprintln!("[bench] {}: generating {:.1}M random parameters", spec.name, params as f64 / 1e6);
    memory::release_free_memory();
    let rss_base = memory::rss_bytes();
    let start = Instant::now();
    let weights = HymbaWeights::from_checkpoint(&cfg, &source)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let weights_rss = rss_growth(rss_base);
    let start = Instant::now();
    let model = Hymba::new(cfg.clone(), weights);
    let meta_seconds = start.elapsed().as_secs_f64();
    let model_rss = rss_growth(rss_base);
    let load_peak = memory::peak_rss_bytes();
    let meta_cache = cache_bytes(&model.new_sequence().cache);
    // Everything the model holds except its meta-token cache; bytes per parameter follow from it.
    let weight_bytes = model_rss.map(|m| m.saturating_sub(meta_cache));
    let bytes_per_param = weight_bytes.map_or(4.0, |w| w as f64 / params as f64);

    // Warm-up: first-touch page faults and lazily built tables, outside the timed runs.
    let mut warm = model.new_sequence();
    let logits = model.next_token_logits(&random_ids(cfg.vocab_size, 8, args.seed), &mut warm)?;
    model.next_token_logits(&[argmax(logits.as_slice().expect("contiguous"))], &mut warm)?;
    drop(warm);

    let mut contexts = Vec::new();
    for &context in &args.contexts {
        contexts.push(bench_context(&model, spec, args, context)?);
    }
    Ok(json!({
        "name": spec.name,
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
        "weights_only_rss_bytes": weights_rss,
        "bytes_per_param": bytes_per_param,
        "decode_bytes_per_token": params_read as f64 * bytes_per_param,
        "meta_cache_bytes": meta_cache,
        "load_seconds": load_seconds,
        "meta_tokens_seconds": meta_seconds,
        "load_peak_rss_bytes": load_peak,
        "contexts": contexts,
    }))
}

/// One prefill of `ids` into a fresh sequence, then `decode_tokens` greedy steps: their seconds
/// and, when profiling, their time per phase.
struct Generation {
    prefill: PhaseTimes,
    decode: PhaseTimes,
    cache_bytes: u64,
}

fn generate(model: &Hymba, ids: &[u32], decode_tokens: usize, profile: bool) -> Result<Generation> {
    let mut seq = model.new_sequence();
    if profile {
        *seq.scratch.profile_mut() = Profile::recording();
    }
    let (mut prefill, mut decode) = (PhaseTimes::default(), PhaseTimes::default());
    let start = Instant::now();
    let greedy = |logits: ndarray::ArrayView1<f32>| argmax(logits.as_slice().expect("contiguous"));
    let mut next = greedy(model.next_token_logits(ids, &mut seq)?);
    prefill.add(start.elapsed().as_secs_f64(), seq.scratch.profile());
    seq.scratch.profile_mut().clear();
    let mut seconds = 0.0;
    for _ in 0..decode_tokens {
        let start = Instant::now();
        let logits = model.next_token_logits(&[next], &mut seq)?;
        seconds += start.elapsed().as_secs_f64();
        next = greedy(logits);
    }
    decode.add(seconds, seq.scratch.profile());
    Ok(Generation { prefill, decode, cache_bytes: cache_bytes(&seq.cache) })
}

/// Time `runs` × (prefill `context` tokens, decode `decode_tokens`) on `model` (child side);
/// with `--profile`, each run first at one thread, then at the pool's count.
fn bench_context(model: &Hymba, spec: &ConfigSpec, args: &BenchArgs, context: usize) -> Result<Value> {
    let ids = random_ids(model.config.vocab_size, context, args.seed ^ (context as u64).wrapping_mul(0x9E37));
    memory::release_free_memory();
    let peak_reset = memory::reset_peak();
    let rss_before = memory::rss_bytes();
    let (mut prefill, mut decode, mut cache_size) = (Vec::new(), Vec::new(), 0);
    let one_thread = match args.profile {
        true => Some(rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| Error::input(format!("cannot start a worker thread: {e}")))?),
        false => None,
    };
    // Per run: the profiles at 1 thread and at N, for prefill and decode.
    let [mut prefill_1, mut decode_1, mut prefill_n, mut decode_n] = [(); 4].map(|_| Vec::new());
    let started = Instant::now();
    for run in 1..=args.runs {
        if let Some(pool) = &one_thread {
            let one = pool.install(|| generate(model, &ids, args.decode_tokens, true))?;
            prefill_1.push(one.prefill);
            decode_1.push(one.decode);
        }
        let many = generate(model, &ids, args.decode_tokens, args.profile)?;
        let (prefill_seconds, decode_seconds) = (many.prefill.total, many.decode.total);
        prefill_n.push(many.prefill);
        decode_n.push(many.decode);
        cache_size = many.cache_bytes;
        eprintln!(
            "[bench] {} context {context} run {run}/{}: prefill {prefill_seconds:.3} s ({:.1} tok/s), decode {:.2} ms/token",
            spec.name,
            args.runs,
            context as f64 / prefill_seconds,
            decode_seconds * 1e3 / args.decode_tokens as f64
        );
        prefill.push(prefill_seconds);
        decode.push(decode_seconds);
        if args.time_budget.is_some_and(|b| started.elapsed().as_secs_f64() >= b) {
            break;
        }
    }
    let threads = rayon::current_num_threads();
    let rows = context.min(hymba_ref::model::pass::MAX_ROWS_PER_PASS);
    let profile = args.profile.then(|| {
        json!({
            "threads": threads,
            "prefill": profile::summary(&prefill_1, &prefill_n, threads, rows),
            "decode": profile::summary(&decode_1, &decode_n, threads, 1),
        })
    });
    let (p, d) = (median(&prefill), median(&decode));
    Ok(json!({
        "context": context,
        "runs": prefill.len(),
        "prefill_seconds": prefill,
        "decode_seconds": decode,
        "prefill_tok_per_s": context as f64 / p,
        "decode_tok_per_s": args.decode_tokens as f64 / d,
        "decode_ms_per_token": d * 1e3 / args.decode_tokens as f64,
        "cache_bytes": cache_size,
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
    out += &format!(
        "hymba-ref bench: {} threads, median of up to {} runs, {} decode tokens; read bandwidth {}\n",
        report["threads"],
        report["runs"],
        report["decode_tokens"],
        bw.map_or("not measured".to_string(), |b| format!("{:.2} GB/s", b / 1e9)),
    );
    if let Some(load) = report["machine"]["load_average_start"].as_array() {
        out += &format!("load average at start: {}\n", load.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
    }
    out += &format!(
        "{:<7} {:>9} {:>11} {:>6} {:>5} {:>13} {:>12} {:>9} {:>10} {:>10} {:>9} {:>14} {:>10}\n",
        "config", "params", "weights MiB", "ctx", "runs", "prefill tok/s", "decode tok/s", "ms/token",
        "cache MiB", "peak MiB", "peak/(w+c)", "roofline tok/s", "% roofline"
    );
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for cfg in report["configs"].as_array().into_iter().flatten() {
        let weights = num(&cfg["weight_bytes"]);
        for c in cfg["contexts"].as_array().into_iter().flatten() {
            let peak = num(&c["peak_rss_bytes"]);
            // Missing figures (no bandwidth measured, no /proc) print as "-".
            let f = |x: f64, digits: usize| if x.is_finite() { format!("{x:.digits$}") } else { "-".into() };
            out += &format!(
                "{:<7} {:>8.1}M {:>11} {:>6} {:>5} {:>13} {:>12} {:>9} {:>10} {:>10} {:>10} {:>14} {:>10}\n",
                cfg["name"].as_str().unwrap_or("?"),
                num(&cfg["params"]) / 1e6,
                f(weights / MIB, 1),
                c["context"].as_u64().unwrap_or(0),
                c["runs"].as_u64().unwrap_or(0),
                f(num(&c["prefill_tok_per_s"]), 1),
                f(num(&c["decode_tok_per_s"]), 2),
                f(num(&c["decode_ms_per_token"]), 2),
                f(num(&c["cache_bytes"]) / MIB, 1),
                f(peak / MIB, 1),
                f(peak / (weights + num(&c["cache_bytes"])), 3),
                f(num(&cfg["roofline_decode_tok_per_s"]), 2),
                match f(100.0 * num(&c["roofline_fraction"]), 1) {
                    x if x == "-" => x,
                    x => x + "%",
                },
            );
        }
    }
    for cfg in report["configs"].as_array().into_iter().flatten() {
        for c in cfg["contexts"].as_array().into_iter().flatten().filter(|c| c["profile"].is_object()) {
            let name = cfg["name"].as_str().unwrap_or("?");
            out += &profile::table(name, c["context"].as_u64().unwrap_or(0), &c["profile"]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_configs_parse() {
        for (name, text) in BUILTIN_CONFIGS {
            HymbaConfig::from_json_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn released_shape_parameter_count() {
        // SPEC: Hymba-1.5B has 1,522.8M parameters; the meta tokens are not read when decoding.
        let cfg = HymbaConfig::from_json_str(BUILTIN_CONFIGS[2].1).unwrap();
        let (total, read) = (cfg.parameter_count(), cfg.decode_read_parameters());
        assert_eq!((total as f64 / 1e5).round() / 10.0, 1522.8);
        assert_eq!(total - read, 128 * 1600);
    }
}
