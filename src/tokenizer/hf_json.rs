//! Reading Hugging Face `tokenizer.json` and `tokenizer_config.json`.
//!
//! `tokenizer.json` describes a pipeline: added tokens, normalizer, pre-tokenizer, model,
//! post-processor, decoder. This engine implements the pipeline Llama-family tokenizers use and
//! refuses (with an error naming the field) any file that asks for something else, rather than
//! silently encoding differently:
//!
//! * `model`: `BPE` with `byte_fallback: true`, no dropout, no subword prefix/suffix, no
//!   `ignore_merges`; `merges` as `"a b"` strings or `["a", "b"]` pairs.
//! * `added_tokens`: matched in raw text (`normalized: false`), without `lstrip`, `rstrip` or
//!   `single_word`.
//! * `normalizer`: `null`, or `Prepend` / `Replace` (string pattern) steps, possibly in a
//!   `Sequence`.
//! * `pre_tokenizer`: `null` (the whole text between added tokens is one BPE word).
//! * `post_processor`: `null`, or a `TemplateProcessing` whose `single` is `$A` or `<bos> $A`.
//! * `decoder`: `Replace("▁" → " ")`, `ByteFallback`, `Fuse`, then optionally `Strip` of one
//!   leading space.
//!
//! `truncation` and `padding` are batch policies, not tokenization, and are ignored.

use super::added_tokens::MAX_ADDED_TOKEN_BYTES;
use super::bpe::{Merge, MergeTable};
use super::normalizer::{Normalizer, Step};
use super::{byte_piece_ids, pieces_by_id, tokenizer_error, words_are_independent, AddedTokens, Tokenizer};
use crate::base::json_scan::{count_values, first_duplicate_key};
use crate::base::error::Result;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The most JSON values a `tokenizer.json` may hold (Hymba's holds about 100 000; a vocabulary of
/// 128 000 pieces with 280 000 merges, about a million). Each parsed value takes some 80 bytes,
/// so the bound keeps a file of tiny values (`[0,0,0,...]`) from costing 40 times its size.
const MAX_JSON_VALUES: usize = 2_000_000;

/// Parse the text of a `tokenizer.json`. `origin` names the file in errors.
pub(super) fn parse(text: &str, origin: &str) -> Result<Tokenizer> {
    let err = |what: String| tokenizer_error(origin, what);
    let values = count_values(text);
    if values > MAX_JSON_VALUES {
        return Err(err(format!("holds about {values} JSON values; a tokenizer.json may hold at most {MAX_JSON_VALUES}")));
    }
    let root: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    if let Some(key) = first_duplicate_key(text) {
        return Err(err(format!("the key {key:?} appears twice in one object")));
    }
    let root = root.as_object().ok_or_else(|| err("the top level is not a JSON object".into()))?;

    let model = root.get("model").and_then(Value::as_object).ok_or_else(|| err("no `model` object".into()))?;
    check_bpe_options(model).map_err(err)?;
    let vocab = read_vocab(model).map_err(err)?;
    let added = read_added_tokens(root).map_err(err)?;

    let mut pairs: Vec<(u32, String)> = vocab.iter().map(|(piece, &id)| (id, piece.clone())).collect();
    pairs.extend(added.iter().map(|(content, id)| (*id, content.clone())));
    let pieces = pieces_by_id(origin, pairs)?;

    let byte_ids = byte_piece_ids(origin, |p| vocab.get(p).copied())?;
    let char_ids = vocab
        .iter()
        .filter_map(|(piece, &id)| {
            let mut chars = piece.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some((c, id)),
                _ => None,
            }
        })
        .collect();
    let merges = read_merges(model, &vocab).map_err(err)?;
    let split_words = words_are_independent(pieces.iter().map(String::as_str));
    let normalizer = Normalizer::Steps(read_normalizer(root.get("normalizer")).map_err(err)?);
    if !is_null(root.get("pre_tokenizer")) {
        return Err(err("`pre_tokenizer` must be null: this engine encodes the text between added tokens \
                        as one BPE word (Llama's layout)"
            .into()));
    }
    let strip_leading_space = read_decoder(root.get("decoder")).map_err(err)?;

    let find = |piece: &str| pieces.iter().position(|p| p == piece).and_then(|i| u32::try_from(i).ok());
    let bos = find("<s>").ok_or_else(|| err("no `<s>` (BOS) piece".into()))?;
    let eos = find("</s>").ok_or_else(|| err("no `</s>` (EOS) piece".into()))?;
    let add_bos_token = read_post_processor(root.get("post_processor"), bos).map_err(err)?;

    Ok(Tokenizer {
        pieces,
        char_ids,
        byte_ids,
        merges,
        split_words,
        normalizer,
        added: AddedTokens::new(added),
        strip_leading_space,
        bos,
        eos,
        add_bos_token,
    })
}

