//! The whole model: meta tokens + embeddings → L hybrid-head layers → final norm → lm_head.

use super::layer::{hymba_layer, LayerOutput};
use super::norm::rms_norm;
use super::rope::rope_base;
use crate::cache::HybridCache;
use crate::checkpoint::weights::HymbaWeights;
use crate::config::HymbaConfig;
use crate::error::{Error, ErrorKind, Result};
use ndarray::{concatenate, s, Array1, Array2, ArrayView2, Axis};
use std::path::Path;

/// The most rows [`Hymba::run_chunk`] sends through the layers at once.
pub const MAX_ROWS_PER_PASS: usize = 512;

/// A loaded Hymba model: its validated config, its weights, and the cache state after the meta
/// tokens (they do not depend on the prompt, so they are run once per model). Immutable once built.
pub struct Hymba {
    pub config: HymbaConfig,
    pub weights: HymbaWeights,
    meta_prefix: HybridCache,
}

/// Everything a traced full forward pass computes (for golden tests).
pub struct ForwardTrace {
    /// (n, V), meta rows excluded
    pub logits: Array2<f32>,
    /// `hidden[i]` is the input of layer i (M+n, H); `hidden[L]` is the output of the final norm.
    pub hidden: Vec<Array2<f32>>,
    /// Per layer: attention heads, SSM heads, fused residual (all with meta rows).
    pub layers: Vec<LayerOutput>,
}

/// `X = [memory_tokens ; embed[ids]]`: the M learned meta tokens go first, at positions 0..M.
/// (M, H), (n, H) → (M+n, H)
pub fn prepend_meta_tokens(memory_tokens: ArrayView2<f32>, embeddings: ArrayView2<f32>) -> Array2<f32> {
    concatenate(Axis(0), &[memory_tokens.view(), embeddings.view()]).expect("same width H")
}

