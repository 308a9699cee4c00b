//! A batch of segments, the unit the layers work on (see [`super::pass`]): each segment is new
//! rows of one sequence; a pass stacks the rows of its segments into one (T, H) array.

use super::rope::RopeAngles;
use crate::state::cache::{HybridCache, SsmState};
use crate::kernels::matrix::RowKind;
use ndarray::{ArrayViewMut, ArrayViewMut2, Axis, RemoveAxis, Slice};
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

    /// The segments this pass has rows of, first to last: a pass takes the segments of its call
    /// in order, so these are consecutive (a segment with no rows between two others is among
    /// them, without a part). Segment `first + i` is item i of a walk ([`for_each_part`]).
    fn own_segments(&mut self) -> &mut [Segment<'a>] {
        let first = self.parts.first().map_or(0, |p| p.segment);
        let end = self.parts.last().map_or(0, |p| p.segment + 1);
        &mut self.segments[first..end]
    }

    /// `f(part, its sequence's cache, its rows of out)` for each part of the pass, `out` being
    /// (T, ...) with the pass's rows: [`for_each_part`] over the pass's segments.
    pub fn for_each_part<D: RemoveAxis>(
        &mut self,
        out: ArrayViewMut<f32, D>,
        f: impl Fn(&Part, &mut HybridCache, ArrayViewMut<f32, D>) + Sync + Send,
    ) {
        let (parts, kind) = (self.parts, self.kind);
        for_each_part(parts, kind, self.own_segments(), out, |part, segment, out| f(part, segment.cache, out));
    }

    /// `f(part, its sequence's cache)` for each part of the pass: [`Pass::for_each_part`] with
    /// no output rows.
    pub fn for_each_cache(&mut self, f: impl Fn(&Part, &mut HybridCache) + Sync + Send) {
        let no_columns = ArrayViewMut2::from_shape((self.positions.len(), 0), &mut []).expect("an empty (T, 0) view");
        self.for_each_part(no_columns, |part, cache, _| f(part, cache));
    }

    /// Move layer `layer`'s SSM state out of each of the pass's sequences into `states`, in
    /// segment order (the caches keep empty ones): the items of a [`for_each_part`] walk. The
    /// layer's SSM heads then hold them while its attention heads use the caches' K/V, so the
    /// two branches run side by side. A move, no copy; [`Pass::put_back_ssm_states`] undoes it.
    pub fn take_ssm_states(&mut self, layer: usize, states: &mut Vec<SsmState>) {
        debug_assert!(states.is_empty());
        states.extend(self.own_segments().iter_mut().map(|segment| std::mem::take(&mut segment.cache.ssm[layer])));
    }

    /// Return the states [`Pass::take_ssm_states`] took, leaving `states` empty.
    pub fn put_back_ssm_states(&mut self, layer: usize, states: &mut Vec<SsmState>) {
        let segments = self.own_segments();
        debug_assert_eq!(states.len(), segments.len());
        for (segment, state) in segments.iter_mut().zip(states.drain(..)) {
            segment.cache.ssm[layer] = state;
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

/// `f(part, its item, its rows of out)` for each part of a pass, `out` being (T, ...) with the
/// pass's rows and `items` one per segment of the pass, first to last (part p's is item
/// `p.segment − parts[0].segment`): its sequence's segment, or a state taken from it. The one
/// way the layers walk a pass. In parallel across sequences when every part is one row of its
/// own sequence (a batched decode step: one parallel region for the batch, not one per
/// sequence) and the parts are all the items; one part after another otherwise. Either way
/// each part's work is the same.
pub fn for_each_part<T: Send, D: RemoveAxis>(
    parts: &[Part],
    kind: RowKind,
    items: &mut [T],
    mut out: ArrayViewMut<f32, D>,
    f: impl Fn(&Part, &mut T, ArrayViewMut<f32, D>) + Sync + Send,
) {
    let first = parts.first().map_or(0, |p| p.segment);
    debug_assert!(parts.iter().all(|p| p.segment - first < items.len()));
    match kind {
        // Part i is then row i and item i (no segment without rows between two of them).
        RowKind::OnePerSequence if items.len() == parts.len() => {
            debug_assert!(parts.iter().enumerate().all(|(i, p)| p.segment == first + i && p.rows == (i..i + 1)));
            (items.par_iter_mut().zip(parts.par_iter()))
                .zip(out.axis_chunks_iter_mut(Axis(0), 1).into_par_iter())
                .for_each(|((item, part), out)| f(part, item, out));
        }
        _ => {
            for part in parts {
                f(part, &mut items[part.segment - first], out.slice_axis_mut(Axis(0), Slice::from(part.rows.clone())));
            }
        }
    }
}
