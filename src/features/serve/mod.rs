//! Serving many clients from one model: the engine side of `hymba-ref serve`.
//!
//! ```text
//! client threads                         scheduler thread (owns the model and one Batch)
//!   parse, tokenize ── Job ──► queue ──► prefill one chunk of the next job   ┐ one iteration
//!                                        one decode step of every member     ┘
//!   write each piece ◄── Event::Text ─── sample, stop rules, text (generate's Decoder, TextSink)
//!   final answer     ◄── Event::Done ─── leaves on EOS, stop string, max_tokens, client gone
//! ```
//!
//! [`scheduler`] is continuous batching with arrivals: a job waits in a bounded queue, is
//! prefilled in chunks of at most one pass (512 rows, or fewer: `--prefill-chunk`), so a long
//! prompt holds the running decodes back by one chunk at most, joins the
//! [`crate::model::Batch`] after its last chunk, and leaves at the step it stops. Sampling, stop strings and streaming decode are `generate`'s own code
//! ([`crate::features::generate`]), so a request's text is what `generate` gives for the same prompt and
//! settings, alone or among others (each row of a batch step is bit for bit a solo step).
//!
//! [`client`] is a minimal HTTP/1.1 client for loopback tests and the load generator.

pub mod client;
pub mod scheduler;

pub use scheduler::{Event, FinishReason, Finished, Job, Scheduler, SchedulerLimits, Submit};