impl Hymba {
    /// Load `config.json` and the safetensors weights from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Hymba> {
        let config = HymbaConfig::from_file(&dir.join("config.json"))?;
        let weights = HymbaWeights::load(&config, dir)?;
        Ok(Hymba::new(config, weights))
    }

    /// Build a model from a config and matching weights; runs the meta tokens once.
    pub fn new(config: HymbaConfig, weights: HymbaWeights) -> Hymba {
        let mut model = Hymba { meta_prefix: HybridCache::new(&config), config, weights };
        if model.config.num_memory_tokens > 0 {
            let mut prefix = HybridCache::new(&model.config);
            model.run_chunk(model.weights.memory_tokens.clone(), &mut prefix); // (M, H)
            model.meta_prefix = prefix;
        }
        model
    }

    /// A cache for a new sequence, already holding the meta tokens (a copy of the prefix).
    pub fn new_sequence(&self) -> HybridCache {
        self.meta_prefix.clone()
    }

    /// Refuse empty input and ids outside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::input("the token id list is empty"));
        }
        let v = self.config.vocab_size;
        match ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
            Some((i, id)) => Err(Error::new(
                ErrorKind::TokenIdOutOfRange,
                format!("token id {id} at index {i} is not below the vocabulary size {v}"),
            )),
            None => Ok(()),
        }
    }

    /// Embedding rows for `ids` (already checked). (n, H)
    pub fn embed(&self, ids: &[u32]) -> Array2<f32> {
        let table = &self.weights.embed_tokens; // (V, H)
        let mut x = Array2::zeros((ids.len(), table.cols())); // (n, H)
        for (mut row, &id) in x.rows_mut().into_iter().zip(ids) {
            table.row_into(id as usize, row.as_slice_mut().expect("standard layout"));
        }
        x
    }

    /// Run the rows `x` (T, H) through every layer as the next chunk of the sequence in `cache`.
    /// → (T, H), before the final norm
    ///
    /// Long inputs go through the layers [`MAX_ROWS_PER_PASS`] rows at a time, which bounds the
    /// activation memory; the cache carries everything from one pass to the next, so the result
    /// is the same. All rows are rotated with the RoPE base of the whole call: `dynamic_ntk`
    /// picks it from the largest position of the call (SPEC, RoPE).
    pub fn run_chunk(&self, x: Array2<f32>, cache: &mut HybridCache) -> Array2<f32> {
        let base = self.rope_base_for(cache.next_position + x.nrows());
        if x.nrows() <= MAX_ROWS_PER_PASS {
            return self.run_layers(x, base, cache, None);
        }
        let outputs: Vec<Array2<f32>> = x
            .axis_chunks_iter(Axis(0), MAX_ROWS_PER_PASS)
            .map(|rows| self.run_layers(rows.to_owned(), base, cache, None))
            .collect();
        let views: Vec<_> = outputs.iter().map(|o| o.view()).collect();
        concatenate(Axis(0), &views).expect("same width H") // (T, H)
    }

    /// The RoPE base for a call whose last position is `seq_len − 1`; `None` without RoPE.
    fn rope_base_for(&self, seq_len: usize) -> Option<f64> {
        let cfg = &self.config;
        cfg.rope.map(|r| rope_base(&r, cfg.head_dim_qk(), seq_len))
    }

    /// One pass of the rows `x` (T, H) through every layer; with `trace`, each layer's input
    /// and intermediates are kept. → (T, H)
    fn run_layers(
        &self,
        mut x: Array2<f32>,
        base: Option<f64>,
        cache: &mut HybridCache,
        mut trace: Option<&mut (Vec<Array2<f32>>, Vec<LayerOutput>)>,
    ) -> Array2<f32> {
        let cfg = &self.config;
        let start = cache.next_position;
        let positions: Vec<usize> = (start..start + x.nrows()).collect();
        for (plan, w) in cfg.layers.iter().zip(&self.weights.layers) {
            let out = hymba_layer(cfg, plan, w, x.view(), &positions, base, cache);
            if let Some((hidden, layers)) = trace.as_deref_mut() {
                hidden.push(x);
                x = out.hidden.clone();
                layers.push(out);
            } else {
                x = out.hidden;
            }
        }
        cache.finish_chunk(positions.len(), cfg.num_memory_tokens);
        x
    }

    /// Final RMSNorm. (T, H) → (T, H)
    pub fn final_norm(&self, x: ArrayView2<f32>) -> Array2<f32> {
        rms_norm(x, self.weights.final_layernorm.view(), self.config.rms_norm_eps)
    }

    /// `logits = x · lm_headᵀ`, refusing non-finite results. (T, H) → (T, V)
    pub fn lm_head(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let logits = self.weights.lm_head().matmul_t(x);
        if let Some((i, _)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let (row, col) = (i / logits.ncols(), i % logits.ncols());
            return Err(Error::new(
                ErrorKind::NonFiniteOutput,
                format!("the model produced a non-finite logit (row {row}, token {col})"),
            ));
        }
        Ok(logits)
    }

    /// Full-sequence forward pass: logits for every prompt position. ids → (n, V)
    pub fn forward(&self, ids: &[u32]) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let m = self.config.num_memory_tokens;
        let x = prepend_meta_tokens(self.weights.memory_tokens.view(), self.embed(ids).view()); // (M+n, H)
        let x = self.run_chunk(x, &mut HybridCache::new(&self.config)); // (M+n, H)
        self.lm_head(self.final_norm(x.slice(s![m.., ..])).view())
    }

    /// Feed `ids` as the next chunk of the sequence in `cache` (from [`Hymba::new_sequence`]):
    /// prefill for a prompt, a single step for one id. ids → logits (n, V)
    ///
    /// Equals the full forward's logits for the same positions (tested), except for
    /// `dynamic_ntk` past `orig_max_position_embeddings`, where each chunk is rotated with the base
    /// of its own last position, as the released cached decode does (SPEC, RoPE).
    pub fn forward_chunk(&self, ids: &[u32], cache: &mut HybridCache) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let x = self.run_chunk(self.embed(ids), cache); // (n, H)
        self.lm_head(self.final_norm(x.view()).view())
    }

    /// The logits of every position computed through the cache: `ids[..prefill]` in one chunk,
    /// then the rest one token at a time. Equals [`Hymba::forward`] (tested), which is the point:
    /// it checks the decoding path. ids → (n, V); 1 ≤ prefill ≤ n.
    pub fn forward_incremental(&self, ids: &[u32], prefill: usize) -> Result<Array2<f32>> {
        if prefill == 0 || prefill > ids.len() {
            return Err(Error::input(format!(
                "--prefill {prefill}: must be between 1 and the number of ids ({})",
                ids.len()
            )));
        }
        let mut cache = self.new_sequence();
        let mut rows = vec![self.forward_chunk(&ids[..prefill], &mut cache)?];
        for &id in &ids[prefill..] {
            rows.push(self.forward_chunk(&[id], &mut cache)?);
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        Ok(concatenate(Axis(0), &views).expect("same vocabulary width")) // (n, V)
    }

    /// Like [`Hymba::forward_chunk`], but only the logits after the last id: what generation
    /// needs, without projecting every prompt row onto the vocabulary. ids → (V)
    pub fn next_token_logits(&self, ids: &[u32], cache: &mut HybridCache) -> Result<Array1<f32>> {
        self.check_ids(ids)?;
        let x = self.run_chunk(self.embed(ids), cache); // (n, H)
        let last = self.final_norm(x.slice(s![x.nrows() - 1.., ..])); // (1, H)
        Ok(self.lm_head(last.view())?.row(0).to_owned())
    }

    /// [`Hymba::forward`], keeping every hidden state and per-layer intermediate.
    pub fn forward_traced(&self, ids: &[u32]) -> Result<ForwardTrace> {
        self.check_ids(ids)?;
        let m = self.config.num_memory_tokens;
        let x = prepend_meta_tokens(self.weights.memory_tokens.view(), self.embed(ids).view()); // (M+n, H)
        let mut trace = (Vec::new(), Vec::new());
        let base = self.rope_base_for(x.nrows());
        let x = self.run_layers(x, base, &mut HybridCache::new(&self.config), Some(&mut trace));
        let (mut hidden, layers) = trace;
        hidden.push(self.final_norm(x.view())); // (M+n, H)
        let logits = self.lm_head(hidden.last().expect("final").slice(s![m.., ..]))?;
        Ok(ForwardTrace { logits, hidden, layers })
    }
}
