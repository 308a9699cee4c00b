//! The observer `explain` runs the forward pass with: after each layer it takes what it needs
//! from the layer's intermediates and keeps only sums and per-token scalars, so its memory does
//! not grow with the prompt beyond O(L·n) numbers and the maps asked for.

use super::attention::{attention_weights, AttentionMap, Shares};
use super::branches::BranchMagnitudes;
use super::memory::DeltaSums;
use super::LayerReport;
use crate::config::HymbaConfig;
use crate::model::{Hymba, LayerTrace};
use ndarray::{s, Array1, Axis};
use rayon::prelude::*;

/// The running sums of every layer, and the maps being filled.
pub struct Collector<'m> {
    model: &'m Hymba,
    /// Per layer, per head: the shares summed over the prompt tokens seen.
    shares: Vec<Vec<Shares>>,
    branches: Vec<BranchMagnitudes>,
    deltas: Vec<DeltaSums>,
    maps: Vec<AttentionMap>,
    tokens: usize,
}

impl<'m> Collector<'m> {
    /// For a prompt of `tokens` tokens, drawing the (layer, head) pairs `maps`.
    pub fn new(model: &'m Hymba, tokens: usize, maps: &[(usize, usize)], max_map_bins: usize) -> Collector<'m> {
        let cfg = &model.config;
        let (l, nh, m) = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_memory_tokens);
        Collector {
            model,
            shares: vec![vec![Shares::default(); nh]; l],
            branches: vec![BranchMagnitudes::default(); l],
            deltas: vec![DeltaSums::new(cfg.d_inner()); l],
            maps: maps
                .iter()
                .map(|&(layer, head)| AttentionMap::new(layer, head, cfg.layers[layer].attention, m, tokens, max_map_bins))
                .collect(),
            tokens,
        }
    }

    /// The per-layer report and the filled maps.
    pub fn finish(self) -> (Vec<LayerReport>, Vec<super::AttentionMap>) {
        let cfg = &self.model.config;
        let per_token = 1.0 / self.tokens as f64;
        let layers = cfg
            .layers
            .iter()
            .zip(self.shares)
            .zip(self.branches)
            .zip(&self.deltas)
            .map(|(((plan, shares), branches), deltas)| LayerReport {
                index: plan.index,
                span: plan.attention,
                kv: plan.kv,
                heads: shares.into_iter().map(|s| s.scaled(per_token)).collect(),
                branches: branches.summary(),
                memory: deltas.summary(self.model.weights.layers[plan.index].mamba.a.view(), cfg.sliding_window),
            })
            .collect();
        (layers, self.maps)
    }

    /// One layer's attention over the prompt rows `rows` of the pass: every head's shares, and
    /// the rows of the maps of this layer.
    fn attention(&mut self, cfg: &HymbaConfig, trace: &LayerTrace, rows: std::ops::Range<usize>) {
        let (layer, m) = (trace.plan.index, cfg.num_memory_tokens);
        let group = cfg.num_attention_heads / cfg.num_key_value_heads; // GQA: query heads per K/V head
        debug_assert_eq!(trace.parts.len(), 1, "explain runs one sequence");
        let kv = &trace.kv[0];
        debug_assert_eq!(trace.q.dim(), (trace.positions.len(), cfg.num_attention_heads, cfg.head_dim_qk()));
        let span = trace.plan.attention;
        let maps: Vec<usize> = (0..self.maps.len()).filter(|&i| self.maps[i].layer == layer).collect();
        let maps_ref = &self.maps;
        // Per prompt row: each head's shares, and each map's binned row.
        let per_row: Vec<(Vec<Shares>, Vec<Array1<f32>>)> = rows
            .clone()
            .into_par_iter()
            .map(|r| {
                let i = trace.positions[r];
                let weights: Vec<Array1<f32>> = (0..cfg.num_attention_heads)
                    .map(|h| {
                        let keys = kv.keys.index_axis(Axis(1), h / group); // (S, dqk)
                        attention_weights(trace.q.slice(s![r, h, ..]), keys, i, kv.positions, span, m) // (S)
                    })
                    .collect(); // (nh, S)
                let shares = weights.iter().map(|w| Shares::of(w.view(), kv.positions, i, m, cfg.sliding_window)).collect();
                let binned = maps.iter().map(|&k| maps_ref[k].bin(weights[maps_ref[k].head].view(), kv.positions)).collect();
                (shares, binned)
            })
            .collect();
        for (r, (shares, binned)) in rows.zip(per_row) {
            self.shares[layer].iter_mut().zip(shares).for_each(|(sum, s)| sum.add(s));
            for (&k, row) in maps.iter().zip(binned) {
                self.maps[k].add_row(trace.positions[r] - m, row.view());
            }
        }
    }
}

impl crate::model::LayerObserver for Collector<'_> {
    fn layer(&mut self, trace: &LayerTrace) {
        let model = self.model;
        let (cfg, layer) = (&model.config, trace.plan.index);
        let m = cfg.num_memory_tokens;
        // The prompt's rows: the first pass also holds the M meta tokens, which are the same for
        // every prompt.
        let first = trace.positions.iter().position(|&p| p >= m).unwrap_or(trace.positions.len());
        let rows = first..trace.positions.len();
        self.attention(cfg, trace, rows.clone());
        let w = &model.weights.layers[layer].mamba;
        let (beta1, beta2) = (w.pre_avg_layernorm1.view(), w.pre_avg_layernorm2.view());
        for r in rows {
            self.branches[layer].add(trace.attn.row(r), trace.ssm.row(r), beta1, beta2, cfg.rms_norm_eps);
            self.deltas[layer].add(trace.delta.row(r));
        }
    }
}
