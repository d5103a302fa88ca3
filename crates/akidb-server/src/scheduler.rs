//! Who waits for whom. One inference thread per model owns every admitted request and, before each
//! inference call, picks the next batch across all of them:
//!
//! - **Shortest remaining work first.** The request with the fewest tokens left leads the batch,
//!   so a one-text query waits at most for the batch in progress, never for a bulk job's queue.
//!   Other requests join when they fit whole (concurrent queries share one call) or, when they
//!   cannot finish in this call, only with texts no longer than the batch is already padded to.
//!   A lone bulk request is cut exactly as [`plan_batches`](akidb_engine::batching::plan_batches) cuts it.
//! - **Short batches while queries are about.** For a few seconds after a query arrives, batches
//!   are cut at a quarter of the token budget (at most 256 tokens), so the batch in progress is
//!   short too.
//! - **Answer per batch.** A request is answered when its own last text is done.
//! - **Drop abandoned work.** A request whose handler is gone (client hung up, timed out) is
//!   removed before the next pick; its texts are counted in `akidb_dropped_texts_total`.
//! - **Bounded work.** Admission is by queued tokens ([`Scheduler::admit`]); the [`Ticket`] travels
//!   with the job and is released as its texts are done or dropped, so work that is queued, not
//!   just handlers that are alive, is what the bound covers.
//! - **The request's span travels too** (as text-embeddings-inference's queue carries each
//!   entry's): the worker records into it how long the request queued and was in inference, and
//!   each batch it is part of is a child span of it, so a trace shows the inference thread's work
//!   for that request under the request.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::Span;

use super::{
    backend::{Backend, Output},
    metrics::{Metrics, ModelMetrics},
};
use akidb_engine::{batching::Budget, pooling, tokenize::Tokens};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the inference worker has stopped")]
    Stopped,
}

/// Over the queued-token bound; `retry_after` is the estimated time to drain the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{queued} tokens are queued (limit {limit}); retry in about {retry_after} s")]
pub struct Overloaded {
    pub queued: usize,
    pub limit: usize,
    pub retry_after: u64,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub budget: Budget,
    pub max_queued_tokens: usize,
    /// Most requests sharing one inference call.
    pub max_batch_requests: usize,
    /// A batch running longer than this (and longer than 20 typical batches) means "stuck".
    pub stall_floor: Duration,
}

/// State the worker shares with handlers and `/health`.
struct Shared {
    metrics: ModelMetrics,
    max_queued_tokens: usize,
    stall_floor: Duration,
    queued_tokens: AtomicUsize,
    alive: AtomicBool,
    epoch: Instant,
    /// Microseconds since `epoch` at which the running batch started (+1); 0 when idle.
    busy_since: AtomicU64,
    /// Moving averages over recent batches, for stall detection and `Retry-After`.
    batch_micros: AtomicU64,
    tokens_per_sec: AtomicU64,
}

impl Shared {
    fn micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX) + 1
    }

    fn release(&self, tokens: usize) {
        if tokens > 0 {
            let before = self.queued_tokens.fetch_sub(tokens, Ordering::AcqRel);
            self.metrics.queued_tokens.set(i64::try_from(before - tokens).unwrap_or(i64::MAX));
        }
    }
}

/// Admitted tokens, held by a job until its texts are done or dropped.
pub struct Ticket {
    shared: Arc<Shared>,
    tokens: usize,
}

