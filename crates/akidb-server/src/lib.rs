//! `akidb serve`: axum routes → registry (one entry per model) → scheduler → [`Backend`] (the
//! engine), as text-embeddings-inference separates router, queue and backend. The listener is up
//! before the models are loaded so `/health` can say 503 until every warm-up run is done.

pub mod backend;
mod catalog;
mod config;
mod conn;
mod error;
pub mod metrics;
mod openapi;
pub mod protocol;
mod registry;
mod routes;
pub mod scheduler;
mod scoring;
mod tokens;

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::{net::TcpListener, sync::Semaphore};

pub use self::backend::{Backend, BackendError, Output};
pub use self::config::ServerConfig;
pub use self::error::{ApiError, Flavor};
pub(crate) use self::routes::Encode;
use self::{
    metrics::Metrics,
    registry::{Registry, Served},
    scheduler::{Scheduler, SchedulerConfig, SchedulerError},
};
use akidb_engine::{model_config::Kind, tokenize::Input, Rows};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Load(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A batch running this long is "stuck" whatever the usual batch time (see [`Scheduler::health`]).
const STALL_FLOOR: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    config: Arc<ServerConfig>,
    registry: Arc<OnceLock<Registry>>,
    limiter: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl AppState {
    fn new(config: ServerConfig) -> Self {
        Self {
            limiter: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config: Arc::new(config),
            registry: Arc::new(OnceLock::new()),
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
        }
    }

    /// Puts each loaded model behind its own scheduler; from now on `/health` is theirs.
    fn install(&self, backends: Vec<Arc<dyn Backend>>, stall_floor: Duration) {
        let models = backends
            .into_iter()
            .enumerate()
            .map(|(i, backend)| {
                let config = SchedulerConfig {
                    budget: backend.budget(),
                    max_queued_tokens: self.config.max_queued_tokens,
                    max_batch_requests: self.config.max_batch_requests,
                    stall_floor,
                };
                let scheduler = Scheduler::start(backend.clone(), config, self.metrics.clone());
                let name = match (&self.config.served_model_name, i) {
                    (Some(name), 0) => name.clone(),
                    _ => backend.info().id.clone(),
                };
                Served { backend, scheduler, name }
            })
            .collect();
        if self.registry.set(Registry::new(models)).is_err() {
            tracing::warn!("models were already installed; keeping the first set");
        }
    }

    fn registry(&self) -> Result<&Registry, ApiError> {
        self.registry.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the models are still loading; retry shortly")
        })
    }

    /// The model a request names, else the first of `kinds` served (see [`Registry::pick`]).
    pub(crate) fn pick(&self, requested: Option<&str>, route: &str, kinds: &[Kind]) -> Result<&Served, ApiError> {
        self.registry()?.pick(requested, route, kinds)
    }

    /// The path every inference route shares: validate, limit, tokenize, admit, queue on the
    /// model's scheduler; all of it within the request timeout, past which the request's
    /// remaining inputs are dropped. Rows come back in input order.
    pub(crate) async fn run(
        &self,
        model: &Served,
        inputs: Vec<Input>,
        output: Output,
        normalize: bool,
        encode: Encode,
    ) -> Result<Rows, ApiError> {
        let Encode { truncate, options } = encode;
        if inputs.is_empty() {
            return Err(ApiError::unprocessable("inputs must not be empty"));
        }
        if inputs.len() > self.config.max_inputs {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{} inputs in one request; the limit is {}", inputs.len(), self.config.max_inputs),
            ));
        }
        model.scheduler.health().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
        let permit = self
            .limiter
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded(self.config.max_concurrent_requests))?;

        // Every word is at least one token: a lower bound, admitted before the tokenizing it may spare.
        let max_len = model.backend.info().max_seq_length;
        let floor = inputs.iter().map(|i| i.words().min(max_len)).sum();
        let mut ticket = model.scheduler.admit(floor).map_err(ApiError::queue_full)?;

        let work = async move {
            let backend = model.backend.clone();
            let bytes: usize = inputs.iter().map(Input::bytes).sum();
            // Small requests tokenize in place; large ones off the async workers.
            let tokens = if bytes < 4096 {
                backend.tokenize(&inputs, &options)
            } else {
                tokio::task::spawn_blocking(move || backend.tokenize(&inputs, &options)).await.map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenizer task failed: {e}"))
                })?
            }
            .map_err(|e| match e {
                BackendError::Options(m) => ApiError::unprocessable(m).param("prompt_name"),
                e => ApiError::unprocessable(e.to_string()),
            })?;
            if !truncate {
                if let Some(index) = tokens.iter().position(|t| t.truncated) {
                    return Err(ApiError::unprocessable(format!(
                        "input {index} is longer than the model's maximum of {max_len} tokens (truncation is off)"
                    )));
                }
            }
            let total_tokens: usize = tokens.iter().map(|t| t.len()).sum();
            let text_count = tokens.len();
            model.scheduler.settle(&mut ticket, total_tokens).map_err(ApiError::queue_full)?;
            let vectors =
                model.scheduler.submit(tokens, output, normalize, ticket, Some(permit)).await.map_err(|e| match e {
                    SchedulerError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    SchedulerError::Inference(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                })?;
            model.scheduler.metrics().tokens.inc_by(total_tokens as u64);
            model.scheduler.metrics().texts.inc_by(text_count as u64);
            Ok(Rows { vectors, total_tokens })
        };
        match self.config.request_timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| ApiError::timed_out(limit))?,
            None => work.await,
        }
    }
}

