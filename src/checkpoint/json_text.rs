//! Quoting JSON values in error messages, cut to a readable length. (Scanning untrusted JSON
//! for repeated keys and counting its entries is [`crate::base::json_scan`], below this module, since
//! `config` needs it too.)

use serde_json::Value;

/// A JSON value for an error message, cut to a readable length.
pub(crate) fn brief(value: &Value) -> String {
    brief_text(&value.to_string())
}

/// JSON text (or any text) for an error message, cut to a readable length.
pub(crate) fn brief_text(text: &str) -> String {
    const LIMIT: usize = 80;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
