//! Reading a SentencePiece `tokenizer.model`: a protocol-buffers message, decoded by hand.
//!
//! ## The wire format, in brief
//!
//! A protobuf message is a sequence of fields. Each starts with a *key* varint
//! `(field_number << 3) | wire_type`, followed by the value:
//!
//! | wire type | value |
//! | --- | --- |
//! | 0 varint | 7 bits per byte, least significant first, high bit set on all but the last byte |
//! | 1 64-bit | 8 bytes little-endian |
//! | 2 length-delimited | a varint length, then that many bytes (strings, bytes, sub-messages) |
//! | 5 32-bit | 4 bytes little-endian (`float`) |
//!
//! Fields may come in any order and unknown fields are skipped. A repeated field appears once
//! per element; a sub-message field that appears twice is merged; for a scalar the last wins.
//!
//! ## The fields used (from `sentencepiece_model.proto`)
//!
//! ```text
//! ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
//! SentencePiece   1: string piece   2: float score   3: Type type (default NORMAL)
//!                 Type: NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
//! TrainerSpec     3: model_type (UNIGRAM=1 default, BPE=2)   24: treat_whitespace_as_suffix
//!                 35: byte_fallback   41: bos_id (default 1)   42: eos_id (default 2)
//! NormalizerSpec  2: precompiled_charsmap   3: add_dummy_prefix (default true)
//!                 4: remove_extra_whitespaces (default true)   5: escape_whitespaces (true)
//! ```
//!
//! ## SentencePiece BPE as a merge table
//!
//! SentencePiece's BPE encoder starts from characters and repeatedly merges the adjacent pair
//! whose concatenation is a NORMAL piece with the highest score (leftmost on ties). Here that
//! becomes a [`MergeTable`]: every way of splitting a NORMAL piece into two NORMAL pieces is a
//! merge, ranked by the piece's score. That is exact as long as every character of every piece is
//! itself a piece (true of Llama's vocabulary, and checked here): then every symbol during
//! encoding is a piece, so looking pairs up by id is the same as looking strings up.
//!
//! Only what Llama's model uses is supported: BPE, byte fallback, no character-map
//! normalisation, no user-defined or unused pieces; anything else is refused with an error.

use super::bpe::{FastMap, Merge, MergeTable};
use super::normalizer::Normalizer;
use super::{byte_piece_ids, pieces_by_id, tokenizer_error, words_are_independent, AddedTokens, Tokenizer};
use crate::base::error::Result;
use std::collections::HashMap;

type ProtoResult<T> = std::result::Result<T, String>;

/// A field value as it appears on the wire.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the fields of one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> ProtoResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> ProtoResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or("truncated field")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next_field(&mut self) -> ProtoResult<Option<(u64, Value<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length does not fit in memory")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(format!("unsupported wire type {other} (field {number})")),
        };
        Ok(Some((number, value)))
    }
}

/// Piece types, as numbered in the proto.
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;
const UNUSED: u64 = 5;
const BYTE: u64 = 6;

struct Piece {
    text: String,
    score: f32,
    kind: u64,
}

/// The fields of `TrainerSpec` and `NormalizerSpec` that matter for encoding, with the proto's
/// defaults.
struct Spec {
    model_type: u64,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    bos_id: i32,
    eos_id: i32,
    has_charsmap: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            bos_id: 1,
            eos_id: 2,
            has_charsmap: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

fn varint(value: Value, name: &str) -> ProtoResult<u64> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(format!("{name} is not a varint")),
    }
}

fn bytes<'a>(value: Value<'a>, name: &str) -> ProtoResult<&'a [u8]> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{name} is not length-delimited")),
    }
}

fn read_piece(buf: &[u8]) -> ProtoResult<Piece> {
    let mut piece = Piece { text: String::new(), score: 0.0, kind: NORMAL };
    let mut reader = Reader::new(buf);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            1 => {
                let b = bytes(value, "piece")?;
                piece.text = String::from_utf8(b.to_vec()).map_err(|_| "piece is not UTF-8".to_string())?;
            }
            2 => match value {
                Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                _ => return Err("score is not a 32-bit float".into()),
            },
            3 => piece.kind = varint(value, "type")?,
            _ => {}
        }
    }
    Ok(piece)
}

