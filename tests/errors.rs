//! One test per class of user-caused failure (issue "robustness"), asserting the error kind and
//! that the message names the culprit: the file, tensor, field, token id or flag. Corrupt
//! safetensors files and shard indexes are covered by `tests/safetensors.rs`, config values the
//! parser refuses by the unit tests in `src/config.rs`; this file covers the weights loader,
//! non-finite weights and logits, token ids, config files on disk, and the command line
//! (exit codes, stderr, no partial output file, non-UTF-8 text, a closed stdout). Malformed
//! tokenizer files are covered by `tests/tokenizer_files.rs`; here only through the CLI.

use std::fs;
use std::path::PathBuf;
use std::process::{Output, Stdio};
mod common;
use common::{cli_with_stdin, TempDir};

use hymba_ref::checkpoint::random::RandomWeights;
use hymba_ref::checkpoint::weights::HymbaWeights;
use hymba_ref::checkpoint::{write_tensors, TensorData, TensorSource};
use hymba_ref::config::HymbaConfig;
use hymba_ref::model::Hymba;
use hymba_ref::{Error, ErrorKind};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------


/// A small config with meta tokens, a window, K/V sharing, RoPE and kq norms.
const CONFIG: &str = r#"{"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "intermediate_size": 8, "mamba_expand": 2, "mamba_d_state": 2,
    "mamba_d_conv": 2, "mamba_dt_rank": "auto", "num_memory_tokens": 2, "sliding_window": 2,
    "global_attn_idx": [0], "kv_reuse_group": [[0, 1]], "rope": true, "kq_norm": "rms"}"#;

fn config() -> HymbaConfig {
    HymbaConfig::from_json_str(CONFIG).unwrap()
}

/// The tensors of a random checkpoint for [`CONFIG`]: (name, shape, values), sorted by name.
fn random_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let source = RandomWeights::new(&config(), 3);
    source
        .names()
        .into_iter()
        .map(|name| {
            let (shape, values) = source.to_f32(&name).unwrap();
            (name, shape, values)
        })
        .collect()
}

/// A checkpoint directory holding `config_text` and `tensors` (F32) as model.safetensors.
fn checkpoint_dir(tag: &str, config_text: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> TempDir {
    let dir = TempDir::new(tag);
    fs::write(dir.join("config.json"), config_text).unwrap();
    let named: Vec<(&str, &[usize], TensorData)> =
        tensors.iter().map(|(n, s, v)| (n.as_str(), &s[..], TensorData::F32(v))).collect();
    write_tensors(&dir.join("model.safetensors"), &named, &[]).unwrap();
    dir
}

/// Load a model from `dir`, expecting an error.
fn load_err(dir: &TempDir) -> Error {
    match Hymba::from_dir(&dir.0) {
        Ok(_) => panic!("{} loaded", dir.0.display()),
        Err(e) => e,
    }
}

/// The error has `kind` and its message contains every needle.
fn assert_error(err: &Error, kind: ErrorKind, needles: &[&str]) {
    assert_eq!(err.kind, kind, "wrong kind for: {}", err.message);
    for needle in needles {
        assert!(err.message.contains(needle), "message {:?} does not name {needle:?}", err.message);
    }
}

fn edit(name: &str, f: impl Fn(&mut (String, Vec<usize>, Vec<f32>))) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = random_tensors();
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("no tensor {name}"));
    f(t);
    tensors
}

// ---------------------------------------------------------------------------------------------
// The weights loader: names, shapes, dtypes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_valid_random_checkpoint_loads_and_runs() {
    let dir = checkpoint_dir("valid", CONFIG, &random_tensors());
    let model = Hymba::from_dir(&dir.0).unwrap();
    let logits = model.forward(&[1, 2, 3]).unwrap();
    assert_eq!(logits.dim(), (3, 16));
}

#[test]
fn missing_tensor_is_named() {
    let mut tensors = random_tensors();
    tensors.retain(|t| t.0 != "model.layers.1.mamba.x_proj.0.weight");
    let dir = checkpoint_dir("missing", CONFIG, &tensors);
    let err = load_err(&dir);
    assert_error(&err, ErrorKind::MissingTensor, &["model.layers.1.mamba.x_proj.0.weight", &dir.0.display().to_string()]);
}

