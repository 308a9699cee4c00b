//! `hymba-ref serve`: an OpenAI-compatible local HTTP server with continuous batching.
//!
//! ```text
//! main thread:    tiny_http accepts ─► request ─► a thread per request (at most max_batch + max_queue + 32)
//! request thread: route, key, body (≤ 1 MiB), parse + tokenize (api) ─► Job ─► scheduler queue
//!                 stream each Event as a server-sent event, or answer once at the end
//! scheduler:      owns the model and one Batch (hymba_ref::features::serve::scheduler)
//! SIGINT/SIGTERM: stop accepting; the scheduler ends every job (running ones get their text so
//!                 far and finish_reason "length", waiting ones 503); exit 0
//! ```
//!
//! The HTTP crate is tiny_http (synchronous, no async runtime, one thread per connection). It
//! buffers a streamed body in 8 KiB chunks, so a stream writes its own response head on the raw
//! connection (`Request::into_writer`) and flushes each event; the body ends with the connection.

mod api;

use crate::args::{count, model_dir, number_where, positive, threads};
use crate::available_memory::available_memory;
use crate::generate::load_tokenizer;
use crate::generation_args::past_trained_length;
use crate::load::load_model;
use api::{ApiError, Chunk, Context, Endpoint, Parsed, Reply};
use clap::Args;
use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::config::{HymbaConfig, RopeScaling};
use hymba_ref::features::generate::sampling::SamplingParams;
use hymba_ref::model::pass::MAX_ROWS_PER_PASS;
use hymba_ref::model::Hymba;
use hymba_ref::features::serve::scheduler::cache_bound;
use hymba_ref::features::serve::{Event, Job, Scheduler, SchedulerLimits, Submit};
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tiny_http::{Header, Method, Request, Response, Server};

/// The largest request body accepted.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Request threads beyond max_batch + max_queue (for /health, /v1/models and refusals).
const SPARE_REQUEST_THREADS: usize = 32;
/// How long shutdown waits for the request threads to write their last bytes.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory (config.json, weights, tokenizer files) or its config.json.
    /// Default: the bundled model.
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The address to listen on (only this machine by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free port, printed on the startup line).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    port: u16,
    /// The most requests decoding at once (continuous batching).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = count::<1, 4096>, allow_negative_numbers = true)]
    max_batch: usize,
    /// The most cache memory the running requests may reach, in GB (10⁹ bytes, f32 cache), each
    /// counted at its prompt + max_tokens; a request waits until its cache fits (one always runs),
    /// and one whose cache alone is larger is refused. Default: half of the memory available.
    #[arg(long, value_name = "GB", value_parser = positive, allow_negative_numbers = true)]
    max_cache_gb: Option<f64>,
    /// The most requests waiting to start; more get 503 with Retry-After.
    #[arg(long, value_name = "Q", default_value_t = 64, value_parser = count::<1, 1_000_000>, allow_negative_numbers = true)]
    max_queue: usize,
    /// The most prompt tokens prefilled between two decode steps of the running requests (a long
    /// prompt is cut in even chunks of at most this many). At 512, one pass, the chunks are the
    /// passes `generate` runs, so replies equal its replies bit for bit; fewer let running streams
    /// go on more often beside a long prompt, but give its logits within float rounding only
    /// (about 1e-6), so a greedy reply to a prompt longer than N may differ from `generate`'s
    /// where two tokens nearly tie.
    #[arg(long, value_name = "N", default_value_t = MAX_ROWS_PER_PASS, value_parser = count::<1, { MAX_ROWS_PER_PASS as u64 }>, allow_negative_numbers = true)]
    prefill_chunk: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 otherwise); /health stays open.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Worker threads of the model (default: one per core).
    #[arg(short = 't', long, value_name = "N", value_parser = threads, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Compute the meta-token prefix instead of reading it from the cache directory, and do not
    /// write it there.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Serve random weights of the model's config (made in memory as `bench` makes them, from
    /// this seed) with its tokenizer: for load tests without the checkpoint.
    #[arg(long, value_name = "SEED", hide = true)]
    random_weights: Option<u64>,
    /// Quantize the (bf16 or f32) weights at load to this block format: q8_0 or q4_0 (see
    /// docs/QUANTIZATION.md).
    #[arg(long, value_name = "FORMAT", value_parser = crate::load::weights_format)]
    weights: Option<hymba_ref::kernels::quant::QuantType>,
    /// Close a connection whose client sends nothing for this long (a request's head or body
    /// stalled halfway, an idle keep-alive connection) or reads nothing for this long (a stream
    /// whose client stopped reading: its request is cancelled, its sequence leaves the batch).
    /// The time a reply takes to generate is not counted.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = client_timeout, allow_negative_numbers = true)]
    client_timeout: f64,
}

