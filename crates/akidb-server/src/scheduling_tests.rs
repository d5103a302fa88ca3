//! Who waits for whom, what is dropped, what is rejected, what `/health` says — with a fake backend
//! whose every batch waits for the test's go-ahead, so each outcome is decided by the test, not by
//! a race. Routes are driven in process with `tower::ServiceExt::oneshot`, as axum's examples do.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use axum::{
    body::{to_bytes, Body},
    http::{Request, StatusCode},
    Router,
};
use parking_lot::Mutex;
use serde_json::Value;
use tower::ServiceExt;

use super::{
    backend::{Backend, BackendError, Output},
    router,
    scheduler::{Scheduler, SchedulerConfig, SchedulerError},
    AppState, Server, ServerConfig,
};
use crate::metrics::Metrics;
use akidb_engine::{
    batching::Budget,
    model::ModelInfo,
    options::EncodeOptions,
    tokenize::{Input, Tokens},
};

enum Step {
    Go,
    Fail,
    Panic,
}

/// Texts are `"<tag> w w w"`: the tag becomes the first token id, each further word one token.
/// Each row's vector is `[tag, tokens]`, so a test can tell whose text came back where.
struct Fake {
    info: ModelInfo,
    budget: Budget,
    /// Tags of every batch handed to `embed`, in order.
    batches: Mutex<Vec<Vec<u32>>>,
    started: Mutex<mpsc::Sender<Vec<u32>>>,
    /// While the test holds the sender, every batch waits for a [`Step`]; dropped, batches run freely.
    gate: Mutex<mpsc::Receiver<Step>>,
    healthy: AtomicBool,
    /// Texts handed to `tokenize`: a refused request should not have cost any.
    tokenized: AtomicUsize,
}

struct Control {
    fake: Arc<Fake>,
    started: mpsc::Receiver<Vec<u32>>,
    gate: Option<mpsc::Sender<Step>>,
}

impl Control {
    fn next_batch(&self) -> Vec<u32> {
        self.started.recv_timeout(Duration::from_secs(10)).expect("the worker started a batch")
    }

    fn step(&self, step: Step) {
        self.gate.as_ref().expect("gated").send(step).expect("the worker waits at the gate");
    }

    fn open(&mut self) {
        self.gate = None;
    }

    fn tags_seen(&self) -> Vec<u32> {
        self.fake.batches.lock().iter().flatten().copied().collect()
    }
}

fn fake(budget: Budget) -> Control {
    fake_model(budget, ModelInfo { id: "test/fake".into(), dimension: 2, max_seq_length: 64, ..Default::default() })
}

fn fake_model(budget: Budget, info: ModelInfo) -> Control {
    let (started_tx, started) = mpsc::channel();
    let (gate, gate_rx) = mpsc::channel();
    let fake = Arc::new(Fake {
        info,
        budget,
        batches: Mutex::new(Vec::new()),
        started: Mutex::new(started_tx),
        gate: Mutex::new(gate_rx),
        healthy: AtomicBool::new(true),
        tokenized: AtomicUsize::new(0),
    });
    Control { fake, started, gate: Some(gate) }
}

impl Backend for Fake {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn budget(&self) -> Budget {
        self.budget
    }

    fn tokenize(&self, inputs: &[Input], _options: &EncodeOptions) -> Result<Vec<Tokens>, BackendError> {
        self.tokenized.fetch_add(inputs.len(), Ordering::Relaxed);
        inputs
            .iter()
            .map(|input| {
                let t = match input {
                    Input::Single(t) => t.clone(),
                    Input::Pair(a, b) => format!("{a} {b}"),
                };
                let mut words = t.split_whitespace();
                let tag: u32 = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| BackendError::Tokenize(format!("fake texts start with a numeric tag: {t:?}")))?;
                let mut ids: Vec<u32> = std::iter::once(tag).chain(words.map(|_| 7)).collect();
                let truncated = ids.len() > self.info.max_seq_length;
                ids.truncate(self.info.max_seq_length);
                Ok(Tokens { type_ids: vec![0; ids.len()], ids, truncated, pool_from: 0 })
            })
            .collect()
    }

    fn forward(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        let tags: Vec<u32> = batch.iter().map(|t| t.ids[0]).collect();
        self.batches.lock().push(tags.clone());
        let _ = self.started.lock().send(tags);
        match self.gate.lock().recv() {
            Ok(Step::Go) | Err(_) => {}
            Ok(Step::Fail) => return Err(BackendError::Inference("the fake failed this batch".into())),
            Ok(Step::Panic) => panic!("the fake backend panicked"),
        }
        Ok(batch.iter().map(|t| vec![t.ids[0] as f32, t.len() as f32]).collect())
    }

    /// Per token `[tag, position]`, after the same gate; a batch of these is tagged negative.
    fn forward_tokens(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>, BackendError> {
        let tags: Vec<u32> = batch.iter().map(|t| t.ids[0] + 1000).collect();
        self.batches.lock().push(tags.clone());
        let _ = self.started.lock().send(tags);
        if let Ok(Step::Fail) = self.gate.lock().recv() {
            return Err(BackendError::Inference("the fake failed this batch".into()));
        }
        Ok(batch.iter().map(|t| (0..t.len()).flat_map(|p| [t.ids[0] as f32, p as f32]).collect()).collect())
    }

    fn health(&self) -> Result<(), BackendError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BackendError::Unhealthy("the fake says it is unwell".into()))
        }
    }
}

