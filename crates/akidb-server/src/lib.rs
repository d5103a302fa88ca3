//! `akidb serve`: axum routes → registry (one entry per model) → scheduler → [`Backend`] (the
//! engine), as text-embeddings-inference separates router, queue and backend. The listener is up
//! before the models are loaded so `/health` can say 503 until every warm-up run is done.
//!
//! The modules, from the edge inwards; each imports only modules listed after it, so the
//! dependency graph has no cycle:
//!
//! - `router`: the route table and its layers; the only importer of the handlers and `openapi`.
//! - `openapi`: collects the handlers' annotations into `/openapi.json`; imports, never imported.
//! - `middleware`: the request's span, metrics and log line; error shapes; API key; body reading.
//! - `routes`, `scoring`, `tokens`, `catalog`, `status`: the handlers, one module per family.
//! - `api`: `ApiJson`, the extractor every handler reads its body with, and the
//!   readers of fields several routes share.
//! - `infer`: the request path and its rules (count, prompt, tokenizing, truncation, admission).
//! - `schema`: error bodies and schemas the handlers' OpenAPI annotations name.
//! - `state`: what handlers share: config, the registry of models, limiter, metrics.
//! - `registry`, `error`, `scheduler`, `backend`, `metrics`, `conn`, `config`, `protocol`.

mod api;
pub mod backend;
mod catalog;
mod cohere;
mod config;
mod conn;
mod dispatch;
mod encoding;
mod error;
mod infer;
pub mod metrics;
mod middleware;
mod openapi;
pub mod protocol;
mod registry;
mod router;
mod routes;
pub mod scheduler;
mod schema;
mod scoring;
mod state;
mod status;
mod token_ids;
mod tokens;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;

pub use self::backend::{Backend, BackendError, Output};
pub use self::config::{ModelAlias, ServerConfig, TokenIds};
pub use self::error::{ApiError, Flavor};
pub use self::router::router;
pub use self::state::AppState;

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

/// A batch running this long is "stuck" whatever the usual batch time (see [`scheduler::Scheduler::health`]).
const STALL_FLOOR: Duration = Duration::from_secs(10);

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