/// What every request thread shares.
struct State {
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    config: HymbaConfig,
    model_name: String,
    defaults: SamplingParams,
    api_key: Option<String>,
    /// The cache one sequence holds at `context_tokens`, and how many of those fit the budget.
    capacity: Capacity,
    /// Request threads alive, and the most there may be.
    active: AtomicUsize,
    max_active: usize,
    next_id: AtomicU64,
    started: Instant,
}

/// `/health`'s and the startup line's account of the cache.
struct Capacity {
    context_tokens: usize,
    /// Where `context_tokens` comes from.
    context_source: &'static str,
    bytes_per_sequence: usize,
    max_cache_bytes: usize,
    /// Sequences of `context_tokens` that fit in `max_cache_bytes`, at most `--max-batch`.
    sequences: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    limit_malloc_arenas();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::input(format!("--threads {n}: cannot start the thread pool: {e}")))?;
    }
    let dir = model_dir(args.model.as_deref())?;
    let tokenizer = load_tokenizer(&dir)?;
    let defaults = SamplingParams::from_generation_config(&dir)?;
    let (model, timing) = load(&dir, &args)?;
    tokenizer.check_model_vocab(model.config.vocab_size, &dir)?;
    let config = model.config.clone();
    let max_cache_bytes = match args.max_cache_gb {
        Some(gb) => (gb * 1e9) as usize,
        None => available_memory().map_or(usize::MAX, |a| usize::try_from(a / 2).unwrap_or(usize::MAX)),
    };
    let capacity = capacity(&config, max_cache_bytes, args.max_batch);
    let limits = SchedulerLimits { max_batch: args.max_batch, max_cache_bytes, max_queue: args.max_queue, prefill_chunk: args.prefill_chunk };
    let tokenizer = Arc::new(tokenizer);

    let mut listening = Listening::bind(&args.host, args.port, Duration::from_secs_f64(args.client_timeout))?;
    let addr = listening.addr;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot watch signal {signal}: {e}")))?;
    }
    let model_name = served_name(&dir);
    eprintln!(
        "serving {model_name} on http://{addr} | cache per sequence: {:.2} MB at {} tokens ({}) | {} sequences fit \
         (--max-batch {}, cache budget {}) | {timing}",
        capacity.bytes_per_sequence as f64 / 1e6,
        capacity.context_tokens,
        capacity.context_source,
        capacity.sequences,
        args.max_batch,
        gb(max_cache_bytes),
    );
    let state = Arc::new(State {
        scheduler: Scheduler::start(model, tokenizer.clone(), limits)?,
        tokenizer,
        config,
        model_name,
        defaults,
        api_key: args.api_key.clone(),
        capacity,
        active: AtomicUsize::new(0),
        max_active: args.max_batch + args.max_queue + SPARE_REQUEST_THREADS,
        next_id: AtomicU64::new(0),
        started: Instant::now(),
    });

    while !stop.load(Ordering::SeqCst) {
        if let Some(request) = listening.next_request(Duration::from_millis(100))? {
            dispatch(request, &state);
        }
    }
    eprintln!("shutting down: no new connections; ending {} running and {} waiting requests", state.scheduler.running(), state.scheduler.waiting());
    drop(listening);
    state.scheduler.shut_down();
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    while state.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("stopped");
    Ok(())
}

/// The value parser of `--client-timeout`: seconds, from 0.01 (a socket timeout of 0 would mean
/// none) to a day.
fn client_timeout(text: &str) -> std::result::Result<f64, String> {
    number_where(text, |v| (0.01..=86_400.0).contains(&v), "from 0.01 to 86400")
}

