//! Dynamic batching. Requests queue while the model is busy; one inference thread takes everything
//! waiting (up to a request count) and runs it as length-sorted, token-budgeted batches, so
//! concurrent clients share forward passes instead of waiting in line for their own.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use crate::{embedder::plan_batches, pooling, tokenize::Tokens, Embedder};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the inference worker has stopped")]
    Stopped,
}

struct Job {
    tokens: Vec<Tokens>,
    normalize: bool,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, QueueError>>,
}

/// Handle for request handlers; cloning is cheap.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Job>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Starts the inference thread. It ends when every `Queue` handle is dropped.
    pub fn start(embedder: Arc<Embedder>, max_batch_requests: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker_metrics = metrics.clone();
        let spawned = thread::Builder::new()
            .name("akidb-inference".into())
            .spawn(move || worker(embedder, rx, max_batch_requests.max(1), worker_metrics));
        if let Err(e) = spawned {
            // Without the thread every request gets `Stopped`: the server answers 503, never hangs.
            tracing::error!("could not start the inference thread: {e}");
        }
        Self { tx, metrics }
    }

    /// Queues tokenized texts and waits for their vectors, in the same order.
    pub async fn embed(&self, tokens: Vec<Tokens>, normalize: bool) -> Result<Vec<Vec<f32>>, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue_depth.inc();
        if self.tx.send(Job { tokens, normalize, reply }).is_err() {
            self.metrics.queue_depth.dec();
            return Err(QueueError::Stopped);
        }
        rx.await.unwrap_or(Err(QueueError::Stopped))
    }
}

fn worker(embedder: Arc<Embedder>, mut rx: mpsc::UnboundedReceiver<Job>, max_requests: usize, metrics: Arc<Metrics>) {
    let budget = embedder.max_batch_tokens();
    loop {
        let Some(first) = rx.blocking_recv() else { return };
        let mut jobs = vec![first];
        // Take what queued up meanwhile; the token budget applies to each inference call below.
        while jobs.len() < max_requests {
            let Ok(job) = rx.try_recv() else { break };
            jobs.push(job);
        }
        metrics.queue_depth.dec_by(jobs.len() as i64);
        run_round(&embedder, jobs, budget, &metrics);
    }
}

fn run_round(embedder: &Embedder, jobs: Vec<Job>, budget: usize, metrics: &Metrics) {
    // (job, position) of every text, longest first so batches carry little padding.
    let mut items: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.tokens.len()).map(move |i| (j, i))).collect();
    items.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].tokens[i].len()));
    let mut results: Vec<Vec<Vec<f32>>> = jobs.iter().map(|job| vec![Vec::new(); job.tokens.len()]).collect();
    let mut failure: Option<QueueError> = None;

    let lengths = items.iter().map(|&(j, i)| jobs[j].tokens[i].len());
    for range in plan_batches(lengths, budget, embedder.max_batch_size()) {
        let members = &items[range];
        let batch: Vec<&Tokens> = members.iter().map(|&(j, i)| &jobs[j].tokens[i]).collect();
        let t = Instant::now();
        match embedder.infer(&batch) {
            Ok(vectors) => {
                metrics.observe_batch(batch.len(), t.elapsed());
                for (&(j, i), v) in members.iter().zip(vectors) {
                    results[j][i] = v;
                }
            }
            Err(e) => {
                tracing::error!("inference failed: {e}");
                failure = Some(QueueError::Inference(e.to_string()));
                break;
            }
        }
    }
    metrics.observe_round(jobs.len());
    for (job, mut vectors) in jobs.into_iter().zip(results) {
        let reply = match &failure {
            Some(e) => Err(e.clone()),
            None => {
                if job.normalize {
                    vectors.iter_mut().for_each(|v| pooling::normalize(v));
                }
                Ok(vectors)
            }
        };
        // The client may have gone away; nothing to do then.
        let _ = job.reply.send(reply);
    }
}
