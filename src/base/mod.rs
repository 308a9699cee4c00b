//! What every other part of the engine stands on, and which knows nothing of Hymba: one error
//! type, careful file access, a JSON scanner for untrusted text, a small PRNG, reusable output
//! buffers, how parallel work is cut into tasks, and tensor values owned or read in place from a
//! memory-mapped file.

pub mod buffer;
pub mod error;
pub mod files;
pub(crate) mod json_scan;
pub mod rng;
pub mod tasks;
pub mod values;
