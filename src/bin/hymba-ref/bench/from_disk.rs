//! `bench --from-disk`: what a user waits for. Each config's random weights are written to a
//! temporary directory in the published layout (two bf16 shards, `model.safetensors.index.json`
//! and `config.json`), read once so the page cache is warm, and then each run is a fresh process of
//! this binary (`bench --child-load DIR`) that loads the checkpoint, gets the meta-token prefix
//! and prefills a one-token prompt, as `generate` does. The parent times process start → the
//! child's report, which the child writes as soon as it has the first token (freeing the model at
//! exit comes after, as it does for a user); the report has the split (load, meta prefix,
//! prefill) and the child's peak RSS. The children's prefix cache is a directory inside the
//! checkpoint's: the first run computes the prefix and stores it, the later runs read it (a
//! user's second start). Each is reported apart. The directory is removed afterwards. With
//! `--weights q8_0|q4_0` the bf16 checkpoint is quantized to a second directory (as `hymba-ref
//! quantize` does), which is the one the runs load.

use super::{argmax, cache_bytes, median, memory, random_ids, BenchArgs, ConfigSpec};
use crate::args::print_stdout;
use crate::load::load_model;
use hymba_ref::checkpoint::quantized::write_quantized;
use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::kernels::quant::QuantType;
use hymba_ref::config::HymbaConfig;
use hymba_ref::{Error, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Shards of the written checkpoint, as Hymba-1.5B is published.
const SHARDS: usize = 2;

/// A checkpoint directory that is removed when dropped (also when a run fails).
struct ScratchCheckpoint(PathBuf);

impl Drop for ScratchCheckpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Measure every config from disk; one JSON value per config.
pub fn bench_configs(specs: &[ConfigSpec], args: &BenchArgs, threads: usize, format: Option<QuantType>) -> Result<Vec<Value>> {
    specs.iter().map(|spec| bench_config(spec, args, threads, format)).collect()
}

fn bench_config(spec: &ConfigSpec, args: &BenchArgs, threads: usize, format: Option<QuantType>) -> Result<Value> {
    let cfg = HymbaConfig::from_json_str(&spec.json)?;
    let name: String = spec.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let dir = ScratchCheckpoint(std::env::temp_dir().join(format!("hymba-ref-bench-{}-{name}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| Error::io(&dir.0, "create", e))?;
    eprintln!("[bench] {}: writing a random bf16 checkpoint to {}", spec.name, dir.0.display());
    let start = Instant::now();
    let weight_bytes = RandomWeights::new(&cfg, args.seed).write_sharded(&dir.0, SHARDS)?;
    let config_path = dir.0.join("config.json");
    std::fs::write(&config_path, &spec.json).map_err(|e| Error::io(&config_path, "write", e))?;
    let write_seconds = start.elapsed().as_secs_f64();
    // The runs load `dir`, or its quantized copy.
    let (dir, weight_bytes, quantize_seconds) = match format {
        None => (dir, weight_bytes, None),
        Some(kind) => {
            let quantized = ScratchCheckpoint(dir.0.with_file_name(format!("hymba-ref-bench-{}-{name}-{kind}", std::process::id())));
            eprintln!("[bench] {}: quantizing it to {kind} in {}", spec.name, quantized.0.display());
            let start = Instant::now();
            let bytes = write_quantized(&dir.0, &quantized.0, kind, |_, _, _| {})?;
            (quantized, bytes, Some(start.elapsed().as_secs_f64()))
        }
    };
    warm_page_cache(&dir.0)?;

    let mut runs = Vec::new();
    for run in 1..=args.runs.max(2) {
        let (wall, child) = run_child(&dir.0, args, threads)?;
        eprintln!(
            "[bench] {} from disk run {run}/{}: start → first token {wall:.3} s (load {:.3} s, meta prefix {:.3} s {}, prefill {:.3} s), peak RSS {:.0} MiB",
            spec.name,
            args.runs.max(2),
            child["load_seconds"].as_f64().unwrap_or(f64::NAN),
            child["meta_prefix_seconds"].as_f64().unwrap_or(f64::NAN),
            if child["prefix_from_cache"] == true { "cached" } else { "computed" },
            child["prefill_seconds"].as_f64().unwrap_or(f64::NAN),
            child["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / super::MIB,
        );
        runs.push(json!({ "start_to_first_token_seconds": wall, "child": child }));
    }
    let (computed, cached): (Vec<&Value>, Vec<&Value>) = runs.iter().partition(|r| r["child"]["prefix_from_cache"] != true);
    Ok(json!({
        "name": spec.name,
        "weights": super::format_name(format),
        "weight_bytes_on_disk": weight_bytes,
        "quantize_seconds": quantize_seconds,
        "shards": SHARDS,
        "write_seconds": write_seconds,
        "prefix_computed": summary(&computed),
        "prefix_cached": summary(&cached),
        "runs": runs,
    }))
}

/// Medians of the runs' figures (null without runs).
fn summary(runs: &[&Value]) -> Value {
    if runs.is_empty() {
        return Value::Null;
    }
    let med = |values: Vec<f64>| median(&values);
    let child = |key: &str| med(runs.iter().filter_map(|r| r["child"][key].as_f64()).collect());
    json!({
        "runs": runs.len(),
        "start_to_first_token_seconds": med(runs.iter().filter_map(|r| r["start_to_first_token_seconds"].as_f64()).collect()),
        "load_seconds": child("load_seconds"),
        "meta_prefix_seconds": child("meta_prefix_seconds"),
        "prefill_seconds": child("prefill_seconds"),
        "peak_rss_bytes": child("peak_rss_bytes"),
        "cache_bytes": child("cache_bytes"),
    })
}

/// Read every file once, so the runs find it in the page cache (as a second start does).
fn warm_page_cache(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, "list", e))?.path();
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        std::io::copy(&mut file, &mut std::io::sink()).map_err(|e| Error::io(&path, "read", e))?;
    }
    Ok(())
}

/// One fresh process: its wall time from spawn to its report (written as soon as the first token
/// is computed, before the model is freed: a user sees the token then, and freeing 1.6 GB of
/// weights at exit takes ~0.1 s more), and the report.
fn run_child(dir: &Path, args: &BenchArgs, threads: usize) -> Result<(f64, Value)> {
    let exe = std::env::current_exe().map_err(|e| Error::input(format!("cannot find this program: {e}")))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "--child-load"])
        .arg(dir)
        .args(["--threads", &threads.to_string(), "--seed", &args.seed.to_string()])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("XDG_CACHE_HOME", dir.join("prefix-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::io(&exe, "run", e))?;
    let mut report = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut report);
    let wall = start.elapsed().as_secs_f64();
    let status = child.wait().map_err(|e| Error::io(&exe, "wait for", e))?;
    read.map_err(|e| Error::io(&exe, "read the report of", e))?;
    if !status.success() {
        return Err(Error::input(format!("loading {} in a child process failed ({status})", dir.display())));
    }
    let value = serde_json::from_str(&report)
        .map_err(|e| Error::input(format!("the child loading {} printed no valid JSON: {e}", dir.display())))?;
    Ok((wall, value))
}

/// Child side: load `dir` as `generate` does, compute the first token of a one-token prompt, and
/// write the report (one JSON line) at once, before the model is freed.
pub fn child(dir: &Path, seed: u64) -> Result<()> {
    let loaded = load_model(dir, true, None)?;
    let model = &loaded.model;
    let mut sequence = model.new_sequence();
    let prompt = random_ids(model.config.vocab_size, 1, seed);
    let start = Instant::now();
    let logits = model.next_token_logits(&prompt, &mut sequence)?;
    let first_token = argmax(logits.as_slice().expect("contiguous"));
    let prefill_seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "load_seconds": loaded.load_seconds,
        "meta_prefix_seconds": loaded.meta_prefix_seconds,
        "prefill_seconds": prefill_seconds,
        "prefix_from_cache": loaded.prefix_from_cache,
        "first_token": first_token,
        "cache_bytes": cache_bytes(&sequence.cache),
        "peak_rss_bytes": memory::peak_rss_bytes(),
    });
    print_stdout(&format!("{report}\n"))
}

