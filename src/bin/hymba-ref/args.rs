//! Parsing helpers shared by the subcommands.

use hymba_ref::{Error, Result};

/// `"1, 2,3"` → `[1, 2, 3]`. An empty list or a bad entry is an
/// [`InvalidInput`](hymba_ref::ErrorKind::InvalidInput) error naming it.
pub fn parse_id_list(text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        return Err(Error::input("--ids: the token id list is empty"));
    }
    text.split(',')
        .enumerate()
        .map(|(i, entry)| {
            entry.trim().parse::<u32>().map_err(|_| {
                Error::input(format!(
                    "--ids entry {} is {entry:?}, not a token id (a whole number from 0 to {})",
                    i + 1,
                    u32::MAX
                ))
            })
        })
        .collect()
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
    fn parses_ids_and_names_bad_entries() {
        assert_eq!(parse_id_list("1,2, 3").unwrap(), vec![1, 2, 3]);
        let e = parse_id_list("1,x").unwrap_err();
        assert_eq!(e.kind, hymba_ref::ErrorKind::InvalidInput);
        assert!(e.message.contains("entry 2 is \"x\""), "{e}");
        assert!(parse_id_list("").unwrap_err().message.contains("empty"));
        assert!(parse_id_list("1,,2").is_err());
        assert!(parse_id_list("-1").is_err());
        assert!(parse_id_list("4294967296").is_err());
    }
}