/// The listening socket and the tiny_http server accepting on it, with `--client-timeout` on
/// every connection.
///
/// tiny_http has no timeout setting and never shows us a connection's socket. But Linux copies
/// the listening socket's SO_RCVTIMEO, SO_SNDTIMEO and SO_SNDBUF into every socket it accepts
/// (checked with getsockopt on an accepted socket, and by `tests/serve.rs`), so setting them on the listener
/// gives tiny_http's reads (a request's head, its body, the next request of a keep-alive
/// connection) and our writes (a stream's events) a timeout on every connection: a read that
/// waits longer fails, tiny_http closes the connection; a write that waits longer fails, the
/// stream is cancelled. The catch: SO_RCVTIMEO also bounds `accept` on the listener itself, and
/// tiny_http's accept thread stops at its first error. So the main loop connects to the listener
/// every quarter of the timeout (`wake`: an empty connection tiny_http accepts and closes), and
/// accept never waits a whole timeout; should it still time out (the main loop held up that long:
/// a stopped process does not count, its accept is interrupted and restarted), a new tiny_http
/// server takes over the same listener, and the old one is kept to hand on the requests of the
/// connections it accepted.
struct Listening {
    listener: TcpListener,
    server: Server,
    /// Servers whose accept thread stopped; their connections' requests still arrive.
    retired: Vec<Server>,
    addr: SocketAddr,
    wake_every: Duration,
    last_wake: Instant,
}

impl Listening {
    fn bind(host: &str, port: u16, timeout: Duration) -> Result<Listening> {
        let cannot = |e: &dyn std::fmt::Display| Error::new(ErrorKind::Io, format!("cannot listen on --host {host} --port {port}: {e}"));
        let listener = TcpListener::bind((host, port)).map_err(|e| cannot(&e))?;
        set_socket_options(&listener, timeout).map_err(|e| cannot(&e))?;
        let addr = listener.local_addr().map_err(|e| cannot(&e))?;
        let server = Server::from_listener(listener.try_clone().map_err(|e| cannot(&e))?, None).map_err(|e| cannot(&e))?;
        Ok(Listening { listener, server, retired: Vec::new(), addr, wake_every: timeout / 4, last_wake: Instant::now() })
    }

    /// The next request, if one arrives within `wait`.
    fn next_request(&mut self, wait: Duration) -> Result<Option<Request>> {
        if self.last_wake.elapsed() >= self.wake_every {
            self.wake();
        }
        for old in &self.retired {
            if let Ok(Some(request)) = old.try_recv() {
                return Ok(Some(request));
            }
        }
        match self.server.recv_timeout(wait.min(self.wake_every)) {
            Ok(request) => Ok(request),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let cannot = |e: &dyn std::fmt::Display| Error::new(ErrorKind::Io, format!("cannot accept connections: {e}"));
                let listener = self.listener.try_clone().map_err(|e| cannot(&e))?;
                let server = Server::from_listener(listener, None).map_err(|e| cannot(&e))?;
                self.retired.push(std::mem::replace(&mut self.server, server));
                eprintln!("accept timed out (no wake-up within --client-timeout): accepting on a fresh thread");
                Ok(None)
            }
            Err(e) => Err(Error::new(ErrorKind::Io, format!("the server stopped accepting: {e}"))),
        }
    }

    /// An empty connection to the listener: tiny_http's accept returns, and waits anew.
    fn wake(&mut self) {
        let mut to = self.addr;
        if to.ip().is_unspecified() {
            to.set_ip(match to {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&to, self.wake_every); // dropped at once: tiny_http reads its end
        self.last_wake = Instant::now();
    }
}

/// A connection's send buffer (Linux doubles it for its bookkeeping), instead of the kernel's
/// automatic sizing of up to 4 MB (tcp_wmem): at about 170 bytes a streamed token, 4 MB is
/// minutes of tokens a client that stopped reading would leave unread before a write blocks and
/// can time out; 64 KiB is a few hundred tokens, and more than a reply needs at loopback speed.
const SEND_BUFFER_BYTES: libc::c_int = 64 * 1024;

/// Set on the listening socket what its accepted sockets inherit: SO_RCVTIMEO and SO_SNDTIMEO
/// (reads and writes fail after waiting `timeout`) and SO_SNDBUF ([`SEND_BUFFER_BYTES`]).
fn set_socket_options(socket: &TcpListener, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as libc::suseconds_t };
    let set = |option: libc::c_int, value: *const libc::c_void, size: usize| {
        // SAFETY: a live socket descriptor, and a value of the size passed.
        match unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, option, value, size as libc::socklen_t) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    let timeval = (&tv as *const libc::timeval).cast();
    set(libc::SO_RCVTIMEO, timeval, std::mem::size_of::<libc::timeval>())?;
    set(libc::SO_SNDTIMEO, timeval, std::mem::size_of::<libc::timeval>())?;
    set(libc::SO_SNDBUF, (&SEND_BUFFER_BYTES as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>())
}

/// glibc gives threads their own malloc arenas (up to 8 per core) and keeps what each one freed:
/// with a thread per request, the server's memory grew 15 % over its first 1,000 requests and
/// levelled off after 2,500 (`serve-load`, demo model, 32 clients). Two arenas keep it flat
/// (within 2 % over 1,000 requests); the scheduler does its allocating on one thread anyway.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The model: the checkpoint's weights (meta prefix from the prefix cache), or `--random-weights`.
fn load(dir: &Path, args: &ServeArgs) -> Result<(Hymba, String)> {
    let Some(seed) = args.random_weights else {
        let loaded = load_model(dir, !args.no_prefix_cache, args.weights)?;
        let timing = loaded.timing();
        return Ok((loaded.model, timing));
    };
    let start = Instant::now();
    let config = HymbaConfig::from_file(&dir.join("config.json"))?;
    let weights = HymbaWeights::from_checkpoint(&config, &RandomWeights::new(&config, seed))?;
    let (config, weights) = match args.weights {
        Some(kind) => crate::load::quantize_at_load(config, weights, kind, dir)?,
        None => (config, weights),
    };
    let model = Hymba::new(config, weights);
    Ok((model, format!("random weights (seed {seed}) and meta prefix: {:.3} s", start.elapsed().as_secs_f64())))
}

/// The name clients give as `model`: the checkpoint directory's name.
fn served_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map_or_else(|| "hymba".to_string(), |n| n.to_string_lossy().into_owned())
}

