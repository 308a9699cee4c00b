//! # hymba-ref
//!
//! A pure-Rust, from-scratch reference engine for NVIDIA's Hymba small language models
//! ("Hymba: A Hybrid-head Architecture for Small Language Models", arXiv 2411.13676).
//! (Crate documentation with goals, non-goals and glossary: see below, filled in as modules land.)

pub mod error;
pub mod tokenizer;

pub use error::{Error, ErrorKind, Result};
