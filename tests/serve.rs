//! `hymba-ref serve` on a loopback port the OS picks (`--port 0`, read from the startup line),
//! with the bundled demo model: replies equal `generate`'s, alone or among 15 others; streams;
//! a client that leaves; clients that stall or idle past `--client-timeout`; every class of bad
//! request; the API key; shutdown on SIGTERM. Each
//! server is stopped by its test (SIGTERM, exit 0) or, if the test fails first, killed.

use hymba_ref::features::generate::sampling::SamplingParams;
use hymba_ref::features::generate::text::{generate_text, generate_text_in};
use hymba_ref::features::generate::{GenerateOptions, StopReason};
use hymba_ref::model::Hymba;
use hymba_ref::features::serve::client::{self, Connection};
use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A running server; killed when dropped (a test that passes has stopped it already).
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(flags: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hymba-ref"))
            .args(["serve", "--port", "0", "--threads", "1"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hymba-ref serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("the startup line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("no address on the startup line: {line:?}"))
            .parse()
            .expect("an address");
        std::thread::spawn(move || for _ in stderr.lines() {}); // keep the pipe drained
        Server { child, addr }
    }

    fn post(&self, path: &str, body: &Value) -> client::Response {
        client::post_json(self.addr, path, body, &[], TIMEOUT).expect("a response")
    }

    fn health(&self) -> Value {
        client::get(self.addr, "/health", &[], TIMEOUT).expect("health").json()
    }

    /// SIGTERM, then its exit status within `limit`.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "the server did not exit within {limit:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bundled model and its tokenizer, for the replies `generate` gives.
struct Reference {
    model: Hymba,
    tokenizer: Tokenizer,
    defaults: SamplingParams,
}

impl Reference {
    fn load() -> Reference {
        let dir = Path::new(hymba_ref::DEFAULT_MODEL_DIR);
        Reference {
            model: Hymba::from_dir(dir).unwrap(),
            tokenizer: Tokenizer::from_dir(dir).unwrap(),
            defaults: SamplingParams::from_generation_config(dir).unwrap(),
        }
    }

    /// What `generate` prints for this prompt text (or chat) and these settings, and how many
    /// tokens it generated.
    fn generate(&self, prompt: &[u32], max_tokens: usize, temperature: Option<f32>, seed: u64, stops: &[&str]) -> (String, usize) {
        let (text, tokens, _) = self.generate_why(prompt, max_tokens, temperature, seed, stops);
        (text, tokens)
    }

    /// [`Reference::generate`] with OpenAI's finish_reason for how it ended.
    fn generate_why(&self, prompt: &[u32], max_tokens: usize, temperature: Option<f32>, seed: u64, stops: &[&str]) -> (String, usize, &'static str) {
        let sampling = SamplingParams { temperature: temperature.unwrap_or(self.defaults.temperature), seed, ..self.defaults };
        let options = GenerateOptions { max_new_tokens: max_tokens, stop_at_eos: true, sampling };
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut text = String::new();
        let generation = generate_text(&self.model, &self.tokenizer, prompt, &options, &stops, |piece| {
            text.push_str(piece);
            Ok(())
        })
        .unwrap();
        let finish = match generation.stop_reason {
            StopReason::MaxNewTokens => "length",
            StopReason::Eos | StopReason::Callback => "stop",
        };
        (text, generation.tokens.len(), finish)
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.tokenizer.add_bos_token())
    }
}

/// A streamed reply: the text of its chunks, its finish_reason and usage, and that it ended with
/// `data: [DONE]`.
fn read_stream(mut conn: Connection, chat: bool) -> (String, String, Value) {
    assert_eq!(conn.head.status, 200);
    assert_eq!(conn.head.header("content-type"), Some("text/event-stream"));
    let (mut text, mut finish, mut usage) = (String::new(), None, Value::Null);
    loop {
        let data = conn.next_event().expect("read an event").expect("the stream ended before [DONE]");
        if data == "[DONE]" {
            assert_eq!(conn.next_event().unwrap(), None, "nothing after [DONE]");
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        assert!(finish.is_none(), "a chunk after the one with finish_reason: {data}");
        let choice = &chunk["choices"][0];
        let piece = if chat { &choice["delta"]["content"] } else { &choice["text"] };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_string());
            usage = chunk["usage"].clone();
        }
    }
    (text, finish.expect("a finish_reason"), usage)
}

fn stream(server: &Server, path: &str, body: &Value) -> Connection {
    let body = body.to_string();
    client::send(server.addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes(), TIMEOUT).unwrap()
}

/// One request of the concurrency test, and the reply `generate` gives for it.
struct Case {
    body: Value,
    chat: bool,
    want_text: String,
    want_tokens: usize,
    want_finish: &'static str,
    prompt_tokens: usize,
}

fn cases(reference: &Reference) -> Vec<Case> {
    let prompts = ["Once upon a time", "There are two kinds of people", "I'm not", "The best", "Q: Why?\nA:", "Never", "%", "You will"];
    let mut cases = Vec::new();
    for (i, text) in prompts.iter().enumerate() {
        let max_tokens = 8 + 5 * i;
        let (temperature, seed) = if i % 2 == 0 { (Some(0.0), 0) } else { (None, 100 + i as u64) };
        let stops: &[&str] = if i % 3 == 1 { &["\n"] } else { &[] };
        let ids = reference.encode(text);
        let (want_text, want_tokens, want_finish) = reference.generate_why(&ids, max_tokens, temperature, seed, stops);
        let mut body = json!({ "model": "demo-model", "prompt": text, "max_tokens": max_tokens, "seed": seed, "stop": stops });
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        cases.push(Case { body, chat: false, want_text, want_tokens, want_finish, prompt_tokens: ids.len() });
        // The same text as a chat message.
        let chat = render_chat(&[ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, *text)], true);
        let ids = reference.encode(&chat);
        let (want_text, want_tokens, want_finish) = reference.generate_why(&ids, max_tokens, temperature, seed, &[]);
        let mut body = json!({
            "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": text }],
            "max_tokens": max_tokens, "seed": seed,
        });
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        cases.push(Case { body, chat: true, want_text, want_tokens, want_finish, prompt_tokens: ids.len() });
    }
    cases
}

