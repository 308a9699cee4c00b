//! The Llama-2 SentencePiece BPE tokenizer that Hymba ships, from scratch.
//!
//! Text goes to ids and back in four steps, each in its own module:
//!
//! 1. **Added tokens** (`added_tokens.rs`): the strings `<unk>`, `<s>`, `</s>` and `[PAD]` are cut
//!    out of the raw text and become their ids directly (Hugging Face behaviour).
//! 2. **Normalisation** (`normalizer.rs`): in each remaining stretch, spaces become `▁` (U+2581)
//!    and one `▁` is put in front: `Hello world` → `▁Hello▁world`.
//! 3. **BPE** (`bpe.rs`): start from one symbol per character and repeatedly fuse the adjacent
//!    pair that the merge table ranks best: `▁ H e l l o` → … → `▁Hello`.
//! 4. **Byte fallback**: a character that is not itself a piece (most emoji, rare CJK, control
//!    characters) is written as its UTF-8 bytes, each the piece `<0xNN>`: `🦙` →
//!    `<0xF0> <0x9F> <0xA6> <0x99>`. Ids 3..=258 are these 256 byte pieces, so every string has
//!    an encoding and nothing ever maps to `<unk>`.
//!
//! **Decoding** reverses this: each piece's `▁` becomes a space, each run of consecutive byte
//! pieces is reassembled into UTF-8 (a run that is not valid UTF-8 becomes one U+FFFD per byte,
//! as in Hugging Face's `ByteFallback` decoder), added tokens print as their text, and then the
//! **leading-space rule** removes one space from the very start of the text: it is the `▁`
//! that normalisation prepended, so `decode(encode(" x"))` is `" x"` (two `▁`, one removed) and
//! `decode(encode("x"))` is `"x"`. [`StreamDecoder`] does the same incrementally, for printing
//! tokens as they are generated.
//!
//! ## Two file formats, two behaviours
//!
//! A checkpoint ships `tokenizer.json` (Hugging Face) and `tokenizer.model` (SentencePiece
//! protobuf). They hold the same 32000 pieces and agree on ordinary text, but differ:
//!
//! | | `tokenizer.json` (preferred) | `tokenizer.model` |
//! | --- | --- | --- |
//! | vocabulary | 32000 pieces and the added `[PAD]` (id 32000): 32001 ids | 32000 ids |
//! | `<s>`, `[PAD]` typed in the text | become the token (BOS, 32000) | spelled out: `▁<`, `s`, `>` |
//! | merge order | the explicit `merges` list | highest score of the merged piece |
//! | prefix `▁` | per stretch between added tokens | once, for the whole text |
//!
//! [`Tokenizer::from_dir`] uses `tokenizer.json` when present; otherwise it loads
//! `tokenizer.model` and then behaves exactly like the `sentencepiece` library's `encode`
//! (no `[PAD]`, special strings in text are plain text). Decoding uses the rules above in both
//! cases, so `<s>` decodes to the text `<s>` (the `sentencepiece` library would print nothing
//! for it). In both cases `tokenizer_config.json`, if present, may set `add_bos_token` and name
//! the `bos_token` / `eos_token`.
//!
//! The chat format of the Instruct model is in [`chat`].

mod added_tokens;
mod bpe;
pub mod chat;
mod hf_json;
mod normalizer;
mod sentencepiece_model;
pub mod stream;

pub use chat::{render_chat, ChatMessage, Role};
pub use stream::StreamDecoder;

use crate::base::error::{Error, ErrorKind, Result};
use crate::base::files;
pub(crate) use added_tokens::{AddedTokens, Segment, MAX_ADDED_TOKEN_BYTES};
use bpe::{FastMap, MergeTable};
use normalizer::{Normalizer, SPACE_SYMBOL};
use std::path::Path;

/// A loaded tokenizer: text → ids ([`encode`](Tokenizer::encode)) and ids → text
/// ([`decode`](Tokenizer::decode)).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Piece text of every id below the vocabulary size (ids are contiguous from 0).
    pieces: Vec<String>,
    /// The pieces BPE starts from: single characters.
    char_ids: FastMap<char, u32>,
    /// The id of the piece `<0xNN>` for every byte value `NN`.
    byte_ids: [u32; 256],
    merges: MergeTable,
    /// BPE may run word by word (see [`Tokenizer::encode_text`]); set by [`words_are_independent`].
    split_words: bool,
    normalizer: Normalizer,
    added: AddedTokens,
    /// Decoding drops one leading space (the prefix `▁` that normalisation added).
    strip_leading_space: bool,
    bos: u32,
    eos: u32,
    /// Whether a BOS should be prepended by default (the `tokenize` command's default).
    add_bos_token: bool,
}

