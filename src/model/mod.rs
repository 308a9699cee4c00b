//! The Hymba model, one file per paper concept.

pub mod attention;
pub mod fusion;
pub mod hymba;
pub mod layer;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod ssm;

pub use hymba::{ForwardTrace, Hymba};