#[test]
fn many_missing_tensors_are_counted_not_all_listed() {
    // A checkpoint of another model: the message stays readable.
    let tensors = vec![("transformer.wte.weight".to_string(), vec![2], vec![0.0, 1.0])];
    let dir = checkpoint_dir("many-missing", CONFIG, &tensors);
    let total = config().tensors().len();
    let err = load_err(&dir);
    assert_error(&err, ErrorKind::MissingTensor, &[&format!("{total} tensor(s)"), "model.embed_tokens.weight", &format!("and {} more", total - 12), "transformer.wte.weight"]);
    assert!(err.message.len() < 2000, "{} bytes", err.message.len());
}

#[test]
fn unexpected_tensor_is_named() {
    let mut tensors = random_tensors();
    tensors.push(("model.layers.7.extra.weight".into(), vec![2], vec![0.0, 1.0]));
    let dir = checkpoint_dir("unexpected", CONFIG, &tensors);
    assert_error(&load_err(&dir), ErrorKind::UnexpectedTensor, &["model.layers.7.extra.weight"]);
}

#[test]
fn shape_mismatch_names_expected_and_found() {
    // Swap the two dimensions of out_proj: [H, D] = [8, 16] stored as [16, 8].
    let tensors = edit("model.layers.0.mamba.out_proj.weight", |t| t.1 = vec![16, 8]);
    let dir = checkpoint_dir("shape", CONFIG, &tensors);
    let err = load_err(&dir);
    assert_error(&err, ErrorKind::ShapeMismatch, &["model.layers.0.mamba.out_proj.weight", "expected [8, 16]", "found [16, 8]"]);
}

#[test]
fn a_checkpoint_for_another_config_reports_shapes() {
    // Weights made for hidden_size 8 checked against a config with vocab_size 20.
    let dir = checkpoint_dir("vocab", &CONFIG.replace("\"vocab_size\": 16", "\"vocab_size\": 20"), &random_tensors());
    assert_error(&load_err(&dir), ErrorKind::ShapeMismatch, &["model.embed_tokens.weight", "expected [20, 8]", "found [16, 8]"]);
}

#[test]
fn every_swapped_shape_is_a_shape_mismatch_naming_the_tensor() {
    let dir = checkpoint_dir("swapped", CONFIG, &random_tensors());
    for (name, shape, _) in random_tensors() {
        if shape.len() < 2 || shape.iter().all(|&d| d == shape[0]) {
            continue;
        }
        let swapped: Vec<usize> = shape.iter().rev().copied().collect();
        let tensors = edit(&name, |t| t.1 = swapped.clone());
        let named: Vec<(&str, &[usize], TensorData)> =
            tensors.iter().map(|(n, s, v)| (n.as_str(), &s[..], TensorData::F32(v))).collect();
        write_tensors(&dir.join("model.safetensors"), &named, &[]).unwrap();
        let err = load_err(&dir);
        let expected = format!("{name}: expected {shape:?}, found {swapped:?}");
        assert_error(&err, ErrorKind::ShapeMismatch, &[&expected]);
    }
}

#[test]
fn every_truncation_of_a_checkpoint_header_is_a_corrupt_file_error() {
    let dir = checkpoint_dir("truncated", CONFIG, &random_tensors());
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Every cut inside the length prefix and the header, then every 97th byte of the data.
    let cuts = (0..header_end + 1).chain((header_end + 1..bytes.len()).step_by(97));
    for len in cuts {
        fs::write(&path, &bytes[..len]).unwrap();
        let err = load_err(&dir);
        assert_error(&err, ErrorKind::CorruptSafetensors, &["model.safetensors"]);
    }
}

