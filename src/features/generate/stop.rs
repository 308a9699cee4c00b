//! Stop strings, checked on the decoded text as it streams out.
//!
//! Text arrives in pieces (one per token). A stop string may span several pieces, so text that
//! could still turn out to be the start of a stop string is held back until the next piece
//! settles it. When a stop string appears, the text before it is released and the stop string
//! and everything after it are dropped.

use crate::base::error::{Error, Result};

/// Watches streamed text for any of a set of stop strings.
#[derive(Debug, Clone)]
pub struct StopChecker {
    stops: Vec<String>,
    /// Text received but not yet released: a possible start of a stop string.
    pending: String,
    stopped: bool,
}

/// What [`StopChecker::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Text that is safe to show now.
    pub text: String,
    /// A stop string was found: generation should end (and `text` is the last of it).
    pub stopped: bool,
}

impl StopChecker {
    /// A checker for `stops`; refuses an empty stop string (it would stop before any text).
    pub fn new(stops: Vec<String>) -> Result<StopChecker> {
        if stops.iter().any(String::is_empty) {
            return Err(Error::input("a stop string is empty"));
        }
        Ok(StopChecker { stops, pending: String::new(), stopped: false })
    }

    /// Add the next piece of decoded text; returns what can be shown now. After a stop string
    /// has been found, every further piece is swallowed.
    pub fn push(&mut self, piece: &str) -> Checked {
        if self.stopped {
            return Checked { text: String::new(), stopped: true };
        }
        self.pending.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(at) = first_stop {
            self.pending.truncate(at);
            self.stopped = true;
            return Checked { text: std::mem::take(&mut self.pending), stopped: true };
        }
        let hold_from = self.longest_partial_stop();
        let held = self.pending.split_off(hold_from);
        Checked { text: std::mem::replace(&mut self.pending, held), stopped: false }
    }

    /// Generation ended without a stop string: release the text held back.
    pub fn finish(self) -> String {
        self.pending
    }

    /// Where the longest suffix of `pending` that is a proper prefix of some stop string
    /// begins (`pending.len()` if none).
    fn longest_partial_stop(&self) -> usize {
        self.pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut c = StopChecker::new(stops.iter().map(|s| s.to_string()).collect()).unwrap();
        let mut shown = Vec::new();
        for p in pieces {
            let out = c.push(p);
            shown.push(out.text);
            if out.stopped {
                return (shown, true, String::new());
            }
        }
        (shown, false, c.finish())
    }

    #[test]
    fn text_without_stops_passes_through() {
        assert_eq!(run(&[], &["ab", "c"]), (vec!["ab".into(), "c".into()], false, String::new()));
        assert_eq!(run(&["xyz"], &["ab", "c"]), (vec!["ab".into(), "c".into()], false, String::new()));
    }

    #[test]
    fn a_stop_string_spanning_pieces_is_cut_with_what_follows() {
        let (shown, stopped, _) = run(&["END"], &["hello E", "N", "Dless", "more"]);
        assert_eq!(shown, vec!["hello ", "", ""]);
        assert!(stopped);
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]).0, vec!["a", ""]);
    }

    #[test]
    fn a_false_start_is_released_later() {
        let (shown, stopped, rest) = run(&["END"], &["hello E", "N", "d", " E"]);
        assert_eq!(shown, vec!["hello ", "", "ENd", " "]);
        assert!(!stopped);
        assert_eq!(rest, "E");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (shown, stopped, _) = run(&["bc", "abcd"], &["xabcd"]);
        assert_eq!(shown, vec!["x"]); // "abcd" starts first, though listed second
        assert!(stopped);
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        let (shown, _, rest) = run(&["éé!"], &["aé", "é", "?"]);
        assert_eq!(shown, vec!["a", "", "éé?"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn an_empty_stop_string_is_refused() {
        assert!(StopChecker::new(vec!["ok".into(), String::new()]).is_err());
    }
}
