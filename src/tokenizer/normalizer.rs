//! Text normalisation before BPE: where spaces become `▁` and the prefix space comes from.
//!
//! SentencePiece treats a space as an ordinary character, written `▁` (U+2581) so that pieces
//! can be printed, and it puts one `▁` in front of the text (the "dummy prefix") so that the first
//! word is spelled like every other word: `Hello world` becomes `▁Hello▁world`, and `▁Hello` is
//! one piece whether or not the word starts the text.
//!
//! The two file formats say this differently:
//! * `tokenizer.json` has a list of normalizer steps; Llama's is `Prepend("▁")` then
//!   `Replace(" " → "▁")`. Hugging Face runs them on each stretch of text *between* added tokens,
//!   so the text after a `<s>` found in the input gets its own `▁` prefix.
//! * `tokenizer.model` has flags (`add_dummy_prefix`, `escape_whitespaces`,
//!   `remove_extra_whitespaces`) applied once to the whole text.
//!
//! Both add the prefix only to non-empty text: the empty string encodes to no pieces.

/// One step of a `tokenizer.json` normalizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Put this string in front of non-empty text.
    Prepend(String),
    /// Replace every occurrence of `pattern` (non-empty) by `content`.
    Replace { pattern: String, content: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Normalizer {
    /// `tokenizer.json`: steps applied in order.
    Steps(Vec<Step>),
    /// `tokenizer.model`: SentencePiece's normaliser with an identity character map.
    SentencePiece {
        /// Put a space (`▁`) in front of non-empty text.
        add_dummy_prefix: bool,
        /// Drop leading and trailing spaces and squeeze runs of spaces into one.
        remove_extra_whitespaces: bool,
        /// Write spaces as `▁`.
        escape_whitespaces: bool,
    },
}

/// The meta symbol SentencePiece uses for a space.
pub(crate) const SPACE_SYMBOL: char = '\u{2581}';

impl Normalizer {
    pub fn normalize(&self, text: &str) -> String {
        match self {
            Normalizer::Steps(steps) => {
                let mut s = text.to_owned();
                for step in steps {
                    match step {
                        Step::Prepend(prefix) => {
                            if !s.is_empty() {
                                s.insert_str(0, prefix);
                            }
                        }
                        Step::Replace { pattern, content } => s = s.replace(pattern.as_str(), content),
                    }
                }
                s
            }
            &Normalizer::SentencePiece { add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces } => {
                sentencepiece_normalize(text, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces)
            }
        }
    }
}

/// SentencePiece's `Normalizer::Normalize` for a model without a character map (Llama's is
/// named "identity"), following its code path: only the ASCII space counts as whitespace.
fn sentencepiece_normalize(text: &str, add_dummy_prefix: bool, remove_extra: bool, escape: bool) -> String {
    let input = if remove_extra { text.trim_start_matches(' ') } else { text };
    if input.is_empty() {
        return String::new();
    }
    let space = if escape { SPACE_SYMBOL } else { ' ' };
    let mut out = String::with_capacity(input.len() + 3);
    if add_dummy_prefix {
        out.push(space);
    }
    let mut previous_was_space = false;
    for c in input.chars() {
        if c == ' ' {
            if remove_extra && previous_was_space {
                continue;
            }
            out.push(space);
            previous_was_space = true;
        } else {
            out.push(c);
            previous_was_space = false;
        }
    }
    if remove_extra {
        // SentencePiece trims the escaped space symbol here, so a literal `▁` typed at the end
        // of the text goes too.
        while out.ends_with(space) {
            out.pop();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_json() -> Normalizer {
        let replace = Step::Replace { pattern: " ".into(), content: "▁".into() };
        Normalizer::Steps(vec![Step::Prepend("▁".into()), replace])
    }

    fn sp(add_dummy_prefix: bool, remove_extra_whitespaces: bool, escape_whitespaces: bool) -> Normalizer {
        Normalizer::SentencePiece { add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces }
    }

    #[test]
    fn llama_steps_prefix_and_escape() {
        let n = llama_json();
        assert_eq!(n.normalize("Hello world"), "▁Hello▁world");
        assert_eq!(n.normalize(" a  b "), "▁▁a▁▁b▁");
        assert_eq!(n.normalize(""), "");
    }

    #[test]
    fn sentencepiece_flags() {
        assert_eq!(sp(true, false, true).normalize(" a  b "), "▁▁a▁▁b▁");
        assert_eq!(sp(true, true, true).normalize("  a   b  "), "▁a▁b");
        assert_eq!(sp(true, true, true).normalize("a▁ "), "▁a");
        assert_eq!(sp(true, true, true).normalize("   "), "");
        assert_eq!(sp(false, false, true).normalize("a b"), "a▁b");
        assert_eq!(sp(true, false, false).normalize("a b"), " a b");
        assert_eq!(sp(true, false, true).normalize(""), "");
    }
}
