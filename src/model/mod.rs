//! The Hymba model, one file per paper concept.
//!
//! Functions that produce a tensor write it into an `out` buffer supplied by the caller and
//! return a view of it: `let h = rms_norm(x, w, eps, &mut buf.h); // (T, H)`. The buffers live
//! with the sequence ([`Sequence`]: its cache and its scratch) and are reshaped only when a shape
//! changes ([`crate::base::buffer::shaped`]), so a decode step, whose shapes repeat, allocates nothing.
//!
//! - [`hymba`]: the model and its entry points (`forward`, `next_token_logits`, …), thin
//!   wrappers around [`pass`], the one path through the layers: a batch of segments (rows of one
//!   or more sequences), in passes of at most [`pass::MAX_ROWS_PER_PASS`] rows.
//! - [`layer`]: one layer; [`attention`], [`ssm`], [`fusion`], [`mlp`], [`norm`], [`rope`]: its parts.
//! - [`segment`]: segments, the rows of one sequence in a call or a pass.
//! - [`sequence`]: a sequence's state and scratch; [`batch`]: sequences decoding together.
//! - [`trace`]: observing the path layer by layer; [`forward_trace`]: the observer golden tests use.
//! - [`profile`]: timing the path phase by phase (`bench --profile`); [`parallel`]: row-wise
//!   work over the rows of a pass, in parallel when there are many.
//!
//! [`plain`] is the exception: the whole forward pass in one plain, allocating file, the one to
//! read first, and the truth the rest is tested against.
//!
//! ## How rows travel (the batching nouns, in the order a call meets them)
//! - a [`Sequence`] is one text's state: its cache and its scratch buffers;
//! - a [`Batch`] is sequences decoding together, one row each a step, joining and leaving at
//!   any step;
//! - a [`Segment`] is what one call feeds one sequence: its cache, its new ids, and which of
//!   its final rows to [`Keep`] (the last, for the next token, or all of them);
//! - `Planned` (in [`pass`]) is what the call works out for each segment before its first pass:
//!   how many rows (the meta tokens first for an empty sequence), its RoPE base, where its kept
//!   rows go;
//! - a pass ([`segment::Pass`]) is at most [`pass::MAX_ROWS_PER_PASS`] rows sent through all the
//!   layers at once, cut from the segments in order; each segment's share of it is a
//!   [`segment::Part`];
//! - [`Scratch`] is the buffers a call writes into, kept from call to call.
//!
//! A one-sequence prefill is one segment in one or more passes; a batched decode step is one
//! pass of one-row parts, one per sequence.

pub mod attention;
pub mod batch;
pub mod forward_trace;
pub mod fusion;
pub mod hymba;
pub mod layer;
pub mod mlp;
pub mod norm;
pub mod parallel;
pub mod pass;
pub mod plain;
pub mod profile;
pub mod rope;
pub mod segment;
pub mod sequence;
pub mod ssm;
pub mod trace;

pub use batch::{Batch, SequenceId};
pub use forward_trace::ForwardTrace;
pub use hymba::Hymba;
pub use pass::Scratch;
pub use profile::{Phase, Profile};
pub use segment::{Keep, Segment};
pub use sequence::Sequence;
pub use trace::{LayerObserver, LayerTrace};
