//! The bodies of the fuzz targets, as plain functions of the input bytes.
//!
//! Each `fuzz/fuzz_targets/<name>.rs` (a cargo-fuzz crate, run with libFuzzer) calls the function
//! of the same name here, and `tests/fuzz_corpus.rs` runs the same functions in `cargo test` over
//! the committed seed corpus `fuzz/corpus/<name>/` plus proptest-generated inputs. Every function
//! must return normally on *any* input: a panic (including a failed `debug_assert!` or an integer
//! overflow in a checked build) or an abort is a bug. Besides "no panic", the bodies assert the
//! invariants the library promises for accepted inputs (tensors tile the data buffer, the layer
//! plan is consistent, logits are finite or the error says so).
//!
//! Not part of the public API.

use std::sync::OnceLock;

use crate::checkpoint::random::RandomWeights;
use crate::checkpoint::safetensors::{Dtype, SafetensorsFile};
use crate::checkpoint::shards::parse_index;
use crate::checkpoint::weights::HymbaWeights;
use crate::config::{HymbaConfig, KvSource};
use crate::base::error::{Error, ErrorKind};
use crate::model::Hymba;
use crate::base::json_scan::first_duplicate_key;
use crate::features::generate::sampling::SamplingParams;
use crate::tokenizer::{AddedTokens, Segment, StreamDecoder, Tokenizer, MAX_ADDED_TOKEN_BYTES};

/// The body of a fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by name, for the corpus test.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors_bytes", safetensors_bytes),
    ("config_json", config_json),
    ("shard_index", shard_index),
    ("loader", loader),
    ("quantized_loader", quantized_loader),
    ("tokenizer_json", tokenizer_json),
    ("tokenizer_model", tokenizer_model),
    ("tokenizer_roundtrip", tokenizer_roundtrip),
    ("generation_config", generation_config),
    ("added_tokens", added_tokens),
];

/// A safetensors file from arbitrary bytes: parse, then read every tensor every way.
pub fn safetensors_bytes(data: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") else { return };
    // Accepted: the tensors tile the data buffer, which ends at the end of the input.
    let tensor_bytes: usize = file.tensors().map(|t| t.byte_len()).sum();
    let header_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    assert_eq!(8 + header_len + tensor_bytes, data.len(), "tensors must tile the data buffer");
    for info in file.tensors() {
        let bytes = file.bytes_of(&info.name).expect("a listed tensor has bytes");
        assert_eq!(bytes.len(), info.num_elements() * info.dtype.size_in_bytes());
        match file.to_f32(&info.name) {
            Ok((shape, values)) => {
                assert_eq!(shape, info.shape);
                assert_eq!(values.len(), info.num_elements());
            }
            Err(e) => {
                assert!(![Dtype::F32, Dtype::F16, Dtype::BF16].contains(&info.dtype), "{e}");
                assert_eq!(e.kind, ErrorKind::UnknownDtype);
            }
        }
        if let Ok((_, values)) = file.to_i64(&info.name) {
            assert_eq!(values.len(), info.num_elements());
        }
    }
    let _ = file.metadata();
    assert!(file.to_f32("\u{0}no such tensor").is_err());
}

/// `config.json` text: parse and resolve the layer plan; check the plan's invariants and the
/// tensor list; for small configs, also build a model on random weights and run it.
pub fn config_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = HymbaConfig::from_json_str(&text) else { return };
    check_plan(&cfg);
    // The size check let it through, so its tensors are within the bound, and named once each.
    let specs = cfg.tensors();
    let params = cfg.parameter_count();
    assert!(params as u64 <= crate::config::MAX_PARAMETERS, "{params} parameters accepted");
    let names: std::collections::BTreeSet<&str> = specs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), specs.len(), "a tensor name appears twice");
    // Small enough to run: random weights, a full forward, and the same ids decoded in steps.
    if params <= 40_000 && cfg.num_hidden_layers <= 8 {
        // Random weights are float: a quantized config gets them quantized, as `--weights` does.
        let float_cfg = HymbaConfig { quantization: None, ..cfg.clone() };
        let weights = HymbaWeights::from_checkpoint(&float_cfg, &RandomWeights::new(&cfg, 7))
            .expect("random weights match their own config");
        let weights = match cfg.quantization {
            Some(kind) => weights.quantized(kind).expect("random weights quantize"),
            None => weights,
        };
        run_model(Hymba::new(cfg, weights), true);
    }
}

