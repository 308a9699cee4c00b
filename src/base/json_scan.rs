//! Scanning untrusted JSON text without building it: finding repeated keys, counting entries.
//!
//! RFC 8259 only says object keys "SHOULD be unique", and `serde_json` silently keeps the last of
//! two equal keys. In a safetensors header or a shard index that would silently drop a tensor, in
//! `config.json` a field, so after `serde_json` has accepted a text we scan it once more, cheaply,
//! for repeated keys. The counts let a text be refused for its size before it is parsed. This
//! module imports nothing from the crate, so `config`, `checkpoint`, `tokenizer` and `generate`
//! all use it without importing from one another.

use std::collections::HashSet;

/// The first key that appears twice in one object of `json`, which must already be valid JSON
/// (on invalid JSON the answer is meaningless but the scan still terminates and never panics).
pub(crate) fn first_duplicate_key(json: &str) -> Option<String> {
    // One entry per open `{` (its keys so far) or `[` (None).
    let mut scopes: Vec<Option<HashSet<String>>> = Vec::new();
    let mut repeated = None;
    scan(json, |event| match event {
        Event::Open { object } => {
            scopes.push(object.then(HashSet::new));
            true
        }
        Event::Close => {
            scopes.pop();
            true
        }
        Event::Comma => true,
        Event::Key(literal) => {
            let Some(Some(keys)) = scopes.last_mut() else { return true };
            let key = decode_string(literal);
            if keys.insert(key.clone()) {
                return true;
            }
            repeated = Some(key);
            false
        }
    });
    repeated
}

/// How many keys the objects of `json` hold: at the top level only (`depth` 1) or at every depth
/// (`None`). A linear scan that allocates nothing, so a text can be refused for holding too many
/// entries before it is parsed into values.
pub(crate) fn count_keys(json: &str, depth: Option<usize>) -> usize {
    let mut open = 0usize;
    let mut count = 0usize;
    scan(json, |event| {
        match event {
            Event::Open { .. } => open += 1,
            Event::Close => open = open.saturating_sub(1),
            Event::Key(_) if depth.is_none_or(|d| d == open) => count += 1,
            Event::Key(_) | Event::Comma => {}
        }
        true
    });
    count
}

/// About how many values (objects, arrays, strings, numbers, ...) `json` holds: its commas and
/// opening brackets, plus one. A linear scan that allocates nothing, so a text whose parsed tree
/// would be many times its size can be refused before it is parsed.
pub(crate) fn count_values(json: &str) -> usize {
    let mut count = 1usize;
    scan(json, |event| {
        if matches!(event, Event::Open { .. } | Event::Comma) {
            count += 1;
        }
        true
    });
    count
}

/// What [`scan`] reports, in text order.
enum Event<'a> {
    /// `{` (object) or `[`.
    Open { object: bool },
    /// `}` or `]`.
    Close,
    /// An object key, as its quoted literal.
    Key(&'a str),
    /// `,` between values.
    Comma,
}

/// Walk the structure of `json` (valid JSON, or at least terminating on anything), calling
/// `on_event` until it returns false.
fn scan<'a>(json: &'a str, mut on_event: impl FnMut(Event<'a>) -> bool) {
    let mut in_object: Vec<bool> = Vec::new();
    let mut expecting_key = false;
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let go_on = match bytes[i] {
            b'"' => {
                let end = closing_quote(bytes, i);
                let go_on = !expecting_key || on_event(Event::Key(&json[i..=end]));
                expecting_key = false;
                i = end;
                go_on
            }
            b'{' | b'[' => {
                let object = bytes[i] == b'{';
                in_object.push(object);
                expecting_key = object;
                on_event(Event::Open { object })
            }
            b'}' | b']' => {
                in_object.pop();
                on_event(Event::Close)
            }
            b',' => {
                expecting_key = in_object.last() == Some(&true);
                on_event(Event::Comma)
            }
            _ => true,
        };
        if !go_on {
            return;
        }
        i += 1;
    }
}

/// Index of the `"` closing the string that opens at `start` (or the last index if unterminated).
/// Quotes and backslashes are ASCII, so they never occur inside a multi-byte UTF-8 character.
fn closing_quote(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    bytes.len() - 1
}

/// The value of a quoted JSON string literal, escapes resolved.
fn decode_string(literal: &str) -> String {
    serde_json::from_str(literal).unwrap_or_else(|_| literal.to_string())
}

#[cfg(test)]
mod tests {
    use super::{count_keys, count_values, first_duplicate_key};

    #[test]
    fn counts_keys_at_the_top_or_everywhere() {
        let json = r#"{"a": {"b": 1, "c": [{"d": "e"}]}, "f": "g,h"}"#;
        assert_eq!(count_keys(json, Some(1)), 2);
        assert_eq!(count_keys(json, Some(2)), 2);
        assert_eq!(count_keys(json, None), 5);
        assert_eq!(count_keys("[1, 2]", None), 0);
        assert_eq!(count_values(json), 7, "3 objects, an array, 3 scalars: 4 brackets, 2 commas, 1");
        assert_eq!(count_values("[0,0,0]"), 4);
    }

    #[test]
    fn finds_repeats_at_any_depth_and_only_among_keys() {
        assert_eq!(first_duplicate_key(r#"{"a": 1, "b": 2}"#), None);
        assert_eq!(first_duplicate_key(r#"{"a": "a", "b": ["a", "a"]}"#), None);
        assert_eq!(first_duplicate_key(r#"{"a": {}, "b": 1, "a": 2}"#).as_deref(), Some("a"));
        assert_eq!(first_duplicate_key(r#"{"x": {"k": 1, "k": 2}}"#).as_deref(), Some("k"));
        assert_eq!(first_duplicate_key(r#"[{"k": 1}, {"k": 2}]"#), None);
        // Escapes are resolved before comparing: "\u0061" is "a".
        assert_eq!(first_duplicate_key(r#"{"a": 1, "\u0061": 2}"#).as_deref(), Some("a"));
        assert_eq!(first_duplicate_key(r#"{"q\"": 1, "q\"": 2}"#).as_deref(), Some("q\""));
    }
}
