//! `explain`: watch the paper's mechanisms work on one prompt.
//!
//! One forward pass of the prompt, the same pass as [`Hymba::forward`] (an observer of it,
//! [`crate::model::LayerObserver`], sees every layer's intermediates), and from what each layer
//! computed:
//! 1. [`attention`]: the attention weights, recomputed from the layer's queries and keys with the
//!    model's own mask and softmax: where each query's mass lands ([`attention::Shares`]: meta
//!    tokens, first token, inside the window), and maps of queries × keys for chosen heads;
//! 2. [`branches`]: the size of each head type's term in the fusion, token by token;
//! 3. [`memory`]: the SSM's per-step decay `exp(Δ·A)` and its half-life;
//! 4. [`ablation`] (optional): the prompt's mean log-probability with each layer's attention or
//!    SSM branch removed;
//! 5. the cache the prompt needs against a dense-attention model's ([`CachePlan`]).
//!
//! [`json`] and [`html`] write the [`Report`].

pub mod ablation;
pub mod attention;
pub mod branches;
mod collect;
pub mod html;
pub mod json;
pub mod memory;
pub mod stats;

use crate::state::cache_plan::CachePlan;
use crate::config::{AttentionSpan, HymbaConfig, KvSource};
use crate::model::Hymba;
use crate::{Error, Result};
use ablation::{ablate_each_layer, mean_log_prob, LayerAblation};
use attention::{AttentionMap, Shares};
use branches::BranchBalance;
use collect::Collector;
use memory::SsmMemory;

/// The most rows and columns of an attention map: longer prompts are averaged into bins.
pub const MAX_MAP_BINS: usize = 256;

/// What to compute besides the per-layer numbers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Layers to draw attention maps of; `None`: every global layer and the first window layer.
    pub layers: Option<Vec<usize>>,
    /// Heads to draw in each of those layers; `None`: the first four.
    pub heads: Option<Vec<usize>>,
    /// Run the ablation (two more forward passes per layer).
    pub ablate: bool,
    /// At most this many rows and columns per map.
    pub max_map_bins: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { layers: None, heads: None, ablate: false, max_map_bins: MAX_MAP_BINS }
    }
}

impl Options {
    /// The (layer, head) pairs to draw, checked against the model.
    fn maps(&self, cfg: &HymbaConfig) -> Result<Vec<(usize, usize)>> {
        let (l, nh) = (cfg.num_hidden_layers, cfg.num_attention_heads);
        let layers = match &self.layers {
            Some(layers) => check_indices(layers, l, "layer")?,
            None => {
                let first_window = cfg.layers.iter().find(|p| p.attention != AttentionSpan::Global);
                let mut layers: Vec<usize> = cfg.layers.iter().filter(|p| p.attention == AttentionSpan::Global).map(|p| p.index).collect();
                layers.extend(first_window.map(|p| p.index));
                layers.sort_unstable();
                layers
            }
        };
        let heads = match &self.heads {
            Some(heads) => check_indices(heads, nh, "head")?,
            None => (0..nh.min(4)).collect(),
        };
        Ok(layers.iter().flat_map(|&layer| heads.iter().map(move |&head| (layer, head))).collect())
    }
}

/// `indices` sorted and deduplicated, each below `count`.
fn check_indices(indices: &[usize], count: usize, what: &str) -> Result<Vec<usize>> {
    if let Some(bad) = indices.iter().find(|&&i| i >= count) {
        return Err(Error::input(format!(
            "attention maps: there is no {what} {bad} (the model has {count} {what}s, 0 to {})",
            count - 1
        )));
    }
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted)
}

/// "global" or "window W".
pub fn span_name(span: AttentionSpan) -> String {
    match span {
        AttentionSpan::Global => "global".to_string(),
        AttentionSpan::SlidingWindow(w) => format!("window {w}"),
    }
}

/// What one layer did with the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub index: usize,
    pub span: AttentionSpan,
    pub kv: KvSource,
    /// Per head: the mean, over the prompt's tokens, of where its attention mass lands.
    pub heads: Vec<Shares>,
    pub branches: BranchBalance,
    pub memory: SsmMemory,
}

impl LayerReport {
    /// The shares averaged over the layer's heads.
    pub fn mean_shares(&self) -> Shares {
        let mean = |f: fn(&Shares) -> f64| self.heads.iter().map(f).sum::<f64>() / self.heads.len() as f64;
        Shares { meta: mean(|s| s.meta), first_token: mean(|s| s.first_token), window: mean(|s| s.window) }
    }
}

/// Everything `explain` found on one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ids: Vec<u32>,
    /// M and W (`None`: no sliding window).
    pub num_meta: usize,
    pub window: Option<usize>,
    /// The mean log-probability (nats) of each token after the first, from the observed pass's logits.
    pub mean_log_prob: f64,
    pub layers: Vec<LayerReport>,
    pub maps: Vec<AttentionMap>,
    /// The cache after the prompt, and the dense-attention equivalent.
    pub cache: CachePlan,
    /// With [`Options::ablate`]: the mean log-probability with each branch of each layer removed.
    pub ablation: Option<Vec<LayerAblation>>,
}

/// Run `ids` (at least 2 tokens) through `model` once, watching every layer, and report.
pub fn explain(model: &Hymba, ids: &[u32], options: &Options) -> Result<Report> {
    model.check_ids(ids)?;
    if ids.len() < 2 {
        return Err(Error::input(format!(
            "the prompt is {} token(s) long; explain needs at least 2 (the first is only context)",
            ids.len()
        )));
    }
    let cfg = &model.config;
    let maps = options.maps(cfg)?;
    let mut collector = Collector::new(model, ids.len(), &maps, options.max_map_bins.max(1));
    let logits = model.forward_observed(ids, &mut collector)?; // (n, V)
    let ablation = match options.ablate {
        true => Some(ablate_each_layer(model, ids)?),
        false => None,
    };
    let (layers, maps) = collector.finish();
    Ok(Report {
        ids: ids.to_vec(),
        num_meta: cfg.num_memory_tokens,
        window: cfg.sliding_window,
        mean_log_prob: mean_log_prob(logits.view(), ids),
        layers,
        maps,
        cache: CachePlan::new(cfg, ids.len())?,
        ablation,
    })
}
