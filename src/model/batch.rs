//! Continuous batching: sequences that decode together, one pass through the layers per step.
//!
//! ```text
//! seq    = model.new_sequence()
//! logits = model.next_token_logits(prompt, seq)   prefill, alone
//! id     = batch.add(seq)                         joins the batch, at any step
//! logits = batch.step(model, next_ids)            one decode step of every member: (B, V)
//! seq    = batch.remove(id)                       leaves, at any step
//! ```
//!
//! A step is one pass of B one-row segments ([`super::pass`]): the row-wise work (norms,
//! projections, fusion, MLP, `lm_head`) runs over the B rows at once, and its products read each
//! weight block from memory once for all of them ([`RowKind::OnePerSequence`]); attention and the
//! SSM's conv and scan run per sequence, on its own cache, position and window. Each row's
//! products add in the order of a one-row product, so every sequence's logits are bit for bit
//! those it gets decoding alone (tested), whoever else is in the batch.
//!
//! [`RowKind::OnePerSequence`]: crate::kernels::matrix::RowKind::OnePerSequence

use super::hymba::Hymba;
use super::pass::Scratch;
use super::profile::Profile;
use super::segment::{Keep, Segment};
use super::sequence::Sequence;
use crate::state::cache::HybridCache;
use crate::state::cache_plan::ScalarType;
use crate::base::error::{Error, Result};
use ndarray::ArrayView2;

/// A member of a [`Batch`], for as long as it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(u64);

/// Sequences decoding together. Members are kept in the order they joined; [`Batch::step`] takes
/// and returns one row per member in that order ([`Batch::ids`]).
#[derive(Debug, Default)]
pub struct Batch {
    members: Vec<(SequenceId, HybridCache)>,
    next_id: u64,
    /// The buffers of the batch's passes, shared by its members: (B, ·) each.
    scratch: Scratch,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Add a sequence (its prompt already fed, e.g. by [`Hymba::next_token_logits`]); it takes
    /// part in every step from the next on. Its own scratch is dropped: the batch has one.
    pub fn add(&mut self, seq: Sequence) -> SequenceId {
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        self.members.push((id, seq.cache));
        id
    }

    /// Take a member out of the batch (the others keep their order); `None` if it is not in it.
    pub fn remove(&mut self, id: SequenceId) -> Option<Sequence> {
        let at = self.members.iter().position(|(m, _)| *m == id)?;
        let (_, cache) = self.members.remove(at);
        Some(Sequence { cache, scratch: Scratch::default() })
    }

    /// The members, in the order of [`Batch::step`]'s rows.
    pub fn ids(&self) -> impl Iterator<Item = SequenceId> + '_ {
        self.members.iter().map(|(id, _)| *id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Bytes of K/V and SSM state the members' caches hold (as f32).
    pub fn cache_bytes(&self) -> usize {
        self.members.iter().map(|(_, cache)| cache.allocated_scalars().bytes(ScalarType::F32)).sum()
    }

    /// The time per phase of the steps since profiling started ([`Batch::profile_mut`]).
    pub fn profile(&self) -> &Profile {
        self.scratch.profile()
    }

    /// Set [`Profile::recording`] here to time the following steps per phase.
    pub fn profile_mut(&mut self) -> &mut Profile {
        self.scratch.profile_mut()
    }

    /// One decode step of every member: member i is fed `next_ids[i]`. → logits (B, V), row i for
    /// member i, a view of the batch's scratch. Fails, before running anything, if `next_ids`
    /// does not have one id per member or holds an id outside the vocabulary.
    pub fn step<'s>(&'s mut self, model: &Hymba, next_ids: &[u32]) -> Result<ArrayView2<'s, f32>> {
        if next_ids.len() != self.members.len() {
            return Err(Error::input(format!(
                "a batch step needs one id per sequence: got {} ids for {} sequences",
                next_ids.len(),
                self.members.len()
            )));
        }
        let mut segments: Vec<Segment> = (self.members.iter_mut())
            .zip(next_ids.chunks(1))
            .map(|((_, cache), id)| Segment::new(cache, id, Keep::LastRow))
            .collect();
        model.run(&mut segments, &mut self.scratch, None)?;
        model.kept_logits(&mut self.scratch) // (B, V)
    }
}
