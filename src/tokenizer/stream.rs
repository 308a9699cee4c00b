//! Decoding token by token, for printing text while it is generated.
//!
//! Decoding ids one at a time and concatenating the results is wrong in two ways:
//!
//! * A character without a piece of its own arrives as several byte tokens (`🦙` is
//!   `<0xF0> <0x9F> <0xA6> <0x99>`); decoded alone, each is invalid UTF-8. [`StreamDecoder`]
//!   holds back the bytes of an incomplete character and emits it once its last byte arrives.
//! * The leading-space rule drops one space at the start of the *whole* text, not of every
//!   token. [`StreamDecoder`] applies it once, to the first text it emits.
//!
//! So for every id sequence whose byte runs are valid UTF-8 (everything [`Tokenizer::encode`]
//! produces, and any sensible model output), the concatenated output of
//! [`push`](StreamDecoder::push) and [`finish`](StreamDecoder::finish) equals
//! [`Tokenizer::decode`]. When a run of byte tokens contains invalid UTF-8, `decode` (following
//! Hugging Face) replaces *every* byte of the run with U+FFFD, including the characters that
//! were complete; a stream cannot take back characters it already printed, so it replaces only
//! the bytes that cannot be part of a valid character, one U+FFFD each.

use super::{byte_value, push_piece_text, Tokenizer};
use crate::base::error::Result;

/// Turns ids into text incrementally; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    /// Bytes of a character still missing its last byte(s): at most 3.
    pending: Vec<u8>,
    /// Nothing has been emitted yet, so the leading-space rule is still to be applied.
    at_start: bool,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for a whole text: the leading-space rule applies to its first token.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        StreamDecoder { tokenizer, pending: Vec::new(), at_start: true }
    }

    /// A decoder for text that continues earlier text (a generated continuation of a prompt):
    /// the leading-space rule already applied to the start of the prompt, so a first token
    /// `▁that` after "Once upon a time" prints " that".
    pub fn continuing(tokenizer: &'t Tokenizer) -> Self {
        StreamDecoder { tokenizer, pending: Vec::new(), at_start: false }
    }

    /// Add one id; returns the text that became complete (possibly empty). An id outside the
    /// vocabulary is a [`TokenIdOutOfRange`](crate::ErrorKind::TokenIdOutOfRange) error and
    /// changes nothing.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.tokenizer.piece(id)?;
        let mut text = String::new();
        match byte_value(piece) {
            Some(byte) => {
                self.pending.push(byte);
                self.emit_complete_characters(&mut text);
            }
            None => {
                self.flush_incomplete(&mut text);
                push_piece_text(&mut text, piece);
            }
        }
        Ok(self.leading_space_rule(text))
    }

    /// End of the sequence: returns what is left (the bytes of an unfinished character, each as
    /// U+FFFD).
    pub fn finish(mut self) -> String {
        let mut text = String::new();
        self.flush_incomplete(&mut text);
        self.leading_space_rule(text)
    }

    /// Move every complete character (and every byte that cannot start or continue one, as
    /// U+FFFD) from `pending` to `text`, keeping an incomplete character at the end.
    fn emit_complete_characters(&mut self, text: &mut String) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid_up_to` is valid UTF-8 by definition.
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, bad));
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            // Incomplete character at the end: wait for more bytes.
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A non-byte token ends the byte run: an unfinished character becomes U+FFFD per byte.
    fn flush_incomplete(&mut self, text: &mut String) {
        text.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, self.pending.len()));
        self.pending.clear();
    }

    fn leading_space_rule(&mut self, mut text: String) -> String {
        if self.at_start && !text.is_empty() {
            self.at_start = false;
            if self.tokenizer.strip_leading_space && text.starts_with(' ') {
                text.remove(0);
            }
        }
        text
    }
}
