//! `serve-load`: a load generator for `hymba-ref serve`, on this machine's loopback only.
//!
//! C client threads take the next of N requests until none is left; each is a streaming
//! `/v1/completions` request of `--prompt-tokens` random token ids (greedy, `ignore_eos`, so a good
//! request makes exactly `--max-tokens` tokens), or, every `--bad-every`-th, a bad request of one
//! of several classes (which must get its 4xx). Per request it records the status, the time to
//! the first text chunk, the times between chunks and the usage; at the end it prints a summary
//! (aggregate tok/s over the whole run and over the window where all C clients were streaming,
//! time to first token and inter-chunk latency p50/p99, failures) and, with `--out`, the raw
//! numbers as JSON. With `--server-pid`, the server's resident memory (VmRSS) after the first 100
//! requests and at the end.
//!
//!     serve-load --addr 127.0.0.1:8080 --clients 16 --requests 16 --prompt-tokens 128 --max-tokens 64 --vocab 32001

use clap::Parser;
use hymba_ref::base::rng::SplitMix64;
use hymba_ref::features::serve::client;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "serve-load", about = "Concurrent streaming clients against hymba-ref serve on the loopback")]
struct Args {
    /// The server's address (a loopback address).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Random prompt ids per request.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// The model's vocabulary size (prompt ids are drawn below it).
    #[arg(long, default_value_t = 4000)]
    vocab: u64,
    /// Every K-th request is a bad one (0: none).
    #[arg(long, default_value_t = 0)]
    bad_every: usize,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write every request's raw numbers here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds a request may take before it counts as failed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// What one request saw.
#[derive(Debug, Clone, Default)]
struct Record {
    index: usize,
    bad: bool,
    status: u16,
    /// Seconds from the run's start.
    sent: f64,
    /// Seconds from the run's start of each text chunk.
    chunks: Vec<f64>,
    completion_tokens: u64,
    finish_reason: Option<String>,
    error: Option<String>,
}

fn main() {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!("error: --addr {}: serve-load talks to this machine's loopback only", args.addr);
        std::process::exit(2);
    }
    let next = AtomicUsize::new(0);
    let records = Mutex::new(Vec::with_capacity(args.requests));
    let rss_after_100 = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.requests {
                    break;
                }
                let record = run_request(&args, i, start);
                let mut all = records.lock().unwrap();
                all.push(record);
                if all.len() == 100.min(args.requests) {
                    *rss_after_100.lock().unwrap() = args.server_pid.and_then(rss_kib);
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let mut records = records.into_inner().unwrap();
    records.sort_by_key(|r| r.index);
    let summary = summarize(&args, &records, wall, rss_after_100.into_inner().unwrap(), args.server_pid.and_then(rss_kib));
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    if let Some(path) = &args.out {
        let raw: Vec<Value> = records
            .iter()
            .map(|r| json!({ "index": r.index, "bad": r.bad, "status": r.status, "sent": r.sent, "chunks": r.chunks,
                "completion_tokens": r.completion_tokens, "finish_reason": r.finish_reason, "error": r.error }))
            .collect();
        let doc = json!({ "summary": summary, "requests": raw });
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let failed = summary["good_failed"].as_u64().unwrap_or(0) + summary["bad_not_refused"].as_u64().unwrap_or(0);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The body of request `i`: a good streaming request, or a bad one of class `i / bad_every`.
fn body(args: &Args, i: usize) -> (bool, Vec<u8>) {
    let mut rng = SplitMix64(i as u64 * 7919 + 1);
    let ids: Vec<u64> = (0..args.prompt_tokens).map(|_| 3 + rng.next_u64() % (args.vocab - 3)).collect();
    let good = json!({ "prompt": ids, "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": true, "stream": true });
    if args.bad_every == 0 || !(i + 1).is_multiple_of(args.bad_every) {
        return (false, good.to_string().into_bytes());
    }
    let bad: Vec<u8> = match (i / args.bad_every) % 6 {
        0 => b"{\"prompt\": [1, 2".to_vec(),
        1 => json!({ "prompt": ids, "max_tokens": "many" }).to_string().into_bytes(),
        2 => json!({ "prompt": ids, "model": "no-such-model" }).to_string().into_bytes(),
        3 => json!({ "prompt": ids, "logprobs": 5 }).to_string().into_bytes(),
        4 => json!({ "prompt": [args.vocab + 5] }).to_string().into_bytes(),
        _ => vec![b' '; (1 << 20) + 10],
    };
    (true, bad)
}

fn run_request(args: &Args, index: usize, start: Instant) -> Record {
    let (bad, body) = body(args, index);
    let mut record = Record { index, bad, sent: start.elapsed().as_secs_f64(), ..Default::default() };
    let timeout = Duration::from_secs(args.timeout);
    let headers = [("Content-Type", "application/json")];
    let mut conn = match client::send(args.addr, "POST", "/v1/completions", &headers, &body, timeout) {
        Ok(conn) => conn,
        Err(e) => {
            record.error = Some(e.to_string());
            return record;
        }
    };
    record.status = conn.head.status;
    if record.status != 200 {
        let _ = conn.into_response();
        return record;
    }
    loop {
        match conn.next_event() {
            Ok(Some(data)) if data == "[DONE]" => break,
            Ok(Some(data)) => {
                let now = start.elapsed().as_secs_f64();
                let chunk: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let choice = &chunk["choices"][0];
                if choice["text"].as_str().is_some_and(|t| !t.is_empty()) {
                    record.chunks.push(now);
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    record.finish_reason = Some(reason.to_string());
                    record.completion_tokens = chunk["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                }
                if chunk.get("error").is_some() {
                    record.error = Some(data);
                }
            }
            Ok(None) => {
                record.error.get_or_insert_with(|| "the stream ended before [DONE]".into());
                break;
            }
            Err(e) => {
                record.error = Some(e.to_string());
                break;
            }
        }
    }
    record
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summarize(args: &Args, records: &[Record], wall: f64, rss_100: Option<u64>, rss_end: Option<u64>) -> Value {
    let good: Vec<&Record> = records.iter().filter(|r| !r.bad).collect();
    let complete = |r: &&&Record| r.status == 200 && r.error.is_none() && r.completion_tokens == args.max_tokens as u64;
    let good_ok: Vec<&&Record> = good.iter().filter(complete).collect();
    let bad_refused = records.iter().filter(|r| r.bad && (400..500).contains(&r.status)).count();
    let tokens: u64 = good_ok.iter().map(|r| r.completion_tokens).sum();
    let mut ttft: Vec<f64> = good_ok.iter().filter_map(|r| r.chunks.first().map(|t| t - r.sent)).collect();
    let mut itl: Vec<f64> = good_ok.iter().flat_map(|r| r.chunks.windows(2).map(|w| w[1] - w[0])).collect();
    ttft.sort_by(f64::total_cmp);
    itl.sort_by(f64::total_cmp);
    // The window where every one of the first `clients` good requests was streaming: from the
    // last of their first chunks to the first of their last chunks; chunks per second in it.
    let first_wave: Vec<&&&Record> = good_ok.iter().take(args.clients).collect();
    let from = first_wave.iter().filter_map(|r| r.chunks.first()).copied().fold(f64::NEG_INFINITY, f64::max);
    let to = first_wave.iter().filter_map(|r| r.chunks.last()).copied().fold(f64::INFINITY, f64::min);
    let in_window: usize = first_wave.iter().map(|r| r.chunks.iter().filter(|&&t| t > from && t <= to).count()).sum();
    let window = (to > from).then(|| json!({ "seconds": to - from, "chunks": in_window, "chunks_per_second": in_window as f64 / (to - from) }));
    let ms = |v: Option<f64>| v.map(|s| (s * 1e5).round() / 100.0);
    json!({
        "clients": args.clients,
        "requests": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "wall_seconds": wall,
        "good": good.len(),
        "good_complete": good_ok.len(),
        "good_failed": good.len() - good_ok.len(),
        "bad": records.len() - good.len(),
        "bad_refused_4xx": bad_refused,
        "bad_not_refused": records.len() - good.len() - bad_refused,
        "completion_tokens": tokens,
        "aggregate_tokens_per_second": tokens as f64 / wall,
        "all_clients_streaming_window": window,
        "ttft_ms": { "p50": ms(percentile(&ttft, 50.0)), "p99": ms(percentile(&ttft, 99.0)) },
        "inter_chunk_ms": { "p50": ms(percentile(&itl, 50.0)), "p99": ms(percentile(&itl, 99.0)) },
        "server_rss_kib_after_100": rss_100,
        "server_rss_kib_end": rss_end,
        "server_rss_growth": rss_100.zip(rss_end).map(|(a, b)| b as f64 / a as f64 - 1.0),
        "errors": records.iter().filter_map(|r| r.error.clone()).take(5).collect::<Vec<_>>(),
    })
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