/// The cache of one sequence at the longest context the model is configured for (else 4096
/// tokens), and how many such sequences the budget holds.
fn capacity(cfg: &HymbaConfig, max_cache_bytes: usize, max_batch: usize) -> Capacity {
    let m = cfg.num_memory_tokens;
    let (positions, source) = match cfg.rope.map(|r| r.scaling) {
        Some(RopeScaling::Ntk { max_position_embeddings, .. }) => (max_position_embeddings, "max_position_embeddings"),
        Some(RopeScaling::DynamicNtk { orig_max_position_embeddings }) => (orig_max_position_embeddings, "orig_max_position_embeddings"),
        _ => (m + 4096, "no length in config.json; 4096"),
    };
    let context_tokens = positions.saturating_sub(m).max(1);
    let bytes_per_sequence = cache_bound(cfg, context_tokens, 0);
    let sequences = (max_cache_bytes / bytes_per_sequence.max(1)).clamp(1, max_batch);
    Capacity { context_tokens, context_source: source, bytes_per_sequence, max_cache_bytes, sequences }
}

fn gb(bytes: usize) -> String {
    if bytes == usize::MAX { "unbounded".into() } else { format!("{:.2} GB", bytes as f64 / 1e9) }
}

/// Hand a request to a thread of its own, unless too many are alive (503 at once).
fn dispatch(request: Request, state: &Arc<State>) {
    if state.active.fetch_add(1, Ordering::SeqCst) >= state.max_active {
        state.active.fetch_sub(1, Ordering::SeqCst);
        return respond_error(request, &busy("the server has too many open requests"));
    }
    let shared = state.clone();
    let spawned = std::thread::Builder::new().name("request".into()).spawn(move || {
        handle(request, &shared);
        shared.active.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn busy(message: &str) -> ApiError {
    ApiError::new(503, "server_busy", format!("{message}; try again later"))
}

/// Route one request and answer it.
fn handle(mut request: Request, state: &State) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let endpoint = match path.as_str() {
        "/health" | "/v1/models" => None,
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/chat/completions" => Some(Endpoint::Chat),
        _ => return respond_error(request, &ApiError::new(404, "not_found", format!("no endpoint {path}"))),
    };
    let wanted = if endpoint.is_some() { Method::Post } else { Method::Get };
    if method != wanted {
        return respond_error(request, &ApiError::new(405, "invalid_request_error", format!("{path} takes {wanted}, not {method}")));
    }
    if path != "/health" {
        if let Err(e) = check_key(&request, state.api_key.as_deref()) {
            return respond_error(request, &e);
        }
    }
    let Some(endpoint) = endpoint else {
        let body = if path == "/health" { health(state) } else { models(state) };
        return respond_json(request, 200, &body, &[]);
    };
    let parsed = read_body(&mut request).and_then(|body| {
        let cx = Context { model_name: &state.model_name, config: &state.config, tokenizer: &state.tokenizer, defaults: state.defaults };
        api::parse(&body, endpoint, &cx)
    });
    let parsed = match parsed.and_then(|p| check_limits(p, state)) {
        Ok(p) => p,
        Err(e) => return respond_error(request, &e),
    };
    generate(request, state, endpoint, parsed);
}

/// 401 unless `Authorization: Bearer KEY` names the server's key (when it has one).
fn check_key(request: &Request, key: Option<&str>) -> std::result::Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let given = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str());
    let token = given.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    // Compare every byte, whatever the first difference: the time says nothing about the key.
    let matches = token.is_some_and(|t| t.len() == key.len() && t.bytes().zip(key.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0);
    if matches {
        return Ok(());
    }
    let message = if given.is_none() { "no API key: send `Authorization: Bearer KEY`" } else { "wrong API key" };
    Err(ApiError::new(401, "authentication_error", message))
}

/// The body, at most [`MAX_BODY_BYTES`].
fn read_body(request: &mut Request) -> std::result::Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, "invalid_request_error", format!("the request body is over {MAX_BODY_BYTES} bytes"));
    if request.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ApiError::new(408, "request_timeout", "the request body stopped arriving (--client-timeout)")
            }
            _ => ApiError::new(400, "invalid_request_error", format!("cannot read the request body: {e}")),
        })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(body)
}