fn read_trainer_spec(buf: &[u8], spec: &mut Spec) -> ProtoResult<()> {
    let mut reader = Reader::new(buf);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            3 => spec.model_type = varint(value, "trainer_spec.model_type")?,
            24 => spec.treat_whitespace_as_suffix = varint(value, "trainer_spec.treat_whitespace_as_suffix")? != 0,
            35 => spec.byte_fallback = varint(value, "trainer_spec.byte_fallback")? != 0,
            // int32 fields: negative numbers are sign-extended to 64 bits; keep the low 32.
            41 => spec.bos_id = varint(value, "trainer_spec.bos_id")? as u32 as i32,
            42 => spec.eos_id = varint(value, "trainer_spec.eos_id")? as u32 as i32,
            _ => {}
        }
    }
    Ok(())
}

fn read_normalizer_spec(buf: &[u8], spec: &mut Spec) -> ProtoResult<()> {
    let mut reader = Reader::new(buf);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            2 => spec.has_charsmap = !bytes(value, "normalizer_spec.precompiled_charsmap")?.is_empty(),
            3 => spec.add_dummy_prefix = varint(value, "normalizer_spec.add_dummy_prefix")? != 0,
            4 => spec.remove_extra_whitespaces = varint(value, "normalizer_spec.remove_extra_whitespaces")? != 0,
            5 => spec.escape_whitespaces = varint(value, "normalizer_spec.escape_whitespaces")? != 0,
            _ => {}
        }
    }
    Ok(())
}

fn read_model(buf: &[u8]) -> ProtoResult<(Vec<Piece>, Spec)> {
    let mut pieces = Vec::new();
    let mut spec = Spec::default();
    let mut reader = Reader::new(buf);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            1 => {
                let i = pieces.len();
                pieces.push(read_piece(bytes(value, "pieces")?).map_err(|e| format!("pieces[{i}]: {e}"))?);
            }
            2 => read_trainer_spec(bytes(value, "trainer_spec")?, &mut spec)?,
            3 => read_normalizer_spec(bytes(value, "normalizer_spec")?, &mut spec)?,
            _ => {}
        }
    }
    Ok((pieces, spec))
}

