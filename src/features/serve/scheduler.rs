//! One thread owns the model and one [`Batch`](crate::model::Batch); jobs arrive from any thread and leave when done.
//!
//! ```text
//! loop:
//!   take the jobs that arrived; drop those whose client went away (queued, prefilling, decoding)
//!   if nothing is prefilling: the queue's first job starts, if the batch has room and its cache
//!       at prompt + max_tokens fits beside the members' (one job always runs)
//!   prefill one chunk of it (one pass, ≤ prefill_chunk ≤ MAX_ROWS_PER_PASS rows); after its
//!       last chunk, sample its first token and add it to the batch
//!   one decode step of every member: sample each row, hand the text to its client, leave on
//!       EOS, a stop string, max_tokens, or a client that is gone
//! ```
//!
//! By default a prompt is cut into chunks exactly where one call over the whole prompt would cut
//! its passes ([`rows_per_pass`]), so the prefill gives the logits `generate` gets, bit for bit;
//! a smaller [`SchedulerLimits::prefill_chunk`] gives them within rounding. Each member keeps
//! `generate`'s own per-sequence state (`Decoder`: sampler, EOS, max tokens) and text layer
//! (`TextSink`: streaming decode, stop strings), so its tokens and text are what `generate`
//! gives for the same prompt and options.

use crate::state::cache_plan::{CachePlan, ScalarType};
use crate::config::HymbaConfig;
use crate::base::error::{Error, ErrorKind, Result};
use crate::features::generate::text::TextSink;
use crate::features::generate::{Decoder, Decoding, Flow, GenerateOptions, Left, Next, StopReason, RESERVE_TOKENS_LIMIT};
use crate::model::pass::{rows_per_pass, MAX_ROWS_PER_PASS};
use crate::model::{Hymba, Sequence};
use crate::tokenizer::Tokenizer;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request, tokenized and checked: what to generate and where its events go.
pub struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub stops: Vec<String>,
    /// Text pieces as they become final, then one [`Event::Done`] or [`Event::Failed`].
    pub events: Sender<Event>,
    /// Set by the client's side when the client went away: the job leaves at the next iteration.
    pub cancelled: Arc<AtomicBool>,
}

/// What the scheduler tells a job's client.
#[derive(Debug)]
pub enum Event {
    /// Final text (never empty; a stop string and what follows never arrive).
    Text(String),
    Done(Finished),
    /// The job did not run or could not go on (the server shuts down, a non-finite logit).
    Failed(Error),
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached, or the server cut the reply short at shutdown.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The scheduler's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// The most sequences decoding at once (the one being prefilled counted).
    pub max_batch: usize,
    /// The most cache bytes (f32) the running jobs may reach together, each counted at prompt +
    /// max_tokens ([`cache_bound`]); one job always runs.
    pub max_cache_bytes: usize,
    /// The most jobs waiting to start.
    pub max_queue: usize,
    /// The most prompt ids one prefill chunk feeds (between two decode steps), at most
    /// [`MAX_ROWS_PER_PASS`]; a prompt is cut in even chunks ([`rows_per_pass`]). At
    /// [`MAX_ROWS_PER_PASS`] the chunks are the passes of one call over the whole prompt, and the
    /// logits `generate`'s bit for bit; smaller chunks let decodes run more often beside a long
    /// prompt, and give its logits within rounding only (`tests/chunked_prefill.rs`).
    pub prefill_chunk: usize,
}

/// The answer to [`Scheduler::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    Queued,
    /// `max_queue` jobs are already waiting: try again later.
    QueueFull,
    ShuttingDown,
}

/// Counters shared between the scheduler thread and the clients' threads.
#[derive(Debug, Default)]
struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    /// The most sequences a decode step has held.
    peak_batch: AtomicUsize,
    shutdown: AtomicBool,
}