/// 200 when every model is loaded and its scheduler and backend are well; else 503 with why.
#[utoipa::path(get, path = "/health", tag = "akidb", responses(
    (status = 200, description = "Every model is loaded and well", body = Object),
    (status = 503, description = "Loading, or unhealthy (with the reason)", body = Object)))]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let Some(registry) = state.registry.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "loading" }))).into_response();
    };
    let problems: Vec<String> = registry
        .models()
        .iter()
        .filter_map(|m| {
            m.scheduler.health().and_then(|()| m.backend.health().map_err(|e| e.to_string())).err().map(|e| {
                if registry.models().len() > 1 {
                    format!("{}: {e}", m.name)
                } else {
                    e
                }
            })
        })
        .collect();
    if problems.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        let error = problems.join("; ");
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unhealthy", "error": error }))).into_response()
    }
}

/// One model as `/info` lists it.
fn model_info(model: &Served) -> serde_json::Value {
    let info = model.backend.info();
    let device = model.backend.device();
    let budget = model.backend.budget();
    json!({
        "model_id": info.id,
        "served_model_name": model.name,
        "kind": info.kind,
        "model_revision": info.revision,
        "onnx_file": info.onnx_file,
        "dimension": info.dimension,
        "labels": (!info.labels.is_empty()).then_some(&info.labels),
        "activation": info.activation,
        "max_input_length": info.max_seq_length,
        "pooling": info.pooling,
        "prompts": (!info.prompts.is_empty()).then_some(&info.prompts),
        "default_prompt_name": info.default_prompt_name,
        // The provider serving now: after a CoreML run-time failure, the CPU.
        "execution_provider": device.as_ref().map_or(info.provider, |d| d.provider.as_str()),
        "device": device,
        "max_batch_tokens": budget.max_tokens,
        "max_batch_size": budget.max_rows,
    })
}

/// Every model with its kind, dimension or labels, max length and execution provider; the first
/// model's fields also at the top level, where single-model clients read them.
#[utoipa::path(get, path = "/info", tag = "akidb", responses(
    (status = 200, description = "The served models and the server's limits", body = Object),
    (status = 503, description = "The models are still loading", body = openapi::ErrorBody)))]
