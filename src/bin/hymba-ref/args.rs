//! Parsing helpers shared by the subcommands.

use hymba_ref::{Error, Result};

/// Parse a comma-separated list of token ids, e.g. `5,17,300`; name the bad entry on error.
pub fn parse_id_list(text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        return Err(Error::input("--ids: the token id list is empty"));
    }
    text.split(',')
        .enumerate()
        .map(|(i, item)| {
            let item = item.trim();
            item.parse::<u32>().map_err(|_| {
                Error::input(format!("--ids: entry {} ({item:?}) is not a token id (a non-negative integer)", i + 1))
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
