//! A multi-turn chat in the Instruct format, keeping the conversation's sequence between turns.
//!
//! Each turn renders the whole conversation ([`render_chat`]: system, the user and assistant
//! messages so far, the new user message, the assistant header) and encodes it, as a single
//! `generate` over that text would. The sequence already holds most of those ids from the
//! turns before, so only the ids it does not hold are fed:
//!
//! ```text
//! turn k ids = [ ids held by the sequence | new ids: end of reply k−1, user turn k, header ]
//!                 reused, not prefilled      prefilled, then the reply is generated
//! ```
//!
//! The ids a sequence holds are a prefix of the next turn's ids when the reply's tokens are how
//! the tokenizer encodes the reply's text. They need not be: the chat format strips the reply's
//! surrounding whitespace, a stop string cuts it, or the model chose an unusual spelling. So a
//! copy of the sequence is kept from just before the last id of each turn's prompt (the end of
//! the assistant header, which no reply changes); the next turn resumes from whichever of the
//! two holds the longer prefix, and from the meta tokens when neither does. The reply is thus
//! always the continuation of exactly the ids a single generation over the conversation's text
//! would see.

use super::text::generate_text_in;
use super::{GenerateOptions, Generation};
use crate::model::Sequence;
use crate::base::error::Result;
use crate::model::Hymba;
use crate::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use std::time::Instant;

/// A sequence and the ids (after the meta tokens) whose state it holds.
#[derive(Clone)]
struct Held {
    sequence: Sequence,
    ids: Vec<u32>,
}

impl Held {
    fn fresh(model: &Hymba) -> Held {
        Held { sequence: model.new_sequence(), ids: Vec::new() }
    }

    /// How many ids of `wanted` this sequence can go on from: all it holds, if they are a
    /// prefix of `wanted`; else none usable.
    fn reusable_for(&self, wanted: &[u32]) -> Option<usize> {
        wanted.starts_with(&self.ids).then_some(self.ids.len())
    }
}

/// One chat turn's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The assistant's reply as text (what was streamed).
    pub reply: String,
    pub generation: Generation,
    /// Ids of the whole conversation this turn continued (its prompt).
    pub conversation_tokens: usize,
    /// Of those, the ids fed this turn (the rest were already in the sequence).
    pub prefilled_tokens: usize,
    /// Wall time of feeding them.
    pub prefill_seconds: f64,
}

/// A conversation with the model: its messages and the sequence that holds them.
pub struct Conversation<'m> {
    model: &'m Hymba,
    tokenizer: &'m Tokenizer,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The sequence after the last reply.
    current: Held,
    /// The sequence just before the last id of the last turn's prompt.
    before_reply: Held,
}

impl<'m> Conversation<'m> {
    /// A new conversation, with an optional system message.
    pub fn new(model: &'m Hymba, tokenizer: &'m Tokenizer, system: Option<&str>) -> Conversation<'m> {
        let fresh = Held::fresh(model);
        Conversation {
            model,
            tokenizer,
            system: system.map(str::to_string),
            messages: system_message(system),
            current: fresh.clone(),
            before_reply: fresh,
        }
    }

    /// Forget every message but the system message, and start from the meta tokens again.
    pub fn reset(&mut self) {
        self.messages = system_message(self.system.as_deref());
        self.current = Held::fresh(self.model);
        self.before_reply = self.current.clone();
    }

    /// The messages so far (the system message first, if any).
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Add the user's message and generate the reply, streaming its text to `on_text`; the reply
    /// joins the conversation. On an error the conversation is as it was before the call.
    pub fn reply(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        stops: &[String],
        mut on_text: impl FnMut(&str) -> Result<()>,
    ) -> Result<Turn> {
        let mut messages = self.messages.clone();
        messages.push(ChatMessage::new(Role::User, user));
        let ids = self.tokenizer.encode(&render_chat(&messages, true), self.tokenizer.add_bos_token());
        let mut held = self.resume_point(&ids);
        let reused = held.ids.len();

        // Feed all but the prompt's last id, keep a copy there, and generate from the last id.
        let start = Instant::now();
        let (head, last) = ids.split_at(ids.len() - 1);
        if head.len() > reused {
            self.model.next_token_logits(&head[reused..], &mut held.sequence)?;
            held.ids.extend_from_slice(&head[reused..]);
        }
        let before_reply = held.clone();
        let head_seconds = start.elapsed().as_secs_f64();
        let mut reply = String::new();
        let generation = generate_text_in(
            self.model,
            self.tokenizer,
            &mut held.sequence,
            &held.ids,
            last,
            options,
            stops,
            None,
            |text| {
                reply.push_str(text);
                on_text(text)
            },
        )?;
        held.ids.extend_from_slice(last);
        held.ids.extend_from_slice(generation.tokens_in_sequence());
        messages.push(ChatMessage::new(Role::Assistant, reply.as_str()));
        (self.messages, self.current, self.before_reply) = (messages, held, before_reply);
        Ok(Turn {
            reply,
            conversation_tokens: ids.len(),
            prefilled_tokens: ids.len() - reused,
            prefill_seconds: head_seconds + generation.stats.prefill_seconds,
            generation,
        })
    }

    /// A copy of the held sequence that can go on to `ids` from furthest along.
    fn resume_point(&self, ids: &[u32]) -> Held {
        let candidates = [&self.current, &self.before_reply];
        let best = candidates.into_iter().filter_map(|held| Some((held.reusable_for(ids)?, held))).max_by_key(|(n, _)| *n);
        match best {
            // At least one id must be left to feed: the prompt's last one.
            Some((n, held)) if n < ids.len() => held.clone(),
            _ => Held::fresh(self.model),
        }
    }
}

/// The conversation's first message: the system message, if there is one.
fn system_message(system: Option<&str>) -> Vec<ChatMessage> {
    system.map(|s| ChatMessage::new(Role::System, s)).into_iter().collect()
}
