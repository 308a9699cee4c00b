//! The one path through the layers, used by every entry point of [`super::Hymba`].
//!
//! A call runs a batch of **segments**: each segment is consecutive new rows of one sequence,
//! extending that sequence's [`crate::state::cache::HybridCache`]. Prefill is one segment of n rows, a
//! decode step one segment of 1 row, a batched decode step B segments of 1 row. The rows of all segments are
//! stacked into one (T, H) residual stream and go through the layers together, in passes of at
//! most [`MAX_ROWS_PER_PASS`] rows, evened out ([`rows_per_pass`]; a long segment is split across passes: its cache carries
//! everything from one pass to the next, so the result is the same). Inside a layer, row-wise
//! work (norms, projections, fusion, MLP) runs over all T rows at once; attention and the SSM's
//! conv and scan run per segment, on that sequence's own cache, positions and RoPE base.
//!
//! Meta tokens: a sequence's positions 0..M are the M learned meta tokens. A call on an empty
//! sequence feeds them first, then its ids, so they are run one way everywhere: the model runs
//! them once into the sequence every [`super::Hymba::new_sequence`] copies, and
//! [`super::Hymba::forward`] runs them with the prompt in one call (one RoPE base for the whole
//! call, as the full forward of docs/MODEL.md §3).
//!
//! An optional [`LayerObserver`] sees every layer of every pass ([`super::trace`]).

use super::layer::{hymba_layer, Layer, LayerBuffers};
use super::profile::{Phase, Profile};
use super::rope::RopeAngles;
use super::segment::{Keep, Part, Pass, Segment};
use super::trace::{LayerObserver, LayerTrace};
use crate::base::buffer::shaped;
use crate::checkpoint::weights::HymbaWeights;
use crate::config::HymbaConfig;
use crate::kernels::matrix::RowKind;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use std::ops::Range;

/// The most rows one pass sends through the layers: bounds the activation memory of long inputs.
pub const MAX_ROWS_PER_PASS: usize = 512;

/// The rows of each pass of a call that feeds `total` rows, passes of at most `max_rows`: as few
/// passes as that allows, of one size (the last one may be shorter by the rounding). 1,100 rows
/// go as 367, 367 and 366, where passes of 512 left a last one of 76 rows: too few GEMM tiles
/// and attention blocks to keep many threads busy.
pub fn rows_per_pass(total: usize, max_rows: usize) -> usize {
    total.div_ceil(total.div_ceil(max_rows.max(1)).max(1)).max(1)
}

/// What a call works out for each segment before its first pass.
#[derive(Debug, Clone, Copy)]
struct Planned {
    /// M for an empty sequence (the meta tokens go first), else 0.
    meta_rows: usize,
    /// meta_rows + ids: the rows this call feeds.
    rows: usize,
    /// The RoPE base for every row of the call (docs/MODEL.md §4: from the call's largest position).
    rope_base: Option<f64>,
    /// Where the segment's kept rows start in [`Scratch::kept`].
    first_kept: usize,
}

/// The buffers of a call (see [`crate::base::buffer`]), reused from call to call: a sequence keeps one
/// ([`super::Sequence`]); a batch of sequences shares one. Not state: nothing in it is read before
/// it is written.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    /// (T, H): the residual stream of the pass
    hidden: Array2<f32>,
    /// (T): the absolute position of each row
    positions: Vec<usize>,
    /// (T, dqk/2): the RoPE angles of each row, for every layer of the pass
    rope: RopeAngles,
    /// The segments' rows in the pass, in row order
    parts: Vec<Part>,
    /// One per segment of the call
    planned: Vec<Planned>,
    layer: LayerBuffers,
    /// (T, H): a copy of the layer's input, made only for an observer
    layer_input: Array2<f32>,
    /// (K, H): the kept final hidden rows, segment after segment
    kept: Array2<f32>,
    /// What the kept rows are: one per sequence when every segment keeps only its last row
    kept_kind: RowKind,
    /// (K, H), (K, V): the kept rows after the final norm, and their logits
    normed: Array2<f32>,
    logits: Array2<f32>,
    /// Time per phase, when recording (off by default; see [`super::profile`])
    profile: Profile,
}

