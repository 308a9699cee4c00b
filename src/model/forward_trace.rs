//! [`Hymba::forward_traced`]: a full forward pass that keeps every layer's tensors, for the golden
//! tests. An observer of the one path ([`super::trace`]) that concatenates what each layer
//! computed across the passes.

use super::trace::{LayerObserver, LayerTrace};
use super::Hymba;
use crate::base::error::Result;
use ndarray::{Array2, ArrayView2, Axis};

/// What one layer computes over a whole forward pass (meta rows included), for golden tests.
pub struct LayerOutput {
    /// The layer's output (its input plus the mixer and MLP residuals). (M+n, H)
    pub hidden: Array2<f32>,
    /// The concatenated attention heads, before fusion. (M+n, D)
    pub attn: Array2<f32>,
    /// The SSM heads after the SiLU(z) gate, before fusion. (M+n, D)
    pub ssm: Array2<f32>,
    /// The mixer's residual contribution: `fuse_heads(attn, ssm) · out_projᵀ (+ bias)`. (M+n, H)
    pub mixer_output: Array2<f32>,
}

/// Everything a traced full forward pass computes (for golden tests).
pub struct ForwardTrace {
    /// (n, V), meta rows excluded
    pub logits: Array2<f32>,
    /// `hidden[i]` is the input of layer i (M+n, H); `hidden[L]` is the output of the final norm.
    pub hidden: Vec<Array2<f32>>,
    /// Per layer: attention heads, SSM heads, mixer output, layer output (all with meta rows).
    pub layers: Vec<LayerOutput>,
}

/// The observer behind [`Hymba::forward_traced`]: each layer's tensors, the rows of every pass
/// appended (a full forward is one sequence, so passes come in row order).
#[derive(Default)]
struct Collector {
    inputs: Vec<Array2<f32>>,
    layers: Vec<LayerOutput>,
}

impl LayerObserver for Collector {
    fn layer(&mut self, t: &LayerTrace) {
        let i = t.plan.index;
        if i == self.layers.len() {
            let empty = |like: ArrayView2<f32>| Array2::zeros((0, like.ncols()));
            self.inputs.push(empty(t.input));
            let (hidden, attn, ssm, mixer_output) = (empty(t.output), empty(t.attn), empty(t.ssm), empty(t.mixer_output));
            self.layers.push(LayerOutput { hidden, attn, ssm, mixer_output });
        }
        let (input, layer) = (&mut self.inputs[i], &mut self.layers[i]);
        for (all, pass) in [
            (input, t.input),
            (&mut layer.hidden, t.output),
            (&mut layer.attn, t.attn),
            (&mut layer.ssm, t.ssm),
            (&mut layer.mixer_output, t.mixer_output),
        ] {
            all.append(Axis(0), pass).expect("same width");
        }
    }
}

impl Hymba {
    /// [`Hymba::forward`], keeping every hidden state and per-layer intermediate, meta rows
    /// included: the same passes, observed.
    pub fn forward_traced(&self, ids: &[u32]) -> Result<ForwardTrace> {
        let mut collected = Collector::default();
        let logits = self.forward_observed(ids, &mut collected)?;
        let Collector { inputs: mut hidden, layers } = collected;
        let last = layers.last().expect("at least one layer");
        let mut normed = Array2::zeros((0, 0));
        self.final_norm(last.hidden.view(), &mut normed); // (M+n, H)
        hidden.push(normed);
        Ok(ForwardTrace { logits, hidden, layers })
    }
}