impl Tokenizer {
    /// Load the tokenizer of a checkpoint directory: `tokenizer.json` if present, else
    /// `tokenizer.model` (see the module docs for how they differ), then `tokenizer_config.json`
    /// if present. Only these files are read.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        let model = dir.join("tokenizer.model");
        let mut tokenizer = if json.exists() {
            Tokenizer::from_tokenizer_json(&json)?
        } else if model.exists() {
            Tokenizer::from_sentencepiece_model(&model)?
        } else {
            return Err(Error::new(
                ErrorKind::Io,
                format!("no tokenizer in {}: expected tokenizer.json or tokenizer.model", dir.display()),
            ));
        };
        let config = dir.join("tokenizer_config.json");
        if config.exists() {
            let text = files::read_text_capped(&config, files::CONFIG)?;
            hf_json::apply_tokenizer_config(&mut tokenizer, &text, &config.display().to_string())?;
        }
        Ok(tokenizer)
    }

    /// Load a Hugging Face `tokenizer.json` (Llama-style BPE with byte fallback).
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
        let text = files::read_text_capped(path, files::TOKENIZER)?;
        Tokenizer::from_json_str(&text, &path.display().to_string())
    }

    /// Parse the text of a `tokenizer.json`; `origin` names it in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Tokenizer> {
        hf_json::parse(text, origin)
    }

    /// Load a SentencePiece `tokenizer.model` (a BPE model with byte fallback).
    pub fn from_sentencepiece_model(path: &Path) -> Result<Tokenizer> {
        let bytes = files::read_capped(path, files::TOKENIZER)?;
        Tokenizer::from_sp_bytes(&bytes, &path.display().to_string())
    }

    /// Parse the bytes of a `tokenizer.model`; `origin` names it in error messages.
    pub fn from_sp_bytes(bytes: &[u8], origin: &str) -> Result<Tokenizer> {
        sentencepiece_model::parse(bytes, origin)
    }

    /// Encode `text` to token ids, with the BOS id first if `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.push(self.bos);
        }
        for segment in self.added.split(text) {
            match segment {
                Segment::Token(id) => ids.push(id),
                Segment::Text(text) => self.encode_text(text, &mut ids),
            }
        }
        ids
    }

    /// Normalise, split into characters (or bytes, for characters without a piece), and merge.
    ///
    /// BPE over the whole text gives the right answer, but long texts make one long word and a
    /// large, cache-unfriendly heap. When no piece has a `▁` after another character (true of
    /// Llama: `▁the`, `▁▁▁`, never `a▁b`), no merge can join the text before a `▁` to a `▁`
    /// that follows a non-`▁` character. So the text is cut before each such `▁` (into words
    /// like `▁▁▁return`) and each word is merged alone, with the same result.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.normalizer.normalize(text);
        let mut merger = self.merges.merger();
        let mut word = Vec::new();
        let mut previous = SPACE_SYMBOL;
        for c in normalized.chars() {
            if self.split_words && c == SPACE_SYMBOL && previous != SPACE_SYMBOL {
                merger.merge_into(&word, out);
                word.clear();
            }
            previous = c;
            match self.char_ids.get(&c) {
                Some(&id) => word.push(id),
                None => {
                    let mut utf8 = [0u8; 4];
                    word.extend(c.encode_utf8(&mut utf8).bytes().map(|b| self.byte_ids[usize::from(b)]));
                }
            }
        }
        merger.merge_into(&word, out);
    }

    /// Decode ids to text: pieces with `▁` as space, byte runs as UTF-8, one leading space
    /// dropped. Special tokens are kept as their text (`<s>`), as Hugging Face's
    /// `decode(ids, skip_special_tokens=False)` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::new();
        let mut byte_run = Vec::new();
        for &id in ids {
            let piece = self.piece(id)?;
            match byte_value(piece) {
                Some(b) => byte_run.push(b),
                None => {
                    flush_byte_run(&mut text, &mut byte_run);
                    push_piece_text(&mut text, piece);
                }
            }
        }
        flush_byte_run(&mut text, &mut byte_run);
        if self.strip_leading_space && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }

    /// The piece of `id`, or a [`ErrorKind::TokenIdOutOfRange`] error.
    fn piece(&self, id: u32) -> Result<&str> {
        self.id_to_piece(id).ok_or_else(|| {
            Error::new(
                ErrorKind::TokenIdOutOfRange,
                format!("token id {id} is out of range: the vocabulary has {} ids", self.pieces.len()),
            )
        })
    }

    /// The piece text of `id` (`▁Hello`, `<0x0A>`, `<s>`), or `None` if `id` is out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(usize::try_from(id).ok()?).map(String::as_str)
    }

    /// The number of ids: every id below this has a piece.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Ok if this tokenizer and a model with `vocab_size` ids (`config.json`'s) agree on the
    /// vocabulary; else an error naming both sizes. Fewer pieces would let the model generate
    /// ids the tokenizer cannot print; more would let text encode to ids the model cannot embed.
    pub fn check_model_vocab(&self, vocab_size: usize, dir: &Path) -> Result<()> {
        if self.pieces.len() == vocab_size {
            return Ok(());
        }
        let problem = if self.pieces.len() < vocab_size {
            "the model could generate ids the tokenizer cannot decode"
        } else {
            "text could encode to ids the model has no embedding for"
        };
        let message = format!(
            "{}: the tokenizer has {} ids but config.json's vocab_size is {vocab_size}: {problem}",
            dir.display(),
            self.pieces.len()
        );
        Err(Error::new(ErrorKind::Tokenizer, message))
    }

    /// The beginning-of-sequence id (`<s>`, 1 for Llama).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end-of-sequence id (`</s>`, 2 for Llama).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Whether this tokenizer's files ask for a BOS at the start of every encoding
    /// (`add_bos_token` in `tokenizer_config.json`, else the `tokenizer.json` post-processor,
    /// else true for a SentencePiece model).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// Whether `id` is a special token: BOS, EOS, or an added token (`<unk>`, `[PAD]`), the
    /// tokens Hugging Face's `decode(ids, skip_special_tokens=True)` leaves out.
    pub fn is_special(&self, id: u32) -> bool {
        id == self.bos || id == self.eos || self.added.contains_id(id)
    }

    /// The id whose piece is exactly `piece`.
    fn find_piece(&self, piece: &str) -> Option<u32> {
        self.pieces.iter().position(|p| p == piece).and_then(|i| u32::try_from(i).ok())
    }
}

