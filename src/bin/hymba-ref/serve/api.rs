//! The OpenAI request and response shapes: a JSON body → a checked, tokenized request, or an
//! OpenAI-style error naming the field; a finished (or streamed) reply → the response JSON.
//!
//! A field a request leaves out (or sets to null) takes what `generate` would use: the model's
//! `generation_config.json` for sampling, 128 new tokens, seed 0, no stop strings. A field we do
//! not support is refused with 400 naming it, unless it holds the value that means "off"
//! (`presence_penalty: 0`, `echo: false`, ...), which some clients always send.

use hymba_ref::config::HymbaConfig;
use hymba_ref::features::generate::sampling::SamplingParams;
use hymba_ref::features::generate::GenerateOptions;
use hymba_ref::features::serve::Finished;
use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use serde_json::{json, Map, Value};

/// `generate`'s default `--max-new-tokens`, for a request without `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// The most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// An error answer: status and OpenAI's `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    /// 400, naming the field.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param.to_string()) }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": Value::Null } })
    }
}

/// A checked request, ready for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub stops: Vec<String>,
    pub stream: bool,
}

/// What a request is checked against.
pub struct Context<'a> {
    pub model_name: &'a str,
    pub config: &'a HymbaConfig,
    pub tokenizer: &'a Tokenizer,
    /// The model's generation_config.json (greedy without one).
    pub defaults: SamplingParams,
}

/// Fields each endpoint reads, besides its prompt field.
const COMMON_FIELDS: [&str; 14] = [
    "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop", "n", "stream",
    "stream_options", "user", "ignore_eos",
];

/// Fields we do not support, and the value each may hold because it means "off".
fn is_off_value(field: &str, value: &Value) -> bool {
    match field {
        "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
        "echo" | "logprobs" | "parallel_tool_calls" => value == &Value::Bool(false),
        "best_of" => value.as_u64() == Some(1),
        "logit_bias" | "metadata" => value.as_object().is_some_and(Map::is_empty),
        _ => false,
    }
}