impl Ticket {
    fn release(&mut self, tokens: usize) {
        let n = tokens.min(self.tokens);
        self.tokens -= n;
        self.shared.release(n);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("tokens", &self.tokens).finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.release(self.tokens);
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, SchedulerError>>;

struct Job {
    tokens: Vec<Tokens>,
    output: Output,
    normalize: bool,
    reply: Reply,
    ticket: Ticket,
    /// The handler's concurrency permit: a client that hangs up frees it only when its work is gone.
    _permit: Option<OwnedSemaphorePermit>,
    /// The span the request was submitted in.
    span: Span,
    queued_at: Instant,
}

/// Handle for request handlers and `/health`. The worker stops when the last handle is dropped.
pub struct Scheduler {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// Requests up to this many tokens (one batch) may use the admission reserve.
    small: usize,
}

impl Scheduler {
    pub fn start(backend: Arc<dyn Backend>, config: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel();
        let small = config.budget.max_tokens;
        let shared = Arc::new(Shared {
            metrics: metrics.model(&backend.info().id),
            max_queued_tokens: config.max_queued_tokens.max(1),
            stall_floor: config.stall_floor,
            queued_tokens: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            batch_micros: AtomicU64::new(0),
            tokens_per_sec: AtomicU64::new(0),
        });
        let worker_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("akidb-inference".into())
            .spawn(move || Worker::new(backend, config, worker_shared).run(&rx));
        if let Err(e) = spawned {
            tracing::error!("could not start the inference thread: {e}");
            shared.alive.store(false, Ordering::Release);
        }
        Self { tx, shared, small }
    }

    /// Admits `tokens` more queued tokens, or says how long to wait. A request that fits in one
    /// batch may also use a reserve of a quarter of the bound: under shortest-work-first it adds
    /// at most one batch of delay, so queries keep working while bulk jobs fill the queue. A
    /// request larger than the whole bound is admitted when nothing else is queued, so no valid
    /// request is refused forever.
    pub fn admit(&self, tokens: usize) -> Result<Ticket, Overloaded> {
        let mut ticket = Ticket { shared: self.shared.clone(), tokens: 0 };
        self.settle(&mut ticket, tokens)?;
        Ok(ticket)
    }

    /// Sets an admitted ticket to `tokens` under the same bound. Handlers admit a lower bound of a
    /// request's tokens before tokenizing, so a flood is refused without tokenizing it, and settle
    /// the real count afterwards.
    pub fn settle(&self, ticket: &mut Ticket, tokens: usize) -> Result<(), Overloaded> {
        let s = &self.shared;
        let limit =
            if tokens <= self.small { s.max_queued_tokens + s.max_queued_tokens / 4 } else { s.max_queued_tokens };
        let mut queued = s.queued_tokens.load(Ordering::Acquire);
        let now = loop {
            let others = queued.saturating_sub(ticket.tokens);
            if tokens > ticket.tokens && others > 0 && others.saturating_add(tokens) > limit {
                return Err(self.overloaded(queued));
            }
            match s.queued_tokens.compare_exchange_weak(queued, others + tokens, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break others + tokens,
                Err(now) => queued = now,
            }
        };
        ticket.tokens = tokens;
        s.metrics.queued_tokens.set(i64::try_from(now).unwrap_or(i64::MAX));
        Ok(())
    }

    fn overloaded(&self, queued: usize) -> Overloaded {
        let rate = self.shared.tokens_per_sec.load(Ordering::Relaxed).max(1);
        let retry_after = (queued as u64).div_ceil(rate).clamp(1, 60);
        Overloaded { queued, limit: self.shared.max_queued_tokens, retry_after }
    }

    /// Queues tokenized texts now; the returned future yields their vectors in order. Dropping
    /// the future abandons the request: its remaining texts are never computed. The current span
    /// goes with the job: the worker records the request's queue and inference times into it.
    pub fn submit(
        &self,
        tokens: Vec<Tokens>,
        output: Output,
        normalize: bool,
        ticket: Ticket,
        permit: Option<OwnedSemaphorePermit>,
    ) -> impl std::future::Future<Output = Result<Vec<Vec<f32>>, SchedulerError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.shared.metrics.queue_depth.inc();
        let job = Job {
            tokens,
            output,
            normalize,
            reply,
            ticket,
            _permit: permit,
            span: Span::current(),
            queued_at: Instant::now(),
        };
        let sent = self.tx.send(job);
        if sent.is_err() {
            self.shared.metrics.queue_depth.dec();
        }
        async move { rx.await.unwrap_or(Err(SchedulerError::Stopped)) }
    }

    /// Whether the worker can make progress: alive, and no batch running far longer than usual.
    pub fn health(&self) -> Result<(), String> {
        let s = &self.shared;
        if !s.alive.load(Ordering::Acquire) {
            return Err("the inference worker has stopped".into());
        }
        let since = s.busy_since.load(Ordering::Acquire);
        if since > 0 {
            let running = Duration::from_micros(s.micros().saturating_sub(since));
            let typical = Duration::from_micros(s.batch_micros.load(Ordering::Relaxed)) * 20;
            if running > s.stall_floor.max(typical) {
                return Err(format!("inference has made no progress for {:.1} s", running.as_secs_f64()));
            }
        }
        Ok(())
    }

    /// This model's series of the metrics.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.shared.metrics
    }

    pub fn queued_tokens(&self) -> usize {
        self.shared.queued_tokens.load(Ordering::Acquire)
    }
}

struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    /// Runs on a panic too: `/health` then tells the truth.
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        if thread::panicking() {
            tracing::error!("the inference worker panicked; /health now answers 503");
        }
    }
}

