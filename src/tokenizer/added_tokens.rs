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

/// The longest added token, in bytes. Matching costs at most this many steps per byte of text,
/// so the bound keeps `encode` linear in the text (Hugging Face's added tokens are a few bytes).
pub(crate) const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// The added tokens as a byte trie: matching at a position walks the text down the trie once,
/// remembering the last node that ends a token (the longest match), however many tokens share
/// a prefix.
#[derive(Debug, Clone)]
pub(crate) struct AddedTokens {
    /// Node 0 is the root (the empty string).
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// `(byte, child node)`, sorted by byte.
    children: Vec<(u8, u32)>,
    /// The id of the token that ends here, if any.
    token: Option<u32>,
}

impl AddedTokens {
    /// `tokens` are `(content, id)` pairs with non-empty contents of at most
    /// [`MAX_ADDED_TOKEN_BYTES`]; when one content is given twice, the first id wins.
    pub fn new(tokens: Vec<(String, u32)>) -> AddedTokens {
        debug_assert!(tokens.iter().all(|(c, _)| !c.is_empty() && c.len() <= MAX_ADDED_TOKEN_BYTES));
        // Inserted in byte order, every new child sorts after its siblings: a push, not an insert.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by(|&a, &b| tokens[a].0.as_bytes().cmp(tokens[b].0.as_bytes()).then(a.cmp(&b)));
        let mut nodes = vec![TrieNode::default()];
        for i in order {
            let (content, id) = &tokens[i];
            let mut node = 0;
            for &b in content.as_bytes() {
                node = match nodes[node].children.binary_search_by_key(&b, |&(c, _)| c) {
                    Ok(k) => nodes[node].children[k].1 as usize,
                    Err(k) => {
                        let child = nodes.len();
                        nodes[node].children.insert(k, (b, child as u32));
                        nodes.push(TrieNode::default());
                        child
                    }
                };
            }
            nodes[node].token.get_or_insert(*id);
        }
        AddedTokens { nodes }
    }

    /// Whether `id` is one of these tokens.
    pub fn contains_id(&self, id: u32) -> bool {
        self.nodes.iter().any(|node| node.token == Some(id))
    }

    /// The longest token that `text` starts with: `(length in bytes, id)`.
    fn match_at(&self, text: &[u8]) -> Option<(usize, u32)> {
        let mut node = &self.nodes[0];
        let mut longest = None;
        for (depth, &b) in text.iter().enumerate() {
            let Ok(k) = node.children.binary_search_by_key(&b, |&(c, _)| c) else { break };
            node = &self.nodes[node.children[k].1 as usize];
            if let Some(id) = node.token {
                longest = Some((depth + 1, id));
            }
        }
        longest
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

    #[test]
    fn first_of_two_equal_contents_wins_and_shared_prefixes_share_nodes() {
        let t = AddedTokens::new(vec![("<ab>".into(), 5), ("<ab>".into(), 6), ("<ac>".into(), 7)]);
        assert_eq!(t.split("<ab><ac>"), vec![Token(5), Token(7)]);
        assert_eq!(t.nodes.len(), 1 + 4 + 2, "the root, `<ab>`, then only `c>` for `<ac>`");
    }
}
