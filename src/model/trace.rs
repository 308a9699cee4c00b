//! Watching the forward pass: a [`LayerObserver`] passed to [`super::Hymba::run`] (or
//! [`super::Hymba::forward_observed`]) sees, after every layer of every pass, what that layer computed
//! ([`LayerTrace`]: views of the pass's buffers and of each sequence's K/V; the keys copied out
//! of their blocks). Without an observer nothing is copied. [`super::Hymba::forward_traced`],
//! which the golden tests use, is one such observer ([`super::forward_trace`]).

use super::layer::LayerBuffers;
use super::segment::{Part, Pass};
use crate::config::LayerPlan;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

/// Called after every layer of every pass (with `&mut self`, so it can collect).
pub trait LayerObserver: Send {
    fn layer(&mut self, trace: &LayerTrace);
}

/// The K/V one part's queries attended to in a layer: its sequence's cache of the layer's
/// producer, after this pass's rows were appended. Rows are in cache order, each with its position.
pub struct KvView<'a> {
    /// (S, nkv, dqk), rotated: a copy, as rows, of the cache's blocks of keys
    pub keys: Array3<f32>,
    /// (S, nkv, dv)
    pub values: ArrayView3<'a, f32>,
    /// (S)
    pub positions: &'a [usize],
}

/// What one layer computed on the T rows of a pass.
pub struct LayerTrace<'a> {
    /// The layer (`plan.index`), its attention span and K/V source.
    pub plan: &'a LayerPlan,
    /// The segments in the pass: which rows belong to which segment of the call.
    pub parts: &'a [Part],
    /// (T): the absolute position of each row (meta tokens at 0..M).
    pub positions: &'a [usize],
    /// (T, H): the layer's input
    pub input: ArrayView2<'a, f32>,
    /// (T, nh, dqk): the queries after q_norm and RoPE
    pub q: ArrayView3<'a, f32>,
    /// One per part: the K/V its queries attended to.
    pub kv: Vec<KvView<'a>>,
    /// (T, D): the attention heads, concatenated
    pub attn: ArrayView2<'a, f32>,
    /// (T, D): the SSM's Δ after softplus (the decay of channel c at row t is `exp(Δ[t, c]·A[c])`)
    pub delta: ArrayView2<'a, f32>,
    /// (T, D): the SSM heads after the SiLU(z) gate
    pub ssm: ArrayView2<'a, f32>,
    /// (T, D): `fuse_heads(attn, ssm)`
    pub fused_heads: ArrayView2<'a, f32>,
    /// (T, H): the mixer's residual contribution, `fused_heads · out_projᵀ (+ bias)`
    pub mixer_output: ArrayView2<'a, f32>,
    /// (T, H): the layer's output
    pub output: ArrayView2<'a, f32>,
}

impl<'a> LayerTrace<'a> {
    /// The trace of layer `plan` after `pass` ran it: `input` (T, H) went in, `output` (T, H)
    /// came out, `buf` holds what it computed on the way.
    pub(crate) fn new(plan: &'a LayerPlan, pass: &'a Pass, input: &'a Array2<f32>, buf: &'a LayerBuffers, output: &'a Array2<f32>) -> LayerTrace<'a> {
        let Pass { segments, parts, positions, .. } = pass;
        let kv = parts
            .iter()
            .map(|part| {
                let cache = segments[part.segment].cache.kv[plan.kv_producer()].as_ref().expect("K/V of the producer");
                KvView { keys: cache.keys().to_rows(), values: cache.values(), positions: cache.positions() }
            })
            .collect();
        LayerTrace {
            plan,
            parts,
            positions,
            input: input.view(),
            q: buf.attention.q.view(),
            kv,
            attn: buf.attention.attn.view(),
            delta: buf.ssm_buffers.delta.view(),
            ssm: buf.ssm_buffers.y.view(),
            fused_heads: buf.fused_heads.view(),
            mixer_output: buf.mixer_output.view(),
            output: output.view(),
        }
    }
}

/// Any `FnMut(&LayerTrace)` closure is an observer.
impl<F: FnMut(&LayerTrace) + Send> LayerObserver for F {
    fn layer(&mut self, trace: &LayerTrace) {
        self(trace)
    }
}
