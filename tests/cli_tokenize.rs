//! The `tokenize` and `detokenize` commands, on the released tokenizer files in
//! `tests/fixtures/hymba-tokenizer`.

mod common;

use std::path::PathBuf;
use std::process::Output;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer")
}

fn run(args: &[&str]) -> Output {
    common::cli_command().args(args).output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn tokenize_prints_a_json_array() {
    let model = fixture_dir();
    let model = model.to_str().unwrap();
    assert_eq!(stdout(&run(&["tokenize", "--model", model, "--text", "Hello world"])), "[1,15043,3186]\n");
    assert_eq!(stdout(&run(&["tokenize", "--model", model, "--text", "Hello world", "--no-bos"])), "[15043,3186]\n");
    assert_eq!(stdout(&run(&["tokenize", "--model", model, "--text", "", "--no-bos"])), "[]\n");
    // Added-token text becomes the token, as in the released Hugging Face tokenizer.
    assert_eq!(
        stdout(&run(&["tokenize", "--model", model, "--text", "[PAD] inside text"])),
        "[1,32000,29871,2768,1426]\n"
    );
}

#[test]
fn detokenize_prints_the_text() {
    let model = fixture_dir();
    let model = model.to_str().unwrap();
    assert_eq!(stdout(&run(&["detokenize", "--model", model, "--ids", "15043,3186"])), "Hello world\n");
    assert_eq!(
        stdout(&run(&["detokenize", "--model", model, "--ids", "953, 29877, 2397, 29901, 29871, 243, 162, 169, 156"])),
        "emoji: 🦙\n"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = fixture_dir();
    let model = model.to_str().unwrap();
    let cases: [(&[&str], &str, i32); 5] = [
        (&["detokenize", "--model", model, "--ids", "1,x"], "entry 2 is \"x\"", 2),
        (&["detokenize", "--model", model, "--ids", "1,-3"], "entry 2 is \"-3\"", 2),
        (&["detokenize", "--model", model, "--ids", "[1, 2"], "must end with ']'", 2),
        (&["detokenize", "--model", model, "--ids", "1,32001"], "token id 32001 is out of range", 1),
        (&["tokenize", "--model", "/nonexistent-hymba-dir", "--text", "x"], "/nonexistent-hymba-dir", 1),
    ];
    for (args, needle, code) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
}

#[test]
fn tokenize_output_round_trips_through_detokenize() {
    // `tokenize` prints a JSON array; `detokenize` takes it as it is, and with --skip-special
    // gives back the text (without it, the BOS prints as `<s>`).
    let model = fixture_dir();
    let model = model.to_str().unwrap();
    for text in ["Hello world", "emoji: 🦙 and  two spaces", " leading space"] {
        let ids = stdout(&run(&["tokenize", "--model", model, "--text", text]));
        let ids = ids.trim_end();
        assert!(ids.starts_with("[1,"), "{ids}");
        let back = stdout(&run(&["detokenize", "--model", model, "--ids", ids, "--skip-special"]));
        assert_eq!(back, format!("{text}\n"), "{text:?} → {ids}");
        let kept = stdout(&run(&["detokenize", "--model", model, "--ids", ids]));
        assert!(kept.starts_with("<s>"), "{kept:?}");
    }
    assert_eq!(stdout(&run(&["detokenize", "--model", model, "--ids", "[1, 15043]", "--skip-special"])), "Hello\n");
}

#[test]
fn tokenize_piped_into_detokenize_gives_back_the_text() {
    // `hymba-ref tokenize --text T | hymba-ref detokenize --skip-special`, on the released
    // tokenizer and on the bundled model's (the default): detokenize reads the ids from stdin,
    // tokenize the text when --text is absent.
    let released = fixture_dir();
    for model in [released.to_str().unwrap(), hymba_ref::DEFAULT_MODEL_DIR] {
        for text in ["Hello world", "emoji 🦙🎉 and a flag 🇫🇷", "中文字符和日本語のテキスト", "tabs\tin\t\tthe\ttext", "a\nsecond line"] {
            let ids = stdout(&run(&["tokenize", "-m", model, "--text", text]));
            let back = common::cli_with_stdin(&["detokenize", "-m", model, "--skip-special"], ids.as_bytes());
            assert_eq!(stdout(&back), format!("{text}\n"), "{model}: {text:?} → {ids}");
            let from_stdin = common::cli_with_stdin(&["tokenize", "-m", model], format!("{text}\n").as_bytes());
            assert_eq!(stdout(&from_stdin), ids, "{model}: {text:?} on stdin");
        }
    }
    // Ids that are not ids, or none at all, on stdin: an error naming stdin.
    for (input, needle) in [(&b"1,x\n"[..], "entry 2 is \"x\""), (b"", "empty")] {
        let out = common::cli_with_stdin(&["detokenize"], input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("the ids read from stdin") && stderr.contains(needle), "{stderr}");
    }
}
