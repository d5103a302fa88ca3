//! What every handler and middleware shares: the configuration, the models once they are loaded,
//! the concurrency limiter and the metrics. The request path over it is `infer`; this module only
//! holds the state and finds models, so that everything can import it without importing a route.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use crate::{
    backend::Backend,
    config::ServerConfig,
    error::ApiError,
    metrics::Metrics,
    registry::{Registry, Served},
    scheduler::{Scheduler, SchedulerConfig},
};
use akidb_engine::model_config::Kind;

#[derive(Clone)]
pub struct AppState {
    pub(crate) config: Arc<ServerConfig>,
    /// Empty until the models are loaded: the listener is up before, so `/health` can say 503.
    pub(crate) registry: Arc<OnceLock<Registry>>,
    pub(crate) limiter: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started: Instant,
}

impl AppState {
    pub(crate) fn new(config: ServerConfig) -> Self {
        Self {
            limiter: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config: Arc::new(config),
            registry: Arc::new(OnceLock::new()),
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
        }
    }

    /// Puts each loaded model behind its own scheduler; from now on `/health` is theirs.
    pub(crate) fn install(&self, backends: Vec<Arc<dyn Backend>>, stall_floor: Duration) {
        let ids: Vec<String> = backends.iter().map(|b| b.info().id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // Checked before loading (`akidb serve`); a library user's bad alias is logged, not fatal.
        let mut aliases = self.config.aliases_of(&ids).unwrap_or_else(|e| {
            tracing::error!("{e}; no aliases are served");
            vec![Vec::new(); ids.len()]
        });
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
                let name = self.config.served_name(i, &backend.info().id);
                Served { backend, scheduler, name, aliases: std::mem::take(&mut aliases[i]) }
            })
            .collect();
        if self.registry.set(Registry::new(models)).is_err() {
            tracing::warn!("models were already installed; keeping the first set");
        }
    }

    /// The loaded models, or the 503 every route answers while they load.
    pub(crate) fn registry(&self) -> Result<&Registry, ApiError> {
        self.registry.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the models are still loading; retry shortly")
        })
    }

    /// The model a request names, else the first of `kinds` served (see [`Registry::pick`]).
    pub(crate) fn pick(&self, requested: Option<&str>, route: &str, kinds: &[Kind]) -> Result<&Served, ApiError> {
        self.registry()?.pick(requested, route, kinds)
    }
}
