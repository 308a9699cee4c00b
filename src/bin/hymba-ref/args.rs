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