fn check_plan(cfg: &HymbaConfig) {
    assert_eq!(cfg.layers.len(), cfg.num_hidden_layers);
    assert!(cfg.hidden_size.is_multiple_of(cfg.num_attention_heads));
    assert!(cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads));
    assert!(cfg.d_inner().is_multiple_of(cfg.num_attention_heads));
    for (i, plan) in cfg.layers.iter().enumerate() {
        assert_eq!(plan.index, i);
        match plan.kv {
            KvSource::Own => assert!(plan.kv_retention.is_some()),
            KvSource::ReuseFrom(j) => {
                assert!(j < i, "layer {i} reuses the later layer {j}");
                assert_eq!(cfg.layers[j].kv, KvSource::Own, "layer {i} reuses a reuser");
                assert!(plan.kv_retention.is_none());
            }
        }
        let _ = cfg.in_proj_rows(plan);
    }
}

/// Run a model on a few prompts; a result is finite logits or a `NonFiniteOutput` error.
fn run_model(model: Hymba, decode: bool) {
    let v = model.config.vocab_size as u32;
    let span = model.config.num_memory_tokens + model.config.sliding_window.unwrap_or(3);
    let n = (2 * span + 1).min(24);
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % v).collect();
    accept(model.forward(&ids).map(|l| l.iter().all(|x| x.is_finite())));
    if decode {
        let mut cache = model.new_sequence();
        let (prompt, rest) = ids.split_at(n / 2 + 1);
        accept(model.forward_chunk(prompt, &mut cache).map(|l| l.iter().all(|x| x.is_finite())));
        for &id in rest {
            accept(model.next_token_logits(&[id], &mut cache).map(|l| l.iter().all(|x| x.is_finite())));
        }
    }
    let err = model.forward(&[v]).expect_err("id = vocab size must be refused");
    assert_eq!(err.kind, ErrorKind::TokenIdOutOfRange);
    assert_eq!(model.forward(&[]).expect_err("empty ids").kind, ErrorKind::InvalidInput);
}

fn accept(result: Result<bool, Error>) {
    match result {
        Ok(all_finite) => assert!(all_finite, "logits with NaN/inf returned as Ok"),
        Err(e) => assert_eq!(e.kind, ErrorKind::NonFiniteOutput, "{e}"),
    }
}

/// `model.safetensors.index.json` text.
pub fn shard_index(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(index) = parse_index(&text, "fuzz.index.json") else { return };
    for file in index.shard_files() {
        // An index can only name plain files in the checkpoint directory.
        assert!(!file.is_empty() && file != "." && file != "..", "{file:?}");
        assert!(!file.contains('/') && !file.contains('\0'), "{file:?}");
    }
}

/// Small configs the loader target checks fuzzed files against. The first input byte picks one.
pub const LOADER_CONFIGS: [&str; 2] = [
    // Meta tokens, a window, a global layer, K/V groups, RoPE, per-head kq norm, SwiGLU, tied.
    r#"{"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 8, "mamba_expand": 2, "mamba_d_state": 2,
        "mamba_d_conv": 2, "mamba_dt_rank": "auto", "num_memory_tokens": 2, "sliding_window": 2,
        "global_attn_idx": [0], "kv_reuse_group": [[1, 2]], "rope": true, "rope_type": "default",
        "kq_norm": "perhead-rms", "mlp_hidden_act": "silu", "tie_word_embeddings": true}"#,
    // No meta tokens, no window, every-2 K/V reuse, NTK RoPE, shared kq norm, ReLU², untied,
    // projection biases, no conv bias, no inner layernorms.
    r#"{"vocab_size": 12, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 6, "mamba_expand": 1, "mamba_d_state": 2,
        "mamba_d_conv": 3, "mamba_dt_rank": 2, "num_memory_tokens": 0, "kv_reuse_every_i_layer": 2,
        "rope": true, "rope_type": "ntk", "max_position_embeddings": 64,
        "orig_max_position_embeddings": 16, "kq_norm": "rms", "mlp_hidden_act": "relu2",
        "tie_word_embeddings": false, "mamba_proj_bias": true, "mamba_conv_bias": false,
        "mamba_inner_layernorms": false}"#,
];

/// The parsed [`LOADER_CONFIGS`].
pub fn loader_configs() -> &'static [HymbaConfig] {
    static CONFIGS: OnceLock<Vec<HymbaConfig>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        LOADER_CONFIGS.iter().map(|t| HymbaConfig::from_json_str(t).expect("valid")).collect()
    })
}

/// The weights loader: byte 0 picks a config from [`LOADER_CONFIGS`], the rest is a safetensors
/// file checked against it (names, shapes, dtypes, finiteness); an accepted file is run.
pub fn loader(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else { return };
    let configs = loader_configs();
    let cfg = &configs[selector as usize % configs.len()];
    let Ok(file) = SafetensorsFile::from_bytes(file.to_vec(), "fuzz.safetensors") else { return };
    match HymbaWeights::from_checkpoint(cfg, &file) {
        Ok(weights) => run_model(Hymba::new(cfg.clone(), weights), selector & 0x80 != 0),
        Err(e) => assert!(!e.message.is_empty()),
    }
}