/// One admitted request inside the worker.
struct Entry {
    tokens: Vec<Tokens>,
    /// Text indices, longest first; `order[front..back]` are still to do.
    order: Vec<usize>,
    front: usize,
    back: usize,
    remaining_tokens: usize,
    results: Vec<Vec<f32>>,
    output: Output,
    normalize: bool,
    reply: Option<Reply>,
    ticket: Ticket,
    permit: Option<OwnedSemaphorePermit>,
    span: Span,
    queued_at: Instant,
    /// When the first batch with any of its texts started.
    started: Option<Instant>,
}

impl Entry {
    fn new(job: Job) -> Self {
        let mut order: Vec<usize> = (0..job.tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(job.tokens[i].len()));
        let remaining_tokens = job.tokens.iter().map(Tokens::len).sum();
        Self {
            back: order.len(),
            order,
            front: 0,
            remaining_tokens,
            results: vec![Vec::new(); job.tokens.len()],
            tokens: job.tokens,
            output: job.output,
            normalize: job.normalize,
            reply: Some(job.reply),
            ticket: job.ticket,
            permit: job._permit,
            span: job.span,
            queued_at: job.queued_at,
            started: None,
        }
    }

    fn remaining_lengths(&self) -> Vec<usize> {
        self.order[self.front..self.back].iter().map(|&i| self.tokens[i].len()).collect()
    }

    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    fn remaining_texts(&self) -> usize {
        self.back - self.front
    }

    /// Its first batch is starting: the time it queued is known.
    fn start(&mut self, now: Instant, metrics: &ModelMetrics) {
        if self.started.is_none() {
            self.started = Some(now);
            let queued = now.saturating_duration_since(self.queued_at);
            metrics.request_queue.observe(queued.as_secs_f64());
            self.span.record("queue_ms", crate::metrics::millis(queued));
        }
    }

    /// It leaves the worker: answered (`answered`) or dropped. Its span says how long it queued
    /// and ran either way; the histogram counts the answered ones, so a timeout's partial time
    /// does not pass for an inference time.
    fn leave(&self, answered: bool, metrics: &ModelMetrics) {
        match self.started {
            Some(started) => {
                let ran = started.elapsed();
                if answered {
                    metrics.request_inference.observe(ran.as_secs_f64());
                }
                self.span.record("inference_ms", crate::metrics::millis(ran));
            }
            None => {
                self.span.record("queue_ms", crate::metrics::millis(self.queued_at.elapsed()));
            }
        }
    }
}

/// Runs `f` in `span`, under the subscriber the span was made with rather than this thread's: a
/// span the inference thread opens for a request then lands in the request's trace even when the
/// request's subscriber is a scoped one (tests, an embedding application).
fn within<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    match span.with_subscriber(|(_, dispatch)| dispatch.clone()) {
        Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || span.in_scope(f)),
        None => f(),
    }
}

/// Part of one request in a batch: its `from_front` longest and `from_back` shortest remaining texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub entry: usize,
    pub from_front: usize,
    pub from_back: usize,
}

/// Chooses the next batch. `queues[i]` are request i's remaining text lengths, longest first, in
/// arrival order. Pure, so the policy is tested without threads.
pub fn pick_batch(queues: &[Vec<usize>], budget: Budget, max_requests: usize) -> Vec<Take> {
    let mut by_work: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
    // Stable: equal work keeps arrival order.
    by_work.sort_by_key(|&i| queues[i].iter().sum::<usize>());
    let mut takes = Vec::new();
    let (mut rows, mut width) = (0usize, 0usize);
    for i in by_work {
        if takes.len() >= max_requests.max(1) {
            break;
        }
        let q = &queues[i];
        let mut take = Take { entry: i, from_front: 0, from_back: 0 };
        if rows == 0 {
            // The lead request: its longest texts, as many as fit.
            for &len in q {
                if !budget.fits(rows + 1, width.max(len)) {
                    break;
                }
                rows += 1;
                width = width.max(len);
                take.from_front += 1;
            }
        } else if budget.fits(rows + q.len(), width.max(q[0])) {
            // It finishes in this call: join whole.
            rows += q.len();
            width = width.max(q[0]);
            take.from_front = q.len();
        } else {
            // It cannot finish now: only texts that do not widen the batch.
            for &len in q.iter().rev() {
                if len > width || !budget.fits(rows + 1, width) {
                    break;
                }
                rows += 1;
                take.from_back += 1;
            }
        }
        if take.from_front + take.from_back > 0 {
            takes.push(take);
        }
    }
    takes
}

