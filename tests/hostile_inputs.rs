//! Hostile inputs (issue 14): one test per failure class. Each case must end with exit code 1 (or
//! a library error) whose message names the culprit, never a panic, a hang, unbounded memory or a
//! replaced file. Cases that used to hang or run for tens of seconds run under a watchdog with a
//! generous deadline (the fixed code takes milliseconds; the deadline only turns a hang into a
//! failure), so no assertion depends on the machine's speed.
//!
//! 1. special files as inputs (FIFOs, devices, directories, oversized files);
//! 2. memory amplification in safetensors headers and shard indexes;
//! 3. quadratic time in tokenizers (long pieces, many added tokens with a shared prefix);
//! 4. wrong values accepted in silence (generation_config.json, repeated keys, vocab sizes);
//! 5. `logits --out` never replaces anything but a regular file;
//! 6. `bench` and `--threads` limits, a closed or full stdout;
//! 7. quantized checkpoints: `quantize --out` onto anything that exists, a quantized header whose
//!    scales claim more blocks than the shape has, a corrupt quantized checkpoint under `generate`.

mod common;
use common::TempDir;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hymba_ref::checkpoint::{write_tensors, Checkpoint, SafetensorsFile, TensorData};
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::ErrorKind;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Far above what any fixed case takes (milliseconds to a second or two), far below "forever".
const WATCHDOG: Duration = Duration::from_secs(120);

fn demo_dir() -> PathBuf {
    PathBuf::from(hymba_ref::DEFAULT_MODEL_DIR)
}

/// A copy of the bundled demo checkpoint (config, weights, tokenizer, generation config).
fn demo_copy(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for entry in fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(&entry.file_name().to_string_lossy())).unwrap();
    }
    dir
}

