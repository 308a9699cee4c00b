//! Tokenizer properties on the released tokenizer files copied to `tests/fixtures/hymba-tokenizer`
//! (so these run on a clean clone): exact ids on texts the shared goldens do not cover, decode ∘
//! encode = identity, byte fallback for every byte value, and streaming = whole decoding.

use hymba_ref::tokenizer::{StreamDecoder, Tokenizer};
use hymba_ref::ErrorKind;
use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The released tokenizer, as `from_dir` loads it (tokenizer.json + tokenizer_config.json).
fn hf() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_dir(&fixtures().join("hymba-tokenizer")).unwrap())
}

/// The same tokenizer from tokenizer.model alone.
fn sp() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_sentencepiece_model(&fixtures().join("hymba-tokenizer/tokenizer.model")).unwrap()
    })
}

fn stream_decode(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = StreamDecoder::new(tok);
    let mut text: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    text.push_str(&stream.finish());
    text
}

const SPECIALS: [&str; 4] = ["<unk>", "<s>", "</s>", "[PAD]"];

/// Text that decodes back to itself: no added-token strings (they become tokens) and no `▁`
/// (it encodes like a space, so it decodes to one).
fn round_trips(s: &str) -> bool {
    !s.contains('\u{2581}') && !SPECIALS.iter().any(|t| s.contains(t))
}

// ---------------------------------------------------------------------------------------------
// Exact ids on unseen texts

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// `tests/fixtures/unseen-texts.json`: 91 hand-picked texts (scripts, emoji sequences, combining
/// marks, control characters, runs of spaces and newlines, added-token look-alikes) and 300
/// random ones, with the ids the Hugging Face `tokenizers` library gives on tokenizer.json and the
/// `sentencepiece` library on tokenizer.model; `make_unseen_texts.py` beside it made the file.
fn unseen_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("unseen-texts.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn unseen_texts_encode_and_decode_exactly() {
    let cases = unseen_cases();
    assert!(cases.len() > 300);
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected_ids = ids(&case["ids"]);
        let expected_text = case["decoded"].as_str().unwrap();
        if hf().encode(text, false) != expected_ids {
            failures.push(format!("HF ids of {text:?}: {:?}", hf().encode(text, false)));
        }
        if sp().encode(text, false) != ids(&case["sentencepiece_ids"]) {
            failures.push(format!("sentencepiece ids of {text:?}: {:?}", sp().encode(text, false)));
        }
        if hf().decode(&expected_ids).unwrap() != expected_text {
            failures.push(format!("decode of {text:?}: {:?}", hf().decode(&expected_ids).unwrap()));
        }
        if stream_decode(hf(), &expected_ids) != expected_text {
            failures.push(format!("stream decode of {text:?}: {:?}", stream_decode(hf(), &expected_ids)));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn bos_and_sizes() {
    assert_eq!((hf().bos_id(), hf().eos_id(), hf().vocab_size()), (1, 2, 32001));
    assert_eq!((sp().bos_id(), sp().eos_id(), sp().vocab_size()), (1, 2, 32000));
    assert!(hf().add_bos_token() && sp().add_bos_token());
    assert_eq!(hf().encode("Hello", true), vec![1, 15043]);
    assert_eq!(hf().id_to_piece(32000), Some("[PAD]"));
    assert_eq!(sp().id_to_piece(32000), None);
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let e = hf().decode(&[1, 32001]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TokenIdOutOfRange);
    assert!(e.message.contains("32001"), "{e}");
    assert_eq!(sp().decode(&[32000]).unwrap_err().kind, ErrorKind::TokenIdOutOfRange);
    let mut stream = StreamDecoder::new(hf());
    assert_eq!(stream.push(u32::MAX).unwrap_err().kind, ErrorKind::TokenIdOutOfRange);
}

// ---------------------------------------------------------------------------------------------
// Byte fallback

/// The id of the byte piece for `b`: Llama puts `<0x00>`..`<0xFF>` at ids 3..=258.
fn byte_id(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn every_byte_piece_decodes() {
    let x = hf().encode("x", false)[0]; // "▁x": decodes to "x" after the leading-space rule
    for b in 0..=255u8 {
        assert_eq!(hf().id_to_piece(byte_id(b)), Some(format!("<0x{b:02X}>").as_str()));
        let expected = if b.is_ascii() { format!("x{}", b as char) } else { "x\u{FFFD}".to_owned() };
        assert_eq!(hf().decode(&[x, byte_id(b)]).unwrap(), expected, "byte {b:#04x}");
        assert_eq!(stream_decode(hf(), &[x, byte_id(b)]), expected, "byte {b:#04x}");
    }
}

/// Every byte value that UTF-8 text can contain reaches the model as its byte piece when it is
/// part of a character without a piece: `encode(c)` is `▁` followed by `c`'s bytes.
#[test]
fn every_byte_value_falls_back() {
    // The prefix `▁` cannot merge with byte pieces, so it stays the lone piece "▁" (id 29871).
    assert_eq!(hf().id_to_piece(29871), Some("\u{2581}"));
    let falls_back = |c: char| {
        let mut utf8 = [0u8; 4];
        let bytes: Vec<u32> = c.encode_utf8(&mut utf8).bytes().map(byte_id).collect();
        let ids = hf().encode(&c.to_string(), false);
        ids[0] == 29871 && ids[1..] == bytes[..]
    };
    let mut covered = [false; 256];
    // One character per leading byte (scanning its code-point range), and the private-use block
    // U+E000.. whose last bytes run through every continuation byte 0x80..=0xBF.
    let mut candidates: Vec<char> = (0u32..0x80).filter_map(char::from_u32).collect();
    for lead in 0xC2u32..=0xF4 {
        let range = match lead {
            0xC2..=0xDF => ((lead - 0xC0) << 6)..((lead - 0xC0 + 1) << 6),
            0xE0..=0xEF => ((lead - 0xE0) << 12).max(0x800)..((lead - 0xE0 + 1) << 12),
            _ => ((lead - 0xF0) << 18).max(0x10000)..((lead - 0xF0 + 1) << 18).min(0x110000),
        };
        candidates.extend(range.filter_map(char::from_u32).filter(|&c| falls_back(c)).take(1));
    }
    candidates.extend((0xE000u32..0xE040).filter_map(char::from_u32));
    for c in candidates {
        if falls_back(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                covered[usize::from(b)] = true;
            }
        }
    }
    for b in 0..=255u8 {
        let in_utf8 = !matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF);
        // An ASCII byte is not covered exactly when its character has a piece of its own (or is
        // the space, which normalisation turns into `▁`); 0xC3 leads U+00C0..=U+00FF (À..ÿ),
        // which all have pieces.
        let has_piece = (b.is_ascii() && !falls_back(b as char)) || b == 0xC3;
        assert_eq!(covered[usize::from(b)], in_utf8 && !has_piece, "byte {b:#04x}");
    }
    // ASCII control characters are the ones without pieces (besides those, every byte is covered).
    assert!(covered[0x00] && covered[0x0A] && covered[0x1F] && covered[0x7F] && !covered[b'a' as usize]);
}

// ---------------------------------------------------------------------------------------------
// Round trips and streaming

/// Characters where tokenizers go wrong: spaces, newlines, combining marks, joiners, emoji
/// parts, controls, scripts with and without pieces, and pieces of the added tokens.
fn tricky_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        ' ', ' ', ' ', '\n', '\t', '\r', '\0', '\u{7f}', '\u{85}', '\u{a0}', '\u{3000}', 'a', 'b', 'Z', '0', '9',
        '.', '<', '>', 's', '/', '[', ']', 'P', 'A', 'D', 'é', 'ß', '東', '語', 'я', 'α', 'ا', 'א', 'क', 'ก', '가',
        '\u{301}', '\u{200d}', '\u{fe0f}', '🦙', '🏽', '🇯', '𝄞', '\u{e000}', '\u{10ffff}', '\u{fffd}', '\u{feff}',
    ])
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..60).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn decode_inverts_encode(s in any::<String>().prop_filter("no added tokens or ▁", |s| round_trips(s))) {
        prop_assert_eq!(hf().decode(&hf().encode(&s, false)).unwrap(), s.clone());
        prop_assert_eq!(sp().decode(&sp().encode(&s, false)).unwrap(), s);
    }

    #[test]
    fn decode_inverts_encode_on_tricky_text(s in tricky_string().prop_filter("no added tokens", |s| round_trips(s))) {
        prop_assert_eq!(hf().decode(&hf().encode(&s, true)[1..]).unwrap(), s.clone());
        prop_assert_eq!(sp().decode(&sp().encode(&s, false)).unwrap(), s);
    }

    #[test]
    fn sentencepiece_and_json_agree_without_added_tokens(s in tricky_string()) {
        prop_assume!(!SPECIALS.iter().any(|t| s.contains(t)));
        prop_assert_eq!(hf().encode(&s, false), sp().encode(&s, false));
    }

    #[test]
    fn streaming_equals_decoding_of_encodings(s in tricky_string()) {
        let ids = hf().encode(&s, true);
        prop_assert_eq!(stream_decode(hf(), &ids), hf().decode(&ids).unwrap());
    }

    /// Arbitrary ids: whenever no byte run is invalid (decode shows no U+FFFD), streaming and
    /// whole decoding agree; either way neither fails.
    #[test]
    fn streaming_equals_decoding_of_valid_id_sequences(
        ids in prop::collection::vec(prop_oneof![3u32..259, 0u32..32001], 0..40)
    ) {
        let whole = hf().decode(&ids).unwrap();
        let streamed = stream_decode(hf(), &ids);
        if !whole.contains('\u{FFFD}') {
            prop_assert_eq!(streamed, whole);
        }
    }
}

