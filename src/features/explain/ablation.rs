//! Ablation, the paper's head-importance study on one prompt: the prompt's mean log-probability
//! when one layer's attention heads, or its SSM heads, are removed.
//!
//! Removing a branch drops its term from the fusion (docs/MODEL.md §3.7), `o = (β1 ⊙ RMSNorm(attn) +
//! β2 ⊙ RMSNorm(ssm)) / 2`: the model is copied with that layer's β1 (or β2) set to zero and run
//! as usual. The /2 is kept, so the other branch contributes exactly what it did in the full
//! model: this is the same as that branch's heads outputting zeros (RMSNorm of zeros is zero),
//! the plainest reading of removing heads. Doubling the surviving branch instead (as if the layer
//! had been built with one head type) would change a second thing at the same time.

use crate::features::eval::token_nll;
use crate::model::Hymba;
use ndarray::ArrayView2;

/// One of a layer's two head types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Attention,
    Ssm,
}

/// The prompt's mean log-probability with each branch of one layer removed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAblation {
    pub layer: usize,
    pub without_attention: f64,
    pub without_ssm: f64,
}

/// `model` with the branches in `removed` ((layer, branch) pairs, layers in range) dropped from
/// their layers' fusion. The copy shares every weight matrix with `model` (see
/// [`crate::kernels::matrix::Matrix`]): only the weight vectors are copied.
pub fn without_branches(model: &Hymba, removed: &[(usize, Branch)]) -> Hymba {
    let mut weights = model.weights.clone();
    for &(layer, branch) in removed {
        let mamba = &mut weights.layers[layer].mamba;
        match branch {
            Branch::Attention => mamba.pre_avg_layernorm1.fill(0.0), // β1
            Branch::Ssm => mamba.pre_avg_layernorm2.fill(0.0),       // β2
        }
    }
    Hymba::new(model.config.clone(), weights)
}

/// The mean log-probability (nats) of `ids[1..]`, each predicted from the tokens before it:
/// `logits` (n, V) are the model's for `ids` (n ≥ 2).
pub fn mean_log_prob(logits: ArrayView2<f32>, ids: &[u32]) -> f64 {
    debug_assert_eq!(logits.nrows(), ids.len());
    let predicted = &ids[1..];
    let total: f64 = logits.rows().into_iter().zip(predicted).map(|(row, &id)| -token_nll(row, id)).sum();
    total / predicted.len() as f64
}

/// The prompt's mean log-probability with each layer's attention, then SSM, branch removed.
/// `ids` are checked and at least 2.
pub fn ablate_each_layer(model: &Hymba, ids: &[u32]) -> crate::Result<Vec<LayerAblation>> {
    let score = |layer, branch| -> crate::Result<f64> {
        let logits = without_branches(model, &[(layer, branch)]).forward(ids)?; // (n, V)
        Ok(mean_log_prob(logits.view(), ids))
    };
    (0..model.config.num_hidden_layers)
        .map(|layer| {
            Ok(LayerAblation {
                layer,
                without_attention: score(layer, Branch::Attention)?,
                without_ssm: score(layer, Branch::Ssm)?,
            })
        })
        .collect()
}
