//! A sequence being generated or scored: its state (the [`HybridCache`]: K/V per producing
//! layer, SSM and conv state, the next position) and the scratch buffers its passes write into.

use super::pass::Scratch;
use crate::state::cache::HybridCache;
use crate::config::HymbaConfig;

/// One sequence: what it carries from one call to the next (`cache`), and the activations of its
/// last pass (`scratch`), kept so that the next pass reuses their memory. The scratch is not
/// state: nothing in it is read before it is written, and two sequences are equal when their
/// caches are.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub cache: HybridCache,
    pub scratch: Scratch,
}

impl Sequence {
    /// An empty sequence, before its meta tokens: the first call on it runs them (positions
    /// 0..M) before its ids. [`super::Hymba::new_sequence`] returns one that already holds them.
    pub fn new(cfg: &HymbaConfig) -> Sequence {
        Sequence { cache: HybridCache::new(cfg), scratch: Scratch::default() }
    }

    /// The position of the next token (meta tokens included).
    pub fn next_position(&self) -> usize {
        self.cache.next_position
    }

    /// Make room in every K/V cache for `tokens` more tokens (see [`HybridCache::reserve`]).
    pub fn reserve(&mut self, tokens: usize) {
        self.cache.reserve(tokens);
    }
}

impl PartialEq for Sequence {
    fn eq(&self, other: &Sequence) -> bool {
        self.cache == other.cache
    }
}
