//! The tokenizer against the shared goldens (`../shared/hymba/conformance/tokenizer-goldens.json`,
//! made with the released Hugging Face tokenizer and the `sentencepiece` library from the files
//! in `../shared/hymba/hymba-1.5b/`). Run with `cargo test -- --ignored`.

mod common;
use common::shared_dir as shared;
use hymba_ref::tokenizer::{render_chat, ChatMessage, StreamDecoder, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;


fn goldens() -> Value {
    let path = shared().join("conformance/tokenizer-goldens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("goldens are JSON")
}

fn released() -> Tokenizer {
    Tokenizer::from_dir(&shared().join("hymba-1.5b")).expect("the released tokenizer loads")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().expect("a list").iter().map(|x| x.as_str().expect("a string").to_owned()).collect()
}

fn cases(goldens: &Value, key: &str) -> Vec<Value> {
    goldens[key].as_array().unwrap_or_else(|| panic!("goldens have no `{key}` list")).clone()
}

#[test]
#[ignore = "needs ../shared"]
fn encode_goldens_exact() {
    let tok = released();
    let g = goldens();
    let cases = cases(&g, "encode");
    assert!(cases.len() >= 30, "expected the full golden set, got {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let with_bos = tok.encode(text, true);
        let without = tok.encode(text, false);
        let pieces: Vec<String> = without.iter().map(|&id| tok.id_to_piece(id).unwrap().to_owned()).collect();
        let decoded = tok.decode(&without).unwrap();
        if with_bos != ids(&case["ids_with_bos"]) {
            failures.push(format!("{text:?}: ids_with_bos {with_bos:?}"));
        }
        if without != ids(&case["ids"]) {
            failures.push(format!("{text:?}: ids {without:?}"));
        }
        if pieces != str_list(&case["pieces"]) {
            failures.push(format!("{text:?}: pieces {pieces:?}"));
        }
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!("{text:?}: decoded {decoded:?}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore = "needs ../shared"]
fn chat_goldens_exact() {
    let tok = released();
    let g = goldens();
    let cases = cases(&g, "chat");
    assert!(!cases.is_empty());
    for case in &cases {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap().parse().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = render_chat(&messages, true);
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        assert_eq!(tok.encode(&rendered, true), ids(&case["ids_with_bos"]), "chat {rendered:?}");
    }
}

#[test]
#[ignore = "needs ../shared"]
fn sentencepiece_model_gives_sentencepiece_ids() {
    let sp = Tokenizer::from_sentencepiece_model(&shared().join("hymba-1.5b/tokenizer.model")).unwrap();
    assert_eq!(sp.vocab_size(), 32000);
    for case in cases(&goldens(), "encode") {
        let text = case["text"].as_str().unwrap();
        assert_eq!(sp.encode(text, false), ids(&case["sentencepiece_ids"]), "{text:?}");
    }
}

#[test]
#[ignore = "needs ../shared"]
fn fast_and_sentencepiece_disagree_exactly_where_listed() {
    let g = goldens();
    let hf = released();
    let sp = Tokenizer::from_sentencepiece_model(&shared().join("hymba-1.5b/tokenizer.model")).unwrap();
    let listed = str_list(&g["fast_vs_sentencepiece_disagree_on"]);
    for case in cases(&g, "encode") {
        let text = case["text"].as_str().unwrap();
        let disagree = hf.encode(text, false) != sp.encode(text, false);
        assert_eq!(disagree, listed.iter().any(|t| t == text), "{text:?}");
    }
}

#[test]
#[ignore = "needs ../shared"]
fn streaming_decode_gives_the_decoded_text() {
    let tok = released();
    for case in cases(&goldens(), "encode") {
        let mut stream = StreamDecoder::new(&tok);
        let mut text = String::new();
        for id in ids(&case["ids"]) {
            text.push_str(&stream.push(id).unwrap());
        }
        text.push_str(&stream.finish());
        assert_eq!(text, case["decoded"].as_str().unwrap());
    }
}

#[test]
#[ignore = "needs ../shared"]
fn fixtures_are_the_released_files() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer");
    for name in
        ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
    {
        let released = std::fs::read(shared().join("hymba-1.5b").join(name)).unwrap();
        let copy = std::fs::read(fixtures.join(name)).unwrap();
        assert!(released == copy, "tests/fixtures/hymba-tokenizer/{name} differs from the released file");
    }
}
