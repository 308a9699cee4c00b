//! A batch of segments, the unit the layers work on (see [`super::pass`]): each segment is new
//! rows of one sequence; a pass stacks the rows of its segments into one (T, H) array.

use super::rope::RopeAngles;
use crate::state::cache::{HybridCache, SsmState};
use crate::kernels::matrix::RowKind;
use ndarray::{ArrayViewMut, Axis, RemoveAxis, Slice};
use rayon::prelude::*;
use std::ops::Range;

/// Which of a segment's final hidden rows (after the last layer, before the final norm) a call
/// keeps: what the final norm and `lm_head` will be applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Only the last row: the next-token logits (generation).
    LastRow,
    /// Every row (meta rows included when the call runs them): logits at every position.
    AllRows,
}

/// New rows of one sequence in a call: the meta tokens first if the sequence is empty, then the
/// embeddings of `ids`.
#[derive(Debug)]
pub struct Segment<'a> {
    /// The sequence's state, extended by this segment's rows.
    pub cache: &'a mut HybridCache,
    pub ids: &'a [u32],
    pub keep: Keep,
}

impl<'a> Segment<'a> {
    pub fn new(cache: &'a mut HybridCache, ids: &'a [u32], keep: Keep) -> Segment<'a> {
        Segment { cache, ids, keep }
    }
}

/// The rows of one segment in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The segment's index in the call.
    pub segment: usize,
    /// Its rows in the pass's (T, H) stack.
    pub rows: Range<usize>,
    /// Which of the rows the call feeds the segment these are (0 = its first, meta rows first).
    pub fed: Range<usize>,
    /// The RoPE base of the segment's call (`None`: no RoPE).
    pub rope_base: Option<f64>,
}

/// The segments of a pass as a layer sees them: each part's rows with its sequence's cache, and
/// the RoPE angles of every row.
pub struct Pass<'p, 'a> {
    pub(crate) segments: &'p mut [Segment<'a>],
    pub(crate) parts: &'p [Part],
    /// (T): the absolute position of each row
    pub(crate) positions: &'p [usize],
    /// (T, dqk/2): the rows' RoPE angles (rows of parts without RoPE unset)
    pub(crate) rope: &'p RopeAngles,
    /// What the pass's rows are for the projections: [`RowKind::OnePerSequence`] when every part is
    /// one row (a batched decode step: each row's products then equal its sequence's alone).
    pub(crate) kind: RowKind,
}