/// The handle of the scheduler thread.
pub struct Scheduler {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    limits: SchedulerLimits,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Start the scheduler thread; it owns `model` from now on.
    pub fn start(model: Hymba, tokenizer: Arc<Tokenizer>, limits: SchedulerLimits) -> Result<Scheduler> {
        let (jobs, receiver) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || run(&model, &tokenizer, limits, receiver, &inner))
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the scheduler thread: {e}")))?;
        Ok(Scheduler { jobs, shared, limits, thread: Mutex::new(Some(thread)) })
    }

    /// Queue a job, unless `max_queue` jobs wait already or the server shuts down.
    pub fn submit(&self, job: Job) -> Submit {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Submit::ShuttingDown;
        }
        if self.shared.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.max_queue {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Submit::QueueFull;
        }
        if self.jobs.send(job).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Submit::ShuttingDown;
        }
        Submit::Queued
    }

    /// Jobs waiting to start.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Jobs prefilling or decoding.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// The most sequences one decode step has held so far.
    pub fn peak_batch(&self) -> usize {
        self.shared.peak_batch.load(Ordering::SeqCst)
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Take no more jobs; the scheduler ends every job at its next iteration (waiting ones
    /// [`Event::Failed`], running ones [`Event::Done`] with what they have, `length`) and stops.
    /// Returns when it has.
    pub fn shut_down(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// A job's cache bytes (f32) at prompt + `max_tokens` tokens: what it counts against
/// [`SchedulerLimits::max_cache_bytes`]; `usize::MAX` past what a `usize` holds.
pub fn cache_bound(config: &HymbaConfig, prompt_tokens: usize, max_new_tokens: usize) -> usize {
    let longest = prompt_tokens.saturating_add(max_new_tokens);
    CachePlan::new(config, longest).map_or(usize::MAX, |plan| plan.size.bytes(ScalarType::F32))
}

/// The text layer's callback: each final piece sent to the client.
type OnText = Box<dyn FnMut(&str) -> Result<()>>;
type Sink<'t> = Rc<RefCell<TextSink<'t, OnText>>>;
/// The id loop's callback: the text layer.
type OnToken<'t> = Box<dyn FnMut(u32) -> Result<Flow> + 't>;

/// The job being prefilled, `fed` of its prompt ids in its sequence.
struct Prefill {
    job: Job,
    seq: Sequence,
    fed: usize,
    /// Ids per chunk: one pass each, at most [`SchedulerLimits::prefill_chunk`], even.
    chunk: usize,
    start: Instant,
    cache_bound: usize,
}

/// What the scheduler keeps beside a decoding job's [`Decoder`].
struct Client<'t> {
    job: Job,
    sink: Sink<'t>,
    cache_bound: usize,
}

/// The scheduler thread: see the module's loop.
fn run(model: &Hymba, tokenizer: &Tokenizer, limits: SchedulerLimits, jobs: Receiver<Job>, shared: &Shared) {
    let mut work = Work { model, tokenizer, limits, shared, queue: VecDeque::new(), prefill: None, decoding: Decoding::new() };
    loop {
        if work.is_idle() {
            match jobs.recv_timeout(Duration::from_millis(20)) {
                Ok(job) => work.queue.push_back(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        work.queue.extend(jobs.try_iter());
        if shared.shutdown.load(Ordering::SeqCst) {
            return work.end_all();
        }
        work.drop_cancelled();
        work.start_next_prefill();
        work.prefill_chunk();
        work.decode_step();
        shared.running.store(work.decoding.len() + usize::from(work.prefill.is_some()), Ordering::SeqCst);
    }
}

/// Everything the scheduler holds: the queue, the job being prefilled, the jobs decoding.
struct Work<'t> {
    model: &'t Hymba,
    tokenizer: &'t Tokenizer,
    limits: SchedulerLimits,
    shared: &'t Shared,
    queue: VecDeque<Job>,
    prefill: Option<Prefill>,
    decoding: Decoding<Client<'t>, OnToken<'t>>,
}

impl<'t> Work<'t> {
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.prefill.is_none() && self.decoding.is_empty()
    }

    fn leave_queue(&self, jobs: usize) {
        self.shared.waiting.fetch_sub(jobs, Ordering::SeqCst);
    }

    /// Shutdown: waiting jobs fail, running ones end with what they have (`length`).
    fn end_all(mut self) {
        let shutting_down = || Error::new(ErrorKind::Io, "the server is shutting down");
        self.leave_queue(self.queue.len());
        for job in self.queue.drain(..).chain(self.prefill.take().map(|p| p.job)) {
            let _ = job.events.send(Event::Failed(shutting_down()));
        }
        for Left { owner, decoder, seq, .. } in self.decoding.remove_where(|_| true) {
            finish(owner.job, decoder, owner.sink, StopReason::MaxNewTokens, &seq);
        }
        self.shared.running.store(0, Ordering::SeqCst);
    }

    /// Clients that went away: their jobs leave now, wherever they are.
    fn drop_cancelled(&mut self) {
        let gone = |job: &Job| job.cancelled.load(Ordering::SeqCst);
        let before = self.queue.len();
        self.queue.retain(|job| !gone(job));
        self.leave_queue(before - self.queue.len());
        if self.prefill.as_ref().is_some_and(|p| gone(&p.job)) {
            self.prefill = None;
        }
        self.decoding.remove_where(|client| gone(&client.job));
    }

    /// When nothing is prefilling, the queue's first job starts if the batch has room for it and
    /// its cache at prompt + max_tokens fits beside the members' (one job always runs).
    fn start_next_prefill(&mut self) {
        let Some(job) = self.queue.front().filter(|_| self.prefill.is_none()) else { return };
        let bound = cache_bound(&self.model.config, job.prompt.len(), job.options.max_new_tokens);
        let reserved = self.decoding.owners().fold(0usize, |sum, c| sum.saturating_add(c.cache_bound));
        let fits = self.decoding.is_empty() || reserved.saturating_add(bound) <= self.limits.max_cache_bytes;
        if self.decoding.len() >= self.limits.max_batch || !fits {
            return;
        }
        let job = self.queue.pop_front().expect("a front job");
        self.leave_queue(1);
        let mut seq = self.model.new_sequence();
        seq.reserve((job.prompt.len() + job.options.max_new_tokens).min(RESERVE_TOKENS_LIMIT));
        let chunk = rows_per_pass(job.prompt.len(), self.limits.prefill_chunk.clamp(1, MAX_ROWS_PER_PASS));
        self.prefill = Some(Prefill { job, seq, fed: 0, chunk, start: Instant::now(), cache_bound: bound });
    }

    /// One chunk of the job being prefilled; after its last, its first token, and it joins the
    /// batch (or is done already).
    fn prefill_chunk(&mut self) {
        let Some(mut p) = self.prefill.take() else { return };
        let end = (p.fed + p.chunk).min(p.job.prompt.len());
        let logits = self.model.next_token_logits(&p.job.prompt[p.fed..end], &mut p.seq).map(|l| l.to_vec()); // (V)
        p.fed = end;
        match logits {
            Err(e) => {
                let _ = p.job.events.send(Event::Failed(e));
            }
            Ok(_) if end < p.job.prompt.len() => self.prefill = Some(p),
            Ok(logits) => match start_decoding(self.model, self.tokenizer, &p, &logits) {
                Err(e) => {
                    let _ = p.job.events.send(Event::Failed(e));
                }
                Ok((decoder, sink, Next::Stop(reason))) => finish(p.job, decoder, sink, reason, &p.seq),
                Ok((decoder, sink, Next::Feed(id))) => {
                    let Prefill { job, seq, cache_bound, .. } = p;
                    self.decoding.join(seq, decoder, id, Client { job, sink, cache_bound });
                }
            },
        }
    }

    /// One decode step of every member; those that stopped leave with their answer.
    fn decode_step(&mut self) {
        if self.decoding.is_empty() {
            return;
        }
        self.shared.peak_batch.fetch_max(self.decoding.len(), Ordering::SeqCst);
        for Left { owner, decoder, seq, outcome } in self.decoding.step(self.model) {
            match outcome {
                Ok(reason) => finish(owner.job, decoder, owner.sink, reason, &seq),
                Err(e) => {
                    let _ = owner.job.events.send(Event::Failed(e)); // fails too if the client is gone
                }
            }
        }
    }
}

/// After a job's last prefill chunk: its decoder and text layer, and its first sampled token.
fn start_decoding<'t>(
    model: &Hymba,
    tokenizer: &'t Tokenizer,
    p: &Prefill,
    logits: &[f32],
) -> Result<(Decoder<OnToken<'t>>, Sink<'t>, Next)> {
    let events = p.job.events.clone();
    let on_text: OnText = Box::new(move |text: &str| {
        events.send(Event::Text(text.to_string())).map_err(|_| Error::new(ErrorKind::Io, "the client went away"))
    });
    let sink: Sink = Rc::new(RefCell::new(TextSink::new(tokenizer, &p.job.stops, on_text)?));
    let pushed = sink.clone();
    let on_token: OnToken = Box::new(move |id| pushed.borrow_mut().push(id));
    let seconds = p.start.elapsed().as_secs_f64();
    let mut decoder = Decoder::new(model, &[], &p.job.prompt, &p.job.options, seconds, on_token)?;
    let next = decoder.next(logits)?;
    Ok((decoder, sink, next))
}

/// A job is done: the text its stop-string check held back, then [`Event::Done`].
fn finish(job: Job, decoder: Decoder<OnToken>, sink: Sink, reason: StopReason, seq: &Sequence) {
    let generation = decoder.finish(reason, seq); // drops the decoder's hold on the sink
    let finish_reason = match reason {
        StopReason::Eos | StopReason::Callback => FinishReason::Stop,
        StopReason::MaxNewTokens => FinishReason::Length,
    };
    let Ok(sink) = Rc::try_unwrap(sink) else { unreachable!("the decoder held the only other reference") };
    let event = match sink.into_inner().finish() {
        Ok(()) => Event::Done(Finished {
            finish_reason,
            prompt_tokens: generation.stats.prompt_tokens,
            completion_tokens: generation.tokens.len(),
        }),
        Err(e) => Event::Failed(e),
    };
    let _ = job.events.send(event);
}