/// The byte a byte-fallback piece stands for: `<0x0A>` → 10. The test is Hugging Face's
/// `ByteFallback` decoder's: six bytes, `<0x`, two characters read as hexadecimal, `>`.
fn byte_value(piece: &str) -> Option<u8> {
    if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        u8::from_str_radix(piece.get(3..5)?, 16).ok()
    } else {
        None
    }
}

/// The text of an ordinary piece: `▁` stands for a space.
fn push_piece_text(text: &mut String, piece: &str) {
    for c in piece.chars() {
        text.push(if c == SPACE_SYMBOL { ' ' } else { c });
    }
}

/// Append a finished run of byte pieces: its UTF-8 text, or, if the run is not valid UTF-8 as a
/// whole, one U+FFFD per byte (Hugging Face's rule).
fn flush_byte_run(text: &mut String, run: &mut Vec<u8>) {
    match std::str::from_utf8(run) {
        Ok(s) => text.push_str(s),
        Err(_) => text.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, run.len())),
    }
    run.clear();
}

/// Turn `(id, piece)` pairs into the id → piece table, checking that the ids are exactly
/// `0..n`. The same pair may appear twice (Llama's `<s>` is both a vocabulary entry and an added
/// token); two different pieces for one id, or a missing id, are errors.
fn pieces_by_id(origin: &str, mut pairs: Vec<(u32, String)>) -> Result<Vec<String>> {
    pairs.sort();
    pairs.dedup();
    let mut pieces = Vec::with_capacity(pairs.len());
    for (id, piece) in pairs {
        let expected = pieces.len();
        if usize::try_from(id).ok() != Some(expected) {
            return Err(if usize::try_from(id).ok() == Some(expected.wrapping_sub(1)) {
                tokenizer_error(
                    origin,
                    format!("id {id} is given to two pieces: {:?} and {piece:?}", pieces[expected - 1]),
                )
            } else {
                tokenizer_error(origin, format!("id {expected} has no piece (ids must run from 0 without gaps)"))
            });
        }
        pieces.push(piece);
    }
    if pieces.is_empty() {
        return Err(tokenizer_error(origin, "the vocabulary is empty"));
    }
    Ok(pieces)
}