/// The most padded tokens of a batch a query may have to wait for (a few ms on MiniLM).
const QUERY_BATCH_TOKENS: usize = 256;

/// How long after the last query batches stay short.
const QUERY_MEMORY: Duration = Duration::from_secs(2);

struct Worker {
    /// First field, so it drops first: `alive` is false before any waiting request hears "stopped".
    _alive: AliveGuard,
    backend: Arc<dyn Backend>,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    entries: Vec<Entry>,
    /// When a request that fits in one batch (a query) last arrived.
    last_query: Option<Instant>,
}

impl Worker {
    fn new(backend: Arc<dyn Backend>, config: SchedulerConfig, shared: Arc<Shared>) -> Self {
        Self { _alive: AliveGuard(shared.clone()), backend, config, shared, entries: Vec::new(), last_query: None }
    }

    fn accept(&mut self, job: Job) {
        let entry = Entry::new(job);
        if entry.remaining_tokens <= self.config.budget.max_tokens {
            self.last_query = Some(Instant::now());
        }
        self.entries.push(entry);
    }

    /// While queries are about, batches are cut at a quarter of the budget (at most 256 padded
    /// tokens), so the batch a query
    /// may have to wait for is short. Throughput hardly changes (256 vs 1024 padded tokens per
    /// call: -2% on MiniLM, docs/performance.md); alone, bulk work gets the whole budget.
    fn budget(&self) -> Budget {
        let full = self.config.budget;
        match self.last_query {
            Some(t) if t.elapsed() < QUERY_MEMORY => {
                Budget::new((full.max_tokens / 4).min(QUERY_BATCH_TOKENS), full.max_rows)
            }
            _ => full,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        loop {
            if self.entries.is_empty() {
                match rx.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.accept(job);
            }
            self.drop_abandoned();
            if !self.entries.is_empty() {
                self.run_batch();
            }
        }
    }

    fn drop_abandoned(&mut self) {
        let metrics = &self.shared.metrics;
        self.entries.retain(|e| {
            if !e.abandoned() {
                return true;
            }
            metrics.dropped_texts.inc_by(e.remaining_texts() as u64);
            metrics.queue_depth.dec();
            e.leave(false, metrics);
            false
        });
    }

    fn run_batch(&mut self) {
        let mut queues: Vec<Vec<usize>> = self.entries.iter().map(Entry::remaining_lengths).collect();
        let mut takes = pick_batch(&queues, self.budget(), self.config.max_batch_requests);
        // One call computes one kind of output: the lead request's. Requests that want the other
        // sit this batch out (the lead stays the lead: it still has the least work).
        let output = takes.first().map_or(Output::Rows, |t| self.entries[t.entry].output);
        if takes.iter().any(|t| self.entries[t.entry].output != output) {
            for (queue, entry) in queues.iter_mut().zip(&self.entries) {
                if entry.output != output {
                    queue.clear();
                }
            }
            takes = pick_batch(&queues, self.budget(), self.config.max_batch_requests);
        }
        // (entry, text index) per row.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for t in &takes {
            let e = &self.entries[t.entry];
            rows.extend(e.order[e.front..e.front + t.from_front].iter().map(|&i| (t.entry, i)));
            rows.extend(e.order[e.back - t.from_back..e.back].iter().map(|&i| (t.entry, i)));
        }
        for t in &takes {
            let e = &mut self.entries[t.entry];
            e.front += t.from_front;
            e.back -= t.from_back;
        }
        if rows.is_empty() {
            self.finish_done();
            return;
        }
        // One child span per request in the call, open for the call's duration.
        let now = Instant::now();
        let spans: Vec<Span> = takes
            .iter()
            .map(|t| {
                let e = &mut self.entries[t.entry];
                e.start(now, &self.shared.metrics);
                let texts = t.from_front + t.from_back;
                within(&e.span, || {
                    tracing::debug_span!("batch", texts, batch_texts = rows.len(), batch_requests = takes.len())
                })
            })
            .collect();
        let batch: Vec<&Tokens> = rows.iter().map(|&(e, i)| &self.entries[e].tokens[i]).collect();
        let padded = batch.len() * batch.iter().map(|t| t.len()).max().unwrap_or(0);
        let real: usize = batch.iter().map(|t| t.len()).sum();

        let started = Instant::now();
        self.shared.busy_since.store(self.shared.micros(), Ordering::Release);
        let result = match output {
            Output::Rows => self.backend.forward(&batch),
            Output::Tokens => self.backend.forward_tokens(&batch),
        };
        self.shared.busy_since.store(0, Ordering::Release);
        drop(spans);
        let elapsed = started.elapsed();
        self.observe(rows.len(), takes.len(), padded, elapsed);

        match result {
            Ok(vectors) if vectors.len() == rows.len() => {
                for (&(e, i), v) in rows.iter().zip(vectors) {
                    let entry = &mut self.entries[e];
                    entry.remaining_tokens -= entry.tokens[i].len();
                    entry.ticket.release(entry.tokens[i].len());
                    entry.results[i] = v;
                }
            }
            other => {
                let message = match other {
                    Ok(v) => format!("the backend returned {} vectors for {} texts", v.len(), rows.len()),
                    Err(e) => e.to_string(),
                };
                tracing::error!(texts = rows.len(), tokens = real, "inference failed: {message}");
                // Only the requests in this batch fail; the others go on.
                for t in &takes {
                    let entry = &mut self.entries[t.entry];
                    entry.ticket.release(usize::MAX);
                    entry.permit = None;
                    if let Some(reply) = entry.reply.take() {
                        entry.leave(true, &self.shared.metrics);
                        let _ = reply.send(Err(SchedulerError::Inference(message.clone())));
                    }
                }
            }
        }
        self.finish_done();
    }

