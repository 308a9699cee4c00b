//! Loading tokenizer files: which file `from_dir` picks, `tokenizer_config.json`, SentencePiece
//! normaliser flags, small synthetic tokenizers, and clear errors (never panics) on malformed or
//! unsupported files.

mod common;
use common::TempDir;
use hymba_ref::tokenizer::Tokenizer;
use hymba_ref::{Error, ErrorKind};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn released_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer")
}

fn released_json() -> &'static Value {
    static JSON: OnceLock<Value> = OnceLock::new();
    JSON.get_or_init(|| {
        serde_json::from_str(&std::fs::read_to_string(released_dir().join("tokenizer.json")).unwrap()).unwrap()
    })
}

fn released_model() -> &'static [u8] {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| std::fs::read(released_dir().join("tokenizer.model")).unwrap())
}

fn copy(file: &str, to: &Path) {
    std::fs::copy(released_dir().join(file), to.join(file)).unwrap();
}

fn assert_error(result: Result<Tokenizer, Error>, kind: ErrorKind, needles: &[&str]) {
    let e = result.expect_err("expected an error");
    assert_eq!(e.kind, kind, "{e}");
    for needle in needles {
        assert!(e.message.contains(needle), "{needle:?} not in: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// from_dir and tokenizer_config.json

#[test]
fn from_dir_prefers_tokenizer_json() {
    let tok = Tokenizer::from_dir(&released_dir()).unwrap();
    assert_eq!(tok.vocab_size(), 32001);
    assert_eq!(tok.encode("<s>", false), vec![1]);
}

#[test]
fn from_dir_falls_back_to_the_sentencepiece_model() {
    let dir = TempDir::new("tokenizer-sp-only");
    copy("tokenizer.model", &dir.0);
    let tok = Tokenizer::from_dir(&dir.0).unwrap();
    assert_eq!(tok.vocab_size(), 32000);
    // sentencepiece spells added-token strings out (ids from the shared goldens).
    assert_eq!(tok.encode("[PAD] inside text", false), vec![518, 29925, 3035, 29962, 2768, 1426]);
    assert_eq!(tok.encode("Hello world", true), vec![1, 15043, 3186]);
}

#[test]
fn from_dir_without_tokenizer_files_names_the_directory() {
    let dir = TempDir::new("tokenizer-empty");
    assert_error(
        Tokenizer::from_dir(&dir.0),
        ErrorKind::Io,
        &[dir.path(), "tokenizer.json", "tokenizer.model"],
    );
}

#[test]
fn tokenizer_config_sets_bos_handling() {
    let dir = TempDir::new("tokenizer-config");
    copy("tokenizer.json", &dir.0);
    let config = dir.join("tokenizer_config.json");

    std::fs::write(&config, r#"{"add_bos_token": false, "bos_token": {"content": "</s>"}, "eos_token": "[PAD]"}"#)
        .unwrap();
    let tok = Tokenizer::from_dir(&dir.0).unwrap();
    assert!(!tok.add_bos_token());
    assert_eq!((tok.bos_id(), tok.eos_id()), (2, 32000));

    std::fs::write(&config, r#"{"add_eos_token": true}"#).unwrap();
    assert_error(Tokenizer::from_dir(&dir.0), ErrorKind::Tokenizer, &["tokenizer_config.json", "add_eos_token"]);
    std::fs::write(&config, r#"{"bos_token": "<nope>"}"#).unwrap();
    assert_error(Tokenizer::from_dir(&dir.0), ErrorKind::Tokenizer, &["bos_token", "<nope>"]);
    std::fs::write(&config, "{").unwrap();
    assert_error(Tokenizer::from_dir(&dir.0), ErrorKind::Tokenizer, &["tokenizer_config.json", "not valid JSON"]);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json variants

/// The released tokenizer.json with `edit` applied.
fn edited_json(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = released_json().clone();
    edit(&mut v);
    v.to_string()
}

fn load_edited(edit: impl FnOnce(&mut Value)) -> Result<Tokenizer, Error> {
    Tokenizer::from_json_str(&edited_json(edit), "edited.json")
}

#[test]
fn unsupported_tokenizer_json_features_are_refused_by_name() {
    assert_error(Tokenizer::from_json_str("not json", "x.json"), ErrorKind::Tokenizer, &["x.json", "not valid JSON"]);
    assert_error(Tokenizer::from_json_str("[]", "x.json"), ErrorKind::Tokenizer, &["x.json"]);
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["model"]["byte_fallback"] = json!(false)), "byte_fallback"),
        (Box::new(|v| v["model"]["type"] = json!("Unigram")), "model.type"),
        (Box::new(|v| v["model"]["dropout"] = json!(0.1)), "model.dropout"),
        (Box::new(|v| v["pre_tokenizer"] = json!({"type": "Metaspace"})), "pre_tokenizer"),
        (Box::new(|v| v["decoder"]["decoders"][2] = json!({"type": "CTC"})), "decoder"),
        (
            Box::new(|v| v["normalizer"]["normalizers"][1]["pattern"] = json!({"Regex": " +"})),
            "normalizer.normalizers[1].pattern",
        ),
        (Box::new(|v| v["normalizer"] = json!({"type": "NFKC"})), "NFKC"),
        (Box::new(|v| v["model"]["merges"][7] = json!("▁t zzz")), "model.merges[7]"),
        (Box::new(|v| v["model"]["merges"][8] = json!("a b c")), "model.merges[8]"),
        (Box::new(|v| v["model"]["vocab"]["<0x41>"] = json!(-1)), "<0x41>"),
        (
            Box::new(|v| {
                let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                let id = vocab.remove("<0x41>").unwrap();
                vocab.insert("<0x41>x".into(), id);
            }),
            "<0x41> is missing",
        ),
        (Box::new(|v| v["added_tokens"][3]["id"] = json!(5)), "id 5 is given to two pieces"),
        (Box::new(|v| v["added_tokens"][3]["id"] = json!(40000)), "id 32000 has no piece"),
        (Box::new(|v| v["added_tokens"][3]["lstrip"] = json!(true)), "added_tokens[3].lstrip"),
        (Box::new(|v| v["added_tokens"][3]["content"] = json!("")), "added_tokens[3].content"),
        (
            Box::new(|v| {
                v["post_processor"]["single"] = json!([{"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "</s>"}}])
            }),
            "post_processor",
        ),
    ];
    for (edit, needle) in cases {
        assert_error(load_edited(edit), ErrorKind::Tokenizer, &["edited.json", needle]);
    }
}

#[test]
fn merges_may_be_strings_or_pairs() {
    let pairs = load_edited(|v| {
        let merges: Vec<Value> = v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
                json!([a, b])
            })
            .collect();
        v["model"]["merges"] = Value::Array(merges);
    })
    .unwrap();
    assert_eq!(pairs.encode("The quick brown fox", false), vec![450, 4996, 17354, 1701, 29916]);
}

#[test]
fn decoder_without_strip_keeps_the_leading_space_and_null_post_processor_means_no_bos() {
    let tok = load_edited(|v| {
        v["decoder"]["decoders"].as_array_mut().unwrap().pop();
        v["post_processor"] = Value::Null;
    })
    .unwrap();
    assert_eq!(tok.decode(&tok.encode("x", false)).unwrap(), " x");
    assert!(!tok.add_bos_token());
}

/// A tokenizer.json small enough to read: bytes, `<unk>` `<s>` `</s>`, and a few pieces.
fn tiny_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, p) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(p.to_string(), json!(i));
    }
    for b in 0..256 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for (i, p) in ["▁", "a", "b", "ab", "▁a", "▁ab", "bb"].iter().enumerate() {
        vocab.insert(p.to_string(), json!(259 + i));
    }
    json!({
        "added_tokens": [{"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,
            "vocab": vocab, "merges": ["a b", "▁ a", "▁a b", "b b"]}
    })
}

#[test]
fn tiny_tokenizer_json_encodes_by_merge_rank() {
    let tok = Tokenizer::from_json_str(&tiny_json().to_string(), "tiny").unwrap();
    assert_eq!(tok.vocab_size(), 266);
    // "▁abb": a+b (rank 0) merges first, which leaves ▁+ab and ab+b: no merges for those.
    assert_eq!(tok.encode("abb", true), vec![1, 259, 262, 261]);
    // "▁ba": neither ▁+b nor b+a is a merge.
    assert_eq!(tok.encode("ba", false), vec![259, 261, 260]);
    // "▁a" then "c" falls back to its byte.
    assert_eq!(tok.encode("ac", false), vec![263, 3 + 0x63]);
    assert_eq!(tok.decode(&[263, 3 + 0x63]).unwrap(), "ac");
}

// ---------------------------------------------------------------------------------------------
// tokenizer.model variants

/// Protobuf writing, for building test models.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_varint_field(out: &mut Vec<u8>, number: u64, v: u64) {
    put_varint(out, number << 3);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The released model with one more `normalizer_spec` field appended: protobuf merges it into
/// the first, so this is the released model with that flag changed.
fn released_model_with_normalizer_flag(field: u64, value: bool) -> Vec<u8> {
    let mut spec = Vec::new();
    put_varint_field(&mut spec, field, u64::from(value));
    released_model_with_normalizer_spec(&spec)
}

fn released_model_with_normalizer_spec(spec: &[u8]) -> Vec<u8> {
    let mut model = released_model().to_vec();
    put_bytes_field(&mut model, 3, spec);
    model
}

/// Expected ids from the `sentencepiece` library (0.2.3) on tokenizer.model with the same flag
/// changed through its protobuf bindings (`m.normalizer_spec.<flag> = ...`).
#[test]
fn sentencepiece_normalizer_flags_match_the_library() {
    let remove_extra = Tokenizer::from_sp_bytes(&released_model_with_normalizer_flag(4, true), "m").unwrap();
    let cases: [(&str, &[u32]); 5] = [
        ("  Hello   world  ", &[15043, 3186]),
        ("a\u{2581} ", &[263]),
        ("   ", &[]),
        (" \n  x \t y ", &[29871, 13, 921, 29871, 12, 343]),
        ("two  spaces", &[1023, 8162]),
    ];
    for (text, ids) in cases {
        assert_eq!(remove_extra.encode(text, false), ids, "remove_extra_whitespaces: {text:?}");
    }
    let no_prefix = Tokenizer::from_sp_bytes(&released_model_with_normalizer_flag(3, false), "m").unwrap();
    let cases: [(&str, &[u32]); 4] = [
        ("  Hello   world  ", &[29871, 15043, 259, 3186, 259]),
        ("two  spaces", &[10184, 29871, 8162]),
        ("Hello world", &[10994, 3186]),
        (" \n  x \t y ", &[29871, 13, 29871, 921, 29871, 12, 343, 29871]),
    ];
    for (text, ids) in cases {
        assert_eq!(no_prefix.encode(text, false), ids, "add_dummy_prefix off: {text:?}");
        // Without a prefix to remove, decoding keeps every space.
        assert_eq!(no_prefix.decode(ids).unwrap(), text);
    }
}

/// A small SentencePiece BPE model: `<unk>` `<s>` `</s>`, 256 byte pieces, then `normal`
/// pieces with their scores; `extra_trainer` is appended to the trainer spec.
fn tiny_model(normal: &[(&str, f32, u64)], extra_trainer: &[u8]) -> Vec<u8> {
    let mut model = Vec::new();
    let mut piece = |text: &str, score: f32, kind: u64| {
        let mut p = Vec::new();
        put_bytes_field(&mut p, 1, text.as_bytes());
        put_varint(&mut p, (2 << 3) | 5);
        p.extend_from_slice(&score.to_le_bytes());
        put_varint_field(&mut p, 3, kind);
        put_bytes_field(&mut model, 1, &p);
    };
    piece("<unk>", 0.0, 2);
    piece("<s>", 0.0, 3);
    piece("</s>", 0.0, 3);
    for b in 0..256 {
        piece(&format!("<0x{b:02X}>"), 0.0, 6);
    }
    for &(text, score, kind) in normal {
        piece(text, score, kind);
    }
    let mut trainer = Vec::new();
    put_varint_field(&mut trainer, 3, 2); // BPE
    put_varint_field(&mut trainer, 35, 1); // byte_fallback
    trainer.extend_from_slice(extra_trainer);
    put_bytes_field(&mut model, 2, &trainer);
    let mut normalizer = Vec::new();
    put_bytes_field(&mut normalizer, 1, b"identity");
    put_varint_field(&mut normalizer, 4, 0); // keep extra whitespace, like Llama
    put_bytes_field(&mut model, 3, &normalizer);
    model
}

const TINY: [(&str, f32, u64); 7] = [
    ("▁", -100.0, 1),
    ("a", -1.0, 1),
    ("b", -2.0, 1),
    ("c", -3.0, 1),
    ("ab", -6.0, 1),
    ("bc", -5.0, 1),
    ("▁abc", -4.0, 1),
];

#[test]
fn tiny_sentencepiece_model_merges_by_score() {
    let tok = Tokenizer::from_sp_bytes(&tiny_model(&TINY, &[]), "tiny.model").unwrap();
    assert_eq!(tok.vocab_size(), 266);
    // "▁abc": bc (score -5) beats ab (-6); ▁abc cannot be reached from ▁, a, bc.
    assert_eq!(tok.encode("abc", false), vec![259, 260, 264]);
    assert_eq!(tok.encode("ab", true), vec![1, 259, 263]);
    assert_eq!(tok.encode("d", false), vec![259, 3 + 0x64]);
    assert_eq!(tok.decode(&tok.encode(" abc d", false)).unwrap(), " abc d");
}

#[test]
fn unsupported_sentencepiece_models_are_refused_by_name() {
    let mut with_unigram = Vec::new();
    put_varint_field(&mut with_unigram, 3, 1);
    let mut no_bos = Vec::new();
    put_varint_field(&mut no_bos, 41, u64::MAX); // bos_id = -1
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (tiny_model(&TINY, &with_unigram), "model_type"),
        (tiny_model(&TINY, &no_bos), "bos_id = -1"),
        (tiny_model(&[("x", -1.0, 4)], &[]), "USER_DEFINED"),
        (tiny_model(&[("x", -1.0, 9)], &[]), "unknown piece type 9"),
        (tiny_model(&[("x", -1.0, 1), ("x", -2.0, 1)], &[]), "appears twice"),
        (tiny_model(&[("xy", -1.0, 1)], &[]), "\"xy\" contains 'x'"),
        (tiny_model(&[("", -1.0, 1)], &[]), "is empty"),
        (vec![0x0a, 0x05, 0x41], "truncated field"),
        (b"not a model at all".to_vec(), "not a SentencePiece model"),
        (released_model_with_normalizer_spec(&[0x12, 0x02, 0x01, 0x02]), "character map"), // field 2, 2 bytes
    ];
    for (bytes, needle) in cases {
        assert_error(Tokenizer::from_sp_bytes(&bytes, "bad.model"), ErrorKind::Tokenizer, &["bad.model", needle]);
    }
    // An empty file is a valid, empty protobuf message: a UNIGRAM model by the defaults.
    assert_error(Tokenizer::from_sp_bytes(&[], "bad.model"), ErrorKind::Tokenizer, &["model_type"]);
}

// ---------------------------------------------------------------------------------------------
// Fuzz smoke tests: arbitrary and corrupted files give errors or working tokenizers, never panics.

/// Whatever loaded must encode and decode without panicking.
fn exercise(tok: &Tokenizer, text: &str, ids: &[u32]) {
    let encoded = tok.encode(text, true);
    assert!(encoded.iter().all(|&id| (id as usize) < tok.vocab_size()));
    let _ = tok.decode(&encoded).unwrap();
    let _ = tok.decode(ids);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), text in ".{0,20}") {
        if let Ok(tok) = Tokenizer::from_sp_bytes(&bytes, "fuzz") {
            exercise(&tok, &text, &[0, 1, 2]);
        }
        if let Ok(s) = std::str::from_utf8(&bytes) {
            if let Ok(tok) = Tokenizer::from_json_str(s, "fuzz") {
                exercise(&tok, &text, &[0, 1, 2]);
            }
        }
    }

    #[test]
    fn corrupted_tiny_model_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        text in ".{0,20}",
        ids in prop::collection::vec(0u32..300, 0..10),
    ) {
        let mut bytes = tiny_model(&TINY, &[]);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        for candidate in [bytes.clone(), bytes[..cut.index(bytes.len())].to_vec()] {
            if let Ok(tok) = Tokenizer::from_sp_bytes(&candidate, "fuzz") {
                exercise(&tok, &text, &ids);
            }
        }
    }

    #[test]
    fn corrupted_tiny_json_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
        text in ".{0,20}",
        ids in prop::collection::vec(0u32..300, 0..10),
    ) {
        let mut chars: Vec<char> = tiny_json().to_string().chars().collect();
        for (at, value) in edits {
            let i = at.index(chars.len());
            chars[i] = value;
        }
        let json: String = chars.into_iter().collect();
        if let Ok(tok) = Tokenizer::from_json_str(&json, "fuzz") {
            exercise(&tok, &text, &ids);
        }
    }
}