/// The weights loader on a quantized checkpoint: byte 0 picks a config from [`LOADER_CONFIGS`]
/// (bit 0), the format (bit 1: q8_0 or q4_0) and step-by-step decoding (bit 7); the rest is a
/// safetensors file checked against the config marked as quantized (values, scales: names,
/// shapes, dtypes, finite scales); an accepted file is run.
pub fn quantized_loader(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else { return };
    let configs = loader_configs();
    let mut cfg = configs[selector as usize % configs.len()].clone();
    cfg.quantization = Some(crate::kernels::quant::QuantType::ALL[(selector as usize >> 1) % 2]);
    let Ok(file) = SafetensorsFile::from_bytes(file.to_vec(), "fuzz.safetensors") else { return };
    match HymbaWeights::from_checkpoint(&cfg, &file) {
        Ok(weights) => run_model(Hymba::new(cfg, weights), selector & 0x80 != 0),
        Err(e) => assert!(!e.message.is_empty()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// Texts every accepted tokenizer file is exercised on.
const SAMPLE_TEXTS: [&str; 5] = ["Hello world", "  a\tb\nc  ", "Ünïcödé 🦙 漢字", "<s> x </s>[PAD]<unk>", ""];

/// Whatever a tokenizer file produced must encode and decode without panicking, and only
/// produce ids inside its vocabulary.
fn exercise_tokenizer(tok: &Tokenizer, extra_ids: &[u32]) {
    let v = tok.vocab_size();
    for text in SAMPLE_TEXTS {
        for add_bos in [false, true] {
            let ids = tok.encode(text, add_bos);
            assert!(ids.iter().all(|&id| (id as usize) < v), "encode gave an id ≥ {v}");
            tok.decode(&ids).expect("ids from encode decode");
        }
    }
    check_decode(tok, extra_ids);
    let _ = (tok.bos_id(), tok.eos_id(), tok.id_to_piece(0), tok.id_to_piece(u32::MAX));
}

/// Decoding arbitrary ids: text, or a `TokenIdOutOfRange` error when an id is ≥ V; streaming
/// decoding never fails on in-range ids.
fn check_decode(tok: &Tokenizer, ids: &[u32]) {
    let v = tok.vocab_size();
    let in_range = ids.iter().all(|&id| (id as usize) < v);
    match tok.decode(ids) {
        Ok(_) => assert!(in_range, "decode accepted an id ≥ {v}"),
        Err(e) => {
            assert!(!in_range, "decode refused in-range ids: {e}");
            assert_eq!(e.kind, ErrorKind::TokenIdOutOfRange, "{e}");
        }
    }
    let mut stream = StreamDecoder::new(tok);
    for &id in ids {
        match stream.push(id) {
            Ok(_) => assert!((id as usize) < v),
            Err(e) => assert_eq!(e.kind, ErrorKind::TokenIdOutOfRange, "{e}"),
        }
    }
    let _ = stream.finish();
}

/// Ids from raw bytes: little-endian u32s, folded to just past the vocabulary so that most are
/// valid and some are not.
fn ids_from_bytes(data: &[u8], vocab: usize) -> Vec<u32> {
    let limit = vocab as u64 + 4;
    data.chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            (u32::from_le_bytes(b) as u64 % limit) as u32
        })
        .collect()
}

/// A `tokenizer.json` from arbitrary text.
pub fn tokenizer_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(tok) = Tokenizer::from_json_str(&text, "fuzz/tokenizer.json") {
        exercise_tokenizer(&tok, &ids_from_bytes(&data[..data.len().min(64)], tok.vocab_size()));
    }
}

/// A `tokenizer.model` (SentencePiece protobuf) from arbitrary bytes.
pub fn tokenizer_model(data: &[u8]) {
    if let Ok(tok) = Tokenizer::from_sp_bytes(data, "fuzz/tokenizer.model") {
        exercise_tokenizer(&tok, &ids_from_bytes(&data[..data.len().min(64)], tok.vocab_size()));
    }
}

/// The released tokenizer, from `tests/fixtures/hymba-tokenizer` (`tokenizer.json` for
/// `which` = 0, `tokenizer.model` for 1), loaded once; `None` when the fixtures are absent.
fn released_tokenizer(which: usize) -> Option<&'static Tokenizer> {
    static TOKENIZERS: OnceLock<[Option<Tokenizer>; 2]> = OnceLock::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer");
    TOKENIZERS
        .get_or_init(|| {
            [
                Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).ok(),
                Tokenizer::from_sentencepiece_model(&dir.join("tokenizer.model")).ok(),
            ]
        })
        .get(which)?
        .as_ref()
}

