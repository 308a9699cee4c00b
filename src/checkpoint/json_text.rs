//! Two helpers for untrusted JSON: finding repeated keys, and quoting values in error messages.
//!
//! RFC 8259 only says object keys "SHOULD be unique", and `serde_json` silently keeps the last of
//! two equal keys. In a safetensors header or a shard index that would silently drop a tensor, so
//! after `serde_json` has accepted a text we scan it once more, cheaply, for repeated keys.

use std::collections::HashSet;

use serde_json::Value;

/// A JSON value for an error message, cut to a readable length.
pub(crate) fn brief(value: &Value) -> String {
    const LIMIT: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// The first key that appears twice in one object of `json`, which must already be valid JSON
/// (on invalid JSON the answer is meaningless but the scan still terminates and never panics).
pub(crate) fn first_duplicate_key(json: &str) -> Option<String> {
    // One entry per open `{` (its keys so far) or `[` (None).
    let mut scopes: Vec<Option<HashSet<String>>> = Vec::new();
    let mut expecting_key = false;
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = closing_quote(bytes, i);
                if expecting_key {
                    if let Some(Some(keys)) = scopes.last_mut() {
                        let key = decode_string(&json[i..=end]);
                        if !keys.insert(key.clone()) {
                            return Some(key);
                        }
                    }
                }
                expecting_key = false;
                i = end;
            }
            b'{' => {
                scopes.push(Some(HashSet::new()));
                expecting_key = true;
            }
            b'[' => {
                scopes.push(None);
                expecting_key = false;
            }
            b'}' | b']' => {
                scopes.pop();
            }
            b',' => expecting_key = matches!(scopes.last(), Some(Some(_))),
            _ => {}
        }
        i += 1;
    }
    None
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
    use super::first_duplicate_key;

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