impl Scratch {
    /// The rows the last call kept (see [`Keep`]), segment after segment, before the final norm.
    /// (K, H)
    pub fn kept(&self) -> ArrayView2<'_, f32> {
        self.kept.view()
    }

    /// The kept rows and what they are, with the buffers for them after the final norm (K, H),
    /// their logits (K, V), and the profile.
    pub(crate) fn kept_and_outputs(&mut self) -> (ArrayView2<'_, f32>, RowKind, &mut Array2<f32>, &mut Array2<f32>, &mut Profile) {
        (self.kept.view(), self.kept_kind, &mut self.normed, &mut self.logits, &mut self.profile)
    }

    /// The time per phase of the calls since profiling started ([`Scratch::profile_mut`]).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Set [`Profile::recording`] here to time the following calls per phase.
    pub fn profile_mut(&mut self) -> &mut Profile {
        &mut self.profile
    }
}

/// Run the segments through every layer, in passes of at most [`MAX_ROWS_PER_PASS`] rows
/// (evened out: [`rows_per_pass`]),
/// extending each segment's cache, and keep the final hidden rows each segment asks for
/// ([`Scratch::kept`]). `observer`, if any, sees every layer of every pass. The ids must be in the
/// vocabulary ([`super::Hymba::run`] checks them, then calls this).
pub fn run(
    cfg: &HymbaConfig,
    weights: &HymbaWeights,
    segments: &mut [Segment],
    scratch: &mut Scratch,
    observer: Option<&mut dyn LayerObserver>,
) {
    run_in_passes(cfg, weights, segments, scratch, observer, MAX_ROWS_PER_PASS);
}