/// Whether BPE may run word by word: no piece has a `▁` after a character other than `▁`
/// (see [`Tokenizer::encode_text`]).
fn words_are_independent<'a>(mut pieces: impl Iterator<Item = &'a str>) -> bool {
    pieces.all(|piece| {
        let word_start = piece.find(|c| c != SPACE_SYMBOL).unwrap_or(piece.len());
        !piece[word_start..].contains(SPACE_SYMBOL)
    })
}

/// The ids of the 256 byte pieces `<0x00>` … `<0xFF>`, found by `lookup`.
fn byte_piece_ids(origin: &str, lookup: impl Fn(&str) -> Option<u32>) -> Result<[u32; 256]> {
    let mut ids = [0u32; 256];
    for (b, slot) in ids.iter_mut().enumerate() {
        let piece = format!("<0x{b:02X}>");
        *slot = lookup(&piece).ok_or_else(|| {
            tokenizer_error(origin, format!("byte fallback is on but the byte piece {piece} is missing"))
        })?;
    }
    Ok(ids)
}

/// A [`ErrorKind::Tokenizer`] error about the file `origin`.
fn tokenizer_error(origin: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, format!("{origin}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// The released tokenizer (from the test fixtures) as loaded, and with word splitting off.
    fn split_and_whole() -> &'static (Tokenizer, Tokenizer) {
        static PAIR: OnceLock<(Tokenizer, Tokenizer)> = OnceLock::new();
        PAIR.get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer/tokenizer.json");
            let split = Tokenizer::from_tokenizer_json(&path).unwrap();
            assert!(split.split_words, "Llama's vocabulary allows word-by-word BPE");
            let mut whole = split.clone();
            whole.split_words = false;
            (split, whole)
        })
    }

    proptest! {
        #[test]
        fn word_by_word_bpe_equals_whole_text_bpe(
            s in prop::collection::vec(
                prop::sample::select(vec![' ', ' ', '\u{2581}', 'a', 'b', 'e', 'r', 't', '\n', '.', '東', '🦙']),
                0..80,
            ).prop_map(|v| v.into_iter().collect::<String>())
        ) {
            let (split, whole) = split_and_whole();
            prop_assert_eq!(split.encode(&s, false), whole.encode(&s, false));
        }
    }

    #[test]
    fn word_independence_needs_spaces_first() {
        assert!(words_are_independent(["▁the", "▁▁▁", "ab", "<0x0A>", "▁▁x"].into_iter()));
        assert!(!words_are_independent(["▁the", "a▁"].into_iter()));
        assert!(!words_are_independent(["▁a▁b"].into_iter()));
    }

    #[test]
    fn byte_value_follows_hf_shape_test() {
        assert_eq!(byte_value("<0x0A>"), Some(10));
        assert_eq!(byte_value("<0xff>"), Some(255));
        assert_eq!(byte_value("<0x0A"), None);
        assert_eq!(byte_value("<0xZZ>"), None);
        assert_eq!(byte_value("▁<0x0A>"), None);
        assert_eq!(byte_value("<s>"), None);
    }

    #[test]
    fn invalid_byte_runs_become_one_replacement_per_byte() {
        let mut text = String::new();
        flush_byte_run(&mut text, &mut vec![0xF0, 0x9F, 0xA6, 0x99, 0x0A, 0xF0]);
        assert_eq!(text, "\u{FFFD}".repeat(6));
        flush_byte_run(&mut text, &mut vec![0x41, 0x0A]);
        assert!(text.ends_with("A\n"));
    }

    #[test]
    fn ids_must_be_contiguous_and_unambiguous() {
        let ok = pieces_by_id("t", vec![(1, "b".into()), (0, "a".into()), (1, "b".into())]).unwrap();
        assert_eq!(ok, vec!["a", "b"]);
        let gap = pieces_by_id("t", vec![(0, "a".into()), (2, "c".into())]).unwrap_err();
        assert!(gap.message.contains("id 1 has no piece"), "{gap}");
        let twice = pieces_by_id("t", vec![(0, "a".into()), (0, "b".into())]).unwrap_err();
        assert!(twice.message.contains("id 0 is given to two pieces"), "{twice}");
        let huge = pieces_by_id("t", vec![(u32::MAX, "a".into())]).unwrap_err();
        assert!(huge.message.contains("id 0 has no piece"), "{huge}");
    }
}