fn cli() -> Command {
    let mut cmd = common::cli_command();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Wait for `child`, killing it and failing the test if it outlives the watchdog.
fn wait_bounded(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > WATCHDOG {
            child.kill().unwrap();
            panic!("{what}: still running after {WATCHDOG:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    let child = cli().args(args).spawn().unwrap();
    wait_bounded(child, &args.join(" "))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 1, no panic, and a message containing every needle.
fn assert_fails_naming(out: &Output, needles: &[&str]) {
    assert_exits_naming(out, 1, needles);
}

/// Exit code `code`, no panic, and a message containing every needle.
fn assert_exits_naming(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit status {:?}, stderr: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in stderr: {err}");
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

fn generate_in(dir: &TempDir) -> Output {
    run(&["generate", "--model", dir.path(), "--prompt", "Once", "--max-new-tokens", "2"])
}

/// The error of a call that must fail (without printing what it returned if it did not).
fn refused<T>(result: hymba_ref::Result<T>) -> hymba_ref::Error {
    match result {
        Ok(_) => panic!("accepted a hostile input"),
        Err(e) => e,
    }
}

/// Run `f` on another thread; fail if it has not finished within the watchdog.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive.recv_timeout(WATCHDOG).unwrap_or_else(|_| panic!("{what}: not finished after {WATCHDOG:?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Special files
// ---------------------------------------------------------------------------------------------

#[test]
fn special_files_as_inputs_fail_fast_naming_the_file() {
    // Each input file of a checkpoint in turn is a FIFO (nothing ever writes to it: reading it
    // would hang), a link to /dev/zero (endless bytes), or a directory.
    let files = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"];
    for name in files {
        for kind in ["fifo", "zero", "dir"] {
            let dir = demo_copy("special");
            let path = dir.join(name);
            fs::remove_file(&path).unwrap();
            let expected = match kind {
                "fifo" => {
                    mkfifo(&path);
                    "FIFO"
                }
                "zero" => {
                    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
                    "character device"
                }
                _ => {
                    fs::create_dir(&path).unwrap();
                    "directory"
                }
            };
            let out = generate_in(&dir);
            assert_fails_naming(&out, &[name, expected, "not a regular file"]);
        }
    }
    // Text inputs: perplexity --file and generate --prompts-file.
    let out = run(&["perplexity", "--file", "/dev/zero"]);
    assert_fails_naming(&out, &["/dev/zero", "character device"]);
    let dir = TempDir::new("prompts");
    let fifo = dir.join("prompts.fifo");
    mkfifo(&fifo);
    let out = run(&["generate", "--prompts-file", fifo.to_str().unwrap(), "--max-new-tokens", "1"]);
    assert_fails_naming(&out, &["prompts.fifo", "FIFO"]);
}

#[test]
fn oversized_input_files_are_refused_before_reading() {
    // A config file is at most 1 MiB: pad a valid one beyond that with spaces.
    let dir = demo_copy("big-config");
    let mut text = fs::read_to_string(dir.join("config.json")).unwrap();
    text.push_str(&" ".repeat(2 << 20));
    fs::write(dir.join("config.json"), text).unwrap();
    assert_fails_naming(&generate_in(&dir), &["config.json", "at most 1048576 bytes"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Memory amplification
// ---------------------------------------------------------------------------------------------

/// A safetensors file whose header lists `count` empty (zero-byte) F32 tensors named `prefix{i}`.
fn many_empty_tensors(path: &Path, prefix: &str, count: usize) {
    let mut header = String::from("{");
    for i in 0..count {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(r#""{prefix}{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#));
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    fs::write(path, bytes).unwrap();
}

#[test]
fn headers_with_too_many_tensors_are_refused_before_they_are_built() {
    let dir = TempDir::new("amplify");
    let path = dir.join("model.safetensors");
    many_empty_tensors(&path, "t", 150_000);
    let err = bounded("open", move || refused(SafetensorsFile::open(&path)));
    assert_eq!(err.kind, ErrorKind::CorruptSafetensors);
    assert!(err.message.contains("model.safetensors") && err.message.contains("150000 entries"), "{err}");
    assert!(err.message.contains("at most 100000 tensors"), "{err}");

    // One entry may not be a megabyte of JSON (a shape of 300 000 ones).
    let ones = vec!["1"; 300_000].join(",");
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":[{ones}],"data_offsets":[0,4]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let err = refused(SafetensorsFile::from_bytes(bytes, "long-entry"));
    assert!(err.message.contains("'w'") && err.message.contains("over the limit of 65536"), "{err}");
}

#[test]
fn extra_shards_full_of_unlisted_entries_are_refused_at_the_first() {
    // The index lists one real tensor in shard a; shard b, which the index also names, holds
    // 50 000 unlisted zero-size entries besides its listed one.
    let dir = TempDir::new("shards");
    write_tensors(&dir.join("a.safetensors"), &[("w", &[1], TensorData::F32(&[1.0]))], &[]).unwrap();
    many_empty_tensors(&dir.join("b.safetensors"), "junk", 50_000);
    let index = json!({"weight_map": {"w": "a.safetensors", "junk0": "b.safetensors"}});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let path = dir.0.clone();
    let err = bounded("open_dir", move || refused(Checkpoint::open_dir(&path)));
    assert_eq!(err.kind, ErrorKind::ShardIndex);
    assert!(err.message.contains("does not list tensor 'junk") && err.message.contains("b.safetensors"), "{err}");

    // An index with more entries than a checkpoint may hold is refused before it is parsed.
    let map: serde_json::Map<String, Value> = (0..110_000).map(|i| (format!("t{i}"), json!("a.safetensors"))).collect();
    let text = json!({ "weight_map": map }).to_string();
    let err = refused(hymba_ref::checkpoint::parse_index(&text, "big-index.json"));
    assert!(err.message.contains("big-index.json") && err.message.contains("110001 keys"), "{err}");
    assert!(err.message.contains("at most 100000 tensors"), "{err}");
}

#[test]
fn a_tokenizer_json_of_millions_of_tiny_values_is_refused_before_parsing() {
    // 2.5 million zeros: 5 MB of text, about 200 MB once parsed into JSON values.
    let zeros = vec!["0"; 2_500_000].join(",");
    let text = format!(r#"{{"model": {{}}, "normalizer": [{zeros}]}}"#);
    let err = refused(Tokenizer::from_json_str(&text, "tiny-values.json"));
    assert_eq!(err.kind, ErrorKind::Tokenizer);
    assert!(err.message.contains("tiny-values.json") && err.message.contains("at most 2000000"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. Quadratic time in tokenizers
// ---------------------------------------------------------------------------------------------

fn demo_tokenizer_json() -> Value {
    serde_json::from_str(&fs::read_to_string(demo_dir().join("tokenizer.json")).unwrap()).unwrap()
}

#[test]
fn many_added_tokens_with_a_shared_prefix_encode_in_one_pass() {
    // 40 000 added tokens `aaa…a00000>` … sharing a 200-character prefix. Trying them one by one
    // at each of 200 000 positions that all start with that prefix is 8·10^9 token comparisons
    // of up to 200 bytes (the issue measured 27 s for 120 000 characters); the trie walks at most
    // 206 bytes per position.
    let mut json = demo_tokenizer_json();
    let vocab = json["model"]["vocab"].as_object().unwrap().len();
    let prefix = "a".repeat(200);
    let added = json["added_tokens"].as_array_mut().unwrap();
    for i in 0..40_000 {
        let content = format!("{prefix}{i:05}>");
        added.push(json!({"id": vocab + i, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}));
    }
    let text = json.to_string();
    let tokenizer = bounded("load", move || Tokenizer::from_json_str(&text, "many-added.json").unwrap());
    assert_eq!(tokenizer.vocab_size(), vocab + 40_000);
    let token = (vocab + 12_345) as u32;

    // 200 000 `a`s, then one added token: the run is plain text, the token is found at its end.
    let run = "a".repeat(200_000);
    let (input, t) = (format!("{run}{prefix}12345>"), tokenizer.clone());
    let ids = bounded("encode", move || t.encode(&input, false));
    assert_eq!(ids.last(), Some(&token));
    assert_eq!(ids[..ids.len() - 1], tokenizer.encode(&run, false)[..], "the run encodes as plain text");

    // 6 000 tokens back to back.
    let input = format!("{prefix}12345>").repeat(6_000);
    let ids = bounded("encode", move || tokenizer.encode(&input, false));
    assert_eq!(ids, vec![token; 6_000]);
}

#[test]
fn added_tokens_and_pieces_have_a_length_limit() {
    let mut json = demo_tokenizer_json();
    let vocab = json["model"]["vocab"].as_object().unwrap().len();
    json["added_tokens"].as_array_mut().unwrap().push(json!({"id": vocab, "content": "x".repeat(2000)}));
    let err = refused(Tokenizer::from_json_str(&json.to_string(), "long-added.json"));
    assert!(err.message.contains("long-added.json") && err.message.contains("2000 bytes long"), "{err}");

    // A tokenizer.model with one extra piece of 500 000 characters (loading took 44 s).
    let mut model = fs::read(demo_dir().join("tokenizer.model")).unwrap();
    let piece_text = "a".repeat(500_000);
    let mut piece = vec![0x0a];
    push_varint(&mut piece, piece_text.len() as u64);
    piece.extend_from_slice(piece_text.as_bytes());
    piece.extend_from_slice(&[0x15, 0, 0, 0, 0]); // score 0.0
    model.push(0x0a); // ModelProto.pieces
    push_varint(&mut model, piece.len() as u64);
    model.extend_from_slice(&piece);
    let err = bounded("load", move || refused(Tokenizer::from_sp_bytes(&model, "long-piece.model")));
    assert_eq!(err.kind, ErrorKind::Tokenizer);
    assert!(err.message.contains("long-piece.model") && err.message.contains("500000 bytes long"), "{err}");
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

// ---------------------------------------------------------------------------------------------
// 4. Wrong values accepted in silence
// ---------------------------------------------------------------------------------------------

#[test]
fn generation_config_values_of_the_wrong_type_are_errors() {
    let cases = [
        (r#"{"do_sample": true, "top_k": -5}"#, "`top_k` must be a whole number"),
        (r#"{"do_sample": true, "top_k": 2.5}"#, "`top_k` must be a whole number"),
        (r#"{"do_sample": "true"}"#, "`do_sample` must be true or false"),
        (r#"{"do_sample": false, "top_k": "50"}"#, "`top_k` must be a whole number"),
        (r#"[1, 2]"#, "must be a JSON object"),
        (r#""greedy""#, "must be a JSON object"),
        (r#"{"top_p": 0.5, "top_p": 0.9}"#, "`top_p` appears twice"),
    ];
    for (text, needle) in cases {
        let dir = demo_copy("genconfig");
        fs::write(dir.join("generation_config.json"), text).unwrap();
        assert_fails_naming(&generate_in(&dir), &["generation_config.json", needle]);
    }
}

#[test]
fn repeated_keys_are_errors_naming_the_key() {
    // In config.json, a repeated num_hidden_layers is blamed, not the global_attn_idx it breaks.
    let dir = demo_copy("dup-config");
    let text = fs::read_to_string(dir.join("config.json")).unwrap();
    let text = text.replacen('{', "{\n  \"num_hidden_layers\": 1,", 1);
    fs::write(dir.join("config.json"), text).unwrap();
    let out = generate_in(&dir);
    assert_fails_naming(&out, &["config.json", "`num_hidden_layers` appears twice"]);
    assert!(!stderr(&out).contains("global_attn_idx"), "{}", stderr(&out));

    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let dir = demo_copy("dup-tokenizer");
        let text = fs::read_to_string(dir.join(name)).unwrap();
        fs::write(dir.join(name), text.replacen('{', "{\"dup\": 1, \"dup\": 2,", 1)).unwrap();
        assert_fails_naming(&generate_in(&dir), &[name, "\"dup\" appears twice"]);
    }
}

#[test]
fn a_tokenizer_that_disagrees_with_the_model_vocabulary_is_refused_at_load() {
    // Drop the highest id from tokenizer.json: the model (vocab_size 4000) could generate it.
    let dir = demo_copy("vocab");
    let mut json = demo_tokenizer_json();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let last = vocab.iter().max_by_key(|(_, id)| id.as_u64().unwrap()).map(|(k, _)| k.clone()).unwrap();
    vocab.remove(&last);
    // ... and every merge that makes it or uses it.
    let merges = json["model"]["merges"].as_array_mut().unwrap();
    merges.retain(|m| {
        let (a, b) = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap(),
            pair => (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string()),
        };
        a != last && b != last && format!("{a}{b}") != last
    });
    fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let out = generate_in(&dir);
    assert_fails_naming(&out, &["the tokenizer has 3999 ids", "vocab_size is 4000", "cannot decode"]);
    assert!(out.stdout.is_empty(), "nothing generated before the check");

    // One id more than the model: text could encode to an id without an embedding.
    let mut json = demo_tokenizer_json();
    json["added_tokens"].as_array_mut().unwrap().push(json!({"id": 4000, "content": "<extra>"}));
    fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    assert_fails_naming(&generate_in(&dir), &["the tokenizer has 4001 ids", "no embedding"]);
}

// ---------------------------------------------------------------------------------------------
// 5. logits --out
// ---------------------------------------------------------------------------------------------

fn logits_to(out: &Path) -> Output {
    run(&["logits", "--model", demo_dir().to_str().unwrap(), "--ids", "1,5,9", "--out", out.to_str().unwrap()])
}

#[test]
fn logits_out_never_replaces_anything_but_a_regular_file() {
    // A character device is written through and stays a device.
    let out = logits_to(Path::new("/dev/null"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    // A FIFO is written through: the reader gets a valid safetensors file.
    let dir = TempDir::new("out");
    let fifo = dir.join("logits.fifo");
    mkfifo(&fifo);
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        fs::File::open(&reader_path).unwrap().read_to_end(&mut bytes).unwrap();
        bytes
    });
    let out = logits_to(&fifo);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bytes = reader.join().unwrap();
    let file = SafetensorsFile::from_bytes(bytes, "from the fifo").unwrap();
    assert_eq!(file.get("logits").unwrap().shape, vec![3, 4000]);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is still a FIFO");

    // A symbolic link to a regular file: the file is replaced, the link kept.
    let target = dir.join("target.safetensors");
    fs::write(&target, b"old").unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = logits_to(&link);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(SafetensorsFile::open(&target).is_ok());

    // A dangling link and a directory are refused, untouched.
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    assert_fails_naming(&logits_to(&dangling), &["dangling", "symbolic link to nothing"]);
    assert!(fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    let sub = dir.join("subdir");
    fs::create_dir(&sub).unwrap();
    assert_fails_naming(&logits_to(&sub), &["subdir", "a directory"]);
    assert!(sub.is_dir());
}

// ---------------------------------------------------------------------------------------------
// 6. bench and thread limits
// ---------------------------------------------------------------------------------------------

/// bench on the small config at a tiny size: one short run.
const SMALL_BENCH: [&str; 13] = [
    "bench", "--configs", "small", "--contexts", "8", "--runs", "1", "--decode-tokens", "1", "--bandwidth-mib", "0",
    "--threads", "1",
];

#[test]
fn bench_sizes_and_threads_beyond_the_machine_are_errors_naming_the_flag() {
    // Values past what this machine has are usage errors (2), like any value out of range.
    let out = run(&["bench", "--threads", "1000000"]);
    assert_exits_naming(&out, 2, &["'1000000' for '--threads <N>'", "expected a whole number from 1 to"]);
    let out = run(&["generate", "--threads", "1000000", "--prompt", "x"]);
    assert_exits_naming(&out, 2, &["'1000000' for '--threads <N>'"]);
    let out = run(&["bench", "--configs", "small", "--bandwidth-mib", "1000000000"]);
    assert_exits_naming(&out, 2, &["--bandwidth-mib 1000000000", "does not fit"]);
    let out = run(&["bench", "--configs", "small", "--contexts", "4000000000", "--bandwidth-mib", "0"]);
    assert_exits_naming(&out, 2, &["--contexts 4000000000", "config small"]);

    // A config of 2·10^11 parameters (800 GB as f32), inside the parser's limits.
    let dir = TempDir::new("bench-config");
    let mut config: Value =
        serde_json::from_str(&fs::read_to_string(demo_dir().join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = json!(100_000_000);
    config["hidden_size"] = json!(1024);
    let path = dir.join("huge.json");
    fs::write(&path, config.to_string()).unwrap();
    let out = run(&["bench", "--configs", path.to_str().unwrap(), "--bandwidth-mib", "0"]);
    assert_exits_naming(&out, 2, &["--configs", "huge.json", "parameters need"]);
}

#[test]
fn bench_survives_a_closed_stdout_and_reports_a_full_disk() {
    // stdout closed before bench writes its report: no panic, success.
    let mut child = cli().args(SMALL_BENCH).spawn().unwrap();
    drop(child.stdout.take());
    let out = wait_bounded(child, "bench with a closed stdout");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));

    // stdout on a full disk: an error, exit 1.
    let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = cli().args(SMALL_BENCH).stdout(full).spawn().unwrap();
    let out = wait_bounded(child, "bench to /dev/full");
    assert_fails_naming(&out, &["<stdout>", "No space left on device"]);
}

// ---------------------------------------------------------------------------------------------
// 7. Quantized checkpoints
// ---------------------------------------------------------------------------------------------

/// `quantize --out` onto a file, a FIFO, a directory or a link is refused naming it, and the
/// thing is left as it was; quantizing into a directory that does not exist is refused too.
#[test]
fn quantize_never_writes_over_anything() {
    let tmp = TempDir::new("hostile-quantize");
    fs::write(tmp.join("file"), "mine").unwrap();
    mkfifo(&tmp.join("fifo"));
    fs::create_dir(tmp.join("dir")).unwrap();
    std::os::unix::fs::symlink(tmp.join("nowhere"), tmp.join("dangling")).unwrap();
    for name in ["file", "fifo", "dir", "dangling"] {
        let out = tmp.join(name);
        let result = run(&["quantize", "--out", out.to_str().unwrap(), "--type", "q8_0"]);
        assert_fails_naming(&result, &[out.to_str().unwrap(), "already exists"]);
    }
    assert_eq!(fs::read_to_string(tmp.join("file")).unwrap(), "mine");
    assert!(fs::read_dir(tmp.join("dir")).unwrap().next().is_none());
    let missing = tmp.join("no/such/dir");
    assert_fails_naming(&run(&["quantize", "--out", missing.to_str().unwrap(), "--type", "q4_0"]), &["does not exist"]);
    assert_eq!(tmp.entries(), ["dangling", "dir", "fifo", "file"], "nothing half-written left");
}

/// A quantized checkpoint whose header gives a matrix's scales a huge shape (and the bytes to
/// match nothing): refused by name before anything is allocated for it; `generate` on a
/// quantized checkpoint cut short exits 1 naming the file.
#[test]
fn corrupt_quantized_checkpoints_are_refused_naming_the_tensor_or_file() {
    let tmp = TempDir::new("hostile-quantized");
    let q = tmp.join("q");
    let made = run(&["quantize", "--model", demo_dir().to_str().unwrap(), "--out", q.to_str().unwrap(), "--type", "q4_0"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let path = q.join("model.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    let scales = "model.layers.0.mamba.in_proj.weight.scales";
    let mut tensors: Vec<(String, Vec<usize>, hymba_ref::checkpoint::Dtype, Vec<u8>)> =
        file.tensors().map(|t| (t.name.clone(), t.shape.clone(), t.dtype, file.bytes_of(&t.name).unwrap().to_vec())).collect();
    drop(file);
    let original = tensors.clone();
    for t in tensors.iter_mut().filter(|t| t.0 == scales) {
        t.1 = vec![1 << 20, 1 << 20]; // 2^40 scales, and 2 bytes of data
        t.3 = vec![0, 0];
    }
    let write = |tensors: &[(String, Vec<usize>, hymba_ref::checkpoint::Dtype, Vec<u8>)]| {
        let named: Vec<(&str, &[usize], TensorData)> = tensors.iter().map(|(n, s, d, b)| (n.as_str(), &s[..], TensorData::Raw(*d, b))).collect();
        write_tensors(&path, &named, &[])
    };
    // The writer refuses a shape that does not match its bytes; write the header by hand instead.
    assert!(write(&tensors).is_err());
    write(&original).unwrap();
    let bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    let mut value: Value = serde_json::from_str(header.trim_end()).unwrap();
    let rows = value[scales]["shape"][0].clone();
    value[scales]["shape"] = json!([rows, 1u64 << 40]);
    let mut new_header = value.to_string().into_bytes();
    new_header.resize(new_header.len().next_multiple_of(8), b' ');
    let mut hostile = (new_header.len() as u64).to_le_bytes().to_vec();
    hostile.extend(&new_header);
    hostile.extend(&bytes[8 + header_len..]);
    fs::write(&path, &hostile).unwrap();
    let e = refused(Checkpoint::open_dir(&q));
    assert_eq!(e.kind, ErrorKind::CorruptSafetensors, "{e}");
    assert!(e.message.contains(scales), "{e}");

    fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let out = run(&["generate", "--model", q.to_str().unwrap(), "--prompt", "Once", "--max-new-tokens", "2"]);
    assert_fails_naming(&out, &["model.safetensors"]);
}
