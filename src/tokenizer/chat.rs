//! The chat format of Hymba-1.5B-Instruct.
//!
//! The released `tokenizer_config.json` carries a Jinja `chat_template`; for a list of messages
//! without tools or contexts it renders:
//!
//! ```text
//! <extra_id_0>System            ← always
//! \n{system text}               ← for each system message
//! \n\n
//! <extra_id_1>User\n{text}\n    ← for each user message, in order
//! <extra_id_1>Assistant\n{text}\n
//! <extra_id_1>Tool\n{text}\n
//! <extra_id_1>Assistant\n       ← if a reply is to be generated
//! ```
//!
//! Message texts are stripped of surrounding whitespace (Python's `str.strip`). The
//! `<extra_id_*>` markers are not special tokens for this tokenizer: they are encoded as plain
//! text (`▁<`, `extra`, `_`, `id`, …). The rendered string is then encoded with a BOS, like any
//! prompt.

use crate::base::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl FromStr for Role {
    type Err = Error;

    /// The role names of the chat template: `system`, `user`, `assistant`, `tool`.
    fn from_str(name: &str) -> Result<Role> {
        match name {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            _ => Err(Error::input(format!("unknown chat role {name:?}: expected system, user, assistant or tool"))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        })
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage { role, content: content.into() }
    }
}

/// Render `messages` in the Instruct chat format; with `add_generation_prompt`, end with the
/// header of the assistant's reply.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::from("<extra_id_0>System");
    for m in messages.iter().filter(|m| m.role == Role::System) {
        out.push('\n');
        out.push_str(python_strip(&m.content));
    }
    out.push_str("\n\n");
    for m in messages {
        let header = match m.role {
            Role::System => continue,
            Role::User => "<extra_id_1>User\n",
            Role::Assistant => "<extra_id_1>Assistant\n",
            Role::Tool => "<extra_id_1>Tool\n",
        };
        out.push_str(header);
        out.push_str(python_strip(&m.content));
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str("<extra_id_1>Assistant\n");
    }
    out
}

/// Python's `str.strip()`: Rust's `trim` plus the four ASCII separators U+001C..U+001F, which
/// Python counts as whitespace and Unicode does not.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for role in [Role::System, Role::User, Role::Assistant, Role::Tool] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        let e = "robot".parse::<Role>().unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::InvalidInput);
        assert!(e.message.contains("robot"));
    }

    #[test]
    fn strips_like_python() {
        assert_eq!(python_strip("\u{1c}\t x \u{3000}\u{1f}"), "x");
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x"); // zero-width space is not whitespace
    }

    #[test]
    fn system_messages_go_first_and_generation_prompt_is_optional() {
        let messages = [
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::System, " be brief "),
            ChatMessage::new(Role::Tool, "42"),
        ];
        assert_eq!(
            render_chat(&messages, false),
            "<extra_id_0>System\nbe brief\n\n<extra_id_1>User\nhi\n<extra_id_1>Tool\n42\n"
        );
        assert_eq!(render_chat(&[], true), "<extra_id_0>System\n\n<extra_id_1>Assistant\n");
    }
}
