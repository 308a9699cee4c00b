//! # hymba-ref
//!
//! A pure-Rust, from-scratch reference engine for NVIDIA's Hymba small language models
//! ("Hymba: A Hybrid-head Architecture for Small Language Models", arXiv 2411.13676).

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod model;
mod rng;

pub use error::{Error, ErrorKind, Result};