/// Apply a `tokenizer_config.json`: `add_bos_token`, `bos_token`, `eos_token`. A config that
/// asks for `add_eos_token` is refused (the engine's `encode` has no EOS option).
pub(super) fn apply_tokenizer_config(tokenizer: &mut Tokenizer, text: &str, origin: &str) -> Result<()> {
    let err = |what: String| tokenizer_error(origin, what);
    let root: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    if let Some(key) = first_duplicate_key(text) {
        return Err(err(format!("the key {key:?} appears twice in one object")));
    }
    let root = root.as_object().ok_or_else(|| err("the top level is not a JSON object".into()))?;

    if let Some(v) = root.get("add_bos_token").filter(|v| !v.is_null()) {
        tokenizer.add_bos_token = v.as_bool().ok_or_else(|| err("`add_bos_token` is not true or false".into()))?;
    }
    if let Some(v) = root.get("add_eos_token").filter(|v| !v.is_null()) {
        match v.as_bool() {
            Some(false) => {}
            Some(true) => return Err(err("`add_eos_token: true` is not supported".into())),
            None => return Err(err("`add_eos_token` is not true or false".into())),
        }
    }
    let special_id = |key: &str| -> Result<Option<u32>> {
        let content = match root.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("`{key}` has no string `content`")))?,
            Some(_) => return Err(err(format!("`{key}` is neither a string nor an object"))),
        };
        let id = tokenizer
            .find_piece(content)
            .ok_or_else(|| err(format!("`{key}` {content:?} is not in the vocabulary")))?;
        Ok(Some(id))
    };
    let bos = special_id("bos_token")?;
    let eos = special_id("eos_token")?;
    tokenizer.bos = bos.unwrap_or(tokenizer.bos);
    tokenizer.eos = eos.unwrap_or(tokenizer.eos);
    Ok(())
}

fn is_null(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// Check that `key` is absent, null, false or the empty string.
fn check_off(object: &Map<String, Value>, key: &str, context: &str) -> std::result::Result<(), String> {
    match object.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::String(s)) if s.is_empty() => Ok(()),
        Some(v) => Err(format!("{context}.{key} = {v} is not supported")),
    }
}

fn check_bpe_options(model: &Map<String, Value>) -> std::result::Result<(), String> {
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        other => return Err(format!("model.type is {}; only \"BPE\" is supported", other.unwrap_or("missing"))),
    }
    for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges"] {
        check_off(model, key, "model")?;
    }
    if model.get("byte_fallback").and_then(Value::as_bool) != Some(true) {
        return Err("model.byte_fallback must be true (this engine implements byte-fallback BPE only)".into());
    }
    Ok(())
}

fn read_vocab(model: &Map<String, Value>) -> std::result::Result<HashMap<String, u32>, String> {
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or("model.vocab is not an object")?;
    vocab
        .iter()
        .map(|(piece, id)| {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("model.vocab[{piece:?}] = {id} is not an id (0 ..= 2^32-1)"))?;
            if piece.is_empty() {
                return Err(format!("model.vocab has an empty piece (id {id})"));
            }
            Ok((piece.clone(), id))
        })
        .collect()
}

/// The added tokens as `(content, id)`.
fn read_added_tokens(root: &Map<String, Value>) -> std::result::Result<Vec<(String, u32)>, String> {
    let list = match root.get("added_tokens") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("added_tokens is not a list".into()),
    };
    list.iter()
        .enumerate()
        .map(|(i, token)| {
            let context = format!("added_tokens[{i}]");
            let token = token.as_object().ok_or_else(|| format!("{context} is not an object"))?;
            let id = token
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("{context}.id is not an id"))?;
            let content = token
                .get("content")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| format!("{context}.content is not a non-empty string"))?;
            if content.len() > MAX_ADDED_TOKEN_BYTES {
                return Err(format!(
                    "{context}.content is {} bytes long; added tokens may have at most {MAX_ADDED_TOKEN_BYTES}",
                    content.len()
                ));
            }
            for key in ["lstrip", "rstrip", "single_word", "normalized"] {
                check_off(token, key, &context)?;
            }
            Ok((content.to_owned(), id))
        })
        .collect()
}

/// The merge table: the `i`-th merge has rank `i`.
fn read_merges(model: &Map<String, Value>, vocab: &HashMap<String, u32>) -> std::result::Result<MergeTable, String> {
    let list = model.get("merges").and_then(Value::as_array).ok_or("model.merges is not a list")?;
    let mut table = MergeTable::default();
    for (rank, entry) in list.iter().enumerate() {
        let context = format!("model.merges[{rank}]");
        let (left, right) = match entry {
            Value::String(line) => match line.split(' ').collect::<Vec<_>>().as_slice() {
                [l, r] => (*l, *r),
                _ => return Err(format!("{context} = {line:?} is not two pieces separated by one space")),
            },
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(l), Value::String(r)] => (l.as_str(), r.as_str()),
                _ => return Err(format!("{context} is not a pair of strings")),
            },
            _ => return Err(format!("{context} is neither a string nor a pair")),
        };
        let id = |piece: &str| {
            vocab.get(piece).copied().ok_or_else(|| format!("{context}: {piece:?} is not in model.vocab"))
        };
        let merged = id(&format!("{left}{right}"))?;
        let rank = u32::try_from(rank).map_err(|_| "model.merges has more than 2^32 entries".to_string())?;
        table.insert(id(left)?, id(right)?, Merge { rank, merged });
    }
    Ok(table)
}