/// Parse a request body for `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint, cx: &Context) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "invalid_request_error", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::new(400, "invalid_request_error", "the request body must be a JSON object"));
    };
    let prompt_field = match endpoint {
        Endpoint::Completions => "prompt",
        Endpoint::Chat => "messages",
    };
    for (name, value) in &fields {
        let known = COMMON_FIELDS.contains(&name.as_str()) || name == prompt_field || (endpoint == Endpoint::Chat && name == "max_completion_tokens");
        if !known && !value.is_null() && !is_off_value(name, value) {
            return Err(ApiError::field(name, format!("`{name}` is not supported by this server")));
        }
    }
    let get = |name: &str| fields.get(name).filter(|v| !v.is_null());

    if let Some(model) = get("model") {
        let name = model.as_str().ok_or_else(|| ApiError::field("model", format!("`model` must be a string, found {model}")))?;
        if name != cx.model_name {
            return Err(ApiError::field("model", format!("the model `{name}` is not served here; this server serves `{}`", cx.model_name)));
        }
    }
    if let Some(n) = get("n") {
        if n.as_u64() != Some(1) {
            return Err(ApiError::field("n", format!("`n` must be 1 (one choice per request), found {n}")));
        }
    }
    let stream = match get("stream") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| ApiError::field("stream", format!("`stream` must be true or false, found {v}")))?,
    };
    if let Some(options) = get("stream_options") {
        let ok = options.as_object().is_some_and(|o| o.iter().all(|(k, v)| k == "include_usage" && (v.is_boolean() || v.is_null())));
        if !ok {
            return Err(ApiError::field("stream_options", "`stream_options` may only hold `include_usage` (true or false); usage is always sent in the last chunk"));
        }
    }
    if let Some(user) = get("user") {
        user.as_str().ok_or_else(|| ApiError::field("user", format!("`user` must be a string, found {user}")))?;
    }

    let max_tokens_field = if endpoint == Endpoint::Chat && get("max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" };
    let max_new_tokens = match get(max_tokens_field) {
        None => DEFAULT_MAX_TOKENS,
        Some(v) => whole_number(v, max_tokens_field)?,
    };
    let d = cx.defaults;
    let sampling = SamplingParams {
        temperature: number(get("temperature"), "temperature", d.temperature)?,
        top_k: get("top_k").map(|v| whole_number(v, "top_k")).transpose()?.unwrap_or(d.top_k),
        top_p: number(get("top_p"), "top_p", d.top_p)?,
        min_p: number(get("min_p"), "min_p", d.min_p)?,
        repetition_penalty: number(get("repetition_penalty"), "repetition_penalty", d.repetition_penalty)?,
        seed: match get("seed") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| ApiError::field("seed", format!("`seed` must be a whole number ≥ 0, found {v}")))?,
        },
    };
    if let Err(e) = sampling.validate() {
        let param = e.message.split_whitespace().next().unwrap_or("").to_string();
        return Err(ApiError { status: 400, message: e.message, kind: "invalid_request_error", param: Some(param) });
    }
    let stops = stop_strings(get("stop"))?;
    // An extension (as vLLM's): keep generating after EOS, as `generate --no-eos-stop`.
    let ignore_eos = match get("ignore_eos") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| ApiError::field("ignore_eos", format!("`ignore_eos` must be true or false, found {v}")))?,
    };

    let prompt = match endpoint {
        Endpoint::Completions => completion_prompt(get("prompt"), cx)?,
        Endpoint::Chat => {
            let text = render_chat(&chat_messages(get("messages"))?, true);
            cx.tokenizer.encode(&text, cx.tokenizer.add_bos_token())
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::field(prompt_field, format!("`{prompt_field}` gives no tokens")));
    }
    let options = GenerateOptions { max_new_tokens, stop_at_eos: !ignore_eos, sampling };
    Ok(Parsed { prompt, options, stops, stream })
}

fn whole_number(v: &Value, name: &str) -> Result<usize, ApiError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ApiError::field(name, format!("`{name}` must be a whole number ≥ 0, found {v}")))
}

fn number(v: Option<&Value>, name: &str, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| ApiError::field(name, format!("`{name}` must be a number, found {v}"))),
    }
}

/// `stop`: a string or a list of (at most 16) non-empty strings.
fn stop_strings(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = |what: String| ApiError::field("stop", what);
    let stops: Vec<String> = match v {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(format!("`stop` must hold strings, found {s}"))))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad(format!("`stop` must be a string or a list of strings, found {other}"))),
    };
    if stops.len() > MAX_STOPS {
        return Err(bad(format!("`stop` holds {} strings; at most {MAX_STOPS}", stops.len())));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("`stop` holds an empty string".into()));
    }
    Ok(stops)
}

/// `prompt`: text (encoded as `generate --prompt` encodes it), a list of one text, or token ids
/// (fed as they are, as `generate --ids`).
fn completion_prompt(v: Option<&Value>, cx: &Context) -> Result<Vec<u32>, ApiError> {
    let bad = |what: String| ApiError::field("prompt", what);
    let encode = |text: &str| cx.tokenizer.encode(text, cx.tokenizer.add_bos_token());
    match v {
        None => Err(bad("`prompt` is required".into())),
        Some(Value::String(text)) => Ok(encode(text)),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => Ok(encode(items[0].as_str().unwrap_or(""))),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            let vocab = cx.config.vocab_size;
            items
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    id.as_u64()
                        .filter(|&id| id < vocab as u64)
                        .map(|id| id as u32)
                        .ok_or_else(|| bad(format!("`prompt[{i}]` = {id} is not a token id (0 to {})", vocab - 1)))
                })
                .collect()
        }
        Some(other) => Err(bad(format!(
            "`prompt` must be a string, a list of one string, or a list of token ids (one prompt per request), found {}",
            brief(other)
        ))),
    }
}