/// [`run`] with passes of at most `max_rows` rows.
fn run_in_passes(
    cfg: &HymbaConfig,
    weights: &HymbaWeights,
    segments: &mut [Segment],
    scratch: &mut Scratch,
    mut observer: Option<&mut (dyn LayerObserver + '_)>,
    max_rows: usize,
) {
    plan_segments(cfg, segments, scratch);
    let max_rows = rows_per_pass(scratch.planned.iter().map(|p| p.rows).sum(), max_rows);
    scratch.parts.clear();
    let mut pass_rows = 0;
    for index in 0..scratch.planned.len() {
        let planned = scratch.planned[index];
        let mut fed = 0;
        while fed < planned.rows {
            let take = (planned.rows - fed).min(max_rows - pass_rows);
            let (rows, rope_base) = (pass_rows..pass_rows + take, planned.rope_base);
            scratch.parts.push(Part { segment: index, rows, fed: fed..fed + take, rope_base });
            (pass_rows, fed) = (pass_rows + take, fed + take);
            if pass_rows == max_rows {
                run_pass(cfg, weights, segments, scratch, observer.as_deref_mut());
                scratch.parts.clear();
                pass_rows = 0;
            }
        }
    }
    if pass_rows > 0 {
        run_pass(cfg, weights, segments, scratch, observer);
    }
}

/// Work out each segment's rows, RoPE base and kept rows; shape [`Scratch::kept`].
fn plan_segments(cfg: &HymbaConfig, segments: &[Segment], scratch: &mut Scratch) {
    scratch.planned.clear();
    let mut kept = 0;
    for segment in segments {
        let start = segment.cache.next_position;
        let meta_rows = if start == 0 { cfg.num_memory_tokens } else { 0 };
        let rows = meta_rows + segment.ids.len();
        let rope_base = cfg.rope.map(|r| r.base(cfg.head_dim_qk(), start + rows));
        scratch.planned.push(Planned { meta_rows, rows, rope_base, first_kept: kept });
        kept += match segment.keep {
            Keep::AllRows => rows,
            Keep::LastRow => rows.min(1),
        };
    }
    shaped(&mut scratch.kept, (kept, cfg.hidden_size));
    scratch.kept_kind = match segments.iter().all(|s| s.keep == Keep::LastRow) {
        true => RowKind::OnePerSequence,
        false => RowKind::Chunk,
    };
}

/// One pass of the parts in `scratch.parts` through every layer; then keep the rows asked for,
/// and advance each sequence past its rows (evicting K/V rows no future query can see).
fn run_pass(
    cfg: &HymbaConfig,
    weights: &HymbaWeights,
    segments: &mut [Segment],
    scratch: &mut Scratch,
    mut observer: Option<&mut (dyn LayerObserver + '_)>,
) {
    let Scratch { hidden, positions, rope, parts, planned, layer, layer_input, kept, profile, .. } = scratch;
    let parts: &[Part] = parts;
    let t = parts.last().map_or(0, |p| p.rows.end);
    let hidden = shaped(hidden, (t, cfg.hidden_size)); // (T, H)
    positions.clear();
    for part in parts {
        let segment = &segments[part.segment];
        let start = segment.cache.next_position;
        positions.extend(start..start + part.rows.len());
        let rows = hidden.slice_mut(s![part.rows.clone(), ..]);
        profile.time(Phase::Elementwise, || input_rows(weights, &planned[part.segment], segment.ids, part.fed.clone(), rows));
    }
    profile.time(Phase::Elementwise, || {
        rope.shape(t, cfg.head_dim_qk());
        for part in parts {
            if let Some(base) = part.rope_base {
                rope.compute(part.rows.clone(), &positions[part.rows.clone()], base);
            }
        }
    });
    // The pass runs on a worker of the thread pool, so each parallel loop inside it shares its
    // work with the other workers directly, rather than being queued from outside the pool and
    // waited for (a few microseconds each, ~10 loops a layer: it shows in decoding).
    rayon::scope(|_| {
        for (plan, w) in cfg.layers.iter().zip(&weights.layers) {
            if observer.is_some() {
                shaped(layer_input, hidden.dim()).assign(hidden);
            }
            let mut pass = Pass::new(&mut *segments, parts, positions, rope);
            hymba_layer(Layer { cfg, plan, w }, hidden, &mut pass, layer, profile);
            if let Some(observer) = observer.as_deref_mut() {
                observer.layer(&LayerTrace::new(plan, &pass, layer_input, layer, hidden));
            }
        }
    });
    for part in parts {
        let (segment, planned) = (&segments[part.segment], &planned[part.segment]);
        match segment.keep {
            Keep::AllRows => {
                let kept_rows = planned.first_kept + part.fed.start..planned.first_kept + part.fed.end;
                kept.slice_mut(s![kept_rows, ..]).assign(&hidden.slice(s![part.rows.clone(), ..]));
            }
            Keep::LastRow if part.fed.end == planned.rows => {
                kept.row_mut(planned.first_kept).assign(&hidden.row(part.rows.end - 1));
            }
            Keep::LastRow => {}
        }
    }
    // Advance each sequence past its rows, evicting the K/V rows no future query can see: in
    // parallel across the sequences of a batched decode step (an eviction moves a row of keys,
    // values and positions in each window cache, one thread's work each).
    let num_meta = cfg.num_memory_tokens;
    profile.time(Phase::KvCache, || {
        Pass::new(segments, parts, positions, rope).for_each_cache(|part, cache| cache.finish_chunk(part.rows.len(), num_meta))
    });
}

/// The input rows of a segment's rows `fed`: [meta tokens ; embeddings of ids] (docs/MODEL.md §3.1, forward
/// step 1), the meta tokens only for an empty sequence. → out (fed.len(), H)
fn input_rows(w: &HymbaWeights, planned: &Planned, ids: &[u32], fed: Range<usize>, mut out: ArrayViewMut2<f32>) {
    for (i, mut row) in fed.zip(out.rows_mut()) {
        match i.checked_sub(planned.meta_rows) {
            None => row.assign(&w.memory_tokens.row(i)), // meta token i
            Some(j) => w.embed_tokens.row_into(ids[j] as usize, row.as_slice_mut().expect("standard layout")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::random::RandomWeights;
    use crate::state::cache::{HybridCache, KvCache};

    fn model(rope: &str) -> (HymbaConfig, HymbaWeights) {
        let config = serde_json::json!({
            "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24,
            "num_memory_tokens": 3, "sliding_window": 7, "global_attn_idx": [1],
            "kv_reuse_group": [[0, 2]], "rope": true, "rope_type": rope,
            "orig_max_position_embeddings": 64, "mamba_d_state": 4, "mamba_d_conv": 3,
        });
        let cfg = HymbaConfig::from_json_str(&config.to_string()).unwrap();
        let weights = HymbaWeights::from_checkpoint(&cfg, &RandomWeights::new(&cfg, 7)).unwrap();
        (cfg, weights)
    }

    fn max_abs_diff(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The kept rows of `ids` fed as one segment to `cache`, in passes of at most `max_rows` rows.
    fn feed((cfg, w): &(HymbaConfig, HymbaWeights), cache: &mut HybridCache, ids: &[u32], keep: Keep, max_rows: usize) -> Array2<f32> {
        let mut scratch = Scratch::default();
        run_in_passes(cfg, w, &mut [Segment::new(cache, ids, keep)], &mut scratch, None, max_rows);
        scratch.kept().to_owned()
    }

    /// Long inputs go through the layers in passes of at most `MAX_ROWS_PER_PASS` rows; the result
    /// equals one pass, also for dynamic NTK past orig_max, since every pass of a call uses the
    /// call's RoPE base.
    #[test]
    fn passes_of_bounded_rows_equal_one_pass() {
        for rope in ["default", "dynamic_ntk"] {
            let model = model(rope);
            let ids: Vec<u32> = (0..MAX_ROWS_PER_PASS as u32 * 2 + 37).map(|i| (i * 31 + 5) % 50).collect();
            let split = feed(&model, &mut HybridCache::new(&model.0), &ids, Keep::AllRows, MAX_ROWS_PER_PASS);
            let whole = feed(&model, &mut HybridCache::new(&model.0), &ids, Keep::AllRows, usize::MAX);
            assert_eq!(split.nrows(), 3 + ids.len(), "meta rows, then one row per id");
            let err = max_abs_diff(split.view(), whole.view());
            assert!(err <= 1e-4, "{rope}: max |Δ| = {err}");
        }
    }

    /// Passes are as few as the bound allows and even: none is left with a handful of rows.
    #[test]
    fn passes_are_as_few_as_the_bound_allows_and_even() {
        assert_eq!(rows_per_pass(1100, 512), 367); // 367 + 367 + 366, not 512 + 512 + 76
        assert_eq!(rows_per_pass(1024, 512), 512);
        assert_eq!(rows_per_pass(513, 512), 257); // 257 + 256
        assert_eq!(rows_per_pass(1, 512), 1);
        assert_eq!(rows_per_pass(0, 512), 1);
        for total in 1..3000 {
            let (rows, passes) = (rows_per_pass(total, 512), total.div_ceil(512));
            assert!(rows <= 512 && total.div_ceil(rows) == passes, "{total} rows: passes of {rows}");
            assert!(rows * passes - total < passes, "{total} rows: the last pass short by the rounding only");
        }
    }

    /// A segment with no rows between two others (a sequence given no ids) gets no part and is
    /// left as it was, while the others get what they get alone: in a decode step (one row each,
    /// walked in parallel when no such gap is there) and in a chunk.
    #[test]
    fn a_segment_without_rows_between_two_others_is_left_as_it_was() {
        let model = model("default");
        let prompts: [Vec<u32>; 3] = [(0..9).map(|i| i * 7 % 50).collect(), (0..4).collect(), (0..6).map(|i| i * 3 % 50).collect()];
        for next in [&[11u32][..], &[11, 4, 9][..]] {
            let mut caches: Vec<HybridCache> = prompts.iter().map(|_| HybridCache::new(&model.0)).collect();
            for (cache, prompt) in caches.iter_mut().zip(&prompts) {
                feed(&model, cache, prompt, Keep::LastRow, usize::MAX);
            }
            let mut alone = [caches[0].clone(), caches[2].clone()];
            let want: Vec<Array2<f32>> = alone.iter_mut().map(|c| feed(&model, c, next, Keep::AllRows, usize::MAX)).collect();
            let untouched = caches[1].clone();
            let [a, b, c] = &mut caches[..] else { unreachable!() };
            let mut segments = [Segment::new(a, next, Keep::AllRows), Segment::new(b, &[], Keep::AllRows), Segment::new(c, next, Keep::AllRows)];
            let mut scratch = Scratch::default();
            run_in_passes(&model.0, &model.1, &mut segments, &mut scratch, None, usize::MAX);
            let (kept, n) = (scratch.kept(), next.len()); // (2n, H): a's rows, then c's
            assert_eq!(kept.nrows(), 2 * n);
            assert_eq!(kept.slice(s![..n, ..]), want[0].view(), "{n} ids: the first sequence as alone");
            assert_eq!(kept.slice(s![n.., ..]), want[1].view(), "{n} ids: the third sequence as alone");
            assert_eq!((&caches[0], &caches[1], &caches[2]), (&alone[0], &untouched, &alone[1]));
        }
    }

    /// Two sequences at different lengths, run as one batch (in one pass, or in passes that split
    /// them), give each the final hidden rows it gets alone, and leave each cache as alone.
    #[test]
    fn a_batch_of_segments_equals_each_segment_alone() {
        let model = model("default");
        let a_prompt: Vec<u32> = (0..20).map(|i| i * 7 % 50).collect();
        let b_prompt: Vec<u32> = (0..5).map(|i| i * 3 % 50).collect();
        let (a_next, b_next) = ([11u32, 4, 9], [23u32]);
        for max_rows in [usize::MAX, 2] {
            // Alone: each sequence fed its prompt (after the meta tokens), then its next ids.
            let mut alone = Vec::new();
            for (prompt, next) in [(&a_prompt, &a_next[..]), (&b_prompt, &b_next[..])] {
                let mut cache = HybridCache::new(&model.0);
                feed(&model, &mut cache, prompt, Keep::LastRow, max_rows);
                alone.push((feed(&model, &mut cache, next, Keep::AllRows, max_rows), cache));
            }
            // Together: the same prompts, then both next chunks as one batch.
            let (mut a, mut b) = (HybridCache::new(&model.0), HybridCache::new(&model.0));
            feed(&model, &mut a, &a_prompt, Keep::LastRow, max_rows);
            feed(&model, &mut b, &b_prompt, Keep::LastRow, max_rows);
            let mut scratch = Scratch::default();
            let mut segments =
                [Segment::new(&mut a, &a_next, Keep::AllRows), Segment::new(&mut b, &b_next, Keep::AllRows)];
            run_in_passes(&model.0, &model.1, &mut segments, &mut scratch, None, max_rows);
            let kept = scratch.kept(); // (3 + 1, H)
            let err_a = max_abs_diff(kept.slice(s![..3, ..]), alone[0].0.view());
            let err_b = max_abs_diff(kept.slice(s![3.., ..]), alone[1].0.view());
            assert!(err_a <= 1e-5 && err_b <= 1e-5, "max_rows {max_rows}: max |Δ| = {err_a}, {err_b}");
            for (together, (_, alone)) in [(&a, &alone[0]), (&b, &alone[1])] {
                assert_eq!(together.next_position, alone.next_position);
                for (kv, kv_alone) in together.kv.iter().zip(&alone.kv) {
                    let positions = |kv: &Option<KvCache>| kv.as_ref().map(|c| c.positions().to_vec());
                    assert_eq!(positions(kv), positions(kv_alone), "the same K/V rows");
                }
            }
        }
    }
}
