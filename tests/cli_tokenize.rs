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