#[test]
fn flipped_bits_in_a_checkpoint_give_errors_or_a_working_model() {
    // Every bit of the header: the loader reports an error, or (a flip in padding, say) loads a
    // model whose logits are finite or refused as non-finite; never a panic.
    let dir = checkpoint_dir("flipped", CONFIG, &random_tensors());
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut loaded = 0;
    for bit in (0..header_end * 8).step_by(3) {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        fs::write(&path, &flipped).unwrap();
        match Hymba::from_dir(&dir.0) {
            Ok(model) => {
                loaded += 1;
                if let Err(e) = model.forward(&[1, 2, 3]) {
                    assert_eq!(e.kind, ErrorKind::NonFiniteOutput, "{e}");
                }
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
    assert!(loaded < header_end * 8 / 3);
}

#[test]
fn unconvertible_dtype_is_named_at_load() {
    let dir = checkpoint_dir("dtype", CONFIG, &random_tensors());
    // Rewrite the file with D.0 of layer 0 stored as I64.
    let tensors = random_tensors();
    let ints = vec![1i64; 16];
    let named: Vec<(&str, &[usize], TensorData)> = tensors
        .iter()
        .map(|(n, s, v)| {
            if n == "model.layers.0.mamba.D.0" { (n.as_str(), &s[..], TensorData::I64(&ints)) } else { (n.as_str(), &s[..], TensorData::F32(v)) }
        })
        .collect();
    write_tensors(&dir.join("model.safetensors"), &named, &[]).unwrap();
    assert_error(&load_err(&dir), ErrorKind::UnknownDtype, &["model.layers.0.mamba.D.0", "I64"]);
}

// ---------------------------------------------------------------------------------------------
// Non-finite values
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_weight_is_reported_with_the_tensor_name() {
    let tensors = edit("model.layers.1.mamba.dt_proj.0.weight", |t| t.2[3] = f32::NAN);
    let dir = checkpoint_dir("nan", CONFIG, &tensors);
    assert_error(&load_err(&dir), ErrorKind::NonFiniteWeight, &["model.layers.1.mamba.dt_proj.0.weight", "NaN", "flat index 3"]);
}

#[test]
fn infinite_weight_is_reported_with_the_tensor_name() {
    let tensors = edit("model.memory_tokens", |t| {
        t.2[0] = f32::INFINITY;
        t.2[5] = f32::NEG_INFINITY;
    });
    let dir = checkpoint_dir("inf", CONFIG, &tensors);
    assert_error(&load_err(&dir), ErrorKind::NonFiniteWeight, &["model.memory_tokens", "2 non-finite", "inf"]);
}

#[test]
fn overflowing_logits_are_an_error_not_nan() {
    // Finite weights whose logits overflow f32: the forward pass reports it.
    let cfg = config();
    let mut weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 3)).unwrap();
    weights.final_layernorm.fill(f32::MAX);
    let model = Hymba::new(cfg, weights);
    let err = model.forward(&[1, 2]).unwrap_err();
    assert_error(&err, ErrorKind::NonFiniteOutput, &["non-finite logit", "row 0"]);
    let mut cache = model.new_sequence();
    assert_eq!(model.next_token_logits(&[1], &mut cache).unwrap_err().kind, ErrorKind::NonFiniteOutput);
}

// ---------------------------------------------------------------------------------------------
// Token ids
// ---------------------------------------------------------------------------------------------

fn random_model() -> Hymba {
    let cfg = config();
    let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 3)).unwrap();
    Hymba::new(cfg, weights)
}

#[test]
fn token_id_at_or_past_the_vocabulary_is_refused_by_every_entry_point() {
    let model = random_model();
    let err = model.forward(&[1, 16, 2]).unwrap_err();
    assert_error(&err, ErrorKind::TokenIdOutOfRange, &["token id 16", "index 1", "vocabulary size 16"]);
    let err = model.forward(&[u32::MAX]).unwrap_err();
    assert_error(&err, ErrorKind::TokenIdOutOfRange, &["4294967295"]);
    let mut cache = model.new_sequence();
    assert_eq!(model.forward_chunk(&[3, 99], &mut cache).unwrap_err().kind, ErrorKind::TokenIdOutOfRange);
    assert_eq!(model.next_token_logits(&[17], &mut cache).unwrap_err().kind, ErrorKind::TokenIdOutOfRange);
    assert_eq!(model.forward_traced(&[16]).err().map(|e| e.kind), Some(ErrorKind::TokenIdOutOfRange));
    // The refused calls left the cache untouched: decoding goes on from the meta tokens.
    assert_eq!(cache, model.new_sequence());
    assert_eq!(model.forward(&[]).unwrap_err().kind, ErrorKind::InvalidInput);
}

