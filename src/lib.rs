//! # hymba-ref
//!
//! A pure-Rust, from-scratch reference engine for NVIDIA's Hymba small language models
//! ("Hymba: A Hybrid-head Architecture for Small Language Models", arXiv 2411.13676).

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod model;

pub use error::{Error, ErrorKind, Result};

/// The small demo model bundled with the repository (`reference/demo-model`, trained by
/// `reference/train_demo.py`; see its `MODEL_CARD.md`): the commands' default `--model`.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/demo-model");
