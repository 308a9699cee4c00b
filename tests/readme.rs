//! The README's commands and the examples `hymba-ref --help` ends with run as written, on the
//! bundled demo model, from a directory that looks like a fresh clone (its `tests/` and
//! `reference/`): each exits 0, and where the README shows the output (`$ hymba-ref ...` in a
//! ```text block) stdout is exactly that. Commands that take minutes (`bench` on any config but
//! `small`) or run until stopped (`serve`, tested in `tests/serve.rs`) are left out, and so are
//! lines that are not `hymba-ref` commands (`cargo test`, installing packages, training the demo
//! model).

mod common;
use common::TempDir;
use std::path::Path;
use std::process::Command;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A command from a code block, and the stdout shown under it, if any.
#[derive(Debug)]
struct Example {
    command: String,
    shown: Option<String>,
}

/// Every `hymba-ref` command in `markdown`'s code blocks (indented or fenced; `cargo run
/// --release --` counts as `hymba-ref`; a line ending in `\` goes on), with the output a
/// ```text block shows after a `$ ` line.
fn examples(markdown: &str) -> Vec<Example> {
    let mut found: Vec<Example> = Vec::new();
    let (mut fenced, mut pending) = (false, String::new());
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let code = match (fenced, line.strip_prefix("    ")) {
            (true, _) => line,
            (false, Some(code)) => code,
            (false, None) => continue,
        };
        pending.push_str(code.trim_end_matches('\\'));
        if code.ends_with('\\') {
            continue;
        }
        let text = std::mem::take(&mut pending);
        let (command, shows) = match text.strip_prefix("$ ") {
            Some(command) => (command.to_string(), true),
            None => (text.trim().to_string(), false),
        };
        let command = command.replace("cargo run --release -- ", "hymba-ref ");
        let is_command = command.starts_with("hymba-ref ") || command.contains("| hymba-ref ");
        match (is_command, found.last_mut()) {
            (true, _) => found.push(Example { command, shown: (fenced && shows).then(String::new) }),
            (false, Some(Example { shown: Some(shown), .. })) if fenced => shown.push_str(&format!("{text}\n")),
            _ => {}
        }
    }
    for example in &mut found {
        // The blank line between a shown output and the next `$ ` line is not part of it.
        if let Some(shown) = &mut example.shown {
            *shown = format!("{}\n", shown.trim_end_matches('\n'));
        }
    }
    found
}

/// Whether a command takes minutes or runs until stopped: a benchmark of anything bigger than the
/// `small` config, or `serve` (tested on its own in `tests/serve.rs`).
fn takes_minutes(command: &str) -> bool {
    (command.contains("hymba-ref bench") && !command.contains("--configs small ")) || command.contains("hymba-ref serve")
}

/// Run `command` with `sh`, `hymba-ref` on the PATH, in `dir`; its stdout.
fn run(command: &str, dir: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_hymba-ref")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command}\nexit {:?}: {stderr}", out.status.code());
    assert!(!stderr.contains("error"), "{command}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// A directory with the repository's `tests/` and `reference/` (the demo model), where commands
/// may write files (`explain --html`).
fn fresh_clone() -> TempDir {
    let dir = TempDir::new("readme");
    for name in ["tests", "reference"] {
        std::os::unix::fs::symlink(Path::new(MANIFEST_DIR).join(name), dir.join(name)).unwrap();
    }
    dir
}

#[test]
fn every_short_readme_command_runs_as_written_and_prints_what_the_readme_shows() {
    let readme = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("README.md")).unwrap();
    let all = examples(&readme);
    let (long, short): (Vec<&Example>, Vec<&Example>) = all.iter().partition(|e| takes_minutes(&e.command));
    assert!(short.len() >= 8 && long.len() <= 8, "short: {short:#?}\nleft out: {long:#?}");
    assert_eq!(short.iter().filter(|e| e.shown.is_some()).count(), 2, "{short:#?}");
    let dir = fresh_clone();
    for example in short {
        let stdout = run(&example.command, &dir.0);
        if let Some(shown) = &example.shown {
            assert_eq!(&stdout, shown, "{}", example.command);
        }
        if example.command.contains("| hymba-ref detokenize --skip-special") {
            let text = example.command.split('"').nth(1).unwrap();
            assert_eq!(stdout, format!("{text}\n"), "the round trip gives back the text");
        }
        if example.command == "hymba-ref inspect --model 1.5b" {
            assert!(stdout.contains("78.9 MB") && stdout.contains("503.3 MB"), "the README's cache claim: {stdout}");
        }
    }
    assert!(dir.join("explain-demo.html").is_file(), "explain --html wrote its page");
    assert!(dir.join("demo-q8/config.json").is_file(), "quantize wrote a checkpoint");
}

#[test]
fn every_help_example_runs_as_written() {
    let help = run("hymba-ref --help", Path::new(MANIFEST_DIR));
    let examples: Vec<&str> = help.lines().filter_map(|l| l.strip_prefix("  ")).filter(|l| l.contains("hymba-ref ")).collect();
    assert_eq!(examples.len(), 6, "{help}");
    let dir = fresh_clone();
    for command in examples {
        assert!(!takes_minutes(command), "{command}");
        let stdout = run(command, &dir.0);
        assert!(!stdout.trim().is_empty(), "{command} printed nothing");
    }
}

#[test]
fn commands_are_found_in_both_kinds_of_code_block() {
    let markdown = "Text.\n\n    hymba-ref a \\\n        --b 1\n    cargo test\n\n```text\n$ cargo run --release -- c\n one\n\ttwo\n\n$ hymba-ref d\nthree\n```\n    printf 'x' | hymba-ref e\n";
    let found: Vec<(String, Option<String>)> = examples(markdown).into_iter().map(|e| (e.command, e.shown)).collect();
    let want = [
        ("hymba-ref a     --b 1", None),
        ("hymba-ref c", Some(" one\n\ttwo\n")),
        ("hymba-ref d", Some("three\n")),
        ("printf 'x' | hymba-ref e", None),
    ];
    assert_eq!(found, want.map(|(c, s)| (c.to_string(), s.map(str::to_string))));
}
