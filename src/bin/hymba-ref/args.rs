//! Parsing helpers shared by the subcommands.
//!
//! A flag value that is wrong on its own (`--ids 1,x`, `--stride 0`) is refused by a clap value
//! parser, so clap names the flag and exits with 2; one that is wrong only next to another
//! (`--prefill` past the number of ids) is an [`ErrorKind::Usage`] error, which also exits 2.

use hymba_ref::{base::files, Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// Token ids given on the command line: `1,15043,3186`, or the JSON array `tokenize` prints,
/// `[1, 15043, 3186]`. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds(pub Vec<u32>);

/// The value parser of `--ids`: an empty list or a bad entry is refused, naming the entry.
pub fn token_ids(text: &str) -> std::result::Result<TokenIds, String> {
    let trimmed = text.trim();
    let list = match trimmed.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or("a list that starts with '[' must end with ']'")?,
        None => trimmed,
    };
    if list.trim().is_empty() {
        return Err("the token id list is empty".into());
    }
    let ids = list.split(',').enumerate().map(|(i, entry)| {
        entry.trim().parse::<u32>().map_err(|_| {
            format!("entry {} is {entry:?}, not a token id (a whole number from 0 to {})", i + 1, u32::MAX)
        })
    });
    ids.collect::<std::result::Result<Vec<u32>, String>>().map(TokenIds)
}

/// The largest count of tokens (`--max-new-tokens`, `--context`, ...) a flag takes: positions are
/// counted in 32 bits' worth and no model is trained anywhere near this long.
pub const MAX_TOKENS: u64 = u32::MAX as u64;

/// A value parser for a whole number from `MIN` to `MAX`. A refused value (`-3`, `0` where 1 is
/// the least, `99999999999999999999`, `many`) gets a message with the allowed range; clap puts
/// the flag's name before it and exits with 2. Flags using it take `allow_negative_numbers`, so
/// that `-3` reaches it instead of being read as an unknown short flag.
pub fn count<const MIN: u64, const MAX: u64>(text: &str) -> std::result::Result<usize, String> {
    whole_number(text, MIN, MAX).and_then(|n| usize::try_from(n).map_err(|_| format!("{n} is too large for this machine")))
}

/// As [`count`], for a `u64` (`--seed`).
pub fn seed(text: &str) -> std::result::Result<u64, String> {
    whole_number(text, 0, u64::MAX)
}

/// `text` as a whole number in `min..=max`; the error names the range.
pub fn whole_number(text: &str, min: u64, max: u64) -> std::result::Result<u64, String> {
    let range = match max {
        u64::MAX => format!("a whole number ≥ {min}"),
        _ => format!("a whole number from {min} to {max}"),
    };
    match text.trim().parse::<i128>() {
        Ok(n) if n >= i128::from(min) && n <= i128::from(max) => Ok(n as u64),
        Ok(_) => Err(format!("out of range: expected {range}")),
        Err(_) => Err(format!("not a whole number: expected {range}")),
    }
}

/// `text` as a finite number accepted by `ok`, which `range` describes (`≥ 0`, `in (0, 1]`).
pub fn number_where(text: &str, ok: impl Fn(f64) -> bool, range: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        Ok(v) if v.is_finite() => Err(format!("out of range: expected a number {range}")),
        _ => Err(format!("not a finite number: expected a number {range}")),
    }
}

/// A value parser for a number > 0 (`--max-cache-gb`, `--time-budget`, ...).
pub fn positive(text: &str) -> std::result::Result<f64, String> {
    number_where(text, |v| v > 0.0, "> 0")
}

/// The most worker threads `--threads` may ask for: this many, or 4 per core if that is more.
const MAX_THREADS: usize = 1024;

/// The value parser of `--threads`: from 1 to the limit (at least [`MAX_THREADS`], 4 per core on
/// larger machines).
pub fn threads(text: &str) -> std::result::Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = MAX_THREADS.max(4 * cores);
    count::<1, { u64::MAX }>(text)
        .and_then(|n| if n <= limit { Ok(n) } else { Err(String::new()) })
        .map_err(|_| format!("expected a whole number from 1 to {limit} (this machine has {cores} cores)"))
}