impl<'p, 'a> Pass<'p, 'a> {
    pub(crate) fn new(segments: &'p mut [Segment<'a>], parts: &'p [Part], positions: &'p [usize], rope: &'p RopeAngles) -> Pass<'p, 'a> {
        Pass { segments, parts, positions, rope, kind: row_kind(parts) }
    }

    /// Each part of the pass, in row order, with the cache of its sequence.
    pub fn parts_mut<'s>(&'s mut self) -> impl Iterator<Item = (&'s Part, &'s mut HybridCache)> + use<'s, 'p, 'a> {
        let mut segments = self.segments.iter_mut().enumerate();
        self.parts.iter().map(move |part| {
            // Parts come in segment order, one per segment: walk forward to this one.
            let (_, segment) = segments.find(|(i, _)| *i == part.segment).expect("parts in segment order");
            (part, &mut *segment.cache)
        })
    }

    /// `f(part, its sequence's cache, its rows of out)` for each part of the pass, `out` being
    /// (T, ...) with the pass's rows: as [`for_each_part`] does it.
    pub fn for_each_part<D: RemoveAxis>(
        &mut self,
        mut out: ArrayViewMut<f32, D>,
        f: impl Fn(&Part, &mut HybridCache, ArrayViewMut<f32, D>) + Sync + Send,
    ) {
        let (parts, kind) = (self.parts, self.kind);
        match kind {
            RowKind::OnePerSequence => {
                let segments = self.one_segment_a_part();
                for_each_part(parts, kind, segments, out, |part, segment, out| f(part, segment.cache, out));
            }
            RowKind::Chunk => {
                for (part, cache) in self.parts_mut() {
                    f(part, cache, out.slice_axis_mut(Axis(0), Slice::from(part.rows.clone())));
                }
            }
        }
    }

    /// `f(part, its sequence's cache)` for each part of the pass: in parallel across sequences
    /// when every part is one row of its own sequence, as [`Pass::for_each_part`].
    pub fn for_each_cache(&mut self, f: impl Fn(&Part, &mut HybridCache) + Sync + Send) {
        let parts = self.parts;
        match self.kind {
            RowKind::OnePerSequence => {
                let segments = self.one_segment_a_part();
                segments.par_iter_mut().zip(parts.par_iter()).for_each(|(segment, part)| f(part, segment.cache));
            }
            RowKind::Chunk => self.parts_mut().for_each(|(part, cache)| f(part, cache)),
        }
    }

    /// The segments of a pass whose every part is one row of its own sequence: part i is row i
    /// and the only part of segment first + i (a pass takes whole segments in order).
    fn one_segment_a_part(&mut self) -> &mut [Segment<'a>] {
        let first = self.parts.first().map_or(0, |p| p.segment);
        debug_assert!(self.parts.iter().enumerate().all(|(i, p)| p.segment == first + i && p.rows == (i..i + 1)));
        &mut self.segments[first..first + self.parts.len()]
    }

    /// Move layer `layer`'s SSM state out of each part's sequence into `states`, in part order
    /// (the caches keep empty ones), so that the layer's SSM heads can hold them while its
    /// attention heads use the caches' K/V: the two branches then run side by side. A move, no
    /// copy; [`Pass::put_back_ssm_states`] undoes it.
    pub fn take_ssm_states(&mut self, layer: usize, states: &mut Vec<SsmState>) {
        debug_assert!(states.is_empty());
        for (_, cache) in self.parts_mut() {
            states.push(std::mem::take(&mut cache.ssm[layer]));
        }
    }

    /// Return the states [`Pass::take_ssm_states`] took, leaving `states` empty.
    pub fn put_back_ssm_states(&mut self, layer: usize, states: &mut Vec<SsmState>) {
        debug_assert_eq!(states.len(), self.parts.len());
        for ((_, cache), state) in self.parts_mut().zip(states.drain(..)) {
            cache.ssm[layer] = state;
        }
    }
}

/// What the rows of a pass made of `parts` are for the projections: [`RowKind::OnePerSequence`] when
/// every part is one row (a batched decode step: each row's products then equal its sequence's
/// alone), else [`RowKind::Chunk`].
pub fn row_kind(parts: &[Part]) -> RowKind {
    match parts.iter().all(|p| p.rows.len() == 1) {
        true => RowKind::OnePerSequence,
        false => RowKind::Chunk,
    }
}

/// `f(part, item, its rows of out)` for each part of a pass and its item (`items[i]` is part i's:
/// its sequence's cache, or a state taken from it), `out` being (T, ...) with the pass's rows. In
/// parallel across sequences when every part is one row of its own sequence (a batched decode
/// step: one parallel region for the batch, not one per sequence); one part after another
/// otherwise. Either way each part's work is the same.
pub fn for_each_part<T: Send, D: RemoveAxis>(
    parts: &[Part],
    kind: RowKind,
    items: &mut [T],
    mut out: ArrayViewMut<f32, D>,
    f: impl Fn(&Part, &mut T, ArrayViewMut<f32, D>) + Sync + Send,
) {
    debug_assert_eq!(parts.len(), items.len());
    match kind {
        RowKind::OnePerSequence => {
            (items.par_iter_mut().zip(parts.par_iter()))
                .zip(out.axis_chunks_iter_mut(Axis(0), 1).into_par_iter())
                .for_each(|((item, part), out)| f(part, item, out));
        }
        RowKind::Chunk => {
            for (part, item) in parts.iter().zip(items) {
                f(part, item, out.slice_axis_mut(Axis(0), Slice::from(part.rows.clone())));
            }
        }
    }
}
