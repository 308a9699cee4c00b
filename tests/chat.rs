//! `hymba-ref chat` and the [`Conversation`] behind it, on the bundled demo model, greedy: a
//! turn's reply is what one `generate` over the whole conversation's text gives, and a turn
//! feeds only the ids its sequence does not hold yet.

mod common;
use common::cli_with_stdin;
use hymba_ref::features::generate::conversation::Conversation;
use hymba_ref::features::generate::sampling::SamplingParams;
use hymba_ref::features::generate::text::generate_text;
use hymba_ref::features::generate::GenerateOptions;
use hymba_ref::model::Hymba;
use hymba_ref::tokenizer::{render_chat, ChatMessage, Role, Tokenizer};
use std::path::Path;

const MODEL: &str = hymba_ref::DEFAULT_MODEL_DIR;
const SYSTEM: &str = "You are a fortune cookie.";

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `generate` over `prompt` (already in the chat format), greedy: its stdout without the final
/// newline.
fn generate_reply(prompt: &str, max_new_tokens: &str) -> String {
    let args = ["generate", "--prompt", prompt, "--temperature", "0", "--max-new-tokens", max_new_tokens];
    let out = cli_with_stdin(&args, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).strip_suffix('\n').unwrap().to_string()
}

/// The replies of a piped chat's stdout: the text after each `=== reply K ===` line (K = 1, 2, ...),
/// each without its final newline.
fn replies(stdout: &str) -> Vec<String> {
    let mut replies: Vec<String> = Vec::new();
    for line in stdout.split_inclusive('\n') {
        match line.strip_prefix("=== reply ") {
            Some(header) => {
                assert_eq!(header, format!("{} ===\n", replies.len() + 1), "{stdout:?}");
                replies.push(String::new());
            }
            None => replies.last_mut().unwrap_or_else(|| panic!("text before the first header: {stdout:?}")).push_str(line),
        }
    }
    replies.into_iter().map(|r| r.strip_suffix('\n').unwrap_or_else(|| panic!("no newline: {r:?}")).to_string()).collect()
}

/// The `prefill: N new tokens (of T in the conversation)` figures of each turn's timing line.
fn prefill_counts(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("prefill: ")?.1;
            let (new, rest) = rest.split_once(" new tokens (of ")?;
            let total = rest.split_once(" in the conversation)")?.0;
            Some((new.parse().unwrap(), total.parse().unwrap()))
        })
        .collect()
}