fn texts(tag: u32, n: usize, words: usize) -> Vec<String> {
    (0..n).map(|_| format!("{tag}{}", " w".repeat(words))).collect()
}

fn scheduler(control: &Control, max_queued_tokens: usize) -> (Scheduler, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let config = SchedulerConfig {
        budget: control.fake.budget,
        max_queued_tokens,
        max_batch_requests: 64,
        stall_floor: Duration::from_secs(3600),
    };
    (Scheduler::start(control.fake.clone(), config, metrics.clone()), metrics)
}

fn submit(
    s: &Scheduler,
    control: &Control,
    texts: &[String],
) -> impl std::future::Future<Output = Result<Vec<Vec<f32>>, SchedulerError>> {
    let inputs: Vec<Input> = texts.iter().cloned().map(Input::Single).collect();
    let tokens = control.fake.tokenize(&inputs, &EncodeOptions::default()).expect("fake tokens");
    let ticket = s.admit(tokens.iter().map(Tokens::len).sum()).expect("admitted");
    s.submit(tokens, Output::Rows, false, ticket, None)
}

/// `name` summed over its series (each model has its own).
fn metric(metrics: &Metrics, name: &str) -> f64 {
    super::metrics::total(&metrics.render(), name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test]
async fn a_one_text_request_behind_a_512_text_request_waits_for_one_batch_only() {
    // 8 texts of 8 tokens per batch: the bulk request needs 64 batches.
    let mut control = fake(Budget::new(64, 128));
    let (s, _) = scheduler(&control, 1_000_000);
    let bulk = submit(&s, &control, &texts(1, 512, 7));
    assert_eq!(control.next_batch(), vec![1; 8]);
    let probe = submit(&s, &control, &texts(2, 1, 2));
    control.step(Step::Go);
    assert_eq!(control.next_batch(), vec![2], "the probe leads the very next batch");
    control.step(Step::Go);
    assert_eq!(probe.await.unwrap(), vec![vec![2.0, 3.0]]);
    assert_eq!(control.fake.batches.lock()[1], vec![2], "answered after the batch in progress and its own");

    control.step(Step::Go);
    assert_eq!(control.next_batch(), vec![1, 1], "after a query, bulk batches take a quarter of the budget");
    control.open();
    let vectors = bulk.await.unwrap();
    assert_eq!(vectors.len(), 512);
    assert!(vectors.iter().all(|v| v == &vec![1.0, 8.0]));
    let batches = control.fake.batches.lock().clone();
    assert!(batches.iter().all(|b| b.len() * 8 <= 64 || b == &vec![2]), "every batch within the budget");
    assert_eq!(batches.iter().flatten().filter(|&&t| t == 1).count(), 512, "every bulk text computed once");
}

#[tokio::test]
async fn an_abandoned_request_is_never_computed_further() {
    let mut control = fake(Budget::new(64, 128));
    let (s, metrics) = scheduler(&control, 1_000_000);
    let bulk = submit(&s, &control, &texts(1, 512, 7));
    assert_eq!(control.next_batch(), vec![1; 8]);
    drop(bulk); // the handler is gone: client hung up, or its timeout fired
    let probe = submit(&s, &control, &texts(2, 1, 0));
    control.step(Step::Go);
    assert_eq!(control.next_batch(), vec![2]);
    control.open();
    assert_eq!(probe.await.unwrap(), vec![vec![2.0, 1.0]]);

    assert_eq!(control.tags_seen().iter().filter(|&&t| t == 1).count(), 8, "only the batch in progress ran");
    assert_eq!(metric(&metrics, "akidb_dropped_texts_total"), 504.0);
    assert_eq!(s.queued_tokens(), 0, "the abandoned request's tokens are released");
    assert_eq!(metric(&metrics, "akidb_queue_depth"), 0.0);
}

#[tokio::test]
async fn a_failed_batch_fails_only_its_own_requests() {
    let mut control = fake(Budget::new(16, 128));
    let (s, _) = scheduler(&control, 1_000_000);
    let a = submit(&s, &control, &texts(1, 4, 7)); // 2 batches of 2
    assert_eq!(control.next_batch(), vec![1, 1]);
    let b = submit(&s, &control, &texts(2, 1, 7));
    control.step(Step::Fail);
    assert!(matches!(a.await, Err(SchedulerError::Inference(m)) if m.contains("fake failed")));
    assert_eq!(control.next_batch(), vec![2], "the worker goes on with the next request");
    control.open();
    assert_eq!(b.await.unwrap(), vec![vec![2.0, 8.0]]);
    assert_eq!(s.queued_tokens(), 0);
}

#[test]
fn admission_is_bounded_by_queued_tokens_with_a_reserve_for_queries() {
    let control = fake(Budget::new(16, 128));
    let (s, _) = scheduler(&control, 100);
    let first = s.admit(80).expect("room");
    let refused = s.admit(40).expect_err("over the bound");
    assert_eq!((refused.queued, refused.limit), (80, 100));
    assert!(refused.retry_after >= 1);
    // a one-batch query still gets in, up to a quarter of the bound beyond it
    let queries = [s.admit(16).expect("queries use the reserve"), s.admit(16).expect("up to 125")];
    let refused = s.admit(16).expect_err("the reserve is bounded too");
    assert_eq!(refused.queued, 112);
    drop((first, queries));
    assert_eq!(s.queued_tokens(), 0);
    // larger than the whole bound, but alone: admitted rather than refused forever
    let mut big = s.admit(300).expect("an empty queue takes any request");
    s.settle(&mut big, 500).expect("and lets it grow to its real size");
    assert!(s.admit(1).is_err(), "nothing else while it is queued");
    drop(big);
    assert_eq!(s.queued_tokens(), 0);
    // an estimate admitted under the bound is refused when its real size is over it
    let held = s.admit(60).expect("room");
    let mut estimate = s.admit(30).expect("the estimate fits");
    assert_eq!(s.settle(&mut estimate, 50).expect_err("the real count does not").queued, 90);
    s.settle(&mut estimate, 40).expect("a real count that fits");
    assert_eq!(s.queued_tokens(), 100);
    drop((held, estimate));
    assert_eq!(s.queued_tokens(), 0);
}

// --- the same, through the routes ---------------------------------------------------------

fn app(control: &Control, config: ServerConfig, stall_floor: Duration) -> (Router, AppState) {
    let state = AppState::new(config);
    state.install(vec![control.fake.clone()], stall_floor);
    (router(state.clone()), state)
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder().method(method).uri(path).header("content-type", "application/json");
    let request = request.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    (status, retry, json)
}

fn embed_body(tag: u32, n: usize, words: usize) -> Value {
    serde_json::json!({ "inputs": texts(tag, n, words), "normalize": false })
}

// The test thread blocks on the fake's channels; the routes run on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_queued_token_bound_is_429_with_retry_after() {
    let mut control = fake(Budget::new(64, 128));
    let config = ServerConfig { max_queued_tokens: 100, ..Default::default() };
    let (app, state) = app(&control, config, Duration::from_secs(3600));
    let running = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/api/v1/embed", Some(embed_body(1, 10, 7))).await })
    };
    assert_eq!(control.next_batch(), vec![1; 8], "80 tokens admitted and running");

    // 80 more tokens: more than one batch, so no reserve.
    let (status, retry, body) = call(&app, "POST", "/embed", Some(embed_body(2, 10, 7))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert_eq!(body["error_type"], "overloaded");
    let (status, retry, body) =
        call(&app, "POST", "/v1/embeddings", Some(serde_json::json!({ "input": texts(3, 10, 7) }))).await;
    assert_eq!((status, body["error"]["type"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limit_error")));
    assert!(retry.is_some());
    assert_eq!(control.fake.tokenized.load(Ordering::Relaxed), 10, "refused before tokenizing");

    control.open();
    let (status, _, body) = running.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 10);
    assert_eq!(state.registry.get().unwrap().models()[0].scheduler.queued_tokens(), 0);
    let (status, _, _) = call(&app, "POST", "/embed", Some(embed_body(2, 10, 7))).await;
    assert_eq!(status, StatusCode::OK, "admitted once the queue drained");
}

// The test thread blocks on the fake's channels; the routes run on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_request_timeout_the_answer_is_504_and_the_rest_is_dropped() {
    let mut control = fake(Budget::new(64, 128));
    let config = ServerConfig { request_timeout: Some(Duration::from_millis(300)), ..Default::default() };
    let (app, state) = app(&control, config, Duration::from_secs(3600));
    let timed = {
        let app = app.clone();
        tokio::spawn(async move {
            call(&app, "POST", "/v1/embeddings", Some(serde_json::json!({ "input": texts(1, 64, 7) }))).await
        })
    };
    assert_eq!(control.next_batch(), vec![1; 8]);
    // The gate stays shut: the batch in progress outlives the timeout.
    let (status, _, body) = timed.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("request timeout"));

    control.open();
    let (status, _, _) = call(&app, "POST", "/embed", Some(embed_body(2, 1, 1))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(control.tags_seen().iter().filter(|&&t| t == 1).count(), 8, "56 texts were never computed");
    assert_eq!(metric(&state.metrics, "akidb_dropped_texts_total"), 56.0);
    assert!(state.metrics.render().contains("akidb_dropped_texts_total{model=\"test/fake\"} 56"));
}

// The test thread blocks on the fake's channels; the routes run on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_a_stalled_or_dead_worker_and_an_unwell_backend() {
    let mut control = fake(Budget::new(64, 128));
    let (app, _) = app(&control, ServerConfig::default(), Duration::from_millis(200));
    assert_eq!(call(&app, "GET", "/health", None).await.0, StatusCode::OK);

    let stuck = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(embed_body(1, 1, 1))).await })
    };
    assert_eq!(control.next_batch(), vec![1]);
    // The batch is held: within a bounded wait /health must turn to 503.
    let mut health = (StatusCode::OK, None, Value::Null);
    for _ in 0..100 {
        health = call(&app, "GET", "/health", None).await;
        if health.0 != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health.0, StatusCode::SERVICE_UNAVAILABLE, "{}", health.2);
    assert!(health.2["error"].as_str().unwrap().contains("no progress"), "{}", health.2);
    control.step(Step::Go);
    assert_eq!(stuck.await.unwrap().0, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/health", None).await.0, StatusCode::OK, "progress again: healthy");

    control.fake.healthy.store(false, Ordering::Release);
    let (status, _, body) = call(&app, "GET", "/health", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unhealthy")));
    control.fake.healthy.store(true, Ordering::Release);

    // The worker dies: the request in flight and every later one get 503, and so does /health.
    let dying = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(embed_body(3, 1, 1))).await })
    };
    assert_eq!(control.next_batch(), vec![3]);
    control.step(Step::Panic);
    let (status, _, body) = dying.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _, body) = call(&app, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains("stopped"), "{body}");
    let (status, _, body) = call(&app, "POST", "/embed", Some(embed_body(4, 1, 1))).await;
    assert_eq!((status, body["error_type"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unhealthy")));
    control.open();
}

#[tokio::test]
async fn tokenizer_errors_are_the_clients_422() {
    let control = fake(Budget::new(64, 128));
    let (app, _) = app(&control, ServerConfig::default(), Duration::from_secs(3600));
    let (status, _, body) = call(&app, "POST", "/embed", Some(serde_json::json!({ "inputs": ["no tag here"] }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

async fn run_with_loader<L>(load: L) -> Result<(), super::ServerError>
where
    L: FnOnce() -> Result<Vec<Fake>, String> + Send + 'static,
{
    let server =
        Server::bind(ServerConfig { host: "127.0.0.1".into(), port: 0, ..Default::default() }).await.expect("bind");
    tokio::time::timeout(Duration::from_secs(10), server.run(load, std::future::pending()))
        .await
        .expect("a failed load ends the server instead of answering 'loading' forever")
}

#[tokio::test]
async fn a_loader_that_panics_or_fails_ends_the_server_with_the_cause() {
    let err = run_with_loader(|| panic!("weights are corrupt")).await.expect_err("the server must stop");
    assert!(err.to_string().contains("panicked") && err.to_string().contains("weights are corrupt"), "{err}");
    let err = run_with_loader(|| Err("no such model".to_string())).await.expect_err("the server must stop");
    assert_eq!(err.to_string(), "no such model");
}

/// Each model has its own queue: a reranker's query is answered while the embedder's batch is
/// still running, and its scores are the model's activation over its logits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_has_its_own_queue_and_requests_pick_their_model() {
    let mut embedder = fake(Budget::new(64, 128));
    let info = ModelInfo {
        id: "test/reranker".into(),
        kind: akidb_engine::model_config::Kind::CrossEncoder,
        labels: vec!["LABEL_0".into()],
        activation: Some(akidb_engine::model_config::Activation::Sigmoid),
        dimension: 2,
        max_seq_length: 64,
        ..Default::default()
    };
    let mut reranker = fake_model(Budget::new(64, 128), info);
    reranker.open();
    let state = AppState::new(ServerConfig::default());
    state.install(vec![embedder.fake.clone(), reranker.fake.clone()], Duration::from_secs(3600));
    let app = router(state.clone());
    let bulk = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(embed_body(1, 16, 7))).await })
    };
    assert_eq!(embedder.next_batch(), vec![1; 8], "the embedder's batch is running (and held)");

    let body = serde_json::json!({ "query": "3", "texts": ["w", "w w"] });
    let (status, _, ranked) = call(&app, "POST", "/rerank", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{ranked}");
    // The pair's first token is the query's tag (3): every score is sigmoid(3).
    let want = 1.0 / (1.0 + (-3f64).exp());
    assert!(ranked.as_array().unwrap().iter().all(|r| (r["score"].as_f64().unwrap() - want).abs() < 1e-6), "{ranked}");
    let body = serde_json::json!({ "query": "3", "texts": ["w"], "model": "test/fake" });
    let (status, _, error) = call(&app, "POST", "/rerank", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(error["error"].as_str().unwrap().contains("'test/fake' is an embedding model"), "{error}");

    embedder.open();
    let (status, _, body) = bulk.await.unwrap();
    assert_eq!((status, body.as_array().map(Vec::len)), (StatusCode::OK, Some(16)));
    assert!(embedder.fake.batches.lock().iter().flatten().all(|&t| t == 1), "no reranking work on the embedder");
    // Each model's metrics are its own series.
    let text = state.metrics.render();
    assert!(text.contains("akidb_texts_total{model=\"test/reranker\"} 2"), "{text}");
    assert!(text.contains("akidb_texts_total{model=\"test/fake\"} 16"), "{text}");
}

/// A batch computes one kind of output: per-token requests (`/embed_all`) and pooled ones wait
/// for their own calls, and each gets what it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_and_per_token_requests_never_share_a_call() {
    let mut control = fake(Budget::new(64, 128));
    let (s, _) = scheduler(&control, 1_000_000);
    let first = submit(&s, &control, &texts(1, 1, 1));
    assert_eq!(control.next_batch(), vec![1]);
    let inputs: Vec<Input> = texts(2, 2, 1).into_iter().map(Input::Single).collect();
    let tokens = control.fake.tokenize(&inputs, &EncodeOptions::default()).unwrap();
    let ticket = s.admit(4).unwrap();
    let per_token = s.submit(tokens, Output::Tokens, false, ticket, None);
    let pooled = submit(&s, &control, &texts(3, 1, 1));
    control.step(Step::Go);
    let second = control.next_batch();
    control.step(Step::Go);
    let third = control.next_batch();
    control.step(Step::Go);
    let mut calls = vec![second, third];
    calls.sort();
    assert_eq!(calls, vec![vec![3], vec![1002, 1002]], "one call each, never mixed");
    assert_eq!(first.await.unwrap(), vec![vec![1.0, 2.0]]);
    assert_eq!(pooled.await.unwrap(), vec![vec![3.0, 2.0]]);
    assert_eq!(per_token.await.unwrap(), vec![vec![2.0, 0.0, 2.0, 1.0]; 2]);
    control.open();
}

// --- where a request's time goes: histograms and spans ---------------------------------------

/// Observations of histogram `name` in its largest bucket bounded below `seconds`.
fn observed_below(text: &str, name: &str, seconds: f64) -> f64 {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| {
            let (labels, count) = line.strip_prefix(prefix.as_str())?.split_once("} ")?;
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?.trim_end_matches('"');
            Some((le.parse::<f64>().ok()?, count.parse::<f64>().ok()?))
        })
        .filter(|&(le, _)| le < seconds)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(0.0, |(_, count)| count)
}

/// Each request's tokenizing, queueing (entering the queue → its first batch) and inference
/// (first batch → answer) are histograms per model; a batch the test holds shows up as the queue
/// time of the request behind it and the inference time of the request in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_histograms_show_a_held_batch_as_queue_and_inference_time() {
    let mut control = fake(Budget::new(64, 128));
    let (app, state) = app(&control, ServerConfig::default(), Duration::from_secs(3600));
    let bulk = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(embed_body(1, 16, 7))).await })
    };
    assert_eq!(control.next_batch(), vec![1; 8], "the bulk request's first batch runs, and is held");
    let probe = {
        let app = app.clone();
        tokio::spawn(async move { call(&app, "POST", "/embed", Some(embed_body(2, 1, 0))).await })
    };
    for _ in 0..1000 {
        if metric(&state.metrics, "akidb_queue_depth") == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&state.metrics, "akidb_queue_depth"), 2.0, "the probe is queued behind the held batch");
    let held = Duration::from_millis(300);
    tokio::time::sleep(held).await;
    control.step(Step::Go);
    assert_eq!(control.next_batch(), vec![2], "the probe leads the next batch");
    control.open();
    assert_eq!(probe.await.unwrap().0, StatusCode::OK);
    assert_eq!(bulk.await.unwrap().0, StatusCode::OK);

    let text = state.metrics.render();
    let held = held.as_secs_f64();
    for stage in ["tokenize", "queue", "inference"] {
        let name = format!("akidb_request_{stage}_seconds");
        assert!(text.contains(&format!("{name}_count{{model=\"test/fake\"}} 2")), "{name}: one per request\n{text}");
    }
    // The probe queued for the whole hold; the bulk request was in inference for all of it.
    for stage in ["queue", "inference"] {
        let name = format!("akidb_request_{stage}_seconds");
        assert!(metric(&state.metrics, &format!("{name}_sum")) >= held, "{name}\n{text}");
        assert!(observed_below(&text, &name, held) <= 1.0, "{name}: one request took at least {held} s\n{text}");
    }
}