/// Text that decodes back to itself: no added-token strings (they become tokens) and no `▁`
/// (it encodes like a space, so it decodes to one).
fn round_trips(s: &str) -> bool {
    !s.contains('\u{2581}') && !["<unk>", "<s>", "</s>", "[PAD]"].iter().any(|t| s.contains(t))
}

/// The released tokenizer on arbitrary text and ids. Byte 0: bit 0 picks `tokenizer.json` or
/// `tokenizer.model`, bit 1 reads the rest as ids instead of text. Text: ids inside the
/// vocabulary, `decode(encode(text)) == text` (for text without added-token strings or `▁`),
/// streaming decoding equal to whole decoding. Ids: as `check_decode`.
pub fn tokenizer_roundtrip(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some(tok) = released_tokenizer(usize::from(selector & 1)) else { return };
    if selector & 2 != 0 {
        check_decode(tok, &ids_from_bytes(rest, tok.vocab_size()));
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let ids = tok.encode(&text, false);
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    let decoded = tok.decode(&ids).expect("ids from encode decode");
    if round_trips(&text) {
        assert_eq!(decoded, text, "decode(encode(text)) != text");
    }
    let mut stream = StreamDecoder::new(tok);
    let mut streamed: String = ids.iter().map(|&id| stream.push(id).expect("in range")).collect();
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, decoded, "streaming decode differs from decode");
    let with_bos = tok.encode(&text, true);
    assert!(with_bos.len() >= ids.len());
}

/// `generation_config.json` text. An accepted file passes [`SamplingParams::validate`], has no
/// repeated key, and is greedy unless it says `"do_sample": true`; then its `top_k` is exactly
/// the whole number written (or 50 when absent).
pub fn generation_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(params) = SamplingParams::from_generation_config_text(&text, "fuzz.generation_config.json") else { return };
    assert!(params.validate().is_ok(), "{params:?}");
    assert!(first_duplicate_key(&text).is_none(), "a repeated key was accepted");
    let json: serde_json::Value = serde_json::from_str(&text).expect("accepted text is JSON");
    if json.get("do_sample") == Some(&serde_json::Value::Bool(true)) {
        let written = json.get("top_k").filter(|v| !v.is_null()).map_or(Some(50), serde_json::Value::as_u64);
        assert_eq!(written, Some(params.top_k as u64), "top_k");
    } else {
        assert!(params.is_greedy(), "sampling without do_sample: {params:?}");
    }
}

/// Added-token matching: the input up to the first NUL byte lists tokens (one per line, lossy
/// UTF-8, ids by position), the rest is the text. The trie's cut of the text must equal a naive
/// leftmost-longest scan (every token tried at every position), and the pieces must rebuild it.
pub fn added_tokens(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let list = String::from_utf8_lossy(&data[..split]);
    let text = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());
    let tokens: Vec<(String, u32)> = list
        .split('\n')
        .filter(|t| !t.is_empty() && t.len() <= MAX_ADDED_TOKEN_BYTES)
        .zip(0u32..)
        .map(|(t, id)| (t.to_string(), id))
        .collect();
    let segments = AddedTokens::new(tokens.clone()).split(&text);
    assert_eq!(segments, naive_split(&tokens, &text));
    let rebuilt: String = segments
        .iter()
        .map(|s| match s {
            Segment::Text(t) => t.to_string(),
            Segment::Token(id) => tokens.iter().find(|(_, i)| i == id).expect("a listed id").0.clone(),
        })
        .collect();
    assert_eq!(rebuilt, text);
}

/// Leftmost-longest matching by brute force; of equal contents the first listed wins.
fn naive_split<'a>(tokens: &[(String, u32)], text: &'a str) -> Vec<Segment<'a>> {
    let mut segments = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while pos < text.len() {
        let best = tokens
            .iter()
            .filter(|(t, _)| text.as_bytes()[pos..].starts_with(t.as_bytes()))
            .fold(None::<&(String, u32)>, |best, t| match best {
                Some(b) if b.0.len() >= t.0.len() => Some(b),
                _ => Some(t),
            });
        match best {
            Some((content, id)) => {
                if start < pos {
                    segments.push(Segment::Text(&text[start..pos]));
                }
                segments.push(Segment::Token(*id));
                pos += content.len();
                start = pos;
            }
            None => pos += 1,
        }
    }
    if start < text.len() {
        segments.push(Segment::Text(&text[start..]));
    }
    segments
}