fn read_normalizer(value: Option<&Value>) -> std::result::Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    if let Some(value) = value.filter(|v| !v.is_null()) {
        push_normalizer_steps(value, "normalizer", &mut steps)?;
    }
    Ok(steps)
}

fn push_normalizer_steps(value: &Value, context: &str, steps: &mut Vec<Step>) -> std::result::Result<(), String> {
    let object = value.as_object().ok_or_else(|| format!("{context} is not an object"))?;
    let string = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{context}.{key} is not a string"))
    };
    match object.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            let list = object
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{context}.normalizers is not a list"))?;
            for (i, inner) in list.iter().enumerate() {
                push_normalizer_steps(inner, &format!("{context}.normalizers[{i}]"), steps)?;
            }
        }
        Some("Prepend") => steps.push(Step::Prepend(string("prepend")?)),
        Some("Replace") => {
            let pattern = object.get("pattern")
                .and_then(Value::as_object)
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    format!("{context}.pattern is not {{\"String\": <non-empty string>}} (regexes are not supported)")
                })?;
            steps.push(Step::Replace { pattern: pattern.to_owned(), content: string("content")? });
        }
        other => {
            let kind = other.unwrap_or("missing");
            return Err(format!("{context}.type {kind} is not supported (only Sequence, Prepend, Replace)"));
        }
    }
    Ok(())
}

/// Check the decoder is Llama's; returns whether it ends with the strip of one leading space.
fn read_decoder(value: Option<&Value>) -> std::result::Result<bool, String> {
    let expected = "decoder must be Llama's: Sequence [Replace(\"▁\" → \" \"), ByteFallback, Fuse, \
                    optionally Strip(\" \", start 1, stop 0)]";
    let steps = value
        .and_then(Value::as_object)
        .filter(|d| d.get("type").and_then(Value::as_str) == Some("Sequence"))
        .and_then(|d| d.get("decoders"))
        .and_then(Value::as_array)
        .ok_or(expected)?;
    let kind = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_owned);
    let is_replace = |v: &Value| {
        kind(v).as_deref() == Some("Replace")
            && v.pointer("/pattern/String").and_then(Value::as_str) == Some("▁")
            && v.get("content").and_then(Value::as_str) == Some(" ")
    };
    let is_strip = |v: &Value| {
        kind(v).as_deref() == Some("Strip")
            && v.get("content").and_then(Value::as_str) == Some(" ")
            && v.get("start").and_then(Value::as_u64) == Some(1)
            && v.get("stop").and_then(Value::as_u64) == Some(0)
    };
    match steps.as_slice() {
        [r, b, f, rest @ ..]
            if is_replace(r) && kind(b).as_deref() == Some("ByteFallback") && kind(f).as_deref() == Some("Fuse") =>
        {
            match rest {
                [] => Ok(false),
                [s] if is_strip(s) => Ok(true),
                _ => Err(expected.into()),
            }
        }
        _ => Err(expected.into()),
    }
}

/// Whether the post-processor prepends BOS. `single` must be `[$A]` or `[<bos>, $A]`.
fn read_post_processor(value: Option<&Value>, bos: u32) -> std::result::Result<bool, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(false) };
    let expected = "post_processor must be null or a TemplateProcessing whose `single` is [$A] or [<s>, $A]";
    if value.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
        return Err(expected.into());
    }
    let single = value.get("single").and_then(Value::as_array).ok_or(expected)?;
    let is_sequence_a = |v: &Value| v.pointer("/Sequence/id").and_then(Value::as_str) == Some("A");
    match single.as_slice() {
        [a] if is_sequence_a(a) => Ok(false),
        [special, a] if is_sequence_a(a) => {
            let name = special.pointer("/SpecialToken/id").and_then(Value::as_str).ok_or(expected)?;
            let ids = value
                .get("special_tokens")
                .and_then(|s| s.get(name))
                .and_then(|t| t.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| format!("post_processor.special_tokens has no ids for {name:?}"))?;
            if ids.len() == 1 && ids[0].as_u64() == Some(u64::from(bos)) {
                Ok(true)
            } else {
                Err(format!("post_processor prepends {name:?} = {ids:?}, which is not the BOS id {bos}"))
            }
        }
        _ => Err(expected.into()),
    }
}
