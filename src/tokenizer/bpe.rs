//! Byte-pair encoding: merging adjacent symbols by priority, in O(n log n).
//!
//! A BPE vocabulary comes with a *merge table*: for some pairs of adjacent pieces `(a, b)` it
//! says that `a` and `b` may be fused into the piece `ab`, and with what priority (its *rank*;
//! lower ranks merge first). Encoding a word starts from one symbol per character and repeatedly
//! fuses the adjacent pair of lowest rank, the leftmost one on ties, until no adjacent pair is in
//! the table.
//!
//! * Hugging Face `tokenizer.json` lists the merges explicitly; the rank is the line number.
//! * SentencePiece `tokenizer.model` has no merge list: two symbols may merge when their
//!   concatenation is a piece, and the pair whose *merged piece has the highest score* goes
//!   first. [`MergeTable`] stores both the same way: a SentencePiece score becomes a rank by
//!   sorting the distinct scores from highest to lowest (equal scores share a rank, so ties fall
//!   back to the leftmost pair, exactly as SentencePiece breaks them).
//!
//! The naive algorithm (scan all pairs, merge the best, rescan) is quadratic in the word length,
//! and a Llama tokenizer has no pre-tokenizer, so the "word" is the whole text. Here the symbols
//! form a doubly linked list and the candidate pairs sit in a binary heap keyed by
//! `(rank, position)`. A merge changes only the two pairs around the new symbol, so each merge
//! costs O(log n). Heap entries that a merge made stale are recognised when popped and skipped:
//! an entry is still valid exactly when the pair now at its position merges with its rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// What a pair of pieces merges into, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Merge {
    /// Lower ranks merge first.
    pub rank: u32,
    /// The id of the merged piece.
    pub merged: u32,
}

/// The pairs of piece ids that may merge.
#[derive(Debug, Clone, Default)]
pub(crate) struct MergeTable {
    map: FastMap<(u32, u32), Merge>,
}

/// One symbol of the word being encoded: a piece id in a doubly linked list. Positions are
/// `u32` indices into the word, which keeps symbols (12 bytes) and heap entries (8 bytes) small:
/// a long word's BPE is limited by cache misses, not arithmetic.
#[derive(Clone, Copy)]
struct Symbol {
    /// The piece id, or [`MERGED_AWAY`].
    id: u32,
    /// Position of the previous symbol, or [`NONE`].
    prev: u32,
    /// Position of the next symbol, or [`NONE`].
    next: u32,
}

/// No neighbour.
const NONE: u32 = u32::MAX;
/// The id of a symbol that has been merged into its left neighbour.
const MERGED_AWAY: u32 = u32::MAX;
/// The longest word merged in one piece (positions must stay below [`NONE`]).
const MAX_WORD: usize = u32::MAX as usize;

/// A heap entry: the pair starting at position `pos` merges with rank `rank`. Ordered by
/// `(rank, pos)`, wrapped in `Reverse` so that the heap pops the smallest first.
type Candidate = Reverse<(u32, u32)>;

impl MergeTable {
    /// Declare that `left` followed by `right` merges as `merge`. A later declaration of the
    /// same pair replaces the earlier one (as when Hugging Face reads a duplicated merge line).
    pub fn insert(&mut self, left: u32, right: u32, merge: Merge) {
        self.map.insert((left, right), merge);
    }

    pub fn get(&self, left: u32, right: u32) -> Option<Merge> {
        self.map.get(&(left, right)).copied()
    }

    /// A merger for this table, whose buffers are reused from word to word.
    pub fn merger(&self) -> Merger<'_> {
        Merger { table: self, symbols: Vec::new(), heap: BinaryHeap::new() }
    }
}

/// Applies a [`MergeTable`] to words.
pub(crate) struct Merger<'t> {
    table: &'t MergeTable,
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Candidate>,
}