/// The checkpoint directory a `--model` value names: the directory itself, or its `config.json`
/// (as `bench --configs` takes it). Without a value, the bundled demo model. It must exist.
pub fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = model else {
        let dir = PathBuf::from(hymba_ref::DEFAULT_MODEL_DIR);
        if dir.is_dir() {
            return Ok(dir);
        }
        let message = format!("the bundled model directory {} does not exist; pass --model DIR", dir.display());
        return Err(Error::new(ErrorKind::Io, message));
    };
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() {
        if path.file_name().is_some_and(|name| name == "config.json") {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return Ok(parent.to_path_buf());
        }
        return Err(Error::input(format!(
            "--model {}: not a checkpoint directory or its config.json",
            path.display()
        )));
    }
    if let Some(name) = path.to_str().filter(|name| crate::configs::NAMES.contains(name)) {
        return Err(Error::usage(
            "--model",
            name,
            "no such directory; that is a built-in config without weights, which only inspect and bench take",
        ));
    }
    let message = format!("model directory {} does not exist (give a checkpoint directory or its config.json)", path.display());
    Err(Error::new(ErrorKind::Io, message))
}

/// All of stdin as text (at most [`files::TEXT`] bytes), without the one final newline that
/// `echo` adds; when stdin is a terminal, a note on stderr first saying that `what` is read.
pub fn read_stdin_text(what: &str) -> Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("reading {what} from stdin (end it with Ctrl-D)");
    }
    let text = files::utf8(files::read_stdin_capped(files::TEXT)?, "stdin")?;
    Ok(match text.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line).to_string(),
        None => text,
    })
}

/// `1 run`, `3 runs`: `n` and `word`, plural unless `n` is 1.
pub fn counted(n: u64, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        _ => format!("{n} {word}s"),
    }
}

/// Write `text` to stdout. `println!` panics when stdout is a closed pipe (`hymba-ref ... | head`);
/// here a reader that stopped early is not an error, and any other failure is a typed error.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::io(std::path::Path::new("<stdout>"), "write to", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_in_both_forms_and_names_bad_entries() {
        assert_eq!(token_ids("1,2, 3").unwrap().0, vec![1, 2, 3]);
        assert_eq!(token_ids("[1, 15043]").unwrap().0, vec![1, 15043]);
        assert_eq!(token_ids(" [7] ").unwrap().0, vec![7]);
        assert!(token_ids("1,x").unwrap_err().contains("entry 2 is \"x\""));
        for empty in ["", "  ", "[]", "[ ]"] {
            assert!(token_ids(empty).unwrap_err().contains("empty"), "{empty:?}");
        }
        assert!(token_ids("[1, 2").unwrap_err().contains("']'"));
        for bad in ["1,,2", "-1", "4294967296", "[1],[2]"] {
            assert!(token_ids(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_the_range() {
        assert_eq!(count::<1, 10>("3"), Ok(3));
        assert_eq!(count::<0, 10>(" 0 "), Ok(0));
        assert_eq!(count::<2, 10>("1"), Err("out of range: expected a whole number from 2 to 10".into()));
        assert_eq!(count::<1, 10>("-3"), Err("out of range: expected a whole number from 1 to 10".into()));
        assert_eq!(count::<1, 10>("99999999999999999999").unwrap_err(), "out of range: expected a whole number from 1 to 10");
        assert_eq!(count::<1, { u64::MAX }>("many").unwrap_err(), "not a whole number: expected a whole number ≥ 1");
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-1").unwrap_err().contains("≥ 0"));
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "x"] {
            assert!(positive(bad).unwrap_err().contains("> 0"), "{bad}");
        }
        assert_eq!(threads("2"), Ok(2));
        for bad in ["0", "-1", "1000000", "two"] {
            assert!(threads(bad).unwrap_err().contains("from 1 to"), "{bad}");
        }
    }

    #[test]
    fn a_model_is_a_directory_or_its_config_json() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hymba-tokenizer");
        assert_eq!(model_dir(Some(&fixture)).unwrap(), fixture);
        let demo = Path::new(hymba_ref::DEFAULT_MODEL_DIR);
        assert_eq!(model_dir(Some(&demo.join("config.json"))).unwrap(), demo);
        assert_eq!(model_dir(None).unwrap(), demo);
        let e = model_dir(Some(&demo.join("model.safetensors"))).unwrap_err();
        assert!(e.message.contains("not a checkpoint directory"), "{e}");
        let e = model_dir(Some(Path::new("/no/such/dir"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        assert!(e.message.contains("/no/such/dir"), "{e}");
    }
}