#[test]
fn streaming_emits_characters_as_soon_as_they_are_complete() {
    let tok = hf();
    let ids = tok.encode("a🦙", false); // ▁a, then the four bytes of 🦙
    assert_eq!(ids.len(), 5);
    let mut stream = StreamDecoder::new(tok);
    let out: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(out, ["a", "", "", "", "🦙"]);
    assert_eq!(stream.finish(), "");
}

#[test]
fn streaming_applies_the_leading_space_rule_once() {
    let tok = hf();
    let ids = tok.encode("  two spaces", false); // ▁▁, ▁two, ▁spaces → "  two spaces"
    let mut stream = StreamDecoder::new(tok);
    let out: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(out.concat(), "  two spaces");
    assert_eq!(out[0], " ");
}

/// The documented difference: in a byte run with invalid UTF-8, `decode` (like Hugging Face)
/// replaces every byte of the run, the stream only the bytes that cannot form a character.
#[test]
fn invalid_byte_runs_stream_and_decode_differently() {
    let tok = hf();
    let mut ids = tok.encode("x🦙\n", false); // ▁x, 4 bytes of 🦙, <0x0A>
    ids.push(byte_id(0xF0)); // a stray lead byte, then a normal piece ends the run
    ids.push(tok.encode("y", false)[0]);
    assert_eq!(tok.decode(&ids).unwrap(), format!("x{} y", "\u{FFFD}".repeat(6)));
    assert_eq!(stream_decode(tok, &ids), "x🦙\n\u{FFFD} y");
    // An unfinished character at the end is flushed by `finish`.
    assert_eq!(stream_decode(tok, &[byte_id(0xF0), byte_id(0x9F)]), "\u{FFFD}\u{FFFD}");
}