/// What the spans of one test saw: name, parent and fields (as recorded so far).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Seen>>>);

#[derive(Debug, Clone)]
struct Seen {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: std::collections::BTreeMap<String, String>,
}

struct Fields<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.id().into_u64());
        let mut fields = std::collections::BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().push(Seen { id: id.into_u64(), name: attrs.metadata().name(), parent, fields });
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // Ids are reused once a span closes: the latest span with this id is the one.
        if let Some(seen) = self.0.lock().iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<Seen> {
        self.0.lock().iter().filter(|s| s.name == name).cloned().collect()
    }
}

/// The request's span is opened by the middleware, tokenizing runs in a child of it, and the job
/// carries it through the queue: the inference thread records the request's queue and inference
/// times into it and runs each batch the request is in under a child span of it — even though
/// that thread never saw the (thread-local) subscriber this test installs.
#[tokio::test]
async fn a_requests_span_travels_with_its_job_to_the_inference_thread() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = Spans::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let mut control = fake(Budget::new(64, 128));
    control.open();
    let (app, _) = app(&control, ServerConfig::default(), Duration::from_secs(3600));
    let (status, _, body) = call(&app, "POST", "/embed", Some(embed_body(5, 2, 3))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let requests = spans.named("request");
    let [request] = requests.as_slice() else { panic!("one request span: {requests:?}") };
    let field = |name: &str| request.fields.get(name).cloned().unwrap_or_else(|| panic!("{name} in {request:?}"));
    assert_eq!((field("method"), field("route")), ("POST".to_string(), "/embed".to_string()));
    assert_eq!((field("model"), field("tokens")), ("\"test/fake\"".to_string(), "8".to_string()));
    for timing in ["tokenize_ms", "queue_ms", "inference_ms"] {
        assert!(field(timing).parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{timing} in {request:?}");
    }
    let tokenize = spans.named("tokenize");
    assert!(tokenize.iter().any(|t| t.parent == Some(request.id)), "tokenizing under the request: {tokenize:?}");
    let batches = spans.named("batch");
    let [batch] = batches.as_slice() else { panic!("one batch: {batches:?}") };
    assert_eq!(batch.parent, Some(request.id), "the inference thread's batch is the request's child");
    assert_eq!(batch.fields.get("texts").map(String::as_str), Some("2"));
}