/// Run a case, streamed or not; its text, finish_reason and usage.
fn run_case(server: &Server, case: &Case, streamed: bool) -> (String, String, Value) {
    let path = if case.chat { "/v1/chat/completions" } else { "/v1/completions" };
    if streamed {
        let mut body = case.body.clone();
        body["stream"] = json!(true);
        return read_stream(stream(server, path, &body), case.chat);
    }
    let response = server.post(path, &case.body);
    assert_eq!(response.head.status, 200, "{}", response.text());
    let reply = response.json();
    let choice = &reply["choices"][0];
    let text = if case.chat { &choice["message"]["content"] } else { &choice["text"] };
    (text.as_str().unwrap().to_string(), choice["finish_reason"].as_str().unwrap().to_string(), reply["usage"].clone())
}

fn check_case(case: &Case, (text, finish, usage): &(String, String, Value), what: &str) {
    assert_eq!(text, &case.want_text, "{what}: {}", case.body);
    assert_eq!(finish, case.want_finish, "{what}: {}", case.body);
    assert_eq!(usage["completion_tokens"], json!(case.want_tokens), "{what}: {}", case.body);
    assert_eq!(usage["prompt_tokens"], json!(case.prompt_tokens), "{what}");
    assert_eq!(usage["total_tokens"], json!(case.prompt_tokens + case.want_tokens), "{what}");
}