pub(crate) async fn info(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = state.registry()?;
    let models: Vec<serde_json::Value> = registry.models().iter().map(model_info).collect();
    let mut out = models.first().cloned().unwrap_or_else(|| json!({}));
    let c = &state.config;
    let first = registry.models().first().map(|m| m.backend.info());
    let budget = registry.models().first().map(|m| m.backend.budget());
    let extra = json!({
        "models": models,
        "onnx_runtime_version": first.map(|i| i.onnx_runtime_version.clone()),
        "version": env!("CARGO_PKG_VERSION"),
        "limits": {
            "payload_limit": c.payload_limit,
            "max_inputs": c.max_inputs,
            "max_concurrent_requests": c.max_concurrent_requests,
            "max_batch_requests": c.max_batch_requests,
            "max_queued_tokens": c.max_queued_tokens,
            "request_timeout_seconds": c.request_timeout.map(|d| d.as_secs_f64()),
            "shutdown_timeout_seconds": c.shutdown_timeout.as_secs_f64(),
            "max_batch_tokens": budget.map(|b| b.max_tokens),
            "max_batch_size": budget.map(|b| b.max_rows),
        },
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    Ok(Json(out))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "akidb", responses(
    (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    let flavor = if request.uri().path().starts_with("/v1/") { Flavor::OpenAi } else { Flavor::Native };
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {} {}", request.method(), request.uri().path()))
        .flavor(flavor)
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// Counts and times every request, and logs one line for it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_request(&route, status, elapsed);
    tracing::info!(%method, %route, status, ms = elapsed.as_secs_f64() * 1e3, "request");
    response
}

/// Reads the whole body within the body-read timeout (408) and the payload limit (413), so a
/// client that trickles its body cannot hold a handler, then hands it on in memory.
async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let (parts, body) = request.into_parts();
    let flavor = if parts.uri.path().starts_with("/v1/") { Flavor::OpenAi } else { Flavor::Native };
    let limited = http_body_util::Limited::new(body, state.config.payload_limit);
    let error = match tokio::time::timeout(state.config.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => {
            return next.run(Request::from_parts(parts, axum::body::Body::from(collected.to_bytes()))).await
        }
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", state.config.body_read_timeout.as_secs_f64()),
        ),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the {}-byte limit", state.config.payload_limit),
        ),
        Ok(Err(e)) => ApiError::bad_request(format!("could not read the request body: {e}")),
    };
    error.flavor(flavor).into_response()
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else { return next.run(request).await };
    // Health for probes; the API's description so a browser can show /docs.
    let path = request.uri().path();
    if path == "/health" || path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    let flavor = if request.uri().path().starts_with("/v1/") { Flavor::OpenAi } else { Flavor::Native };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer <key>")
            .flavor(flavor)
            .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The whole HTTP surface; `state` decides readiness, limits and auth.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/embed", post(routes::native_embed))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/embeddings", post(routes::openai_embeddings))
        .route("/embed", post(routes::tei_embed))
        .route("/embed_all", post(routes::embed_all))
        .route("/similarity", post(routes::similarity))
        .route("/api/embed", post(routes::ollama_embed))
        .route("/api/embeddings", post(routes::ollama_embeddings))
        .route("/api/tags", get(catalog::ollama_tags))
        .route("/v1/models", get(catalog::list_models))
        .route("/v1/models/{*model}", get(catalog::get_model))
        .route("/rerank", post(scoring::rerank))
        .route("/v1/rerank", post(scoring::cohere_rerank))
        .route("/v2/rerank", post(scoring::cohere_rerank_v2))
        .route("/predict", post(scoring::predict))
        .route("/tokenize", post(tokens::tokenize))
        .route("/decode", post(tokens::decode))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi::document()))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.payload_limit))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A server whose model is loaded by `load` after the listener is up.
pub struct Server {
    state: AppState,
    listener: TcpListener,
}