/// Parse a `tokenizer.model`. `origin` names the file in errors.
pub(super) fn parse(buf: &[u8], origin: &str) -> Result<Tokenizer> {
    let err = |what: String| tokenizer_error(origin, what);
    let (pieces, spec) = read_model(buf).map_err(|e| err(format!("not a SentencePiece model: {e}")))?;
    if spec.model_type != 2 {
        return Err(err(format!("trainer_spec.model_type is {}; only BPE (2) is supported", spec.model_type)));
    }
    if !spec.byte_fallback {
        return Err(err("trainer_spec.byte_fallback is off; this engine implements byte-fallback BPE only".into()));
    }
    if spec.treat_whitespace_as_suffix {
        return Err(err("trainer_spec.treat_whitespace_as_suffix is not supported".into()));
    }
    if spec.has_charsmap {
        return Err(err("normalizer_spec has a character map; only identity normalisation is supported".into()));
    }

    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let id = u32::try_from(i).map_err(|_| err("more than 2^32 pieces".into()))?;
        if piece.text.len() > MAX_PIECE_BYTES {
            let len = piece.text.len();
            return Err(err(format!("piece {id} is {len} bytes long; pieces may have at most {MAX_PIECE_BYTES}")));
        }
        let what = format!("piece {id} {:?}", piece.text);
        match piece.kind {
            NORMAL | UNKNOWN | CONTROL | BYTE => {}
            USER_DEFINED | UNUSED => {
                return Err(err(format!("{what}: USER_DEFINED and UNUSED pieces are not supported")))
            }
            other => return Err(err(format!("{what}: unknown piece type {other}"))),
        }
        if piece.text.is_empty() {
            return Err(err(format!("piece {id} is empty")));
        }
        if ids.insert(&piece.text, id).is_some() {
            return Err(err(format!("{what} appears twice")));
        }
    }
    let pieces_text = pieces_by_id(origin, pieces.iter().zip(0u32..).map(|(p, id)| (id, p.text.clone())).collect())?;
    let byte_ids = byte_piece_ids(origin, |p| ids.get(p).copied().filter(|&id| pieces[id as usize].kind == BYTE))?;

    // Only NORMAL pieces take part in BPE.
    let normal: HashMap<&str, u32> =
        ids.iter().filter(|(_, &id)| pieces[id as usize].kind == NORMAL).map(|(&p, &id)| (p, id)).collect();
    let mut char_ids = FastMap::default();
    for (&text, &id) in &normal {
        let mut chars = text.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            char_ids.insert(c, id);
        }
    }
    for (&text, &id) in &normal {
        if let Some(c) = text.chars().find(|c| !char_ids.contains_key(c)) {
            return Err(err(format!(
                "piece {id} {text:?} contains {c:?}, which is not itself a piece (not supported)"
            )));
        }
    }
    let merges = merge_table(&pieces, &normal);
    let split_words = words_are_independent(pieces_text.iter().map(String::as_str));

    let id_of = |n: i32, name: &str| {
        u32::try_from(n)
            .ok()
            .filter(|&id| (id as usize) < pieces.len())
            .ok_or_else(|| err(format!("trainer_spec.{name} = {n} is not a piece id")))
    };
    let bos = id_of(spec.bos_id, "bos_id")?;
    let eos = id_of(spec.eos_id, "eos_id")?;

    Ok(Tokenizer {
        pieces: pieces_text,
        char_ids,
        byte_ids,
        merges,
        split_words,
        normalizer: Normalizer::SentencePiece {
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
            escape_whitespaces: spec.escape_whitespaces,
        },
        added: AddedTokens::new(Vec::new()), // sentencepiece does not split special strings
        strip_leading_space: spec.add_dummy_prefix,
        bos,
        eos,
        add_bos_token: true,
    })
}

/// The longest piece, in bytes. Finding a piece's merges looks at each of its splits, so the bound
/// keeps loading near-linear in the file (SentencePiece trains pieces of at most 16 characters).
const MAX_PIECE_BYTES: usize = 256;

/// Every split of a NORMAL piece into two NORMAL pieces, ranked by the piece's score (higher
/// score → lower rank; equal scores share a rank so that ties go to the leftmost pair). Only
/// splits where both halves have the length of some piece are looked up, left half first.
fn merge_table(pieces: &[Piece], normal: &HashMap<&str, u32>) -> MergeTable {
    let mut is_length = [false; MAX_PIECE_BYTES + 1];
    for text in normal.keys() {
        is_length[text.len()] = true;
    }
    let mut scores: Vec<f32> = normal.values().map(|&id| pieces[id as usize].score).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    scores.dedup_by(|a, b| a.total_cmp(b).is_eq());
    let rank_of = |score: f32| scores.partition_point(|s| s.total_cmp(&score).is_gt()) as u32;

    let mut table = MergeTable::default();
    for (&text, &merged) in normal {
        let rank = rank_of(pieces[merged as usize].score);
        for (split, _) in text.char_indices().skip(1) {
            if !(is_length[split] && is_length[text.len() - split]) {
                continue;
            }
            let (left, right) = text.split_at(split);
            let Some(&l) = normal.get(left) else { continue };
            if let Some(&r) = normal.get(right) {
                table.insert(l, r, Merge { rank, merged });
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut r = Reader::new(&[0x96, 0x01, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.varint().unwrap(), 150);
        assert_eq!(r.varint().unwrap(), 127);
        assert_eq!(r.varint().unwrap() as u32 as i32, -1);
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0x80; 11]).varint().is_err());
    }

    #[test]
    fn truncated_and_bad_fields_are_errors() {
        // field 1, length 5, only 2 bytes follow
        assert!(Reader::new(&[0x0a, 0x05, 0x41, 0x42]).next_field().is_err());
        // wire type 3 (start group)
        assert!(Reader::new(&[0x0b]).next_field().is_err());
        // field number 0
        assert!(Reader::new(&[0x00, 0x00]).next_field().is_err());
    }
}