// ---------------------------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------------------------

#[test]
fn config_errors_name_the_file_and_the_field() {
    let dir = checkpoint_dir("cfg", &CONFIG.replace("\"sliding_window\": 2", "\"sliding_window\": 0"), &random_tensors());
    let err = load_err(&dir);
    assert_error(&err, ErrorKind::InvalidConfig, &["config.json", "sliding_window"]);
}

#[test]
fn missing_config_is_an_io_error_naming_the_path() {
    let dir = checkpoint_dir("nocfg", CONFIG, &random_tensors());
    fs::remove_file(dir.join("config.json")).unwrap();
    assert_error(&load_err(&dir), ErrorKind::Io, &[&dir.join("config.json").display().to_string()]);
}

#[test]
fn non_utf8_config_is_refused_naming_the_path() {
    let dir = checkpoint_dir("binary-cfg", CONFIG, &random_tensors());
    let mut bytes = CONFIG.as_bytes().to_vec();
    bytes.insert(1, 0xff);
    fs::write(dir.join("config.json"), bytes).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err.kind, ErrorKind::Io | ErrorKind::InvalidConfig), "{err:?}");
    assert!(err.message.contains("config.json"), "{}", err.message);
}

#[test]
fn config_values_in_released_files_that_the_parser_refuses() {
    // Through the public parser: each bad value is refused naming its field.
    let cases = [
        ("\"num_attention_heads\": 2", "\"num_attention_heads\": 0", "num_attention_heads"),
        ("\"num_attention_heads\": 2", "\"num_attention_heads\": 3", "num_attention_heads"),
        ("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3", "num_key_value_heads"),
        ("\"sliding_window\": 2", "\"sliding_window\": 0", "sliding_window"),
        ("\"intermediate_size\": 8", "\"intermediate_size\": -8", "intermediate_size"),
        ("\"global_attn_idx\": [0]", "\"global_attn_idx\": [0, 2]", "global_attn_idx"),
        ("\"global_attn_idx\": [0]", "\"global_attn_idx\": [0, 0]", "global_attn_idx"),
        ("\"kv_reuse_group\": [[0, 1]]", "\"kv_reuse_group\": [[0, 5]]", "kv_reuse_group"),
        ("\"kv_reuse_group\": [[0, 1]]", "\"kv_reuse_group\": [[0, 1, 1]]", "kv_reuse_group"),
        ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 4000000000", "num_hidden_layers"),
        ("\"hidden_size\": 8", "\"hidden_size\": 4000000000", "parameters"),
    ];
    for (from, to, culprit) in cases {
        let text = CONFIG.replace(from, to);
        assert_ne!(text, CONFIG, "{from}");
        let err = HymbaConfig::from_json_str(&text).expect_err(to);
        assert_error(&err, ErrorKind::InvalidConfig, &[culprit]);
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

fn cli(args: &[&str]) -> Output {
    common::cli_command().args(args).stdin(Stdio::null()).output().unwrap()
}

/// Run the command with its stdout closed at once, as `hymba-ref … | head -c 0` does.
fn cli_with_closed_stdout(args: &[&str]) -> Output {
    let mut child = common::cli_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end at once
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = cli(&["logits", "--model", ".", "--ids", "1", "--out", "x", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--frobnicate"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_subcommand_and_missing_argument_are_usage_errors() {
    let out = cli(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("frobnicate"), "{}", stderr(&out));
    let out = cli(&["logits", "--model", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ids"), "{}", stderr(&out));
}

#[test]
fn bad_flag_value_is_a_usage_error() {
    let out = cli(&["logits", "--model", ".", "--ids", "1", "--out", "x", "--prefill", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--prefill"), "{}", stderr(&out));
}

/// One command per subcommand that runs in well under a second on the demo model, and its
/// numeric flags with the exit code each of 0, −1, a huge value and a non-number gives: 2 for a
/// value out of range (the message names the flag, the value and the range), 0 for one accepted.
#[test]
fn every_numeric_flag_takes_0_minus_1_huge_and_words_with_one_exit_code_rule() {
    let dir = TempDir::new("cli-numbers");
    let text = dir.join("text.txt");
    fs::write(&text, "One line of text.\nA second line.\n").unwrap();
    let (text, out) = (text.to_str().unwrap(), dir.join("logits.safetensors"));
    let demo = hymba_ref::DEFAULT_MODEL_DIR;
    let generate = ["generate", "-p", "Hi", "-n", "1"];
    let batch = ["generate", "--prompts-file", text, "-n", "1"];
    let perplexity = ["perplexity", "-f", text];
    let logits = ["logits", "--model", demo, "--ids", "1,2,3", "--out", out.to_str().unwrap()];
    let bench = ["bench", "--configs", demo, "--contexts", "4", "--runs", "1", "--decode-tokens", "1", "--bandwidth-mib", "0", "-t", "1"];
    let values = ["0", "-1", "99999999999999999999", "x"];
    let sampling: [(&str, [i32; 4]); 8] = [
        ("--max-new-tokens", [0, 2, 2, 2]),
        ("--temperature", [0, 2, 0, 2]),
        ("--top-k", [0, 2, 2, 2]),
        ("--top-p", [2, 2, 2, 2]),
        ("--min-p", [0, 2, 2, 2]),
        ("--repetition-penalty", [2, 2, 0, 2]),
        ("--seed", [0, 2, 2, 2]),
        ("--threads", [2, 2, 2, 2]),
    ];
    let (chat, inspect, detokenize, explain) = (["chat"], ["inspect", "--model", demo], ["detokenize", "--model", demo], ["explain", "-p", "Hello there"]);
    let mut cases: Vec<(&[&str], &str, [i32; 4])> = Vec::new();
    for (flag, codes) in sampling {
        cases.push((&generate, flag, codes));
        cases.push((&chat, flag, codes)); // stdin is empty: the chat ends at once
    }
    cases.extend([
        (&batch[..], "--batch-size", [2, 2, 2, 2]),
        (&batch, "--max-cache-gb", [2, 2, 0, 2]),
        (&perplexity, "--context", [2, 2, 2, 2]),
        (&perplexity, "--stride", [2, 2, 2, 2]),
        (&inspect, "--context", [0, 2, 2, 2]),
        (&logits, "--prefill", [2, 2, 2, 2]),
        (&detokenize, "--ids", [0, 2, 2, 2]),
        (&explain, "--layers", [0, 2, 2, 2]),
        (&explain, "--heads", [0, 2, 2, 2]),
        (&bench, "--contexts", [2, 2, 2, 2]),
        (&bench, "--runs", [2, 2, 2, 2]),
        (&bench, "--decode-tokens", [2, 2, 2, 2]),
        (&bench, "--threads", [2, 2, 2, 2]),
        (&bench, "--seed", [0, 2, 2, 2]),
        (&bench, "--time-budget", [2, 2, 0, 2]),
        (&bench, "--cache-budget-gb", [2, 2, 0, 2]),
        (&bench, "--batch-sizes", [2, 2, 2, 2]),
        (&bench, "--bandwidth-mib", [0, 2, 2, 2]),
    ]);
    for (base, flag, codes) in cases {
        // The base command without the flag under test (nor its short form) and its value.
        let mut args: Vec<&str> = Vec::new();
        let mut rest = base.iter();
        while let Some(&arg) = rest.next() {
            match (arg == flag) || (flag == "--max-new-tokens" && arg == "-n") || (flag == "--threads" && arg == "-t") {
                true => drop(rest.next()),
                false => args.push(arg),
            }
        }
        for (value, code) in values.iter().zip(codes) {
            let run = [&args[..], &[flag, value]].concat();
            let result = cli(&run);
            let err = stderr(&result);
            assert_eq!(result.status.code(), Some(code), "{run:?}: {err}");
            if code == 2 {
                assert!(err.contains(flag) && err.contains(value), "{run:?} should name the flag and the value: {err}");
                let names_range = ["expected a", "a whole number from", "there is no"].iter().any(|r| err.contains(r));
                assert!(names_range, "{run:?} should name the allowed range: {err}");
            }
        }
        let _ = fs::remove_file(&out);
    }
}

#[test]
fn bad_model_dir_exits_1_naming_the_path() {
    let out_dir = TempDir::new("cli-nomodel");
    let missing = out_dir.join("no-such-model");
    let out_file = out_dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", missing.to_str().unwrap(), "--ids", "1,2", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-model"), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(out_dir.entries().is_empty(), "left {:?}", out_dir.entries());
}

#[test]
fn bad_ids_are_a_usage_error_naming_the_entry() {
    let dir = checkpoint_dir("cli-ids", CONFIG, &random_tensors());
    let out_file = dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", dir.0.to_str().unwrap(), "--ids", "1,x2", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ids"), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"x2\""), "{}", stderr(&out));
    assert!(!out_file.exists());
}

#[test]
fn failing_model_leaves_no_output_file() {
    // The token id 16 is out of range for V = 16: the run fails after loading the model.
    let dir = checkpoint_dir("cli-fail", CONFIG, &random_tensors());
    let out_file = dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", dir.0.to_str().unwrap(), "--ids", "1,16", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("token id 16"), "{}", stderr(&out));
    assert_eq!(dir.entries(), vec!["config.json", "model.safetensors"]);
}

#[test]
fn output_into_a_missing_directory_fails_and_creates_nothing() {
    let dir = checkpoint_dir("cli-outdir", CONFIG, &random_tensors());
    let out_file = dir.join("no-such-dir/logits.safetensors");
    let out = cli(&["logits", "--model", dir.0.to_str().unwrap(), "--ids", "1,2", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-dir"), "{}", stderr(&out));
    assert_eq!(dir.entries(), vec!["config.json", "model.safetensors"]);
}

#[test]
fn successful_logits_run_writes_exactly_the_output() {
    let dir = checkpoint_dir("cli-ok", CONFIG, &random_tensors());
    let out_file = dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", dir.0.to_str().unwrap(), "--ids", "1,2,3", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(dir.entries(), vec!["config.json", "logits.safetensors", "model.safetensors"]);
}

#[test]
fn corrupt_checkpoint_exits_1_naming_the_file() {
    let dir = checkpoint_dir("cli-corrupt", CONFIG, &random_tensors());
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let out_file = dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", dir.0.to_str().unwrap(), "--ids", "1", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("model.safetensors"), "{}", stderr(&out));
    assert!(!out_file.exists());
}

#[test]
fn inspect_errors_name_the_path_and_bad_flags_are_usage_errors() {
    let dir = TempDir::new("cli-inspect");
    let out = cli(&["inspect", "--model", dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&dir.join("config.json").display().to_string()), "{}", stderr(&out));
    fs::write(dir.join("config.json"), CONFIG.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3")).unwrap();
    let out = cli(&["inspect", "--model", dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("num_attention_heads"), "{}", stderr(&out));
    let out = cli(&["inspect", "--model", dir.0.to_str().unwrap(), "--context", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--context"), "{}", stderr(&out));
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // `hymba-ref inspect ... | head -c 0`: the reader goes away before the report is written.
    let dir = TempDir::new("cli-pipe");
    fs::write(dir.join("config.json"), CONFIG).unwrap();
    for json in [false, true] {
        let mut args = vec!["inspect", "--model", dir.0.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = cli_with_closed_stdout(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by fuzzing
// ---------------------------------------------------------------------------------------------

#[test]
fn shard_index_naming_a_file_with_a_nul_byte_is_refused_as_not_a_file_name() {
    // fuzz/corpus/shard_index/seed-crash-nul-in-shard-name: the index was accepted and the shard
    // then reported as missing, though no file system can hold such a name.
    let text = r#"{"weight_map": {"a": "model-\u0000-of-00002.safetensors"}}"#;
    let err = hymba_ref::checkpoint::parse_index(text, "my/model.safetensors.index.json").unwrap_err();
    assert_error(&err, ErrorKind::ShardIndex, &["my/model.safetensors.index.json", "'a'", "not a file name"]);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer commands
// ---------------------------------------------------------------------------------------------

fn tokenizer_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer")
}

#[test]
fn non_utf8_text_argument_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let text = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = common::cli_command()
        .args(["tokenize", "--model", tokenizer_fixture().to_str().unwrap(), "--text"])
        .arg(text)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("UTF-8"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn detokenize_names_the_id_past_the_vocabulary() {
    let model = tokenizer_fixture();
    let out = cli(&["detokenize", "--model", model.to_str().unwrap(), "--ids", "15043,32001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("32001"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn malformed_tokenizer_files_exit_1_naming_the_file() {
    let dir = TempDir::new("cli-tok");
    let json = fs::read(tokenizer_fixture().join("tokenizer.json")).unwrap();
    fs::write(dir.join("tokenizer.json"), &json[..json.len() / 2]).unwrap();
    let out = cli(&["tokenize", "--model", dir.0.to_str().unwrap(), "--text", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tokenizer.json"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let model = fs::read(tokenizer_fixture().join("tokenizer.model")).unwrap();
    fs::write(dir.join("tokenizer.model"), &model[..model.len() - 7]).unwrap();
    let out = cli(&["tokenize", "--model", dir.0.to_str().unwrap(), "--text", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tokenizer.model"), "{}", stderr(&out));
}

#[test]
fn tokenize_with_a_closed_stdout_is_not_a_panic() {
    let model = tokenizer_fixture();
    for args in [
        vec!["tokenize", "--model", model.to_str().unwrap(), "--text", "Hello world"],
        vec!["detokenize", "--model", model.to_str().unwrap(), "--ids", "15043,3186"],
    ] {
        let out = cli_with_closed_stdout(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// generate and perplexity (on the bundled demo model)
// ---------------------------------------------------------------------------------------------

#[test]
fn non_utf8_prompt_on_stdin_is_refused() {
    let out = cli_with_stdin(&["generate", "--model", hymba_ref::DEFAULT_MODEL_DIR, "--max-new-tokens", "2"], b"Once upon \xff\xfe a time");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("stdin") && stderr(&out).contains("UTF-8"), "{}", stderr(&out));
    assert!(stderr(&out).contains("offset 10"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn generate_usage_and_input_errors() {
    let model = hymba_ref::DEFAULT_MODEL_DIR;
    // Bad flag values are usage errors naming the flag.
    for (flag, value) in [("--temperature", "-1"), ("--top-p", "0"), ("--max-new-tokens", "many"), ("--frobnicate", "1")] {
        let out = cli(&["generate", "--model", model, "--prompt", "hi", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    // Ids past the vocabulary, and a missing model directory, exit 1 naming the culprit.
    let out = cli(&["generate", "--model", model, "--ids", "1,99999999", "--max-new-tokens", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("99999999"), "{}", stderr(&out));
    let out = cli(&["generate", "--model", "/no/such/model-dir", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/model-dir"), "{}", stderr(&out));
}

#[test]
fn generate_with_a_closed_stdout_is_not_a_panic() {
    let model = hymba_ref::DEFAULT_MODEL_DIR;
    let out = cli_with_closed_stdout(&["generate", "--model", model, "--prompt", "Once upon a time", "--max-new-tokens", "8"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{:?}: {}", out.status, stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn perplexity_errors_name_the_file_and_the_bad_value() {
    let dir = TempDir::new("ppl");
    let model = hymba_ref::DEFAULT_MODEL_DIR;
    let binary = dir.join("binary.txt");
    fs::write(&binary, b"text \xc3\x28 more").unwrap();
    let out = cli(&["perplexity", "--model", model, "--file", binary.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("binary.txt") && stderr(&out).contains("UTF-8"), "{}", stderr(&out));
    let text = dir.join("text.txt");
    fs::write(&text, "Once upon a time there was a small model.").unwrap();
    // Bad window flags are usage errors naming the flag.
    for (context, stride, needle) in [
        ("0", "1", "'0' for '--context"),
        ("1", "1", "'1' for '--context"),
        ("8", "8", "--stride 8: must be below --context (8)"),
        ("8", "0", "'0' for '--stride"),
    ] {
        let out = cli(&["perplexity", "--model", model, "--file", text.to_str().unwrap(), "--context", context, "--stride", stride]);
        assert_eq!(out.status.code(), Some(2), "{context}/{stride}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    let missing = dir.join("missing.txt");
    let out = cli(&["perplexity", "--model", model, "--file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.txt"), "{}", stderr(&out));
}

#[test]
fn perplexity_with_a_closed_stdout_is_not_a_panic() {
    let dir = TempDir::new("ppl-pipe");
    let text = dir.join("text.txt");
    fs::write(&text, "Once upon a time there was a small model.").unwrap();
    let model = hymba_ref::DEFAULT_MODEL_DIR;
    let out = cli_with_closed_stdout(&["perplexity", "--model", model, "--file", text.to_str().unwrap(), "--context", "16"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_checkpoint_without_a_tokenizer_points_to_ids() {
    let dir = checkpoint_dir("cli-notok", CONFIG, &random_tensors());
    let model = dir.0.to_str().unwrap();
    let out = cli(&["generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no tokenizer in"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ids") && stderr(&out).contains("--print-ids"), "{}", stderr(&out));
    // What it points to works.
    let out = cli(&["generate", "--model", model, "--ids", "[1, 2]", "--print-ids", "--max-new-tokens", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches(',').count(), 1, "two ids");
}

#[test]
fn every_model_flag_takes_the_directory_or_its_config_json() {
    let dir = checkpoint_dir("cli-cfgpath", CONFIG, &random_tensors());
    let config = dir.join("config.json");
    let config = config.to_str().unwrap();
    let out = cli(&["inspect", "--model", config, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let by_dir = cli(&["inspect", "--model", dir.0.to_str().unwrap(), "--json"]);
    assert_eq!(out.stdout, by_dir.stdout);
    let out_file = dir.join("logits.safetensors");
    let out = cli(&["logits", "--model", config, "--ids", "1,2", "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let weights = dir.join("model.safetensors");
    let out = cli(&["inspect", "--model", weights.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a checkpoint directory or its config.json"), "{}", stderr(&out));
    // A built-in config name has no weights: a usage error saying which commands take it.
    let out = cli(&["generate", "--model", "1.5b", "--prompt", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--model 1.5b: no such directory; that is a built-in config"), "{}", stderr(&out));
}

#[test]
fn every_command_that_needs_a_model_defaults_to_the_bundled_one() {
    let demo = hymba_ref::DEFAULT_MODEL_DIR;
    let dir = TempDir::new("cli-default-model");
    let out_file = dir.join("logits.safetensors");
    let (by_default, named) = (out_file.to_str().unwrap(), dir.join("named.safetensors"));
    let cases: [(&[&str], &[&str]); 4] = [
        (&["tokenize", "--text", "Hello"], &["tokenize", "-m", demo, "--text", "Hello"]),
        (&["detokenize", "--ids", "1,3565"], &["detokenize", "-m", demo, "--ids", "1,3565"]),
        (&["inspect", "--json"], &["inspect", "-m", demo, "--json"]),
        (&["logits", "--ids", "1,3565", "--out", by_default], &["logits", "-m", demo, "--ids", "1,3565", "--out", named.to_str().unwrap()]),
    ];
    for (without, with) in cases {
        let (a, b) = (cli(without), cli(with));
        assert_eq!(a.status.code(), Some(0), "{without:?}: {}", stderr(&a));
        assert_eq!((a.stdout, b.status.code()), (b.stdout, Some(0)), "{without:?}");
    }
    assert_eq!(fs::read(&out_file).unwrap(), fs::read(&named).unwrap());
}

#[test]
fn generating_past_max_position_embeddings_warns_and_says_what_happens() {
    // The demo model: max_position_embeddings 2048, 16 meta tokens, rope_type ntk.
    let model = hymba_ref::DEFAULT_MODEL_DIR;
    let ids = vec!["5"; 2030].join(",");
    let out = cli(&["generate", "--model", model, "--ids", &ids, "--print-ids", "--max-new-tokens", "3", "--no-eos-stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: the prompt (2030 tokens) + --max-new-tokens 3"), "{err}");
    assert!(err.contains("make 2049 positions, past max_position_embeddings = 2048"), "{err}");
    assert!(err.contains("Generation goes on"), "{err}");
    let out = cli(&["generate", "--model", model, "--ids", &ids, "--print-ids", "--max-new-tokens", "2", "--no-eos-stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}
