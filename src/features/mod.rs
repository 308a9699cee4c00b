//! What users do with the model, built on [`crate::model`] and [`crate::tokenizer`]: generate and
//! chat ([`generate`]), score a text ([`eval`]), watch one forward pass layer by layer
//! ([`explain`]), serve many clients at once ([`serve`]), and keep the state after the meta
//! tokens on disk once per model ([`prefix_cache`]).

pub mod eval;
pub mod explain;
pub mod generate;
pub mod prefix_cache;
pub mod serve;