    /// Answers every request whose last text is done, and forgets failed ones.
    fn finish_done(&mut self) {
        let metrics = &self.shared.metrics;
        self.entries.retain_mut(|e| {
            if e.reply.is_some() && e.front < e.back {
                return true;
            }
            // Everything the request holds is given back before its client hears from it, so
            // a client that sends again at once finds its permit and tokens free.
            e.permit = None;
            e.ticket.release(usize::MAX);
            metrics.queue_depth.dec();
            if let Some(reply) = e.reply.take() {
                // Before the reply, so whoever hears the answer finds the request counted.
                e.leave(true, metrics);
                let mut vectors = std::mem::take(&mut e.results);
                if e.normalize {
                    vectors.iter_mut().for_each(|v| pooling::normalize(v));
                }
                let _ = reply.send(Ok(vectors));
            }
            false
        });
    }

    fn observe(&self, texts: usize, requests: usize, padded: usize, elapsed: Duration) {
        let s = &self.shared;
        s.metrics.observe_batch(texts, requests, elapsed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        let ema = |slot: &AtomicU64, sample: u64| {
            let old = slot.load(Ordering::Relaxed);
            slot.store(if old == 0 { sample } else { (old * 7 + sample) / 8 }, Ordering::Relaxed);
        };
        ema(&s.batch_micros, micros);
        ema(&s.tokens_per_sec, (padded as u64).saturating_mul(1_000_000) / micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(tokens: usize) -> Budget {
        Budget::new(tokens, 128)
    }

    #[test]
    fn a_lone_request_is_cut_like_the_cli_cuts_it() {
        let q = vec![vec![50, 40, 40, 30, 20, 20, 10]];
        let take = pick_batch(&q, b(100), 64);
        assert_eq!(take, vec![Take { entry: 0, from_front: 2, from_back: 0 }]);
        assert_eq!(akidb_engine::batching::plan_batches(q[0].iter().copied(), b(100))[0], 0..2);
    }

    #[test]
    fn the_request_with_least_work_leads_and_a_bulk_one_only_fills_without_widening() {
        let bulk: Vec<usize> = std::iter::repeat_n(30, 100).chain(std::iter::repeat_n(4, 3)).collect();
        let probe = vec![8];
        let take = pick_batch(&[bulk, probe], b(100), 64);
        assert_eq!(
            take,
            vec![Take { entry: 1, from_front: 1, from_back: 0 }, Take { entry: 0, from_front: 0, from_back: 3 }]
        );
    }

    #[test]
    fn concurrent_small_requests_share_one_call() {
        let queues = vec![vec![9], vec![7], vec![12, 3], vec![5]];
        let take = pick_batch(&queues, b(1000), 64);
        assert_eq!(take.len(), 4);
        assert_eq!(take.iter().map(|t| t.from_front).sum::<usize>(), 5);
        // capped by requests per call
        assert_eq!(pick_batch(&queues, b(1000), 2).len(), 2);
    }

    #[test]
    fn empty_queues_are_skipped() {
        assert!(pick_batch(&[vec![], vec![]], b(10), 4).is_empty());
        assert_eq!(pick_batch(&[vec![], vec![3]], b(10), 4), vec![Take { entry: 1, from_front: 1, from_back: 0 }]);
    }
}