/// `messages`: a non-empty list of `{role, content}` (content a string or a list of text parts).
fn chat_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::field("messages", "`messages` must be a non-empty list of {role, content} objects"));
    };
    if items.is_empty() {
        return Err(ApiError::field("messages", "`messages` is empty"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |key: &str| format!("messages[{i}].{key}");
        let Value::Object(fields) = item else {
            return Err(ApiError::field(&format!("messages[{i}]"), format!("`messages[{i}]` must be an object, found {}", brief(item))));
        };
        if let Some(key) = fields.keys().find(|k| !["role", "content", "name"].contains(&k.as_str())) {
            return Err(ApiError::field(&at(key), format!("`{}` is not supported by this server", at(key))));
        }
        let role = match fields.get("role").and_then(Value::as_str) {
            None => return Err(ApiError::field(&at("role"), format!("`{}` must be a string", at("role")))),
            Some(name) => name.parse::<Role>().map_err(|e| ApiError::field(&at("role"), e.message))?,
        };
        let content = match fields.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let texts = parts.iter().map(|p| {
                    let text = p.get("text").and_then(Value::as_str).filter(|_| p.get("type").and_then(Value::as_str) == Some("text"));
                    text.ok_or_else(|| ApiError::field(&at("content"), format!("`{}` may only hold {{\"type\": \"text\", \"text\": ...}} parts", at("content"))))
                });
                texts.collect::<Result<Vec<_>, _>>()?.concat()
            }
            _ => return Err(ApiError::field(&at("content"), format!("`{}` must be a string or a list of text parts", at("content")))),
        };
        messages.push(ChatMessage::new(role, content));
    }
    Ok(messages)
}

/// A JSON value in a few words, for messages.
fn brief(v: &Value) -> String {
    match v {
        Value::Object(_) => "an object".into(),
        Value::Array(items) => format!("a list of {} items", items.len()),
        other => {
            let text = other.to_string();
            if text.len() > 40 { format!("{}…", &text[..text.char_indices().nth(40).map_or(text.len(), |(i, _)| i)]) } else { text }
        }
    }
}

/// The `usage` object.
pub fn usage(f: &Finished) -> Value {
    json!({ "prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens, "total_tokens": f.prompt_tokens + f.completion_tokens })
}

/// Names and times one reply's objects.
pub struct Reply<'a> {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: &'a str,
}

impl Reply<'_> {
    /// The whole answer of a request without `stream`.
    pub fn complete(&self, text: &str, finished: &Finished) -> Value {
        let reason = finished.finish_reason.as_str();
        let choice = match self.endpoint {
            Endpoint::Completions => json!({ "index": 0, "text": text, "logprobs": Value::Null, "finish_reason": reason }),
            Endpoint::Chat => json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": reason }),
        };
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        };
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice], "usage": usage(finished) })
    }

    /// One streamed chunk: a piece of text, the chat's opening role, or the last chunk (its
    /// finish_reason and the usage).
    pub fn chunk(&self, piece: Chunk) -> Value {
        let (text, role, finished) = match piece {
            Chunk::Text(text) => (Some(text), false, None),
            Chunk::Role => (Some(""), true, None),
            Chunk::Last(finished) => (None, false, Some(finished)),
        };
        let reason = finished.map(|f| f.finish_reason.as_str());
        let choice = match self.endpoint {
            Endpoint::Completions => json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": Value::Null, "finish_reason": reason }),
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(text) = text {
                    delta.insert("content".into(), text.into());
                }
                json!({ "index": 0, "delta": delta, "finish_reason": reason })
            }
        };
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        let mut chunk = json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice] });
        if let Some(f) = finished {
            chunk["usage"] = usage(f);
        }
        chunk
    }
}

/// What a streamed chunk carries.
pub enum Chunk<'a> {
    Text(&'a str),
    /// The chat's first chunk: `delta: {role: "assistant", content: ""}`.
    Role,
    Last(&'a Finished),
}