impl Merger<'_> {
    /// Merge `word` (the initial symbols, one per character or byte) and append the resulting
    /// piece ids to `out`.
    pub fn merge_into(&mut self, word: &[u32], out: &mut Vec<u32>) {
        if word.len() > MAX_WORD {
            // No text comes near four billion symbols in one word; cut it rather than fail.
            for part in word.chunks(MAX_WORD) {
                self.merge_into(part, out);
            }
            return;
        }
        if word.len() < 2 {
            out.extend_from_slice(word);
            return;
        }
        let last = (word.len() - 1) as u32; // fits: word.len() <= MAX_WORD
        self.symbols.clear();
        self.symbols.extend(word.iter().zip(0..=last).map(|(&id, i)| Symbol {
            id,
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i == last { NONE } else { i + 1 },
        }));
        // All initial pairs at once: turning a list into a heap is O(n).
        let mut initial = std::mem::take(&mut self.heap).into_vec();
        initial.clear();
        initial.extend(
            word.windows(2)
                .zip(0..last)
                .filter_map(|(pair, pos)| self.table.get(pair[0], pair[1]).map(|m| Reverse((m.rank, pos)))),
        );
        self.heap = BinaryHeap::from(initial);

        while let Some(Reverse((rank, pos))) = self.heap.pop() {
            let left = self.symbols[pos as usize];
            if left.id == MERGED_AWAY || left.next == NONE {
                continue;
            }
            let right = self.symbols[left.next as usize];
            // The entry may be stale: merges since it was pushed may have changed the pair at
            // `pos`. Every pair present has its own entry, so this one is the smallest key of
            // all present pairs exactly when the pair now at `pos` still merges with `rank`.
            let Some(merge) = self.table.get(left.id, right.id).filter(|m| m.rank == rank) else { continue };
            // Fuse the right symbol into the left one and unlink it.
            self.symbols[left.next as usize].id = MERGED_AWAY;
            self.symbols[pos as usize].id = merge.merged;
            self.symbols[pos as usize].next = right.next;
            if right.next != NONE {
                self.symbols[right.next as usize].prev = pos;
                self.push_candidate(pos, right.next);
            }
            if left.prev != NONE {
                self.push_candidate(left.prev, pos);
            }
        }

        out.extend(self.symbols.iter().map(|s| s.id).filter(|&id| id != MERGED_AWAY));
    }

    fn push_candidate(&mut self, left: u32, right: u32) {
        let (l, r) = (self.symbols[left as usize].id, self.symbols[right as usize].id);
        if let Some(m) = self.table.get(l, r) {
            self.heap.push(Reverse((m.rank, left)));
        }
    }
}

/// A small, fast hasher for the lookups on the hot path of encoding: piece-id pairs in the
/// merge table, characters in the table of initial symbols.
///
/// The default SipHash is built to resist hash flooding by adversarial keys; these keys are not
/// adversarial (the tables are fixed when the tokenizer loads; the text only chooses which entries
/// are looked up), so a multiply-and-rotate hash in the style of rustc's `FxHasher` is enough.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of a toy vocabulary: 0 "a", 1 "b", 2 "c", 3 "ab", 4 "bc", 5 "abc", 6 "aa".
    fn table(merges: &[(u32, u32, u32, u32)]) -> MergeTable {
        let mut t = MergeTable::default();
        for &(l, r, rank, merged) in merges {
            t.insert(l, r, Merge { rank, merged });
        }
        t
    }

    fn run(t: &MergeTable, ids: &[u32]) -> Vec<u32> {
        let mut out = vec![99]; // merge_into appends
        t.merger().merge_into(ids, &mut out);
        out.remove(0);
        out
    }

    #[test]
    fn lowest_rank_merges_first() {
        // "abc": ab (rank 1) vs bc (rank 0): bc wins, then a+bc has no merge.
        let t = table(&[(0, 1, 1, 3), (1, 2, 0, 4)]);
        assert_eq!(run(&t, &[0, 1, 2]), vec![0, 4]);
        // With ab first, ab+c merges on to abc.
        let t = table(&[(0, 1, 0, 3), (1, 2, 1, 4), (3, 2, 2, 5)]);
        assert_eq!(run(&t, &[0, 1, 2]), vec![5]);
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        // "aaa" with a+a -> aa: the left pair merges, the third "a" stays.
        let t = table(&[(0, 0, 0, 6)]);
        assert_eq!(run(&t, &[0, 0, 0]), vec![6, 0]);
        assert_eq!(run(&t, &[0, 0, 0, 0, 0]), vec![6, 6, 0]);
    }

    #[test]
    fn stale_candidates_are_skipped() {
        // "abab": ab merges twice; the candidate (b, a) in the middle goes stale.
        let t = table(&[(0, 1, 0, 3), (1, 0, 1, 6)]);
        assert_eq!(run(&t, &[0, 1, 0, 1]), vec![3, 3]);
    }

    #[test]
    fn short_inputs_are_untouched() {
        let t = table(&[(0, 1, 0, 3)]);
        assert_eq!(run(&t, &[]), Vec::<u32>::new());
        assert_eq!(run(&t, &[1]), vec![1]);
    }
}