#[test]
fn piped_two_turn_chat_equals_generate_over_the_conversation_and_prefills_only_the_new_turn() {
    let (user1, user2, n) = ("Tell me a fortune.", "Another one, please.", "24");
    let tokenizer = Tokenizer::from_dir(Path::new(MODEL)).unwrap();
    let encode = |messages: &[ChatMessage]| tokenizer.encode(&render_chat(messages, true), true);
    let system = ChatMessage::new(Role::System, SYSTEM);

    let out = cli_with_stdin(&["chat", "--system", SYSTEM, "--temperature", "0", "--max-new-tokens", n], format!("{user1}\n{user2}\n").as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Turn 1 is `generate --system` over the first message; turn 2 is `generate` over the text of
    // the whole conversation, turn 1's reply included.
    let first = [system.clone(), ChatMessage::new(Role::User, user1)];
    let reply1 = generate_reply(&render_chat(&first, true), n);
    assert!(!reply1.trim().is_empty());
    let whole = [first[0].clone(), first[1].clone(), ChatMessage::new(Role::Assistant, &reply1), ChatMessage::new(Role::User, user2)];
    let reply2 = generate_reply(&render_chat(&whole, true), n);
    assert_eq!(text(&out.stdout), format!("=== reply 1 ===\n{reply1}\n=== reply 2 ===\n{reply2}\n"));

    // Turn 1 fed its whole prompt. Turn 2 fed only what its sequence did not hold: the sequence
    // held turn 1's prompt and reply ids (all but the last, never fed back, unless the EOS ended
    // the reply), and here those are how the conversation's text encodes.
    let (ids1, ids2) = (encode(&first), encode(&whole));
    let stderr = text(&out.stderr);
    let counts = prefill_counts(&stderr);
    assert_eq!(counts.len(), 2, "{stderr}");
    assert_eq!(counts[0], (ids1.len(), ids1.len()));
    let turn1 = stderr.lines().find(|l| l.starts_with("turn 1:")).unwrap();
    let generated: usize = turn1.split_once("generated ").unwrap().1.split(' ').next().unwrap().parse().unwrap();
    let held = ids1.len() + if turn1.contains("stopped by end of sequence") { generated } else { generated - 1 };
    assert_eq!(counts[1], (ids2.len() - held, ids2.len()), "{stderr}");
    assert!(ids2.len() - held < ids2.len() - ids1.len(), "fewer than the ids after turn 1's prompt");
}

#[test]
fn reset_starts_over_and_blank_lines_are_not_turns() {
    let out = cli_with_stdin(&["chat", "--temperature", "0", "--max-new-tokens", "8"], b"Hello.\n\n/reset\nHello.\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let replies = replies(&stdout);
    // Both turns are the first of a conversation: the same prompt, the same greedy reply.
    assert_eq!(replies.len(), 2, "{stdout:?}");
    assert_eq!(replies[0], replies[1], "{stdout:?}");
    let stderr = text(&out.stderr);
    assert_eq!(prefill_counts(&stderr).iter().map(|c| c.0 == c.1).collect::<Vec<_>>(), [true, true], "{stderr}");
    assert!(stderr.contains("(conversation reset)"), "{stderr}");
}

#[test]
fn quit_and_exit_end_the_chat_help_lists_the_commands_and_a_model_without_template_is_named() {
    for quit in ["/quit", "/exit"] {
        let input = format!("Hello.\n/help\n{quit}\nNever sent.\n");
        let out = cli_with_stdin(&["chat", "--temperature", "0", "-n", "4"], input.as_bytes());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(replies(&text(&out.stdout)).len(), 1, "{quit}: the line after it is not a turn");
        assert_eq!(prefill_counts(&stderr).len(), 1, "{stderr}");
        assert!(stderr.contains("commands: /reset") && stderr.contains("/quit or /exit"), "{stderr}");
        // The demo model's tokenizer_config.json has no chat template: it is no Instruct model.
        assert!(stderr.contains("has no chat template") && stderr.contains("not an Instruct model"), "{stderr}");
    }
    // generate --chat warns the same way.
    let out = cli_with_stdin(&["generate", "--chat", "-p", "Hello.", "-n", "2"], b"");
    assert!(text(&out.stderr).contains("has no chat template"), "{}", text(&out.stderr));
}

#[test]
fn a_reply_whose_ids_are_not_its_texts_encoding_resumes_from_before_the_reply() {
    // Sampled hot, the reply starts with a space (" (4) Any"): its first id is `▁(`, but the chat
    // format strips the space, so the conversation's text encodes it differently and the ids the
    // sequence holds are no prefix of the next turn's. That turn resumes from the copy kept
    // before the reply (feeding the reply again) and gives what one generation over the
    // conversation's text gives.
    let model = Hymba::from_dir(Path::new(MODEL)).unwrap();
    let tokenizer = Tokenizer::from_dir(Path::new(MODEL)).unwrap();
    let greedy = GenerateOptions {
        max_new_tokens: 12,
        stop_at_eos: true,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
    };
    let hot = GenerateOptions {
        max_new_tokens: 4,
        sampling: SamplingParams { temperature: 1.5, seed: 0, ..SamplingParams::default() },
        ..greedy
    };
    let mut conversation = Conversation::new(&model, &tokenizer, None);
    let first = conversation.reply("Hello.", &hot, &[], |_| Ok(())).unwrap();
    assert!(first.reply.starts_with(' ') && !first.reply.trim().is_empty(), "{:?}", first.reply);
    let second = conversation.reply("Another one.", &greedy, &[], |_| Ok(())).unwrap();

    let messages = conversation.messages();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1].content, first.reply);
    let prompt = tokenizer.encode(&render_chat(&messages[..3], true), true);
    assert_eq!(second.conversation_tokens, prompt.len());
    // Held before the reply: turn 1's prompt but its last id.
    assert_eq!(second.prefilled_tokens, prompt.len() - (first.conversation_tokens - 1));
    let mut want = String::new();
    generate_text(&model, &tokenizer, &prompt, &greedy, &[], |t| {
        want.push_str(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(second.reply, want);
}