/// The human-readable report: per config, the run that computed the meta prefix and the
/// median of the runs that read it from the cache.
pub fn table(threads: usize, configs: &[Value]) -> String {
    let mut out = format!(
        "hymba-ref bench --from-disk: {threads} threads, published layout ({SHARDS} bf16 shards), warm page cache, one-token prompt\n"
    );
    out += &format!(
        "{:<7} {:>11} {:>13} {:>5} {:>19} {:>8} {:>12} {:>9} {:>13} {:>11}\n",
        "config", "weights MiB", "meta prefix", "runs", "start→first token", "load", "meta prefix", "prefill", "peak RSS MiB", "peak/(w+c)"
    );
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for c in configs {
        let weights = num(&c["weight_bytes_on_disk"]);
        for (label, s) in [("computed", &c["prefix_computed"]), ("cached", &c["prefix_cached"])] {
            if s.is_null() {
                continue;
            }
            let peak = num(&s["peak_rss_bytes"]);
            out += &format!(
                "{:<7} {:>11.1} {:>13} {:>5} {:>17.3} s {:>6.3} s {:>10.3} s {:>7.3} s {:>13.1} {:>11.3}\n",
                c["name"].as_str().unwrap_or("?"),
                weights / super::MIB,
                label,
                s["runs"],
                num(&s["start_to_first_token_seconds"]),
                num(&s["load_seconds"]),
                num(&s["meta_prefix_seconds"]),
                num(&s["prefill_seconds"]),
                peak / super::MIB,
                peak / (weights + num(&s["cache_bytes"])),
            );
        }
    }
    out
}
