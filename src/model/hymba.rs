//! The whole model: meta tokens + embeddings → L hybrid-head layers → final norm → lm_head.
//!
//! Every entry point is a thin wrapper around [`Hymba::run`] ([`super::pass`]), the one path
//! through the layers.

use super::norm::rms_norm;
use super::pass::{self, Scratch};
use super::profile::Phase;
use super::segment::{Keep, Segment};
use super::sequence::Sequence;
use super::trace::LayerObserver;
use crate::state::cache::HybridCache;
use crate::checkpoint::weights::HymbaWeights;
use crate::config::HymbaConfig;
use crate::base::error::{Error, ErrorKind, Result};
use crate::kernels::matrix::RowKind;
use ndarray::{concatenate, s, Array2, ArrayView1, ArrayView2, Axis};
use std::path::Path;

/// A loaded Hymba model: its validated config, its weights, and the sequence holding only the
/// meta tokens (they do not depend on the prompt, so they are run once per model). Immutable once
/// built.
pub struct Hymba {
    pub config: HymbaConfig,
    pub weights: HymbaWeights,
    meta_prefix: Sequence,
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
        let mut meta_prefix = Sequence::new(&config);
        let mut segments = [Segment::new(&mut meta_prefix.cache, &[], Keep::LastRow)]; // no ids: the meta tokens alone
        pass::run(&config, &weights, &mut segments, &mut Scratch::default(), None);
        Hymba { config, weights, meta_prefix }
    }

    /// A model whose state after the meta tokens is already known (e.g. read back from a
    /// [`crate::features::prefix_cache::PrefixCache`]): `prefix` must be what [`Hymba::new`] computes for
    /// these weights.
    pub fn with_meta_prefix(config: HymbaConfig, weights: HymbaWeights, prefix: HybridCache) -> Hymba {
        debug_assert_eq!(prefix.next_position, config.num_memory_tokens);
        let meta_prefix = Sequence { cache: prefix, scratch: Default::default() };
        Hymba { config, weights, meta_prefix }
    }

    /// The state after the meta tokens, which every new sequence starts from.
    pub fn meta_prefix(&self) -> &HybridCache {
        &self.meta_prefix.cache
    }

    /// A new sequence, already holding the meta tokens (a copy of the model's prefix).
    pub fn new_sequence(&self) -> Sequence {
        self.meta_prefix.clone()
    }

    /// Refuse empty input and ids outside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::input("the token id list is empty"));
        }
        self.check_vocabulary(ids)
    }

    /// Refuse ids outside the vocabulary.
    fn check_vocabulary(&self, ids: &[u32]) -> Result<()> {
        let v = self.config.vocab_size;
        match ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
            Some((i, id)) => Err(Error::new(
                ErrorKind::TokenIdOutOfRange,
                format!("token id {id} at index {i} is not below the vocabulary size {v}"),
            )),
            None => Ok(()),
        }
    }

    /// Run the segments through every layer ([`pass::run`]: the one path, in passes of at most
    /// [`pass::MAX_ROWS_PER_PASS`] rows), extending each segment's cache, and keep the final
    /// hidden rows each segment asks for ([`Scratch::kept`]; [`Hymba::kept_logits`] turns them
    /// into logits). `observer`, if any, sees every layer of every pass. Fails, before running
    /// anything, on an id outside the vocabulary.
    pub fn run(&self, segments: &mut [Segment], scratch: &mut Scratch, observer: Option<&mut dyn LayerObserver>) -> Result<()> {
        for segment in segments.iter() {
            self.check_vocabulary(segment.ids)?;
        }
        pass::run(&self.config, &self.weights, segments, scratch, observer);
        Ok(())
    }

    /// The final norm and `lm_head` of the rows the last [`Hymba::run`] kept, into the scratch,
    /// refusing non-finite logits. → (K, V)
    pub fn kept_logits<'s>(&self, scratch: &'s mut Scratch) -> Result<ArrayView2<'s, f32>> {
        let (kept, kind, normed, logits, profile) = scratch.kept_and_outputs();
        profile.time(Phase::Output, || {
            let normed = self.final_norm(kept, normed); // (K, H)
            self.lm_head(normed, kind, logits) // (K, V)
        })
    }

    /// Final RMSNorm, into `out`. (T, H) → (T, H)
    pub fn final_norm<'o>(&self, hidden: ArrayView2<f32>, out: &'o mut Array2<f32>) -> ArrayView2<'o, f32> {
        rms_norm(hidden, self.weights.final_layernorm.view(), self.config.rms_norm_eps, out)
    }

    /// `logits = normed · lm_headᵀ` into `out`, refusing non-finite results; `kind` says what the
    /// rows are ([`crate::kernels::matrix::Matrix::matmul_t_of`]). (T, H) → (T, V)
    pub fn lm_head<'o>(&self, normed: ArrayView2<f32>, kind: RowKind, out: &'o mut Array2<f32>) -> Result<ArrayView2<'o, f32>> {
        let logits = self.weights.lm_head().matmul_t_of(normed, kind, out);
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
    pub fn logits(&self, hidden: ArrayView2<f32>) -> Result<Array2<f32>> {
        let (mut normed, mut logits) = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
        self.lm_head(self.final_norm(hidden, &mut normed), RowKind::Chunk, &mut logits)?;
        Ok(logits)
    }

    /// Full-sequence forward pass: logits for every prompt position. ids → (n, V)
    pub fn forward(&self, ids: &[u32]) -> Result<Array2<f32>> {
        self.full_forward(ids, None)
    }

    /// [`Hymba::forward`], with `observer` watching every layer (see [`super::trace`]).
    pub fn forward_observed(&self, ids: &[u32], observer: &mut dyn LayerObserver) -> Result<Array2<f32>> {
        self.full_forward(ids, Some(observer))
    }

    /// The forward pass of docs/MODEL.md §3: an empty sequence fed [meta tokens ; ids] in one call, so every row
    /// is rotated with the RoPE base of the whole input. ids → (n, V)
    fn full_forward(&self, ids: &[u32], observer: Option<&mut dyn LayerObserver>) -> Result<Array2<f32>> {
        self.check_ids(ids)?;
        let mut seq = Sequence::new(&self.config);
        let hidden = self.hidden_states_observed(ids, &mut seq, observer)?; // (M+n, H)
        self.logits(hidden.slice(s![self.config.num_memory_tokens.., ..]))
    }

    /// The final hidden rows (before the final norm) of `ids` fed to `seq`, in its scratch.
    /// ids → (n, H), or (M+n, H) on an empty sequence
    pub fn hidden_states<'s>(&self, ids: &[u32], seq: &'s mut Sequence) -> Result<ArrayView2<'s, f32>> {
        self.check_ids(ids)?;
        self.hidden_states_observed(ids, seq, None)
    }

    fn hidden_states_observed<'s>(
        &self,
        ids: &[u32],
        seq: &'s mut Sequence,
        observer: Option<&mut dyn LayerObserver>,
    ) -> Result<ArrayView2<'s, f32>> {
        let Sequence { cache, scratch } = seq;
        self.run(&mut [Segment::new(cache, ids, Keep::AllRows)], scratch, observer)?;
        Ok(scratch.kept())
    }

    /// Feed `ids` as the next chunk of `seq` (from [`Hymba::new_sequence`]): prefill for a
    /// prompt, a single step for one id. ids → logits (n, V)
    ///
    /// Equals the full forward's logits for the same positions (tested), except for
    /// `dynamic_ntk` past `orig_max_position_embeddings`, where each chunk is rotated with the base
    /// of its own last position, as the released cached decode does (docs/MODEL.md §4, §8).
    pub fn forward_chunk(&self, ids: &[u32], seq: &mut Sequence) -> Result<Array2<f32>> {
        let hidden = self.hidden_states(ids, seq)?; // (n, H)
        self.logits(hidden)
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
        let mut seq = self.new_sequence();
        let mut rows = vec![self.forward_chunk(&ids[..prefill], &mut seq)?];
        for &id in &ids[prefill..] {
            rows.push(self.forward_chunk(&[id], &mut seq)?);
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        Ok(concatenate(Axis(0), &views).expect("same vocabulary width")) // (n, V)
    }

    /// Like [`Hymba::forward_chunk`], but only the logits after the last id: what generation
    /// needs, without projecting every prompt row onto the vocabulary. ids → (V), a view of the
    /// sequence's scratch. Allocates nothing once the shapes repeat, as they do from the second
    /// decode step on (tested).
    pub fn next_token_logits<'s>(&self, ids: &[u32], seq: &'s mut Sequence) -> Result<ArrayView1<'s, f32>> {
        self.next_token_logits_observed(ids, seq, None)
    }

    /// [`Hymba::next_token_logits`] with an observer of every layer of every pass (e.g. one that
    /// reports the progress of a long prefill).
    pub fn next_token_logits_observed<'s>(
        &self,
        ids: &[u32],
        seq: &'s mut Sequence,
        observer: Option<&mut dyn LayerObserver>,
    ) -> Result<ArrayView1<'s, f32>> {
        self.check_ids(ids)?;
        let Sequence { cache, scratch } = seq;
        self.run(&mut [Segment::new(cache, ids, Keep::LastRow)], scratch, observer)?;
        let logits = self.kept_logits(scratch)?; // (1, V)
        Ok(logits.index_axis_move(Axis(0), 0)) // (V)
    }
}