#[test]
fn replies_equal_generate_alone_and_among_fifteen_others_streamed_or_not() {
    let reference = Reference::load();
    let cases = cases(&reference);
    assert_eq!(cases.len(), 16);
    let mut server = Server::start(&["--max-batch", "16"]);
    // Alone, one after the other: not streamed, then streamed.
    for case in &cases {
        check_case(case, &run_case(&server, case, false), "alone");
        check_case(case, &run_case(&server, case, true), "alone, streamed");
    }
    // All 16 at once, every other one streamed.
    let replies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().enumerate().map(|(i, case)| {
            let server = &server;
            s.spawn(move || run_case(server, case, i % 2 == 0))
        }).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (case, reply) in cases.iter().zip(&replies) {
        check_case(case, reply, "among 15 others");
    }
    let health = server.health();
    assert_eq!(health["running"], json!(0));
    assert!(health["peak_batch"].as_u64().unwrap() >= 2, "the requests decoded together: {health}");
    assert!(server.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_prompt_longer_than_one_pass_is_prefilled_in_chunks_with_generate_s_result() {
    let reference = Reference::load();
    let ids: Vec<u32> = (0..1100u32).map(|i| 3 + (i * 37) % 3000).collect(); // three passes of ≤ 512
    let (want, tokens) = reference.generate(&ids, 12, Some(0.0), 0, &[]);
    long_prompt_beside_a_stream(&reference, &[], &ids, &want, tokens);
}

/// A server started with `flags` answers the greedy 12-token request for `ids` with `want`
/// (`tokens` tokens), while a short stream decodes beside it the whole time and gets `generate`'s.
fn long_prompt_beside_a_stream(reference: &Reference, flags: &[&str], ids: &[u32], want: &str, tokens: usize) {
    let mut server = Server::start(flags);
    let long = json!({ "prompt": ids, "max_tokens": 12, "temperature": 0 });
    let short = json!({ "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "stream": true });
    let (short_want, _) = reference.generate(&reference.encode("Once upon a time"), 40, Some(0.0), 0, &[]);
    std::thread::scope(|s| {
        let short = s.spawn(|| read_stream(stream(&server, "/v1/completions", &short), false));
        let reply = server.post("/v1/completions", &long).json();
        assert_eq!(reply["choices"][0]["text"], json!(want));
        assert_eq!(reply["usage"]["completion_tokens"], json!(tokens));
        assert_eq!(reply["usage"]["prompt_tokens"], json!(ids.len()));
        assert_eq!(short.join().unwrap().0, short_want);
    });
    assert!(server.terminate(Duration::from_secs(10)).success());
}

/// `--prefill-chunk 100`: the 1,100-id prompt goes in 11 chunks of 100 with decode steps of a
/// stream between them; its reply is what `generate` gives after a prefill in those same chunks
/// (`tests/chunked_prefill.rs`: not one call's logits bit for bit, but within rounding), and the
/// stream's is `generate`'s.
#[test]
fn with_a_smaller_prefill_chunk_a_long_prompt_gets_generate_s_reply_after_a_prefill_in_those_chunks() {
    let reference = Reference::load();
    let ids: Vec<u32> = (0..1100u32).map(|i| 3 + (i * 37) % 3000).collect();
    let options = GenerateOptions {
        max_new_tokens: 12,
        stop_at_eos: true,
        sampling: SamplingParams { temperature: 0.0, ..reference.defaults },
    };
    let mut seq = reference.model.new_sequence();
    for chunk in ids[..1000].chunks(100) {
        reference.model.next_token_logits(chunk, &mut seq).unwrap();
    }
    let mut want = String::new();
    let generation = generate_text_in(&reference.model, &reference.tokenizer, &mut seq, &ids[..1000], &ids[1000..], &options, &[], None, |piece| {
        want.push_str(piece);
        Ok(())
    })
    .unwrap();
    long_prompt_beside_a_stream(&reference, &["--prefill-chunk", "100"], &ids, &want, generation.tokens.len());
}

#[test]
fn a_client_that_leaves_mid_stream_frees_its_sequence() {
    let mut server = Server::start(&[]);
    let body = json!({ "prompt": "Once upon a time", "max_tokens": 20000, "stream": true, "temperature": 1.0 });
    let mut conn = stream(&server, "/v1/completions", &body);
    for _ in 0..3 {
        assert!(conn.next_event().unwrap().is_some());
    }
    assert_eq!(server.health()["running"], json!(1));
    drop(conn);
    // 20,000 tokens take the demo model well over a minute; the sequence leaves within steps.
    let start = Instant::now();
    while server.health()["running"] != json!(0) {
        assert!(start.elapsed() < Duration::from_secs(10), "the sequence of a client that left is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server goes on serving.
    let reply = server.post("/v1/completions", &json!({ "prompt": "Hi", "max_tokens": 3 }));
    assert_eq!(reply.head.status, 200);
    assert!(server.terminate(Duration::from_secs(10)).success());
}

/// A raw connection that sends `bytes` and then nothing; its reads wait at most `TIMEOUT`.
fn stall_after(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket.write_all(bytes).unwrap();
    socket
}

/// Read `socket` to its end: what the server sent before it closed the connection. Panics if
/// the server keeps it open for `TIMEOUT`.
fn read_until_closed(mut socket: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    match socket.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("{what}: the server did not close the connection ({e}); read {} bytes", got.len()),
    }
}

/// `--client-timeout 1`: a client that sends half a request head, one that sends half a body (408
/// when the body is one the server reads, past 1 KiB), an
/// idle keep-alive connection and a stream whose client stopped reading are each closed once
/// they stall that long, the stream's sequence leaves the batch, and meanwhile requests are
/// answered as `generate` answers them, one of them streaming for longer than the timeout.
#[test]
fn stalled_or_idle_clients_time_out_without_holding_others_back() {
    let reference = Reference::load();
    let mut server = Server::start(&["--client-timeout", "1"]);
    // A stream whose client reads its head and first event, then nothing.
    let endless = json!({ "prompt": "Once upon a time", "max_tokens": 20000, "ignore_eos": true, "stream": true, "temperature": 1.0 });
    let mut stalled = stream(&server, "/v1/completions", &endless);
    assert!(stalled.next_event().unwrap().is_some());
    let head = stall_after(server.addr, b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Ty");
    let body = stall_after(server.addr, b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"prompt\"");
    // tiny_http reads a body of up to 1 KiB itself, a longer one is ours to read: 408.
    let long_body = stall_after(server.addr, b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n{\"prompt\"");
    let mut idle = BufReader::new(stall_after(server.addr, b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"));
    let mut length = None;
    loop {
        let mut line = String::new();
        idle.read_line(&mut line).unwrap();
        if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(n.trim().parse::<usize>().unwrap());
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut health = vec![0; length.expect("a content-length")];
    idle.read_exact(&mut health).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&health).unwrap()["status"], json!("ok"), "the keep-alive connection's one answer");

    // Meanwhile: a reply, and a stream read as it comes that lasts longer than the timeout.
    let prompt = reference.encode("There are two kinds of people");
    let (want, _) = reference.generate(&prompt, 30, Some(0.0), 0, &[]);
    let reply = server.post("/v1/completions", &json!({ "prompt": "There are two kinds of people", "max_tokens": 30, "temperature": 0 }));
    assert_eq!(reply.json()["choices"][0]["text"], json!(want));
    let (want, tokens) = reference.generate(&reference.encode("Once upon a time"), 400, Some(0.0), 0, &[]);
    let start = Instant::now();
    let long = json!({ "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true });
    let (text, _, usage) = read_stream(stream(&server, "/v1/completions", &long), false);
    assert_eq!((text, usage["completion_tokens"].clone()), (want, json!(tokens)));
    eprintln!("a stream of {tokens} tokens took {:.1} s beside the stalled clients", start.elapsed().as_secs_f64());

    // The stalled and idle connections were closed (the stalled head or body with nothing sent).
    assert_eq!(read_until_closed(head, "half a head"), b"");
    assert_eq!(read_until_closed(body, "half a body"), b"");
    let answer = String::from_utf8(read_until_closed(long_body, "half a long body")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(read_until_closed(idle.into_inner(), "idle keep-alive"), b"");
    // The stream that stopped reading: its writes timed out, its sequence left the batch, and the
    // connection was closed with the events written so far, without [DONE].
    let start = Instant::now();
    while server.health()["running"] != json!(0) {
        assert!(start.elapsed() < TIMEOUT, "the stalled stream's sequence is still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut events = 0;
    while let Some(event) = stalled.next_event().unwrap() {
        assert!(event != "[DONE]", "the stalled stream was not cut: it ended with [DONE] after {events} events");
        events += 1;
    }
    assert!(events < 20000, "{events} events");
    assert!(server.terminate(Duration::from_secs(10)).success());
}

/// tiny_http's accept on the listening socket times out like every read (`--client-timeout`):
/// the server wakes it in time, idle or after being stopped (SIGSTOP) for longer than the timeout.
/// (A stop interrupts accept, which std restarts; the fresh server for an accept that did time out
/// is tested in the binary's unit tests.)
#[test]
fn a_server_paused_past_the_client_timeout_still_accepts() {
    let mut server = Server::start(&["--client-timeout", "0.5"]);
    std::thread::sleep(Duration::from_millis(1500)); // idle: accept would have timed out thrice
    assert_eq!(server.health()["status"], json!("ok"));
    let signal = |name: &str| assert!(Command::new("kill").args([name, &server.child.id().to_string()]).status().unwrap().success());
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(1500));
    signal("-CONT");
    assert_eq!(server.health()["status"], json!("ok"));
    let reply = server.post("/v1/completions", &json!({ "prompt": "Hi", "max_tokens": 3 }));
    assert_eq!(reply.head.status, 200);
    assert!(server.terminate(Duration::from_secs(10)).success());
}

/// A 4xx answer: its status, and the OpenAI error object's param and message.
fn error_of(response: &client::Response) -> (u16, Value, String) {
    let body = response.json();
    let error = &body["error"];
    assert!(error["type"].is_string(), "an OpenAI error object: {}", response.text());
    (response.head.status, error["param"].clone(), error["message"].as_str().unwrap_or("").to_string())
}

#[test]
fn every_bad_request_gets_an_openai_error_naming_what_is_wrong() {
    let mut server = Server::start(&["--max-cache-gb", "1"]);
    let completions = |body: &[u8]| {
        client::send(server.addr, "POST", "/v1/completions", &[("Content-Type", "application/json")], body, TIMEOUT).unwrap().into_response().unwrap()
    };
    // Malformed JSON, not an object.
    let (status, _, message) = error_of(&completions(b"{\"prompt\": \"hi\""));
    assert_eq!(status, 400);
    assert!(message.contains("not valid JSON"), "{message}");
    assert_eq!(error_of(&completions(b"[1, 2]")).0, 400);
    // Wrong types, values out of range, unsupported fields, an unknown model: 400 naming the field.
    let bad = [
        (json!({ "prompt": "hi", "max_tokens": "ten" }), "max_tokens"),
        (json!({ "prompt": "hi", "max_tokens": -1 }), "max_tokens"),
        (json!({ "prompt": "hi", "temperature": "hot" }), "temperature"),
        (json!({ "prompt": "hi", "temperature": -0.5 }), "temperature"),
        (json!({ "prompt": "hi", "top_p": 0 }), "top_p"),
        (json!({ "prompt": "hi", "top_k": 1.5 }), "top_k"),
        (json!({ "prompt": "hi", "min_p": 2 }), "min_p"),
        (json!({ "prompt": "hi", "seed": "x" }), "seed"),
        (json!({ "prompt": "hi", "stop": 3 }), "stop"),
        (json!({ "prompt": "hi", "stop": [""] }), "stop"),
        (json!({ "prompt": "hi", "stream": "yes" }), "stream"),
        (json!({ "prompt": "hi", "n": 2 }), "n"),
        (json!({ "prompt": "hi", "ignore_eos": 1 }), "ignore_eos"),
        (json!({ "prompt": "hi", "logprobs": 3 }), "logprobs"),
        (json!({ "prompt": "hi", "presence_penalty": 0.5 }), "presence_penalty"),
        (json!({ "prompt": "hi", "suffix": "end" }), "suffix"),
        (json!({ "prompt": "hi", "model": "gpt-4" }), "model"),
        (json!({ "prompt": "hi", "model": 7 }), "model"),
        (json!({ "max_tokens": 3 }), "prompt"),
        (json!({ "prompt": {"text": "hi"} }), "prompt"),
        (json!({ "prompt": [1, 99999999] }), "prompt"),
        (json!({ "prompt": [] }), "prompt"),
        (json!({ "prompt": "hi", "max_tokens": 1_000_000_000_000u64 }), "max_tokens"),
    ];
    for (body, field) in &bad {
        let (status, param, message) = error_of(&server.post("/v1/completions", body));
        assert_eq!((status, param.as_str()), (400, Some(*field)), "{body}: {message}");
        assert!(message.contains(field), "{body}: the message names {field}: {message}");
    }
    let chat_bad = [
        (json!({ "messages": [] }), "messages"),
        (json!({ "messages": "hi" }), "messages"),
        (json!({ "messages": [{ "role": "robot", "content": "hi" }] }), "messages[0].role"),
        (json!({ "messages": [{ "role": "user", "content": 5 }] }), "messages[0].content"),
        (json!({ "messages": [{ "role": "user", "content": "hi", "tool_calls": [] }] }), "messages[0].tool_calls"),
        (json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": [{}] }), "tools"),
    ];
    for (body, field) in &chat_bad {
        let (status, param, message) = error_of(&server.post("/v1/chat/completions", body));
        assert_eq!((status, param.as_str()), (400, Some(*field)), "{body}: {message}");
    }
    // Values meaning "off" are accepted, as some clients always send them.
    let off = json!({ "prompt": "hi", "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0.0, "echo": false, "n": 1, "logit_bias": {} });
    assert_eq!(server.post("/v1/completions", &off).head.status, 200);
    // A body over 1 MiB: 413, whether its length is announced or not.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(1 << 20));
    assert_eq!(completions(big.as_bytes()).head.status, 413);
    // Wrong path, wrong method.
    assert_eq!(client::get(server.addr, "/v2/nothing", &[], TIMEOUT).unwrap().head.status, 404);
    assert_eq!(client::get(server.addr, "/v1/completions", &[], TIMEOUT).unwrap().head.status, 405);
    assert_eq!(error_of(&client::get(server.addr, "/v1/completions", &[], TIMEOUT).unwrap()).0, 405);
    assert_eq!(server.health()["status"], json!("ok"));
    assert!(server.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let mut server = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    let long = json!({ "prompt": "Once", "max_tokens": 20000, "stream": true });
    let mut running = stream(&server, "/v1/completions", &long); // decodes
    assert!(running.next_event().unwrap().is_some());
    let waiting = stream_in_background(&server, &long); // waits: the batch is full
    let start = Instant::now();
    while server.health()["waiting"] != json!(1) {
        assert!(start.elapsed() < Duration::from_secs(10), "the second request never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = server.post("/v1/completions", &json!({ "prompt": "Hi", "max_tokens": 2 }));
    assert_eq!(refused.head.status, 503);
    assert_eq!(refused.head.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["type"], json!("server_busy"));
    drop(running);
    drop(waiting);
    assert!(server.terminate(Duration::from_secs(10)).success());
}

/// Send a streaming request from another thread; the connection comes back when it has a head.
fn stream_in_background(server: &Server, body: &Value) -> std::thread::JoinHandle<Option<Connection>> {
    let (addr, body) = (server.addr, body.to_string());
    std::thread::spawn(move || client::send(addr, "POST", "/v1/completions", &[], body.as_bytes(), TIMEOUT).ok())
}

#[test]
fn with_an_api_key_v1_needs_it_and_health_does_not() {
    let mut server = Server::start(&["--api-key", "sesame"]);
    let body = json!({ "prompt": "Hi", "max_tokens": 2 }).to_string();
    let post = |headers: &[(&str, &str)]| {
        client::send(server.addr, "POST", "/v1/completions", headers, body.as_bytes(), TIMEOUT).unwrap().into_response().unwrap()
    };
    let missing = post(&[]);
    assert_eq!(missing.head.status, 401);
    assert_eq!(missing.json()["error"]["type"], json!("authentication_error"));
    assert_eq!(post(&[("Authorization", "Bearer open")]).head.status, 401);
    assert_eq!(post(&[("Authorization", "Bearer sesamesesame")]).head.status, 401);
    assert_eq!(post(&[("Authorization", "sesame")]).head.status, 401);
    assert_eq!(post(&[("Authorization", "Bearer sesame")]).head.status, 200);
    assert_eq!(client::get(server.addr, "/v1/models", &[], TIMEOUT).unwrap().head.status, 401);
    let models = client::get(server.addr, "/v1/models", &[("Authorization", "Bearer sesame")], TIMEOUT).unwrap();
    assert_eq!(models.json()["data"][0]["id"], json!("demo-model"));
    assert_eq!(server.health()["model"], json!("demo-model"));
    assert!(server.terminate(Duration::from_secs(10)).success());
}

#[test]
fn sigterm_ends_running_streams_cleanly_refuses_new_clients_and_exits_0() {
    let mut server = Server::start(&["--max-batch", "2"]);
    let long = json!({ "prompt": "Once", "max_tokens": 20000, "stream": true });
    let mut conns: Vec<Connection> = (0..2).map(|_| stream(&server, "/v1/completions", &long)).collect();
    for conn in &mut conns {
        assert!(conn.next_event().unwrap().is_some());
    }
    let queued = stream_in_background(&server, &long); // a third waits for a place
    std::thread::sleep(Duration::from_millis(200));
    let status = server.terminate(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    // The running streams ended with a last chunk (finish_reason "length", usage) and [DONE].
    for conn in conns {
        let (text, finish, usage) = read_stream(conn, false);
        assert_eq!(finish, "length");
        assert!(!text.is_empty());
        assert!(usage["completion_tokens"].as_u64().unwrap() < 20000);
    }
    // The waiting one was told the server is going away.
    if let Some(conn) = queued.join().unwrap() {
        assert_eq!(conn.head.status, 503);
    }
    assert!(client::get(server.addr, "/health", &[], Duration::from_secs(2)).is_err(), "nobody listens any more");
}
