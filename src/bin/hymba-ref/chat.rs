//! `hymba-ref chat`: a multi-turn chat in the Instruct format, streaming each reply.
//!
//! One user turn per line of stdin: typed at a terminal, or piped (`printf 'hi\nmore\n' |
//! hymba-ref chat`), so scripts and tests can drive it. `/reset` starts the conversation over
//! (the system message stays); `/quit`, `/exit` or end of input (Ctrl-D) end it; `/help` lists
//! the commands. The conversation's sequence is kept
//! between turns, so each turn feeds only the ids the sequence does not hold yet
//! ([`Conversation`]); the timing line on stderr says how many that was. stdout holds only the
//! replies, each followed by a newline; when stdin is not a terminal (piped turns), each reply
//! comes after a `=== reply K ===` line, so that replies spanning lines stay apart. A model
//! without a chat template (not an Instruct model, like the bundled demo model) gets a warning.

use crate::args::model_dir;
use crate::generate::{decode_summary, load_tokenizer, stdout_error};
use crate::generation_args::{warn_past_trained_length, GenerationArgs};
use crate::load::load_model;
use clap::Args;
use hymba_ref::features::generate::conversation::{Conversation, Turn};
use hymba_ref::{Error, ErrorKind, Result};
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ChatArgs {
    /// Checkpoint directory (an Instruct model, with its tokenizer) or its config.json.
    /// Default: the bundled model (not an Instruct model: a warning says so).
    #[arg(short = 'm', long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The system message, kept across /reset.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    generation: GenerationArgs,
}

/// What a line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    Message(&'a str),
    Reset,
    Quit,
    Help,
    Nothing,
}

fn parse_line(line: &str) -> Input<'_> {
    match line.trim() {
        "" => Input::Nothing,
        "/reset" => Input::Reset,
        "/quit" | "/exit" => Input::Quit,
        "/help" => Input::Help,
        _ => Input::Message(line.trim_end_matches(['\n', '\r'])),
    }
}

/// What `/help` prints (on stderr).
const HELP: &str = "commands: /reset starts the conversation over (the system message stays); /quit or /exit \
                    (or Ctrl-D) ends it; /help shows this. Any other line is your message.";

/// Warn on stderr when the checkpoint in `dir` has no chat template in its
/// `tokenizer_config.json`: it was not trained to chat (not an Instruct model), so its replies
/// only continue the text of the chat format.
pub fn warn_without_chat_template(dir: &Path) {
    let config = hymba_ref::base::files::read_text_capped(&dir.join("tokenizer_config.json"), hymba_ref::base::files::CONFIG);
    let template = config.ok().and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    if template.is_some_and(|config| config["chat_template"].is_string()) {
        return;
    }
    eprintln!(
        "warning: {} has no chat template (no \"chat_template\" in tokenizer_config.json): it is not an Instruct \
         model and was not trained to chat, so its replies only continue the text of the Instruct format \
         (the bundled demo model writes fortune cookies); use an Instruct checkpoint such as Hymba-1.5B-Instruct to chat",
        dir.display()
    );
}

pub fn run(args: ChatArgs) -> Result<()> {
    args.generation.start_thread_pool()?;
    let dir = model_dir(args.model.as_deref())?;
    let loaded = load_model(&dir, !args.generation.no_prefix_cache, args.generation.weights)?;
    let model = &loaded.model;
    let tokenizer = load_tokenizer(&dir)?;
    let options = args.generation.options(&dir)?;
    let mut conversation = Conversation::new(model, &tokenizer, args.system.as_deref());
    eprintln!("{}", loaded.timing());
    warn_without_chat_template(&dir);
    let interactive = io::stdin().is_terminal();
    if interactive {
        eprintln!("chat with {}: type a message, then Enter; /reset starts over; /quit or Ctrl-D ends; /help", dir.display());
    }
    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    let mut turn = 0;
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        let read = stdin.read_line(&mut line).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => Error::input(format!("stdin line {} is not valid UTF-8", turn + 1)),
            _ => Error::new(ErrorKind::Io, format!("cannot read stdin: {e}")),
        })?;
        if read == 0 {
            if interactive {
                eprintln!();
            }
            return Ok(());
        }
        match parse_line(&line) {
            Input::Nothing => continue,
            Input::Quit => return Ok(()),
            Input::Help => eprintln!("{HELP}"),
            Input::Reset => {
                conversation.reset();
                eprintln!("(conversation reset)");
            }
            Input::Message(text) => {
                turn += 1;
                let mut out = io::stdout().lock();
                if !interactive {
                    writeln!(out, "=== reply {turn} ===").map_err(stdout_error)?;
                }
                let result = conversation.reply(text, &options, &args.generation.stop, |piece| {
                    out.write_all(piece.as_bytes()).and_then(|()| out.flush()).map_err(stdout_error)
                })?;
                writeln!(out).and_then(|()| out.flush()).map_err(stdout_error)?;
                warn_past_trained_length(&model.config, result.conversation_tokens, options.max_new_tokens);
                eprintln!("turn {turn}: {}", turn_stats(&result));
            }
        }
    }
}

/// `prefill: 14 new tokens (of 85 in the conversation) in 0.010 s (1400.0 tok/s) | decode: ...`
fn turn_stats(turn: &Turn) -> String {
    format!(
        "prefill: {} new tokens (of {} in the conversation) in {:.3} s ({:.1} tok/s) | {}",
        turn.prefilled_tokens,
        turn.conversation_tokens,
        turn.prefill_seconds,
        turn.prefilled_tokens as f64 / turn.prefill_seconds,
        decode_summary(&turn.generation.stats, turn.generation.stop_reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_commands_or_nothing() {
        assert_eq!(parse_line("hello there\n"), Input::Message("hello there"));
        assert_eq!(parse_line("  indented\r\n"), Input::Message("  indented"));
        assert_eq!(parse_line(" /reset \n"), Input::Reset);
        assert_eq!(parse_line("/reset please\n"), Input::Message("/reset please"));
        assert_eq!(parse_line(" \t\n"), Input::Nothing);
        assert_eq!((parse_line("/quit\n"), parse_line(" /exit\r\n")), (Input::Quit, Input::Quit));
        assert_eq!(parse_line("/help\n"), Input::Help);
        assert_eq!(parse_line("/quit now\n"), Input::Message("/quit now"));
    }
}
