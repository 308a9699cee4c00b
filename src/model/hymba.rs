//! The whole model: meta tokens + embeddings → L hybrid-head layers → final norm → lm_head.

use super::layer::{hymba_layer, LayerBuffers, LayerOutput};
use super::norm::rms_norm;
use super::rope::rope_base;
use super::shaped;
use crate::cache::HybridCache;
use crate::checkpoint::weights::HymbaWeights;
use crate::config::HymbaConfig;
use crate::error::{Error, ErrorKind, Result};
use ndarray::{concatenate, s, Array2, ArrayView1, ArrayView2, Axis};
use std::path::Path;

/// The most rows [`Hymba::run_chunk`] sends through the layers at once.
pub const MAX_ROWS_PER_PASS: usize = 512;

/// Each layer's input and what it computed, as [`Hymba::forward_traced`] collects them.
type Trace = (Vec<Array2<f32>>, Vec<LayerOutput>);

/// The activations of a pass, kept with each sequence and reused from call to call (see
/// [`super::shaped`]): after the first decode step, a step allocates nothing. They carry no
/// information from one call to the next; the cache's state is elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    /// (T, H): the residual stream of the pass
    x: Array2<f32>,
    /// (T): the rows' absolute positions
    positions: Vec<usize>,
    layer: LayerBuffers,
    /// (1, H), (1, V): the last row after the final norm, and its logits
    normed: Array2<f32>,
    logits: Array2<f32>,
}

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
            model.run_chunk(model.weights.memory_tokens.view(), &mut prefix); // (M, H)
            prefix.buffers = Buffers::default(); // nothing worth copying into every new sequence
            model.meta_prefix = prefix;
        }
        model
    }

    /// A model whose state after the meta tokens is already known (e.g. read back from a
    /// [`crate::prefix_cache::PrefixCache`]): `prefix` must be what [`Hymba::new`] computes for
    /// these weights.
    pub fn with_meta_prefix(config: HymbaConfig, weights: HymbaWeights, prefix: HybridCache) -> Hymba {
        debug_assert_eq!(prefix.next_position, config.num_memory_tokens);
        Hymba { config, weights, meta_prefix: prefix }
    }

    /// The state after the meta tokens, which every new sequence starts from.
    pub fn meta_prefix(&self) -> &HybridCache {
        &self.meta_prefix
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

    /// Embedding rows for `ids` (already checked), into `out`. (n, H)
    pub fn embed<'o>(&self, ids: &[u32], out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        let table = &self.weights.embed_tokens; // (V, H)
        let out = shaped(out, (ids.len(), table.cols())); // (n, H)
        for (mut row, &id) in out.rows_mut().into_iter().zip(ids) {
            table.row_into(id as usize, row.as_slice_mut().expect("standard layout"));
        }
        out.view()
    }

    /// Run the rows `x` (T, H) through every layer as the next chunk of the sequence in `cache`.
    /// → (T, H), before the final norm
    ///
    /// Long inputs go through the layers [`MAX_ROWS_PER_PASS`] rows at a time, which bounds the
    /// activation memory; the cache carries everything from one pass to the next, so the result
    /// is the same. All rows are rotated with the RoPE base of the whole call: `dynamic_ntk`
    /// picks it from the largest position of the call (SPEC, RoPE).
    pub fn run_chunk(&self, x: ArrayView2<f32>, cache: &mut HybridCache) -> Array2<f32> {
        let base = self.rope_base_for(cache.next_position + x.nrows());
        let mut outputs: Vec<Array2<f32>> = x
            .axis_chunks_iter(Axis(0), MAX_ROWS_PER_PASS)
            .map(|rows| {
                shaped(&mut cache.buffers.x, rows.dim()).assign(&rows);
                self.run_layers(base, cache, None);
                cache.buffers.x.clone() // (≤ MAX_ROWS_PER_PASS, H)
            })
            .collect();
        if outputs.len() == 1 {
            return outputs.pop().expect("one pass"); // (T, H), no second copy
        }
        let views: Vec<_> = outputs.iter().map(|o| o.view()).collect();
        concatenate(Axis(0), &views).expect("same width H") // (T, H)
    }

    /// The RoPE base for a call whose last position is `seq_len − 1`; `None` without RoPE.
    fn rope_base_for(&self, seq_len: usize) -> Option<f64> {
        let cfg = &self.config;
        cfg.rope.map(|r| rope_base(&r, cfg.head_dim_qk(), seq_len))
    }

    /// One pass of the rows in `cache.buffers.x` (T, H) through every layer, in place; with
    /// `trace`, each layer's input and intermediates are kept.
    fn run_layers(&self, base: Option<f64>, cache: &mut HybridCache, mut trace: Option<&mut Trace>) {
        let cfg = &self.config;
        let mut buf = std::mem::take(&mut cache.buffers); // so the cache can be borrowed beside them
        let start = cache.next_position;
        buf.positions.clear();
        buf.positions.extend(start..start + buf.x.nrows());
        // The pass runs on a worker of the thread pool, so each parallel loop inside it shares its
        // work with the other workers directly, rather than being queued from outside the pool
        // and waited for (a few microseconds each, ~10 loops a layer: it shows in decoding).
        rayon::scope(|_| {
            for (plan, w) in cfg.layers.iter().zip(&self.weights.layers) {
                if let Some((inputs, _)) = trace.as_deref_mut() {
                    inputs.push(buf.x.clone());
                }
                hymba_layer(cfg, plan, w, &mut buf.x, &buf.positions, base, cache, &mut buf.layer);
                if let Some((_, layers)) = trace.as_deref_mut() {
                    layers.push(LayerOutput::copy(&buf.x, &buf.layer));
                }
            }
        });
        cache.finish_chunk(buf.positions.len(), cfg.num_memory_tokens);
        cache.buffers = buf;
    }

    /// Final RMSNorm, into `out`. (T, H) → (T, H)
    pub fn final_norm<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        rms_norm(x, self.weights.final_layernorm.view(), self.config.rms_norm_eps, out)
    }

    /// `logits = x · lm_headᵀ` into `out`, refusing non-finite results. (T, H) → (T, V)
    pub fn lm_head<'o>(&self, x: ArrayView2<f32>, out: &'o mut Array2<f32>) -> Result<ArrayView2<'o, f32>> {
        let logits = self.weights.lm_head().matmul_t(x, out);
        if let Some((i, _)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let (row, col) = (i / logits.ncols(), i % logits.ncols());
            return Err(Error::new(
                ErrorKind::NonFiniteOutput,
                format!("the model produced a non-finite logit (row {row}, token {col})"),
            ));
        }
        Ok(logits)
    }

    /// Final norm and lm_head for rows of a finished pass, in new arrays. (T, H) → (T, V)
    pub fn logits(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let (mut normed, mut logits) = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
        self.lm_head(self.final_norm(x, &mut normed), &mut logits)?;
        Ok(logits)
    }

    /// Full-sequence forward pass: logits for every prompt position. ids → (n, V)
    pub fn forward(&self, ids: &[u32]) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let m = self.config.num_memory_tokens;
        let mut embedded = Array2::zeros((0, 0));
        let x = prepend_meta_tokens(self.weights.memory_tokens.view(), self.embed(ids, &mut embedded)); // (M+n, H)
        let x = self.run_chunk(x.view(), &mut HybridCache::new(&self.config)); // (M+n, H)
        self.logits(x.slice(s![m.., ..]))
    }

    /// Feed `ids` as the next chunk of the sequence in `cache` (from [`Hymba::new_sequence`]):
    /// prefill for a prompt, a single step for one id. ids → logits (n, V)
    ///
    /// Equals the full forward's logits for the same positions (tested), except for
    /// `dynamic_ntk` past `orig_max_position_embeddings`, where each chunk is rotated with the base
    /// of its own last position, as the released cached decode does (SPEC, RoPE).
    pub fn forward_chunk(&self, ids: &[u32], cache: &mut HybridCache) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let mut embedded = Array2::zeros((0, 0));
        let x = self.run_chunk(self.embed(ids, &mut embedded), cache); // (n, H)
        self.logits(x.view())
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
    /// needs, without projecting every prompt row onto the vocabulary. ids → (V), a view of the
    /// sequence's buffers. Allocates nothing once the shapes repeat, as they do from the second
    /// decode step on (tested).
    pub fn next_token_logits<'c>(&self, ids: &[u32], cache: &'c mut HybridCache) -> Result<ArrayView1<'c, f32>> {
        self.check_ids(ids)?;
        let base = self.rope_base_for(cache.next_position + ids.len());
        for pass in ids.chunks(MAX_ROWS_PER_PASS) {
            self.embed(pass, &mut cache.buffers.x); // (T, H)
            self.run_layers(base, cache, None);
        }
        let buf = &mut cache.buffers;
        let last = buf.x.slice(s![buf.x.nrows() - 1.., ..]); // (1, H)
        let normed = self.final_norm(last, &mut buf.normed); // (1, H)
        let logits = self.lm_head(normed, &mut buf.logits)?; // (1, V)
        Ok(logits.index_axis_move(Axis(0), 0)) // (V)
    }

    /// [`Hymba::forward`], keeping every hidden state and per-layer intermediate.
    pub fn forward_traced(&self, ids: &[u32]) -> Result<ForwardTrace> {
        self.check_ids(ids)?;
        let m = self.config.num_memory_tokens;
        let mut cache = HybridCache::new(&self.config);
        let base = self.rope_base_for(m + ids.len());
        let mut embedded = Array2::zeros((0, 0));
        cache.buffers.x = prepend_meta_tokens(self.weights.memory_tokens.view(), self.embed(ids, &mut embedded)); // (M+n, H)
        let mut trace = (Vec::new(), Vec::new());
        self.run_layers(base, &mut cache, Some(&mut trace));
        let (mut hidden, layers) = trace;
        let mut normed = Array2::zeros((0, 0));
        self.final_norm(cache.buffers.x.view(), &mut normed);
        hidden.push(normed); // (M+n, H)
        let mut logits = Array2::zeros((0, 0));
        self.lm_head(hidden.last().expect("final").slice(s![m.., ..]), &mut logits)?;
        Ok(ForwardTrace { logits, hidden, layers })
    }
}
