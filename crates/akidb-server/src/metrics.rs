//! Prometheus metrics: what a dashboard needs to see batching, queueing and latency.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// A duration in milliseconds, rounded to the microsecond, for log lines people read
/// (`ms=0.054`, not `ms=0.054370999999999996`).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `name` summed over its series in Prometheus text (each model has its own); `None` when no
/// series has it. For what reads `/metrics` back: the benchmark and the tests.
pub fn total(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labels) => labels.split_once('}')?.1,
                None => rest,
            };
            rest.strip_prefix(' ')?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// The inference-side metrics carry the model they are about: with several models in one
/// server, each has its own queue, batches and latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

type PerModel<M> = Family<ModelLabels, M, fn() -> M>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    batch_requests: PerModel<Histogram>,
    batch_texts: PerModel<Histogram>,
    inference_duration: PerModel<Histogram>,
    queue_depth: PerModel<Gauge>,
    queued_tokens: PerModel<Gauge>,
    dropped_texts: PerModel<Counter>,
    tokens: PerModel<Counter>,
    texts: PerModel<Counter>,
    request_tokenize: PerModel<Histogram>,
    request_queue: PerModel<Histogram>,
    request_inference: PerModel<Histogram>,
}

/// One model's series of the per-model metrics (handles onto the same values `/metrics` shows).
#[derive(Clone)]
pub struct ModelMetrics {
    pub batch_requests: Histogram,
    pub batch_texts: Histogram,
    pub inference_duration: Histogram,
    pub queue_depth: Gauge,
    pub queued_tokens: Gauge,
    pub dropped_texts: Counter,
    pub tokens: Counter,
    pub texts: Counter,
    /// Per request: tokenizing its texts.
    pub request_tokenize: Histogram,
    /// Per request: from entering the queue to the start of the first batch with any of its texts.
    pub request_queue: Histogram,
    /// Per request: from the start of its first batch to its answer (with the batches of others
    /// in between when it spans several).
    pub request_inference: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~8 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

fn requests_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

fn texts_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("akidb");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let batch_requests = PerModel::new_with_constructor(requests_histogram as fn() -> Histogram);
        let batch_texts = PerModel::new_with_constructor(texts_histogram as fn() -> Histogram);
        let inference_duration = PerModel::new_with_constructor(latency_histogram as fn() -> Histogram);
        let queue_depth = PerModel::new_with_constructor(Gauge::default as fn() -> Gauge);
        let queued_tokens = PerModel::new_with_constructor(Gauge::default as fn() -> Gauge);
        let dropped_texts = PerModel::new_with_constructor(Counter::default as fn() -> Counter);
        let tokens = PerModel::new_with_constructor(Counter::default as fn() -> Counter);
        let texts = PerModel::new_with_constructor(Counter::default as fn() -> Counter);
        let request_tokenize = PerModel::new_with_constructor(latency_histogram as fn() -> Histogram);
        let request_queue = PerModel::new_with_constructor(latency_histogram as fn() -> Histogram);
        let request_inference = PerModel::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", request_duration.clone());
        registry.register("batch_requests", "Requests sharing one inference call", batch_requests.clone());
        registry.register("batch_size", "Texts per inference call", batch_texts.clone());
        registry.register("inference_duration_seconds", "Time of one inference call", inference_duration.clone());
        registry.register("queue_depth", "Requests admitted and not yet answered", queue_depth.clone());
        registry.register("queued_tokens", "Tokens admitted and not yet computed", queued_tokens.clone());
        registry.register(
            "dropped_texts",
            "Texts never computed because their request was abandoned (client gone, timed out)",
            dropped_texts.clone(),
        );
        registry.register("tokens", "Tokens computed", tokens.clone());
        registry.register("texts", "Texts (and pairs) computed", texts.clone());
        // Where one request's time went; each counts the requests that reached that stage.
        registry.register(
            "request_tokenize_seconds",
            "Per request, time tokenizing its texts",
            request_tokenize.clone(),
        );
        registry.register(
            "request_queue_seconds",
            "Per request, time from entering the queue to its first batch",
            request_queue.clone(),
        );
        registry.register(
            "request_inference_seconds",
            "Per request, time from its first batch to its answer",
            request_inference.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            batch_requests,
            batch_texts,
            inference_duration,
            queue_depth,
            queued_tokens,
            dropped_texts,
            tokens,
            texts,
            request_tokenize,
            request_queue,
            request_inference,
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { route: route.to_string(), status }).inc();
        self.request_duration.get_or_create(&RouteLabels { route: route.to_string() }).observe(elapsed.as_secs_f64());
    }

    /// `model`'s series, created (at zero) if new.
    pub fn model(&self, model: &str) -> ModelMetrics {
        let labels = ModelLabels { model: model.to_string() };
        ModelMetrics {
            batch_requests: self.batch_requests.get_or_create(&labels).clone(),
            batch_texts: self.batch_texts.get_or_create(&labels).clone(),
            inference_duration: self.inference_duration.get_or_create(&labels).clone(),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            queued_tokens: self.queued_tokens.get_or_create(&labels).clone(),
            dropped_texts: self.dropped_texts.get_or_create(&labels).clone(),
            tokens: self.tokens.get_or_create(&labels).clone(),
            texts: self.texts.get_or_create(&labels).clone(),
            request_tokenize: self.request_tokenize.get_or_create(&labels).clone(),
            request_queue: self.request_queue.get_or_create(&labels).clone(),
            request_inference: self.request_inference.get_or_create(&labels).clone(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl ModelMetrics {
    pub fn observe_batch(&self, texts: usize, requests: usize, elapsed: Duration) {
        self.batch_texts.observe(texts as f64);
        self.batch_requests.observe(requests as f64);
        self.inference_duration.observe(elapsed.as_secs_f64());
    }
}
