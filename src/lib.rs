//! # hymba-ref
//!
//! A pure-Rust, from-scratch reference engine for NVIDIA's Hymba small language models
//! ("Hymba: A Hybrid-head Architecture for Small Language Models", Dong et al., arXiv
//! 2411.13676; checkpoints `nvidia/Hymba-1.5B-Base` and `-Instruct`).
//!
//! Every Hymba layer runs **attention heads** and **SSM (Mamba) heads** in parallel on the same
//! input and fuses them; 128 learned **meta tokens** are prepended to every sequence; neighbouring
//! layers **share K/V**; all but three layers use **sliding-window attention**.
//!
//! ## Goals
//! - Read like the paper: one function per concept (meta tokens in [`model::pass`],
//!   [`model::norm::rms_norm`], [`model::layer::split_in_proj`], [`model::attention::attention_heads`],
//!   [`model::ssm::ssm_heads`], [`model::fusion::fuse_heads`], [`model::mlp::mlp`]), with the shape
//!   of every tensor in a comment.
//! - Be exact: the logits of the released PyTorch implementation (to 1e-4 in f32, measured ~5e-6),
//!   checked by `cargo test` against goldens exported from PyTorch.
//! - Run on a plain CPU: load a published checkpoint directory (config.json + safetensors +
//!   tokenizer files) and generate, with caches that keep Hymba's efficiency (bounded
//!   sliding-window K/V, O(1) SSM state, shared K/V).
//!
//! ## Non-goals
//! - Training, GPUs, several interchangeable backends.
//! - Features no released model uses (interspersed meta tokens, mixture-of-experts routing:
//!   the released model always builds exactly one MLP).
//!
//! ## Glossary (code name = paper symbol; docs/MODEL.md §1)
//!
//! | code | symbol | meaning | Hymba-1.5B |
//! |---|---|---|---|
//! | `vocab_size` | V | vocabulary | 32001 |
//! | `hidden_size` | H | model width | 1600 |
//! | `num_hidden_layers` | L | layers | 32 |
//! | `num_attention_heads`, `num_key_value_heads` | nh, nkv | query heads, K/V heads (GQA) | 25, 5 |
//! | `d_inner()` | D | SSM width = `mamba_expand`·H = attention output width nh·dv | 3200 |
//! | `head_dim_qk()` | dqk | query/key head dim H/nh | 64 |
//! | `head_dim_v()` | dv | value head dim D/nh (wider than keys) | 128 |
//! | `mamba_d_state` | N | SSM state size per channel | 16 |
//! | `mamba_d_conv` | K | causal conv kernel | 4 |
//! | `mamba_dt_rank` | R | rank of Δ (`"auto"` = ceil(H/16)) | 100 |
//! | `intermediate_size` | F | MLP width | 5504 |
//! | `num_memory_tokens` | M | meta tokens | 128 |
//! | `sliding_window` | W | attention window | 1024 |
//! | T, n | | rows in a chunk / prompt tokens | |
//! | `pre_avg_layernorm1/2` | β1, β2 | fusion norms (paper eq. 3) | |
//!
//! **Meta tokens** (the paper's word) are called "memory tokens" in the released checkpoint and
//! config: the code keeps those keys (`model.memory_tokens` → `HymbaWeights::memory_tokens`,
//! `num_memory_tokens`) and says "meta" everywhere else. Other names: `hidden` is the residual
//! stream (T, H); `x` and `z` are the SSM heads' input and gate (docs/MODEL.md §3.6); `projected` is `in_proj`'s
//! output; `fused_heads` (T, D) is the fusion of the two branches, `mixer_output` (T, H) its
//! projection by `out_proj`; `moe_expert0` is the one dense MLP (`moe.experts.0`). A function's
//! plain, slow truth is `*_reference` (`selective_scan_reference`, `attention_heads_reference`,
//! `matmul_t_reference`, `dot_reference`), tested against the fast one of the unsuffixed name.
//!
//! ## Map of the crate
//! The directories of `src/` are the layers of the engine, each using only those above it in
//! this list (no import runs upward, and there is no import cycle among the files of `src/`):
//! - [`base`]: what knows nothing of Hymba: the [`Error`] type, careful file access
//!   ([`base::files`]: every file read is a regular file with a size cap per kind; outputs never
//!   replace anything but a regular file), a scanner for untrusted JSON, a PRNG, the reusable
//!   output buffers every tensor-producing function writes into ([`base::buffer`]), how
//!   parallel work is cut into tasks, and tensor values owned or read in place from a file's
//!   memory mapping ([`base::values`]).
//! - [`kernels`]: weight matrices kept in their stored dtype, bf16 staying bf16, and `x · Wᵀ`
//!   ([`kernels::matrix`]); weights quantized in blocks of 32 (q8_0, q4_0) and their integer
//!   products ([`kernels::quant`]); the few vector loops underneath ([`kernels::simd`]), chosen
//!   at run time for the CPU's widest unit with bit-identical results.
//! - [`config`]: `config.json` → validated [`config::HymbaConfig`] with a per-layer
//!   [`config::LayerPlan`] (global or window; owns K/V or reuses layer j).
//! - [`state`]: the hybrid cache (K/V with positions, conv state, SSM state) passed `&mut`
//!   ([`state::cache`]) and its size predicted from the config ([`state::cache_plan`]).
//! - [`checkpoint`]: our safetensors reader, shards, and the weights loader.
//! - [`tokenizer`]: Llama-2 SentencePiece BPE from `tokenizer.json` or `tokenizer.model`,
//!   streaming decode, the Instruct chat format.
//! - [`model`]: the forward pass, one file per concept: a [`model::Sequence`] (its cache and
//!   scratch), one path through the layers for a batch of segments ([`model::pass`]), thin entry
//!   points on [`model::Hymba`], and an optional [`model::LayerObserver`] that sees every layer.
//! - [`features`]: what users do with the model: sampling and the generation loop
//!   ([`features::generate`]), NLL and perplexity in sliding windows ([`features::eval`]), one
//!   prompt's forward pass watched layer by layer ([`features::explain`]), and the
//!   OpenAI-compatible server's scheduler ([`features::serve`]), and the state after the meta
//!   tokens kept on disk once per model ([`features::prefix_cache`]).
//! - The command line, `src/bin/hymba-ref/`, parses flags and calls the library.

pub mod base;
pub mod checkpoint;
pub mod config;
pub mod features;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod kernels;
pub mod model;
pub mod state;
pub mod tokenizer;

pub use base::error::{Error, ErrorKind, Result};

/// The small demo model bundled with the repository (`reference/demo-model`, trained by
/// `reference/train_demo.py`; see its `MODEL_CARD.md`): the commands' default `--model`.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/demo-model");