/// The server's own bounds on a parsed request: its cache must fit the budget alone; past the
/// model's configured positions it runs, with a warning on stderr (as `generate` does).
fn check_limits(parsed: Parsed, state: &State) -> std::result::Result<Parsed, ApiError> {
    let (prompt, max_tokens) = (parsed.prompt.len(), parsed.options.max_new_tokens);
    let bound = cache_bound(&state.config, prompt, max_tokens);
    if bound > state.capacity.max_cache_bytes {
        return Err(ApiError::field(
            "max_tokens",
            format!(
                "the prompt ({prompt} tokens) + max_tokens ({max_tokens}) need {} of cache, over this server's budget of {}",
                gb(bound),
                gb(state.capacity.max_cache_bytes)
            ),
        ));
    }
    if let Some(warning) = past_trained_length(&state.config, prompt + max_tokens) {
        eprintln!("warning: a request's prompt ({prompt} tokens) + max_tokens {max_tokens} {warning}");
    }
    Ok(parsed)
}

/// Queue the request, then stream its events or answer once at the end.
fn generate(request: Request, state: &State, endpoint: Endpoint, parsed: Parsed) {
    let (events, receiver) = mpsc::channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let job = Job { prompt: parsed.prompt, options: parsed.options, stops: parsed.stops, events, cancelled: cancelled.clone() };
    match state.scheduler.submit(job) {
        Submit::Queued => {}
        Submit::QueueFull => return respond_error(request, &busy(&format!("{} requests are waiting already", state.scheduler.limits().max_queue))),
        Submit::ShuttingDown => return respond_error(request, &busy("the server is shutting down")),
    }
    let n = state.next_id.fetch_add(1, Ordering::SeqCst);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let id = match endpoint {
        Endpoint::Completions => format!("cmpl-{n}"),
        Endpoint::Chat => format!("chatcmpl-{n}"),
    };
    let reply = Reply { endpoint, id, created, model: &state.model_name };
    // The first event decides the status: a job that never ran gets an error answer.
    let first = receiver.recv().unwrap_or_else(|_| Event::Failed(Error::new(ErrorKind::Io, "the server is shutting down")));
    if let Event::Failed(e) = &first {
        return respond_error(request, &failure(e));
    }
    if parsed.stream {
        stream(request, &reply, first, &receiver, &cancelled);
    } else {
        let mut text = String::new();
        let mut event = first;
        loop {
            match event {
                Event::Text(piece) => text.push_str(&piece),
                Event::Done(finished) => return respond_json(request, 200, &reply.complete(&text, &finished), &[]),
                Event::Failed(e) => return respond_error(request, &failure(&e)),
            }
            event = receiver.recv().unwrap_or_else(|_| Event::Failed(Error::new(ErrorKind::Io, "the server is shutting down")));
        }
    }
}

