//! Parsing helpers shared by the subcommands.
//!
//! A flag value that is wrong on its own (`--ids 1,x`, `--stride 0`) is refused by a clap value
//! parser, so clap names the flag and exits with 2; one that is wrong only next to another
//! (`--prefill` past the number of ids) is an [`ErrorKind::Usage`] error, which also exits 2.

use hymba_ref::{Error, ErrorKind, Result};
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

/// A value parser for counts that must be at least `MIN` (`--stride`, `--threads`, ...).
pub fn at_least<const MIN: usize>(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(_) => Err(format!("must be at least {MIN}")),
        Err(_) => Err(format!("not a whole number (expected one ≥ {MIN})")),
    }
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
    let message = format!("model directory {} does not exist (give a checkpoint directory or its config.json)", path.display());
    Err(Error::new(ErrorKind::Io, message))
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

/// The most worker threads `--threads` may ask for: this many, or 4 per core if that is more.
const MAX_THREADS: usize = 1024;

/// Ok if `threads` is between 1 and the limit; the error names `--threads`.
pub fn check_threads(threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = MAX_THREADS.max(4 * cores);
    if threads == 0 || threads > limit {
        return Err(Error::input(format!(
            "--threads {threads}: must be between 1 and {limit} (this machine has {cores} cores)"
        )));
    }
    Ok(())
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
    fn counts_below_the_minimum_are_refused() {
        assert_eq!(at_least::<1>("3"), Ok(3));
        assert_eq!(at_least::<2>("1"), Err("must be at least 2".into()));
        assert!(at_least::<1>("many").unwrap_err().contains("whole number"));
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
