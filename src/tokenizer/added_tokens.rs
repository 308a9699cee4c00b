//! Added tokens: strings such as `<s>` or `[PAD]` that are cut out of the text before BPE.
//!
//! A Hugging Face tokenizer scans the *raw* input for the contents of its added tokens (for
//! Llama: `<unk>`, `<s>`, `</s>` and Hymba's `[PAD]`), takes each occurrence as that token, and
//! normalises and BPE-encodes only the stretches of text in between. So `<s> hi` is the BOS id
//! followed by the encoding of ` hi` — which, being a stretch of its own, gets its own `▁`
//! prefix: `▁▁hi` → `▁`, `▁hi`. SentencePiece's own encoder does none of this and spells `<s>`
//! out as `▁<`, `s`, `>`.
//!
//! Matching is leftmost-longest, as the `aho-corasick` automaton Hugging Face uses: at the first
//! position where any token matches, the longest token matching there wins.

/// A piece of the input: text to normalise and encode, or an added token's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Clone)]
pub(crate) struct AddedTokens {
    /// `(content, id)`, content non-empty.
    tokens: Vec<(String, u32)>,
    /// For each first byte, the indices into `tokens` starting with it, longest first.
    by_first_byte: Vec<Vec<usize>>,
}

impl AddedTokens {
    /// `tokens` are `(content, id)` pairs with non-empty contents.
    pub fn new(tokens: Vec<(String, u32)>) -> AddedTokens {
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, (content, _)) in tokens.iter().enumerate() {
            if let Some(&b) = content.as_bytes().first() {
                by_first_byte[usize::from(b)].push(i);
            }
        }
        for list in &mut by_first_byte {
            list.sort_by_key(|&i| std::cmp::Reverse(tokens[i].0.len()));
        }
        AddedTokens { tokens, by_first_byte }
    }

    /// Whether `id` is one of these tokens.
    pub fn contains_id(&self, id: u32) -> bool {
        self.tokens.iter().any(|&(_, token)| token == id)
    }

    /// The longest token that `text` starts with.
    fn match_at(&self, text: &[u8]) -> Option<(usize, u32)> {
        let first = *text.first()?;
        self.by_first_byte.get(usize::from(first))?.iter().find_map(|&i| {
            let (content, id) = &self.tokens[i];
            text.starts_with(content.as_bytes()).then_some((content.len(), *id))
        })
    }

    /// Cut `text` at every added token. Empty stretches of text are left out.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut text_start = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            match self.match_at(&bytes[pos..]) {
                Some((len, id)) => {
                    // A match starts with the first byte of a valid UTF-8 string, so `pos` and
                    // `pos + len` are character boundaries of `text`.
                    if text_start < pos {
                        segments.push(Segment::Text(&text[text_start..pos]));
                    }
                    segments.push(Segment::Token(id));
                    pos += len;
                    text_start = pos;
                }
                None => pos += 1,
            }
        }
        if text_start < bytes.len() {
            segments.push(Segment::Text(&text[text_start..]));
        }
        segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::{Text, Token};

    fn llama() -> AddedTokens {
        AddedTokens::new(vec![("<unk>".into(), 0), ("<s>".into(), 1), ("</s>".into(), 2), ("[PAD]".into(), 32000)])
    }

    #[test]
    fn splits_around_tokens() {
        let t = llama();
        assert_eq!(t.split("<s> hi"), vec![Token(1), Text(" hi")]);
        assert_eq!(t.split("a</s>"), vec![Text("a"), Token(2)]);
        assert_eq!(t.split("<<s>>"), vec![Text("<"), Token(1), Text(">")]);
        assert_eq!(t.split("[PAD][PAD]"), vec![Token(32000), Token(32000)]);
        assert_eq!(t.split("<s"), vec![Text("<s")]);
        assert_eq!(t.split(""), vec![]);
        assert_eq!(t.split("é<s>é"), vec![Text("é"), Token(1), Text("é")]);
    }

    #[test]
    fn longest_match_wins() {
        let t = AddedTokens::new(vec![("<a".into(), 7), ("<ab>".into(), 8)]);
        assert_eq!(t.split("x<ab>"), vec![Text("x"), Token(8)]);
        assert_eq!(t.split("x<ac"), vec![Text("x"), Token(7), Text("c")]);
    }
}
