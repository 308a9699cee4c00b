//! The `perplexity` command, on the bundled demo model (its default `--model`).

mod common;
use common::TempDir;

use std::path::{Path, PathBuf};
use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::cli_command().args(args).output().expect("the binary runs")
}

fn heldout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo/heldout.txt")
}

/// A file `name` in `dir` with these bytes.
fn scratch_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn perplexity_of_the_heldout_text_matches_the_reference() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo/expected.json"))
            .unwrap(),
    )
    .unwrap();
    let case = &expected["perplexity"][0];
    assert_eq!(case["context"], 512, "the first golden uses the command's default window");
    let out = run(&["perplexity", "--file", heldout().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name:?} in {stdout}"));
        line[name.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(field("tokens scored:") as u64, case["tokens"].as_u64().unwrap(), "{stdout}");
    assert!(stdout.contains("(context 512, stride 256, "), "{stdout}");
    // The engine agrees with the reference to 1e-7 relative (tests/demo_model.rs); the command
    // prints 4 decimals of the perplexity and 6 of the NLL, so each may be off by half its last
    // printed digit on top of that.
    let want = case["perplexity"].as_f64().unwrap();
    assert!((field("perplexity:") - want).abs() <= 0.5e-4 + 1e-7 * want, "{stdout} vs reference {want}");
    let want = case["mean_nll"].as_f64().unwrap();
    assert!((field("mean NLL:") - want).abs() <= 0.5e-6 + 1e-7 * want, "{stdout} vs reference {want}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = TempDir::new("cli-perplexity");
    let not_utf8 = scratch_file(&dir, "latin1.txt", b"caf\xe9 au lait");
    let empty = scratch_file(&dir, "empty.txt", b"");
    let heldout = heldout();
    let cases: [(Vec<&str>, &str, i32); 5] = [
        (vec!["--file", not_utf8.to_str().unwrap()], "is not valid UTF-8 (invalid byte at offset 3)", 1),
        (vec!["--file", "/nonexistent-hymba-text.txt"], "/nonexistent-hymba-text.txt", 1),
        (vec!["--file", empty.to_str().unwrap()], "has no tokens to score", 1),
        (vec!["--file", heldout.to_str().unwrap(), "--context", "64", "--stride", "64"], "--stride 64: must be below --context (64)", 2),
        (vec!["--file", heldout.to_str().unwrap(), "--model", "/nonexistent-hymba-dir"], "/nonexistent-hymba-dir", 1),
    ];
    for (args, needle, code) in cases {
        let out = run(&[&["perplexity"], args.as_slice()].concat());
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