/// A job that failed in the scheduler: 503 when the server shuts down, else 500.
fn failure(e: &Error) -> ApiError {
    match e.message.contains("shutting down") {
        true => busy(&e.message),
        false => ApiError::new(500, "server_error", e.message.clone()),
    }
}

/// Server-sent events: one `data:` line per chunk, flushed as it is made, then `data: [DONE]`.
/// A write that fails means the client is gone: the job is cancelled (it leaves the batch at the
/// scheduler's next iteration).
fn stream(request: Request, reply: &Reply, first: Event, receiver: &Receiver<Event>, cancelled: &AtomicBool) {
    let mut out = request.into_writer();
    let mut result = out.write_all(STREAM_HEAD.as_bytes());
    let mut send = |data: &str| out.write_all(format!("data: {data}\n\n").as_bytes()).and_then(|()| out.flush());
    if result.is_ok() && reply.endpoint == Endpoint::Chat {
        result = send(&reply.chunk(Chunk::Role).to_string());
    }
    let mut event = Some(first);
    while result.is_ok() {
        let Some(e) = event.take().or_else(|| receiver.recv().ok()) else { break };
        result = match e {
            Event::Text(piece) => send(&reply.chunk(Chunk::Text(&piece)).to_string()),
            Event::Done(finished) => {
                let _ = send(&reply.chunk(Chunk::Last(&finished)).to_string()).and_then(|()| send("[DONE]"));
                return;
            }
            Event::Failed(e) => {
                let _ = send(&failure(&e).body().to_string()).and_then(|()| send("[DONE]"));
                return;
            }
        };
    }
    cancelled.store(true, Ordering::SeqCst);
}

/// A stream's response head, written as it is on the raw connection (see the module's note):
/// the body is delimited by the connection's end.
const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

fn respond_json(request: Request, status: u16, body: &Value, extra: &[(&str, &str)]) {
    let mut response = Response::from_string(body.to_string()).with_status_code(status);
    response.add_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("a valid header"));
    for (name, value) in extra {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    let _ = request.respond(response); // a client that went away needs no answer
}

fn respond_error(request: Request, e: &ApiError) {
    let extra: &[(&str, &str)] = match e.status {
        503 => &[("Retry-After", "1")],
        401 => &[("WWW-Authenticate", "Bearer")],
        _ => &[],
    };
    respond_json(request, e.status, &e.body(), extra);
}

/// `GET /health`: the model, its cache per sequence, how many sequences fit, and the load now.
fn health(state: &State) -> Value {
    let c = &state.capacity;
    json!({
        "status": "ok",
        "model": state.model_name,
        "cache_bytes_per_sequence": c.bytes_per_sequence,
        "cache_context_tokens": c.context_tokens,
        "max_cache_bytes": (c.max_cache_bytes != usize::MAX).then_some(c.max_cache_bytes),
        "sequences_that_fit": c.sequences,
        "max_batch": state.scheduler.limits().max_batch,
        "running": state.scheduler.running(),
        "waiting": state.scheduler.waiting(),
        "peak_batch": state.scheduler.peak_batch(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
    })
}

/// `GET /v1/models`: the one model served.
fn models(state: &State) -> Value {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "object": "list", "data": [{ "id": state.model_name, "object": "model", "created": created, "owned_by": "hymba-ref" }] })
}


#[cfg(test)]
mod tests {
    use super::*;

    /// Left without wake-ups for longer than its timeout, tiny_http's accept times out and its
    /// accept thread stops; `next_request` then starts a fresh server on the same listener, and
    /// a request sent after that is received.
    #[test]
    fn after_accept_timed_out_a_fresh_server_takes_the_listener_over() {
        let mut listening = Listening::bind("127.0.0.1", 0, Duration::from_millis(50)).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // no wake-ups: accept times out
        let addr = listening.addr;
        let client = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            hymba_ref::features::serve::client::get(addr, "/health", &[], Duration::from_secs(10)).map(|r| r.head.status)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let request = loop {
            assert!(Instant::now() < deadline, "no request arrived");
            if let Some(request) = listening.next_request(Duration::from_millis(20)).unwrap() {
                break request;
            }
        };
        assert_eq!(listening.retired.len(), 1, "the server whose accept timed out was replaced");
        assert_eq!(request.url(), "/health");
        request.respond(Response::empty(204)).unwrap();
        assert_eq!(client.join().unwrap().unwrap(), 204);
    }
}