impl Server {
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self { state: AppState::new(config), listener })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish for at most the
    /// shutdown timeout. A model that fails to load, or whose loader panics, ends the server
    /// with that error: never a permanent "loading".
    pub async fn run<L, B, E, S>(self, load: L, shutdown: S) -> Result<(), ServerError>
    where
        L: FnOnce() -> Result<Vec<B>, E> + Send + 'static,
        B: Backend,
        E: std::fmt::Display + Send + 'static,
        S: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let loader = tokio::task::spawn_blocking(load);
        let load_state = state.clone();
        tokio::spawn(async move {
            let failure = match loader.await {
                Ok(Ok(backends)) => {
                    let backends = backends.into_iter().map(|b| Arc::new(b) as Arc<dyn Backend>).collect();
                    load_state.install(backends, STALL_FLOOR);
                    tracing::info!("models ready; /health is 200");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => format!("the model loader panicked: {}", panic_message(e.into_panic())),
                Err(e) => format!("the model loader was cancelled: {e}"),
            };
            let _ = failed_tx.send(failure);
        });
        let app = router(state);
        let failure = Arc::new(parking_lot::Mutex::new(None::<String>));
        let failure_slot = failure.clone();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down: finishing in-flight requests"),
                Ok(e) = failed_rx => { *failure_slot.lock() = Some(e); }
            }
            let _ = stopping_tx.send(());
        };
        let c = &self.state.config;
        let limits = conn::Limits {
            max_connections: c.max_connections,
            timeouts: conn::Timeouts { header_read: c.header_read_timeout, keep_alive: c.keep_alive_timeout },
        };
        raise_open_files_limit(c.max_connections);
        let deadline = c.shutdown_timeout;
        let serve = conn::serve(self.listener, app, limits, stop);
        let expired = async move {
            match stopping_rx.await {
                Ok(()) => tokio::time::sleep(deadline).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = serve => {},
            () = expired => tracing::warn!(
                "in-flight requests did not finish within the {} s shutdown timeout; exiting anyway",
                deadline.as_secs_f64()
            ),
        }
        let failure = failure.lock().take();
        match failure {
            Some(e) => Err(ServerError::Load(e)),
            None => Ok(()),
        }
    }
}

/// Each connection is a file descriptor: make room for the connection cap when the system allows.
fn raise_open_files_limit(max_connections: usize) {
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_add(256);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            "the open-files limit is {got}, below --max-connections {max_connections} plus headroom: \
             connections past it fail to be accepted (raise `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not read or raise the open-files limit: {e}"),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_string(), |s| s.to_string()),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod scheduling_tests;

#[cfg(test)]
mod tests {
    //! The router without a model: readiness, routing, content types and auth, driven with
    //! `tower::ServiceExt::oneshot` as axum's own examples do.
    use axum::body::{to_bytes, Body};
    use tower::ServiceExt;

    use super::*;

    async fn call(app: Router, request: axum::http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    fn post(path: &str, content_type: &str, body: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(path).header("content-type", content_type).body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn before_the_model_is_loaded_health_and_embeddings_are_503() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, v) = call(app.clone(), axum::http::Request::get("/health").body(Body::empty()).unwrap()).await;
        assert_eq!((s, v["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("loading")));
        let (s, v) = call(app.clone(), post("/api/v1/embed", "application/json", r#"{"inputs":["a"]}"#)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error_type"], "unhealthy");
        let (s, v) = call(app, post("/v1/embeddings", "application/json", r#"{"input":"a"}"#)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn content_type_and_json_are_checked_before_anything_else() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, _) = call(app.clone(), post("/embed", "text/plain", r#"{"inputs":"a"}"#)).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (s, v) = call(app.clone(), post("/embed", "application/json; charset=utf-8", r#"{"inputs":"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = call(app, post("/embed", "application/json", r#"{"inputs": 5}"#)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "the request's shape is checked before readiness: {v}");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let app = router(AppState::new(ServerConfig::default()));
        let (s, v) = call(app.clone(), axum::http::Request::get("/v1/completions").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "not_found");
        let (s, v) = call(app, axum::http::Request::get("/api/v1/embed").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(v["error"].as_str().unwrap().contains("GET"));
    }

    #[tokio::test]
    async fn api_key_is_required_except_on_health() {
        let app = router(AppState::new(ServerConfig { api_key: Some("k".into()), ..Default::default() }));
        let (s, _) = call(app.clone(), axum::http::Request::get("/health").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "health answers without a key");
        let (s, v) = call(app.clone(), axum::http::Request::get("/info").body(Body::empty()).unwrap()).await;
        assert_eq!((s, v["error_type"].as_str()), (StatusCode::UNAUTHORIZED, Some("authentication")));
        let authorized =
            axum::http::Request::get("/info").header("authorization", "Bearer k").body(Body::empty()).unwrap();
        let (s, _) = call(app, authorized).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "past auth, the model is not loaded yet");
    }
}
